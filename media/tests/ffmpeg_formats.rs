//! Compressed inputs made at test time with ffmpeg (and lame for CRC-protected MP3):
//! FLAC 16/24, MP3 CBR / VBR with Xing / CRC, AAC and ALAC in M4A, Ogg Vorbis, Opus, each
//! tagged; a truncated FLAC; multi-value tags written with lofty. Each test prints a
//! skip message and returns when ffmpeg is not on PATH (CI installs it).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use lofty::config::WriteOptions;
use lofty::file::AudioFile;
use lofty::prelude::{ItemKey, TagExt, TaggedFileExt};
use lofty::probe::Probe;
use lofty::tag::{ItemValue, Tag, TagItem, TagType};
use spindle_media::{Limits, MediaError};

const SECONDS: f64 = 4.0;

fn skip_without_ffmpeg(test: &str) -> bool {
    if have("ffmpeg") && have("ffprobe") {
        return false;
    }
    println!("SKIP {test}: ffmpeg/ffprobe not on PATH");
    true
}

/// A 4 s source WAV (24-bit so the FLAC 24 case has real low bits) on disk.
fn source_wav(rate: u32, channels: usize) -> PathBuf {
    let path = scratch(&format!("src-{rate}-{channels}.wav"));
    let frames = (SECONDS * f64::from(rate)) as usize;
    std::fs::write(
        &path,
        wav(&signal(rate, channels, frames), rate, WavSample::I24, false),
    )
    .unwrap();
    path
}

fn encode(src: &Path, ext: &str, codec_args: &[&str]) -> PathBuf {
    let out = scratch(&format!("enc.{ext}"));
    let mut args = vec!["-i", src.to_str().unwrap()];
    args.extend_from_slice(codec_args);
    args.extend_from_slice(&[
        "-metadata",
        "title=Thème d'amour",
        "-metadata",
        "artist=AC/DC Tribute Orchestra",
        "-metadata",
        "album=Canções",
        "-metadata",
        "genre=Folk, World & Country",
        "-metadata",
        "track=3/12",
        "-metadata",
        "date=2019",
    ]);
    args.push(out.to_str().unwrap());
    ffmpeg(&args);
    out
}

/// Transcodes `path` and checks codec, tags, tiers and duration. `priming_ms` is how
/// much longer than the source the decoded stream may be (codecs whose container does
/// not say how much encoder delay to drop).
fn check(path: &Path, codec: &str, channels: usize, priming_ms: f64) -> Output {
    let bytes = std::fs::read(path).unwrap();
    // A misleading name: the format must come from the bytes.
    let out = run(bytes, Some("upload.bin"), &Limits::default())
        .unwrap_or_else(|e| panic!("{codec}: {e}"));
    let r = &out.report;
    assert_eq!(r.stream.codec, codec);
    assert_eq!(r.channels_out as usize, channels);
    let secs = r.duration_ms as f64 / 1000.0;
    assert!(
        secs >= SECONDS - 0.03 && secs <= SECONDS + 0.03 + priming_ms / 1000.0,
        "{codec}: decoded {secs} s of a {SECONDS} s source"
    );
    let t = &r.tags;
    assert_eq!(t.title.as_deref(), Some("Thème d'amour"), "{codec}");
    assert_eq!(t.artists, ["AC/DC Tribute Orchestra"], "{codec}");
    assert_eq!(t.album.as_deref(), Some("Canções"), "{codec}");
    assert_eq!(t.genres, ["Folk, World & Country"], "{codec}");
    assert_eq!(t.track_number, Some(3), "{codec}");
    assert_eq!(t.year, Some(2019), "{codec}");
    check_tiers(
        &out,
        r.frames_in as f64 / f64::from(r.stream.sample_rate),
        channels,
    );
    out
}

