//! Secondary indexes, kept in the same batch as their primary record.
//!
//! An index is an ordinary keyspace whose keys are `component(indexed value)
//! ++ primary key` and whose values are empty. Because the index entry and the
//! primary record go into one [`Batch`], they commit atomically: after a crash
//! either both are there or neither is.
//!
//! Components are encoded order-preservingly (as in FoundationDB's tuple
//! layer): each `0x00` byte becomes `0x00 0xFF` and the component ends with
//! `0x00 0x00`. So byte order of index keys is the order of indexed values,
//! and [`index_prefix`] of a value selects exactly the entries for that value.
//!
//! The pattern, on update of a record whose indexed field changes from `old`
//! to `new`:
//!
//! ```text
//! let mut b = Batch::new();
//! b.put("tracks", id, record);
//! index::update(&mut b, "tracks_by_artist", old_artist, Some(new_artist), id);
//! store.commit(b)?;
//! ```
//!
//! Invariant: an index keyspace holds an entry for `(value, pk)` exactly when
//! the primary holds `pk` with that value, provided every write to the primary
//! goes through [`update`] in the same batch.

use super::Batch;

/// Appends `bytes` as one order-preserving component.
pub fn encode_component(out: &mut Vec<u8>, bytes: &[u8]) {
    for &b in bytes {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&[0, 0]);
}

/// Splits `key` into its first component (decoded) and the rest; `None` if
/// the key holds no complete component.
pub fn decode_component(key: &[u8]) -> Option<(Vec<u8>, &[u8])> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < key.len() {
        if key[i] == 0 {
            match key.get(i + 1) {
                Some(0) => return Some((out, &key[i + 2..])),
                Some(0xFF) => {
                    out.push(0);
                    i += 2;
                }
                _ => return None,
            }
        } else {
            out.push(key[i]);
            i += 1;
        }
    }
    None
}

/// The index key for `value` pointing at `primary_key`.
pub fn index_key(value: &[u8], primary_key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + primary_key.len() + 4);
    encode_component(&mut out, value);
    out.extend_from_slice(primary_key);
    out
}

/// The prefix shared by every index key of `value`.
pub fn index_prefix(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 2);
    encode_component(&mut out, value);
    out
}

/// The primary key an index key points at.
pub fn primary_key_of(index_key: &[u8]) -> Option<&[u8]> {
    decode_component(index_key).map(|(_, rest)| rest)
}

/// Adds to `batch` the index changes for a primary record whose indexed value
/// goes from `old` to `new` (`None`: no record / not indexed).
pub fn update(
    batch: &mut Batch,
    index_keyspace: &str,
    old: Option<&[u8]>,
    new: Option<&[u8]>,
    primary_key: &[u8],
) {
    if old == new {
        return;
    }
    if let Some(old) = old {
        batch.delete(index_keyspace, index_key(old, primary_key));
    }
    if let Some(new) = new {
        batch.put(index_keyspace, index_key(new, primary_key), b"");
    }
}

/// The smallest key greater than every key starting with `prefix`, or `None`
/// when there is none (the prefix is empty or all `0xFF`).
pub fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last != 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_preserve_order_and_round_trip() {
        let values: [&[u8]; 6] = [b"", b"\0", b"\0\0", b"\0a", b"a", b"a\0"];
        let keys: Vec<Vec<u8>> = values.iter().map(|v| index_key(v, b"pk")).collect();
        for w in keys.windows(2) {
            assert!(w[0] < w[1], "{:?} !< {:?}", w[0], w[1]);
        }
        for (v, k) in values.iter().zip(&keys) {
            let (dec, rest) = decode_component(k).unwrap();
            assert_eq!(&dec, v);
            assert_eq!(rest, b"pk");
            assert!(k.starts_with(&index_prefix(v)));
        }
        assert!(!index_key(b"a\0", b"").starts_with(&index_prefix(b"a")));
    }

    #[test]
    fn prefix_successor_cases() {
        assert_eq!(prefix_successor(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_successor(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_successor(b"\xff\xff"), None);
        assert_eq!(prefix_successor(b""), None);
    }
}
