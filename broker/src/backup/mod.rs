//! Backups of the data folder, taken while the broker runs, and their restore into the data
//! folder of a stopped broker (README, "Backup, restore and upgrade").
//!
//! A backup is a folder of four files (on the wire, `POST /admin/v1/backup`, one tar stream of
//! them, the manifest first):
//!
//! - `registry.sqlite`: applications, client IDs, credentials (hashes only), activations and
//!   the audit trail, copied by SQLite's `VACUUM INTO` (one read transaction);
//! - `events.redb`: every retained event with its `seq`, byte for byte, in the durable log's
//!   own format, so a restore puts it in place as it is;
//! - `signing-keys.json`: the token signing keys (tokens issued before still verify);
//! - `backup.json`: the [`Manifest`]: versions, the `seq` range, and the size and SHA-256 of
//!   each other file.
//!
//! The registry copy and the log's snapshot are taken while registry changes are held off,
//! so both are of the same instant. Not in a backup: `admin.token` (the credential store in
//! `registry.sqlite` holds every credential's hash, so the credentials of before the backup
//! still work after a restore; the file is only one token in clear, which the operator keeps)
//! and the configuration.
//!
//! - `create`: the broker's side: the copy at one instant, and the tar stream.
//! - here: the manifest, [`unpack`] (`scopecast backup DIR`) and [`restore`]
//!   (`scopecast restore`).

pub(crate) mod create;

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::data_dir::{LOCK_FILE, LockError};
use crate::log::LOG_FORMAT;
use crate::registry::SqliteStore;
use crate::server::{EVENT_LOG_FILE, RECORD_KEYS_FILE, REGISTRY_FILE, SIGNING_KEYS_FILE};

/// The manifest's file name in a backup.
pub const MANIFEST_FILE: &str = "backup.json";
/// What the manifest's `format` member says.
pub const FORMAT: &str = "scopecast-backup";
/// The backup layout this build writes. It reads this one, format 2 (made before the webhook
/// key-encryption key was kept: without `webhooks.kek`) and format 1 (made before the
/// record-signing keys were kept: without [`RECORD_KEYS_FILE`] either).
pub const FORMAT_VERSION: u32 = 3;
/// The files a backup holds besides its manifest, in the order the tar stream carries them.
pub const FILES: [&str; 5] = [
    REGISTRY_FILE,
    EVENT_LOG_FILE,
    SIGNING_KEYS_FILE,
    RECORD_KEYS_FILE,
    crate::webhooks::KEK_FILE,
];

/// The files a backup of `format_version` holds (format 1: the first three; format 2: all
/// but the webhook key-encryption key).
pub fn files_of(format_version: u32) -> &'static [&'static str] {
    match format_version {
        1 => &FILES[..3],
        2 => &FILES[..4],
        _ => &FILES,
    }
}
/// Folders a forced restore moves a data folder's previous files to start with this.
pub const PRE_RESTORE_PREFIX: &str = "pre-restore-";

/// Largest manifest read, in bytes: it is a few hundred.
const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;

/// `backup.json`: what a backup holds and how to check it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// The backup layout, [`FORMAT_VERSION`] when this build made it.
    pub format_version: u32,
    /// The version of the `scopecast` that made it.
    pub broker_version: String,
    /// When the copy was taken (RFC 3339, UTC).
    pub created_at: String,
    /// The registry's schema: the number of its last migration
    /// ([`SqliteStore::schema_version`]).
    pub registry_schema: i64,
    /// The layout of `events.redb` ([`LOG_FORMAT`]).
    pub log_format: u32,
    /// The event log the broker ran with: `durable` or `memory`.
    pub log: String,
    /// The oldest `seq` in `events.redb` (`last_seq + 1` when it holds none).
    pub first_seq: u64,
    /// The newest `seq` in `events.redb`: a restored broker's next event gets `last_seq + 1`.
    pub last_seq: u64,
    /// How many events `events.redb` holds.
    pub events: u64,
    /// The environment of the broker it was taken from.
    pub environment: BackupEnvironment,
    /// Every other file of the backup.
    pub files: Vec<BackupFile>,
}

/// The environment a backup was taken in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupEnvironment {
    /// `production` or `non-production`.
    pub kind: String,
    /// The `environment_name` setting.
    pub name: String,
}

