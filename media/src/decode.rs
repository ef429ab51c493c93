//! Demux and decode any supported input into blocks of planar f32 PCM, downmixed to
//! stereo (or kept mono), one packet at a time.
//!
//! Invariants:
//! - The format is detected from the bytes (symphonia's probe, no extension hint).
//! - Memory is bounded by one packet's decoded audio: nothing is sized from what a header
//!   claims, and the whole stream is never held.
//! - Opus, which symphonia demuxes but cannot decode, goes through the pure-Rust
//!   `ropus` crate (a port of libopus); its pre-skip and end trimming come from the Ogg granules
//!   (symphonia's gapless mode), like every other codec's.
//! - Downmix uses the ITU-R BS.775 coefficients (centre and surrounds at -3 dB, LFE
//!   dropped), scaled so that no output sum exceeds full scale, as ffmpeg does by default.

use symphonia::core::audio::{AudioBuffer, AudioBufferRef, Channels, Signal};
use symphonia::core::codecs::{
    CodecParameters, Decoder, DecoderOptions, CODEC_TYPE_NULL, CODEC_TYPE_OPUS,
};
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::{FormatOptions, FormatReader, Packet};
use symphonia::core::io::{MediaSource, MediaSourceStream, MediaSourceStreamOptions};
use symphonia::core::meta::{Limit, MetadataOptions};
use symphonia::core::probe::Hint;

use crate::MediaError;

/// What the stream says about itself, before decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    /// Container as a person names it: "FLAC", "MP3", "MP4", "Ogg", "WAV", "AIFF".
    pub container: &'static str,
    /// Codec short name: "flac", "mp3", "aac", "alac", "vorbis", "opus", "pcm_s16le", ...
    pub codec: String,
    pub sample_rate: u32,
    pub channels: u16,
    /// Frames the header declares (STREAMINFO, WAV data size, Xing, granules), if any.
    pub declared_frames: Option<u64>,
    /// Bits per coded sample for PCM, used to compare a header's claim with the file size.
    pub bits_per_coded_sample: Option<u32>,
}

impl StreamInfo {
    pub(crate) fn is_pcm(&self) -> bool {
        self.codec.starts_with("pcm_")
    }

    /// A name for messages: "FLAC", "WAV", "MP3", "Opus", "AAC"...
    pub(crate) fn format_name(&self) -> &'static str {
        match self.codec.as_str() {
            "flac" => "FLAC",
            "mp3" | "mp2" | "mp1" => "MP3",
            "aac" => "AAC",
            "alac" => "ALAC",
            "vorbis" => "Vorbis",
            "opus" => "Opus",
            _ => self.container,
        }
    }
}

/// Guesses the container from the first bytes, for naming only (symphonia decides).
fn container_name(head: &[u8]) -> &'static str {
    if head.starts_with(b"fLaC") {
        "FLAC"
    } else if head.starts_with(b"OggS") {
        "Ogg"
    } else if head.starts_with(b"RIFF") || head.starts_with(b"RIFX") || head.starts_with(b"RF64") {
        "WAV"
    } else if head.starts_with(b"FORM") {
        "AIFF"
    } else if head.len() >= 8 && &head[4..8] == b"ftyp" {
        "MP4"
    } else if head.starts_with(b"ID3")
        || (head.len() >= 2 && head[0] == 0xFF && head[1] & 0xE0 == 0xE0)
    {
        "MP3"
    } else if head.starts_with(b"\x1A\x45\xDF\xA3") {
        "Matroska"
    } else {
        "audio"
    }
}

/// How to turn the source channels into the output channels.
enum Mix {
    Mono,
    Stereo,
    /// Per source channel: (gain into left, gain into right).
    Matrix(Vec<(f32, f32)>),
}

const MINUS_3DB: f32 = std::f32::consts::FRAC_1_SQRT_2;

impl Mix {
    fn new(channels: usize, layout: Option<Channels>) -> Mix {
        match channels {
            1 => return Mix::Mono,
            2 => return Mix::Stereo,
            _ => {}
        }
        let positions: Vec<Channels> = match layout {
            Some(l) if l.count() == channels => l.iter().collect(),
            _ => default_layout(channels),
        };
        Mix::from_positions(positions)
    }

