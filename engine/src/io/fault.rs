//! The fault-injecting backend for tests. (Being written.)
