//! The catalog: artists, albums and genres of ready tracks, kept as records
//! in the metadata store next to the track itself, for browsing.
//!
//! Keyspaces (every key built from order-preserving components,
//! [`spindle_engine::meta::index`], written as `C(x)`):
//! - `cat_genre_tracks`: `C(genre_key) C(title_key) track_id` -> [`Member`]
//! - `cat_artists`: `C(artist_name_key) C(artist_id) track_id` -> [`Member`]
//! - `cat_artist_tracks`: `C(artist_id) C(album_key) C(title_key) track_id` -> [`Member`]
//! - `cat_album_tracks`: `C(album_id) C(disc, track number) C(title_key) track_id` -> [`Member`]
//!
//! An artist, album or genre is the set of its membership records: one per
//! (entity, ready track), carrying the entity's display name and a summary
//! of the track. Nothing is read-modified-written, so two tracks of one
//! album becoming ready at once never conflict; an entity exists exactly
//! while one of its records does, and a genre's track count is the number of
//! its records.
//!
//! **Invariant:** the membership records of a track are exactly
//! [`memberships`] of its stored value, provided every write of a track goes
//! through [`index_track`] in the same batch (upload, transcode, delete).
//! Only `ready` tracks have memberships, so only they are listed.
//!
//! Pagination: every listing is an ordered key scan and its cursor is the
//! last key returned (hex, opaque to clients); the next page starts strictly
//! after it. Tracks added or removed elsewhere in the order while a client
//! pages therefore never cause a duplicate or a skip of a track present
//! throughout.

use std::collections::BTreeMap;
use std::ops::Bound;

use serde::{Deserialize, Serialize};
use spindle_engine::meta::{index, Batch, Direction, MetaStore};

use crate::track::{Kind, Status, Track, TRACKS_KEYSPACE};

mod fold;
pub mod http;
pub use fold::{fold, genre_key};

pub const GENRE_TRACKS_KEYSPACE: &str = "cat_genre_tracks";
pub const ARTISTS_KEYSPACE: &str = "cat_artists";
pub const ARTIST_TRACKS_KEYSPACE: &str = "cat_artist_tracks";
pub const ALBUM_TRACKS_KEYSPACE: &str = "cat_album_tracks";
/// Tracks of every status by the content id of their original: key
/// `<raw blob id hex><track id>`, empty value. Lets an uploader ask whether
/// the same bytes are a track already (`GET /v1/tracks?raw=`).
pub const TRACKS_BY_RAW_KEYSPACE: &str = "tracks_by_raw";

fn raw_key(track: &Track) -> Vec<u8> {
    format!("{}{}", track.raw.blob_id, track.id).into_bytes()
}

/// Where the catalog notes one-time migrations it has done.
const CATALOG_META_KEYSPACE: &str = "catalog_meta";
/// Set once `tracks_by_raw` covers the tracks stored before it existed.
const TRACKS_BY_RAW_BACKFILLED: &[u8] = b"tracks_by_raw_v1";