    /// A downmix for channels at the given positions, in plane order.
    fn from_positions(positions: Vec<Channels>) -> Mix {
        match positions.len() {
            1 => return Mix::Mono,
            2 => return Mix::Stereo,
            _ => {}
        }
        let mut gains: Vec<(f32, f32)> = positions.iter().map(|&p| position_gains(p)).collect();
        let sum_l: f32 = gains.iter().map(|g| g.0).sum();
        let sum_r: f32 = gains.iter().map(|g| g.1).sum();
        let norm = sum_l.max(sum_r);
        if norm > 1.0 {
            for g in &mut gains {
                g.0 /= norm;
                g.1 /= norm;
            }
        }
        Mix::Matrix(gains)
    }

    fn out_channels(&self) -> usize {
        match self {
            Mix::Mono => 1,
            Mix::Stereo | Mix::Matrix(_) => 2,
        }
    }

    /// Appends the mixed frames of `planes` (one slice per source channel) to `out`.
    fn apply(&self, planes: &[&[f32]], out: &mut [Vec<f32>]) {
        match self {
            Mix::Mono => out[0].extend_from_slice(planes[0]),
            Mix::Stereo => {
                out[0].extend_from_slice(planes[0]);
                out[1].extend_from_slice(planes[1]);
            }
            Mix::Matrix(gains) => {
                let frames = planes.first().map_or(0, |p| p.len());
                let (l, r) = out.split_at_mut(1);
                let (l, r) = (&mut l[0], &mut r[0]);
                let l0 = l.len();
                l.resize(l0 + frames, 0.0);
                r.resize(l0 + frames, 0.0);
                for (plane, &(gl, gr)) in planes.iter().zip(gains) {
                    if gl != 0.0 {
                        for (o, s) in l[l0..].iter_mut().zip(plane.iter()) {
                            *o += s * gl;
                        }
                    }
                    if gr != 0.0 {
                        for (o, s) in r[l0..].iter_mut().zip(plane.iter()) {
                            *o += s * gr;
                        }
                    }
                }
            }
        }
    }
}

/// The Vorbis channel order (Vorbis I spec 4.3.9), which Opus mapping family 1 uses.
fn vorbis_order(channels: usize) -> Vec<Channels> {
    use Channels as C;
    let (fl, fr, fc, lfe) = (C::FRONT_LEFT, C::FRONT_RIGHT, C::FRONT_CENTRE, C::LFE1);
    let (rl, rr, sl, sr, rc) = (
        C::REAR_LEFT,
        C::REAR_RIGHT,
        C::SIDE_LEFT,
        C::SIDE_RIGHT,
        C::REAR_CENTRE,
    );
    match channels {
        1 => vec![fc],
        2 => vec![fl, fr],
        3 => vec![fl, fc, fr],
        4 => vec![fl, fr, rl, rr],
        5 => vec![fl, fc, fr, rl, rr],
        6 => vec![fl, fc, fr, rl, rr, lfe],
        7 => vec![fl, fc, fr, sl, sr, rc, lfe],
        _ => vec![fl, fc, fr, sl, sr, rl, rr, lfe],
    }
}

/// WAVE_FORMAT_EXTENSIBLE's default order when no mask says otherwise.
fn default_layout(channels: usize) -> Vec<Channels> {
    const ORDER: [Channels; 8] = [
        Channels::FRONT_LEFT,
        Channels::FRONT_RIGHT,
        Channels::FRONT_CENTRE,
        Channels::LFE1,
        Channels::REAR_LEFT,
        Channels::REAR_RIGHT,
        Channels::SIDE_LEFT,
        Channels::SIDE_RIGHT,
    ];
    (0..channels)
        .map(|i| ORDER.get(i).copied().unwrap_or(Channels::empty()))
        .collect()
}

