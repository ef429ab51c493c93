//! The discovery routes and the services behind them.
//!
//! - `GET /v1/genres`, `/v1/genres/{genre}/tracks`, `/v1/artists`,
//!   `/v1/artists/{id}`, `/v1/albums/{id}`: catalog listings with `limit`
//!   (1..=500, default 50) and an opaque `cursor`, answered through the L1
//!   cache (scoped per listing, invalidated from the change feed).
//! - `GET /v1/search?q=&limit=&kind=`: ranked tracks, artists and albums from
//!   the search index, run on the blocking pool.
//! - `GET /v1/tracks/{id}` goes through the cache too ([`track_response`]).
//!
//! **Boundary:** nothing here writes. The index is written only by its feed
//! consumer ([`crate::search`]), the catalog only by [`super::index_track`]
//! in the writer's batch.

use std::path::Path;
use std::sync::Arc;

use http::{Response, StatusCode};

use super::{CatalogError, PAGE_LIMIT_DEFAULT, PAGE_LIMIT_MAX};
use crate::app::{form_pairs, json_response, App};
use crate::cache::{Cache, CacheConfig, CacheService, CachedResponse};
use crate::error::ApiError;
use crate::http::body::Body;
use crate::search::{IndexerConfig, SearchError, SearchIndex, SearchService};
use crate::track::Kind;

/// The cache and the search index with their threads; dropped with the App.
#[derive(Debug)]
pub struct Discovery {
    pub cache: CacheService,
    pub search: SearchService,
}

/// Failures starting discovery.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("search: {0}")]
    Search(#[from] SearchError),
    #[error("cache: {0}")]
    Cache(#[from] spindle_engine::meta::Error),
}

impl Discovery {
    /// Starts the cache invalidator and the search indexer (index in
    /// `<data_dir>/search/`).
    pub fn open(
        meta: &spindle_engine::meta::MetaStore,
        data_dir: &Path,
    ) -> Result<Discovery, DiscoveryError> {
        let cache = CacheService::start(meta, &CacheConfig::default())?;
        let search = SearchService::start(
            meta,
            &crate::search::index_dir(data_dir),
            IndexerConfig::default(),
        )?;
        Ok(Discovery { cache, search })
    }

    pub fn cache(&self) -> &Arc<Cache> {
        self.cache.cache()
    }

    pub fn index(&self) -> &Arc<SearchIndex> {
        self.search.index()
    }

    /// Appends the cache and search metrics to `out`.
    pub fn render_metrics(&self, out: &mut String) {
        self.cache().render_metrics(out);
        self.index().render_metrics(out);
    }
}

/// Whether `segments` (the path split on `/`, without the leading empty
/// one) is a discovery route.
pub fn is_discovery_path(segments: &[&str]) -> bool {
    matches!(
        segments,
        ["v1", "genres"]
            | ["v1", "genres", _, "tracks"]
            | ["v1", "artists"]
            | ["v1", "artists", _]
            | ["v1", "albums", _]
            | ["v1", "search"]
    )
}

impl From<CatalogError> for ApiError {
    fn from(e: CatalogError) -> Self {
        match e {
            CatalogError::BadCursor => ApiError::bad_request("malformed cursor"),
            CatalogError::Store(e) => ApiError::storage("reading the catalog", e),
            e @ CatalogError::Corrupt { .. } => ApiError::Internal {
                message: e.to_string(),
            },
        }
    }
}

struct ListParams {
    limit: usize,
    cursor: Option<String>,
}

fn list_params(query: &str) -> Result<ListParams, ApiError> {
    let mut p = ListParams {
        limit: PAGE_LIMIT_DEFAULT,
        cursor: None,
    };
    for (k, v) in form_pairs(query) {
        match k.as_str() {
            "limit" => {
                p.limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=PAGE_LIMIT_MAX).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!("limit must be 1..={PAGE_LIMIT_MAX}"))
                    })?;
            }
            "cursor" if !v.is_empty() => p.cursor = Some(v),
            _ => {}
        }
    }
    Ok(p)
}

