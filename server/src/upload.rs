//! `POST /v1/tracks`: a streamed upload and its claim-check commit.
//!
//! The body is either the raw audio (fields as query parameters) or
//! `multipart/form-data` (one file part plus fields). Either way it flows
//! through three stages, each bounded:
//! 1. a pump task reads hyper's body frames, each within the body-read
//!    timeout, into a channel of [`PUMP_CHANNEL_CAPACITY`] frames;
//! 2. the handler (parsing multipart where needed) hands the file's bytes to
//!    a [`Sink`], which counts them against the upload limit and passes them
//!    over a channel of [`SINK_CHANNEL_CAPACITY`] pieces to
//! 3. one blocking thread per upload that writes them into a `BlobWriter`.
//!
//! So an upload of any size holds a few frames plus one chunk buffer of the
//! blob store in memory. When the blob is durable, ONE metadata batch commits
//! the track, its `blob_meta` entry and its transcode job (see
//! [`crate::track`]); only then is `202 Accepted` sent.
//!
//! **Invariant:** any failure before the commit (client gone, timeout, limit,
//! malformed multipart) drops the `BlobWriter` unfinished, which leaves its
//! chunks unreferenced: garbage that compaction reclaims, never a track.
//! A failed commit drops the blob reference it took.
//!
//! On 413 the pump keeps reading and discarding up to [`DRAIN_MAX_BYTES`]
//! for at most [`DRAIN_MAX_MS`], so a client still sending a moderate excess
//! receives the 413 instead of a connection reset.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use spindle_engine::blob::{BlobRef, BlobStore};
use spindle_engine::meta::Batch;
use spindle_engine::queue::JobSpec;
use tokio::sync::mpsc;

use crate::app::{form_pairs, join_error, json_response, App};
use crate::error::ApiError;
use crate::http::body::Body;
use crate::sniff::{sniff, SNIFF_LEN};
use crate::tokens::Role;
use crate::track::{
    new_track_id, BlobRefJson, Kind, Status, Track, TrackFields, TranscodeJob, BLOB_META_KEYSPACE,
    FIELD_LEN_MAX, TRACKS_KEYSPACE, TRANSCODE_MAX_ATTEMPTS,
};

/// Body frames the pump may read ahead of the handler.
pub const PUMP_CHANNEL_CAPACITY: usize = 4;
/// Pieces the handler may queue for the blocking writer.
pub const SINK_CHANNEL_CAPACITY: usize = 8;
/// Bytes a multipart body may carry beyond the file: part heads and fields.
pub const MULTIPART_OVERHEAD_BYTES_MAX: u64 = 1 << 20;
/// After a 413, bytes read and discarded at most.
pub const DRAIN_MAX_BYTES: u64 = 8 << 20;
/// After a 413, time spent draining at most.
pub const DRAIN_MAX_MS: u64 = 5_000;

/// Why the request body stopped.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("no part of the request body arrived for {0} ms")]
    Timeout(u64),
    #[error("reading the request body failed: {0}")]
    Client(String),
}

impl From<BodyError> for ApiError {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::Timeout(_) => ApiError::RequestTimeout,
            BodyError::Client(message) => {
                ApiError::bad_request(format!("the upload was cut off or malformed: {message}"))
            }
        }
    }
}

/// Starts the pump task of stage 1 and returns its receiving end.
fn pump(mut body: Incoming, timeout_ms: u64) -> mpsc::Receiver<Result<Bytes, BodyError>> {
    let (tx, rx) = mpsc::channel(PUMP_CHANNEL_CAPACITY);
    tokio::spawn(async move {
        let timeout = Duration::from_millis(timeout_ms);
        loop {
            let frame = match tokio::time::timeout(timeout, body.frame()).await {
                Err(_) => {
                    let _ = tx.send(Err(BodyError::Timeout(timeout_ms))).await;
                    return;
                }
                Ok(None) => return,
                Ok(Some(Err(e))) => {
                    let _ = tx.send(Err(BodyError::Client(e.to_string()))).await;
                    return;
                }
                Ok(Some(Ok(frame))) => frame,
            };
            let Ok(data) = frame.into_data() else {
                continue; // trailers
            };
            if tx.send(Ok(data)).await.is_err() {
                break; // the handler gave up: drain below
            }
        }
        // Drain a bounded excess so the client can read our answer.
        let deadline = Instant::now() + Duration::from_millis(DRAIN_MAX_MS);
        let mut drained = 0u64;
        while drained < DRAIN_MAX_BYTES {
            match tokio::time::timeout_at(deadline.into(), body.frame()).await {
                Ok(Some(Ok(frame))) => {
                    drained += frame.data_ref().map_or(0, |d| d.len() as u64);
                }
                _ => break,
            }
        }
    });
    rx
}

