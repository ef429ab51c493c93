//! `GET` and `HEAD /v1/blobs/{id}`: textbook RFC 9110 serving of an
//! immutable, content-addressed blob.
//!
//! The decision (status and byte ranges) is [`super::plan::plan`], a pure
//! function; this module turns it into a response:
//! - Every 200/206 carries the strong `ETag: "<64-hex id>"` (the content id:
//!   identical on every node and after every restart), `Last-Modified` (the
//!   blob's `created_ms` truncated to seconds, stable for the same reason),
//!   `Accept-Ranges: bytes`, `Cache-Control: public, max-age=31536000,
//!   immutable`, `Date`, the caller's media type and an explicit
//!   `Content-Length` (HEAD: the full length; 206: the part or multipart
//!   length). Never chunked, never a content coding, no cookies.
//! - 304 repeats `ETag`, `Last-Modified`, `Cache-Control` and `Date` and has
//!   no body and no `Content-Length` at all (§15.4.5).
//! - 412 and 416 are JSON error bodies from [`ApiError`]; 416 carries
//!   `Content-Range: bytes */LEN`.
//!
//! Reading: a response of at most [`INLINE_READ_MAX_BYTES`] is read inline
//! (memory-hot small reads cost less than a thread hop); anything larger
//! streams from a blocking task, chunk by chunk, through the bounded channel
//! of [`Body::channel`]: at most [`super::body::STREAM_CHANNEL_CAPACITY`]
//! chunks are in flight per response, and when the client goes away the
//! next send fails and the task stops reading. Hot chunks come from the
//! blob store's chunk cache, verified once: slices passed on uncopied, and
//! from the mapped store locked page-cache pages, which the connection
//! hands to `sendfile` ([`super::sendfile`]).
//!
//! **Invariant:** every map slice that reaches a connection owns a lock over
//! its pages, taken after they were checked. A map slice no such lock covers
//! (a chunk's first read) was verified, but its page could be dropped and
//! read again from disk unchecked before the response is sent (or raise
//! SIGBUS under TLS, which reads it in user space); such a slice is copied
//! to the heap while it is hot ([`owned`]).

use std::cell::RefCell;
use std::hash::{BuildHasher, Hasher};
use std::io::Write as _;
use std::ops::Range;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ::http::header::{self, HeaderMap, HeaderValue};
use ::http::{Method, Response, StatusCode};
use bytes::Bytes;
use spindle_engine::blob::mapped::mapped_source;
use spindle_engine::blob::{self as engine_blob, BlobId, BlobStore};

use super::body::{Body, BodySender};
use super::plan::{plan, Plan};
use super::precondition::Validators;
use crate::error::ApiError;

/// Largest response read inline on the calling (async) thread.
pub const INLINE_READ_MAX_BYTES: u64 = 1 << 20;

const CACHE_CONTROL_IMMUTABLE: HeaderValue =
    HeaderValue::from_static("public, max-age=31536000, immutable");
const ACCEPT_RANGES_BYTES: HeaderValue = HeaderValue::from_static("bytes");

