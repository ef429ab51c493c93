//! Tags and cover art, read with lofty without decoding any audio.
//!
//! Invariants:
//! - A value is split only on a real separator: a NUL byte (ID3v2.4 multi-value frames),
//!   a repeated field (Vorbis comments, MP4 atoms, several ID3 frames), and ";" only in
//!   formats that have no other way to hold several values (RIFF INFO, AIFF text chunks,
//!   ID3v1). A "/" or "," inside a value never splits it ("AC/DC Tribute Orchestra").
//! - Tags are best effort: a damaged or missing tag never fails the job (the audio
//!   decoder decides whether the file is usable), it only yields fewer fields.
//! - Memory is bounded by lofty's allocation limit; a tag's claimed size is never
//!   allocated on trust.

use std::io::{Read, Seek, SeekFrom};

use lofty::config::{ParseOptions, ParsingMode};
use lofty::picture::{MimeType, PictureType};
use lofty::prelude::{Accessor, ItemKey, TaggedFileExt};
use lofty::probe::Probe;
use lofty::tag::{Tag, TagType};

/// The descriptive tags of a track. Empty strings are never stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tags {
    pub title: Option<String>,
    pub artists: Vec<String>,
    pub album: Option<String>,
    pub album_artist: Option<String>,
    pub genres: Vec<String>,
    pub track_number: Option<u32>,
    pub track_total: Option<u32>,
    pub disc_number: Option<u32>,
    pub disc_total: Option<u32>,
    pub year: Option<u16>,
}

/// An embedded picture.
#[derive(Clone, PartialEq, Eq)]
pub struct Cover {
    /// "image/jpeg", "image/png", ...
    pub mime: String,
    pub bytes: Vec<u8>,
    /// True when the picture is marked as the front cover (ID3/FLAC picture type 3).
    pub is_front: bool,
}

impl std::fmt::Debug for Cover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cover")
            .field("mime", &self.mime)
            .field("bytes_len", &self.bytes.len())
            .field("is_front", &self.is_front)
            .finish()
    }
}

/// Tags and cover read from a file.
#[derive(Debug, Clone, Default)]
pub struct TagInfo {
    pub tags: Tags,
    pub cover: Option<Cover>,
}

/// Reads tags and the preferred cover from `reader` (positioned anywhere; it is rewound
/// first and left at an unspecified position). `file_name_hint` supplies the title when
/// the tags have none. I/O errors of the reader are returned; unparseable tags are not.
pub fn read_tags<R: Read + Seek>(
    reader: &mut R,
    file_name_hint: Option<&str>,
) -> std::io::Result<TagInfo> {
    reader.seek(SeekFrom::Start(0))?;
    let options = ParseOptions::new()
        .read_properties(false)
        .read_cover_art(true)
        .parsing_mode(ParsingMode::BestAttempt);
    let mut info = TagInfo::default();
    let tagged = Probe::new(&mut *reader)
        .options(options)
        .guess_file_type()
        .ok()
        .and_then(|probe| probe.read().ok());
    if let Some(tagged) = tagged {
        // The primary tag first (Vorbis comments in FLAC, ID3v2 in MP3), then the others
        // fill what it lacks.
        let primary = tagged.primary_tag().map(Tag::tag_type);
        let mut ordered: Vec<&Tag> = tagged.tags().iter().collect();
        ordered.sort_by_key(|t| Some(t.tag_type()) != primary);
        for tag in &ordered {
            merge(&mut info.tags, tag);
        }
        info.cover = pick_cover(&ordered);
    }
    if info.tags.title.is_none() {
        info.tags.title = file_name_hint.and_then(title_from_file_name);
    }
    Ok(info)
}

/// "uploads/01 - Song.flac" -> "01 - Song".
pub fn title_from_file_name(name: &str) -> Option<String> {
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
    let stem = match base.rfind('.') {
        Some(i) if i > 0 => &base[..i],
        _ => base,
    };
    let stem = stem.trim();
    (!stem.is_empty()).then(|| stem.to_string())
}

fn splits_on_semicolon(tag_type: TagType) -> bool {
    matches!(
        tag_type,
        TagType::RiffInfo | TagType::AiffText | TagType::Id3v1
    )
}

