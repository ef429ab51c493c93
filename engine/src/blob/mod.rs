//! The chunked, checksummed, content-addressed blob store. (Being written.)
