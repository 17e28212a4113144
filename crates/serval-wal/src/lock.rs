//! One live process per write-ahead directory: an advisory lock on a file inside it, released
//! by the operating system when the process dies, so a survivor can tell a dead owner's
//! directory (lock free) from a live one's.

use std::fs::File;
use std::path::Path;

use crate::error::WalError;

/// The lock file inside a locked directory.
pub const LOCK_FILE: &str = "LOCK";

/// A held directory lock; dropping it releases the directory.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Takes the lock of `dir` (which must exist): `None` when a live process holds it.
    pub fn try_acquire(dir: &Path) -> Result<Option<DirLock>, WalError> {
        let path = dir.join(LOCK_FILE);
        let file = File::create(&path).map_err(|e| WalError::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(DirLock { _file: file })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(WalError::io(&path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_refuses_a_second_owner_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = DirLock::try_acquire(dir.path()).unwrap();
        assert!(first.is_some());
        assert!(DirLock::try_acquire(dir.path()).unwrap().is_none());
        drop(first);
        assert!(DirLock::try_acquire(dir.path()).unwrap().is_some());
    }
}