/// Serve `GET`/`HEAD /v1/blobs/{id_str}` from `store` as `media_type`.
///
/// Other methods get 405 with `Allow: GET, HEAD`; an id that is not 64
/// lowercase hex digits, or names no live blob, gets 404; engine failures
/// get 500. All errors go through [`ApiError::into_response`].
pub async fn serve_blob(
    store: &BlobStore,
    id_str: &str,
    media_type: &str,
    method: &Method,
    headers: &HeaderMap,
) -> Response<Body> {
    match serve(store, id_str, media_type, method, headers) {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

fn serve(
    store: &BlobStore,
    id_str: &str,
    media_type: &str,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response<Body>, ApiError> {
    if method != Method::GET && method != Method::HEAD {
        return Err(ApiError::MethodNotAllowed {
            method: method.to_string(),
            allow: "GET, HEAD",
        });
    }
    let not_found = || ApiError::NotFound { what: "blob" };
    let id: BlobId = id_str.parse().map_err(|_| not_found())?;
    let info = store
        .stat(&id)
        .map_err(|e| ApiError::storage("reading blob metadata", e))?
        .ok_or_else(not_found)?;
    let length_bytes = info.size_bytes;
    let last_modified_s = info.created_ms / 1000;
    // `parse` accepted only the canonical lowercase form, so the id string
    // is the opaque tag.
    let validators = Validators {
        etag_opaque: id_str.as_bytes(),
        last_modified_s,
    };
    let decision = plan(method, headers, &validators, length_bytes);

    let mut response = match &decision {
        Plan::PreconditionFailed => return Err(ApiError::PreconditionFailed),
        Plan::Unsatisfiable => {
            let mut r = ApiError::RangeNotSatisfiable { length_bytes }.into_response();
            r.headers_mut()
                .insert(header::ACCEPT_RANGES, ACCEPT_RANGES_BYTES);
            return Ok(r);
        }
        Plan::NotModified => {
            let mut r = Response::new(Body::empty());
            *r.status_mut() = StatusCode::NOT_MODIFIED;
            r
        }
        Plan::Full => {
            let body = if method == Method::HEAD {
                Body::empty()
            } else {
                read_body(
                    store,
                    id,
                    length_bytes,
                    &[Segment::Data(0..length_bytes)],
                    length_bytes,
                )?
            };
            let mut r = Response::new(body);
            let h = r.headers_mut();
            h.insert(header::CONTENT_TYPE, media_type_value(media_type));
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(length_bytes));
            h.insert(header::ACCEPT_RANGES, ACCEPT_RANGES_BYTES);
            r
        }
        Plan::Partial(range) => {
            let part_bytes = range.end - range.start;
            let body = read_body(
                store,
                id,
                length_bytes,
                &[Segment::Data(range.clone())],
                part_bytes,
            )?;
            let mut r = Response::new(body);
            *r.status_mut() = StatusCode::PARTIAL_CONTENT;
            let h = r.headers_mut();
            h.insert(header::CONTENT_TYPE, media_type_value(media_type));
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(part_bytes));
            h.insert(header::CONTENT_RANGE, content_range(range, length_bytes));
            h.insert(header::ACCEPT_RANGES, ACCEPT_RANGES_BYTES);
            r
        }
        Plan::Multipart(ranges) => {
            let (segments, total_bytes) = multipart_segments(ranges, media_type, length_bytes);
            let body = read_body(store, id, length_bytes, &segments, total_bytes)?;
            let mut r = Response::new(body);
            *r.status_mut() = StatusCode::PARTIAL_CONTENT;
            let h = r.headers_mut();
            let content_type = format!("multipart/byteranges; boundary={}", boundary());
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_str(&content_type).map_err(|e| ApiError::Internal {
                    message: format!("multipart content type: {e}"),
                })?,
            );
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(total_bytes));
            h.insert(header::ACCEPT_RANGES, ACCEPT_RANGES_BYTES);
            r
        }
    };
    let h = response.headers_mut();
    h.insert(header::ETAG, etag_value(id_str)?);
    h.insert(header::LAST_MODIFIED, http_date_value(last_modified_s));
    h.insert(header::CACHE_CONTROL, CACHE_CONTROL_IMMUTABLE);
    h.insert(header::DATE, date_now());
    Ok(response)
}

/// A piece of a response body: literal bytes (multipart framing) or a byte
/// range of the blob.
#[derive(Debug, Clone)]
enum Segment {
    Literal(Bytes),
    Data(Range<u64>),
}

