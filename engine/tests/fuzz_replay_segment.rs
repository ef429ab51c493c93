//! Replays the seed corpus of `fuzz/fuzz_targets/segment_record.rs` through
//! the segment record decoder in an ordinary `cargo test`: files named
//! `valid-*` must decode (and re-encode to the same bytes), `invalid-*`
//! must be rejected, and nothing may panic.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test and bench helpers outside #[test] fns: a failed unwrap is a failed run"
)]

use std::path::Path;

use spindle_engine::blob::record::{self, BlobState, RecordKind, SEGMENT_HEADER_LEN};
use spindle_engine::blob::{BlobId, ChunkId};

/// The fuzz target's checks; returns whether the bytes held a record.
fn check(data: &[u8]) -> bool {
    let _ = record::decode_header(data);
    let Ok((rec, used)) = record::decode(data) else {
        return false;
    };
    assert!(used <= data.len());
    if rec.header.kind == RecordKind::BlobState {
        let state = BlobState::decode(rec.payload).unwrap();
        assert_eq!(
            &state.encode_record(&BlobId(rec.header.key))[..],
            &data[..used]
        );
    } else if rec.header.block_size_log2 == record::CHUNK_BLOCK_LOG2 {
        let enc = record::encode_chunk(&ChunkId(rec.header.key), rec.payload);
        let mut out = enc.head;
        out.extend_from_slice(rec.payload);
        out.extend_from_slice(&enc.trailer);
        assert_eq!(&out[..], &data[..used]);
    }
    true
}

#[test]
fn seed_corpus_replays() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/segment_record");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let data = std::fs::read(&path).unwrap();
        let _ = record::decode_segment_header(&data);
        let ok = if data.starts_with(&record::SEGMENT_MAGIC) {
            // A segment file's beginning: its header, then records.
            assert!(record::decode_segment_header(&data).is_ok(), "{name}");
            check(&data[SEGMENT_HEADER_LEN..])
        } else {
            check(&data)
        };
        if name.starts_with("valid-") {
            assert!(ok, "{name} should decode");
        } else {
            assert!(
                name.starts_with("invalid-"),
                "{name}: unexpected corpus file name"
            );
            assert!(!ok, "{name} should be rejected");
        }
        // Every prefix of a seed is also rejected or decoded, never a panic.
        for len in 0..data.len().min(200) {
            let _ = check(&data[..len]);
        }
        count += 1;
    }
    assert!(count >= 10, "only {count} seed files in {}", dir.display());
}