enum Piece {
    Data(Bytes),
    Finish,
}

/// Stage 2: counts bytes against the limit, keeps the head for sniffing,
/// feeds the blocking writer.
struct Sink {
    tx: mpsc::Sender<Piece>,
    writer: tokio::task::JoinHandle<Result<Option<BlobRef>, spindle_engine::blob::Error>>,
    written_bytes: u64,
    limit_bytes: u64,
    head: Vec<u8>,
}

impl Sink {
    fn start(blobs: BlobStore, limit_bytes: u64) -> Sink {
        let (tx, mut rx) = mpsc::channel::<Piece>(SINK_CHANNEL_CAPACITY);
        let writer = tokio::task::spawn_blocking(move || {
            let mut w = blobs.writer();
            while let Some(piece) = rx.blocking_recv() {
                match piece {
                    Piece::Data(data) => w.write(&data)?,
                    Piece::Finish => return w.finish().map(Some),
                }
            }
            // The sender went away without `Finish`: abort. Dropping the
            // writer leaves its chunks to compaction.
            Ok(None)
        });
        Sink {
            tx,
            writer,
            written_bytes: 0,
            limit_bytes,
            head: Vec::with_capacity(SNIFF_LEN),
        }
    }

    async fn write(&mut self, data: Bytes) -> Result<(), ApiError> {
        let len = data.len() as u64;
        if self.written_bytes + len > self.limit_bytes {
            return Err(ApiError::PayloadTooLarge {
                limit_bytes: self.limit_bytes,
            });
        }
        if self.head.len() < SNIFF_LEN {
            let take = (SNIFF_LEN - self.head.len()).min(data.len());
            self.head.extend_from_slice(&data[..take]);
        }
        self.written_bytes += len;
        if self.tx.send(Piece::Data(data)).await.is_err() {
            // The writer stopped early: it failed. Report why.
            return Err(self.writer_error().await);
        }
        Ok(())
    }

    async fn writer_error(&mut self) -> ApiError {
        match (&mut self.writer).await {
            Err(e) => join_error(e),
            Ok(Err(e)) => ApiError::storage("writing an upload", e),
            Ok(Ok(_)) => ApiError::Internal {
                message: "blob writer stopped before the upload ended".into(),
            },
        }
    }

    async fn finish(mut self) -> Result<(BlobRef, Vec<u8>), ApiError> {
        if self.tx.send(Piece::Finish).await.is_err() {
            return Err(self.writer_error().await);
        }
        match (&mut self.writer).await {
            Err(e) => Err(join_error(e)),
            Ok(Err(e)) => Err(ApiError::storage("finishing an upload", e)),
            Ok(Ok(Some(blob))) => Ok((blob, self.head)),
            Ok(Ok(None)) => Err(ApiError::Internal {
                message: "blob writer aborted although finish was sent".into(),
            }),
        }
    }
}

/// What the client submitted besides the bytes.
struct Submission {
    fields: TrackFields,
    /// `None` until the client names one.
    kind: Option<Kind>,
    declared_type: Option<String>,
}

impl Submission {
    fn apply(&mut self, name: &str, value: String) -> Result<(), ApiError> {
        if name == "kind" {
            self.kind = Some(value.parse().map_err(ApiError::bad_request)?);
            return Ok(());
        }
        self.fields
            .set(name, value)
            .map_err(ApiError::bad_request)?;
        Ok(())
    }
}

