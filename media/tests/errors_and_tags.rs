//! Bad input fails with a permanent, readable error; the job bounds (duration, samples,
//! cancellation, deadline) and a failing sink fail as they should; tags split only on
//! real separators, the title falls back to the file name, the front cover wins.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Cursor, Write};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use lofty::config::WriteOptions;
use lofty::file::AudioFile;
use lofty::picture::{MimeType, Picture, PictureType};
use lofty::prelude::{ItemKey, TaggedFileExt};
use lofty::probe::Probe;
use lofty::tag::{ItemValue, Tag, TagItem, TagType};
use spindle_media::{probe, read_tags, Limits, MediaError, TierSinks};

fn small_wav() -> Vec<u8> {
    wav(&signal(44_100, 2, 44_100), 44_100, WavSample::I16, false)
}

fn fails(bytes: Vec<u8>, name: &str) -> MediaError {
    match run(bytes, Some(name), &Limits::default()) {
        Ok(_) => panic!("{name} was accepted"),
        Err(e) => {
            assert!(e.is_permanent(), "{name}: {e} should be permanent");
            e
        }
    }
}

#[test]
fn bad_inputs_fail_permanently_with_a_reason() {
    let e = fails(Vec::new(), "empty.mp3");
    assert_eq!(
        e.to_string(),
        "not an audio file: the file is empty (0 bytes)"
    );

    let mut seed = 99u64;
    let random: Vec<u8> = (0..65_536)
        .map(|_| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            (seed >> 56) as u8
        })
        .collect();
    let e = fails(random, "random.mp3");
    assert!(matches!(e, MediaError::NotAudio { .. }), "{e}");

    let e = fails(b"this is not audio, just text\n".to_vec(), "text.ogg");
    assert!(e.to_string().starts_with("not an audio file"), "{e}");

    // A WAV whose data chunk claims 4 GB, holding 1 KB.
    let mut lying = small_wav();
    lying.truncate(1068);
    let data_at = lying.windows(4).position(|w| w == b"data").unwrap();
    lying[data_at + 4..data_at + 8].copy_from_slice(&0xFFFF_0000u32.to_le_bytes());
    let e = fails(lying, "lying.wav");
    assert_eq!(
        e.to_string(),
        "WAV header claims 4.0 GB of audio but the file holds 1 KB"
    );

    // A WAV cut in the middle: the header's size is honest for the whole file only.
    let mut cut = small_wav();
    cut.truncate(cut.len() / 3);
    let e = fails(cut, "cut.wav");
    assert!(
        matches!(e, MediaError::HeaderLies { format: "WAV", .. }),
        "{e}"
    );

    // A RIFF header and nothing else.
    let e = fails(small_wav()[..20].to_vec(), "stub.wav");
    assert!(e.to_string().starts_with("not an audio file"), "{e}");
}

#[test]
fn job_bounds_and_controls() {
    let limits = Limits {
        max_duration_ms: 500,
        ..Limits::default()
    };
    let e = run(small_wav(), None, &limits).err().expect("too long");
    assert!(
        matches!(e, MediaError::TooLong { max_ms: 500, .. }) && e.is_permanent(),
        "{e}"
    );

    let limits = Limits {
        max_decoded_samples: 10_000,
        ..Limits::default()
    };
    let e = run(small_wav(), None, &limits)
        .err()
        .expect("too many samples");
    assert!(
        matches!(e, MediaError::TooManySamples { .. }) && e.is_permanent(),
        "{e}"
    );

    let limits = Limits {
        cancel: Some(Arc::new(AtomicBool::new(true))),
        ..Limits::default()
    };
    let e = run(small_wav(), None, &limits).err().expect("cancelled");
    assert!(
        matches!(e, MediaError::Cancelled) && !e.is_permanent(),
        "{e}"
    );

    let past = Instant::now()
        .checked_sub(Duration::from_millis(1))
        .unwrap();
    let limits = Limits {
        deadline: Some(past),
        ..Limits::default()
    };
    let e = run(small_wav(), None, &limits).err().expect("timed out");
    assert!(
        matches!(e, MediaError::TimedOut { .. }) && !e.is_permanent(),
        "{e}"
    );
}

