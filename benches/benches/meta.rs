//! Placeholder until the meta benchmarks land.
fn main() {}