fn position_gains(p: Channels) -> (f32, f32) {
    if p == Channels::FRONT_LEFT {
        (1.0, 0.0)
    } else if p == Channels::FRONT_RIGHT {
        (0.0, 1.0)
    } else if p == Channels::LFE1 || p == Channels::LFE2 {
        (0.0, 0.0)
    } else if p == Channels::FRONT_CENTRE
        || p == Channels::TOP_FRONT_CENTRE
        || p == Channels::TOP_CENTRE
    {
        (MINUS_3DB, MINUS_3DB)
    } else if p == Channels::REAR_CENTRE || p == Channels::TOP_REAR_CENTRE {
        (0.5, 0.5)
    } else if [
        Channels::REAR_LEFT,
        Channels::SIDE_LEFT,
        Channels::FRONT_LEFT_CENTRE,
        Channels::FRONT_LEFT_WIDE,
        Channels::FRONT_LEFT_HIGH,
        Channels::REAR_LEFT_CENTRE,
        Channels::TOP_FRONT_LEFT,
        Channels::TOP_REAR_LEFT,
    ]
    .contains(&p)
    {
        (MINUS_3DB, 0.0)
    } else if [
        Channels::REAR_RIGHT,
        Channels::SIDE_RIGHT,
        Channels::FRONT_RIGHT_CENTRE,
        Channels::FRONT_RIGHT_WIDE,
        Channels::FRONT_RIGHT_HIGH,
        Channels::REAR_RIGHT_CENTRE,
        Channels::TOP_FRONT_RIGHT,
        Channels::TOP_REAR_RIGHT,
    ]
    .contains(&p)
    {
        (0.0, MINUS_3DB)
    } else {
        (0.5, 0.5)
    }
}

/// The largest Opus packet decodes to 120 ms at 48 kHz.
const OPUS_MAX_FRAMES: usize = 5760;

enum OpusDecoder {
    /// Mapping family 0: one mono or stereo stream.
    Single(Box<ropus::Decoder>),
    /// Mapping family 1: up to 8 channels in several streams (Vorbis channel order);
    /// the multistream decoder gives 24-bit integers.
    Multi(Box<ropus::OpusMSDecoder>, Vec<i32>),
}

struct OpusState {
    decoder: OpusDecoder,
    pcm: Vec<f32>,
    planes: Vec<Vec<f32>>,
    channels: usize,
    gain: f32,
}

enum Codec {
    Symphonia {
        decoder: Box<dyn Decoder>,
        planar: Option<AudioBuffer<f32>>,
    },
    Opus(Box<OpusState>),
}

/// An open stream being decoded packet by packet.
pub(crate) struct DecodeStream {
    format: Box<dyn FormatReader>,
    track_id: u32,
    codec: Codec,
    mix: Mix,
    mix_layout: Option<Channels>,
    pub(crate) info: StreamInfo,
    /// Packets the decoder rejected and we skipped (as players do).
    pub(crate) bad_packets: u64,
    pub(crate) good_packets: u64,
    /// Source frames decoded so far (before downmix and resampling).
    pub(crate) frames_decoded: u64,
    /// A demuxer error that ended the stream early, if any.
    pub(crate) stream_error: Option<String>,
    /// Set by the caller when an MP3's first frame has a Xing/Info/VBRI frame count.
    pub(crate) mp3_frame_count_header: bool,
    /// Frames still to drop at the start (MP4 edit list: encoder priming).
    skip_frames: u64,
    /// Frames to present at most (MP4 edit list), if known.
    keep_frames: Option<u64>,
}

/// What one call to [`DecodeStream::next_packet`] produced.
pub(crate) enum Step {
    /// Frames appended to the output planes (possibly 0).
    Frames(usize),
    End,
}

