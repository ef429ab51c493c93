//! Fuzz target for the metadata log's record decoder: whatever the bytes,
//! decoding never panics, and a record that decodes re-encodes to a record
//! that decodes to the same thing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spindle_engine::meta::wal;

fuzz_target!(|data: &[u8]| {
    let _ = wal::decode_segment_header(data);
    let _ = wal::decode_header(data);
    // Walk the input as a log would be replayed: record after record.
    let mut at = 0usize;
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
            }
            Err(_) => break,
        }
    }
});
