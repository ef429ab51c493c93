//! spindle-server: the hyper origin (uploads, blob range serving, catalog,
//! search, charts, metrics). The only crate that knows HTTP and JSON.
//!
//! - [`serve`]: runtime, listener, TLS ([`tls`]), connection limits and
//!   timeouts, graceful shutdown; [`config`] resolves its settings.
//! - [`app`]: the opened stores, routing and the small routes; [`upload`]:
//!   `POST /v1/tracks` with its claim-check commit; [`track`]: the track
//!   record and keyspaces.
//! - [`catalog`]: artists, albums, genres and their browsing routes;
//!   [`search`]: the tantivy index fed by the change feed; [`cache`]: the
//!   L1 cache in front of hot metadata responses.
//! - [`http`]: RFC 9110 blob serving and the response [`http::Body`] type.
//! - [`error`]: the one mapping from errors to JSON responses.
//! - [`tokens`]: bearer tokens; [`metrics`]: Prometheus counters;
//!   [`sniff`]: media type sniffing.

pub mod app;
pub mod cache;
pub mod catalog;
pub mod charts;
pub mod config;
pub mod dirlock;
pub mod error;
pub mod http;
pub mod metrics;
pub mod search;
pub mod serve;
pub mod sniff;
pub mod tls;
pub mod tokens;
pub mod track;
pub mod upload;
pub mod web;
pub mod worker;
