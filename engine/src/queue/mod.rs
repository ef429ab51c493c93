//! The durable job queue, built on the metadata store.
//!
//! One named queue keeps four keyspaces:
//! - `q:<name>:job`: job id (u64 big-endian) -> job record (below).
//! - `q:<name>:ready`: `due_ms (u64 BE) ++ job id` -> empty, for waiting jobs.
//! - `q:<name>:lease`: `expires_ms (u64 BE) ++ job id` -> empty, for leased jobs.
//! - `q:<name>:idem`: idempotency key -> job id, kept after the job finishes
//!   so a retried enqueue never makes a second job.
//! - `q:<name>:dead`: job id -> job record with its last error.
//!
//! Every state change is one conditional batch: it requires the job record to
//! hold exactly the bytes the change was computed from, so of two workers
//! racing for a job one commit fails and only one lease exists.
//!
//! Invariants:
//! - A job is in exactly one of ready, lease or dead (or is acked and gone),
//!   and its job record names the index entry it has.
//! - A lease is held by whoever has the current `token`; every change made on
//!   behalf of a lease requires that token, so a stale lease (expired and
//!   taken by another worker) fails with [`Error::LeaseLost`].
//! - Time comes from the store's [`crate::clock::Clock`] and jitter from a
//!   seeded generator, so tests control both.
//!
//! Redelivery: a job whose lease expires is delivered again (attempt + 1), so
//! a handler may run more than once. Handlers make that harmless by writing
//! their effect keyed by the job id (or idempotency key) and committing it
//! with [`Queue::ack_in`] in the same batch as the ack: if the ack commits the
//! effect is there; if the lease was lost the whole batch fails and the new
//! holder redoes it.

use std::fmt;
use std::ops::Bound;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

pub use crate::meta::Error;
use crate::meta::{Batch, ConditionFailure, Direction, MetaStore};

/// Record format version of a job record.
const JOB_RECORD_VERSION: u8 = 1;
const STATE_WAITING: u8 = 0;
const STATE_LEASED: u8 = 1;
const STATE_DEAD: u8 = 2;
/// Candidates looked at per lease attempt, so concurrent workers spread out.
const LEASE_CANDIDATES: usize = 8;
/// Conditional-commit retries before `lease` gives up for this call.
const LEASE_RETRIES: usize = 32;
/// Longest idempotency key, worker id and error kept.
const IDEMPOTENCY_KEY_BYTES_MAX: usize = 1024;
const WORKER_ID_BYTES_MAX: usize = 256;
const ERROR_BYTES_MAX: usize = 4096;

/// A job's identity: unique within the store (an HLC value), shown as 16 hex
/// digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobId(pub u64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl FromStr for JobId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::InvalidInput {
                reason: format!("job id {s:?} is not 16 hex digits"),
            });
        }
        u64::from_str_radix(s, 16)
            .map(JobId)
            .map_err(|_| Error::InvalidInput {
                reason: format!("job id {s:?} is not 16 hex digits"),
            })
    }
}

/// What to enqueue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSpec {
    /// A second enqueue with the same key returns the first job's id.
    pub idempotency_key: String,
    pub payload: Vec<u8>,
    /// Deliveries allowed before the job is dead-lettered (at least 1).
    pub max_attempts: u32,
}

/// A job handed to a worker until `expires_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub job_id: JobId,
    pub worker_id: String,
    /// 1 for the first delivery.
    pub attempt: u32,
    pub payload: Bytes,
    pub expires_ms: u64,
    /// Fences stale leases: every lease of a job gets a new token.
    pub token: u64,
}

/// Retry timing.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// Delay before the second attempt; doubles per attempt.
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// Seed of the jitter generator.
    pub jitter_seed: u64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            backoff_base_ms: 1000,
            backoff_max_ms: 5 * 60 * 1000,
            jitter_seed: 0x5eed,
        }
    }
}

/// Queue counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueStats {
    /// Waiting jobs, including those whose lease expired.
    pub depth: u64,
    /// Jobs under a live lease.
    pub in_flight: u64,
    pub dead: u64,
    /// How long the longest-waiting due job has waited (0 if none).
    pub oldest_waiting_age_ms: u64,
}

