//! Ogg Vorbis encoding of the three tiers, in threads fed by bounded channels.
//!
//! Invariants:
//! - Every tier sees exactly the same PCM blocks, in order; the decoder thread never
//!   waits for more than `CHANNEL_BOUND_BLOCKS` blocks per encoder thread (backpressure
//!   bounds memory to a few hundred KB whatever the track length).
//! - libvorbis sets the granule positions from the samples it was given, so each tier's
//!   duration is the PCM's to the sample (the priming is in the codec, not the count).
//! - VBR mode with a target bitrate (`Vbr { target_bitrate }`), as ffmpeg's `-b:a` is.

use std::cell::{Cell, RefCell};
use std::io::{self, Write};
use std::num::{NonZeroU32, NonZeroU8};
use std::rc::Rc;
use std::sync::mpsc::Receiver;
use std::sync::Arc;

use vorbis_rs::{VorbisBitrateManagementStrategy, VorbisEncoder, VorbisEncoderBuilder};

use crate::{MediaError, Tags, Tier};

/// Blocks in flight per encoder thread.
pub(crate) const CHANNEL_BOUND_BLOCKS: usize = 8;

pub(crate) type Block = Arc<Vec<Vec<f32>>>;

/// Counts bytes and keeps the first I/O error, so a sink failure is reported as such and
/// not as an encoder failure.
struct CountingWriter<'a> {
    inner: &'a mut (dyn Write + Send),
    bytes: Rc<Cell<u64>>,
    error: Rc<RefCell<Option<io::Error>>>,
}

impl Write for CountingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.inner.write(buf) {
            Ok(n) => {
                self.bytes.set(self.bytes.get() + n as u64);
                Ok(n)
            }
            Err(e) => {
                let copy = io::Error::new(e.kind(), e.to_string());
                self.error.borrow_mut().get_or_insert(copy);
                Err(e)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// What an encoder thread reports per tier.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TierOutcome {
    pub tier: Tier,
    pub bitrate_target_kbps: u32,
    pub bytes_written: u64,
}

struct TierEncoder<'a> {
    tier: Tier,
    target_kbps: u32,
    encoder: VorbisEncoder<CountingWriter<'a>>,
    bytes: Rc<Cell<u64>>,
    error: Rc<RefCell<Option<io::Error>>>,
}

impl TierEncoder<'_> {
    fn fail(&self, e: vorbis_rs::VorbisError) -> MediaError {
        match self.error.borrow_mut().take() {
            Some(source) => MediaError::SinkIo {
                tier: self.tier.name(),
                source,
            },
            None => MediaError::Encoder {
                tier: self.tier.name(),
                reason: e.to_string(),
            },
        }
    }
}

/// Output stream settings shared by all tiers.
pub(crate) struct EncodeParams<'t> {
    pub rate: u32,
    pub channels: usize,
    pub tags: &'t Tags,
}

fn build<'a>(
    tier: Tier,
    sink: &'a mut (dyn Write + Send),
    params: &EncodeParams<'_>,
) -> Result<TierEncoder<'a>, MediaError> {
    let bytes = Rc::new(Cell::new(0));
    let error = Rc::new(RefCell::new(None));
    let rate = NonZeroU32::new(params.rate).ok_or(MediaError::Encoder {
        tier: tier.name(),
        reason: "rate 0".into(),
    })?;
    let channels = u8::try_from(params.channels)
        .ok()
        .and_then(NonZeroU8::new)
        .ok_or(MediaError::Encoder {
            tier: tier.name(),
            reason: "bad channel count".into(),
        })?;
    let target_kbps = supported_target_kbps(tier, params)?;
    let writer = CountingWriter {
        inner: sink,
        bytes: bytes.clone(),
        error: error.clone(),
    };
    let mut builder =
        VorbisEncoderBuilder::new_with_serial(rate, channels, writer, tier.stream_serial());
    // The tiers carry the main tags so a downloaded file is labelled; a value libvorbis
    // refuses (an interior NUL) is left out rather than failing the job.
    let tags = params.tags;
    let comments = tags
        .title
        .iter()
        .map(|v| ("TITLE", v))
        .chain(tags.artists.iter().map(|v| ("ARTIST", v)))
        .chain(tags.album.iter().map(|v| ("ALBUM", v)));
    for (key, value) in comments {
        if builder.comment_tag(key, value.as_str()).is_err() {
            tracing::debug!(key, "tag value not representable as a Vorbis comment");
        }
    }
    builder.bitrate_management_strategy(vbr(target_kbps));
    match builder.build() {
        Ok(encoder) => Ok(TierEncoder {
            tier,
            target_kbps,
            encoder,
            bytes,
            error,
        }),
        Err(e) => Err(match error.borrow_mut().take() {
            Some(source) => MediaError::SinkIo {
                tier: tier.name(),
                source,
            },
            None => MediaError::Encoder {
                tier: tier.name(),
                reason: e.to_string(),
            },
        }),
    }
}