impl DecodeStream {
    /// Probes `source` and opens its first audio track.
    pub(crate) fn open(
        source: Box<dyn MediaSource>,
        head: &[u8],
    ) -> Result<DecodeStream, MediaError> {
        let container = container_name(head);
        let mss = MediaSourceStream::new(source, MediaSourceStreamOptions::default());
        let format_opts = FormatOptions {
            enable_gapless: true,
            ..Default::default()
        };
        // Tags come from lofty; keep symphonia's metadata small so a lying tag size
        // cannot make it allocate.
        let meta_opts = MetadataOptions {
            limit_metadata_bytes: Limit::Maximum(1 << 20),
            limit_visual_bytes: Limit::Maximum(1 << 20),
        };
        let probed = symphonia::default::get_probe()
            .format(&Hint::new(), mss, &format_opts, &meta_opts)
            .map_err(|e| match e {
                SymError::IoError(io) if io.kind() != std::io::ErrorKind::UnexpectedEof => {
                    MediaError::SourceIo { source: io }
                }
                SymError::Unsupported(_) | SymError::IoError(_) => MediaError::NotAudio {
                    reason: "no known audio format was found in its bytes".to_string(),
                },
                other => MediaError::NotAudio {
                    reason: format!("unreadable {container} header ({other})"),
                },
            })?;
        let format = probed.format;
        let track = format
            .tracks()
            .iter()
            .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
            .ok_or_else(|| MediaError::NotAudio {
                reason: format!("the {container} file holds no audio track"),
            })?;
        let params: CodecParameters = track.codec_params.clone();
        let track_id = track.id;
        let sample_rate = params.sample_rate.ok_or_else(|| MediaError::Unsupported {
            reason: format!("the {container} stream does not state its sample rate"),
        })?;
        if !(1_000..=768_000).contains(&sample_rate) {
            return Err(MediaError::Unsupported {
                reason: format!("sample rate {sample_rate} Hz"),
            });
        }
        let codec_name = if params.codec == CODEC_TYPE_OPUS {
            "opus".to_string()
        } else {
            symphonia::default::get_codecs()
                .get_codec(params.codec)
                .map(|d| d.short_name.to_string())
                .unwrap_or_else(|| "unknown".to_string())
        };
        let mut layout = params.channels;
        let (codec, channels) = if params.codec == CODEC_TYPE_OPUS {
            let (state, ch) = open_opus(&params)?;
            (Codec::Opus(Box::new(state)), ch)
        } else {
            let decoder = symphonia::default::get_codecs()
                .make(&params, &DecoderOptions { verify: false })
                .map_err(|e| MediaError::Unsupported {
                    reason: format!("{container} codec {codec_name}: {e}"),
                })?;
            // MP4 leaves the layout to the codec's own config (AAC's AudioSpecificConfig).
            layout = layout.or(decoder.codec_params().channels);
            let channels = match layout {
                Some(l) => l.count(),
                None if codec_name == "alac" => {
                    // ALAC's magic cookie: numChannels at byte 9.
                    params
                        .extra_data
                        .as_deref()
                        .and_then(|c| c.get(9))
                        .map_or(0, |&n| usize::from(n))
                }
                None => aac_config_channels(params.extra_data.as_deref()).unwrap_or(0),
            };
            (
                Codec::Symphonia {
                    decoder,
                    planar: None,
                },
                channels,
            )
        };
        if channels == 0 || channels > 32 {
            return Err(MediaError::Unsupported {
                reason: format!("{channels} channels"),
            });
        }
        let info = StreamInfo {
            container,
            codec: codec_name,
            sample_rate,
            channels: channels as u16,
            declared_frames: declared_frames(&params, sample_rate),
            bits_per_coded_sample: params.bits_per_coded_sample.or(params.bits_per_sample),
        };
        let mix = if matches!(codec, Codec::Opus(_)) && channels > 2 {
            Mix::from_positions(vorbis_order(channels))
        } else {
            Mix::new(channels, layout)
        };
        Ok(DecodeStream {
            format,
            track_id,
            codec,
            mix,
            mix_layout: layout,
            info,
            bad_packets: 0,
            good_packets: 0,
            frames_decoded: 0,
            stream_error: None,
            mp3_frame_count_header: false,
            skip_frames: 0,
            keep_frames: None,
        })
    }