/// A dead-lettered job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadJob {
    pub job_id: JobId,
    pub idempotency_key: String,
    pub payload: Bytes,
    pub attempts: u32,
    pub last_error: String,
    pub dead_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct JobRecord {
    state: u8,
    attempt: u32,
    max_attempts: u32,
    /// Waiting: when due. Leased: when the lease expires. Dead: when it died.
    at_ms: u64,
    token: u64,
    enqueued_ms: u64,
    worker_id: String,
    idempotency_key: String,
    last_error: String,
    payload: Bytes,
}

impl JobRecord {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.payload.len() + self.last_error.len());
        out.push(JOB_RECORD_VERSION);
        out.push(self.state);
        out.extend_from_slice(&self.attempt.to_le_bytes());
        out.extend_from_slice(&self.max_attempts.to_le_bytes());
        out.extend_from_slice(&self.at_ms.to_le_bytes());
        out.extend_from_slice(&self.token.to_le_bytes());
        out.extend_from_slice(&self.enqueued_ms.to_le_bytes());
        for s in [&self.worker_id, &self.idempotency_key] {
            out.extend_from_slice(&(s.len() as u16).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        for b in [self.last_error.as_bytes(), &self.payload] {
            out.extend_from_slice(&(b.len() as u32).to_le_bytes());
            out.extend_from_slice(b);
        }
        out
    }

    fn decode(ks: &str, key: &[u8], buf: &Bytes) -> Result<JobRecord, Error> {
        let bad = |reason: &str| Error::Corruption {
            file: format!("keyspace {ks} key {key:02x?}"),
            offset: 0,
            reason: reason.to_owned(),
        };
        let mut at = 0usize;
        let mut take = |n: usize| -> Result<std::ops::Range<usize>, Error> {
            let end = at.checked_add(n).filter(|&e| e <= buf.len());
            let end = end.ok_or_else(|| bad("job record truncated"))?;
            let r = at..end;
            at = end;
            Ok(r)
        };
        let head = &buf[take(2)?];
        if head[0] != JOB_RECORD_VERSION {
            return Err(bad("unknown job record version"));
        }
        let state = head[1];
        let u32_of = |s: &[u8]| u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
        let u64_of = |s: &[u8]| {
            let mut a = [0u8; 8];
            a.copy_from_slice(s);
            u64::from_le_bytes(a)
        };
        let attempt = u32_of(&buf[take(4)?]);
        let max_attempts = u32_of(&buf[take(4)?]);
        let at_ms = u64_of(&buf[take(8)?]);
        let token = u64_of(&buf[take(8)?]);
        let enqueued_ms = u64_of(&buf[take(8)?]);
        let mut strs = Vec::with_capacity(2);
        for _ in 0..2 {
            let l = &buf[take(2)?];
            let n = usize::from(u16::from_le_bytes([l[0], l[1]]));
            let s = std::str::from_utf8(&buf[take(n)?]).map_err(|_| bad("job string not UTF-8"))?;
            strs.push(s.to_owned());
        }
        let l = u32_of(&buf[take(4)?]) as usize;
        let last_error = std::str::from_utf8(&buf[take(l)?])
            .map_err(|_| bad("job error not UTF-8"))?
            .to_owned();
        let l = u32_of(&buf[take(4)?]) as usize;
        let payload = buf.slice(take(l)?);
        if take(0)?.start != buf.len() {
            return Err(bad("trailing bytes in job record"));
        }
        let idempotency_key = strs.pop().unwrap_or_default();
        let worker_id = strs.pop().unwrap_or_default();
        Ok(JobRecord {
            state,
            attempt,
            max_attempts,
            at_ms,
            token,
            enqueued_ms,
            worker_id,
            idempotency_key,
            last_error,
            payload,
        })
    }
}

fn time_key(ms: u64, id: JobId) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&ms.to_be_bytes());
    k[8..].copy_from_slice(&id.0.to_be_bytes());
    k
}

fn parse_time_key(k: &[u8]) -> Option<(u64, JobId)> {
    let a: [u8; 8] = k.get(..8)?.try_into().ok()?;
    let b: [u8; 8] = k.get(8..16)?.try_into().ok()?;
    (k.len() == 16).then_some((u64::from_be_bytes(a), JobId(u64::from_be_bytes(b))))
}

