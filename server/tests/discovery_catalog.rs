//! Catalog browsing: genres, artists, albums; only ready tracks; deletes;
//! genre normalisation; cursor pages consistent under concurrent inserts.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers: a failed unwrap fails the test, which is the right outcome"
)]

mod discovery_support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use discovery_support::{
    delete, get_json, open_store, put, request, start_server, track, track_id,
};
use spindle_engine::meta::MetaConfig;
use spindle_server::catalog;
use spindle_server::track::Status;

#[test]
fn pages_stay_consistent_while_tracks_are_added() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(&dir.path().join("meta"), MetaConfig::default());
    for n in 0..300 {
        put(
            &store,
            &track(
                n,
                &format!("Song {n:04}"),
                &format!("Artist {n:03}"),
                "",
                "Rock",
            ),
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (store, stop) = (store.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 1000;
            // Titles interleave with the existing ones (before and after
            // the pages already read), so inserts land on both sides.
            while !stop.load(Ordering::Relaxed) && n < 1400 {
                let title = format!("Song {:04}", (n * 7919) % 300);
                put(
                    &store,
                    &track(n, &title, &format!("Artist {:03}x", n % 300), "", "rock"),
                );
                n += 1;
            }
            n - 1000
        })
    };
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = catalog::genre_tracks(&store, "ROCK", cursor.as_deref(), 17).unwrap();
        seen.extend(page.items.iter().map(|t| t.id.clone()));
        pages += 1;
        std::thread::sleep(Duration::from_millis(2));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
        assert!(pages < 1000);
    }
    let mut artists = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = catalog::list_artists(&store, cursor.as_deref(), 13).unwrap();
        artists.extend(page.items.iter().map(|a| a.id.clone()));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    stop.store(true, Ordering::Relaxed);
    let inserted = writer.join().unwrap();
    assert!(inserted > 0);
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "a track appeared twice");
    for n in 0..300 {
        assert!(unique.contains(&track_id(n)), "track {n} was skipped");
    }
    let unique_artists: BTreeSet<&String> = artists.iter().collect();
    assert_eq!(
        unique_artists.len(),
        artists.len(),
        "an artist appeared twice"
    );
    for n in 0..300 {
        assert!(unique_artists.contains(&catalog::artist_id(&format!("Artist {n:03}"))));
    }
    // Titles are in order within the genre.
    let all = catalog::genre_tracks(&store, "rock", None, 500).unwrap();
    let titles: Vec<&str> = all.items.iter().map(|t| t.title.as_str()).collect();
    let mut sorted = titles.clone();
    sorted.sort_by_key(|t| t.to_lowercase());
    assert_eq!(titles, sorted);
    assert!(catalog::genre_tracks(&store, "rock", Some("zz"), 5).is_err());
}

