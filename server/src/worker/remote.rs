//! The job routes remote `spindle worker`s use (admin token only: a worker
//! can complete any job, so it gets the admin token):
//!
//! - `POST /v1/jobs/lease?worker=ID&lease_ms=N`: 200 with a [`LeaseJson`]
//!   (job, lease token, track, raw blob id and size), or 204 when no job is
//!   due.
//! - `POST /v1/jobs/{job}/extend?token=T&lease_ms=N`: heartbeat; 409
//!   `lease_lost` once another worker holds the job.
//! - `POST /v1/jobs/{job}/blobs?token=T`: one tier (or the cover) as the raw
//!   request body, streamed frame by frame into a blob writer; the job then
//!   holds it (see [`super::complete::hold_blob`]); answers its id and size.
//! - `POST /v1/jobs/{job}/complete?token=T`: a JSON [`Completion`] naming
//!   held blobs; commits `ready` with the ack.
//! - `POST /v1/jobs/{job}/fail?token=T`: JSON [`FailJson`]; permanent marks
//!   the track `failed` with the ack, otherwise the job is nacked.
//!
//! The raw blob is read with ordinary range requests on `/v1/blobs/{id}`.
//! A worker that dies loses nothing: its lease expires and the job is
//! redelivered; blobs it uploaded are held in the job's ledger and reused.

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use spindle_engine::queue::{JobId, Lease};

use super::complete::{self, Completion, Finish};
use super::sink::BlobSink;
use super::{Deps, WorkerError};
use crate::app::{form_pairs, join_error, json_response, App};
use crate::error::ApiError;
use crate::http::body::Body;
use crate::track::{TranscodeJob, TRANSCODE_MAX_ATTEMPTS};

/// A leased job as a remote worker sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseJson {
    pub job_id: String,
    pub token: u64,
    pub attempt: u32,
    pub expires_ms: u64,
    pub track_id: String,
    pub raw_blob_id: String,
    pub raw_size_bytes: u64,
    #[serde(default)]
    pub file_name: Option<String>,
}

/// Body of `/fail`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailJson {
    pub reason: String,
    pub permanent: bool,
    /// The attempt that failed (a transient failure of the last allowed
    /// attempt fails the track).
    pub attempt: u32,
}

/// Answer of `/blobs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldBlobJson {
    pub blob_id: String,
    pub size_bytes: u64,
}

/// Whether `path` is one of the job routes.
pub fn is_jobs_path(path: &str) -> bool {
    path == "/v1/jobs" || path.starts_with("/v1/jobs/")
}

fn deps(app: &App) -> Deps {
    Deps {
        blobs: app.blobs.clone(),
        meta: app.meta.clone(),
        queue: app.queue.clone(),
    }
}

fn lease_lost() -> ApiError {
    ApiError::Conflict {
        code: "lease_lost",
        message: "the job's lease expired and another worker holds it".into(),
    }
}

fn worker_error(e: WorkerError) -> ApiError {
    match e {
        WorkerError::LeaseLost => lease_lost(),
        WorkerError::NotProcessing => ApiError::Conflict {
            code: "track_gone",
            message: "the track was deleted or is no longer processing".into(),
        },
        WorkerError::Corrupt { what, reason } => ApiError::bad_request(format!("{what}: {reason}")),
        other => ApiError::Internal {
            message: other.to_string(),
        },
    }
}

fn meta_error(e: spindle_engine::meta::Error) -> ApiError {
    match e {
        spindle_engine::meta::Error::LeaseLost { .. } => lease_lost(),
        other => ApiError::storage("updating a job", other),
    }
}

/// Answers one job route.
pub async fn handle(app: Arc<App>, req: Request<Incoming>) -> Response<Body> {
    route(app, req)
        .await
        .unwrap_or_else(ApiError::into_response)
}

