//! The log-structured metadata store and its change feed. (Being written.)