/// One file of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupFile {
    /// Its name in the backup and in the data folder.
    pub name: String,
    /// Its size, in bytes.
    pub bytes: u64,
    /// Lower-case hex SHA-256 of its content.
    pub sha256: String,
}

impl Manifest {
    /// Bytes of the files the manifest lists.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }

    /// Checks that this build can restore it: the format, the versions, and exactly the
    /// files of [`FILES`] listed, once each.
    fn check(&self, path: &Path) -> Result<(), BackupError> {
        let refuse = |message: String| BackupError::Manifest {
            path: path.display().to_string(),
            message,
        };
        if self.format != FORMAT {
            return Err(refuse(format!(
                "`format` is {:?}, not {FORMAT:?}: not a scopecast backup",
                self.format
            )));
        }
        if !(1..=FORMAT_VERSION).contains(&self.format_version) {
            return Err(refuse(format!(
                "backup format {} (made by scopecast {}); this scopecast ({}) reads format {FORMAT_VERSION}: use a scopecast of the backup's version or newer",
                self.format_version,
                self.broker_version,
                env!("CARGO_PKG_VERSION")
            )));
        }
        let schema = SqliteStore::schema_version();
        if self.registry_schema > schema {
            return Err(refuse(format!(
                "its registry has schema {} (scopecast {}), newer than this scopecast's {schema}: restore it with scopecast {} or newer",
                self.registry_schema, self.broker_version, self.broker_version
            )));
        }
        if self.log_format != LOG_FORMAT {
            return Err(refuse(format!(
                "its event log has format {}; this scopecast reads format {LOG_FORMAT}",
                self.log_format
            )));
        }
        let mut names: Vec<&str> = self.files.iter().map(|f| f.name.as_str()).collect();
        names.sort_unstable();
        let mut expected = files_of(self.format_version).to_vec();
        expected.sort_unstable();
        if names != expected {
            return Err(refuse(format!(
                "it lists the files {names:?}; a backup holds exactly {expected:?}"
            )));
        }
        Ok(())
    }

    fn file(&self, name: &str) -> Option<&BackupFile> {
        self.files.iter().find(|f| f.name == name)
    }
}

/// Why a backup could not be taken, received or restored.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// A file or folder could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: String,
        /// The I/O error.
        source: io::Error,
    },
    /// The target folder holds files already; the message says what to do.
    #[error("{0}")]
    NotEmpty(String),
    /// The manifest is missing, unreadable, or of a backup this build cannot restore.
    #[error("{path}: {message}")]
    Manifest {
        /// The manifest's path.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A file of the backup is missing, or differs from the size or SHA-256 the manifest
    /// gives for it.
    #[error("backup file {file} {message}")]
    Damaged {
        /// The file's name.
        file: String,
        /// What is wrong with it.
        message: String,
    },
    /// The tar stream is not a backup (an unexpected entry, a broken stream).
    #[error("the backup stream: {0}")]
    Archive(String),
    /// A broker (or another restore) is using the data folder.
    #[error("{0}")]
    InUse(String),
    /// The broker could not take the copy (registry or event log).
    #[error("taking the copy: {0}")]
    Copy(String),
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Lower-case hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// Copies `from` into `to`, returning the bytes copied and their hex SHA-256.
fn copy_hashing(mut from: impl Read, mut to: impl Write) -> io::Result<(u64, String)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        to.write_all(&buf[..n])?;
        total += n as u64;
    }
    Ok((total, hex(&hasher.finalize())))
}

/// Size and hex SHA-256 of the file at `path`.
fn hash_file(path: &Path) -> Result<(u64, String), BackupError> {
    let file = std::fs::File::open(path).map_err(io_error(path))?;
    copy_hashing(file, io::sink()).map_err(io_error(path))
}

/// Creates `path` for writing, mode 0600; refuses to overwrite.
fn create_private(path: &Path) -> Result<std::fs::File, BackupError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path).map_err(io_error(path))
}

