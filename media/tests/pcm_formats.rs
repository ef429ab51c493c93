//! WAV (8/16/24/32-bit int, 32-bit float, WAVE_FORMAT_EXTENSIBLE, 5.1) and AIFF inputs
//! synthesized here, at 8 to 192 kHz: every tier is Vorbis, 44.1 kHz, the right channel
//! count and the source's duration within 50 ms.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use spindle_media::Limits;

fn case(name: &str, bytes: Vec<u8>, frames: usize, rate: u32, channels_out: usize) {
    let out = run(bytes, Some(name), &Limits::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
    let secs = frames as f64 / f64::from(rate);
    assert_eq!(out.report.frames_in, frames as u64, "{name}");
    assert_eq!(out.report.stream.sample_rate, rate);
    assert_eq!(out.report.channels_out as usize, channels_out);
    assert_eq!(
        out.report.duration_ms,
        (frames as u64 * 1000) / u64::from(rate)
    );
    let expected_out = (frames as f64 * 44_100.0 / f64::from(rate)).round() as u64;
    assert_eq!(out.report.frames_out, expected_out, "{name}: output frames");
    check_tiers(&out, secs, channels_out);
    // No tags: the title falls back to the file name without its extension.
    let stem = name.rsplit_once('.').map_or(name, |(s, _)| s);
    assert_eq!(out.report.tags.title.as_deref(), Some(stem));
    let l = out.report.loudness;
    let lufs = l.integrated_lufs.expect("loudness measured");
    assert!((-30.0..-5.0).contains(&lufs), "{name}: {lufs} LUFS");
    assert!(l.gain_db <= -1.0 - l.true_peak_dbtp.unwrap() + 1e-9);
}

#[test]
fn wav_sample_formats() {
    let rate = 44_100;
    let frames = 44_100 + 1234;
    let pcm = signal(rate, 2, frames);
    for (fmt, ext) in [
        (WavSample::U8, false),
        (WavSample::I16, false),
        (WavSample::I24, false),
        (WavSample::I32, false),
        (WavSample::F32, false),
        (WavSample::I24, true),
        (WavSample::F32, true),
    ] {
        let name = format!("wav-{fmt:?}-{}.wav", if ext { "ext" } else { "plain" });
        case(&name, wav(&pcm, rate, fmt, ext), frames, rate, 2);
    }
}

#[test]
fn sample_rates_resample_to_44k1() {
    for rate in [8_000u32, 48_000, 96_000, 192_000] {
        let frames = rate as usize + 777;
        let pcm = signal(rate, 2, frames);
        case(
            &format!("rate-{rate}.wav"),
            wav(&pcm, rate, WavSample::I16, false),
            frames,
            rate,
            2,
        );
    }
}

#[test]
fn mono_stays_mono_and_five_one_downmixes() {
    let rate = 48_000;
    let frames = 60_000;
    case(
        "mono.wav",
        wav(&signal(rate, 1, frames), rate, WavSample::I16, false),
        frames,
        rate,
        1,
    );
    case(
        "surround.wav",
        wav(&signal(rate, 6, frames), rate, WavSample::I24, true),
        frames,
        rate,
        2,
    );
}

#[test]
fn aiff_big_endian() {
    let rate = 44_100;
    let frames = 50_000;
    case(
        "song.aiff",
        aiff(&signal(rate, 2, frames), rate),
        frames,
        rate,
        2,
    );
}

#[test]
fn tiers_order_by_size_and_threads_do_not_change_output() {
    let rate = 44_100;
    let bytes = wav(&signal(rate, 2, 88_200), rate, WavSample::I16, false);
    let mut outputs = Vec::new();
    for threads in [1, 2, 3] {
        let limits = Limits {
            encoder_threads: threads,
            ..Limits::default()
        };
        outputs.push(run(bytes.clone(), Some("t.wav"), &limits).unwrap());
    }
    let sizes: Vec<u64> = outputs[0]
        .report
        .tiers
        .iter()
        .map(|t| t.bytes_written)
        .collect();
    assert!(sizes[0] < sizes[1] && sizes[1] < sizes[2], "{sizes:?}");
    for o in &outputs[1..] {
        assert_eq!(o.tiers, outputs[0].tiers, "thread count changed the bytes");
    }
}

/// A 16-bit stereo WAV generated as it is read: the test never holds the file.
struct LazyWav {
    header: Vec<u8>,
    frames: u64,
    pos: u64,
}

impl LazyWav {
    fn new(rate: u32, frames: u64) -> LazyWav {
        let data_len = frames * 4;
        let mut h = Vec::new();
        h.extend(b"RIFF");
        h.extend(((36 + data_len) as u32).to_le_bytes());
        h.extend(b"WAVEfmt ");
        h.extend(16u32.to_le_bytes());
        h.extend(1u16.to_le_bytes());
        h.extend(2u16.to_le_bytes());
        h.extend(rate.to_le_bytes());
        h.extend((rate * 4).to_le_bytes());
        h.extend(4u16.to_le_bytes());
        h.extend(16u16.to_le_bytes());
        h.extend(b"data");
        h.extend((data_len as u32).to_le_bytes());
        LazyWav {
            header: h,
            frames,
            pos: 0,
        }
    }

    fn len(&self) -> u64 {
        self.header.len() as u64 + self.frames * 4
    }

    fn byte_at(&self, at: u64) -> u8 {
        let h = self.header.len() as u64;
        if at < h {
            return self.header[at as usize];
        }
        let i = (at - h) / 4;
        let t = i as f64 / 44_100.0;
        let s = (0.3
            * (2.0 * std::f64::consts::PI * (220.0 + 30.0 * (t * 0.5).sin()) * t).sin()
            * 32767.0) as i16;
        s.to_le_bytes()[((at - h) % 2) as usize]
    }
}

impl std::io::Read for LazyWav {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.len().saturating_sub(self.pos)) as usize;
        for (k, b) in buf[..n].iter_mut().enumerate() {
            *b = self.byte_at(self.pos + k as u64);
        }
        self.pos += n as u64;
        Ok(n)
    }
}

