//! The job: read tags, decode once, resample, measure loudness and feed three encoder
//! threads, then check what was decoded against what the stream declared.
//!
//! Invariants:
//! - One decoder pass; the three tiers get the same blocks (see `encode`).
//! - A stream that decodes to fewer frames than its header declares is a failure, not a
//!   shorter track (symphonia itself ends truncated streams silently).
//! - The output frame count is `round(decoded_frames * 44100 / rate_in)` exactly.

use std::io::{Read, Seek, SeekFrom, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;
use std::time::Instant;

use symphonia::core::io::MediaSource;

use crate::decode::{frames_to_ms, DecodeStream, Step, StreamInfo};
use crate::encode::{encode_tiers, Block, EncodeParams, TierOutcome, CHANNEL_BOUND_BLOCKS};
use crate::loudness::{Loudness, LoudnessMeter};
use crate::resample::Resampler;
use crate::tags::{read_tags, Cover, TagInfo, Tags};
use crate::{Limits, MediaError, Source, Tier, OUTPUT_RATE_HZ};

/// Frames per block sent to the encoders (about 93 ms at 44.1 kHz).
const BLOCK_FRAMES: usize = 4096;
/// Bytes read from the start to name the container and check a RIFF/AIFF chunk table
/// before symphonia sees it.
const HEAD_BYTES: usize = 64 * 1024;

/// Where the three tiers go. Each sink receives a complete Ogg Vorbis stream.
pub struct TierSinks<'a> {
    pub low: &'a mut (dyn Write + Send),
    pub normal: &'a mut (dyn Write + Send),
    pub high: &'a mut (dyn Write + Send),
}

impl std::fmt::Debug for TierSinks<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TierSinks")
    }
}

/// One encoded tier.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TierReport {
    pub tier: Tier,
    /// The VBR target used (lower than the tier's nominal one only where libvorbis has no
    /// mode for it, e.g. 320 kbps mono).
    pub bitrate_target_kbps: u32,
    pub bytes_written: u64,
    /// bytes_written x 8 / duration.
    pub avg_bitrate_kbps: f64,
}

/// Everything a finished job knows about the track.
#[derive(Debug, Clone)]
pub struct TranscodeReport {
    pub stream: StreamInfo,
    pub channels_out: u16,
    /// Frames decoded from the source, at its own rate.
    pub frames_in: u64,
    /// Frames in each tier, at 44.1 kHz.
    pub frames_out: u64,
    /// From the decoded sample count.
    pub duration_ms: u64,
    pub tags: Tags,
    pub cover: Option<Cover>,
    pub loudness: Loudness,
    /// Low, normal, high, in that order.
    pub tiers: [TierReport; 3],
    /// Packets the decoder rejected and that were skipped.
    pub bad_packets: u64,
}

/// Tags, cover and stream parameters read without decoding audio.
#[derive(Debug, Clone)]
pub struct ProbeReport {
    pub stream: StreamInfo,
    pub tags: Tags,
    pub cover: Option<Cover>,
    /// From the header; an estimate for some formats (MP3 without a Xing header).
    pub declared_duration_ms: Option<u64>,
}

/// Adapts any [`Source`] to symphonia's `MediaSource`.
struct SourceAdapter<R> {
    inner: R,
    len_bytes: u64,
}

impl<R: Read> Read for SourceAdapter<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(buf)
    }
}

impl<R: Seek> Seek for SourceAdapter<R> {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        self.inner.seek(pos)
    }
}

impl<R: Source> MediaSource for SourceAdapter<R> {
    fn is_seekable(&self) -> bool {
        true
    }

    fn byte_len(&self) -> Option<u64> {
        Some(self.len_bytes)
    }
}

fn io_err(source: std::io::Error) -> MediaError {
    MediaError::SourceIo { source }
}

