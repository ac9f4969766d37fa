//! What netfault needs to be allowed to do.
use super::{Error, Result};

pub fn check_privileges() -> Result<()> {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Error::Privileges("run it as root (e.g. with sudo)".into()));
    }
    Ok(())
}
