//! spindle-server: the hyper origin (uploads, blob range serving, catalog,
//! search, charts, metrics). The only crate that knows HTTP and JSON.
//!
//! - [`error`]: the one mapping from errors to JSON responses.
//! - [`http`]: RFC 9110 blob serving and the response [`http::Body`] type.

pub mod error;
pub mod http;