    /// Applies a container's edit: drop `skip` frames at the start, present at most
    /// `keep`. A skip longer than a second is not priming and is ignored.
    pub(crate) fn set_edit(&mut self, skip: u64, keep: Option<u64>) {
        if skip <= u64::from(self.info.sample_rate) {
            self.skip_frames = skip;
        }
        self.keep_frames = keep.filter(|&k| k > 0);
    }

    pub(crate) fn out_channels(&self) -> usize {
        self.mix.out_channels()
    }

    /// Decodes the next packet and appends its downmixed frames to `out`
    /// (`out.len() == out_channels()`).
    pub(crate) fn next_packet(&mut self, out: &mut [Vec<f32>]) -> Result<Step, MediaError> {
        loop {
            let packet = match self.format.next_packet() {
                Ok(p) => p,
                Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Ok(Step::End)
                }
                Err(SymError::IoError(e)) => return Err(MediaError::SourceIo { source: e }),
                Err(SymError::ResetRequired) => return Ok(Step::End),
                Err(e) => {
                    // A demuxer that cannot go on: what was decoded so far is judged by
                    // the caller (truncation, corruption or nothing at all).
                    self.stream_error = Some(e.to_string());
                    return Ok(Step::End);
                }
            };
            if packet.track_id() != self.track_id {
                continue;
            }
            let frames = match self.decode(&packet, out) {
                Ok(n) => n,
                Err(DecodeFailure::Skip(reason)) => {
                    tracing::debug!(%reason, "skipping a packet the decoder rejected");
                    self.bad_packets += 1;
                    continue;
                }
                Err(DecodeFailure::Fatal(e)) => return Err(e),
            };
            self.good_packets += 1;
            self.frames_decoded += frames as u64;
            return Ok(Step::Frames(frames));
        }
    }

    fn decode(&mut self, packet: &Packet, out: &mut [Vec<f32>]) -> Result<usize, DecodeFailure> {
        match &mut self.codec {
            Codec::Symphonia { decoder, planar } => {
                let decoded = match decoder.decode(packet) {
                    Ok(d) => d,
                    Err(SymError::DecodeError(msg)) => {
                        return Err(DecodeFailure::Skip(msg.to_string()))
                    }
                    Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                        return Err(DecodeFailure::Skip(e.to_string()))
                    }
                    Err(SymError::IoError(e)) => {
                        return Err(DecodeFailure::Fatal(MediaError::SourceIo { source: e }))
                    }
                    Err(e) => {
                        return Err(DecodeFailure::Fatal(MediaError::Corrupt {
                            format: self.info.format_name(),
                            at_ms: frames_to_ms(self.frames_decoded, self.info.sample_rate),
                            reason: e.to_string(),
                        }))
                    }
                };
                let frames = decoded.frames();
                if frames == 0 {
                    return Ok(0);
                }
                let spec = *decoded.spec();
                if spec.rate != self.info.sample_rate {
                    return Err(DecodeFailure::Fatal(MediaError::Unsupported {
                        reason: format!(
                            "the sample rate changes mid-stream ({} Hz to {} Hz)",
                            self.info.sample_rate, spec.rate
                        ),
                    }));
                }
                if spec.channels.count() != self.info.channels as usize {
                    return Err(DecodeFailure::Fatal(MediaError::Unsupported {
                        reason: "the channel count changes mid-stream".to_string(),
                    }));
                }
                // The decoder knows the real layout (AAC's is only in its config); the
                // downmix follows the planes as the decoder orders them.
                if self.mix_layout != Some(spec.channels) {
                    self.mix = Mix::new(spec.channels.count(), Some(spec.channels));
                    self.mix_layout = Some(spec.channels);
                }
                let reuse = planar
                    .as_ref()
                    .is_some_and(|b| b.capacity() >= frames && *b.spec() == spec);
                if !reuse {
                    *planar = Some(decoded.make_equivalent::<f32>());
                }
                let Some(buf) = planar.as_mut() else {
                    return Ok(0);
                };
                convert_into(&decoded, buf);
                let (start, end) = {
                    let start = self.skip_frames.min(frames as u64);
                    self.skip_frames -= start;
                    let mut end = frames as u64;
                    if let Some(keep) = self.keep_frames {
                        end = end.min(start + keep.saturating_sub(self.frames_decoded));
                    }
                    (start as usize, end.max(start) as usize)
                };
                let planes: Vec<&[f32]> = (0..spec.channels.count())
                    .map(|c| &buf.chan(c)[start..end])
                    .collect();
                self.mix.apply(&planes, out);
                Ok(end - start)
            }
            Codec::Opus(state) => {
                let decoded = match &mut state.decoder {
                    OpusDecoder::Single(d) => d
                        .decode_float(packet.buf(), &mut state.pcm, ropus::DecodeMode::Normal)
                        .map_err(|e| format!("{e:?}")),
                    OpusDecoder::Multi(d, ints) => {
                        let len = i32::try_from(packet.buf().len()).unwrap_or(i32::MAX);
                        match d.decode24(
                            Some(packet.buf()),
                            len,
                            ints,
                            OPUS_MAX_FRAMES as i32,
                            false,
                        ) {
                            Ok(n) => {
                                let n = usize::try_from(n).unwrap_or(0).min(OPUS_MAX_FRAMES);
                                for (f, &i) in state
                                    .pcm
                                    .iter_mut()
                                    .zip(ints.iter())
                                    .take(n * state.channels)
                                {
                                    *f = i as f32 / 8_388_608.0;
                                }
                                Ok(n)
                            }
                            Err(code) => Err(format!("opus error {code}")),
                        }
                    }
                };
                let n = match decoded {
                    Ok(n) => n.min(OPUS_MAX_FRAMES),
                    Err(reason) => return Err(DecodeFailure::Skip(reason)),
                };
                let start = (packet.trim_start as usize).min(n);
                let end = n.saturating_sub(packet.trim_end as usize).max(start);
                let ch = state.channels;
                for (c, plane) in state.planes.iter_mut().enumerate() {
                    plane.clear();
                    plane.extend((start..end).map(|i| state.pcm[i * ch + c] * state.gain));
                }
                let planes: Vec<&[f32]> = state.planes.iter().map(Vec::as_slice).collect();
                self.mix.apply(&planes, out);
                Ok(end - start)
            }
        }
    }
}

