//! Fuzz the Range / conditional-request planner of blob serving: arbitrary
//! bytes become a representation length, a method and `Range`, `If-Range`,
//! `If-Match`, `If-None-Match`, `If-Modified-Since`, `If-Unmodified-Since`
//! fields (layout in `spindle_server::http::plan::fuzz_range_input`). It
//! must never panic, and a 206 plan's ranges must be non-empty, within the
//! length, sorted and disjoint.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    spindle_server::http::plan::fuzz_range_input(data);
});
