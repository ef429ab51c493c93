//! Logging plays: check each event, look its track up, skip duplicates, and
//! append the new ones to `plays` in ONE batch that is durable before the
//! caller answers.
//!
//! Deduplication against concurrent requests: every new key is also a
//! condition "absent" on the same batch, so of two requests racing with one
//! event, exactly one commits it; the other's commit fails, it re-reads and
//! retries, and then sees the event as a duplicate. Retries are bounded
//! ([`COMMIT_ATTEMPTS_MAX`]); each failed attempt means another request
//! logged one of our keys, so progress is made either way.

use std::collections::{HashMap, HashSet};

use spindle_engine::meta::{Batch, Error as MetaError, MetaStore};

use super::event::{
    check_shape, to_record, PlayInput, Policy, Refusal, TrackAttrs, PLAYS_KEYSPACE, PLAY_KEY_BYTES,
};
use crate::track::TRACKS_KEYSPACE;

/// Commit attempts per request before giving up with the conflict.
pub const COMMIT_ATTEMPTS_MAX: usize = 8;

/// The result for one event of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlayOutcome {
    /// Logged now; `stream` says whether it may count as a stream.
    Accepted {
        stream: bool,
    },
    /// Logged before (by an earlier request or earlier in this one).
    Duplicate,
    Refused(Refusal),
}

/// Checks and logs `inputs` (each already parsed, or the reason it did not
/// parse), returning one outcome per input in order. Blocks on the commit.
pub fn ingest(
    store: &MetaStore,
    policy: &Policy,
    inputs: &[Result<PlayInput, String>],
) -> Result<Vec<PlayOutcome>, MetaError> {
    let now_ms = store.clock().now_ms();
    let mut attrs: HashMap<u128, Option<TrackAttrs>> = HashMap::new();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut outcomes = Vec::with_capacity(inputs.len());
        let mut seen: HashSet<[u8; PLAY_KEY_BYTES]> = HashSet::with_capacity(inputs.len());
        let mut batch = Batch::new();
        for input in inputs {
            let input = match input {
                Ok(i) => i,
                Err(message) => {
                    outcomes.push(PlayOutcome::Refused(Refusal::Invalid {
                        message: message.clone(),
                    }));
                    continue;
                }
            };
            let checked = match check_shape(input, now_ms, policy) {
                Ok(c) => c,
                Err(r) => {
                    outcomes.push(PlayOutcome::Refused(r));
                    continue;
                }
            };
            let track_attrs = match attrs.get(&checked.track) {
                Some(a) => a.clone(),
                None => {
                    let a = lookup_track(store, &input.track_id)?;
                    attrs.insert(checked.track, a.clone());
                    a
                }
            };
            let Some(track_attrs) = track_attrs else {
                outcomes.push(PlayOutcome::Refused(Refusal::UnknownTrack {
                    track_id: input.track_id.clone(),
                }));
                continue;
            };
            if !seen.insert(checked.key) || store.get(PLAYS_KEYSPACE, &checked.key)?.is_some() {
                outcomes.push(PlayOutcome::Duplicate);
                continue;
            }
            let record = to_record(input, &checked, &track_attrs, policy);
            batch.require(PLAYS_KEYSPACE, checked.key, None);
            batch.put(PLAYS_KEYSPACE, checked.key, record.encode());
            outcomes.push(PlayOutcome::Accepted {
                stream: record.is_stream,
            });
        }
        if batch.is_empty() {
            return Ok(outcomes);
        }
        match store.commit(batch) {
            Ok(_) => return Ok(outcomes),
            Err(MetaError::ConditionFailed { .. }) if attempt < COMMIT_ATTEMPTS_MAX => continue,
            Err(e) => return Err(e),
        }
    }
}

/// The chart-relevant fields of track `id`, `None` if there is no such
/// track. A record that does not parse is treated as absent (and logged):
/// refusing its plays is better than failing every batch that names it.
fn lookup_track(store: &MetaStore, id: &str) -> Result<Option<TrackAttrs>, MetaError> {
    let Some(v) = store.get(TRACKS_KEYSPACE, id.as_bytes())? else {
        return Ok(None);
    };
    match serde_json::from_slice::<TrackAttrs>(&v) {
        Ok(a) => Ok(Some(a)),
        Err(error) => {
            tracing::error!(track = id, %error, "charts: stored track does not parse");
            Ok(None)
        }
    }
}
