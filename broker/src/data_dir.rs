//! The data folder: made 0700 when the broker creates it, and every file the broker keeps in it
//! (registry, event log, signing keys, admin credential) readable by the service alone (0600),
//! whatever the folder's own mode (systemd's `StateDirectory=` and packages make 0755 folders).
//! A folder that others can enter is reported at start, not changed: it is the operator's.

use std::io;
use std::path::Path;

/// Creates `dir` (mode 0700) on first start, or checks an existing one; a folder with group or
/// other permissions is logged as a warning naming the fix.
///
/// # Errors
/// The I/O error when the folder cannot be created, or a file of that name is in the way.
pub(crate) fn prepare(dir: &Path) -> io::Result<()> {
    if !dir.exists() {
        std::fs::create_dir_all(dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        tracing::info!(path = %dir.display(), "created data folder (mode 0700)");
        return Ok(());
    }
    if !dir.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "exists and is not a folder",
        ));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %dir.display(),
                mode = %format!("{mode:04o}"),
                "the data folder can be entered by other users; its files are 0600, but run `chmod 700 {}` (or StateDirectoryMode=0700)",
                dir.display()
            );
        }
    }
    Ok(())
}

/// Makes `path` readable and writable by the service alone: creates it empty with mode 0600
/// when it does not exist yet (so SQLite's `-wal` and `-shm` files, which copy the database
/// file's mode, and redb, which initialises an empty file, start private), or takes away group
/// and other permissions from an existing file.
///
/// # Errors
/// The I/O error.
pub(crate) fn private_file(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        match std::fs::metadata(path) {
            Ok(meta) => {
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o700))?;
                    tracing::info!(path = %path.display(), was = %format!("{mode:04o}"), "made a data file private (0600)");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)?;
            }
            Err(e) => return Err(e),
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// [`private_file`] for a file that exists only sometimes (SQLite's `-wal` and `-shm`).
///
/// # Errors
/// The I/O error.
pub(crate) fn private_if_present(path: &Path) -> io::Result<()> {
    if path.exists() {
        private_file(path)?;
    }
    Ok(())
}

/// The file whose lock (an exclusive advisory lock, `flock`) says that a process uses the
/// data folder: a running broker, or a restore into it. The OS lets the lock go when the
/// process ends, however it ends, so a stale file never blocks anyone.
pub const LOCK_FILE: &str = "broker.lock";

/// Why [`lock`] failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LockError {
    /// Another process holds the lock.
    #[error(
        "another process uses the data folder {0} (a running `scopecast serve`, or a restore): it holds {0}/broker.lock"
    )]
    Held(String),
    /// The lock file could not be made or locked.
    #[error("locking {path}: {source}")]
    Io {
        /// The lock file.
        path: String,
        /// The I/O error.
        source: io::Error,
    },
}

/// Takes the data folder `dir` (which must exist) for this process: creates
/// [`LOCK_FILE`] (mode 0600) if needed and locks it without waiting. The lock lasts as long as
/// the returned file is open.
///
/// # Errors
/// [`LockError::Held`] when another process holds it, [`LockError::Io`] otherwise.
pub(crate) fn lock(dir: &Path) -> Result<std::fs::File, LockError> {
    let path = dir.join(LOCK_FILE);
    let wrap = |source| LockError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let file = options.open(&path).map_err(wrap)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(LockError::Held(dir.display().to_string())),
        Err(std::fs::TryLockError::Error(e)) => Err(wrap(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_folder_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock(dir.path()).unwrap();
        assert!(matches!(lock(dir.path()), Err(LockError::Held(_))));
        drop(first);
        lock(dir.path()).unwrap();
    }
}