/// Adds the `tracks_by_raw` entries of tracks stored before that index
/// existed, once per store (a marker records it), so duplicate detection
/// knows them too. Run at open, before anything writes tracks; re-running
/// an interrupted pass only puts the same keys again. Returns the tracks
/// seen (0 when already done).
pub fn backfill_tracks_by_raw(store: &MetaStore) -> Result<u64, spindle_engine::meta::Error> {
    if store
        .get(CATALOG_META_KEYSPACE, TRACKS_BY_RAW_BACKFILLED)?
        .is_some()
    {
        return Ok(0);
    }
    let mut seen = 0u64;
    let mut cursor: Option<Vec<u8>> = None;
    loop {
        let page = store.scan_prefix(
            TRACKS_KEYSPACE,
            b"",
            Direction::Forward,
            cursor.as_deref(),
            1000,
        )?;
        let mut batch = Batch::new();
        for (_, v) in &page.items {
            // A record that does not parse has no usable raw id; reading it
            // fails loudly elsewhere.
            if let Ok(track) = serde_json::from_slice::<Track>(v) {
                batch.put(TRACKS_BY_RAW_KEYSPACE, raw_key(&track), b"");
                seen += 1;
            }
        }
        if !batch.is_empty() {
            store.commit(batch)?;
        }
        match page.cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let mut done = Batch::new();
    done.put(CATALOG_META_KEYSPACE, TRACKS_BY_RAW_BACKFILLED, b"1");
    store.commit(done)?;
    Ok(seen)
}

/// Ids of the tracks whose original has content id `raw_blob_id` (64 hex
/// digits), in track id order (ids are random: no meaning); at most `limit`.
pub fn tracks_with_raw(
    store: &MetaStore,
    raw_blob_id: &str,
    limit: usize,
) -> Result<Vec<String>, spindle_engine::meta::Error> {
    let page = store.scan_prefix(
        TRACKS_BY_RAW_KEYSPACE,
        raw_blob_id.as_bytes(),
        Direction::Forward,
        None,
        limit,
    )?;
    Ok(page
        .items
        .iter()
        .filter_map(|(k, _)| std::str::from_utf8(k.get(raw_blob_id.len()..)?).ok())
        .map(str::to_owned)
        .collect())
}

/// Most items of one listing page.
pub const PAGE_LIMIT_MAX: usize = 500;
/// Items of a page when the client names no limit.
pub const PAGE_LIMIT_DEFAULT: usize = 50;
/// Most albums listed on an artist's page.
pub const ARTIST_ALBUMS_MAX: usize = 1000;

/// Failures of catalog reads.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("metadata store: {0}")]
    Store(#[from] spindle_engine::meta::Error),
    #[error("malformed cursor")]
    BadCursor,
    #[error("catalog record {keyspace}/{key_hex} is corrupt: {reason}")]
    Corrupt {
        keyspace: &'static str,
        key_hex: String,
        reason: String,
    },
}

/// An artist as a track names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtistRef {
    pub id: String,
    pub name: String,
}

/// An album as a track names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlbumRef {
    pub id: String,
    pub name: String,
    /// The album artist (the track's first artist), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artist: Option<ArtistRef>,
}

/// What listings show of a track.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackSummary {
    pub id: String,
    pub kind: Kind,
    pub title: String,
    pub artists: Vec<ArtistRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub album: Option<AlbumRef>,
    /// Display names, one per distinct genre key.
    pub genres: Vec<String>,
    pub created_ms: u64,
}

/// The value of every membership record: the entity's display name and the
/// track.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    pub track: TrackSummary,
}

/// A 16-hex-digit id for a folded name (blake3, so it is the same on every
/// node and after every restart).
fn name_id(parts: &[&str]) -> String {
    let mut h = blake3::Hasher::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update(&[0]);
    }
    h.finalize().to_hex()[..16].to_owned()
}

/// The id of the artist named `name`.
pub fn artist_id(name: &str) -> String {
    name_id(&["artist", &genre_key(name)])
}

/// The id of album `name` by `album_artist` (empty when unknown).
pub fn album_id(album_artist: &str, name: &str) -> String {
    name_id(&["album", &genre_key(album_artist), &genre_key(name)])
}

/// Splits a multi-valued field on `;`, the separator the transcoder joins
/// several tag values with. Nothing else separates: a slash or a comma is part
/// of names like "AC/DC" or "Folk, World & Country".
/// Values are trimmed, empties dropped, and duplicates by key removed.
fn split_values(value: Option<&str>, separators: &[char]) -> Vec<String> {
    distinct(value.unwrap_or("").split(|c| separators.contains(&c)))
}

fn distinct<'a>(values: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for part in values {
        let part = part.trim();
        let key = genre_key(part);
        if key.is_empty() || !seen.insert(key) {
            continue;
        }
        out.push(part.to_owned());
    }
    out
}

/// The tags the transcoder read from the file (`tags` in the record). Read
/// through the record's JSON so the catalog follows the record's wire shape,
/// which is the stable contract, rather than its Rust type.
#[derive(Debug, Default)]
struct FileTags {
    title: Option<String>,
    artists: Vec<String>,
    album: Option<String>,
    album_artist: Option<String>,
    genres: Vec<String>,
    disc_number: u64,
    track_number: u64,
}