/// `POST /v1/tracks`.
pub async fn create_track(
    app: Arc<App>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    app.tokens.authorize(req.headers(), &[Role::Creator])?;
    let limit_bytes = app.config.upload_limit_bytes;
    let mut sub = Submission {
        fields: TrackFields::default(),
        kind: None,
        declared_type: None,
    };
    for (name, value) in form_pairs(req.uri().query().unwrap_or("")) {
        sub.apply(&name, value)?;
    }
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let boundary = content_type
        .as_deref()
        .filter(|ct| {
            ct.trim_start()
                .to_ascii_lowercase()
                .starts_with("multipart/form-data")
        })
        .map(|ct| {
            multer::parse_boundary(ct).map_err(|e| ApiError::bad_request(format!("multipart: {e}")))
        })
        .transpose()?;
    let declared_len = req.body().size_hint().exact();
    let (_parts, body) = req.into_parts();
    let rx = pump(body, app.config.body_read_timeout_ms);
    // Multipart framing and fields may add up to MULTIPART_OVERHEAD_BYTES_MAX.
    let allowed_len = match boundary {
        None => limit_bytes,
        Some(_) => limit_bytes.saturating_add(MULTIPART_OVERHEAD_BYTES_MAX),
    };
    if declared_len.is_some_and(|n| n > allowed_len) {
        drop(rx); // the pump drains a bounded excess
        app.metrics.uploads_failed.fetch_add(1, Ordering::Relaxed);
        return Err(ApiError::PayloadTooLarge { limit_bytes });
    }
    let sink = Sink::start(app.blobs.clone(), limit_bytes);
    let received = match boundary {
        None => {
            sub.declared_type = content_type;
            receive_raw(rx, sink).await
        }
        Some(boundary) => receive_multipart(rx, boundary, sink, &mut sub, limit_bytes).await,
    };
    let (blob, head) = match received {
        Ok(r) => r,
        Err(e) => {
            app.metrics.uploads_failed.fetch_add(1, Ordering::Relaxed);
            return Err(e);
        }
    };
    let result = commit_track(&app, blob, &head, sub).await;
    match &result {
        Ok((track, _)) => {
            app.metrics.uploads_accepted.fetch_add(1, Ordering::Relaxed);
            app.metrics
                .upload_bytes
                .fetch_add(track.raw.size_bytes, Ordering::Relaxed);
        }
        Err(_) => {
            app.metrics.uploads_failed.fetch_add(1, Ordering::Relaxed);
        }
    }
    let (track, location) = result?;
    let mut response = json_response(StatusCode::ACCEPTED, &track.to_api_json());
    response.headers_mut().insert(header::LOCATION, location);
    Ok(response)
}

async fn receive_raw(
    mut rx: mpsc::Receiver<Result<Bytes, BodyError>>,
    mut sink: Sink,
) -> Result<(BlobRef, Vec<u8>), ApiError> {
    while let Some(piece) = rx.recv().await {
        sink.write(piece?).await?;
    }
    sink.finish().await
}

fn multipart_error(e: multer::Error) -> ApiError {
    match e {
        multer::Error::StreamSizeExceeded { limit }
        | multer::Error::FieldSizeExceeded { limit, .. } => {
            ApiError::PayloadTooLarge { limit_bytes: limit }
        }
        multer::Error::StreamReadFailed(inner) => match inner.downcast::<BodyError>() {
            Ok(body_error) => ApiError::from(*body_error),
            Err(other) => ApiError::bad_request(format!("multipart: {other}")),
        },
        other => ApiError::bad_request(format!("malformed multipart body: {other}")),
    }
}