#[test]
fn flac_16_and_24_bit_and_truncated() {
    if skip_without_ffmpeg("flac") {
        return;
    }
    let src = source_wav(44_100, 2);
    let f16 = encode(&src, "flac", &["-c:a", "flac", "-sample_fmt", "s16"]);
    check(&f16, "flac", 2, 0.0);
    let f24 = encode(&src, "flac", &["-c:a", "flac", "-sample_fmt", "s32"]);
    let out = check(&f24, "flac", 2, 0.0);
    assert_eq!(out.report.stream.bits_per_coded_sample, Some(24));

    // A FLAC with an ID3v2 tag in front (some taggers write one) and no Vorbis fields.
    let bare = scratch("bare.flac");
    ffmpeg(&[
        "-i",
        src.to_str().unwrap(),
        "-map_metadata",
        "-1",
        "-c:a",
        "flac",
        bare.to_str().unwrap(),
    ]);
    let mut id3 = Tag::new(TagType::Id3v2);
    id3.push(TagItem::new(
        ItemKey::TrackTitle,
        ItemValue::Text("From ID3".into()),
    ));
    id3.push(TagItem::new(
        ItemKey::TrackArtist,
        ItemValue::Text("Deep Path".into()),
    ));
    let mut bytes = Vec::new();
    id3.dump_to(&mut bytes, WriteOptions::default()).unwrap();
    assert!(bytes.starts_with(b"ID3"));
    bytes.extend(std::fs::read(&bare).unwrap());
    let out = run(bytes, None, &Limits::default()).unwrap();
    assert_eq!(out.report.stream.codec, "flac");
    assert_eq!(out.report.tags.title.as_deref(), Some("From ID3"));
    assert_eq!(out.report.tags.artists, ["Deep Path"]);
    assert_eq!(out.report.duration_ms, 4000);

    let mut cut = std::fs::read(&f16).unwrap();
    cut.truncate(cut.len() * 2 / 5);
    let e = run(cut, None, &Limits::default())
        .err()
        .expect("truncated FLAC is refused");
    assert!(
        matches!(e, MediaError::Truncated { format: "FLAC", .. }) && e.is_permanent(),
        "{e}"
    );
    assert!(
        e.to_string().starts_with("truncated FLAC stream at 1."),
        "{e}"
    );
}

