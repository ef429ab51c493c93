//! Time for the engine: wall-clock milliseconds behind a trait, and hybrid
//! logical clock (HLC) timestamps.
//!
//! Everything in the engine that needs "now" asks a [`Clock`], so tests drive
//! time with a [`ManualClock`] instead of sleeping.
//!
//! An [`Hlc`] packs physical milliseconds since the UNIX epoch into the high
//! 48 bits and a logical counter into the low 16. [`HlcGenerator`] hands out
//! strictly increasing values that never run behind the wall clock by more
//! than the logical counter's overflow allows, and never go backwards even when
//! the wall clock does. Invariant: every value returned by
//! [`HlcGenerator::next`] is greater than every value it returned or observed
//! before.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of wall-clock time.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the UNIX epoch.
    fn now_ms(&self) -> u64;
}

/// The operating system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        // A clock before 1970 is a misconfigured machine; report the epoch
        // rather than fail every write.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }
}

/// A clock that moves only when told to, for tests.
#[derive(Debug)]
pub struct ManualClock {
    now_ms: AtomicU64,
}

impl ManualClock {
    pub fn new(start_ms: u64) -> Self {
        ManualClock {
            now_ms: AtomicU64::new(start_ms),
        }
    }

    /// Sets the time (it may go backwards, as real clocks sometimes do).
    pub fn set(&self, ms: u64) {
        self.now_ms.store(ms, Ordering::SeqCst);
    }

    /// Moves the time forward by `ms`.
    pub fn advance(&self, ms: u64) {
        self.now_ms.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.now_ms.load(Ordering::SeqCst)
    }
}

/// Bits of an [`Hlc`] given to the logical counter.
pub const HLC_LOGICAL_BITS: u32 = 16;
const HLC_LOGICAL_MASK: u64 = (1 << HLC_LOGICAL_BITS) - 1;
/// The largest physical time an [`Hlc`] can carry (about the year 10889).
const HLC_PHYSICAL_MAX_MS: u64 = u64::MAX >> HLC_LOGICAL_BITS;

/// A hybrid logical clock timestamp: physical ms in the high 48 bits, a
/// logical counter in the low 16. Ordered as a plain `u64`; replication breaks
/// ties between nodes with `(Hlc, node_id)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Hlc(pub u64);

impl Hlc {
    /// The timestamp for `physical_ms` with a zero logical counter.
    pub fn from_physical_ms(physical_ms: u64) -> Hlc {
        Hlc(physical_ms.min(HLC_PHYSICAL_MAX_MS) << HLC_LOGICAL_BITS)
    }

    /// The physical part, in ms since the UNIX epoch.
    pub fn physical_ms(self) -> u64 {
        self.0 >> HLC_LOGICAL_BITS
    }

    /// The logical counter.
    pub fn logical(self) -> u16 {
        // Masked to 16 bits, so the cast cannot lose anything.
        (self.0 & HLC_LOGICAL_MASK) as u16
    }
}

impl fmt::Display for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.physical_ms(), self.logical())
    }
}

/// Hands out strictly increasing [`Hlc`] values from a [`Clock`].
#[derive(Debug, Default)]
pub struct HlcGenerator {
    last: Mutex<u64>,
}

impl HlcGenerator {
    /// A generator that will only return values above `last`.
    pub fn new(last: Hlc) -> Self {
        HlcGenerator {
            last: Mutex::new(last.0),
        }
    }

    /// The next timestamp: the wall clock if it is ahead of everything seen,
    /// otherwise the last value plus one (which bumps the logical counter and,
    /// on overflow, carries into the physical part).
    pub fn next(&self, clock: &dyn Clock) -> Hlc {
        let wall = Hlc::from_physical_ms(clock.now_ms()).0;
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let next = wall.max(last.saturating_add(1));
        *last = next;
        Hlc(next)
    }

    /// Records a timestamp seen elsewhere (a replayed record, a peer's
    /// message) so later values sort after it.
    pub fn observe(&self, seen: Hlc) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        *last = (*last).max(seen.0);
    }

    /// The largest value handed out or observed.
    pub fn last(&self) -> Hlc {
        Hlc(*self.last.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hlc_packs_physical_and_logical() {
        let h = Hlc((1234 << 16) | 7);
        assert_eq!(h.physical_ms(), 1234);
        assert_eq!(h.logical(), 7);
        assert_eq!(h.to_string(), "1234.7");
    }

    #[test]
    fn generator_is_strictly_increasing_when_clock_stalls_or_goes_back() {
        let clock = ManualClock::new(1000);
        let gen = HlcGenerator::new(Hlc(0));
        let a = gen.next(&clock);
        let b = gen.next(&clock);
        assert_eq!(a, Hlc::from_physical_ms(1000));
        assert!(b > a);
        assert_eq!(b.physical_ms(), 1000);
        assert_eq!(b.logical(), 1);
        clock.set(10);
        let c = gen.next(&clock);
        assert!(c > b);
        clock.set(5000);
        let d = gen.next(&clock);
        assert_eq!(d, Hlc::from_physical_ms(5000));
        gen.observe(Hlc::from_physical_ms(9000));
        assert!(gen.next(&clock) > Hlc::from_physical_ms(9000));
    }

    #[test]
    fn manual_clock_moves_when_told() {
        let clock = ManualClock::new(5);
        clock.advance(10);
        assert_eq!(clock.now_ms(), 15);
        clock.set(3);
        assert_eq!(clock.now_ms(), 3);
        assert!(SystemClock.now_ms() > 1_600_000_000_000);
    }
}