struct FailingSink;
impl Write for FailingSink {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::Error::other("disk full"))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_failing_sink_is_a_transient_error_naming_the_tier() {
    let bytes = small_wav();
    let len = bytes.len() as u64;
    let (mut low, mut high) = (Vec::new(), Vec::new());
    let mut bad = FailingSink;
    let sinks = TierSinks {
        low: &mut low,
        normal: &mut bad,
        high: &mut high,
    };
    let e = spindle_media::transcode(
        Cursor::new(bytes),
        Some(len),
        None,
        sinks,
        &Limits::default(),
    )
    .expect_err("sink failure");
    assert!(
        matches!(e, MediaError::SinkIo { tier: "normal", .. }) && !e.is_permanent(),
        "{e}"
    );
    assert!(e.to_string().contains("disk full"), "{e}");
}

/// A source that panics once read past `at`: stands for a dependency that panics.
struct PanickingSource {
    inner: Cursor<Vec<u8>>,
    at: u64,
}

impl std::io::Read for PanickingSource {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        assert!(self.inner.position() < self.at, "simulated decoder bug");
        self.inner.read(buf)
    }
}

impl std::io::Seek for PanickingSource {
    fn seek(&mut self, pos: std::io::SeekFrom) -> std::io::Result<u64> {
        self.inner.seek(pos)
    }
}

#[test]
fn a_panic_while_decoding_fails_only_that_job() {
    let bytes = small_wav();
    let len = bytes.len() as u64;
    let source = PanickingSource {
        inner: Cursor::new(bytes),
        at: len / 2,
    };
    let (mut low, mut normal, mut high) = (Vec::new(), Vec::new(), Vec::new());
    let sinks = TierSinks {
        low: &mut low,
        normal: &mut normal,
        high: &mut high,
    };
    let e = spindle_media::transcode(source, Some(len), None, sinks, &Limits::default())
        .expect_err("panic caught");
    assert!(
        matches!(e, MediaError::Panicked { .. }) && e.is_permanent(),
        "{e}"
    );
    assert!(e.to_string().contains("simulated decoder bug"), "{e}");
    // The next job runs normally.
    run(small_wav(), None, &Limits::default()).unwrap();
}