fn panic_reason(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

/// Common start of probe and transcode: length, empty check, tags, open the stream.
fn open<R: Source>(
    mut source: R,
    source_len_bytes: Option<u64>,
    file_name_hint: Option<&str>,
) -> Result<(DecodeStream, TagInfo, u64), MediaError> {
    let len_bytes = match source_len_bytes {
        Some(n) => n,
        None => source.seek(SeekFrom::End(0)).map_err(io_err)?,
    };
    if len_bytes == 0 {
        return Err(MediaError::NotAudio {
            reason: "the file is empty (0 bytes)".to_string(),
        });
    }
    source.seek(SeekFrom::Start(0)).map_err(io_err)?;
    let mut head = Vec::with_capacity(HEAD_BYTES);
    (&mut source)
        .take(HEAD_BYTES as u64)
        .read_to_end(&mut head)
        .map_err(io_err)?;
    let tag_info = read_tags(&mut source, file_name_hint).map_err(io_err)?;
    check_pcm_chunks(&head, len_bytes)?;
    let mp3_header = mp3_frame_count_header(&mut source, &head).map_err(io_err)?;
    let edit = if head.get(4..8) == Some(b"ftyp") {
        crate::mp4::audio_edit(&mut source, len_bytes).map_err(io_err)?
    } else {
        None
    };
    source.seek(SeekFrom::Start(0)).map_err(io_err)?;
    let adapter: Box<dyn MediaSource> = Box::new(SourceAdapter {
        inner: source,
        len_bytes,
    });
    let mut stream = DecodeStream::open(adapter, &head)?;
    if let Some(edit) = edit {
        let (skip, keep) = edit.frames_at(stream.info.sample_rate);
        stream.set_edit(skip, keep);
    }
    stream.mp3_frame_count_header = stream.info.codec == "mp3" && mp3_header;
    check_header_claims(&stream.info, len_bytes)?;
    Ok((stream, tag_info, len_bytes))
}

/// True when the first MPEG audio frame carries a Xing/Info or VBRI header: then the
/// stream's declared frame count is exact (otherwise symphonia estimates it from the
/// bitrate, and a shorter decode proves nothing).
fn mp3_frame_count_header<R: Read + Seek>(source: &mut R, head: &[u8]) -> std::io::Result<bool> {
    let mut start = 0u64;
    if head.len() >= 10 && head.starts_with(b"ID3") {
        // ID3v2 size: four 7-bit bytes; a footer adds 10.
        let size = head[6..10]
            .iter()
            .fold(0u64, |a, &b| (a << 7) | u64::from(b & 0x7F));
        let footer = if head[5] & 0x10 != 0 { 10 } else { 0 };
        start = 10 + size + footer;
    } else if !(head.len() >= 2 && head[0] == 0xFF && head[1] & 0xE0 == 0xE0) {
        return Ok(false);
    }
    source.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::with_capacity(4096);
    source.by_ref().take(4096).read_to_end(&mut buf)?;
    let Some(sync) = buf
        .windows(2)
        .position(|w| w[0] == 0xFF && w[1] & 0xE0 == 0xE0)
    else {
        return Ok(false);
    };
    // The tag follows the header and side information (at most 36 bytes in).
    let frame = &buf[sync..buf.len().min(sync + 200)];
    Ok(frame
        .windows(4)
        .any(|w| w == b"Xing" || w == b"Info" || w == b"VBRI"))
}

/// Walks the chunk table of a WAV (RIFF) or AIFF (FORM) file in its first bytes: an audio
/// chunk ("data", "SSND") that claims to run past the end of the file is refused with the
/// sizes, whatever else is wrong with the header (symphonia would only say "malformed").
fn check_pcm_chunks(head: &[u8], len_bytes: u64) -> Result<(), MediaError> {
    let (format, audio_id, big_endian): (&'static str, &[u8; 4], bool) = if head.len() >= 12
        && (head.starts_with(b"RIFF") || head.starts_with(b"RF64"))
        && &head[8..12] == b"WAVE"
    {
        ("WAV", b"data", false)
    } else if head.len() >= 12
        && head.starts_with(b"FORM")
        && (&head[8..12] == b"AIFF" || &head[8..12] == b"AIFC")
    {
        ("AIFF", b"SSND", true)
    } else {
        return Ok(());
    };
    let mut pos = 12usize;
    // Bounded by the head's length: each step advances at least 8 bytes.
    while pos + 8 <= head.len() {
        let id = &head[pos..pos + 4];
        let size_bytes = [head[pos + 4], head[pos + 5], head[pos + 6], head[pos + 7]];
        let size = u64::from(if big_endian {
            u32::from_be_bytes(size_bytes)
        } else {
            u32::from_le_bytes(size_bytes)
        });
        let body_start = pos as u64 + 8;
        if id == audio_id {
            // RF64 puts 0xFFFFFFFF here and the real size in "ds64"; symphonia checks that.
            if size != u64::from(u32::MAX) && body_start + size > len_bytes {
                return Err(MediaError::HeaderLies {
                    format,
                    claimed_bytes: size,
                    actual_bytes: len_bytes,
                });
            }
            return Ok(());
        }
        let next = body_start + size + (size & 1);
        if next > len_bytes || next > head.len() as u64 {
            return Ok(());
        }
        pos = next as usize;
    }
    Ok(())
}

/// A PCM header (WAV/AIFF) that declares more data than the file holds is refused before
/// decoding: we never trust, let alone allocate, what it claims.
fn check_header_claims(info: &StreamInfo, len_bytes: u64) -> Result<(), MediaError> {
    if !info.is_pcm() {
        return Ok(());
    }
    let (Some(frames), Some(bits)) = (info.declared_frames, info.bits_per_coded_sample) else {
        return Ok(());
    };
    let claimed_bytes = frames
        .saturating_mul(u64::from(info.channels))
        .saturating_mul(u64::from(bits.div_ceil(8)));
    if claimed_bytes > len_bytes {
        return Err(MediaError::HeaderLies {
            format: info.container,
            claimed_bytes,
            actual_bytes: len_bytes,
        });
    }
    Ok(())
}

/// Declared frames at the stream's sample rate, for codecs whose header count is exact
/// (not MP3, whose count without a Xing header is an estimate from the bitrate).
fn exact_declared_frames(info: &StreamInfo, mp3_frame_count_header: bool) -> Option<u64> {
    let exact = info.is_pcm()
        || matches!(info.codec.as_str(), "flac" | "vorbis" | "opus")
        || (info.codec == "mp3" && mp3_frame_count_header);
    if exact {
        info.declared_frames
    } else {
        None
    }
}

/// Reads tags, cover and stream parameters; decodes no audio.
pub fn probe<R: Source>(
    source: R,
    source_len_bytes: Option<u64>,
    file_name_hint: Option<&str>,
) -> Result<ProbeReport, MediaError> {
    let run = || {
        let (stream, tag_info, _) = open(source, source_len_bytes, file_name_hint)?;
        let declared_duration_ms = stream
            .info
            .declared_frames
            .map(|f| frames_to_ms(f, stream.info.sample_rate));
        Ok(ProbeReport {
            stream: stream.info.clone(),
            tags: tag_info.tags,
            cover: tag_info.cover,
            declared_duration_ms,
        })
    };
    catch_unwind(AssertUnwindSafe(run)).unwrap_or_else(|p| {
        Err(MediaError::Panicked {
            reason: panic_reason(p),
        })
    })
}

/// Decodes `source` once and writes the three Ogg Vorbis tiers to `sinks`.
///
/// `source_len_bytes` is the blob's size when the caller knows it (otherwise the source
/// is seeked to its end once). `file_name_hint` is the uploaded name, used only as the
/// title when the tags have none. On error the sinks hold partial output the caller must
/// discard.
pub fn transcode<R: Source>(
    source: R,
    source_len_bytes: Option<u64>,
    file_name_hint: Option<&str>,
    sinks: TierSinks<'_>,
    limits: &Limits,
) -> Result<TranscodeReport, MediaError> {
    let run = || transcode_inner(source, source_len_bytes, file_name_hint, sinks, limits);
    catch_unwind(AssertUnwindSafe(run)).unwrap_or_else(|p| {
        Err(MediaError::Panicked {
            reason: panic_reason(p),
        })
    })
}

fn thread_groups(encoder_threads: usize) -> Vec<Vec<Tier>> {
    // Auto: with two cores or more, one thread per tier, and the scheduler spreads the
    // three encoders and the decoder over the cores more evenly than a fixed split.
    let n = match encoder_threads {
        0 => match std::thread::available_parallelism().map_or(1, usize::from) {
            1 => 1,
            _ => 3,
        },
        n => n,
    };
    match n {
        1 => vec![vec![Tier::Low, Tier::Normal, Tier::High]],
        2 => vec![vec![Tier::High], vec![Tier::Low, Tier::Normal]],
        _ => vec![vec![Tier::Low], vec![Tier::Normal], vec![Tier::High]],
    }
}

/// Collects frames into fixed-size blocks and hands each to the loudness meter and every
/// encoder thread.
struct Fanout<'m> {
    senders: Vec<SyncSender<Block>>,
    meter: &'m mut LoudnessMeter,
    pending: Vec<Vec<f32>>,
    frames_out: u64,
}

impl Fanout<'_> {
    fn push(&mut self, planes: &[Vec<f32>]) -> Result<(), MediaError> {
        for (p, src) in self.pending.iter_mut().zip(planes) {
            p.extend_from_slice(src);
        }
        while self.pending[0].len() >= BLOCK_FRAMES {
            let block: Vec<Vec<f32>> = self
                .pending
                .iter_mut()
                .map(|p| p.drain(..BLOCK_FRAMES).collect())
                .collect();
            self.send(block)?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), MediaError> {
        if self.pending[0].is_empty() {
            return Ok(());
        }
        let block: Vec<Vec<f32>> = self.pending.iter_mut().map(std::mem::take).collect();
        self.send(block)
    }

    fn send(&mut self, block: Vec<Vec<f32>>) -> Result<(), MediaError> {
        self.frames_out += block[0].len() as u64;
        self.meter
            .add(&block)
            .map_err(|reason| MediaError::Unsupported {
                reason: format!("loudness meter: {reason}"),
            })?;
        let block: Block = Arc::new(block);
        for tx in &self.senders {
            if tx.send(block.clone()).is_err() {
                // The thread failed; its own error is collected at join.
                return Err(MediaError::Encoder {
                    tier: "all",
                    reason: "an encoder thread stopped early".to_string(),
                });
            }
        }
        Ok(())
    }
}

fn transcode_inner<R: Source>(
    source: R,
    source_len_bytes: Option<u64>,
    file_name_hint: Option<&str>,
    sinks: TierSinks<'_>,
    limits: &Limits,
) -> Result<TranscodeReport, MediaError> {
    let started = Instant::now();
    let (mut stream, tag_info, _len) = open(source, source_len_bytes, file_name_hint)?;
    let info = stream.info.clone();
    let channels_out = stream.out_channels();
    let rate_in = info.sample_rate;
    let mut meter = LoudnessMeter::new(channels_out, OUTPUT_RATE_HZ).map_err(|reason| {
        MediaError::Unsupported {
            reason: format!("loudness meter: {reason}"),
        }
    })?;
    let mut resampler = if rate_in == OUTPUT_RATE_HZ {
        None
    } else {
        Some(
            Resampler::new(rate_in, OUTPUT_RATE_HZ, channels_out).map_err(|reason| {
                MediaError::Unsupported {
                    reason: format!("cannot resample {rate_in} Hz: {reason}"),
                }
            })?,
        )
    };
    let params = EncodeParams {
        rate: OUTPUT_RATE_HZ,
        channels: channels_out,
        tags: &tag_info.tags,
    };

    let TierSinks { low, normal, high } = sinks;
    let mut slots: [Option<&mut (dyn Write + Send)>; 3] = [Some(low), Some(normal), Some(high)];
    let groups = thread_groups(limits.encoder_threads);

    let (decode_result, outcomes) = std::thread::scope(|scope| {
        let mut senders = Vec::new();
        let mut handles = Vec::new();
        for group in &groups {
            let (tx, rx) = sync_channel::<Block>(CHANNEL_BOUND_BLOCKS);
            let mut group_sinks = Vec::new();
            for &tier in group {
                if let Some(sink) = slots[tier as usize].take() {
                    group_sinks.push((tier, sink));
                }
            }
            let params = &params;
            handles.push(scope.spawn(move || encode_tiers(group_sinks, rx, params)));
            senders.push(tx);
        }
        let mut fanout = Fanout {
            senders,
            meter: &mut meter,
            pending: vec![Vec::with_capacity(BLOCK_FRAMES * 2); channels_out],
            frames_out: 0,
        };
        let decode_result = decode_loop(&mut stream, &mut resampler, &mut fanout, limits, started);
        let frames_out = fanout.frames_out;
        // Hanging up ends the encoder threads' loops; they then finish their streams.
        drop(fanout);
        let mut outcomes: Vec<Result<Vec<TierOutcome>, MediaError>> = Vec::new();
        for h in handles {
            outcomes.push(h.join().unwrap_or_else(|p| {
                Err(MediaError::Panicked {
                    reason: panic_reason(p),
                })
            }));
        }
        (decode_result.map(|()| frames_out), outcomes)
    });

    let mut tier_outcomes: Vec<TierOutcome> = Vec::new();
    let mut encoder_error = None;
    for o in outcomes {
        match o {
            Ok(v) => tier_outcomes.extend(v),
            Err(e) => {
                encoder_error.get_or_insert(e);
            }
        }
    }
    // An encoder's failure is the cause when the fanout found it gone; a decode failure
    // alone leaves the encoders finishing normally.
    if let Some(e) = encoder_error {
        return Err(e);
    }
    let frames_out = decode_result?;
    let frames_in = stream.frames_decoded;
    let duration_ms = frames_to_ms(frames_in, rate_in);
    tier_outcomes.sort_by_key(|o| o.tier);
    let tier_report = |tier: Tier| -> Result<TierReport, MediaError> {
        let o = tier_outcomes
            .iter()
            .find(|o| o.tier == tier)
            .ok_or(MediaError::Encoder {
                tier: tier.name(),
                reason: "no output".to_string(),
            })?;
        let secs = frames_out as f64 / f64::from(OUTPUT_RATE_HZ);
        let avg_bitrate_kbps = if secs > 0.0 {
            o.bytes_written as f64 * 8.0 / secs / 1000.0
        } else {
            0.0
        };
        Ok(TierReport {
            tier,
            bitrate_target_kbps: o.bitrate_target_kbps,
            bytes_written: o.bytes_written,
            avg_bitrate_kbps,
        })
    };
    let tiers = [
        tier_report(Tier::Low)?,
        tier_report(Tier::Normal)?,
        tier_report(Tier::High)?,
    ];
    Ok(TranscodeReport {
        stream: info,
        channels_out: channels_out as u16,
        frames_in,
        frames_out,
        duration_ms,
        tags: tag_info.tags,
        cover: tag_info.cover,
        loudness: meter.finish(),
        tiers,
        bad_packets: stream.bad_packets,
    })
}

/// More rejected packets than this, and more than good ones, means the file is not what
/// its first bytes suggested.
const BAD_PACKETS_TOLERATED: u64 = 16;

fn decode_loop(
    stream: &mut DecodeStream,
    resampler: &mut Option<Resampler>,
    fanout: &mut Fanout<'_>,
    limits: &Limits,
    started: Instant,
) -> Result<(), MediaError> {
    let channels_out = stream.out_channels();
    let rate_in = stream.info.sample_rate;
    let source_channels = u64::from(stream.info.channels);
    let format = stream.info.format_name();
    let mut planes: Vec<Vec<f32>> = vec![Vec::new(); channels_out];
    let mut emit = |block: &[Vec<f32>], _n: usize| fanout.push(block);
    loop {
        if let Some(cancel) = &limits.cancel {
            if cancel.load(Ordering::Relaxed) {
                return Err(MediaError::Cancelled);
            }
        }
        if let Some(deadline) = limits.deadline {
            if Instant::now() >= deadline {
                return Err(MediaError::TimedOut {
                    elapsed_ms: started.elapsed().as_millis() as u64,
                });
            }
        }
        for p in &mut planes {
            p.clear();
        }
        match stream.next_packet(&mut planes)? {
            Step::End => break,
            Step::Frames(0) => continue,
            Step::Frames(_) => {}
        }
        if stream.bad_packets > BAD_PACKETS_TOLERATED && stream.bad_packets > stream.good_packets {
            return Err(bad_packets_error(stream));
        }
        let at_ms = frames_to_ms(stream.frames_decoded, rate_in);
        if at_ms > limits.max_duration_ms {
            return Err(MediaError::TooLong {
                at_ms,
                max_ms: limits.max_duration_ms,
            });
        }
        if stream.frames_decoded.saturating_mul(source_channels) > limits.max_decoded_samples {
            return Err(MediaError::TooManySamples {
                max_samples: limits.max_decoded_samples,
            });
        }
        match resampler {
            Some(r) => r.push(&planes, &mut emit)?,
            None => emit(&planes, 0)?,
        }
    }
    if let Some(r) = resampler {
        r.finish(&mut emit)?;
    }
    fanout.flush()?;
    judge_end(stream, format)
}

fn bad_packets_error(stream: &DecodeStream) -> MediaError {
    if stream.good_packets == 0 {
        MediaError::NotAudio {
            reason: format!(
                "no {} frame in it could be decoded",
                stream.info.format_name()
            ),
        }
    } else {
        MediaError::Corrupt {
            format: stream.info.format_name(),
            at_ms: frames_to_ms(stream.frames_decoded, stream.info.sample_rate),
            reason: format!(
                "{} of {} packets could not be decoded",
                stream.bad_packets,
                stream.bad_packets + stream.good_packets
            ),
        }
    }
}

/// After the last packet: was anything decoded, and all that the header declared?
fn judge_end(stream: &DecodeStream, format: &'static str) -> Result<(), MediaError> {
    let info = &stream.info;
    let decoded = stream.frames_decoded;
    if decoded == 0 {
        return Err(if stream.bad_packets > 0 {
            bad_packets_error(stream)
        } else {
            MediaError::NotAudio {
                reason: match &stream.stream_error {
                    Some(e) => format!(
                        "the {} stream holds no decodable audio ({e})",
                        info.container
                    ),
                    None => format!("the {} stream holds no audio", info.container),
                },
            }
        });
    }
    if let Some(declared) = exact_declared_frames(info, stream.mp3_frame_count_header) {
        // A few packets of slack: encoders' padding and rounding of the declared count.
        let slack = (u64::from(info.sample_rate) / 20).max(declared / 500);
        if decoded + slack < declared {
            return Err(MediaError::Truncated {
                format,
                decoded_ms: frames_to_ms(decoded, info.sample_rate),
                declared_ms: frames_to_ms(declared, info.sample_rate),
            });
        }
    }
    if let Some(e) = &stream.stream_error {
        return Err(MediaError::Corrupt {
            format,
            at_ms: frames_to_ms(decoded, info.sample_rate),
            reason: e.clone(),
        });
    }
    if stream.bad_packets > BAD_PACKETS_TOLERATED && stream.bad_packets > stream.good_packets {
        return Err(bad_packets_error(stream));
    }
    Ok(())
}