fn file_tags(track: &Track) -> FileTags {
    let Ok(record) = serde_json::to_value(track) else {
        return FileTags::default();
    };
    let tags = &record["tags"];
    let text = |k: &str| tags.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    let list = |k: &str| -> Vec<String> {
        tags.get(k)
            .and_then(|v| v.as_array())
            .map(|a| distinct(a.iter().filter_map(|x| x.as_str())))
            .unwrap_or_default()
    };
    let number = |k: &str| tags.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
    FileTags {
        title: text("title"),
        artists: list("artists"),
        album: text("album"),
        album_artist: text("album_artist"),
        genres: list("genres"),
        disc_number: number("disc_number"),
        track_number: number("track_number"),
    }
}

fn non_blank(s: &Option<String>) -> Option<&str> {
    s.as_deref()
        .map(str::trim)
        .filter(|v| !genre_key(v).is_empty())
}

/// The summary of `track`, or `None` when it is not listed (not ready).
/// Upload fields win over file tags; an album's artist is the file's album
/// artist, else the track's first artist.
pub fn summarize(track: &Track) -> Option<TrackSummary> {
    summarize_with_order(track).map(|(s, _)| s)
}

/// The summary and the track's position on its album (disc, number).
fn summarize_with_order(track: &Track) -> Option<(TrackSummary, (u64, u64))> {
    if track.status != Status::Ready {
        return None;
    }
    let f = &track.fields;
    let tags = file_tags(track);
    let title = non_blank(&f.title)
        .or(non_blank(&tags.title))
        .or(non_blank(&f.filename))
        .map(str::to_owned)
        .unwrap_or_else(|| track.id.clone());
    let artist_names = match non_blank(&f.artist) {
        Some(a) => split_values(Some(a), &[';']),
        None => tags.artists.clone(),
    };
    let artists: Vec<ArtistRef> = artist_names
        .into_iter()
        .map(|name| ArtistRef {
            id: artist_id(&name),
            name,
        })
        .collect();
    let album = non_blank(&f.album).or(non_blank(&tags.album)).map(|name| {
        let artist = match non_blank(&tags.album_artist) {
            Some(a) => Some(ArtistRef {
                id: artist_id(a),
                name: a.to_owned(),
            }),
            None => artists.first().cloned(),
        };
        let artist_name = artist.as_ref().map(|a| a.name.as_str()).unwrap_or("");
        AlbumRef {
            id: album_id(artist_name, name),
            name: name.to_owned(),
            artist,
        }
    });
    let genres = match non_blank(&f.genre) {
        // Only ";" separates: a genre such as "Folk, World & Country" or
        // "Rock/Pop" is one value (the transcoder joins several with "; ").
        Some(g) => split_values(Some(g), &[';']),
        None => tags.genres.clone(),
    };
    let summary = TrackSummary {
        id: track.id.clone(),
        kind: track.kind,
        title,
        artists,
        album,
        genres,
        created_ms: track.created_ms,
    };
    Some((summary, (tags.disc_number, tags.track_number)))
}

fn key(parts: &[&str], track_id: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        index::encode_component(&mut out, p.as_bytes());
    }
    out.extend_from_slice(track_id.as_bytes());
    out
}

/// The membership records of `track`: `(keyspace, key) -> Member`.
pub fn memberships(track: &Track) -> BTreeMap<(&'static str, Vec<u8>), Member> {
    let mut out = BTreeMap::new();
    let Some((s, (disc, number))) = summarize_with_order(track) else {
        return out;
    };
    let title_key = genre_key(&s.title);
    for g in &s.genres {
        out.insert(
            (
                GENRE_TRACKS_KEYSPACE,
                key(&[&genre_key(g), &title_key], &s.id),
            ),
            Member {
                name: g.clone(),
                track: s.clone(),
            },
        );
    }
    let album_key = s
        .album
        .as_ref()
        .map(|a| genre_key(&a.name))
        .unwrap_or_default();
    for a in &s.artists {
        let m = Member {
            name: a.name.clone(),
            track: s.clone(),
        };
        out.insert(
            (ARTISTS_KEYSPACE, key(&[&genre_key(&a.name), &a.id], &s.id)),
            m.clone(),
        );
        out.insert(
            (
                ARTIST_TRACKS_KEYSPACE,
                key(&[&a.id, &album_key, &title_key], &s.id),
            ),
            m,
        );
    }
    if let Some(album) = &s.album {
        out.insert(
            (
                ALBUM_TRACKS_KEYSPACE,
                key(
                    &[&album.id, &format!("{disc:010}{number:010}"), &title_key],
                    &s.id,
                ),
            ),
            Member {
                name: album.name.clone(),
                track: s.clone(),
            },
        );
    }
    out
}

