//! Files that hold a secret (the agent's bearer token, its TLS key, the coordinator's
//! `token_file`): opened once, and the open file checked, so what is checked is what is read
//! (no window to swap the path between a check and the read). The file must be a regular file
//! owned by this process's effective user, with no access for group or others (as OpenSSH asks
//! of private keys). One checker for the agent and the coordinator.
use std::{
    fs::File,
    io::Read as _,
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::Path,
};

/// A secret file larger than this is not a token or a key.
pub const MAX_SECRET: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The file could not be opened (missing, no permission): not about its protection.
    #[error("{path}: {source}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a regular file")]
    NotFile { path: String },
    #[error("{path} is larger than {MAX_SECRET} bytes")]
    TooLarge { path: String },
    #[error(
        "{path} is owned by uid {owner}, not by the user netfault runs as (uid {euid}): anyone who owns it may read or replace the secret; chown {euid} {path}"
    )]
    Owner { path: String, owner: u32, euid: u32 },
    #[error(
        "{path} is readable or writable by other users (mode {mode:04o}); make it private: chmod 600 {path}"
    )]
    Mode { path: String, mode: u32 },
}

impl SecretError {
    /// Whether the file itself is unfit (type, size, owner, mode), rather than unreachable.
    pub fn is_unprotected(&self) -> bool {
        matches!(
            self,
            Self::NotFile { .. } | Self::TooLarge { .. } | Self::Owner { .. } | Self::Mode { .. }
        )
    }
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Opens `path` once, checks the open file (fstat on its descriptor), and reads it.
pub fn read_private(path: &Path) -> Result<Vec<u8>, SecretError> {
    let shown = || path.display().to_string();
    // O_NONBLOCK: a FIFO in its place must not block the open; it is refused below.
    let mut f = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|source| SecretError::Open {
            path: shown(),
            source,
        })?;
    let meta = f.metadata().map_err(|source| SecretError::Read {
        path: shown(),
        source,
    })?;
    if !meta.is_file() {
        return Err(SecretError::NotFile { path: shown() });
    }
    let euid = euid();
    if meta.uid() != euid {
        return Err(SecretError::Owner {
            path: shown(),
            owner: meta.uid(),
            euid,
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(SecretError::Mode {
            path: shown(),
            mode,
        });
    }
    if meta.len() > MAX_SECRET {
        return Err(SecretError::TooLarge { path: shown() });
    }
    let mut buf = Vec::with_capacity(meta.len() as usize);
    (&mut f)
        .take(MAX_SECRET + 1)
        .read_to_end(&mut buf)
        .map_err(|source| SecretError::Read {
            path: shown(),
            source,
        })?;
    if buf.len() as u64 > MAX_SECRET {
        return Err(SecretError::TooLarge { path: shown() });
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn only_a_private_regular_file_of_ours_is_read() {
        let dir = std::env::temp_dir().join(format!("netfault-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("token");
        std::fs::write(&p, "0123456789abcdef\n").unwrap();
        for (mode, ok) in [(0o600, true), (0o400, true), (0o640, false), (0o604, false)] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            let r = read_private(&p);
            assert_eq!(r.is_ok(), ok, "{mode:o}: {r:?}");
            if let Err(e) = r {
                assert!(matches!(e, SecretError::Mode { .. }), "{e}");
                assert!(e.to_string().contains(&format!("mode 0{mode:o}")), "{e}");
            }
        }
        let e = read_private(&dir).unwrap_err();
        assert!(matches!(e, SecretError::NotFile { .. }), "{e}");
        let e = read_private(&dir.join("none")).unwrap_err();
        assert!(
            matches!(e, SecretError::Open { .. }) && !e.is_unprotected(),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
