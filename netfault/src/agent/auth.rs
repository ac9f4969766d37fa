//! The bearer token: read from a file only its owner may read, compared in constant time.
use std::path::Path;

use subtle::ConstantTimeEq as _;

use crate::{
    cluster::transport::{
        agent::{AgentError, read_token},
        secret::read_private,
    },
    spec::SpecError,
};

/// Shorter tokens are refused: a guessable token is no authentication.
pub const MIN_TOKEN_LEN: usize = 16;

/// The token requests must carry.
pub struct Token(Vec<u8>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

/// Reads a key or token file, opened once: a regular file owned by this process's user, that
/// no one else may read or write (as OpenSSH asks of private keys). Otherwise bad input,
/// naming `field` and the file.
pub fn read_private_file(field: &str, path: &Path) -> Result<Vec<u8>, SpecError> {
    read_private(path).map_err(|e| SpecError::new(field, e.to_string()))
}

impl Token {
    /// Reads the token file (`--token-file`): private to this process's user, at least
    /// [`MIN_TOKEN_LEN`] characters once white space around it is trimmed.
    pub fn load(path: &Path) -> Result<Self, SpecError> {
        let field = "--token-file";
        let t = read_token(path).map_err(|e| match e {
            // The checker's own message names the file.
            AgentError::Secret(s) => SpecError::new(field, s.to_string()),
            e => SpecError::new(field, e.to_string()),
        })?;
        if t.len() < MIN_TOKEN_LEN {
            return Err(SpecError::new(
                field,
                format!(
                    "the token in {} is {} characters long; use at least {MIN_TOKEN_LEN} (e.g. `openssl rand -hex 32`)",
                    path.display(),
                    t.len()
                ),
            ));
        }
        Ok(Self(t.into_bytes()))
    }

    /// Whether an `Authorization` header value is `Bearer <this token>`. The comparison takes
    /// the same time wherever the first difference is.
    pub fn matches(&self, header: Option<&[u8]>) -> bool {
        let Some(h) = header else { return false };
        if h.len() < 7 || !h[..7].eq_ignore_ascii_case(b"bearer ") {
            return false;
        }
        let given = h[7..].trim_ascii();
        let n = given.len().max(self.0.len());
        let pad = |v: &[u8]| {
            let mut p = v.to_vec();
            p.resize(n, 0);
            p
        };
        let same_len = (given.len() as u64).ct_eq(&(self.0.len() as u64));
        bool::from(pad(given).ct_eq(&pad(&self.0)) & same_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_token_matches() {
        let t = Token(b"0123456789abcdef".to_vec());
        assert!(t.matches(Some(b"Bearer 0123456789abcdef")));
        assert!(t.matches(Some(b"bearer 0123456789abcdef")));
        for bad in [
            &b"Bearer 0123456789abcdeF"[..],
            b"Bearer 0123456789abcde",
            b"Bearer 0123456789abcdef0",
            b"Bearer ",
            b"Basic 0123456789abcdef",
            b"0123456789abcdef",
            b"",
        ] {
            assert!(!t.matches(Some(bad)), "{}", String::from_utf8_lossy(bad));
        }
        assert!(!t.matches(None));
    }
}
