//! Shared helpers for spindle's benchmarks. The benchmarks themselves live in
//! `benches/benches/*.rs` (criterion, `harness = false`) and the side-by-side
//! scripts against reference servers in `benches/scripts/`.
