//! spindle-replication: three-way replication across nodes.
//!
//! What will live here (see `ARCHITECTURE.md`): node membership, placement by
//! rendezvous hashing across zones, chunk fan-out with a write quorum, read
//! failover and hedging, metadata log shipping settled last-writer-wins on
//! `(HLC, node)`, anti-entropy and rebalance.
//!
//! **Boundary:** peers are reached only through a `Transport` trait, so a whole
//! cluster can run in one process in tests with links cut at will. Nothing is
//! implemented yet; the engine's formats already carry what this crate needs
//! (chunks named by their hash, metadata records stamped with HLC and node id).
