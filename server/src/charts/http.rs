//! The chart routes: `POST /v1/plays` and `GET /v1/charts/top`.
//!
//! `POST /v1/plays` takes one event object or an array of at most
//! [`PLAYS_PER_REQUEST_MAX`]; the body is bounded by
//! [`PLAYS_BODY_LIMIT_BYTES`] and by the body-read timeout. It answers 200
//! with one result per event, in order, once the accepted ones are durable:
//! `{"accepted": n, "duplicates": n, "refused": n, "results": [{"index",
//! "status": "accepted"|"duplicate"|"refused", "stream"?, "reason"?,
//! "message"?, "event_id"?}]}`. A body that is not JSON, or not an object
//! or array, is a 400 for the whole request.
//!
//! `GET /v1/charts/top?genre=&kind=&window=day|week|all&limit=` answers
//! from the published snapshot only (no store access):
//! `{"window", "genre", "kind", "limit", "computed_at", "computed_at_ms",
//! "period": {"start", "end"} | null, "entries": [{"rank", "track_id",
//! "title", "artist", "genre", "kind", "streams", "previous_rank",
//! "change"}]}`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{json, Value};

use super::event::{kind_name, PlayInput};
use super::genre::genre_key;
use super::ingest::{ingest, PlayOutcome};
use super::snapshot::{Snapshot, Window};
use super::time::format_rfc3339_ms;
use super::Charts;
use crate::app::{form_pairs, join_error, json_response};
use crate::error::ApiError;
use crate::http::body::Body;
use crate::track::Kind;

/// Most events in one request.
pub const PLAYS_PER_REQUEST_MAX: usize = 1000;
/// Bound on a `POST /v1/plays` body.
pub const PLAYS_BODY_LIMIT_BYTES: u64 = 1024 * 1024;

/// `POST /v1/plays`.
pub async fn post_plays(
    charts: Arc<Charts>,
    body_read_timeout: Duration,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    if req
        .body()
        .size_hint()
        .upper()
        .is_some_and(|n| n > PLAYS_BODY_LIMIT_BYTES)
    {
        return Err(ApiError::PayloadTooLarge {
            limit_bytes: PLAYS_BODY_LIMIT_BYTES,
        });
    }
    let timeout = body_read_timeout;
    let limited = Limited::new(req.into_body(), PLAYS_BODY_LIMIT_BYTES as usize);
    let bytes = match tokio::time::timeout(timeout, limited.collect()).await {
        Err(_) => return Err(ApiError::RequestTimeout),
        Ok(Err(e)) => {
            if e.is::<http_body_util::LengthLimitError>() {
                return Err(ApiError::PayloadTooLarge {
                    limit_bytes: PLAYS_BODY_LIMIT_BYTES,
                });
            }
            return Err(ApiError::bad_request(format!("cannot read the body: {e}")));
        }
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    let (inputs, event_ids) = parse_plays(&bytes)?;
    let charts2 = charts.clone();
    let outcomes = tokio::task::spawn_blocking(move || {
        ingest(charts2.store(), &charts2.config.policy, &inputs)
    })
    .await
    .map_err(join_error)?
    .map_err(|e| ApiError::storage("logging plays", e))?;
    let (mut accepted, mut duplicates, mut refused) = (0u64, 0u64, 0u64);
    let results: Vec<Value> = outcomes
        .iter()
        .zip(event_ids)
        .enumerate()
        .map(|(index, (outcome, event_id))| {
            let mut v = match outcome {
                PlayOutcome::Accepted { stream } => {
                    accepted += 1;
                    json!({"index": index, "status": "accepted", "stream": stream})
                }
                PlayOutcome::Duplicate => {
                    duplicates += 1;
                    json!({"index": index, "status": "duplicate"})
                }
                PlayOutcome::Refused(r) => {
                    refused += 1;
                    json!({"index": index, "status": "refused", "reason": r.code(), "message": r.to_string()})
                }
            };
            if let (Some(id), Value::Object(map)) = (event_id, &mut v) {
                map.insert("event_id".into(), id.into());
            }
            v
        })
        .collect();
    let stats = &charts.shared.stats;
    stats.events_accepted.fetch_add(accepted, Ordering::Relaxed);
    stats
        .events_duplicate
        .fetch_add(duplicates, Ordering::Relaxed);
    stats.events_refused.fetch_add(refused, Ordering::Relaxed);
    let mut r = json_response(
        StatusCode::OK,
        &json!({"accepted": accepted, "duplicates": duplicates, "refused": refused, "results": results}),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

/// Each event parsed (or why not), and its `event_id` when it had one.
type Parsed = (Vec<Result<PlayInput, String>>, Vec<Option<String>>);

/// Splits a body into events; a bad event is refused alone.
pub fn parse_plays(bytes: &[u8]) -> Result<Parsed, ApiError> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))?;
    let items = match value {
        Value::Array(items) => items,
        obj @ Value::Object(_) => vec![obj],
        _ => {
            return Err(ApiError::bad_request(
                "the body must be a play event object or an array of them",
            ))
        }
    };
    if items.len() > PLAYS_PER_REQUEST_MAX {
        return Err(ApiError::bad_request(format!(
            "{} events in one request; at most {PLAYS_PER_REQUEST_MAX}",
            items.len()
        )));
    }
    let mut inputs = Vec::with_capacity(items.len());
    let mut ids = Vec::with_capacity(items.len());
    for item in items {
        ids.push(
            item.get("event_id")
                .and_then(Value::as_str)
                .map(|s| s.chars().take(super::event::EVENT_ID_BYTES_MAX).collect()),
        );
        inputs.push(serde_json::from_value::<PlayInput>(item).map_err(|e| e.to_string()));
    }
    Ok((inputs, ids))
}

