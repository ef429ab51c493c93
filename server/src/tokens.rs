//! Bearer tokens: an admin token and a creator token.
//!
//! On first start [`Tokens::load_or_create`] draws two random 32-byte tokens,
//! writes them in plain text to `<data_dir>/tokens.toml` (mode 0600, created
//! atomically: temp file, fsync, rename, directory fsync) and commits only
//! their blake3 hashes to the metadata store (keyspace `auth`). Later starts
//! load the hashes; the file is for the operator and is never read back.
//!
//! **Invariant:** a presented token is hashed and compared with the stored
//! hash in constant time (`blake3::Hash`'s `PartialEq`), so response timing
//! does not reveal how much of a guess was right. Plain tokens never reach the
//! store or the log.

use std::io::Write;
use std::path::Path;

use http::header::{HeaderMap, AUTHORIZATION};
use spindle_engine::meta::{Batch, MetaStore};

use crate::error::ApiError;

/// Keyspace holding the token hashes.
pub const AUTH_KEYSPACE: &str = "auth";
const ADMIN_KEY: &[u8] = b"admin_token_blake3";
const CREATOR_KEY: &[u8] = b"creator_token_blake3";

/// Who a token belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything, including `/v1/admin/*`.
    Admin,
    /// Uploads and deletes.
    Creator,
}

/// Failures setting tokens up.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot draw random bytes for a token: {0}")]
    Random(String),
    #[error("cannot write the token file {path}: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("metadata store: {0}")]
    Meta(#[from] spindle_engine::meta::Error),
    #[error("stored token hash {key} is corrupt ({len} bytes, expected 32)")]
    CorruptHash { key: String, len: usize },
}

/// The hashes of the two tokens.
#[derive(Debug, Clone)]
pub struct Tokens {
    admin: blake3::Hash,
    creator: blake3::Hash,
}

/// Plain tokens, only ever held right after they were created.
#[derive(Debug, Clone)]
pub struct NewTokens {
    pub admin: String,
    pub creator: String,
}

fn random_token() -> Result<String, TokenError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| TokenError::Random(e.to_string()))?;
    Ok(hex(&bytes))
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn hash_token(token: &str) -> blake3::Hash {
    blake3::hash(token.as_bytes())
}

impl Tokens {
    /// Loads the token hashes, or creates both tokens on first start (see the
    /// module doc). Returns the plain tokens only when it created them.
    pub fn load_or_create(
        meta: &MetaStore,
        tokens_path: &Path,
    ) -> Result<(Tokens, Option<NewTokens>), TokenError> {
        let admin = meta.get(AUTH_KEYSPACE, ADMIN_KEY)?;
        let creator = meta.get(AUTH_KEYSPACE, CREATOR_KEY)?;
        if let (Some(admin), Some(creator)) = (admin, creator) {
            let parse = |key: &[u8], v: &[u8]| -> Result<blake3::Hash, TokenError> {
                let arr: [u8; 32] = v.try_into().map_err(|_| TokenError::CorruptHash {
                    key: String::from_utf8_lossy(key).into_owned(),
                    len: v.len(),
                })?;
                Ok(blake3::Hash::from(arr))
            };
            let tokens = Tokens {
                admin: parse(ADMIN_KEY, &admin)?,
                creator: parse(CREATOR_KEY, &creator)?,
            };
            return Ok((tokens, None));
        }
        let new = NewTokens {
            admin: random_token()?,
            creator: random_token()?,
        };
        // File first: if we crash before the commit, the next start makes
        // new tokens and overwrites the file, so the file never names tokens
        // the store does not accept.
        write_token_file(tokens_path, &new).map_err(|source| TokenError::File {
            path: tokens_path.display().to_string(),
            source,
        })?;
        let tokens = Tokens {
            admin: hash_token(&new.admin),
            creator: hash_token(&new.creator),
        };
        let mut batch = Batch::new();
        batch.put(AUTH_KEYSPACE, ADMIN_KEY, tokens.admin.as_bytes());
        batch.put(AUTH_KEYSPACE, CREATOR_KEY, tokens.creator.as_bytes());
        meta.commit(batch)?;
        Ok((tokens, Some(new)))
    }

