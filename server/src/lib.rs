//! spindle-server: the hyper origin (uploads, blob range serving, catalog,
//! search, charts, metrics). The only crate that knows HTTP and JSON.
pub mod http;