/// `GET /v1/charts/top`.
pub fn get_top(charts: &Charts, query: Option<&str>) -> Result<Response<Body>, ApiError> {
    top_response(&charts.snapshot(), query)
}

/// The `GET /v1/charts/top` response for `query` from `snap`.
pub fn top_response(snap: &Snapshot, query: Option<&str>) -> Result<Response<Body>, ApiError> {
    let mut window = Window::Day;
    let mut genre: Option<String> = None;
    let mut kind: Option<Kind> = None;
    let mut limit = snap.chart_size;
    for (k, v) in form_pairs(query.unwrap_or("")) {
        match k.as_str() {
            "window" => {
                window = Window::parse(&v)
                    .ok_or_else(|| ApiError::bad_request("window must be day, week or all"))?
            }
            "genre" if !v.trim().is_empty() => {
                let key = genre_key(&v);
                if key.is_empty() {
                    return Err(ApiError::bad_request("genre has no letter or digit"));
                }
                genre = Some(key);
            }
            "kind" if !v.is_empty() => {
                kind = Some(v.parse::<Kind>().map_err(ApiError::bad_request)?)
            }
            "limit" => {
                limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=snap.chart_size).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!("limit must be 1..={}", snap.chart_size))
                    })?
            }
            _ => {}
        }
    }
    let period = match window {
        Window::All => Value::Null,
        Window::Day => {
            let start = u64::from(snap.day) * super::time::DAY_MS;
            json!({"start": format_rfc3339_ms(start), "end": format_rfc3339_ms(start + super::time::DAY_MS)})
        }
        Window::Week => {
            let start = u64::from(super::time::first_day_of_week(snap.week)) * super::time::DAY_MS;
            json!({"start": format_rfc3339_ms(start), "end": format_rfc3339_ms(start + 7 * super::time::DAY_MS)})
        }
    };
    let genre_display = genre
        .as_deref()
        .map(|g| snap.genre_display(g).unwrap_or(g).to_owned());
    let head = json!({
        "window": window.name(),
        "genre": genre_display,
        "kind": kind.map(kind_name),
        "limit": limit,
        "computed_at": format_rfc3339_ms(snap.computed_at_ms),
        "computed_at_ms": snap.computed_at_ms,
        "period": period,
    });
    // The entries are written by hand (no intermediate `Value` per entry):
    // the query is then a few microseconds of formatting.
    let mut out = head.to_string();
    out.pop(); // the closing brace; the entries follow
    out.push_str(",\"entries\":[");
    if let Some(chart) = snap.chart(window, genre.as_deref(), kind) {
        for (i, e) in chart.entries.iter().take(limit).enumerate() {
            if i > 0 {
                out.push(',');
            }
            write_entry(&mut out, e);
        }
    }
    out.push_str("]}");
    let mut r = Response::new(Body::full(bytes::Bytes::from(out)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(r)
}

/// Appends `s` as a JSON string (or `null`).
fn push_json_str(out: &mut String, s: Option<&str>) {
    match s {
        // Serializing a str cannot fail.
        Some(s) => out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "null".into())),
        None => out.push_str("null"),
    }
}

/// One chart entry as a JSON object.
fn write_entry(out: &mut String, e: &super::snapshot::ChartEntry) {
    use std::fmt::Write as _;
    let _ = write!(
        out,
        "{{\"rank\":{},\"track_id\":\"{:032x}\",\"title\":",
        e.rank, e.track
    );
    push_json_str(out, e.label.title.as_deref());
    out.push_str(",\"artist\":");
    push_json_str(out, e.label.artist.as_deref());
    out.push_str(",\"genre\":");
    push_json_str(out, (!e.genre.is_empty()).then_some(e.genre.as_str()));
    let _ = write!(
        out,
        ",\"kind\":\"{}\",\"streams\":{},\"previous_rank\":",
        kind_name(e.kind),
        e.streams
    );
    match e.previous_rank {
        Some(p) => {
            let _ = write!(out, "{p}");
        }
        None => out.push_str("null"),
    }
    let _ = write!(out, ",\"change\":\"{}\"}}", e.change());
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::charts::snapshot::{ChartEntry, Label};

    #[test]
    fn hand_written_entry_is_valid_json() {
        let e = ChartEntry {
            rank: 3,
            track: 0xabc,
            streams: 42,
            previous_rank: Some(1),
            kind: Kind::Story,
            genre: "Spoken \"Word\"\n".into(),
            label: Arc::new(Label {
                title: Some("Ça \\ va".into()),
                artist: None,
            }),
        };
        let mut out = String::new();
        write_entry(&mut out, &e);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            v,
            json!({
                "rank": 3, "track_id": format!("{:032x}", 0xabc), "title": "Ça \\ va",
                "artist": null, "genre": "Spoken \"Word\"\n", "kind": "story",
                "streams": 42, "previous_rank": 1, "change": "down 2",
            })
        );
    }

    #[test]
    fn bodies_split_into_events() {
        let (inputs, ids) =
            parse_plays(br#"[{"listener_id":"a","track_id":"x","ms_played":1,"started_at":5,"event_id":"e1"},{"bogus":1}]"#)
                .unwrap();
        assert_eq!(inputs.len(), 2);
        assert!(inputs[0].is_ok() && inputs[1].is_err());
        assert_eq!(ids, vec![Some("e1".to_owned()), None]);
        assert!(parse_plays(b"42").is_err());
        let many = format!("[{}]", vec!["{}"; PLAYS_PER_REQUEST_MAX + 1].join(","));
        assert!(parse_plays(many.as_bytes()).is_err());
    }
}