/// Every value of `keys` in `tag`, split on real separators only, trimmed, deduplicated.
fn values(tag: &Tag, keys: &[ItemKey]) -> Vec<String> {
    let semicolon = splits_on_semicolon(tag.tag_type());
    let mut out: Vec<String> = Vec::new();
    for key in keys {
        for raw in tag.get_strings(*key) {
            for part in raw.split('\0') {
                let pieces: Vec<&str> = if semicolon {
                    part.split(';').collect()
                } else {
                    vec![part]
                };
                for piece in pieces {
                    let piece = piece.trim();
                    if !piece.is_empty() && !out.iter().any(|v| v == piece) {
                        out.push(piece.to_string());
                    }
                }
            }
        }
    }
    out
}

fn first(tag: &Tag, key: ItemKey) -> Option<String> {
    values(tag, &[key]).into_iter().next()
}

fn merge(tags: &mut Tags, tag: &Tag) {
    if tags.title.is_none() {
        tags.title = first(tag, ItemKey::TrackTitle);
    }
    if tags.artists.is_empty() {
        tags.artists = values(tag, &[ItemKey::TrackArtist, ItemKey::TrackArtists]);
    }
    if tags.album.is_none() {
        tags.album = first(tag, ItemKey::AlbumTitle);
    }
    if tags.album_artist.is_none() {
        tags.album_artist = first(tag, ItemKey::AlbumArtist);
    }
    if tags.genres.is_empty() {
        tags.genres = values(tag, &[ItemKey::Genre]);
    }
    if tags.track_number.is_none() {
        tags.track_number = tag.track().filter(|&n| n > 0);
    }
    if tags.track_total.is_none() {
        tags.track_total = tag.track_total().filter(|&n| n > 0);
    }
    if tags.disc_number.is_none() {
        tags.disc_number = tag.disk().filter(|&n| n > 0);
    }
    if tags.disc_total.is_none() {
        tags.disc_total = tag.disk_total().filter(|&n| n > 0);
    }
    if tags.year.is_none() {
        tags.year = tag.date().map(|d| d.year).filter(|&y| y > 0).or_else(|| {
            [ItemKey::Year, ItemKey::RecordingDate, ItemKey::ReleaseDate]
                .into_iter()
                .find_map(|k| tag.get_string(k).and_then(leading_year))
        });
    }
}

/// "2019-04-01" or "2019" -> 2019.
fn leading_year(s: &str) -> Option<u16> {
    let digits: String = s.trim().chars().take_while(char::is_ascii_digit).collect();
    if digits.len() == 4 {
        digits.parse().ok().filter(|&y| y > 0)
    } else {
        None
    }
}

/// The front cover if any tag has one, otherwise the first picture.
fn pick_cover(tags: &[&Tag]) -> Option<Cover> {
    let pictures = || {
        tags.iter()
            .flat_map(|t| t.pictures().iter())
            .filter(|p| !p.data().is_empty())
    };
    let chosen = pictures()
        .find(|p| p.pic_type() == PictureType::CoverFront)
        .or_else(|| pictures().next())?;
    let bytes = chosen.data().to_vec();
    let mime = match chosen.mime_type() {
        Some(MimeType::Unknown(s)) if !s.is_empty() => s.clone(),
        Some(MimeType::Unknown(_)) | None => sniff_image_mime(&bytes).to_string(),
        Some(m) => m.as_str().to_string(),
    };
    Some(Cover {
        mime,
        bytes,
        is_front: chosen.pic_type() == PictureType::CoverFront,
    })
}

fn sniff_image_mime(bytes: &[u8]) -> &'static str {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        "image/jpeg"
    } else if bytes.starts_with(b"\x89PNG") {
        "image/png"
    } else if bytes.starts_with(b"GIF8") {
        "image/gif"
    } else {
        "application/octet-stream"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn title_from_names() {
        assert_eq!(
            title_from_file_name("a/b/01 - Song.flac").as_deref(),
            Some("01 - Song")
        );
        assert_eq!(title_from_file_name("Song").as_deref(), Some("Song"));
        assert_eq!(title_from_file_name(".hidden").as_deref(), Some(".hidden"));
        assert_eq!(title_from_file_name("dir/").as_deref(), None);
        assert_eq!(leading_year("2019-04-01"), Some(2019));
        assert_eq!(leading_year("19"), None);
    }
}
