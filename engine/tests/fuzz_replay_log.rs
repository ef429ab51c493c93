//! Replays the log-record fuzz corpus (`fuzz/corpus/log_record/`) through the
//! decoder, with the fuzz target's checks, so CI exercises it without a
//! fuzzer. Seeds named `valid-*` must decode; `invalid-*` must be rejected.
#![expect(
    clippy::expect_used,
    reason = "test helpers outside #[test] fns: a failed unwrap is a failed test"
)]

use std::path::PathBuf;

use spindle_engine::meta::wal;

/// The fuzz target's body; returns how many records decoded.
fn exercise(data: &[u8]) -> usize {
    let _ = wal::decode_segment_header(data);
    let _ = wal::decode_header(data);
    let mut at = 0usize;
    let mut decoded = 0;
    while at < data.len() {
        match wal::decode_record(&data[at..]) {
            Ok((record, used)) => {
                assert!(used >= wal::RECORD_HEADER_BYTES && used <= data.len() - at);
                let mut again = Vec::new();
                wal::encode_record(
                    &mut again,
                    record.lsn,
                    record.hlc,
                    record.node_id,
                    record.group_index,
                    &record.ops,
                    None,
                );
                let (back, n) = wal::decode_record(&again).expect("re-encoded record decodes");
                assert_eq!(n, again.len());
                assert_eq!(back, record);
                at += used;
                decoded += 1;
            }
            Err(_) => break,
        }
    }
    decoded
}

#[test]
fn replay_log_record_corpus() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/log_record");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let data = std::fs::read(&path).unwrap();
        let decoded = exercise(&data);
        if name.starts_with("valid-") {
            assert!(decoded >= 1, "{name} should decode");
        } else if name.starts_with("invalid-") {
            assert_eq!(decoded, 0, "{name} should be rejected");
        }
        // Every prefix and a bit flip in every byte: still no panic, and a
        // damaged single record never decodes.
        for len in 0..data.len() {
            exercise(&data[..len]);
        }
        for i in 0..data.len() {
            let mut d = data.clone();
            d[i] ^= 0x20;
            exercise(&d);
        }
        seen += 1;
    }
    assert!(seen >= 10, "corpus has only {seen} seeds");
    assert!(exercise(b"valid-two-records") == 0);
}

#[test]
fn two_record_seed_decodes_both() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/log_record");
    let data = std::fs::read(dir.join("valid-two-records")).unwrap();
    assert_eq!(exercise(&data), 2);
    let data = std::fs::read(dir.join("valid-zstd-value")).unwrap();
    let (rec, _) = wal::decode_record(&data).unwrap();
    match &rec.ops[0] {
        wal::Op::Put { value, .. } => assert_eq!(value.len(), 4800),
        other => panic!("unexpected op {other:?}"),
    }
}