fn truncate_utf8(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// One named queue over a [`MetaStore`]. Cheap to clone.
#[derive(Clone)]
pub struct Queue {
    store: MetaStore,
    config: QueueConfig,
    ks_job: String,
    ks_ready: String,
    ks_lease: String,
    ks_idem: String,
    ks_dead: String,
    rng: Arc<Mutex<u64>>,
}

impl fmt::Debug for Queue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue").field("job", &self.ks_job).finish()
    }
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Queue {
    /// The queue `name` (letters, digits, `_`, `-`; at most 64 bytes).
    pub fn new(store: &MetaStore, name: &str, config: QueueConfig) -> Result<Queue, Error> {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !ok {
            return Err(Error::InvalidInput {
                reason: format!("bad queue name {name:?}"),
            });
        }
        if config.backoff_base_ms > config.backoff_max_ms {
            return Err(Error::InvalidInput {
                reason: "backoff_base_ms exceeds backoff_max_ms".into(),
            });
        }
        Ok(Queue {
            store: store.clone(),
            rng: Arc::new(Mutex::new(config.jitter_seed)),
            config,
            ks_job: format!("q:{name}:job"),
            ks_ready: format!("q:{name}:ready"),
            ks_lease: format!("q:{name}:lease"),
            ks_idem: format!("q:{name}:idem"),
            ks_dead: format!("q:{name}:dead"),
        })
    }

    /// The keyspace holding job records (for tests and tools).
    pub fn job_keyspace(&self) -> &str {
        &self.ks_job
    }

    fn now_ms(&self) -> u64 {
        self.store.clock().now_ms()
    }

    /// Adds `job` to `batch`, so it commits together with the caller's other
    /// writes. If a job with the same idempotency key exists (or is already in
    /// `batch`), returns its id and adds nothing. Two racing batches with the
    /// same new key: the second fails at commit with
    /// [`Error::ConditionFailed`].
    pub fn enqueue_in(&self, batch: &mut Batch, job: JobSpec) -> Result<JobId, Error> {
        if job.max_attempts == 0 {
            return Err(Error::InvalidInput {
                reason: "max_attempts must be at least 1".into(),
            });
        }
        if job.idempotency_key.is_empty() || job.idempotency_key.len() > IDEMPOTENCY_KEY_BYTES_MAX {
            return Err(Error::InvalidInput {
                reason: "idempotency key must be 1..=1024 bytes".into(),
            });
        }
        let idem = job.idempotency_key.as_bytes();
        let existing = match batch.pending(&self.ks_idem, idem) {
            Some(v) => v.cloned(),
            None => self.store.get(&self.ks_idem, idem)?,
        };
        if let Some(v) = existing {
            let id: [u8; 8] = v.as_ref().try_into().map_err(|_| Error::Corruption {
                file: format!("keyspace {}", self.ks_idem),
                offset: 0,
                reason: "idempotency entry is not a job id".into(),
            })?;
            return Ok(JobId(u64::from_be_bytes(id)));
        }
        let now = self.now_ms();
        let id = JobId(self.store.next_hlc().0);
        let record = JobRecord {
            state: STATE_WAITING,
            attempt: 0,
            max_attempts: job.max_attempts,
            at_ms: now,
            token: 0,
            enqueued_ms: now,
            worker_id: String::new(),
            idempotency_key: job.idempotency_key.clone(),
            last_error: String::new(),
            payload: Bytes::from(job.payload),
        };
        batch.require(&self.ks_idem, idem, None);
        batch.put(&self.ks_idem, idem, id.0.to_be_bytes());
        batch.put(&self.ks_job, id.0.to_be_bytes(), record.encode());
        batch.put(&self.ks_ready, time_key(now, id), b"");
        Ok(id)
    }

    /// Enqueues `job` on its own, durably.
    pub fn enqueue(&self, job: JobSpec) -> Result<JobId, Error> {
        for _ in 0..4 {
            let mut batch = Batch::new();
            let id = self.enqueue_in(&mut batch, job.clone())?;
            if batch.is_empty() {
                return Ok(id);
            }
            match self.store.commit(batch) {
                Ok(_) => return Ok(id),
                // Another enqueue with the same key won; the next round
                // finds its id.
                Err(Error::ConditionFailed { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::ConditionFailed {
            keyspace: self.ks_idem.clone(),
            key: job.idempotency_key.into_bytes(),
        })
    }

    fn load(&self, id: JobId) -> Result<Option<(Bytes, JobRecord)>, Error> {
        let key = id.0.to_be_bytes();
        match self.store.get(&self.ks_job, &key)? {
            None => Ok(None),
            Some(bytes) => {
                let rec = JobRecord::decode(&self.ks_job, &key, &bytes)?;
                Ok(Some((bytes, rec)))
            }
        }
    }

    /// Due entries of `keyspace` (time key <= now), oldest first, at most
    /// `limit`.
    fn due(&self, keyspace: &str, now: u64, limit: usize) -> Result<Vec<(u64, JobId)>, Error> {
        let end = time_key(now, JobId(u64::MAX));
        let page = self.store.scan_range(
            keyspace,
            Bound::Unbounded,
            Bound::Included(&end),
            Direction::Forward,
            None,
            limit,
        )?;
        Ok(page
            .items
            .iter()
            .filter_map(|(k, _)| parse_time_key(k))
            .collect())
    }

    /// Leases the first due job (waiting, or with an expired lease) to
    /// `worker_id` for `visibility_ms`. `None` when no job is due.
    pub fn lease(&self, worker_id: &str, visibility_ms: u64) -> Result<Option<Lease>, Error> {
        if worker_id.is_empty() || worker_id.len() > WORKER_ID_BYTES_MAX {
            return Err(Error::InvalidInput {
                reason: "worker id must be 1..=256 bytes".into(),
            });
        }
        let spread = worker_id.bytes().fold(0usize, |h, b| {
            h.wrapping_mul(31).wrapping_add(usize::from(b))
        });
        for round in 0..LEASE_RETRIES {
            let now = self.now_ms();
            let mut candidates: Vec<(bool, u64, JobId)> = self
                .due(&self.ks_ready, now, LEASE_CANDIDATES)?
                .into_iter()
                .map(|(t, id)| (false, t, id))
                .collect();
            candidates.extend(
                self.due(&self.ks_lease, now, LEASE_CANDIDATES)?
                    .into_iter()
                    .map(|(t, id)| (true, t, id)),
            );
            if candidates.is_empty() {
                return Ok(None);
            }
            candidates.sort_by_key(|c| (c.1, c.2));
            candidates.truncate(LEASE_CANDIDATES);
            let (expired, at_ms, id) = candidates[if round == 0 {
                // Oldest first; after losing a race, spread out.
                0
            } else {
                (spread + round) % candidates.len()
            }];
            let Some((old_bytes, job)) = self.load(id)? else {
                continue;
            };
            let expected_state = if expired { STATE_LEASED } else { STATE_WAITING };
            if job.state != expected_state || job.at_ms != at_ms {
                continue;
            }
            let old_index = if expired {
                &self.ks_lease
            } else {
                &self.ks_ready
            };
            let mut batch = Batch::new();
            batch.require(&self.ks_job, id.0.to_be_bytes(), Some(&old_bytes));
            batch.delete(old_index, time_key(at_ms, id));
            if expired && job.attempt >= job.max_attempts {
                // The last allowed delivery's lease ran out: dead-letter it.
                let reason = if job.last_error.is_empty() {
                    format!("lease expired on attempt {}", job.attempt)
                } else {
                    job.last_error.clone()
                };
                self.dead_letter_into(&mut batch, id, job, reason, now);
                match self.store.commit(batch) {
                    Ok(_) | Err(Error::ConditionFailed { .. }) => continue,
                    Err(e) => return Err(e),
                }
            }
            let expires_ms = now.saturating_add(visibility_ms);
            let token = self.store.next_hlc().0;
            let new = JobRecord {
                state: STATE_LEASED,
                attempt: job.attempt + 1,
                at_ms: expires_ms,
                token,
                worker_id: worker_id.to_owned(),
                ..job
            };
            batch.put(&self.ks_lease, time_key(expires_ms, id), b"");
            batch.put(&self.ks_job, id.0.to_be_bytes(), new.encode());
            match self.store.commit(batch) {
                Ok(_) => {
                    return Ok(Some(Lease {
                        job_id: id,
                        worker_id: worker_id.to_owned(),
                        attempt: new.attempt,
                        payload: new.payload,
                        expires_ms,
                        token,
                    }))
                }
                Err(Error::ConditionFailed { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// The job record behind `lease`, if the lease is still held.
    fn held(&self, lease: &Lease) -> Result<(Bytes, JobRecord), Error> {
        let lost = || Error::LeaseLost {
            job_id: lease.job_id.to_string(),
        };
        let (bytes, job) = self.load(lease.job_id)?.ok_or_else(lost)?;
        if job.state != STATE_LEASED || job.token != lease.token {
            return Err(lost());
        }
        Ok((bytes, job))
    }

    fn require_held(&self, batch: &mut Batch, lease: &Lease, bytes: &[u8]) {
        batch.require_internal(
            &self.ks_job,
            &lease.job_id.0.to_be_bytes(),
            Some(bytes),
            ConditionFailure::LeaseLost {
                job_id: lease.job_id.to_string(),
            },
        );
    }

    /// Extends a held lease to `now + visibility_ms` (heartbeat). A lease that
    /// expired but was not taken by anyone else can still be extended.
    pub fn extend(&self, lease: &Lease, visibility_ms: u64) -> Result<Lease, Error> {
        let (bytes, job) = self.held(lease)?;
        let expires_ms = self.now_ms().saturating_add(visibility_ms);
        let id = lease.job_id;
        let mut batch = Batch::new();
        self.require_held(&mut batch, lease, &bytes);
        batch.delete(&self.ks_lease, time_key(job.at_ms, id));
        batch.put(&self.ks_lease, time_key(expires_ms, id), b"");
        let new = JobRecord {
            at_ms: expires_ms,
            ..job
        };
        batch.put(&self.ks_job, id.0.to_be_bytes(), new.encode());
        self.store.commit(batch)?;
        Ok(Lease {
            expires_ms,
            ..lease.clone()
        })
    }

    /// Completes the job.
    pub fn ack(&self, lease: &Lease) -> Result<(), Error> {
        let mut batch = Batch::new();
        self.ack_in(&mut batch, lease)?;
        self.store.commit(batch).map(|_| ())
    }

    /// Adds the job's completion to `batch`; the commit fails with
    /// [`Error::LeaseLost`] (and writes nothing) if the lease is no longer
    /// held then.
    pub fn ack_in(&self, batch: &mut Batch, lease: &Lease) -> Result<(), Error> {
        let (bytes, job) = self.held(lease)?;
        self.require_held(batch, lease, &bytes);
        batch.delete(&self.ks_lease, time_key(job.at_ms, lease.job_id));
        batch.delete(&self.ks_job, lease.job_id.0.to_be_bytes());
        Ok(())
    }

    fn backoff_ms(&self, attempt: u32) -> u64 {
        let shift = attempt.saturating_sub(1).min(40);
        let exp = self
            .config
            .backoff_base_ms
            .saturating_mul(1u64 << shift)
            .min(self.config.backoff_max_ms);
        let half = exp / 2;
        let r = {
            let mut s = self.rng.lock().unwrap_or_else(|p| p.into_inner());
            splitmix64(&mut s)
        };
        // "Equal jitter": half fixed, half random, so retries spread out but
        // never come back sooner than half the backoff.
        half + r % (exp - half + 1)
    }

    fn dead_letter_into(
        &self,
        batch: &mut Batch,
        id: JobId,
        job: JobRecord,
        reason: String,
        now: u64,
    ) {
        let dead = JobRecord {
            state: STATE_DEAD,
            at_ms: now,
            last_error: reason,
            worker_id: String::new(),
            ..job
        };
        batch.delete(&self.ks_job, id.0.to_be_bytes());
        batch.put(&self.ks_dead, id.0.to_be_bytes(), dead.encode());
    }

    /// Gives the job back: retried after an exponential backoff with jitter,
    /// or dead-lettered with `reason` if `permanent` or out of attempts.
    pub fn nack(&self, lease: &Lease, reason: &str, permanent: bool) -> Result<(), Error> {
        let (bytes, job) = self.held(lease)?;
        let id = lease.job_id;
        let now = self.now_ms();
        let reason = truncate_utf8(reason, ERROR_BYTES_MAX);
        let mut batch = Batch::new();
        self.require_held(&mut batch, lease, &bytes);
        batch.delete(&self.ks_lease, time_key(job.at_ms, id));
        if permanent || job.attempt >= job.max_attempts {
            self.dead_letter_into(&mut batch, id, job, reason, now);
        } else {
            let due = now.saturating_add(self.backoff_ms(job.attempt));
            let new = JobRecord {
                state: STATE_WAITING,
                at_ms: due,
                worker_id: String::new(),
                last_error: reason,
                ..job
            };
            batch.put(&self.ks_ready, time_key(due, id), b"");
            batch.put(&self.ks_job, id.0.to_be_bytes(), new.encode());
        }
        self.store.commit(batch).map(|_| ())
    }

    pub fn stats(&self) -> QueueStats {
        let now = self.now_ms();
        let waiting = self.store.keyspace_len(&self.ks_ready);
        let leased = self.store.keyspace_len(&self.ks_lease);
        let dead = self.store.keyspace_len(&self.ks_dead);
        // Expired leases are waiting to be redelivered; count a bounded
        // number of them (they are the oldest entries of the lease keyspace).
        let expired = self.due(&self.ks_lease, now, 10_000).unwrap_or_default();
        let oldest_due = self
            .due(&self.ks_ready, now, 1)
            .unwrap_or_default()
            .into_iter()
            .chain(expired.first().copied())
            .map(|(t, _)| t)
            .min();
        QueueStats {
            depth: waiting + expired.len() as u64,
            in_flight: leased.saturating_sub(expired.len() as u64),
            dead,
            oldest_waiting_age_ms: oldest_due.map(|t| now.saturating_sub(t)).unwrap_or(0),
        }
    }

    /// Up to `limit` dead-lettered jobs, oldest id first.
    pub fn dead_letters(&self, limit: usize) -> Result<Vec<DeadJob>, Error> {
        let page = self.store.scan_range(
            &self.ks_dead,
            Bound::Unbounded,
            Bound::Unbounded,
            Direction::Forward,
            None,
            limit.clamp(1, crate::meta::SCAN_LIMIT_MAX),
        )?;
        let mut out = Vec::with_capacity(page.items.len());
        for (k, v) in page.items.iter().take(limit) {
            let id: [u8; 8] = k.as_ref().try_into().map_err(|_| Error::Corruption {
                file: format!("keyspace {}", self.ks_dead),
                offset: 0,
                reason: "dead-letter key is not a job id".into(),
            })?;
            let rec = JobRecord::decode(&self.ks_dead, k, v)?;
            out.push(DeadJob {
                job_id: JobId(u64::from_be_bytes(id)),
                idempotency_key: rec.idempotency_key,
                payload: rec.payload,
                attempts: rec.attempt,
                last_error: rec.last_error,
                dead_ms: rec.at_ms,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_id_round_trips_through_text() {
        let id = JobId(0x0123_4567_89ab_cdef);
        assert_eq!(id.to_string(), "0123456789abcdef");
        assert_eq!("0123456789abcdef".parse::<JobId>().unwrap(), id);
        assert!("xyz".parse::<JobId>().is_err());
        assert!("+123456789abcdef".parse::<JobId>().is_err());
    }

    #[test]
    fn job_record_round_trips_and_rejects_truncation() {
        let rec = JobRecord {
            state: STATE_LEASED,
            attempt: 2,
            max_attempts: 5,
            at_ms: 99,
            token: 7,
            enqueued_ms: 3,
            worker_id: "w1".into(),
            idempotency_key: "idem".into(),
            last_error: "boom".into(),
            payload: Bytes::from_static(b"payload"),
        };
        let enc = Bytes::from(rec.encode());
        assert_eq!(JobRecord::decode("ks", b"k", &enc).unwrap(), rec);
        for len in 0..enc.len() {
            assert!(JobRecord::decode("ks", b"k", &enc.slice(..len)).is_err());
        }
    }
}
