//! Shared helpers for the media tests: synthesized PCM, WAV/AIFF writers, running a
//! transcode into memory, and checking a tier with our own decoder and with ffprobe.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use spindle_media::{transcode, Limits, MediaError, TierSinks, TranscodeReport};
use symphonia::core::codecs::{DecoderOptions, CODEC_TYPE_VORBIS};
use symphonia::core::formats::FormatOptions;
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

/// A music-like test signal: a chirp plus two partials and a little noise, different in
/// each channel, at -6 dBFS or so; `frames` long at `rate`.
pub fn signal(rate: u32, channels: usize, frames: usize) -> Vec<Vec<f64>> {
    let nyquist = f64::from(rate) / 2.0;
    let mut seed = 0x1234_5678_u64;
    (0..channels)
        .map(|c| {
            let mut phase = 0.0f64;
            (0..frames)
                .map(|i| {
                    let t = i as f64 / f64::from(rate);
                    let f =
                        (220.0 * (1.0 + t).powf(1.5) * (1.0 + c as f64 * 0.1)).min(nyquist * 0.8);
                    phase += 2.0 * std::f64::consts::PI * f / f64::from(rate);
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let noise = ((seed >> 33) as f64 / (1u64 << 31) as f64 - 0.5) * 0.02;
                    0.3 * phase.sin()
                        + 0.1 * (phase * 2.0).sin()
                        + 0.05 * (phase * 3.01).sin()
                        + noise
                })
                .collect()
        })
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum WavSample {
    U8,
    I16,
    I24,
    I32,
    F32,
}

impl WavSample {
    fn bits(self) -> u16 {
        match self {
            WavSample::U8 => 8,
            WavSample::I16 => 16,
            WavSample::I24 => 24,
            WavSample::I32 => 32,
            WavSample::F32 => 32,
        }
    }
}

fn push_sample(out: &mut Vec<u8>, s: f64, fmt: WavSample, big_endian: bool) {
    let s = s.clamp(-1.0, 1.0);
    let bytes: Vec<u8> = match fmt {
        WavSample::U8 => vec![((s * 127.0).round() as i32 + 128) as u8],
        WavSample::I16 => ((s * 32767.0).round() as i16).to_le_bytes().to_vec(),
        WavSample::I24 => ((s * 8_388_607.0).round() as i32).to_le_bytes()[..3].to_vec(),
        WavSample::I32 => ((s * 2_147_483_647.0).round() as i32)
            .to_le_bytes()
            .to_vec(),
        WavSample::F32 => (s as f32).to_le_bytes().to_vec(),
    };
    if big_endian {
        out.extend(bytes.iter().rev());
    } else {
        out.extend(bytes);
    }
}

/// A WAV file; `extensible` writes WAVE_FORMAT_EXTENSIBLE with the standard channel mask.
pub fn wav(pcm: &[Vec<f64>], rate: u32, fmt: WavSample, extensible: bool) -> Vec<u8> {
    let channels = pcm.len() as u16;
    let frames = pcm[0].len();
    let bits = fmt.bits();
    let block_align = channels * bits / 8;
    let mut data = Vec::with_capacity(frames * block_align as usize);
    for i in 0..frames {
        for ch in pcm {
            push_sample(&mut data, ch[i], fmt, false);
        }
    }
    let format_tag: u16 = if fmt == WavSample::F32 { 3 } else { 1 };
    let mut fmt_chunk = Vec::new();
    fmt_chunk.extend((if extensible { 0xFFFEu16 } else { format_tag }).to_le_bytes());
    fmt_chunk.extend(channels.to_le_bytes());
    fmt_chunk.extend(rate.to_le_bytes());
    fmt_chunk.extend((rate * u32::from(block_align)).to_le_bytes());
    fmt_chunk.extend(block_align.to_le_bytes());
    fmt_chunk.extend(bits.to_le_bytes());
    if extensible {
        let mask: u32 = match channels {
            1 => 0x4,
            2 => 0x3,
            6 => 0x3F,
            n => (1u32 << n) - 1,
        };
        fmt_chunk.extend(22u16.to_le_bytes());
        fmt_chunk.extend(bits.to_le_bytes());
        fmt_chunk.extend(mask.to_le_bytes());
        fmt_chunk.extend(u32::from(format_tag).to_le_bytes());
        fmt_chunk.extend([
            0x00, 0x00, 0x10, 0x00, 0x80, 0x00, 0x00, 0xAA, 0x00, 0x38, 0x9B, 0x71,
        ]);
    }
    let mut out = Vec::new();
    out.extend(b"RIFF");
    out.extend(((4 + 8 + fmt_chunk.len() + 8 + data.len()) as u32).to_le_bytes());
    out.extend(b"WAVE");
    out.extend(b"fmt ");
    out.extend((fmt_chunk.len() as u32).to_le_bytes());
    out.extend(&fmt_chunk);
    out.extend(b"data");
    out.extend((data.len() as u32).to_le_bytes());
    out.extend(&data);
    out
}

/// An 80-bit IEEE 754 extended float, as AIFF stores its sample rate.
fn extended(v: f64) -> [u8; 10] {
    let mut out = [0u8; 10];
    if v <= 0.0 {
        return out;
    }
    let exp = v.log2().floor() as i32;
    let mantissa = (v / 2f64.powi(exp) * (1u64 << 63) as f64) as u64;
    out[..2].copy_from_slice(&((exp + 16383) as u16).to_be_bytes());
    out[2..].copy_from_slice(&mantissa.to_be_bytes());
    out
}

/// A 16-bit big-endian AIFF file.
pub fn aiff(pcm: &[Vec<f64>], rate: u32) -> Vec<u8> {
    let channels = pcm.len() as u16;
    let frames = pcm[0].len();
    let mut data = Vec::new();
    for i in 0..frames {
        for ch in pcm {
            push_sample(&mut data, ch[i], WavSample::I16, true);
        }
    }
    let mut comm = Vec::new();
    comm.extend(channels.to_be_bytes());
    comm.extend((frames as u32).to_be_bytes());
    comm.extend(16u16.to_be_bytes());
    comm.extend(extended(f64::from(rate)));
    let mut out = Vec::new();
    out.extend(b"FORM");
    out.extend(((4 + 8 + comm.len() + 8 + 8 + data.len()) as u32).to_be_bytes());
    out.extend(b"AIFF");
    out.extend(b"COMM");
    out.extend((comm.len() as u32).to_be_bytes());
    out.extend(&comm);
    out.extend(b"SSND");
    out.extend(((8 + data.len()) as u32).to_be_bytes());
    out.extend([0u8; 8]);
    out.extend(&data);
    out
}

/// The three tiers of a finished transcode, in memory.
pub struct Output {
    pub report: TranscodeReport,
    pub tiers: [Vec<u8>; 3],
}

pub fn run(bytes: Vec<u8>, name: Option<&str>, limits: &Limits) -> Result<Output, MediaError> {
    let len = bytes.len() as u64;
    let (mut low, mut normal, mut high) = (Vec::new(), Vec::new(), Vec::new());
    let sinks = TierSinks {
        low: &mut low,
        normal: &mut normal,
        high: &mut high,
    };
    let report = transcode(Cursor::new(bytes), Some(len), name, sinks, limits)?;
    Ok(Output {
        report,
        tiers: [low, normal, high],
    })
}

/// What our own decoder finds in an Ogg Vorbis tier.
#[derive(Debug)]
pub struct Decoded {
    pub rate: u32,
    pub channels: usize,
    pub frames: u64,
}

pub fn decode_tier(ogg: &[u8]) -> Decoded {
    let mss = MediaSourceStream::new(Box::new(Cursor::new(ogg.to_vec())), Default::default());
    let fmt_opts = FormatOptions {
        enable_gapless: true,
        ..Default::default()
    };
    let probed = symphonia::default::get_probe()
        .format(&Hint::new(), mss, &fmt_opts, &MetadataOptions::default())
        .expect("tier is a readable Ogg stream");
    let mut format = probed.format;
    let track = format.default_track().expect("a track").clone();
    assert_eq!(
        track.codec_params.codec, CODEC_TYPE_VORBIS,
        "tier codec is Vorbis"
    );
    let mut decoder = symphonia::default::get_codecs()
        .make(&track.codec_params, &DecoderOptions::default())
        .expect("decoder");
    let mut frames = 0u64;
    let mut spec = None;
    loop {
        let packet = match format.next_packet() {
            Ok(p) => p,
            Err(symphonia::core::errors::Error::IoError(e))
                if e.kind() == std::io::ErrorKind::UnexpectedEof =>
            {
                break
            }
            Err(e) => panic!("tier demux error: {e}"),
        };
        let buf = decoder.decode(&packet).expect("tier packet decodes");
        spec = Some(*buf.spec());
        frames += buf.frames() as u64;
    }
    let spec = spec.expect("tier has audio");
    Decoded {
        rate: spec.rate,
        channels: spec.channels.count(),
        frames,
    }
}

pub fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("-version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A fresh scratch path under the system temp dir (removed by the caller or left to the OS).
pub fn scratch(name: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!("spindle-media-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join(format!("{}-{name}", N.fetch_add(1, Ordering::Relaxed)))
}

/// ffprobe's view of a file: (codec, rate, channels, duration_s).
pub fn ffprobe(path: &Path) -> (String, u32, usize, f64) {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=codec_name,sample_rate,channels:format=duration",
            "-of",
            "default=nw=1",
        ])
        .arg(path)
        .output()
        .expect("ffprobe runs");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("ffprobe lacks {k}: {text}"))
            .to_string()
    };
    (
        field("codec_name"),
        field("sample_rate").parse().unwrap(),
        field("channels").parse().unwrap(),
        field("duration").parse().unwrap(),
    )
}