/// Adds to `batch` the catalog changes for a track going from `old` to `new`
/// (`None`: absent). Call it in the same batch that writes or deletes the
/// track record, with `old` the value that batch replaces (guard it with
/// `batch.require`), so catalog and track commit together.
pub fn index_track(batch: &mut Batch, old: Option<&Track>, new: Option<&Track>) {
    let (raw_before, raw_after) = (old.map(raw_key), new.map(raw_key));
    if raw_before != raw_after {
        if let Some(k) = raw_before {
            batch.delete(TRACKS_BY_RAW_KEYSPACE, k);
        }
        if let Some(k) = raw_after {
            batch.put(TRACKS_BY_RAW_KEYSPACE, k, b"");
        }
    }
    let before = old.map(memberships).unwrap_or_default();
    let after = new.map(memberships).unwrap_or_default();
    for (ks, k) in before.keys() {
        if !after.contains_key(&(*ks, k.clone())) {
            batch.delete(ks, k);
        }
    }
    for ((ks, k), member) in &after {
        if before.get(&(*ks, k.clone())) == Some(member) {
            continue;
        }
        // A summary always serialises: it holds only strings and numbers.
        if let Ok(value) = serde_json::to_vec(member) {
            batch.put(ks, k, value);
        }
    }
}

/// Writes `track` (replacing whatever is stored under its id) with its
/// catalog records in one batch, guarded against a concurrent writer.
pub fn put_track(store: &MetaStore, track: &Track) -> Result<(), PutError> {
    let current = store.get(TRACKS_KEYSPACE, track.id.as_bytes())?;
    let old: Option<Track> = match &current {
        Some(v) => Some(serde_json::from_slice(v).map_err(|e| PutError::Corrupt {
            track_id: track.id.clone(),
            reason: e.to_string(),
        })?),
        None => None,
    };
    let value = serde_json::to_vec(track).map_err(|e| PutError::Corrupt {
        track_id: track.id.clone(),
        reason: e.to_string(),
    })?;
    let mut batch = Batch::new();
    batch.require(TRACKS_KEYSPACE, track.id.as_bytes(), current.as_deref());
    batch.put(TRACKS_KEYSPACE, track.id.as_bytes(), value);
    index_track(&mut batch, old.as_ref(), Some(track));
    store.commit(batch)?;
    Ok(())
}

/// Failures of [`put_track`].
#[derive(Debug, thiserror::Error)]
pub enum PutError {
    #[error("metadata store: {0}")]
    Store(#[from] spindle_engine::meta::Error),
    #[error("track {track_id} does not (de)serialise: {reason}")]
    Corrupt { track_id: String, reason: String },
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass back as `cursor` for the next page; `None` at the end.
    pub next_cursor: Option<String>,
}

/// A genre with its display name and number of ready tracks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GenreInfo {
    /// The grouping key (use it in `/v1/genres/{genre}/tracks`).
    pub key: String,
    pub name: String,
    pub track_count: u64,
}

/// An artist page: the artist, its albums and one page of its tracks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArtistPage {
    pub id: String,
    pub name: String,
    pub albums: Vec<AlbumRef>,
    pub tracks: Page<TrackSummary>,
}

/// An album page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AlbumPage {
    pub id: String,
    pub name: String,
    pub artist: Option<ArtistRef>,
    pub tracks: Page<TrackSummary>,
}

fn hex(bytes: &[u8]) -> String {
    crate::tokens::hex(bytes)
}

