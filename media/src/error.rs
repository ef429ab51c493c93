//! The media pipeline's error type.
//!
//! Invariant: every variant carries a message a person understands (it becomes the
//! track's `failed` reason verbatim), and [`MediaError::is_permanent`] decides whether
//! the job queue may retry: bad input never succeeds on retry, a failing source or sink
//! (network, disk) may.

use std::io;

/// Why a probe or transcode failed.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// The bytes are not audio in any format we know (empty, text, random, an image...).
    #[error("not an audio file: {reason}")]
    NotAudio { reason: String },

    /// The container is recognised but its codec or layout is not supported.
    #[error("unsupported audio: {reason}")]
    Unsupported { reason: String },

    /// The stream ends before the length its header declares.
    #[error(
        "truncated {format} stream at {decoded_s:.1} s (its header declares {declared_s:.1} s)",
        decoded_s = *decoded_ms as f64 / 1000.0,
        declared_s = *declared_ms as f64 / 1000.0
    )]
    Truncated {
        format: &'static str,
        decoded_ms: u64,
        declared_ms: u64,
    },

    /// A header claims more audio data than the file holds (never allocated).
    #[error(
        "{format} header claims {claimed} of audio but the file holds {actual}",
        claimed = human_bytes(*claimed_bytes),
        actual = human_bytes(*actual_bytes)
    )]
    HeaderLies {
        format: &'static str,
        claimed_bytes: u64,
        actual_bytes: u64,
    },

    /// The stream is damaged beyond what skipping a bad packet can repair.
    #[error(
        "corrupt {format} stream at {at_s:.1} s: {reason}",
        at_s = *at_ms as f64 / 1000.0
    )]
    Corrupt {
        format: &'static str,
        at_ms: u64,
        reason: String,
    },

    /// The decoded audio is longer than the job allows.
    #[error(
        "audio longer than the allowed {max_s:.0} s (reached {at_s:.0} s)",
        max_s = *max_ms as f64 / 1000.0,
        at_s = *at_ms as f64 / 1000.0
    )]
    TooLong { at_ms: u64, max_ms: u64 },

    /// The decoded audio has more samples (frames x channels) than the job allows.
    #[error("audio has more than the allowed {max_samples} decoded samples")]
    TooManySamples { max_samples: u64 },

    /// The caller cancelled the job through [`crate::Limits::cancel`].
    #[error("transcode cancelled")]
    Cancelled,

    /// The job passed its wall-clock deadline.
    #[error("transcode timed out after {elapsed_ms} ms")]
    TimedOut { elapsed_ms: u64 },

    /// Reading the source failed (the blob store or network, not the file's content).
    #[error("reading the source failed: {source}")]
    SourceIo {
        #[source]
        source: io::Error,
    },

    /// Writing a tier failed.
    #[error("writing the {tier} tier failed: {source}")]
    SinkIo {
        tier: &'static str,
        #[source]
        source: io::Error,
    },

    /// The Vorbis encoder refused its configuration or input.
    #[error("vorbis encoder failed for the {tier} tier: {reason}")]
    Encoder { tier: &'static str, reason: String },

    /// A dependency panicked while handling this file; only this job fails.
    #[error("the audio decoder crashed on this file: {reason}")]
    Panicked { reason: String },
}

impl MediaError {
    /// True when retrying the same input cannot succeed (bad, unsupported or oversized
    /// input, a decoder crash); false for failures of the source, the sinks, a
    /// cancellation or a timeout, which may succeed on another attempt.
    pub fn is_permanent(&self) -> bool {
        match self {
            MediaError::NotAudio { .. }
            | MediaError::Unsupported { .. }
            | MediaError::Truncated { .. }
            | MediaError::HeaderLies { .. }
            | MediaError::Corrupt { .. }
            | MediaError::TooLong { .. }
            | MediaError::TooManySamples { .. }
            | MediaError::Encoder { .. }
            | MediaError::Panicked { .. } => true,
            MediaError::Cancelled
            | MediaError::TimedOut { .. }
            | MediaError::SourceIo { .. }
            | MediaError::SinkIo { .. } => false,
        }
    }
}

/// "1 KB", "4.0 GB": sizes as a person reads them (binary units, so a 32-bit size field
/// at its maximum reads "4.0 GB").
pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [(&str, f64); 3] = [("GB", 1073741824.0), ("MB", 1048576.0), ("KB", 1024.0)];
    for (unit, size) in UNITS {
        let v = n as f64 / size;
        if v >= 1.0 {
            return if v >= 10.0 || unit == "KB" {
                format!("{v:.0} {unit}")
            } else {
                format!("{v:.1} {unit}")
            };
        }
    }
    format!("{n} bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_a_person_writes_them() {
        assert_eq!(human_bytes(0), "0 bytes");
        assert_eq!(human_bytes(1068), "1 KB");
        assert_eq!(human_bytes(4_294_967_040), "4.0 GB");
        assert_eq!(human_bytes(25 << 20), "25 MB");
        assert_eq!(human_bytes(3 << 19), "1.5 MB");
    }

    #[test]
    fn messages_are_readable() {
        let e = MediaError::Truncated {
            format: "FLAC",
            decoded_ms: 1_200,
            declared_ms: 60_000,
        };
        assert_eq!(
            e.to_string(),
            "truncated FLAC stream at 1.2 s (its header declares 60.0 s)"
        );
        assert!(e.is_permanent());
        let e = MediaError::HeaderLies {
            format: "WAV",
            claimed_bytes: 0xFFFF_0000,
            actual_bytes: 1068,
        };
        assert_eq!(
            e.to_string(),
            "WAV header claims 4.0 GB of audio but the file holds 1 KB"
        );
        assert!(!MediaError::Cancelled.is_permanent());
    }
}