impl std::io::Seek for LazyWav {
    fn seek(&mut self, pos: std::io::SeekFrom) -> std::io::Result<u64> {
        let len = self.len() as i64;
        let new = match pos {
            std::io::SeekFrom::Start(p) => p as i64,
            std::io::SeekFrom::End(d) => len + d,
            std::io::SeekFrom::Current(d) => self.pos as i64 + d,
        };
        self.pos = u64::try_from(new).map_err(|_| std::io::Error::other("seek before start"))?;
        Ok(self.pos)
    }
}

/// Counts what it is given and keeps nothing.
#[derive(Default)]
struct CountingSink(u64);

impl std::io::Write for CountingSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn peak_rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[test]
fn a_long_input_streams_in_bounded_memory() {
    // 150 s: decoded whole as f32 stereo it would be 53 MB, and the raw WAV 26 MB.
    let frames = 150 * 44_100u64;
    let source = LazyWav::new(44_100, frames);
    let len = source.len();
    let before = peak_rss_kb();
    let (mut low, mut normal, mut high) = (
        CountingSink::default(),
        CountingSink::default(),
        CountingSink::default(),
    );
    let sinks = spindle_media::TierSinks {
        low: &mut low,
        normal: &mut normal,
        high: &mut high,
    };
    let report =
        spindle_media::transcode(source, Some(len), None, sinks, &Limits::default()).unwrap();
    assert_eq!(report.frames_in, frames);
    assert_eq!(report.duration_ms, 150_000);
    println!("tier bytes: {} / {} / {}", low.0, normal.0, high.0);
    // A pure tone: VBR sizes need not follow the targets' order here (libvorbis's
    // 96 kbps mode spends more on it than its 160 kbps mode), so only presence is checked.
    assert!(low.0 > 0 && normal.0 > 0 && high.0 > 0);
    assert_eq!(report.tiers[2].bytes_written, high.0);
    if let (Some(before), Some(after)) = (before, peak_rss_kb()) {
        // Other tests in this binary run alongside; their fixtures are a few MB at most.
        let grown_mb = after.saturating_sub(before) / 1024;
        println!("peak RSS grew by {grown_mb} MB for a 150 s input");
        assert!(
            grown_mb < 24,
            "peak RSS grew by {grown_mb} MB: the stream is being held"
        );
    }
}