/// The body made of `segments` (`total_bytes` long in all): read inline when
/// small, else streamed from a blocking task.
fn read_body(
    store: &BlobStore,
    id: BlobId,
    length_bytes: u64,
    segments: &[Segment],
    total_bytes: u64,
) -> Result<Body, ApiError> {
    if total_bytes == 0 {
        return Ok(Body::empty());
    }
    if total_bytes <= INLINE_READ_MAX_BYTES {
        // Sent as the pieces the store gives (several buffers rather than
        // a copy).
        let mut pieces: Vec<Bytes> = Vec::new();
        for segment in segments {
            match segment {
                Segment::Literal(b) => pieces.push(b.clone()),
                Segment::Data(r) => {
                    debug_assert!(r.end <= length_bytes);
                    for piece in store.read_range(&id, r.clone()).map_err(read_error)? {
                        pieces.push(owned(piece.map_err(read_error)?));
                    }
                }
            }
        }
        let body = if pieces.len() == 1 {
            Body::full(pieces.swap_remove(0))
        } else {
            Body::pieces(pieces)
        };
        assert_eq!(
            http_body::Body::size_hint(&body).exact(),
            Some(total_bytes),
            "response length"
        );
        return Ok(body);
    }
    let (tx, body) = Body::channel(total_bytes);
    let store = store.clone();
    let segments = segments.to_vec();
    tokio::task::spawn_blocking(move || produce(&store, id, &segments, &tx));
    Ok(body)
}

/// Feed `segments` into `tx`, chunk by chunk; stop at the first failed send
/// (the client is gone) or read error (sent on, which aborts the response).
fn produce(store: &BlobStore, id: BlobId, segments: &[Segment], tx: &BodySender) {
    for segment in segments {
        match segment {
            Segment::Literal(b) => {
                if tx.blocking_send(Ok(b.clone())).is_err() {
                    return;
                }
            }
            Segment::Data(r) => {
                let reader = match store.read_range(&id, r.clone()) {
                    Ok(reader) => reader,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(stream_error(id, e)));
                        return;
                    }
                };
                for piece in reader {
                    let item = piece.map(owned).map_err(|e| stream_error(id, e));
                    let failed = item.is_err();
                    if tx.blocking_send(item).is_err() || failed {
                        return;
                    }
                }
            }
        }
    }
}

/// `piece` as it may go to a connection: heap memory as it is; a map slice
/// as `Bytes` that own a lock over its checked pages (a chunk-cache hit,
/// see `MappedSource::pin`), else as a heap copy (see the module doc's
/// invariant).
fn owned(piece: Bytes) -> Bytes {
    match mapped_source(&piece) {
        None => piece,
        Some(source) => source
            .pin()
            .unwrap_or_else(|| Bytes::copy_from_slice(&piece)),
    }
}

fn read_error(e: engine_blob::Error) -> ApiError {
    match e {
        // Deleted between `stat` and the read.
        engine_blob::Error::NotFound(_) => ApiError::NotFound { what: "blob" },
        e => ApiError::storage("reading a blob", e),
    }
}

/// An engine error met mid-stream: logged here (the status line is already
/// sent), then handed to hyper as an I/O error, which aborts the response.
fn stream_error(id: BlobId, e: engine_blob::Error) -> std::io::Error {
    tracing::error!(blob = %id, error = %e, "blob read failed while streaming");
    std::io::Error::other(e)
}

/// The multipart/byteranges body of `ranges` (RFC 9110 §14.6, RFC 2046
/// §5.1.1): each part opens with a delimiter line, its own `Content-Type`
/// and `Content-Range`, a blank line, then the bytes; a closing delimiter
/// ends the body. Returns the segments and their total length.
fn multipart_segments(
    ranges: &[Range<u64>],
    media_type: &str,
    length_bytes: u64,
) -> (Vec<Segment>, u64) {
    let b = boundary();
    let media_type = media_type_value(media_type);
    let media_type = String::from_utf8_lossy(media_type.as_bytes());
    let mut segments = Vec::with_capacity(2 * ranges.len() + 1);
    let mut total_bytes = 0u64;
    for (i, r) in ranges.iter().enumerate() {
        let lead = if i == 0 { "" } else { "\r\n" };
        let head = format!(
            "{lead}--{b}\r\nContent-Type: {media_type}\r\nContent-Range: bytes {}-{}/{length_bytes}\r\n\r\n",
            r.start,
            r.end - 1
        );
        total_bytes += head.len() as u64 + (r.end - r.start);
        segments.push(Segment::Literal(Bytes::from(head)));
        segments.push(Segment::Data(r.clone()));
    }
    let tail = format!("\r\n--{b}--\r\n");
    total_bytes += tail.len() as u64;
    segments.push(Segment::Literal(Bytes::from(tail)));
    (segments, total_bytes)
}

