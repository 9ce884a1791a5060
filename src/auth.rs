//! The API token: created on first start, kept 0600 in the state dir, checked in
//! constant time.
//!
//! Comparison hashes both sides with SHA-256 and compares the digests with a
//! branch-free fold, so neither the token's length nor its prefix leaks through
//! response timing.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::random;

/// Name of the token file inside the state directory.
const TOKEN_FILE: &str = "token";

/// The secret every request must carry in `X-Auth-Token`.
#[derive(Clone)]
pub struct Token {
    secret: String,
    digest: [u8; 32],
}

impl Token {
    pub fn new(secret: String) -> Self {
        let digest = Sha256::digest(secret.as_bytes()).into();
        Self { secret, digest }
    }

    /// The configured token, else the stored one, else a new one (stored 0600).
    pub fn load_or_create(config: &Config) -> Result<Self> {
        if let Some(secret) = &config.server.token {
            return Ok(Self::new(secret.clone()));
        }
        let dir = config.state_dir();
        let path = dir.join(TOKEN_FILE);
        match fs::read_to_string(&path) {
            Ok(text) if !text.trim().is_empty() => Ok(Self::new(text.trim().to_string())),
            Ok(_) => bail!(
                "token file {} is empty; delete it to get a new token",
                path.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let secret = random::hex(32); // 256 bits
                write_private(&dir, &path, &secret)?;
                Ok(Self::new(secret))
            }
            Err(e) => Err(e).with_context(|| format!("reading token file {}", path.display())),
        }
    }

    /// True when `candidate` is the token; constant time in the candidate's content.
    pub fn matches(&self, candidate: &str) -> bool {
        let other: [u8; 32] = Sha256::digest(candidate.as_bytes()).into();
        self.digest
            .iter()
            .zip(other.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }

    /// The token itself, for `code-interpreter token`.
    pub fn reveal(&self) -> &str {
        &self.secret
    }
}

/// Writes `content` to `path` with mode 0600 atomically (temp file + rename).
fn write_private(dir: &Path, path: &Path, content: &str) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating state directory {}", dir.display()))?;
    let tmp = dir.join(format!(".{TOKEN_FILE}.{}", random::hex(4)));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(content.as_bytes())
        .and_then(|_| file.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    // Another process may have won the race: keep its token so both agree.
    if path.exists() {
        let _ = fs::remove_file(&tmp);
        return Ok(());
    }
    fs::rename(&tmp, path).with_context(|| format!("storing token at {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn matches_only_the_exact_token() {
        let token = Token::new("s3cret-token-value".into());
        assert!(token.matches("s3cret-token-value"));
        assert!(!token.matches("s3cret-token-valu"));
        assert!(!token.matches(""));
    }

    #[test]
    fn created_once_stored_private_and_reused() {
        let dir = std::env::temp_dir().join(format!("ci-auth-test-{}", random::hex(6)));
        let mut config = Config::default();
        config.paths.state_dir = Some(dir.clone());
        let first = Token::load_or_create(&config).unwrap();
        let second = Token::load_or_create(&config).unwrap();
        assert_eq!(first.reveal(), second.reveal());
        assert_eq!(first.reveal().len(), 64);
        let mode = fs::metadata(dir.join(TOKEN_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        fs::remove_dir_all(dir).unwrap();
    }
}
