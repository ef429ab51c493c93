//! The MP4 edit list of the audio track, which symphonia 0.5 parses but does not apply:
//! it says how many frames of encoder priming to drop at the start (1024 for ffmpeg's
//! AAC, 2112 for Apple's) and how long the presented audio is.
//!
//! Invariant: only atom headers and a few small leaf atoms are read, by seeking; no
//! size taken from the file is ever allocated (leaf reads are capped at 4 KB).

use std::io::{Read, Seek, SeekFrom};

/// Priming and presented length of the first audio track, in that track's sample units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AudioEdit {
    /// Frames to drop at the start, in the media (mdhd) timescale.
    pub media_time: u64,
    /// The presented duration, in the movie (mvhd) timescale.
    pub segment_duration: u64,
    pub movie_timescale: u32,
    pub media_timescale: u32,
}

impl AudioEdit {
    /// (frames to skip, frames to keep at most), at `rate`.
    pub(crate) fn frames_at(&self, rate: u32) -> (u64, Option<u64>) {
        let scale =
            |v: u64, from: u32| (u128::from(v) * u128::from(rate) / u128::from(from.max(1))) as u64;
        let skip = scale(self.media_time, self.media_timescale);
        let keep =
            (self.segment_duration > 0).then(|| scale(self.segment_duration, self.movie_timescale));
        (skip, keep)
    }
}

const MAX_ATOMS_PER_LEVEL: usize = 4096;
const LEAF_BYTES_MAX: u64 = 4096;

struct Atom {
    kind: [u8; 4],
    body_start: u64,
    body_end: u64,
}

fn read_atom<R: Read + Seek>(r: &mut R, pos: u64, end: u64) -> std::io::Result<Option<Atom>> {
    if pos + 8 > end {
        return Ok(None);
    }
    r.seek(SeekFrom::Start(pos))?;
    let mut h = [0u8; 8];
    r.read_exact(&mut h)?;
    let size32 = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
    let kind = [h[4], h[5], h[6], h[7]];
    let (size, header) = match size32 {
        0 => (end - pos, 8),
        1 => {
            let mut l = [0u8; 8];
            r.read_exact(&mut l)?;
            (u64::from_be_bytes(l), 16)
        }
        n => (u64::from(n), 8),
    };
    if size < header || pos + size > end {
        return Ok(None);
    }
    Ok(Some(Atom {
        kind,
        body_start: pos + header,
        body_end: pos + size,
    }))
}

fn children<R: Read + Seek>(r: &mut R, start: u64, end: u64) -> std::io::Result<Vec<Atom>> {
    let mut out = Vec::new();
    let mut pos = start;
    while out.len() < MAX_ATOMS_PER_LEVEL {
        let Some(a) = read_atom(r, pos, end)? else {
            break;
        };
        pos = a.body_end;
        out.push(a);
    }
    Ok(out)
}

