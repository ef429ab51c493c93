//! Fuzzes the blob store's segment record decoder: any bytes must decode or
//! be rejected, never panic, and a record that decodes must re-encode to the
//! same bytes (so the decoder accepts exactly what the encoder writes).
#![no_main]

use spindle_engine::blob::record::{self, BlobState, RecordKind};
use spindle_engine::blob::{BlobId, ChunkId};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = record::decode_segment_header(data);
    let _ = record::decode_header(data);
    if let Ok((rec, used)) = record::decode(data) {
        assert!(used <= data.len());
        let reencoded = match rec.header.kind {
            RecordKind::Chunk => {
                let enc = record::encode_chunk(&ChunkId(rec.header.key), rec.payload);
                let mut out = enc.head;
                out.extend_from_slice(rec.payload);
                out.extend_from_slice(&enc.trailer);
                out
            }
            RecordKind::BlobState => match BlobState::decode(rec.payload) {
                Ok(state) => state.encode_record(&BlobId(rec.header.key)),
                Err(e) => panic!("decode accepted a record whose payload fails: {e}"),
            },
        };
        // Chunk records written with another block size are valid but
        // re-encode differently.
        if rec.header.kind == RecordKind::BlobState
            || rec.header.block_size_log2 == record::CHUNK_BLOCK_LOG2
        {
            assert_eq!(&reencoded[..], &data[..used]);
        }
    }
});
