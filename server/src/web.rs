//! The web player: static assets embedded in the binary and served at `/`
//! and `/assets/*`.
//!
//! The player (`server/assets/`) is plain HTML, CSS and JavaScript with no
//! build step; `include_bytes!` puts it in the binary, so a user runs one
//! executable and opens `http://127.0.0.1:8080/`. The player routes on the
//! URL fragment (`/#/track/ID`), so only `/`, `/index.html` and the asset
//! paths reach the server.
//!
//! **Invariant:** every asset is answered with its exact bytes, its media
//! type, a strong `ETag` (the first 16 bytes of the blake3 hash of the bytes,
//! computed once on first use, so it changes exactly when the bytes do) and
//! `Cache-Control: no-cache` (browsers revalidate, a matching
//! `If-None-Match` gets a bodiless 304). A Content-Security-Policy of
//! `'self'` only keeps the page from ever loading anything external.

use std::sync::OnceLock;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};

use crate::http::body::Body;

/// One embedded file.
struct Asset {
    /// Request path that serves it.
    path: &'static str,
    media_type: &'static str,
    bytes: &'static [u8],
}

const ASSETS: [Asset; 4] = [
    Asset {
        path: "/",
        media_type: "text/html; charset=utf-8",
        bytes: include_bytes!("../assets/index.html"),
    },
    Asset {
        path: "/assets/app.js",
        media_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../assets/app.js"),
    },
    Asset {
        path: "/assets/style.css",
        media_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../assets/style.css"),
    },
    Asset {
        path: "/assets/icon.svg",
        media_type: "image/svg+xml",
        bytes: include_bytes!("../assets/icon.svg"),
    },
];

/// Sent with every asset: only this origin, nothing inline, no framing.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
                   img-src 'self' data: blob:; media-src 'self' blob:; connect-src 'self'; \
                   object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

/// The index in [`ASSETS`] serving `path`, if any.
fn lookup(path: &str) -> Option<usize> {
    let path = match path {
        "/index.html" => "/",
        "/favicon.ico" | "/favicon.svg" => "/assets/icon.svg",
        p => p,
    };
    ASSETS.iter().position(|a| a.path == path)
}

/// Whether `path` is served by this module (any method; others get 405).
pub fn is_web_path(path: &str) -> bool {
    lookup(path).is_some()
}

/// The strong ETags of [`ASSETS`], in order, computed once.
fn etags() -> &'static [String] {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                let hash = blake3::hash(a.bytes);
                format!("\"{}\"", crate::tokens::hex(&hash.as_bytes()[..16]))
            })
            .collect()
    })
}

/// Whether an `If-None-Match` value matches `etag` (weak comparison, `*`
/// matches anything, as RFC 9110 section 13.1.2 asks).
fn none_match(value: &str, etag: &str) -> bool {
    value
        .split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

/// Answers a request for a web path: `None` when `path` is not one (see
/// [`is_web_path`]).
pub fn serve(method: &Method, path: &str, headers: &HeaderMap) -> Option<Response<Body>> {
    let index = lookup(path)?;
    let asset = &ASSETS[index];
    let etag = &etags()[index];
    let mut r = Response::new(Body::empty());
    if method != Method::GET && method != Method::HEAD {
        *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return Some(r);
    }
    let matched = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| none_match(v, etag));
    if matched {
        *r.status_mut() = StatusCode::NOT_MODIFIED;
    }
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if matched {
        return Some(r);
    }
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.media_type),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(asset.bytes.len()));
    if method == Method::GET {
        *r.body_mut() = Body::full(Bytes::from_static(asset.bytes));
    }
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str, inm: Option<&str>) -> Option<Response<Body>> {
        let mut h = HeaderMap::new();
        if let Some(v) = inm {
            h.insert(header::IF_NONE_MATCH, HeaderValue::from_str(v).unwrap());
        }
        serve(&Method::GET, path, &h)
    }

    #[test]
    fn assets_have_types_etags_and_revalidate() {
        let r = get("/", None).unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        let etag = r.headers()[header::ETAG].to_str().unwrap().to_owned();
        assert_eq!(etag.len(), 34);
        assert_eq!(r.headers()[header::CACHE_CONTROL], "no-cache");
        assert_eq!(
            get("/index.html", None).unwrap().headers()[header::ETAG],
            etag.as_str()
        );
        let js = get("/assets/app.js", None).unwrap();
        assert_eq!(
            js.headers()[header::CONTENT_TYPE],
            "text/javascript; charset=utf-8"
        );
        assert_ne!(js.headers()[header::ETAG], etag.as_str());
        let r304 = get("/", Some(&format!("\"x\", W/{etag}"))).unwrap();
        assert_eq!(r304.status(), StatusCode::NOT_MODIFIED);
        assert!(r304.headers().get(header::CONTENT_LENGTH).is_none());
        assert_eq!(
            get("/", Some("\"other\"")).unwrap().status(),
            StatusCode::OK
        );
        assert_eq!(
            get("/", Some("*")).unwrap().status(),
            StatusCode::NOT_MODIFIED
        );
        assert!(get("/assets/nope.js", None).is_none());
        assert!(get("/v1/tracks", None).is_none());
        let post = serve(&Method::POST, "/", &HeaderMap::new()).unwrap();
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        let head = serve(&Method::HEAD, "/assets/style.css", &HeaderMap::new()).unwrap();
        assert_eq!(
            head.headers()[header::CONTENT_LENGTH],
            ASSETS[2].bytes.len().to_string().as_str()
        );
    }

    #[test]
    fn index_references_only_local_assets() {
        let html = std::str::from_utf8(ASSETS[0].bytes).unwrap();
        for needle in ["/assets/app.js", "/assets/style.css", "/assets/icon.svg"] {
            assert!(html.contains(needle), "index.html lacks {needle}");
        }
        for asset in &ASSETS {
            let text = std::str::from_utf8(asset.bytes).unwrap();
            assert!(
                !text.contains("http://") && !text.contains("https://")
                    || asset.path == "/assets/icon.svg",
                "{} names an external URL",
                asset.path
            );
        }
    }
}