/// The multipart boundary: 32 hex digits drawn once per process from the
/// OS-seeded hasher keys, so no blob can be crafted to contain it.
pub fn boundary() -> &'static str {
    static BOUNDARY: OnceLock<String> = OnceLock::new();
    BOUNDARY.get_or_init(|| {
        let mut s = String::with_capacity(40);
        s.push_str("spindle-");
        for salt in [0x5eed_u64, 0xb0b0] {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(salt);
            s.push_str(&format!("{:016x}", h.finish()));
        }
        s
    })
}

/// `Content-Range: bytes FIRST-LAST/LEN` for a non-empty `range`.
fn content_range(range: &Range<u64>, length_bytes: u64) -> HeaderValue {
    let mut buf = [0u8; 80];
    let n = {
        let mut w = &mut buf[..];
        let before = w.len();
        // Three u64s and 8 bytes of text always fit in 80 bytes.
        let _ = write!(
            w,
            "bytes {}-{}/{}",
            range.start,
            range.end - 1,
            length_bytes
        );
        before - w.len()
    };
    header_value(&buf[..n])
}

/// `"<id>"`.
fn etag_value(id_str: &str) -> Result<HeaderValue, ApiError> {
    let mut buf = [0u8; 66];
    let id = id_str.as_bytes();
    if id.len() != 64 {
        return Err(ApiError::Internal {
            message: format!("blob id of {} characters", id.len()),
        });
    }
    buf[0] = b'"';
    buf[1..65].copy_from_slice(id);
    buf[65] = b'"';
    Ok(header_value(&buf))
}

/// Bytes known to be a valid header value (ASCII text we formatted).
fn header_value(bytes: &[u8]) -> HeaderValue {
    match HeaderValue::from_bytes(bytes) {
        Ok(v) => v,
        Err(_) => panic!("formatted header value is not valid: {bytes:?}"),
    }
}

/// The caller's media type, from a static value for the usual audio types
/// (no allocation), `application/octet-stream` when it is not a valid value.
fn media_type_value(media_type: &str) -> HeaderValue {
    match media_type {
        "audio/ogg" => HeaderValue::from_static("audio/ogg"),
        "audio/mpeg" => HeaderValue::from_static("audio/mpeg"),
        "audio/flac" => HeaderValue::from_static("audio/flac"),
        "audio/mp4" => HeaderValue::from_static("audio/mp4"),
        "audio/wav" => HeaderValue::from_static("audio/wav"),
        "audio/webm" => HeaderValue::from_static("audio/webm"),
        "audio/aac" => HeaderValue::from_static("audio/aac"),
        "audio/opus" => HeaderValue::from_static("audio/opus"),
        "application/octet-stream" | "" => HeaderValue::from_static("application/octet-stream"),
        other => HeaderValue::from_str(other)
            .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream")),
    }
}

/// IMF-fixdate of `secs` since the epoch, e.g. `Tue, 02 Jan 2024 03:04:05 GMT`.
pub fn http_date_value(secs: u64) -> HeaderValue {
    let t = UNIX_EPOCH + Duration::from_secs(secs);
    let mut buf = [0u8; 40];
    let n = {
        let mut w = &mut buf[..];
        let before = w.len();
        // An IMF-fixdate is 29 bytes.
        let _ = write!(w, "{}", httpdate::HttpDate::from(t));
        before - w.len()
    };
    header_value(&buf[..n])
}