/// `ffmpeg -v error -i tier -f null -` must print nothing.
pub fn ffmpeg_decodes_cleanly(path: &Path) {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-f", "null", "-"])
        .output()
        .expect("ffmpeg runs");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "ffmpeg errors on {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Checks every tier: Vorbis, 44.1 kHz, the expected channels, the source's duration
/// within 50 ms by our decoder and (when present) by ffprobe and ffmpeg.
pub fn check_tiers(out: &Output, source_duration_s: f64, channels: usize) {
    for (i, tier) in out.tiers.iter().enumerate() {
        assert!(!tier.is_empty(), "tier {i} empty");
        assert_eq!(out.report.tiers[i].bytes_written, tier.len() as u64);
        let d = decode_tier(tier);
        assert_eq!(d.rate, 44_100, "tier {i} rate");
        assert_eq!(d.channels, channels, "tier {i} channels");
        let secs = d.frames as f64 / 44_100.0;
        assert!(
            (secs - source_duration_s).abs() <= 0.05,
            "tier {i}: {secs} s decoded vs {source_duration_s} s source"
        );
        if have("ffprobe") {
            let path = scratch(&format!("tier{i}.ogg"));
            std::fs::write(&path, tier).unwrap();
            let (codec, rate, ch, dur) = ffprobe(&path);
            assert_eq!((codec.as_str(), rate, ch), ("vorbis", 44_100, channels));
            assert!(
                (dur - source_duration_s).abs() <= 0.05,
                "ffprobe: tier {i} {dur} s vs {source_duration_s} s"
            );
            ffmpeg_decodes_cleanly(&path);
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Runs ffmpeg with `args` (after `-v error -y`), panicking with its stderr on failure.
pub fn ffmpeg(args: &[&str]) {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-y"])
        .args(args)
        .output()
        .expect("ffmpeg runs");
    assert!(
        out.status.success(),
        "ffmpeg {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The average bitrate ffmpeg's libvorbis reaches on `source` at `kbps`, in kbps.
pub fn ffmpeg_vorbis_kbps(source: &Path, kbps: u32, channels: usize) -> f64 {
    let out = scratch("ref.ogg");
    let b = format!("{kbps}k");
    let ch = channels.to_string();
    ffmpeg(&[
        "-i",
        source.to_str().unwrap(),
        "-vn",
        "-ac",
        &ch,
        "-ar",
        "44100",
        "-c:a",
        "libvorbis",
        "-b:a",
        &b,
        out.to_str().unwrap(),
    ]);
    let (_, _, _, dur) = ffprobe(&out);
    let bytes = std::fs::metadata(&out).unwrap().len();
    let _ = std::fs::remove_file(&out);
    bytes as f64 * 8.0 / dur / 1000.0
}
