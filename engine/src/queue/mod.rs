//! The durable job queue on the metadata store. (Being written.)
