//! Search matching and ranking, one test per rule, against the real index
//! fed by the real change-feed consumer (tracks written through the
//! catalog's batch hook, as the transcoder does).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers: a failed unwrap fails the test, which is the right outcome"
)]

mod discovery_support;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use discovery_support::{open_store, put, track, track_id};
use spindle_engine::meta::{MetaConfig, MetaStore};
use spindle_server::search::{IndexerConfig, Popularity, SearchResults, SearchService};
use spindle_server::track::Kind;

struct Fixture {
    _dir: tempfile::TempDir,
    _store: MetaStore,
    service: SearchService,
}

/// Plays by track number: track 31 is more popular than track 30.
struct Plays;
impl Popularity for Plays {
    fn plays(&self, track_id: &str) -> u64 {
        match u64::from_str_radix(track_id, 16).unwrap_or(0) {
            31 => 1000,
            30 => 10,
            _ => 0,
        }
    }
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(&dir.path().join("meta"), MetaConfig::default());
        let rows: &[(u64, &str, &str, &str, &str)] = &[
            (
                1,
                "Symphony No. 9",
                "Antonín Dvořák",
                "From the New World",
                "Classical",
            ),
            (2, "Cœur de pirate", "Zaz", "Paris", "Chanson"),
            (3, "Łódź Nights", "Kasia", "Polska", "Electronic"),
            (4, "Dødsfall", "Mørke", "Vinter", "Black Metal"),
            (
                5,
                "Elvish Theme",
                "Lorien Ensemble",
                "Middle Tales",
                "Soundtrack",
            ),
            (6, "Orchestral Suite", "Bach Players", "Suites", "Classical"),
            (7, "Highway Tune", "AC/DC Tribute Orchestra", "Live", "Rock"),
            (8, "T.N.T.", "Thunder Band", "Dynamite", "Rock"),
            (9, "Rock-Paper-Scissors", "Hand Games", "Play", "Pop"),
            (10, "春风十里", "鹿先森乐队", "春风", "Folk"),
            // Ranking: exact > prefix > fuzzy on the title.
            (20, "Lumen", "Nobody", "Nothing", "Ambient"),
            (21, "Lumenous", "Nobody", "Nothing", "Ambient"),
            (22, "Lumin", "Nobody", "Nothing", "Ambient"),
            // Ranking: title > artist > album for the same word.
            (25, "Quasar", "Somebody", "Else", "Ambient"),
            (26, "Other One", "Quasar", "Else", "Ambient"),
            (27, "Third One", "Somebody", "Quasar", "Ambient"),
            // Popularity breaks a tie.
            (30, "Zephyr", "Wind", "Air", "Ambient"),
            (31, "Zephyr", "Breeze", "Air", "Ambient"),
            // Several words: each word's tier counts.
            (50, "Velvet Lumen", "Someone", "Somewhere", "Ambient"),
            (51, "Velvet Lumenous", "Someone", "Somewhere", "Ambient"),
            (52, "Velvet Lumin", "Someone", "Somewhere", "Ambient"),
            // A word in the artist and the album of one track each (below).
            (86, "Plain Song", "Nebula", "Plain", "Pop"),
            (87, "Another Song", "Plainer", "Nebula", "Pop"),
        ];
        for &(n, title, artist, album, genre) in rows {
            put(&store, &track(n, title, artist, album, genre));
        }
        let mut podcast = track(40, "Elvish Podcast", "Talkers", "Talks", "Talk");
        podcast.kind = Kind::Podcast;
        put(&store, &podcast);
        // More title matches of one word than a list holds.
        for n in 60..85 {
            put(
                &store,
                &track(n, &format!("Nebula {n}"), "Stargazers", "Sky", "Ambient"),
            );
        }
        let mut podcast = track(88, "Talk", "Hosts", "Nebula", "Talk");
        podcast.kind = Kind::Podcast;
        put(&store, &podcast);
        let service =
            SearchService::start(&store, &dir.path().join("search"), IndexerConfig::default())
                .unwrap();
        service.index().set_popularity(Arc::new(Plays));
        assert!(service
            .index()
            .wait_for_lsn(store.head_lsn(), Duration::from_secs(20)));
        Fixture {
            _dir: dir,
            _store: store,
            service,
        }
    })
}

fn search(q: &str) -> SearchResults {
    fixture().service.index().search(q, None, 10).unwrap()
}

fn track_ids(r: &SearchResults) -> Vec<u64> {
    r.tracks
        .iter()
        .map(|h| u64::from_str_radix(&h.id, 16).unwrap())
        .collect()
}

fn finds(q: &str, n: u64) {
    let r = search(q);
    assert!(
        track_ids(&r).contains(&n),
        "{q:?} should find track {n}, got {:?}",
        track_ids(&r)
    );
}

#[test]
fn case_and_diacritics_fold_both_ways() {
    finds("dvorak", 1);
    finds("DVOŘÁK", 1);
    finds("coeur", 2);
    finds("Cœur", 2);
    finds("lodz", 3);
    finds("Łódź", 3);
    finds("dodsfall", 4);
    finds("Dødsfall", 4);
    let r = search("dvorak");
    assert!(r.artists.iter().any(|h| h.item["name"] == "Antonín Dvořák"));
}

#[test]
fn prefix_as_you_type() {
    finds("elvi", 5);
    finds("elvish th", 5);
    finds("e", 5);
    assert!(!track_ids(&search("elvix")).contains(&5), "no prefix elvix");
}