fn leaf<R: Read + Seek>(r: &mut R, a: &Atom) -> std::io::Result<Vec<u8>> {
    r.seek(SeekFrom::Start(a.body_start))?;
    let mut buf = Vec::new();
    r.take((a.body_end - a.body_start).min(LEAF_BYTES_MAX))
        .read_to_end(&mut buf)?;
    Ok(buf)
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn be64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Timescale from an mvhd or mdhd body (version 0: at 12, version 1: at 20).
fn timescale(body: &[u8]) -> Option<u32> {
    match body.first()? {
        0 => be32(body, 12),
        1 => be32(body, 20),
        _ => None,
    }
}

/// The first edit that presents media (media_time >= 0): (segment_duration, media_time).
fn first_edit(body: &[u8]) -> Option<(u64, u64)> {
    let version = *body.first()?;
    let count = be32(body, 4)? as usize;
    let entry_len = if version == 1 { 20 } else { 12 };
    for i in 0..count.min(64) {
        let at = 8 + i * entry_len;
        let (duration, media_time) = if version == 1 {
            (be64(body, at)?, be64(body, at + 8)? as i64)
        } else {
            (
                u64::from(be32(body, at)?),
                i64::from(be32(body, at + 4)? as i32),
            )
        };
        if media_time >= 0 {
            return Some((duration, media_time as u64));
        }
    }
    None
}

/// Reads the first sound track's edit, if the file is MP4 and has one.
pub(crate) fn audio_edit<R: Read + Seek>(
    r: &mut R,
    len_bytes: u64,
) -> std::io::Result<Option<AudioEdit>> {
    let top = children(r, 0, len_bytes)?;
    let Some(moov) = top.iter().find(|a| &a.kind == b"moov") else {
        return Ok(None);
    };
    let moov_children = children(r, moov.body_start, moov.body_end)?;
    let movie_timescale = match moov_children.iter().find(|a| &a.kind == b"mvhd") {
        Some(a) => timescale(&leaf(r, a)?),
        None => None,
    };
    let Some(movie_timescale) = movie_timescale else {
        return Ok(None);
    };
    for trak in moov_children.iter().filter(|a| &a.kind == b"trak") {
        let parts = children(r, trak.body_start, trak.body_end)?;
        let Some(mdia) = parts.iter().find(|a| &a.kind == b"mdia") else {
            continue;
        };
        let mdia_parts = children(r, mdia.body_start, mdia.body_end)?;
        let is_sound = match mdia_parts.iter().find(|a| &a.kind == b"hdlr") {
            Some(h) => leaf(r, h)?.get(8..12) == Some(b"soun"),
            None => false,
        };
        if !is_sound {
            continue;
        }
        let media_timescale = match mdia_parts.iter().find(|a| &a.kind == b"mdhd") {
            Some(a) => timescale(&leaf(r, a)?),
            None => None,
        };
        let edit = match parts.iter().find(|a| &a.kind == b"edts") {
            Some(edts) => {
                let e = children(r, edts.body_start, edts.body_end)?;
                match e.iter().find(|a| &a.kind == b"elst") {
                    Some(elst) => first_edit(&leaf(r, elst)?),
                    None => None,
                }
            }
            None => None,
        };
        return Ok(match (edit, media_timescale) {
            (Some((segment_duration, media_time)), Some(media_timescale)) => Some(AudioEdit {
                media_time,
                segment_duration,
                movie_timescale,
                media_timescale,
            }),
            _ => None,
        });
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn atom(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut v = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        v.extend(kind);
        v.extend(body);
        v
    }

    #[test]
    fn finds_the_sound_tracks_edit() {
        let mut mvhd = vec![0u8; 100];
        mvhd[12..16].copy_from_slice(&1000u32.to_be_bytes());
        let mut mdhd = vec![0u8; 24];
        mdhd[12..16].copy_from_slice(&44_100u32.to_be_bytes());
        let mut hdlr = vec![0u8; 24];
        hdlr[8..12].copy_from_slice(b"soun");
        let mut elst = vec![0, 0, 0, 0, 0, 0, 0, 2];
        elst.extend(500u32.to_be_bytes()); // an empty edit first
        elst.extend((-1i32).to_be_bytes());
        elst.extend(0x10000u32.to_be_bytes());
        elst.extend(2_000u32.to_be_bytes());
        elst.extend(1024u32.to_be_bytes());
        elst.extend(0x10000u32.to_be_bytes());
        let mdia = atom(
            b"mdia",
            &[atom(b"mdhd", &mdhd), atom(b"hdlr", &hdlr)].concat(),
        );
        let trak = atom(
            b"trak",
            &[atom(b"edts", &atom(b"elst", &elst)), mdia].concat(),
        );
        let file = [
            atom(b"ftyp", b"M4A \0\0\0\0"),
            atom(b"moov", &[atom(b"mvhd", &mvhd), trak].concat()),
        ]
        .concat();
        let len = file.len() as u64;
        let edit = audio_edit(&mut std::io::Cursor::new(file), len)
            .unwrap()
            .unwrap();
        assert_eq!(edit.frames_at(44_100), (1024, Some(88_200)));
        // Garbage is no edit, and no error.
        let junk = vec![0xFFu8; 64];
        assert_eq!(
            audio_edit(&mut std::io::Cursor::new(junk), 64).unwrap(),
            None
        );
    }
}
