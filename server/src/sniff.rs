//! Media type sniffing for uploads.
//!
//! The stored media type of a blob comes from its first bytes when they carry
//! a known signature (clients often send `application/octet-stream` or
//! nothing), else from the upload's `Content-Type` when that is a plain
//! `type/subtype` that can describe a file, else `application/octet-stream`.
//! `multipart/*` and `application/x-www-form-urlencoded` never do: the
//! latter is what `curl --data-binary` sends when not told otherwise, so it
//! says nothing about the bytes.
//!
//! **Invariant:** the result is always a valid header value of at most
//! [`MEDIA_TYPE_LEN_MAX`] bytes of token characters and one `/`, so it can be
//! sent as `Content-Type` without further checks.

/// Bytes of the head that [`sniff`] looks at.
pub const SNIFF_LEN: usize = 12;
/// Longest media type accepted from a client.
pub const MEDIA_TYPE_LEN_MAX: usize = 127;

/// The media type of a blob whose first bytes are `head` (up to
/// [`SNIFF_LEN`] of them), falling back on the client's `declared` type.
pub fn sniff(head: &[u8], declared: Option<&str>) -> String {
    if let Some(known) = sniff_magic(head) {
        return known.to_owned();
    }
    declared
        .and_then(plain_media_type)
        .unwrap_or_else(|| "application/octet-stream".to_owned())
}

fn sniff_magic(h: &[u8]) -> Option<&'static str> {
    let at = |offset: usize, magic: &[u8]| h.get(offset..offset + magic.len()) == Some(magic);
    if at(0, b"OggS") {
        Some("audio/ogg")
    } else if at(0, b"fLaC") {
        Some("audio/flac")
    } else if at(0, b"ID3") {
        Some("audio/mpeg")
    } else if at(4, b"ftyp") {
        Some("audio/mp4")
    } else if at(0, b"RIFF") && at(8, b"WAVE") {
        Some("audio/wav")
    } else if at(0, b"FORM") && (at(8, b"AIFF") || at(8, b"AIFC")) {
        Some("audio/aiff")
    } else if h.len() >= 2 && h[0] == 0xFF && h[1] & 0xE0 == 0xE0 {
        // An 11-bit frame sync. Layer bits 00 mean ADTS (AAC), any other
        // value an MPEG audio layer (MP3 and kin).
        if (h[1] >> 1) & 0b11 == 0 {
            Some("audio/aac")
        } else {
            Some("audio/mpeg")
        }
    } else {
        None
    }
}

/// `declared`'s `type/subtype`, lowercased, without parameters, if it is
/// well-formed and names a kind of file (see the module doc).
fn plain_media_type(declared: &str) -> Option<String> {
    let essence = declared.split(';').next()?.trim().to_ascii_lowercase();
    let (ty, sub) = essence.split_once('/')?;
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&c))
    };
    let ok = token(ty)
        && token(sub)
        && ty != "multipart"
        && essence != "application/x-www-form-urlencoded"
        && essence.len() <= MEDIA_TYPE_LEN_MAX;
    ok.then_some(essence)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_and_fallbacks() {
        let cases: &[(&[u8], Option<&str>, &str)] = &[
            (b"OggS\0\x02rest", None, "audio/ogg"),
            (b"fLaC\0\0\0\x22", Some("audio/x-flac"), "audio/flac"),
            (b"ID3\x04\0\0", None, "audio/mpeg"),
            (&[0xFF, 0xFB, 0x90, 0x64], None, "audio/mpeg"),
            (&[0xFF, 0xF1, 0x50, 0x80], None, "audio/aac"),
            (b"\0\0\0\x20ftypM4A ", None, "audio/mp4"),
            (b"RIFF\x24\0\0\0WAVEfmt ", None, "audio/wav"),
            (b"RIFF\x24\0\0\0AVI LIST", None, "application/octet-stream"),
            (b"FORM\0\0\0\x10AIFFCOMM", None, "audio/aiff"),
            (b"FORM\0\0\0\x10AIFC", None, "audio/aiff"),
            (b"hello", Some("Audio/Opus; codecs=opus"), "audio/opus"),
            (
                b"hello",
                Some("multipart/form-data; boundary=x"),
                "application/octet-stream",
            ),
            (b"hello", Some("no slash"), "application/octet-stream"),
            (
                b"not audio",
                Some("application/x-www-form-urlencoded"),
                "application/octet-stream",
            ),
            (b"hello", Some("text/plain"), "text/plain"),
            (
                b"hello",
                Some("a/b\r\nX-Evil: 1"),
                "application/octet-stream",
            ),
            (b"hello", Some(""), "application/octet-stream"),
            (b"", None, "application/octet-stream"),
            (b"Og", None, "application/octet-stream"),
            (&[0xFF], None, "application/octet-stream"),
        ];
        for (head, declared, want) in cases {
            assert_eq!(sniff(head, *declared), *want, "{head:?} {declared:?}");
        }
    }

    #[test]
    fn signature_beats_declared_type() {
        assert_eq!(
            sniff(b"OggS", Some("application/octet-stream")),
            "audio/ogg"
        );
        assert_eq!(sniff(b"OggS", Some("audio/mpeg")), "audio/ogg");
    }

    #[test]
    fn overlong_declared_type_is_refused() {
        let long = format!("audio/{}", "x".repeat(200));
        assert_eq!(sniff(b"", Some(&long)), "application/octet-stream");
    }
}
