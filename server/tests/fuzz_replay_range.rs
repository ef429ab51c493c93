//! Replays the seed corpus of the `range_header` fuzz target
//! (`fuzz/corpus/range_header/`) through the same checks the fuzzer runs,
//! so CI exercises the Range planner's invariants without a fuzzer.

use std::path::PathBuf;

#[test]
fn replay_range_header_corpus() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/range_header");
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    assert!(
        entries.len() >= 10,
        "expected the seed corpus in {}",
        dir.display()
    );
    for path in &entries {
        let data = std::fs::read(path).unwrap();
        let outcome =
            std::panic::catch_unwind(|| spindle_server::http::plan::fuzz_range_input(&data));
        assert!(
            outcome.is_ok(),
            "seed {} violates an invariant",
            path.display()
        );
    }
}

/// The decoder itself: every prefix of every seed, and a few hostile shapes.
#[test]
fn replay_prefixes_and_hostile_shapes() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/range_header");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        for end in 0..=data.len() {
            spindle_server::http::plan::fuzz_range_input(&data[..end]);
        }
    }
    let mut many = b"\x01\x00\x10\x00\x00\x00\x00\x00\x00bytes=".to_vec();
    for i in 0..10_000u32 {
        many.extend_from_slice(format!("{}-{},", i * 3, i * 3 + 1).as_bytes());
    }
    spindle_server::http::plan::fuzz_range_input(&many);
}