/// Percent-decodes one path segment (`+` stays a plus).
fn decode_segment(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (b[i], b.get(i + 1).copied(), b.get(i + 2).copied()) {
            (b'%', Some(h), Some(l)) if hex(h).is_some() && hex(l).is_some() => {
                let v = hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0);
                out.push(v as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<CachedResponse, ApiError> {
    serde_json::to_value(value)
        .map(|v| CachedResponse::json(&v))
        .map_err(|e| ApiError::Internal {
            message: format!("response does not serialise: {e}"),
        })
}

/// `GET /v1/tracks/{id}` through the cache: one store lookup per key per
/// miss, however many ask at once.
pub fn track_response(app: &App, id: &str) -> Response<Body> {
    if !crate::track::is_track_id(id) {
        // Junk ids neither reach the store nor take cache space.
        return ApiError::NotFound { what: "track" }.into_response();
    }
    let cached = app.discovery.cache().track(id, || {
        let track = app.load_track(id)?;
        Ok(CachedResponse::json(&track.to_api_json()))
    });
    cached.to_response()
}

/// Answers a discovery route (see [`is_discovery_path`]).
pub async fn route(
    app: &Arc<App>,
    segments: &[&str],
    query: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let query = query.unwrap_or("");
    let meta = &app.meta;
    let cache = app.discovery.cache();
    let cached = match segments {
        ["v1", "search"] => return search(app, query).await,
        ["v1", "genres"] => {
            let p = list_params(query)?;
            cache.page("genres", query, || {
                to_json(&super::list_genres(meta, p.cursor.as_deref(), p.limit)?)
            })
        }
        ["v1", "genres", genre, "tracks"] => {
            let p = list_params(query)?;
            let key = super::genre_key(&decode_segment(genre));
            cache.page(&format!("genre:{key}"), query, || {
                to_json(&super::genre_tracks(
                    meta,
                    &key,
                    p.cursor.as_deref(),
                    p.limit,
                )?)
            })
        }
        ["v1", "artists"] => {
            let p = list_params(query)?;
            cache.page("artists", query, || {
                to_json(&super::list_artists(meta, p.cursor.as_deref(), p.limit)?)
            })
        }
        ["v1", "artists", id] => {
            let p = list_params(query)?;
            if !super::is_entity_id(id) {
                return Err(ApiError::NotFound { what: "artist" });
            }
            cache.page(&format!("artist:{id}"), query, || {
                match super::artist(meta, id, p.cursor.as_deref(), p.limit)? {
                    Some(page) => to_json(&page),
                    None => Err(ApiError::NotFound { what: "artist" }),
                }
            })
        }
        ["v1", "albums", id] => {
            let p = list_params(query)?;
            if !super::is_entity_id(id) {
                return Err(ApiError::NotFound { what: "album" });
            }
            cache.page(&format!("album:{id}"), query, || {
                match super::album(meta, id, p.cursor.as_deref(), p.limit)? {
                    Some(page) => to_json(&page),
                    None => Err(ApiError::NotFound { what: "album" }),
                }
            })
        }
        _ => {
            return Err(ApiError::Internal {
                message: "discovery route table and dispatch disagree".into(),
            })
        }
    };
    Ok(cached.to_response())
}

async fn search(app: &Arc<App>, query: &str) -> Result<Response<Body>, ApiError> {
    let mut q = String::new();
    let mut limit = 10usize;
    let mut kind: Option<Kind> = None;
    for (k, v) in form_pairs(query) {
        match k.as_str() {
            "q" => q = v,
            "limit" => {
                limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=crate::search::SEARCH_LIMIT_MAX).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "limit must be 1..={}",
                            crate::search::SEARCH_LIMIT_MAX
                        ))
                    })?;
            }
            "kind" if !v.is_empty() => {
                kind = Some(v.parse::<Kind>().map_err(ApiError::bad_request)?)
            }
            _ => {}
        }
    }
    if q.len() > 1024 {
        return Err(ApiError::bad_request("q is longer than 1024 bytes"));
    }
    let index = app.discovery.index().clone();
    let results = tokio::task::spawn_blocking(move || index.search(&q, kind, limit))
        .await
        .map_err(crate::app::join_error)?
        .map_err(|e| ApiError::Internal {
            message: format!("search failed: {e}"),
        })?;
    let value = serde_json::to_value(&results).map_err(|e| ApiError::Internal {
        message: format!("results do not serialise: {e}"),
    })?;
    let mut r = json_response(StatusCode::OK, &value);
    r.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-cache"),
    );
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_decode_and_params_parse() {
        assert_eq!(decode_segment("Hip%20Hop"), "Hip Hop");
        assert_eq!(decode_segment("R%26B+x%zz%4"), "R&B+x%zz%4");
        assert_eq!(decode_segment("%C3%A9"), "é");
        let p = list_params("limit=7&cursor=ab").unwrap();
        assert_eq!((p.limit, p.cursor.as_deref()), (7, Some("ab")));
        assert!(list_params("limit=0").is_err());
        assert!(list_params("limit=501").is_err());
        assert!(is_discovery_path(&["v1", "genres", "rock", "tracks"]));
        assert!(!is_discovery_path(&["v1", "tracks"]));
    }
}