/// Makes `dir` private to its owner (0700).
fn private_dir(dir: &Path) -> Result<(), BackupError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io_error(dir))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Flushes a folder's entries (new and renamed files) to the disk.
fn sync_dir(dir: &Path) -> Result<(), BackupError> {
    #[cfg(unix)]
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

fn read_manifest(bytes: &[u8], path: &Path) -> Result<Manifest, BackupError> {
    let manifest: Manifest = serde_json::from_slice(bytes).map_err(|e| BackupError::Manifest {
        path: path.display().to_string(),
        message: format!("not a backup manifest: {e}"),
    })?;
    manifest.check(path)?;
    Ok(manifest)
}

/// Writes the backup that `reader` streams (a tar stream as `POST /admin/v1/backup` answers
/// it) into the folder `dir`, which must not exist yet or be empty; it is made 0700 and each
/// file 0600. Checks every file's size and SHA-256 against the manifest as it goes: on any
/// failure, the files written are removed again (and `dir`, when this made it).
///
/// # Errors
/// [`BackupError::NotEmpty`] when `dir` holds anything, [`BackupError::Archive`] for an
/// unexpected entry or a broken stream, [`BackupError::Manifest`] or
/// [`BackupError::Damaged`] when the content does not check out, [`BackupError::Io`].
pub fn unpack(reader: impl Read, dir: &Path) -> Result<Manifest, BackupError> {
    let created = if dir.exists() {
        let mut entries = std::fs::read_dir(dir).map_err(io_error(dir))?;
        if entries.next().is_some() {
            return Err(BackupError::NotEmpty(format!(
                "{} is not empty: give a new or empty folder for the backup",
                dir.display()
            )));
        }
        false
    } else {
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        true
    };
    private_dir(dir)?;
    let mut written = Vec::new();
    let result = unpack_into(reader, dir, &mut written);
    if result.is_err() {
        for path in &written {
            let _ = std::fs::remove_file(path);
        }
        if created {
            let _ = std::fs::remove_dir(dir);
        }
    }
    result
}

fn unpack_into(
    reader: impl Read,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> Result<Manifest, BackupError> {
    let archive_error = |e: io::Error| BackupError::Archive(e.to_string());
    let mut archive = tar::Archive::new(reader);
    let mut manifest = None;
    let mut got: BTreeMap<String, (u64, String)> = BTreeMap::new();
    for entry in archive.entries().map_err(archive_error)? {
        let mut entry = entry.map_err(archive_error)?;
        let name = entry
            .path()
            .map_err(archive_error)?
            .to_str()
            .unwrap_or_default()
            .to_owned();
        let known = name == MANIFEST_FILE || FILES.contains(&name.as_str());
        if entry.header().entry_type() != tar::EntryType::Regular || !known {
            return Err(BackupError::Archive(format!(
                "unexpected entry {name:?}: a backup holds {MANIFEST_FILE} and {}",
                FILES.join(", ")
            )));
        }
        let path = dir.join(&name);
        if got.contains_key(&name) || (name == MANIFEST_FILE && manifest.is_some()) {
            return Err(BackupError::Archive(format!("{name} appears twice")));
        }
        if name == MANIFEST_FILE {
            let mut bytes = Vec::new();
            (&mut entry)
                .take(MAX_MANIFEST_BYTES)
                .read_to_end(&mut bytes)
                .map_err(archive_error)?;
            let mut file = create_private(&path)?;
            written.push(path.clone());
            file.write_all(&bytes)
                .and_then(|()| file.sync_all())
                .map_err(io_error(&path))?;
            manifest = Some(read_manifest(&bytes, &path)?);
            continue;
        }
        let mut file = create_private(&path)?;
        written.push(path.clone());
        let (bytes, sha256) = copy_hashing(&mut entry, &mut file).map_err(archive_error)?;
        file.sync_all().map_err(io_error(&path))?;
        got.insert(name, (bytes, sha256));
    }
    let manifest_path = dir.join(MANIFEST_FILE);
    let manifest = manifest.ok_or_else(|| BackupError::Manifest {
        path: manifest_path.display().to_string(),
        message: "the stream holds no manifest: it broke off, or is not a backup".to_owned(),
    })?;
    for expected in &manifest.files {
        let Some((bytes, sha256)) = got.get(&expected.name) else {
            return Err(BackupError::Damaged {
                file: expected.name.clone(),
                message: "is missing from the stream (it broke off)".to_owned(),
            });
        };
        matches(expected, *bytes, sha256)?;
    }
    sync_dir(dir)?;
    Ok(manifest)
}

/// Checks a file's size and hash against its manifest entry.
fn matches(expected: &BackupFile, bytes: u64, sha256: &str) -> Result<(), BackupError> {
    if bytes != expected.bytes || sha256 != expected.sha256 {
        return Err(BackupError::Damaged {
            file: expected.name.clone(),
            message: format!(
                "does not match {MANIFEST_FILE} ({bytes} bytes with SHA-256 {sha256}; the manifest says {} bytes with SHA-256 {}): it was changed or damaged after the backup was made",
                expected.bytes, expected.sha256
            ),
        });
    }
    Ok(())
}

/// What [`restore`] did.
#[derive(Debug, Clone)]
pub struct Restored {
    /// The backup's manifest.
    pub manifest: Manifest,
    /// Where the data folder's previous files went (`--force`), if it had any.
    pub moved_aside: Option<PathBuf>,
}

/// Restores the backup in the folder `backup` into the data folder `data` of a stopped
/// broker: checks the manifest (format and versions), copies each file with mode 0600 while
/// checking its size and SHA-256, and only then puts the files in place. `data` is made (mode
/// 0700) when it does not exist; it must hold nothing but earlier `pre-restore-*` folders,
/// unless `force`, which moves what it holds to `data/pre-restore-<UTC time>/` first.
/// Nothing in `data` changes when a check fails.
///
/// # Errors
/// [`BackupError::InUse`] when a broker runs on `data`, [`BackupError::NotEmpty`] without
/// `force`, [`BackupError::Manifest`] and [`BackupError::Damaged`] naming what does not check
/// out, [`BackupError::Io`].
pub fn restore(backup: &Path, data: &Path, force: bool) -> Result<Restored, BackupError> {
    let manifest_path = backup.join(MANIFEST_FILE);
    let manifest_file = std::fs::File::open(&manifest_path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => BackupError::Manifest {
            path: manifest_path.display().to_string(),
            message: format!(
                "not found: {} is not a backup folder (`scopecast backup DIR` makes one)",
                backup.display()
            ),
        },
        _ => io_error(&manifest_path)(e),
    })?;
    let mut bytes = Vec::new();
    manifest_file
        .take(MAX_MANIFEST_BYTES)
        .read_to_end(&mut bytes)
        .map_err(io_error(&manifest_path))?;
    let manifest = read_manifest(&bytes, &manifest_path)?;

    // What this restore adds besides the backup's files (the folder, the lock file) goes
    // again when it fails, so that a refused restore leaves `data` as it was.
    let made_folder = !data.exists();
    if made_folder {
        std::fs::create_dir_all(data).map_err(io_error(data))?;
        private_dir(data)?;
    }
    let lock_path = data.join(LOCK_FILE);
    let made_lock_file = !lock_path.exists();
    let undo = |lock: Option<std::fs::File>| {
        // Removed while still locked, so no broker takes the file in between.
        if made_lock_file {
            let _ = std::fs::remove_file(&lock_path);
        }
        drop(lock);
        if made_folder {
            // Only when empty: it holds nothing else of this restore by now.
            let _ = std::fs::remove_dir(data);
        }
    };
    // Held to the end: a broker started meanwhile on `data` is refused, and the other way round.
    let lock = match crate::data_dir::lock(data) {
        Ok(lock) => lock,
        Err(e) => {
            // A held lock means the file was there: `undo` leaves it.
            undo(None);
            return Err(match e {
                LockError::Held(_) => BackupError::InUse(format!(
                    "a broker is running on the data folder {} (it holds {}): stop it before restoring",
                    data.display(),
                    lock_path.display()
                )),
                LockError::Io { path, source } => BackupError::Io { path, source },
            });
        }
    };
    match restore_locked(backup, data, force, manifest) {
        Ok(restored) => {
            drop(lock);
            Ok(restored)
        }
        Err(e) => {
            undo(Some(lock));
            Err(e)
        }
    }
}

/// [`restore`] once the data folder `data` exists and is locked.
fn restore_locked(
    backup: &Path,
    data: &Path,
    force: bool,
    manifest: Manifest,
) -> Result<Restored, BackupError> {
    let mut present = Vec::new();
    for entry in std::fs::read_dir(data).map_err(io_error(data))? {
        let name = entry.map_err(io_error(data))?.file_name();
        let text = name.to_string_lossy();
        if text != LOCK_FILE && !text.starts_with(PRE_RESTORE_PREFIX) {
            present.push(name);
        }
    }
    present.sort();
    if !present.is_empty() && !force {
        let names: Vec<_> = present.iter().map(|n| n.to_string_lossy()).collect();
        return Err(BackupError::NotEmpty(format!(
            "the data folder {} is not empty ({}): restore into an empty folder, or pass --force to move what it holds to {}/{PRE_RESTORE_PREFIX}<time>/",
            data.display(),
            names.join(", "),
            data.display()
        )));
    }

    // Copied and checked beside the data folder's files (same file system, so the renames
    // below are atomic); removed with whatever it holds on any failure.
    let staging = tempfile::Builder::new()
        .prefix(".restore-")
        .tempdir_in(data)
        .map_err(io_error(data))?;
    for &name in files_of(manifest.format_version) {
        let expected = manifest.file(name).ok_or_else(|| BackupError::Damaged {
            file: name.to_owned(),
            message: format!("is not listed in {MANIFEST_FILE}"),
        })?;
        let from = backup.join(name);
        let source = std::fs::File::open(&from).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => BackupError::Damaged {
                file: name.to_owned(),
                message: format!("is missing from {}", backup.display()),
            },
            _ => io_error(&from)(e),
        })?;
        let to = staging.path().join(name);
        let mut target = create_private(&to)?;
        let (bytes, sha256) = copy_hashing(source, &mut target).map_err(io_error(&from))?;
        target.sync_all().map_err(io_error(&to))?;
        matches(expected, bytes, &sha256)?;
    }

    let moved_aside = if present.is_empty() {
        None
    } else {
        let aside = pre_restore_folder(data)?;
        for name in &present {
            let from = data.join(name);
            std::fs::rename(&from, aside.join(name)).map_err(io_error(&from))?;
        }
        sync_dir(&aside)?;
        Some(aside)
    };
    for &name in files_of(manifest.format_version) {
        let from = staging.path().join(name);
        std::fs::rename(&from, data.join(name)).map_err(io_error(&from))?;
    }
    sync_dir(data)?;
    Ok(Restored {
        manifest,
        moved_aside,
    })
}