/// Adds `tag` to a WAV file with lofty.
fn with_tag(wav_bytes: Vec<u8>, tag: Tag) -> Vec<u8> {
    let mut cursor = Cursor::new(wav_bytes);
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

fn text(key: ItemKey, v: &str) -> TagItem {
    TagItem::new(key, ItemValue::Text(v.to_string()))
}

const PNG: &[u8] =
    b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0\x1f\x15\xc4\x89";
const JPEG: &[u8] = b"\xff\xd8\xff\xe0\0\x10JFIF\0\x01\x01\0\0\x01\0\x01\0\0\xff\xd9";

#[test]
fn id3_in_wav_multi_values_slashes_commas_and_front_cover() {
    let mut tag = Tag::new(TagType::Id3v2);
    tag.push(text(ItemKey::TrackTitle, "Victory II"));
    tag.push(text(ItemKey::TrackArtist, "AC/DC Tribute Orchestra"));
    tag.push(text(ItemKey::TrackArtist, "Chloé Ibáñez"));
    tag.push(text(ItemKey::Genre, "Folk, World & Country"));
    tag.push(text(ItemKey::AlbumTitle, "Tales of the Frontier"));
    tag.push(text(ItemKey::AlbumArtist, "Various"));
    tag.push(text(ItemKey::TrackNumber, "3"));
    tag.push(text(ItemKey::TrackTotal, "12"));
    tag.push(text(ItemKey::DiscNumber, "2"));
    tag.push(text(ItemKey::RecordingDate, "2019-04-01"));
    // The back cover comes first; the front cover must still win.
    tag.push_picture(
        Picture::unchecked(PNG.to_vec())
            .pic_type(PictureType::CoverBack)
            .mime_type(MimeType::Png)
            .build(),
    );
    tag.push_picture(
        Picture::unchecked(JPEG.to_vec())
            .pic_type(PictureType::CoverFront)
            .mime_type(MimeType::Jpeg)
            .build(),
    );
    let bytes = with_tag(small_wav(), tag);

    let out = run(bytes.clone(), Some("fallback.wav"), &Limits::default()).unwrap();
    let t = &out.report.tags;
    assert_eq!(t.title.as_deref(), Some("Victory II"));
    assert_eq!(t.artists, ["AC/DC Tribute Orchestra", "Chloé Ibáñez"]);
    assert_eq!(t.genres, ["Folk, World & Country"]);
    assert_eq!(t.album.as_deref(), Some("Tales of the Frontier"));
    assert_eq!(t.album_artist.as_deref(), Some("Various"));
    assert_eq!(
        (t.track_number, t.track_total, t.disc_number),
        (Some(3), Some(12), Some(2))
    );
    assert_eq!(t.year, Some(2019));
    let cover = out.report.cover.as_ref().expect("cover");
    assert_eq!(
        (cover.mime.as_str(), cover.bytes.as_slice(), cover.is_front),
        ("image/jpeg", JPEG, true)
    );

    // probe() reads the same without decoding.
    let len = bytes.len() as u64;
    let p = probe(Cursor::new(bytes), Some(len), None).unwrap();
    assert_eq!(&p.tags, t);
    assert_eq!(p.stream.sample_rate, 44_100);
    assert_eq!(p.declared_duration_ms, Some(1000));
}

#[test]
fn id3_chunk_in_aiff() {
    let mut tag = Tag::new(TagType::Id3v2);
    tag.push(text(ItemKey::TrackTitle, "Underground"));
    tag.push(text(ItemKey::TrackArtist, "Deep Path"));
    tag.push(text(ItemKey::Genre, "Ambient"));
    let bytes = with_tag(aiff(&signal(48_000, 2, 48_000), 48_000), tag);
    let out = run(bytes, Some("x.aiff"), &Limits::default()).unwrap();
    let t = &out.report.tags;
    assert_eq!(t.title.as_deref(), Some("Underground"));
    assert_eq!(
        (t.artists.as_slice(), t.genres.as_slice()),
        (&["Deep Path".to_string()][..], &["Ambient".to_string()][..])
    );
    assert_eq!(out.report.duration_ms, 1000);
}

#[test]
fn riff_info_splits_on_semicolons_only() {
    let mut tag = Tag::new(TagType::RiffInfo);
    tag.push(text(ItemKey::TrackArtist, "Alpha; Beta/Gamma"));
    tag.push(text(ItemKey::Genre, "Folk, World & Country"));
    let bytes = with_tag(small_wav(), tag);
    let info = read_tags(&mut Cursor::new(bytes), Some("dir/Song Name.wav")).unwrap();
    assert_eq!(info.tags.artists, ["Alpha", "Beta/Gamma"]);
    assert_eq!(info.tags.genres, ["Folk, World & Country"]);
    assert_eq!(
        info.tags.title.as_deref(),
        Some("Song Name"),
        "title falls back to the file name"
    );
    assert!(info.cover.is_none());
}

#[test]
fn a_picture_that_is_not_the_front_cover_is_still_returned() {
    let mut tag = Tag::new(TagType::Id3v2);
    tag.push_picture(
        Picture::unchecked(PNG.to_vec())
            .pic_type(PictureType::Other)
            .mime_type(MimeType::Png)
            .build(),
    );
    let bytes = with_tag(small_wav(), tag);
    let info = read_tags(&mut Cursor::new(bytes), None).unwrap();
    let cover = info.cover.expect("cover");
    assert_eq!((cover.mime.as_str(), cover.is_front), ("image/png", false));
    assert_eq!(info.tags.title, None);
}