fn convert_into(decoded: &AudioBufferRef<'_>, buf: &mut AudioBuffer<f32>) {
    decoded.convert(buf);
}

enum DecodeFailure {
    /// A bad packet: skip it, as players do, and count it.
    Skip(String),
    Fatal(MediaError),
}

pub(crate) fn frames_to_ms(frames: u64, rate: u32) -> u64 {
    if rate == 0 {
        return 0;
    }
    ((frames as u128 * 1000) / rate as u128) as u64
}

/// The header's frame count at the sample rate (MP4 counts in its track's timescale).
fn declared_frames(params: &CodecParameters, rate: u32) -> Option<u64> {
    let n = params.n_frames?;
    match params.time_base {
        Some(tb) if tb.denom != 0 && !(tb.numer == 1 && tb.denom == rate) => {
            let frames =
                u128::from(n) * u128::from(tb.numer) * u128::from(rate) / u128::from(tb.denom);
            u64::try_from(frames).ok()
        }
        _ => Some(n),
    }
}

/// Channel count from an AAC AudioSpecificConfig (ISO 14496-3 1.6.2.1), for MP4 files
/// whose sample entry leaves it out.
fn aac_config_channels(asc: Option<&[u8]>) -> Option<usize> {
    let asc = asc?;
    let bits = |start: usize, n: usize| -> Option<u32> {
        let mut v = 0u32;
        for i in start..start + n {
            let byte = *asc.get(i / 8)?;
            v = (v << 1) | u32::from((byte >> (7 - i % 8)) & 1);
        }
        Some(v)
    };
    let mut pos = 5;
    if bits(0, 5)? == 31 {
        pos += 6;
    }
    let freq_index = bits(pos, 4)?;
    pos += 4;
    if freq_index == 15 {
        pos += 24;
    }
    match bits(pos, 4)? {
        c @ 1..=6 => Some(c as usize),
        7 => Some(8),
        _ => None,
    }
}