/// Makes `data/pre-restore-<UTC time>/` (0700), with a suffix when two restores share a
/// second.
fn pre_restore_folder(data: &Path) -> Result<PathBuf, BackupError> {
    let stamp = time::OffsetDateTime::now_utc()
        .format(time::macros::format_description!(
            "[year][month][day]T[hour][minute][second]Z"
        ))
        .map_err(|e| BackupError::Io {
            path: data.display().to_string(),
            source: io::Error::other(e),
        })?;
    for n in 1u32..=1000 {
        let name = if n == 1 {
            format!("{PRE_RESTORE_PREFIX}{stamp}")
        } else {
            format!("{PRE_RESTORE_PREFIX}{stamp}-{n}")
        };
        let path = data.join(name);
        let mut builder = std::fs::DirBuilder::new();
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        match builder.create(&path) {
            Ok(()) => return Ok(path),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_error(&path)(e)),
        }
    }
    Err(BackupError::Io {
        path: data.display().to_string(),
        source: io::Error::other("no free pre-restore folder name"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backup folder with made-up content (restore does not parse the files) and a correct
    /// manifest.
    fn backup_folder(dir: &Path) -> Manifest {
        std::fs::create_dir_all(dir).unwrap();
        let mut files = Vec::new();
        for (i, name) in FILES.iter().enumerate() {
            let content = format!("{name} content {i}").repeat(100 * (i + 1));
            std::fs::write(dir.join(name), &content).unwrap();
            let (bytes, sha256) = hash_file(&dir.join(name)).unwrap();
            files.push(BackupFile {
                name: (*name).to_owned(),
                bytes,
                sha256,
            });
        }
        let manifest = Manifest {
            format: FORMAT.to_owned(),
            format_version: FORMAT_VERSION,
            broker_version: "0.1.0".to_owned(),
            created_at: "2026-11-29T10:00:00.000Z".to_owned(),
            registry_schema: SqliteStore::schema_version(),
            log_format: LOG_FORMAT,
            log: "durable".to_owned(),
            first_seq: 1,
            last_seq: 7,
            events: 7,
            environment: BackupEnvironment {
                kind: "non-production".to_owned(),
                name: "default".to_owned(),
            },
            files,
        };
        write_manifest(dir, &manifest);
        manifest
    }

    #[test]
    fn a_format_2_backup_without_the_webhook_key_still_restores() {
        let tmp = tempfile::tempdir().unwrap();
        let backup = tmp.path().join("backup");
        let mut manifest = backup_folder(&backup);
        let kek = crate::webhooks::KEK_FILE;
        std::fs::remove_file(backup.join(kek)).unwrap();
        manifest.format_version = 2;
        manifest.files.retain(|f| f.name != kek);
        write_manifest(&backup, &manifest);
        let data = tmp.path().join("data");
        restore(&backup, &data, false).unwrap();
        assert!(data.join(RECORD_KEYS_FILE).is_file());
        assert!(!data.join(kek).exists());
        // Format 3 must list it.
        manifest.format_version = 3;
        write_manifest(&backup, &manifest);
        let err = restore(&backup, &tmp.path().join("data2"), false).unwrap_err();
        assert!(err.to_string().contains(kek), "{err}");
    }

    #[test]
    fn a_format_1_backup_without_the_record_keys_still_restores() {
        let tmp = tempfile::tempdir().unwrap();
        let backup = tmp.path().join("backup");
        let mut manifest = backup_folder(&backup);
        std::fs::remove_file(backup.join(RECORD_KEYS_FILE)).unwrap();
        std::fs::remove_file(backup.join(crate::webhooks::KEK_FILE)).unwrap();
        manifest.format_version = 1;
        manifest
            .files
            .retain(|f| f.name != RECORD_KEYS_FILE && f.name != crate::webhooks::KEK_FILE);
        write_manifest(&backup, &manifest);
        let data = tmp.path().join("data");
        restore(&backup, &data, false).unwrap();
        assert!(data.join(SIGNING_KEYS_FILE).is_file());
        assert!(!data.join(RECORD_KEYS_FILE).exists());
        // Format 2 must list the record keys.
        manifest.format_version = 2;
        write_manifest(&backup, &manifest);
        let err = restore(&backup, &tmp.path().join("data2"), false).unwrap_err();
        assert!(err.to_string().contains(RECORD_KEYS_FILE), "{err}");
    }

    fn write_manifest(dir: &Path, manifest: &Manifest) {
        std::fs::write(
            dir.join(MANIFEST_FILE),
            serde_json::to_vec_pretty(manifest).unwrap(),
        )
        .unwrap();
    }

    fn tar_of(dir: &Path, names: &[&str]) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        for name in names {
            let mut header = tar::Header::new_gnu();
            let bytes = std::fs::read(dir.join(name)).unwrap();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_entry_type(tar::EntryType::Regular);
            tar.append_data(&mut header, name, bytes.as_slice())
                .unwrap();
        }
        tar.into_inner().unwrap()
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn restore_checks_every_file_and_puts_them_in_place_privately() {
        let tmp = tempfile::tempdir().unwrap();
        let backup = tmp.path().join("backup");
        let manifest = backup_folder(&backup);
        let data = tmp.path().join("data");
        let restored = restore(&backup, &data, false).unwrap();
        assert_eq!(restored.manifest, manifest);
        assert!(restored.moved_aside.is_none());
        let mut expected: Vec<String> = FILES.iter().map(|s| (*s).to_owned()).collect();
        expected.push(LOCK_FILE.to_owned());
        expected.sort();
        assert_eq!(names(&data), expected, "no staging folder left behind");
        for name in FILES {
            assert_eq!(
                std::fs::read(data.join(name)).unwrap(),
                std::fs::read(backup.join(name)).unwrap()
            );
            #[cfg(unix)]
            assert_eq!(mode(&data.join(name)), 0o600, "{name}");
        }
        #[cfg(unix)]
        assert_eq!(mode(&data), 0o700);
    }

    #[test]
    fn a_changed_byte_is_refused_naming_the_file_and_nothing_changes() {
        let tmp = tempfile::tempdir().unwrap();
        let backup = tmp.path().join("backup");
        backup_folder(&backup);
        let target = backup.join(EVENT_LOG_FILE);
        let mut bytes = std::fs::read(&target).unwrap();
        bytes[10] ^= 1;
        std::fs::write(&target, bytes).unwrap();
        let data = tmp.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::create_dir(data.join("pre-restore-20260101T000000Z")).unwrap();
        let err = restore(&backup, &data, true).unwrap_err();
        assert!(
            matches!(&err, BackupError::Damaged { file, .. } if file == EVENT_LOG_FILE),
            "{err}"
        );
        assert!(err.to_string().contains("events.redb"), "{err}");
        assert_eq!(
            names(&data),
            ["pre-restore-20260101T000000Z"],
            "nothing restored, nothing moved, no staging and no lock file left"
        );
    }

    #[test]
    fn a_data_folder_with_files_needs_force_which_moves_them_aside() {
        let tmp = tempfile::tempdir().unwrap();
        let backup = tmp.path().join("backup");
        backup_folder(&backup);
        let data = tmp.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join(REGISTRY_FILE), "old registry").unwrap();
        std::fs::write(data.join("admin.token"), "scc_old").unwrap();
        let err = restore(&backup, &data, false).unwrap_err();
        assert!(matches!(err, BackupError::NotEmpty(_)), "{err}");
        assert!(err.to_string().contains("--force"), "{err}");
        assert!(err.to_string().contains("admin.token"), "{err}");
        assert_eq!(
            std::fs::read_to_string(data.join(REGISTRY_FILE)).unwrap(),
            "old registry"
        );

        let restored = restore(&backup, &data, true).unwrap();
        let aside = restored.moved_aside.unwrap();
        assert!(
            aside
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(PRE_RESTORE_PREFIX)
        );
        assert_eq!(names(&aside), ["admin.token", REGISTRY_FILE]);
        assert_eq!(
            std::fs::read_to_string(aside.join(REGISTRY_FILE)).unwrap(),
            "old registry"
        );
        assert_eq!(
            std::fs::read(data.join(REGISTRY_FILE)).unwrap(),
            std::fs::read(backup.join(REGISTRY_FILE)).unwrap()
        );
        #[cfg(unix)]
        assert_eq!(mode(&aside), 0o700);
        // A second forced restore keeps the first folder of old files where it is.
        let again = restore(&backup, &data, true).unwrap().moved_aside.unwrap();
        assert_ne!(again, aside);
        assert!(aside.is_dir());
        let mut restored_files = FILES.to_vec();
        restored_files.sort_unstable();
        assert_eq!(names(&again), restored_files);
    }

    #[test]
    fn restore_is_refused_while_the_data_folder_is_locked() {
        let tmp = tempfile::tempdir().unwrap();
        let backup = tmp.path().join("backup");
        backup_folder(&backup);
        let data = tmp.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let held = crate::data_dir::lock(&data).unwrap();
        let err = restore(&backup, &data, true).unwrap_err();
        assert!(matches!(err, BackupError::InUse(_)), "{err}");
        assert!(err.to_string().contains("stop it"), "{err}");
        drop(held);
        restore(&backup, &data, true).unwrap();
    }

    #[test]
    fn a_refused_restore_leaves_no_lock_file_and_no_folder_it_made() {
        let tmp = tempfile::tempdir().unwrap();
        let backup = tmp.path().join("backup");
        backup_folder(&backup);
        let keys = backup.join(SIGNING_KEYS_FILE);
        let mut bytes = std::fs::read(&keys).unwrap();
        bytes[0] ^= 0x20;
        std::fs::write(&keys, bytes).unwrap();
        // A folder the restore made goes again.
        let new = tmp.path().join("new");
        let err = restore(&backup, &new, false).unwrap_err();
        assert!(matches!(err, BackupError::Damaged { .. }), "{err}");
        assert!(!new.exists(), "the folder it made is gone");
        // An existing empty folder stays, empty: no broker.lock, no staging folder.
        let empty = tmp.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        restore(&backup, &empty, false).unwrap_err();
        assert!(names(&empty).is_empty(), "{:?}", names(&empty));
        // A folder with files, refused without --force, keeps exactly its files.
        let full = tmp.path().join("full");
        std::fs::create_dir(&full).unwrap();
        std::fs::write(full.join("registry.sqlite"), "x").unwrap();
        let err = restore(&backup, &full, false).unwrap_err();
        assert!(matches!(err, BackupError::NotEmpty(_)), "{err}");
        assert_eq!(names(&full), ["registry.sqlite"]);
        // A lock file that was there before stays.
        std::fs::write(full.join(LOCK_FILE), "").unwrap();
        restore(&backup, &full, true).unwrap_err();
        assert_eq!(names(&full), [LOCK_FILE, "registry.sqlite"]);
    }

    #[test]
    fn backups_of_a_newer_format_or_schema_and_odd_file_lists_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let backup = tmp.path().join("backup");
        let good = backup_folder(&backup);
        let data = tmp.path().join("data");
        let cases: Vec<(Manifest, &str)> = vec![
            (
                Manifest {
                    format_version: FORMAT_VERSION + 1,
                    ..good.clone()
                },
                "backup format",
            ),
            (
                Manifest {
                    registry_schema: SqliteStore::schema_version() + 1,
                    ..good.clone()
                },
                "newer than this scopecast",
            ),
            (
                Manifest {
                    log_format: LOG_FORMAT + 1,
                    ..good.clone()
                },
                "event log has format",
            ),
            (
                Manifest {
                    files: good.files[..2].to_vec(),
                    ..good.clone()
                },
                "a backup holds exactly",
            ),
            (
                Manifest {
                    files: {
                        let mut f = good.files.clone();
                        f[0].name = "../escape".to_owned();
                        f
                    },
                    ..good.clone()
                },
                "a backup holds exactly",
            ),
            (
                Manifest {
                    format: "something else".to_owned(),
                    ..good.clone()
                },
                "not a scopecast backup",
            ),
        ];
        for (manifest, says) in cases {
            write_manifest(&backup, &manifest);
            let err = restore(&backup, &data, false).unwrap_err();
            assert!(matches!(err, BackupError::Manifest { .. }), "{err}");
            assert!(err.to_string().contains(says), "{err} should say {says:?}");
        }
        assert!(!data.exists(), "refused before the data folder was made");
    }

    #[test]
    fn unpack_writes_a_checked_private_copy() {
        let tmp = tempfile::tempdir().unwrap();
        let source = tmp.path().join("source");
        let manifest = backup_folder(&source);
        let mut order = vec![MANIFEST_FILE];
        order.extend(FILES);
        let stream = tar_of(&source, &order);
        let out = tmp.path().join("out");
        assert_eq!(unpack(stream.as_slice(), &out).unwrap(), manifest);
        for name in &order {
            assert_eq!(
                std::fs::read(out.join(name)).unwrap(),
                std::fs::read(source.join(name)).unwrap()
            );
            #[cfg(unix)]
            assert_eq!(mode(&out.join(name)), 0o600, "{name}");
        }
        #[cfg(unix)]
        assert_eq!(mode(&out), 0o700);
        // The unpacked folder restores.
        restore(&out, &tmp.path().join("data"), false).unwrap();
        // Not into a folder that holds anything.
        let err = unpack(stream.as_slice(), &out).unwrap_err();
        assert!(matches!(err, BackupError::NotEmpty(_)), "{err}");
    }

    #[test]
    fn unpack_refuses_damage_and_strangers_and_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let source = tmp.path().join("source");
        backup_folder(&source);
        let mut order = vec![MANIFEST_FILE];
        order.extend(FILES);

        // One byte changed in a file on the way.
        let damaged = tmp.path().join("damaged");
        std::fs::create_dir(&damaged).unwrap();
        for name in &order {
            std::fs::copy(source.join(name), damaged.join(name)).unwrap();
        }
        let keys = damaged.join(SIGNING_KEYS_FILE);
        let mut bytes = std::fs::read(&keys).unwrap();
        bytes[0] ^= 0x20;
        std::fs::write(&keys, bytes).unwrap();
        let out = tmp.path().join("out");
        let err = unpack(tar_of(&damaged, &order).as_slice(), &out).unwrap_err();
        assert!(
            matches!(&err, BackupError::Damaged { file, .. } if file == SIGNING_KEYS_FILE),
            "{err}"
        );
        assert!(!out.exists(), "the folder it made is gone again");

        // A stream that broke off after the manifest and the registry.
        let err = unpack(tar_of(&source, &order[..2]).as_slice(), &out).unwrap_err();
        assert!(
            matches!(&err, BackupError::Damaged { file, .. } if file == EVENT_LOG_FILE),
            "{err}"
        );
        // A stream cut in the middle of an entry.
        let full = tar_of(&source, &order);
        let err = unpack(&full[..full.len() / 2], &out).unwrap_err();
        assert!(
            matches!(err, BackupError::Archive(_) | BackupError::Damaged { .. }),
            "{err}"
        );

        // An entry that is not part of a backup.
        std::fs::write(source.join("evil.sh"), "rm -rf /").unwrap();
        let mut strange = order.clone();
        strange.push("evil.sh");
        let empty = tmp.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        let err = unpack(tar_of(&source, &strange).as_slice(), &empty).unwrap_err();
        assert!(matches!(err, BackupError::Archive(_)), "{err}");
        assert!(err.to_string().contains("evil.sh"), "{err}");
        assert!(empty.is_dir(), "a folder it did not make stays");
        assert!(names(&empty).is_empty(), "and is empty again");
    }
}