#[test]
fn mp3_cbr_vbr_xing_and_crc() {
    if skip_without_ffmpeg("mp3") {
        return;
    }
    let src = source_wav(44_100, 2);
    // CBR, no Xing/LAME header, ID3v2.3 (UTF-16 text for the accents): without the
    // LAME header nothing says how much encoder delay to drop, as with any such file.
    let cbr = encode(
        &src,
        "mp3",
        &[
            "-c:a",
            "libmp3lame",
            "-b:a",
            "192k",
            "-write_xing",
            "0",
            "-id3v2_version",
            "3",
        ],
    );
    check(&cbr, "mp3", 2, 60.0);
    // VBR with a Xing/LAME header (gapless), ID3v2.4.
    let vbr = encode(
        &src,
        "mp3",
        &["-c:a", "libmp3lame", "-q:a", "2", "-id3v2_version", "4"],
    );
    check(&vbr, "mp3", 2, 0.0);

    // A VBR file cut short: its Xing header's frame count proves the truncation.
    let mut cut = std::fs::read(&vbr).unwrap();
    cut.truncate(cut.len() / 2);
    let e = run(cut, None, &Limits::default())
        .err()
        .expect("truncated MP3 is refused");
    assert!(
        matches!(e, MediaError::Truncated { format: "MP3", .. }) && e.is_permanent(),
        "{e}"
    );
    assert!(e.to_string().contains("(its header declares 4.0 s)"), "{e}");
    // Without a frame count, a cut CBR file is just shorter: nothing declares otherwise.
    let mut cut = std::fs::read(&cbr).unwrap();
    cut.truncate(cut.len() / 2);
    let out = run(cut, None, &Limits::default()).unwrap();
    assert!(out.report.duration_ms < 2_200, "{}", out.report.duration_ms);

    // ID3v2.4 with two artists in one TPE1 frame (NUL-separated), written by lofty.
    let bytes = std::fs::read(&vbr).unwrap();
    let mut tag = Tag::new(TagType::Id3v2);
    tag.push(TagItem::new(
        ItemKey::TrackArtist,
        ItemValue::Text("AC/DC Tribute Orchestra".into()),
    ));
    tag.push(TagItem::new(
        ItemKey::TrackArtist,
        ItemValue::Text("Северный Хор".into()),
    ));
    tag.push(TagItem::new(
        ItemKey::Genre,
        ItemValue::Text("Folk, World & Country".into()),
    ));
    tag.push(TagItem::new(
        ItemKey::Genre,
        ItemValue::Text("Choral".into()),
    ));
    let bytes = retag(bytes, tag);
    assert!(
        bytes.windows(2).any(|w| w == b"a\0"),
        "lofty wrote a NUL-separated frame"
    );
    let out = run(bytes, None, &Limits::default()).unwrap();
    assert_eq!(
        out.report.tags.artists,
        ["AC/DC Tribute Orchestra", "Северный Хор"]
    );
    assert_eq!(out.report.tags.genres, ["Folk, World & Country", "Choral"]);

    // ID3v2.2 (three-letter frame ids), made by hand in front of an untagged MP3.
    let bare = scratch("bare.mp3");
    ffmpeg(&[
        "-i",
        src.to_str().unwrap(),
        "-map_metadata",
        "-1",
        "-c:a",
        "libmp3lame",
        "-q:a",
        "4",
        "-write_id3v2",
        "0",
        bare.to_str().unwrap(),
    ]);
    let frame = |id: &[u8; 3], text: &str| {
        let mut body = vec![0u8]; // ISO-8859-1
        body.extend(text.bytes());
        let mut f = id.to_vec();
        f.extend(&(body.len() as u32).to_be_bytes()[1..]);
        f.extend(body);
        f
    };
    let frames = [
        frame(b"TT2", "Old Tag"),
        frame(b"TP1", "AC/DC Tribute Orchestra"),
        frame(b"TAL", "Tales"),
    ]
    .concat();
    let size = frames.len() as u32;
    let syncsafe = [
        (size >> 21) as u8 & 0x7F,
        (size >> 14) as u8 & 0x7F,
        (size >> 7) as u8 & 0x7F,
        size as u8 & 0x7F,
    ];
    let mut bytes = b"ID3\x02\x00\x00".to_vec();
    bytes.extend(syncsafe);
    bytes.extend(frames);
    bytes.extend(std::fs::read(&bare).unwrap());
    let out = run(bytes, None, &Limits::default()).unwrap();
    let t = &out.report.tags;
    assert_eq!(t.title.as_deref(), Some("Old Tag"));
    assert_eq!(t.artists, ["AC/DC Tribute Orchestra"]);
    assert_eq!(t.album.as_deref(), Some("Tales"));
    assert!((out.report.duration_ms as f64 - SECONDS * 1000.0).abs() <= 30.0);

    // ID3v1 only (Latin-1, fixed fields, no genre of that name in its table).
    let v1 = scratch("v1.mp3");
    ffmpeg(&[
        "-i",
        src.to_str().unwrap(),
        "-c:a",
        "libmp3lame",
        "-b:a",
        "128k",
        "-write_id3v2",
        "0",
        "-write_id3v1",
        "1",
        "-metadata",
        "title=Thème d'amour",
        "-metadata",
        "artist=AC/DC Tribute Orchestra",
        "-metadata",
        "album=Canções",
        "-metadata",
        "track=3",
        "-metadata",
        "date=2019",
        v1.to_str().unwrap(),
    ]);
    let out = run(std::fs::read(&v1).unwrap(), None, &Limits::default()).unwrap();
    let t = &out.report.tags;
    assert_eq!(t.title.as_deref(), Some("Thème d'amour"));
    assert_eq!(t.artists, ["AC/DC Tribute Orchestra"]);
    assert_eq!(t.album.as_deref(), Some("Canções"));
    assert_eq!((t.track_number, t.year), (Some(3), Some(2019)));

    if !have_lame() {
        println!("SKIP mp3 CRC: lame not on PATH");
        return;
    }
    let crc = scratch("crc.mp3");
    let status = Command::new("lame")
        .args([
            "--quiet",
            "-p",
            "-b",
            "128",
            "--tt",
            "Thème d'amour",
            "--ta",
            "AC/DC Tribute Orchestra",
        ])
        .args([
            "--tl",
            "Canções",
            "--tg",
            "Folk, World & Country",
            "--tn",
            "3/12",
            "--ty",
            "2019",
        ])
        .arg(&src)
        .arg(&crc)
        .status()
        .unwrap();
    assert!(status.success());
    let bytes = std::fs::read(&crc).unwrap();
    // The protection bit is 0 in a CRC-protected frame header (0xFFFA / 0xFFFB -> 0xFFFA).
    let first_frame = bytes
        .windows(2)
        .position(|w| w[0] == 0xFF && w[1] & 0xE0 == 0xE0)
        .unwrap();
    assert_eq!(
        bytes[first_frame + 1] & 1,
        0,
        "lame wrote CRC-protected frames"
    );
    check(&crc, "mp3", 2, 60.0);
}

