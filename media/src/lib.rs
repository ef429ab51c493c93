//! spindle-media: turns uploaded audio bytes into three Ogg Vorbis tiers, tags, cover
//! art and loudness. Knows codecs; knows no HTTP and no storage.
//!
//! Entry points: [`transcode`] (decode once, encode three tiers, measure loudness, read
//! tags) and [`probe`] (tags, cover and stream parameters without decoding audio).
//!
//! Invariants:
//! - Pure: bytes in through a `Read + Seek` source, Ogg Vorbis out through three
//!   `Write` sinks. The source is read sequentially, packet by packet; the whole file is
//!   never in memory, and no buffer is sized from what a header claims.
//! - Every failure is a [`MediaError`] with a readable reason and a permanent/transient
//!   class; a panic inside a dependency becomes [`MediaError::Panicked`] for this job
//!   only.
//! - Per-job bounds ([`Limits`]) are checked in the decode loop after every packet.

mod decode;
mod encode;
mod error;
mod loudness;
mod mp4;
mod resample;
mod tags;
mod transcode;

pub use decode::StreamInfo;
pub use error::MediaError;
pub use loudness::{Loudness, TARGET_LUFS, TRUE_PEAK_CEILING_DBTP};
pub use tags::{read_tags, title_from_file_name, Cover, TagInfo, Tags};
pub use transcode::{probe, transcode, ProbeReport, TierReport, TierSinks, TranscodeReport};

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

/// Sample rate of every tier.
pub const OUTPUT_RATE_HZ: u32 = 44_100;

/// A source the pipeline can read: a file, a cursor over bytes, or a blob read by ranges.
pub trait Source: std::io::Read + std::io::Seek + Send + Sync + 'static {}
impl<T: std::io::Read + std::io::Seek + Send + Sync + 'static> Source for T {}

/// The three output tiers (Spotify's Normal, High and Very High).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    /// 96 kbps.
    Low,
    /// 160 kbps.
    Normal,
    /// 320 kbps.
    High,
}

impl Tier {
    pub const ALL: [Tier; 3] = [Tier::Low, Tier::Normal, Tier::High];

    /// The VBR target libvorbis aims at (the average depends on the music).
    pub fn bitrate_target_kbps(self) -> u32 {
        match self {
            Tier::Low => 96,
            Tier::Normal => 160,
            Tier::High => 320,
        }
    }

    /// "low", "normal", "high": the name used in URLs (`quality=`) and messages.
    pub fn name(self) -> &'static str {
        match self {
            Tier::Low => "low",
            Tier::Normal => "normal",
            Tier::High => "high",
        }
    }

    /// A fixed Ogg stream serial per tier: output is reproducible byte for byte.
    fn stream_serial(self) -> i32 {
        match self {
            Tier::Low => 0x5370_0096,
            Tier::Normal => 0x5370_0160,
            Tier::High => 0x5370_0320,
        }
    }
}

/// Per-job bounds and controls.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest audio accepted (default 6 h).
    pub max_duration_ms: u64,
    /// Most decoded samples (frames x source channels) accepted.
    pub max_decoded_samples: u64,
    /// Fail with [`MediaError::TimedOut`] once this instant passes.
    pub deadline: Option<Instant>,
    /// Fail with [`MediaError::Cancelled`] once the caller sets this.
    pub cancel: Option<Arc<AtomicBool>>,
    /// Encoder threads: 1 encodes the tiers one after another in one thread, 2 puts the
    /// 320 kbps tier alone, 3 or more gives each tier its own; 0 (the default) means 1 on
    /// a single core and 3 otherwise. The decoder always runs on the calling thread.
    pub encoder_threads: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_duration_ms: 6 * 3600 * 1000,
            // Six hours of 8 channels at 192 kHz.
            max_decoded_samples: 6 * 3600 * 192_000 * 8,
            deadline: None,
            cancel: None,
            encoder_threads: 0,
        }
    }
}