async fn route(app: Arc<App>, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    app.tokens.authorize(req.headers(), &[])?;
    if req.method() != Method::POST {
        return Err(ApiError::MethodNotAllowed {
            method: req.method().as_str().chars().take(32).collect(),
            allow: "POST",
        });
    }
    let path = req.uri().path().to_owned();
    let mut token = None;
    let mut track = None;
    let mut worker = String::from("remote");
    let mut lease_ms = app.config.transcode.lease_ms;
    for (k, v) in form_pairs(req.uri().query().unwrap_or("")) {
        match k.as_str() {
            "token" => token = v.parse::<u64>().ok(),
            "track" => track = crate::track::is_track_id(&v).then_some(v),
            "worker" => worker = v.chars().take(128).collect(),
            "lease_ms" => {
                lease_ms = v
                    .parse::<u64>()
                    .map_err(|_| ApiError::bad_request("lease_ms must be a number"))?
                    .clamp(1_000, 3_600_000)
            }
            _ => {}
        }
    }
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let d = deps(&app);
    match segments.as_slice() {
        ["v1", "jobs", "lease"] => {
            let got = tokio::task::spawn_blocking(move || lease(&d, &worker, lease_ms))
                .await
                .map_err(join_error)??;
            Ok(match got {
                Some(l) => {
                    json_response(StatusCode::OK, &serde_json::to_value(l).unwrap_or_default())
                }
                None => {
                    let mut r = Response::new(Body::empty());
                    *r.status_mut() = StatusCode::NO_CONTENT;
                    r
                }
            })
        }
        ["v1", "jobs", id, action] => {
            let job_id: JobId = id.parse().map_err(|_| ApiError::NotFound { what: "job" })?;
            let token = token.ok_or_else(|| ApiError::bad_request("token is required"))?;
            // The job's track (from the lease answer): a lease extension
            // answers no payload, and only admins reach these routes.
            let track = track.unwrap_or_default();
            let lease = Lease {
                job_id,
                worker_id: String::new(),
                attempt: 0,
                payload: Bytes::new(),
                expires_ms: 0,
                token,
            };
            match *action {
                "extend" => {
                    let l = tokio::task::spawn_blocking(move || d.queue.extend(&lease, lease_ms))
                        .await
                        .map_err(join_error)?
                        .map_err(meta_error)?;
                    Ok(json_response(
                        StatusCode::OK,
                        &serde_json::json!({ "expires_ms": l.expires_ms }),
                    ))
                }
                "blobs" => upload_blob(&app, d, lease, track, lease_ms, req).await,
                "complete" | "fail" => {
                    let body = small_body(req).await?;
                    let action = action.to_string();
                    let done = tokio::task::spawn_blocking(move || {
                        finish(&d, &lease, &track, lease_ms, &action, &body)
                    })
                    .await
                    .map_err(join_error)??;
                    Ok(json_response(
                        StatusCode::OK,
                        &serde_json::json!({ "outcome": done }),
                    ))
                }
                _ => Err(ApiError::NoRoute {
                    path: path.chars().take(256).collect(),
                }),
            }
        }
        _ => Err(ApiError::NoRoute {
            path: path.chars().take(256).collect(),
        }),
    }
}

fn lease(d: &Deps, worker: &str, lease_ms: u64) -> Result<Option<LeaseJson>, ApiError> {
    // Jobs whose track is gone are acked here and the next one tried.
    for _ in 0..16 {
        let Some(l) = d
            .queue
            .lease(worker, lease_ms)
            .map_err(|e| ApiError::storage("leasing a job", e))?
        else {
            return Ok(None);
        };
        let job: TranscodeJob = match serde_json::from_slice(&l.payload) {
            Ok(j) => j,
            Err(e) => {
                let reason = format!("unreadable transcode job payload: {e}");
                let _ = d.queue.nack(&l, &reason, true);
                continue;
            }
        };
        let track = complete::load_track(d, &job.track_id).map_err(worker_error)?;
        let Some((_, track)) = track.filter(|(_, t)| t.status == crate::track::Status::Processing)
        else {
            let gone = Finish::Failed {
                reason: String::new(),
            };
            let _ = complete::commit(d, &l, &job.track_id, &gone);
            continue;
        };
        return Ok(Some(LeaseJson {
            job_id: l.job_id.to_string(),
            token: l.token,
            attempt: l.attempt,
            expires_ms: l.expires_ms,
            track_id: job.track_id,
            raw_blob_id: job.raw_blob_id,
            raw_size_bytes: track.raw.size_bytes,
            file_name: track.fields.filename.clone(),
        }));
    }
    Ok(None)
}

