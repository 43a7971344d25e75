//! The admin and ingest tokens: read from files, accepted as `Authorization: Bearer <t>` or
//! `Ferry-Token: <t>` (the API server's pod proxy consumes `Authorization`). A transport on a
//! pool's worker has an ingest token of its own: the worker knows only its SHA-256
//! ([`TokenHash`]), given with the transport's PUT and kept on the volume.

use std::path::Path;

use axum::http::HeaderMap;

#[derive(Debug, thiserror::Error)]
#[error("cannot read the {what} token from {path}: {reason}")]
pub struct TokenError {
    what: &'static str,
    path: String,
    reason: String,
}

/// A required token; `None` in a [`Tokens`] field means that route is open (standalone on
/// loopback).
#[derive(Clone)]
pub struct Token(String);

impl Token {
    pub fn read(what: &'static str, path: &Path) -> Result<Self, TokenError> {
        let err = |reason: String| TokenError {
            what,
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let token = text.trim();
        if token.is_empty() {
            return Err(err("the file is empty".into()));
        }
        Ok(Self(token.to_owned()))
    }

    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    /// The token itself, for a client of this worker (standalone's connections).
    pub fn secret(&self) -> &str {
        &self.0
    }

    /// Constant-time comparison: the time taken does not tell how much of a guess matched.
    fn matches(&self, given: &str) -> bool {
        same_bytes(self.0.as_bytes(), given.as_bytes())
    }
}

/// Constant-time equality of two byte strings (their lengths aside).
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The SHA-256 of a resource's own token: what a worker keeps of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenHash([u8; 32]);

/// `ingestTokenSha256` is not 64 hexadecimal digits.
#[derive(Debug, thiserror::Error)]
#[error("ingestTokenSha256: must be the SHA-256 of the token as 64 hexadecimal digits")]
pub struct NotAHash;

impl TokenHash {
    /// The hash of `token` (what the operator sends).
    pub fn of(token: &str) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, token.trim().as_bytes());
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(digest.as_ref());
        Self(bytes)
    }

    pub fn from_hex(hex: &str) -> Result<Self, NotAHash> {
        if hex.len() != 64 || !hex.is_ascii() {
            return Err(NotAHash);
        }
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| NotAHash)?;
        }
        Ok(Self(bytes))
    }

    pub fn to_hex(self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Whether the request carries the token this is the hash of.
    pub fn allows(&self, headers: &HeaderMap) -> bool {
        given(headers).is_some_and(|g| same_bytes(&Self::of(g).0, &self.0))
    }
}

#[derive(Clone, Default)]
pub struct Tokens {
    pub admin: Option<Token>,
    pub ingest: Option<Token>,
    /// A pool's worker: a transport takes transactions only with a token of its own (its
    /// hash, given with its PUT), never with the worker's `ingest` token, so one team's
    /// producers never reach another's transport on the same worker.
    pub own_ingest_only: bool,
}

impl Tokens {
    /// The tokens in these files; a route whose file is not given is open.
    pub fn read(admin: Option<&Path>, ingest: Option<&Path>) -> Result<Self, TokenError> {
        Ok(Self {
            admin: admin.map(|p| Token::read("admin", p)).transpose()?,
            ingest: ingest.map(|p| Token::read("ingest", p)).transpose()?,
            own_ingest_only: false,
        })
    }

    /// Whether a request may post to a transport whose own token hash is `own` (if any).
    pub fn ingest_allowed(&self, own: Option<TokenHash>, headers: &HeaderMap) -> bool {
        match own {
            Some(own) => own.allows(headers),
            None if self.own_ingest_only => false,
            None => allowed(self.ingest.as_ref(), headers),
        }
    }
}

/// Whether the request carries `token` (or no token is required).
pub fn allowed(token: Option<&Token>, headers: &HeaderMap) -> bool {
    let Some(token) = token else { return true };
    given(headers).is_some_and(|g| token.matches(g))
}

/// The token a request carries, `Ferry-Token` first.
fn given(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(crate::wire::TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            headers
                .get(axum::http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
        })
        .map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_or_ferry_token() {
        let token = Token::new("s3cret");
        let mut h = HeaderMap::new();
        assert!(!allowed(Some(&token), &h));
        h.insert("authorization", "Bearer s3cret".parse().unwrap());
        assert!(allowed(Some(&token), &h));
        let mut h = HeaderMap::new();
        h.insert("ferry-token", "s3cret".parse().unwrap());
        assert!(allowed(Some(&token), &h));
        h.insert("ferry-token", "s3cre".parse().unwrap());
        assert!(!allowed(Some(&token), &h));
        assert!(allowed(None, &HeaderMap::new()));
    }

    #[test]
    fn a_resource_token_is_checked_by_its_hash() {
        let hash = TokenHash::of("own");
        assert_eq!(TokenHash::from_hex(&hash.to_hex()).unwrap(), hash);
        // The SHA-256 of "own", as `printf own | sha256sum` prints it.
        assert_eq!(
            hash.to_hex(),
            "5b3975651c3cab92d044c096dc30a1c2d9525497457472de48c51ecb363d1f4a"
        );
        let mut h = HeaderMap::new();
        assert!(!hash.allows(&h));
        h.insert("authorization", "Bearer own".parse().unwrap());
        assert!(hash.allows(&h));
        h.insert("ferry-token", "other".parse().unwrap());
        assert!(!hash.allows(&h), "Ferry-Token is read first");
        for bad in ["", "ab", &"g".repeat(64), &"é".repeat(32), &"0".repeat(65)] {
            assert!(TokenHash::from_hex(bad).is_err(), "{bad}");
        }
    }
}
