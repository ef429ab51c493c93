//! The shared corpus, when present (`../shared/corpus` beside the workspace): every good
//! file transcodes with the manifest's tags, duration (within 0.1 s) and channel count;
//! every bad file fails with a permanent error and a reason. Skips, saying so, when the
//! corpus is absent (a fresh clone does not have it).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs::File;
use std::path::PathBuf;

use common::*;
use serde_json::Value;
use spindle_media::{transcode, Limits, TierSinks};

fn corpus() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus");
    if dir.join("manifest.json").is_file() {
        Some(dir)
    } else {
        println!("SKIP corpus tests: {} not found", dir.display());
        None
    }
}

fn manifest(dir: &std::path::Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap()
}

fn run_file(path: &std::path::Path) -> Result<Output, spindle_media::MediaError> {
    let file = File::open(path).unwrap();
    let len = file.metadata().unwrap().len();
    let (mut low, mut normal, mut high) = (Vec::new(), Vec::new(), Vec::new());
    let sinks = TierSinks {
        low: &mut low,
        normal: &mut normal,
        high: &mut high,
    };
    let report = transcode(
        file,
        Some(len),
        path.file_name().and_then(|n| n.to_str()),
        sinks,
        &Limits::default(),
    )?;
    Ok(Output {
        report,
        tiers: [low, normal, high],
    })
}

#[test]
fn good_files_transcode_with_the_manifest_values() {
    let Some(dir) = corpus() else { return };
    let m = manifest(&dir);
    for entry in m["good"].as_array().unwrap() {
        let name = entry["file"].as_str().unwrap();
        let path = dir.join(name);
        let out = run_file(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        let r = &out.report;
        let secs = r.duration_ms as f64 / 1000.0;
        let expected_s = entry["duration_s"].as_f64().unwrap();
        println!(
            "{name}: {} {} Hz x{} {secs:.3} s (manifest {expected_s}), {:?} LUFS, gain {:.1} dB, tiers {:.0}/{:.0}/{:.0} kbps",
            r.stream.codec,
            r.stream.sample_rate,
            r.stream.channels,
            r.loudness.integrated_lufs,
            r.loudness.gain_db,
            r.tiers[0].avg_bitrate_kbps,
            r.tiers[1].avg_bitrate_kbps,
            r.tiers[2].avg_bitrate_kbps
        );
        assert!(
            (secs - expected_s).abs() <= 0.1,
            "{name}: {secs} s vs {expected_s} s"
        );
        let channels = entry["channels"].as_u64().unwrap() as usize;
        assert_eq!(r.stream.channels as usize, channels, "{name}");
        assert_eq!(r.channels_out as usize, channels.min(2), "{name}");
        assert_eq!(
            u64::from(r.stream.sample_rate),
            entry["sample_rate"].as_u64().unwrap(),
            "{name}"
        );
        let t = &r.tags;
        let stem = std::path::Path::new(name)
            .file_stem()
            .unwrap()
            .to_str()
            .unwrap();
        assert_eq!(
            t.title.as_deref(),
            Some(entry["title"].as_str().unwrap_or(stem)),
            "{name} title"
        );
        match entry["artist"].as_str() {
            Some(a) => assert_eq!(t.artists, [a], "{name} artists"),
            None => assert!(t.artists.is_empty(), "{name} artists"),
        }
        assert_eq!(t.album.as_deref(), entry["album"].as_str(), "{name} album");
        match entry["genre"].as_str() {
            Some(g) => assert_eq!(t.genres, [g], "{name} genres"),
            None => assert!(t.genres.is_empty(), "{name} genres"),
        }
        assert_eq!(
            r.cover.is_some(),
            entry["has_cover"].as_bool().unwrap(),
            "{name} cover"
        );
        check_tiers(
            &out,
            r.frames_in as f64 / f64::from(r.stream.sample_rate),
            channels.min(2),
        );
        if name.ends_with("02-elvish-theme.mp3") {
            // ffmpeg's libvorbis reaches 93, 155 and 255 kbps on this file (BENCHMARKING.md).
            for (tier, reference) in r.tiers.iter().zip([93.0, 155.0, 255.0]) {
                let kbps = tier.avg_bitrate_kbps;
                assert!(
                    (kbps - reference).abs() <= 0.15 * reference,
                    "{}: {kbps} vs {reference}",
                    tier.tier.name()
                );
            }
        }
    }
}

#[test]
fn bad_files_fail_with_a_reason() {
    let Some(dir) = corpus() else { return };
    let m = manifest(&dir);
    for entry in m["bad"].as_array().unwrap() {
        let name = entry["file"].as_str().unwrap();
        let e = run_file(&dir.join(name))
            .err()
            .unwrap_or_else(|| panic!("{name} was accepted"));
        println!("{name}: {e}");
        assert!(e.is_permanent(), "{name}: {e}");
        let reason = e.to_string();
        assert!(reason.len() > 15, "{name}: {reason}");
    }
    let reason = |name: &str| run_file(&dir.join(name)).err().unwrap().to_string();
    assert_eq!(
        reason("bad/empty.mp3"),
        "not an audio file: the file is empty (0 bytes)"
    );
    assert!(reason("bad/text.ogg").starts_with("not an audio file"));
    assert!(reason("bad/random-bytes.mp3").starts_with("not an audio file"));
    assert!(reason("bad/truncated.flac").starts_with("truncated FLAC stream at "));
    assert!(
        reason("bad/lying-header.wav")
            .starts_with("WAV header claims 4.0 GB of audio but the file holds 1 KB"),
        "{}",
        reason("bad/lying-header.wav")
    );
}
