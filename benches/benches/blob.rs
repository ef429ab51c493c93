//! Placeholder until the blob benchmarks land.
fn main() {}