    /// Tokens from known plain values (tests).
    pub fn from_plain(admin: &str, creator: &str) -> Tokens {
        Tokens {
            admin: hash_token(admin),
            creator: hash_token(creator),
        }
    }

    /// The role of the bearer token in `headers`, if it is one of ours and
    /// its role is among `allowed` (the admin token is always allowed).
    /// 401 when there is no bearer token or one this server never issued,
    /// 403 when a valid token does not grant this route.
    pub fn authorize(&self, headers: &HeaderMap, allowed: &[Role]) -> Result<Role, ApiError> {
        let value = headers.get(AUTHORIZATION).ok_or(ApiError::Unauthorized)?;
        let value = value.to_str().map_err(|_| ApiError::Unauthorized)?;
        let (scheme, token) = value.split_once(' ').ok_or(ApiError::Unauthorized)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(ApiError::Unauthorized);
        }
        let presented = hash_token(token.trim());
        // Both comparisons always run, so timing does not tell which matched.
        let is_admin = presented == self.admin;
        let is_creator = presented == self.creator;
        let role = if is_admin {
            Role::Admin
        } else if is_creator {
            Role::Creator
        } else {
            return Err(ApiError::InvalidToken);
        };
        if role == Role::Admin || allowed.contains(&role) {
            Ok(role)
        } else {
            Err(ApiError::Forbidden)
        }
    }
}

/// Writes `tokens` to `path` as TOML, readable by the owner alone, atomically.
pub fn write_token_file(path: &Path, tokens: &NewTokens) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("toml.tmp");
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    let text = format!(
        "# spindle's API tokens. Keep this file secret; the server stores only hashes.\n\
         # Send them as `Authorization: Bearer <token>`.\n\
         admin = \"{}\"\n\
         creator = \"{}\"\n",
        tokens.admin, tokens.creator
    );
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use std::os::unix::fs::PermissionsExt;

    fn headers(auth: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = auth {
            h.insert(AUTHORIZATION, HeaderValue::from_str(a).unwrap());
        }
        h
    }

    #[test]
    fn token_file_is_owner_only_and_parses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        let new = NewTokens {
            admin: "a".repeat(64),
            creator: "c".repeat(64),
        };
        write_token_file(&path, &new).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let parsed: toml::Table = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(parsed["admin"].as_str().unwrap(), new.admin);
        assert_eq!(parsed["creator"].as_str().unwrap(), new.creator);
        assert!(!dir.path().join("tokens.toml.tmp").exists());
        // Rewriting replaces the file and keeps the mode.
        write_token_file(&path, &new).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn random_tokens_are_distinct_hex() {
        let a = random_token().unwrap();
        let b = random_token().unwrap();
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn authorize_distinguishes_missing_wrong_and_roles() {
        let t = Tokens::from_plain("adm", "cre");
        let creator_routes = [Role::Creator];
        let admin_routes: [Role; 0] = [];
        assert!(matches!(
            t.authorize(&headers(None), &creator_routes),
            Err(ApiError::Unauthorized)
        ));
        assert!(matches!(
            t.authorize(&headers(Some("Basic abc")), &creator_routes),
            Err(ApiError::Unauthorized)
        ));
        assert!(matches!(
            t.authorize(&headers(Some("Bearer nope")), &creator_routes),
            Err(ApiError::InvalidToken)
        ));
        assert_eq!(
            t.authorize(&headers(Some("Bearer cre")), &creator_routes)
                .unwrap(),
            Role::Creator
        );
        assert_eq!(
            t.authorize(&headers(Some("bearer adm")), &creator_routes)
                .unwrap(),
            Role::Admin
        );
        assert!(matches!(
            t.authorize(&headers(Some("Bearer cre")), &admin_routes),
            Err(ApiError::Forbidden)
        ));
        assert_eq!(
            t.authorize(&headers(Some("Bearer adm")), &admin_routes)
                .unwrap(),
            Role::Admin
        );
    }
}
