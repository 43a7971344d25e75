//! The admin and ingest tokens: read from files, accepted as `Authorization: Bearer <t>` or
//! `Ferry-Token: <t>` (the API server's pod proxy consumes `Authorization`).

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
        let (a, b) = (self.0.as_bytes(), given.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

#[derive(Clone, Default)]
pub struct Tokens {
    pub admin: Option<Token>,
    pub ingest: Option<Token>,
}

impl Tokens {
    /// The tokens in these files; a route whose file is not given is open.
    pub fn read(admin: Option<&Path>, ingest: Option<&Path>) -> Result<Self, TokenError> {
        Ok(Self {
            admin: admin.map(|p| Token::read("admin", p)).transpose()?,
            ingest: ingest.map(|p| Token::read("ingest", p)).transpose()?,
        })
    }
}

/// Whether the request carries `token` (or no token is required).
pub fn allowed(token: Option<&Token>, headers: &HeaderMap) -> bool {
    let Some(token) = token else { return true };
    let given = headers
        .get(crate::wire::TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            headers
                .get(axum::http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
        });
    given.is_some_and(|g| token.matches(g.trim()))
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
}