fn vbr(kbps: u32) -> VorbisBitrateManagementStrategy {
    VorbisBitrateManagementStrategy::Vbr {
        target_bitrate: NonZeroU32::new(kbps * 1000).unwrap_or(NonZeroU32::MIN),
    }
}

/// libvorbis has no mode for some (rate, channels, bitrate) triples, e.g. 320 kbps mono
/// (its mono modes end near 240 kbps). Finds the highest target at or below the tier's
/// that it accepts, by building throwaway encoders into memory (a failed build consumes
/// its sink, so the real sink is only handed over once the target is known).
fn supported_target_kbps(tier: Tier, params: &EncodeParams<'_>) -> Result<u32, MediaError> {
    let (Some(rate), Some(channels)) = (
        NonZeroU32::new(params.rate),
        u8::try_from(params.channels).ok().and_then(NonZeroU8::new),
    ) else {
        return Err(MediaError::Encoder {
            tier: tier.name(),
            reason: "bad rate or channel count".into(),
        });
    };
    let mut kbps = tier.bitrate_target_kbps();
    for _ in 0..12 {
        let mut b = VorbisEncoderBuilder::new_with_serial(rate, channels, Vec::new(), 1);
        b.bitrate_management_strategy(vbr(kbps));
        match b.build() {
            Ok(_) => return Ok(kbps),
            Err(e) => {
                tracing::debug!(tier = tier.name(), kbps, error = %e, "vorbis refused the target bitrate");
                kbps = kbps * 7 / 8;
            }
        }
    }
    Err(MediaError::Encoder {
        tier: tier.name(),
        reason: format!(
            "no Vorbis mode for {} Hz, {} channels near {} kbps",
            params.rate,
            params.channels,
            tier.bitrate_target_kbps()
        ),
    })
}

/// Runs in an encoder thread: encodes every block received for the given tiers, then
/// finishes the streams. Returns when the sender hangs up.
pub(crate) fn encode_tiers(
    sinks: Vec<(Tier, &mut (dyn Write + Send))>,
    rx: Receiver<Block>,
    params: &EncodeParams<'_>,
) -> Result<Vec<TierOutcome>, MediaError> {
    let mut encoders = Vec::with_capacity(sinks.len());
    for (tier, sink) in sinks {
        encoders.push(build(tier, sink, params)?);
    }
    while let Ok(block) = rx.recv() {
        for enc in &mut encoders {
            if let Err(e) = enc.encoder.encode_audio_block(&**block) {
                return Err(enc.fail(e));
            }
        }
    }
    let mut out = Vec::with_capacity(encoders.len());
    for enc in encoders {
        let TierEncoder {
            tier,
            target_kbps,
            encoder,
            bytes,
            error,
        } = enc;
        if let Err(e) = encoder
            .finish()
            .and_then(|mut w| w.flush().map_err(Into::into))
        {
            return Err(match error.borrow_mut().take() {
                Some(source) => MediaError::SinkIo {
                    tier: tier.name(),
                    source,
                },
                None => MediaError::Encoder {
                    tier: tier.name(),
                    reason: e.to_string(),
                },
            });
        }
        out.push(TierOutcome {
            tier,
            bitrate_target_kbps: target_kbps,
            bytes_written: bytes.get(),
        });
    }
    Ok(out)
}