fn unhex(s: &str) -> Result<Vec<u8>, CatalogError> {
    if !s.len().is_multiple_of(2) || s.len() > 8192 {
        return Err(CatalogError::BadCursor);
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            s.get(i..i + 2)
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .ok_or(CatalogError::BadCursor)
        })
        .collect()
}

fn parse_member(ks: &'static str, k: &[u8], v: &[u8]) -> Result<Member, CatalogError> {
    serde_json::from_slice(v).map_err(|e| CatalogError::Corrupt {
        keyspace: ks,
        key_hex: hex(k),
        reason: e.to_string(),
    })
}

/// The leading `n` components of `key`, re-encoded (a prefix of `key`).
fn leading(key: &[u8], n: usize) -> Option<Vec<u8>> {
    let mut rest = key;
    for _ in 0..n {
        let (_, r) = index::decode_component(rest)?;
        rest = r;
    }
    Some(key[..key.len() - rest.len()].to_vec())
}

/// A page of records under `prefix`, resuming after `cursor`.
fn member_page(
    store: &MetaStore,
    ks: &'static str,
    prefix: &[u8],
    cursor: Option<&str>,
    limit: usize,
) -> Result<Page<Member>, CatalogError> {
    let after = cursor.map(unhex).transpose()?;
    if let Some(a) = &after {
        if !a.starts_with(prefix) {
            return Err(CatalogError::BadCursor);
        }
    }
    let end = index::prefix_successor(prefix);
    let lo = match &after {
        Some(a) => Bound::Excluded(a.as_slice()),
        None => Bound::Included(prefix),
    };
    let hi = match &end {
        Some(e) => Bound::Excluded(e.as_slice()),
        None => Bound::Unbounded,
    };
    let page = store.scan_range(ks, lo, hi, Direction::Forward, None, limit)?;
    let mut items = Vec::with_capacity(page.items.len());
    for (k, v) in &page.items {
        items.push(parse_member(ks, k, v)?);
    }
    let next_cursor = match (page.cursor, page.items.last()) {
        (Some(_), Some((k, _))) => Some(hex(k)),
        _ => None,
    };
    Ok(Page { items, next_cursor })
}

/// A group's key prefix and its first record.
type Group = (Vec<u8>, Member);

/// Distinct groups of the first `depth` components in `ks` under `prefix`,
/// starting after group `after`: each with its first record. A skip scan:
/// one seek per group, so a page costs `limit` seeks whatever the group sizes.
fn distinct_groups(
    store: &MetaStore,
    ks: &'static str,
    prefix: &[u8],
    depth: usize,
    after: Option<&[u8]>,
    limit: usize,
) -> Result<(Vec<Group>, bool), CatalogError> {
    let end = index::prefix_successor(prefix);
    let hi = match &end {
        Some(e) => Bound::Excluded(e.as_slice()),
        None => Bound::Unbounded,
    };
    let mut start: Option<Vec<u8>> = match after {
        Some(a) => match index::prefix_successor(a) {
            Some(s) => Some(s),
            None => return Ok((Vec::new(), false)),
        },
        None => None,
    };
    let mut out = Vec::new();
    loop {
        let lo = match &start {
            Some(s) => Bound::Included(s.as_slice()),
            None => Bound::Included(prefix),
        };
        let page = store.scan_range(ks, lo, hi, Direction::Forward, None, 1)?;
        let Some((k, v)) = page.items.first() else {
            return Ok((out, false));
        };
        if out.len() == limit {
            return Ok((out, true));
        }
        let group = leading(k, depth).ok_or_else(|| CatalogError::Corrupt {
            keyspace: ks,
            key_hex: hex(k),
            reason: "key lacks its components".into(),
        })?;
        let member = parse_member(ks, k, v)?;
        start = index::prefix_successor(&group);
        out.push((group, member));
        if start.is_none() {
            return Ok((out, false));
        }
    }
}