#[test]
fn genres_are_normalised_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(&dir.path().join("meta"), MetaConfig::default());
    put(&store, &track(1, "A", "X", "", "Hip-Hop"));
    put(&store, &track(2, "B", "X", "", "hip hop"));
    put(&store, &track(3, "C", "X", "", "  HIP   HOP "));
    // Only ";" separates genres: a comma or slash belongs to the name.
    put(
        &store,
        &track(4, "D", "X", "", "Électronique; Folk, World & Country"),
    );
    put(&store, &track(5, "E", "X", "", "electronique"));
    let page = catalog::list_genres(&store, None, 50).unwrap();
    let got: Vec<(String, u64)> = page
        .items
        .iter()
        .map(|g| (g.key.clone(), g.track_count))
        .collect();
    assert_eq!(
        got,
        vec![
            ("electronique".into(), 2),
            ("folk world & country".into(), 1),
            ("hip hop".into(), 3)
        ]
    );
    assert_eq!(page.items[0].name, "Électronique");
    // Paging the genre list one at a time gives the same list.
    let mut keys = Vec::new();
    let mut cursor = None;
    loop {
        let p = catalog::list_genres(&store, cursor.as_deref(), 1).unwrap();
        keys.extend(p.items.into_iter().map(|g| g.key));
        match p.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(
        keys,
        vec!["electronique", "folk world & country", "hip hop"]
    );
    assert_eq!(
        catalog::genre_tracks(&store, "HIP-HOP", None, 10)
            .unwrap()
            .items
            .len(),
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsing_routes_list_only_ready_tracks_and_forget_deleted_ones() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path()).await;
    let meta = server.app.meta.clone();
    let dvorak = "Antonín Dvořák";
    let rows = [
        (1, "Largo", dvorak, "New World", "Classical"),
        (2, "Allegro con fuoco", dvorak, "New World", "Classical"),
        (3, "Humoresque", dvorak, "Humoresques", "classical"),
        (4, "Not yet", dvorak, "New World", "Classical"),
    ];
    for (n, title, artist, album, genre) in rows {
        let mut t = track(n, title, artist, album, genre);
        if n == 4 {
            t.status = Status::Processing;
        }
        put(&meta, &t);
    }
    let (status, genres) = get_json(server.addr, "/v1/genres").await;
    assert_eq!(status, 200);
    assert_eq!(genres["items"][0]["key"], "classical");
    assert_eq!(genres["items"][0]["track_count"], 3);
    let (_, tracks) = get_json(server.addr, "/v1/genres/CLASSICAL/tracks?limit=2").await;
    assert_eq!(tracks["items"].as_array().unwrap().len(), 2);
    let cursor = tracks["next_cursor"].as_str().unwrap().to_owned();
    let (_, rest) = get_json(
        server.addr,
        &format!("/v1/genres/classical/tracks?limit=2&cursor={cursor}"),
    )
    .await;
    assert_eq!(rest["items"].as_array().unwrap().len(), 1);
    assert!(rest["next_cursor"].is_null());
    let (_, artists) = get_json(server.addr, "/v1/artists").await;
    assert_eq!(artists["items"][0]["name"], dvorak);
    let artist_id = artists["items"][0]["id"].as_str().unwrap().to_owned();
    let (status, artist) = get_json(server.addr, &format!("/v1/artists/{artist_id}")).await;
    assert_eq!(status, 200);
    assert_eq!(artist["albums"].as_array().unwrap().len(), 2);
    assert_eq!(artist["tracks"]["items"].as_array().unwrap().len(), 3);
    let album_id = artist["albums"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "New World")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, album) = get_json(server.addr, &format!("/v1/albums/{album_id}")).await;
    assert_eq!(status, 200);
    assert_eq!(album["artist"]["name"], dvorak);
    let titles: Vec<&str> = album["tracks"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["title"].as_str().unwrap())
        .collect();
    assert_eq!(titles, vec!["Allegro con fuoco", "Largo"]);
    assert_eq!(
        get_json(server.addr, "/v1/albums/0123456789abcdef").await.0,
        404
    );
    assert_eq!(get_json(server.addr, "/v1/artists/nope").await.0, 404);
    assert_eq!(get_json(server.addr, "/v1/genres?limit=0").await.0, 400);
    assert_eq!(get_json(server.addr, "/v1/genres?cursor=xyz").await.0, 400);

    // Search over HTTP sees the same catalog.
    assert!(server
        .app
        .discovery
        .index()
        .wait_for_lsn(meta.head_lsn(), Duration::from_secs(20)));
    let (status, found) = get_json(server.addr, "/v1/search?q=dvorak%20larg&limit=5").await;
    assert_eq!(status, 200);
    assert_eq!(found["tracks"][0]["id"], track_id(1));
    assert!(
        found["artists"].as_array().unwrap().is_empty(),
        "no artist matches \"larg\""
    );
    let (_, found) = get_json(server.addr, "/v1/search?q=DVORAK").await;
    assert_eq!(found["artists"][0]["item"]["name"], dvorak);
    assert_eq!(found["tracks"].as_array().unwrap().len(), 3);
    assert_eq!(
        get_json(server.addr, "/v1/search?q=x&kind=movie").await.0,
        400
    );

    // Deleting through the API: the track leaves every listing, the album
    // with its last track.
    let token = server.creator_token.clone().unwrap();
    let (status, _) = request(
        server.addr,
        "DELETE",
        &format!("/v1/tracks/{}", track_id(3)),
        Some(&token),
    )
    .await;
    assert_eq!(status, 204);
    delete(&meta, &track_id(1));
    let mut ok = false;
    for _ in 0..400 {
        let (_, g) = get_json(server.addr, "/v1/genres").await;
        let (_, a) = get_json(server.addr, &format!("/v1/artists/{artist_id}")).await;
        if g["items"][0]["track_count"] == 1 && a["albums"].as_array().map(Vec::len) == Some(1) {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(ok, "deletes did not reach the cached listings");
    let (_, left) = get_json(server.addr, "/v1/genres/classical/tracks").await;
    let ids: Vec<&str> = left["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![track_id(2)]);
}
