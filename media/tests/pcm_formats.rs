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