#[test]
fn typos_one_edit_from_four_letters_two_from_eight() {
    // A transposition counts as one edit.
    finds("orchetsral", 6);
    // Two substitutions in an 8+ letter word.
    finds("orchxstrxl", 6);
    // One edit in a 4..7 letter word.
    finds("elvosh", 5);
    // Two edits in a 6 letter word are too many.
    assert!(!track_ids(&search("elvoxh")).contains(&5));
    // Words under 4 letters must match exactly (or as a prefix).
    assert!(!track_ids(&search("tmt")).contains(&8));
}

#[test]
fn punctuation_variants() {
    for q in ["acdc", "ac dc", "ac/dc", "AC/DC", "ac-dc"] {
        let r = search(q);
        assert!(
            r.artists
                .iter()
                .any(|h| h.item["name"] == "AC/DC Tribute Orchestra"),
            "{q:?} finds the artist: {r:?}"
        );
        assert!(track_ids(&r).contains(&7), "{q:?} finds its track");
    }
    finds("tnt", 8);
    finds("t.n.t", 8);
    // Hyphenated words are found by each word.
    finds("paper", 9);
    finds("scissors", 9);
    finds("rock paper scissors", 9);
}

#[test]
fn cjk_single_character_in_the_middle() {
    finds("风", 10);
    finds("十里", 10);
    finds("春风十里", 10);
    // The artist, written without spaces, by an inner character.
    let r = search("先");
    assert!(r.artists.iter().any(|h| h.item["name"] == "鹿先森乐队"));
    assert!(!track_ids(&search("雪")).contains(&10));
}

#[test]
fn ranking_exact_over_prefix_over_fuzzy() {
    let ids = track_ids(&search("lumen"));
    let pos = |n| ids.iter().position(|&i| i == n).unwrap();
    assert!(pos(20) < pos(21), "exact before prefix: {ids:?}");
    assert!(pos(21) < pos(22), "prefix before fuzzy: {ids:?}");
}

#[test]
fn ranking_title_over_artist_over_album() {
    let ids = track_ids(&search("quasar"));
    assert_eq!(&ids[..3], &[25, 26, 27], "{ids:?}");
}

#[test]
fn popularity_breaks_ties() {
    let r = search("zephyr");
    let ids = track_ids(&r);
    assert_eq!(&ids[..2], &[31, 30], "{ids:?}");
    assert_eq!(r.tracks[0].score, r.tracks[1].score);
}

#[test]
fn kind_filter_and_empty_query() {
    let idx = fixture().service.index();
    let all = idx.search("elvish", None, 10).unwrap();
    assert!(track_ids(&all).contains(&40) && track_ids(&all).contains(&5));
    let pods = idx.search("elvish", Some(Kind::Podcast), 10).unwrap();
    assert_eq!(track_ids(&pods), vec![40]);
    assert!(idx.search("  ", None, 10).unwrap().tracks.is_empty());
    assert_eq!(track_id(40), pods.tracks[0].id);
}

#[test]
fn several_words_rank_by_each_words_tier() {
    // Exact + exact, exact + prefix, exact + typo.
    let ids = track_ids(&search("velvet lumen"));
    assert_eq!(ids, vec![50, 51, 52]);
    // A typo is still found while the other word has exact hits.
    let r = search("velvet lumne");
    assert_eq!(track_ids(&r), vec![50], "{r:?}");
    assert!(track_ids(&search("highway tnue")).contains(&7));
    // Both words by typo.
    assert!(track_ids(&search("hihgway tnue")).contains(&7));
    // Every word must match.
    assert!(search("velvet zephyr").tracks.is_empty());
}

#[test]
fn a_full_list_holds_the_best_tier_only() {
    // 25 titles hold "nebula"; one artist and one album do too. A list of 10
    // is made of title matches only, the best tier, and nothing twice.
    let idx = fixture().service.index();
    let r = idx.search("nebula", None, 10).unwrap();
    let ids = track_ids(&r);
    assert_eq!(ids.len(), 10);
    assert!(ids.iter().all(|n| (60..85).contains(n)), "{ids:?}");
    assert!(r.tracks.iter().all(|h| h.score == r.tracks[0].score));
    let unique: std::collections::BTreeSet<u64> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len());
    // With room for all, the artist match comes after the titles, then the
    // album matches (the song's and the podcast's), in that order.
    let all = track_ids(&idx.search("nebula", None, 100).unwrap());
    assert_eq!(all.len(), 28, "{all:?}");
    assert_eq!(all[25], 86);
    let mut tail = all[26..].to_vec();
    tail.sort();
    assert_eq!(tail, vec![87, 88]);
    // As typed, by prefix: the same 25 titles, by id among equal scores.
    let p = idx.search("nebu", None, 10).unwrap();
    let p_ids = track_ids(&p);
    assert_eq!(p_ids, (60..70).collect::<Vec<u64>>());
    assert!(p.tracks[0].score < r.tracks[0].score, "prefix below exact");
    // The kind filter applies while a list fills: the one podcast, although
    // 25 songs match better.
    let pods = idx.search("nebula", Some(Kind::Podcast), 10).unwrap();
    assert_eq!(track_ids(&pods), vec![88]);
    // Artists and albums have lists of their own.
    assert!(r.artists.iter().any(|h| h.item["name"] == "Nebula"));
    assert!(r.albums.iter().any(|h| h.item["name"] == "Nebula"));
}