/// The `Date` header for now, formatted at most once per second per thread.
pub fn date_now() -> HeaderValue {
    thread_local! {
        static CACHED: RefCell<Option<(u64, HeaderValue)>> = const { RefCell::new(None) };
    }
    let now_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    CACHED.with(|c| {
        let mut c = c.borrow_mut();
        match &*c {
            Some((s, v)) if *s == now_s => v.clone(),
            _ => {
                let v = http_date_value(now_s);
                *c = Some((now_s, v.clone()));
                v
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use spindle_engine::blob::BlobConfig;
    use std::sync::Arc;

    const CHUNK: u32 = 4096;

    fn store(dir: &std::path::Path) -> BlobStore {
        let storage =
            spindle_engine::io::open_storage(dir, spindle_engine::io::BackendChoice::Portable)
                .unwrap();
        let config = BlobConfig {
            chunk_size_bytes: CHUNK,
            clock_ms: Arc::new(|| 1_704_164_645_123),
            ..BlobConfig::default()
        };
        BlobStore::open(storage, config).unwrap()
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    async fn get(
        store: &BlobStore,
        id: &str,
        method: Method,
        fields: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, Vec<u8>) {
        let mut h = HeaderMap::new();
        for (n, v) in fields {
            h.append(
                header::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let r = serve_blob(store, id, "audio/ogg", &method, &h).await;
        let status = r.status();
        let (parts, body) = r.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes().to_vec();
        (status, parts.headers, bytes)
    }

    fn s(h: &HeaderMap, name: header::HeaderName) -> Option<&str> {
        h.get(name).map(|v| v.to_str().unwrap())
    }

    #[tokio::test]
    async fn serves_full_partial_streamed_and_conditional() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        // Larger than the inline limit: streams.
        let blob = data(INLINE_READ_MAX_BYTES as usize + 5 * CHUNK as usize + 123);
        let id = store.put(&blob).unwrap().id.to_string();
        let etag = format!("\"{id}\"");

        let (st, h, body) = get(&store, &id, Method::GET, &[]).await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(body, blob);
        assert_eq!(
            s(&h, header::CONTENT_LENGTH),
            Some(&*blob.len().to_string())
        );
        assert_eq!(s(&h, header::ETAG), Some(&*etag));
        assert_eq!(
            s(&h, header::LAST_MODIFIED),
            Some("Tue, 02 Jan 2024 03:04:05 GMT")
        );
        assert_eq!(s(&h, header::ACCEPT_RANGES), Some("bytes"));
        assert_eq!(s(&h, header::CONTENT_TYPE), Some("audio/ogg"));
        assert_eq!(
            s(&h, header::CACHE_CONTROL),
            Some("public, max-age=31536000, immutable")
        );
        assert!(h.contains_key(header::DATE));

        let (st, h, body) = get(&store, &id, Method::HEAD, &[("range", "bytes=0-0")]).await;
        assert_eq!(st, StatusCode::OK);
        assert!(body.is_empty());
        assert_eq!(
            s(&h, header::CONTENT_LENGTH),
            Some(&*blob.len().to_string())
        );

        // Inline single range and a streamed one spanning chunks.
        for (range, start, end) in [
            ("bytes=10-19", 10, 20),
            ("bytes=4000-4199", 4000, 4200),
            ("bytes=100-", 100, blob.len()),
        ] {
            let (st, h, body) = get(&store, &id, Method::GET, &[("range", range)]).await;
            assert_eq!(st, StatusCode::PARTIAL_CONTENT, "{range}");
            assert_eq!(body, &blob[start..end], "{range}");
            assert_eq!(
                s(&h, header::CONTENT_RANGE),
                Some(&*format!("bytes {}-{}/{}", start, end - 1, blob.len()))
            );
            assert_eq!(
                s(&h, header::CONTENT_LENGTH),
                Some(&*(end - start).to_string())
            );
        }

        let (st, h, body) = get(&store, &id, Method::GET, &[("if-none-match", &etag)]).await;
        assert_eq!(st, StatusCode::NOT_MODIFIED);
        assert!(body.is_empty());
        assert!(!h.contains_key(header::CONTENT_LENGTH));
        assert!(!h.contains_key(header::CONTENT_TYPE));
        assert_eq!(s(&h, header::ETAG), Some(&*etag));

        let (st, h, _) = get(&store, &id, Method::GET, &[("range", "bytes=99999999-")]).await;
        assert_eq!(st, StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(
            s(&h, header::CONTENT_RANGE),
            Some(&*format!("bytes */{}", blob.len()))
        );

        let (st, _, body) = get(&store, &id, Method::GET, &[("if-match", "\"x\"")]).await;
        assert_eq!(st, StatusCode::PRECONDITION_FAILED);
        assert!(String::from_utf8(body)
            .unwrap()
            .contains("precondition_failed"));
    }

    #[tokio::test]
    async fn multipart_small_and_streamed_agree() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let blob = data(INLINE_READ_MAX_BYTES as usize + 3 * CHUNK as usize);
        let id = store.put(&blob).unwrap().id.to_string();
        for range in ["bytes=0-9,20-29", "bytes=0-9,-3000", "bytes=0-9,-1050000"] {
            let (st, h, body) = get(&store, &id, Method::GET, &[("range", range)]).await;
            assert_eq!(st, StatusCode::PARTIAL_CONTENT);
            let ct = s(&h, header::CONTENT_TYPE).unwrap();
            let b = ct.strip_prefix("multipart/byteranges; boundary=").unwrap();
            assert_eq!(b, boundary());
            assert!(!h.contains_key(header::CONTENT_RANGE));
            assert_eq!(
                s(&h, header::CONTENT_LENGTH),
                Some(&*body.len().to_string())
            );
            let (r2_start, r2_end) = match range.rsplit_once(",-") {
                Some((_, n)) => (blob.len() - n.parse::<usize>().unwrap(), blob.len()),
                None => (20, 30),
            };
            let mut want = Vec::new();
            want.extend_from_slice(
                format!(
                    "--{b}\r\nContent-Type: audio/ogg\r\nContent-Range: bytes 0-9/{}\r\n\r\n",
                    blob.len()
                )
                .as_bytes(),
            );
            want.extend_from_slice(&blob[0..10]);
            want.extend_from_slice(
                format!(
                    "\r\n--{b}\r\nContent-Type: audio/ogg\r\nContent-Range: bytes {}-{}/{}\r\n\r\n",
                    r2_start,
                    r2_end - 1,
                    blob.len()
                )
                .as_bytes(),
            );
            want.extend_from_slice(&blob[r2_start..r2_end]);
            want.extend_from_slice(format!("\r\n--{b}--\r\n").as_bytes());
            assert_eq!(body, want, "{range}");
        }
    }

    #[tokio::test]
    async fn errors_and_empty_blob() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let (st, _, body) = get(&store, "nothex", Method::GET, &[]).await;
        assert_eq!(st, StatusCode::NOT_FOUND);
        assert!(String::from_utf8(body).unwrap().contains("not_found"));
        let missing = BlobId::of(b"never stored").to_string();
        assert_eq!(
            get(&store, &missing, Method::GET, &[]).await.0,
            StatusCode::NOT_FOUND
        );
        let (st, h, _) = get(&store, &missing, Method::POST, &[]).await;
        assert_eq!(st, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(s(&h, header::ALLOW), Some("GET, HEAD"));

        let id = store.put(b"").unwrap().id.to_string();
        for range in [None, Some("bytes=0-"), Some("bytes=-0")] {
            let fields: Vec<(&str, &str)> = range.map(|r| ("range", r)).into_iter().collect();
            let (st, h, body) = get(&store, &id, Method::GET, &fields).await;
            assert_eq!(st, StatusCode::OK, "{range:?}");
            assert!(body.is_empty());
            assert_eq!(s(&h, header::CONTENT_LENGTH), Some("0"));
        }
    }

    #[test]
    fn dates_format_as_imf_fixdate() {
        assert_eq!(http_date_value(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(
            http_date_value(1_704_164_645),
            "Tue, 02 Jan 2024 03:04:05 GMT"
        );
        assert_eq!(date_now().len(), 29);
        assert_eq!(content_range(&(0..1), 1), "bytes 0-0/1");
        assert_eq!(
            content_range(&(0..u64::MAX), u64::MAX),
            "bytes 0-18446744073709551614/18446744073709551615"
        );
    }
}