async fn receive_multipart(
    rx: mpsc::Receiver<Result<Bytes, BodyError>>,
    boundary: String,
    mut sink: Sink,
    sub: &mut Submission,
    limit_bytes: u64,
) -> Result<(BlobRef, Vec<u8>), ApiError> {
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    // The whole body may exceed the file by the fields and part headers.
    let constraints = multer::Constraints::new().size_limit(
        multer::SizeLimit::new()
            .whole_stream(limit_bytes.saturating_add(MULTIPART_OVERHEAD_BYTES_MAX))
            .per_field(limit_bytes.saturating_add(1)),
    );
    let mut multipart = multer::Multipart::with_constraints(stream, boundary, constraints);
    let mut file_seen = false;
    while let Some(mut field) = multipart.next_field().await.map_err(multipart_error)? {
        let name = field.name().unwrap_or("").to_owned();
        if field.file_name().is_some() || name == "file" {
            if file_seen {
                return Err(ApiError::bad_request("more than one file part"));
            }
            file_seen = true;
            if sub.fields.filename.is_none() {
                if let Some(f) = field.file_name() {
                    sub.apply("filename", f.chars().take(FIELD_LEN_MAX / 4).collect())?;
                }
            }
            sub.declared_type = field.content_type().map(|m| m.to_string());
            while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
                sink.write(chunk).await?;
            }
        } else {
            let mut value = Vec::new();
            while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
                if value.len() + chunk.len() > FIELD_LEN_MAX {
                    return Err(ApiError::bad_request(format!(
                        "form field {name:?} is longer than {FIELD_LEN_MAX} bytes"
                    )));
                }
                value.extend_from_slice(&chunk);
            }
            let value = String::from_utf8(value)
                .map_err(|_| ApiError::bad_request(format!("form field {name:?} is not UTF-8")))?;
            sub.apply(&name, value)?;
        }
    }
    if !file_seen {
        return Err(ApiError::bad_request(
            "multipart upload without a file part (a part with a filename, or named \"file\")",
        ));
    }
    sink.finish().await
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The claim-check commit: track + `blob_meta` + transcode job in one batch.
async fn commit_track(
    app: &Arc<App>,
    blob: BlobRef,
    head: &[u8],
    sub: Submission,
) -> Result<(Track, HeaderValue), ApiError> {
    let id = new_track_id().map_err(|e| ApiError::Internal {
        message: format!("no randomness for a track id: {e}"),
    })?;
    let location =
        HeaderValue::from_str(&format!("/v1/tracks/{id}")).map_err(|_| ApiError::Internal {
            message: "track id is not a header value".into(),
        })?;
    let media_type = sniff(head, sub.declared_type.as_deref());
    let now = now_ms();
    let track = Track {
        id: id.clone(),
        status: Status::Processing,
        kind: sub.kind.unwrap_or(Kind::Song),
        kind_submitted: sub.kind.is_some(),
        fields: sub.fields,
        raw: BlobRefJson {
            blob_id: blob.id.to_string(),
            size_bytes: blob.size_bytes,
            media_type: media_type.clone(),
            bitrate_kbps: None,
        },
        tiers: Default::default(),
        failure_reason: None,
        created_ms: now,
        updated_ms: now,
        media: Default::default(),
    };
    let record = serde_json::to_vec(&track).map_err(|e| ApiError::Internal {
        message: format!("track does not serialize: {e}"),
    })?;
    let job = serde_json::to_vec(&TranscodeJob {
        track_id: id.clone(),
        raw_blob_id: track.raw.blob_id.clone(),
    })
    .map_err(|e| ApiError::Internal {
        message: format!("job does not serialize: {e}"),
    })?;
    let app2 = app.clone();
    let catalog_track = track.clone();
    tokio::task::spawn_blocking(move || {
        let mut batch = Batch::new();
        batch.put(TRACKS_KEYSPACE, id.as_bytes(), &record);
        crate::catalog::index_track(&mut batch, None, Some(&catalog_track));
        batch.put(BLOB_META_KEYSPACE, blob.id.0, media_type.as_bytes());
        let committed = app2
            .queue
            .enqueue_in(
                &mut batch,
                JobSpec {
                    idempotency_key: id.clone(),
                    payload: job,
                    max_attempts: TRANSCODE_MAX_ATTEMPTS,
                },
            )
            .and_then(|_| app2.meta.commit(batch));
        if let Err(e) = committed {
            // Give back the reference the upload took; the blob's chunks
            // become garbage unless another track shares them.
            if let Err(release) = app2.blobs.delete(&blob.id) {
                tracing::error!(error = %release, blob = %blob.id, "cannot release the blob of a failed upload");
            }
            return Err(ApiError::storage("committing an upload", e));
        }
        Ok(())
    })
    .await
    .map_err(join_error)??;
    Ok((track, location))
}