fn have_lame() -> bool {
    Command::new("lame")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Replaces the primary tag of an in-memory file with `tag`.
fn retag(bytes: Vec<u8>, tag: Tag) -> Vec<u8> {
    let mut cursor = std::io::Cursor::new(bytes);
    let mut tagged = Probe::new(&mut cursor)
        .guess_file_type()
        .unwrap()
        .read()
        .unwrap();
    tagged.insert_tag(tag);
    cursor.set_position(0);
    tagged
        .save_to(&mut cursor, WriteOptions::default())
        .unwrap();
    cursor.into_inner()
}

#[test]
fn aac_and_alac_in_m4a() {
    if skip_without_ffmpeg("m4a") {
        return;
    }
    let src = source_wav(48_000, 2);
    let aac = encode(&src, "m4a", &["-c:a", "aac", "-b:a", "128k"]);
    // The MP4 edit list drops the 1024 frames of AAC priming.
    check(&aac, "aac", 2, 0.0);
    let alac = encode(&src, "m4a", &["-c:a", "alac"]);
    check(&alac, "alac", 2, 0.0);
}

#[test]
fn ogg_vorbis_and_opus_with_repeated_comments() {
    if skip_without_ffmpeg("ogg") {
        return;
    }
    let src = source_wav(44_100, 2);
    let ogg = encode(&src, "ogg", &["-c:a", "libvorbis", "-q:a", "4"]);
    check(&ogg, "vorbis", 2, 0.0);
    let mono = source_wav(48_000, 1);
    let opus = encode(&mono, "opus", &["-c:a", "libopus", "-b:a", "64k"]);
    check(&opus, "opus", 1, 0.0);
    let opus = encode(&src, "opus", &["-c:a", "libopus", "-b:a", "128k"]);
    check(&opus, "opus", 2, 0.0);
    // 5.1 Opus (mapping family 1, several streams) is downmixed to stereo.
    let surround = source_wav(48_000, 6);
    let opus = encode(&surround, "opus", &["-c:a", "libopus", "-b:a", "256k"]);
    let out = check(&opus, "opus", 2, 0.0);
    assert_eq!(out.report.stream.channels, 6);

    // Repeated ARTIST fields in a FLAC's Vorbis comments are several values.
    let flac = encode(&src, "flac", &["-c:a", "flac"]);
    let mut tag = Tag::new(TagType::VorbisComments);
    for a in ["Grey Harbor", "AC/DC Tribute Orchestra"] {
        tag.push(TagItem::new(
            ItemKey::TrackArtist,
            ItemValue::Text(a.into()),
        ));
    }
    tag.push(TagItem::new(
        ItemKey::TrackTitle,
        ItemValue::Text("Sad".into()),
    ));
    let out = run(
        retag(std::fs::read(&flac).unwrap(), tag),
        None,
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(
        out.report.tags.artists,
        ["Grey Harbor", "AC/DC Tribute Orchestra"]
    );
    assert_eq!(out.report.tags.title.as_deref(), Some("Sad"));
}

#[test]
fn tier_bitrates_match_ffmpeg_libvorbis_within_15_percent() {
    if skip_without_ffmpeg("bitrate") {
        return;
    }
    for (rate, channels) in [(44_100, 2), (48_000, 1)] {
        let src = source_wav(rate, channels);
        let out = run(std::fs::read(&src).unwrap(), None, &Limits::default()).unwrap();
        let secs = out.report.frames_out as f64 / 44_100.0;
        for (i, tier) in out.report.tiers.iter().enumerate() {
            let ours = out.tiers[i].len() as f64 * 8.0 / secs / 1000.0;
            let theirs = ffmpeg_vorbis_kbps(&src, tier.bitrate_target_kbps, channels);
            println!(
                "{rate} Hz x{channels} {}: ours {ours:.1} kbps, ffmpeg {theirs:.1} kbps",
                tier.tier.name()
            );
            assert!(
                (ours - theirs).abs() <= 0.15 * theirs,
                "{}: ours {ours:.1} vs ffmpeg {theirs:.1} kbps",
                tier.tier.name()
            );
        }
    }
}