fn count_prefix(store: &MetaStore, ks: &str, prefix: &[u8]) -> Result<u64, CatalogError> {
    let mut n = 0u64;
    let mut cursor: Option<Vec<u8>> = None;
    loop {
        let page = store.scan_prefix(ks, prefix, Direction::Forward, cursor.as_deref(), 4096)?;
        n += page.items.len() as u64;
        match page.cursor {
            Some(c) => cursor = Some(c),
            None => return Ok(n),
        }
    }
}

fn first_component(group: &[u8]) -> String {
    index::decode_component(group)
        .map(|(c, _)| String::from_utf8_lossy(&c).into_owned())
        .unwrap_or_default()
}

/// `GET /v1/genres`: genres in key order with their track counts. Counting
/// walks a genre's records (in memory); the L1 cache absorbs repeats.
pub fn list_genres(
    store: &MetaStore,
    cursor: Option<&str>,
    limit: usize,
) -> Result<Page<GenreInfo>, CatalogError> {
    let after = cursor.map(unhex).transpose()?;
    let (groups, more) = distinct_groups(
        store,
        GENRE_TRACKS_KEYSPACE,
        b"",
        1,
        after.as_deref(),
        limit,
    )?;
    let mut items = Vec::with_capacity(groups.len());
    for (group, member) in &groups {
        items.push(GenreInfo {
            key: first_component(group),
            name: member.name.clone(),
            track_count: count_prefix(store, GENRE_TRACKS_KEYSPACE, group)?,
        });
    }
    let next_cursor = if more {
        groups.last().map(|(g, _)| hex(g))
    } else {
        None
    };
    Ok(Page { items, next_cursor })
}

/// `GET /v1/genres/{genre}/tracks`: ready tracks of a genre (named by its
/// display name or its key) in title order.
pub fn genre_tracks(
    store: &MetaStore,
    genre: &str,
    cursor: Option<&str>,
    limit: usize,
) -> Result<Page<TrackSummary>, CatalogError> {
    let prefix = index::index_prefix(genre_key(genre).as_bytes());
    let page = member_page(store, GENRE_TRACKS_KEYSPACE, &prefix, cursor, limit)?;
    Ok(Page {
        items: page.items.into_iter().map(|m| m.track).collect(),
        next_cursor: page.next_cursor,
    })
}

/// `GET /v1/artists`: artists in name order.
pub fn list_artists(
    store: &MetaStore,
    cursor: Option<&str>,
    limit: usize,
) -> Result<Page<ArtistRef>, CatalogError> {
    let after = cursor.map(unhex).transpose()?;
    let (groups, more) = distinct_groups(store, ARTISTS_KEYSPACE, b"", 2, after.as_deref(), limit)?;
    let items = groups
        .iter()
        .map(|(group, m)| {
            let id = index::decode_component(group)
                .and_then(|(_, rest)| index::decode_component(rest))
                .map(|(id, _)| String::from_utf8_lossy(&id).into_owned())
                .unwrap_or_default();
            ArtistRef {
                id,
                name: m.name.clone(),
            }
        })
        .collect();
    let next_cursor = if more {
        groups.last().map(|(g, _)| hex(g))
    } else {
        None
    };
    Ok(Page { items, next_cursor })
}

/// `GET /v1/artists/{id}`: `None` when no ready track names the artist.
pub fn artist(
    store: &MetaStore,
    id: &str,
    cursor: Option<&str>,
    limit: usize,
) -> Result<Option<ArtistPage>, CatalogError> {
    let prefix = index::index_prefix(id.as_bytes());
    let (groups, _) = distinct_groups(
        store,
        ARTIST_TRACKS_KEYSPACE,
        &prefix,
        2,
        None,
        ARTIST_ALBUMS_MAX,
    )?;
    let Some((_, first)) = groups.first() else {
        return Ok(None);
    };
    let name = first.name.clone();
    let albums = groups
        .iter()
        .filter_map(|(_, m)| m.track.album.clone())
        .collect();
    let page = member_page(store, ARTIST_TRACKS_KEYSPACE, &prefix, cursor, limit)?;
    Ok(Some(ArtistPage {
        id: id.to_owned(),
        name,
        albums,
        tracks: Page {
            items: page.items.into_iter().map(|m| m.track).collect(),
            next_cursor: page.next_cursor,
        },
    }))
}

