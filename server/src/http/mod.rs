//! Textbook RFC 9110 blob serving (`GET`/`HEAD /v1/blobs/{id}`) and the
//! response [`Body`] type every response of the server uses.

pub mod blob;
pub mod body;
pub mod plan;
pub mod precondition;
pub mod range;
pub mod sendfile;

pub use blob::serve_blob;
pub use body::Body;
