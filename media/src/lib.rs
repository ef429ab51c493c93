//! spindle-media: turns uploaded audio bytes into three Ogg Vorbis tiers,
//! tags, cover art and loudness. Knows codecs; knows no HTTP and no storage.