/// `GET /v1/albums/{id}`: `None` when no ready track is on the album.
pub fn album(
    store: &MetaStore,
    id: &str,
    cursor: Option<&str>,
    limit: usize,
) -> Result<Option<AlbumPage>, CatalogError> {
    let prefix = index::index_prefix(id.as_bytes());
    let head = store.scan_prefix(ALBUM_TRACKS_KEYSPACE, &prefix, Direction::Forward, None, 1)?;
    let Some((k, v)) = head.items.first() else {
        return Ok(None);
    };
    let first = parse_member(ALBUM_TRACKS_KEYSPACE, k, v)?;
    let page = member_page(store, ALBUM_TRACKS_KEYSPACE, &prefix, cursor, limit)?;
    Ok(Some(AlbumPage {
        id: id.to_owned(),
        name: first.name,
        artist: first.track.album.and_then(|a| a.artist),
        tracks: Page {
            items: page.items.into_iter().map(|m| m.track).collect(),
            next_cursor: page.next_cursor,
        },
    }))
}

/// Whether `s` looks like an artist or album id.
pub fn is_entity_id(s: &str) -> bool {
    s.len() == 16 && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_stored_before_the_raw_index_are_backfilled_once() {
        let dir = tempfile::tempdir().unwrap();
        let storage = spindle_engine::io::open_storage(
            dir.path(),
            spindle_engine::io::BackendChoice::Portable,
        )
        .unwrap();
        let store = MetaStore::open(
            storage,
            spindle_engine::meta::MetaConfig::default(),
            std::sync::Arc::new(spindle_engine::clock::SystemClock),
        )
        .unwrap();
        let raw = "cd".repeat(32);
        let mut batch = Batch::new();
        for n in 0..1500u32 {
            // As an older version wrote them: the record without the index.
            let track: Track = serde_json::from_value(serde_json::json!({
                "id": format!("{n:032x}"),
                "status": "ready",
                "kind": "song",
                "raw": { "blob_id": if n == 7 { raw.clone() } else { format!("{n:064x}") },
                         "size_bytes": 1, "media_type": "audio/ogg" },
                "created_ms": 1,
                "updated_ms": 1,
            }))
            .unwrap();
            batch.put(
                TRACKS_KEYSPACE,
                track.id.as_bytes(),
                serde_json::to_vec(&track).unwrap(),
            );
        }
        store.commit(batch).unwrap();
        assert!(tracks_with_raw(&store, &raw, 10).unwrap().is_empty());
        assert_eq!(backfill_tracks_by_raw(&store).unwrap(), 1500);
        assert_eq!(
            tracks_with_raw(&store, &raw, 10).unwrap(),
            vec![format!("{:032x}", 7)]
        );
        assert_eq!(store.keyspace_len(TRACKS_BY_RAW_KEYSPACE), 1500);
        // Done once: the marker stops a second pass.
        assert_eq!(backfill_tracks_by_raw(&store).unwrap(), 0);
    }

    #[test]
    fn multi_valued_tags_split_and_dedupe() {
        assert_eq!(
            split_values(Some("Rock; rock ; Électro"), &[';']),
            vec!["Rock", "Électro"]
        );
        assert_eq!(
            split_values(Some("Folk, World & Country; Rock/Pop"), &[';']),
            vec!["Folk, World & Country", "Rock/Pop"]
        );
        assert_eq!(
            split_values(Some("AC/DC; Brian Johnson"), &[';']),
            vec!["AC/DC", "Brian Johnson"]
        );
        assert!(split_values(None, &[';']).is_empty());
        assert_eq!(artist_id("Dvořák"), artist_id("DVORAK "));
        assert_ne!(album_id("A", "X"), album_id("B", "X"));
        assert!(is_entity_id(&artist_id("x")));
    }

    #[test]
    fn leading_components() {
        let k = key(&["a\0b", "c"], "t1");
        let one = leading(&k, 1).unwrap();
        assert_eq!(one, index::index_prefix(b"a\0b"));
        assert!(k.starts_with(&leading(&k, 2).unwrap()));
        assert!(leading(b"no terminator", 1).is_none());
    }
}