async fn small_body(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    let limited =
        http_body_util::Limited::new(req.into_body(), crate::app::SMALL_BODY_LIMIT_BYTES as usize);
    limited
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|_| ApiError::PayloadTooLarge {
            limit_bytes: crate::app::SMALL_BODY_LIMIT_BYTES,
        })
}

fn finish(
    d: &Deps,
    lease: &Lease,
    track_id: &str,
    lease_ms: u64,
    action: &str,
    body: &[u8],
) -> Result<&'static str, ApiError> {
    // The extend proves the lease and yields the job's payload.
    let held = d.queue.extend(lease, lease_ms).map_err(meta_error)?;
    let finish = if action == "complete" {
        let c: Completion = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("completion: {e}")))?;
        Finish::Ready(Box::new(c))
    } else {
        let f: FailJson = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("failure: {e}")))?;
        if !f.permanent && f.attempt < TRANSCODE_MAX_ATTEMPTS {
            d.queue.nack(&held, &f.reason, false).map_err(meta_error)?;
            return Ok("retry");
        }
        let reason = if f.permanent {
            f.reason
        } else {
            format!("gave up after {} attempts: {}", f.attempt, f.reason)
        };
        Finish::Failed { reason }
    };
    match complete::commit(d, &held, track_id, &finish).map_err(worker_error)? {
        complete::Committed::Ready => Ok("ready"),
        complete::Committed::Failed => Ok("failed"),
        complete::Committed::TrackGone => Ok("track_gone"),
    }
}

async fn upload_blob(
    app: &Arc<App>,
    d: Deps,
    lease: Lease,
    track_id: String,
    lease_ms: u64,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let d2 = d.clone();
    tokio::task::spawn_blocking(move || d2.queue.extend(&lease, lease_ms))
        .await
        .map_err(join_error)?
        .map_err(meta_error)?;
    let limit_bytes = app.config.upload_limit_bytes;
    // Frames go through a small channel to a blocking writer: at most a few
    // frames are in memory, whatever the tier's size. `None` marks the end
    // of the body; a channel closed without it aborts the blob.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Option<Bytes>>(8);
    let writer_deps = d.clone();
    let writer = tokio::task::spawn_blocking(move || -> Result<HeldBlobJson, ApiError> {
        let mut sink = BlobSink::new(writer_deps.blobs.writer());
        loop {
            match rx.blocking_recv() {
                Some(Some(piece)) => std::io::Write::write_all(&mut sink, &piece)
                    .map_err(|e| ApiError::storage("storing a tier", e))?,
                Some(None) => break,
                None => return Err(ApiError::bad_request("the upload was cut off")),
            }
        }
        let (id, size_bytes, w) = sink.into_parts();
        complete::hold_blob(&writer_deps, &track_id, id, w).map_err(worker_error)?;
        Ok(HeldBlobJson {
            blob_id: id.to_string(),
            size_bytes,
        })
    });
    let mut body = req.into_body();
    let mut total: u64 = 0;
    let mut failed = None;
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                failed = Some(ApiError::bad_request(format!("reading the body: {e}")));
                break;
            }
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total += data.len() as u64;
        if total > limit_bytes {
            failed = Some(ApiError::PayloadTooLarge { limit_bytes });
            break;
        }
        if tx.send(Some(data)).await.is_err() {
            break;
        }
    }
    if let Some(e) = failed {
        // Closing without the end marker drops the unfinished writer.
        drop(tx);
        let _ = writer.await;
        return Err(e);
    }
    let _ = tx.send(None).await;
    drop(tx);
    let held = writer.await.map_err(join_error)??;
    Ok(json_response(
        StatusCode::OK,
        &serde_json::to_value(held).unwrap_or_default(),
    ))
}