/// Parses the OpusHead header (RFC 7845 section 5.1) and builds a decoder.
fn open_opus(params: &CodecParameters) -> Result<(OpusState, usize), MediaError> {
    let head = params.extra_data.as_deref().unwrap_or(&[]);
    if head.len() < 19 || !head.starts_with(b"OpusHead") {
        return Err(MediaError::NotAudio {
            reason: "the Opus stream has no valid OpusHead header".to_string(),
        });
    }
    let channels = head[9] as usize;
    let gain_q8 = i16::from_le_bytes([head[16], head[17]]);
    let family = head[18];
    let unsupported = || MediaError::Unsupported {
        reason: format!("Opus with {channels} channels in mapping family {family}"),
    };
    let decoder = match family {
        0 if channels == 1 || channels == 2 => {
            let layout = if channels == 1 {
                ropus::Channels::Mono
            } else {
                ropus::Channels::Stereo
            };
            OpusDecoder::Single(Box::new(
                ropus::Decoder::new(48_000, layout).map_err(|_| unsupported())?,
            ))
        }
        1 if (1..=8).contains(&channels) => {
            // RFC 7845 5.1.1: stream count, coupled count, then one mapping byte per channel.
            let table = head
                .get(19..21 + channels)
                .ok_or_else(|| MediaError::NotAudio {
                    reason: "the OpusHead channel mapping table is cut short".to_string(),
                })?;
            let (streams, coupled, mapping) =
                (i32::from(table[0]), i32::from(table[1]), &table[2..]);
            let d = ropus::OpusMSDecoder::new(48_000, channels as i32, streams, coupled, mapping)
                .map_err(|_| unsupported())?;
            OpusDecoder::Multi(Box::new(d), vec![0; OPUS_MAX_FRAMES * channels])
        }
        _ => return Err(unsupported()),
    };
    let gain = 10f32.powf(f32::from(gain_q8) / 256.0 / 20.0);
    Ok((
        OpusState {
            decoder,
            pcm: vec![0.0; OPUS_MAX_FRAMES * channels],
            planes: vec![Vec::with_capacity(OPUS_MAX_FRAMES); channels],
            channels,
            gain,
        },
        channels,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_one_downmix_uses_itu_coefficients() {
        let mix = Mix::new(6, None);
        let Mix::Matrix(g) = &mix else {
            panic!("expected a matrix")
        };
        let norm = 1.0 + 2.0 * MINUS_3DB;
        assert!((g[0].0 - 1.0 / norm).abs() < 1e-6);
        assert!(
            (g[2].0 - MINUS_3DB / norm).abs() < 1e-6 && (g[2].1 - MINUS_3DB / norm).abs() < 1e-6
        );
        assert_eq!(g[3], (0.0, 0.0));
        assert!((g[5].1 - MINUS_3DB / norm).abs() < 1e-6 && g[5].0 == 0.0);
        let mut out = vec![Vec::new(), Vec::new()];
        let ones = [1.0f32; 4];
        let planes: Vec<&[f32]> = (0..6).map(|_| &ones[..]).collect();
        mix.apply(&planes, &mut out);
        assert!((out[0][0] - 1.0).abs() < 1e-6 && (out[1][3] - 1.0).abs() < 1e-6);
    }

    #[test]
    fn aac_config_gives_the_channel_count() {
        // AAC-LC, 44.1 kHz (index 4), stereo: 00010 0100 0010 000
        assert_eq!(aac_config_channels(Some(&[0x12, 0x10])), Some(2));
        assert_eq!(aac_config_channels(Some(&[0x12, 0x08])), Some(1));
        assert_eq!(aac_config_channels(Some(&[0x12])), None);
        assert_eq!(aac_config_channels(None), None);
    }

    #[test]
    fn containers_are_named_from_bytes() {
        assert_eq!(container_name(b"fLaC\0\0\0\x22"), "FLAC");
        assert_eq!(container_name(b"\0\0\0\x20ftypM4A "), "MP4");
        assert_eq!(container_name(b"hello"), "audio");
    }
}
