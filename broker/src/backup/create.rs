//! The broker's side of a backup (`POST /admin/v1/backup`): [`take`] copies the registry and
//! the event log at one instant into a private temporary folder inside the data folder, with
//! the signing keys and the manifest; [`write_tar`] then sends that folder as a tar stream.
//! The folder goes when the [`Taken`] is dropped: after the stream, or on any failure.

use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;

use scopecast_protocol::Timestamp;

use super::{
    BackupEnvironment, BackupError, BackupFile, FILES, FORMAT, FORMAT_VERSION, MANIFEST_FILE,
    Manifest, hash_file, io_error,
};
use crate::auth::keys::KeyRing;
use crate::config::{Config, LogMode};
use crate::log::{EventLog, LOG_FORMAT};
use crate::registry::{Registry, SqliteStore};
use crate::server::{
    EVENT_LOG_FILE, RECORD_KEYS_FILE, REGISTRY_FILE, SIGNING_KEYS_FILE, write_private,
};

/// What a backup is taken from.
pub(crate) struct Sources<'a> {
    /// The broker's configuration: the data folder, the environment, the log mode.
    pub(crate) config: &'a Config,
    /// The registry.
    pub(crate) registry: &'a Registry,
    /// The event log.
    pub(crate) log: &'a Arc<dyn EventLog>,
    /// The signing keys.
    pub(crate) keys: &'a KeyRing,
    /// The record-signing keys (a catalog's).
    pub(crate) records: &'a crate::catalog::RecordSigner,
}

/// A backup ready to send: its files in a temporary folder of the data folder, removed when
/// this is dropped.
pub(crate) struct Taken {
    /// The manifest, as written to `backup.json`.
    pub(crate) manifest: Manifest,
    dir: tempfile::TempDir,
}

/// Takes a backup: the registry copy (`VACUUM INTO`) and the event log's snapshot while
/// registry changes are held off, so both are of one instant; then the log's events are
/// written out (changes go on meanwhile), the signing keys and the manifest beside them.
///
/// # Errors
/// [`BackupError::Copy`] when the registry or the log cannot be copied,
/// [`BackupError::Io`] when a file cannot be written (a full disk).
pub(crate) async fn take(sources: Sources<'_>) -> Result<Taken, BackupError> {
    let data_dir = &sources.config.data_dir;
    // 0700, inside the data folder: on the same file system, private like the data itself.
    let dir = tempfile::Builder::new()
        .prefix(".backup-")
        .tempdir_in(data_dir)
        .map_err(io_error(data_dir))?;
    let registry_path = dir.path().join(REGISTRY_FILE);
    // Made empty with mode 0600 first: `VACUUM INTO` writes into an empty file and keeps
    // its mode.
    crate::data_dir::private_file(&registry_path).map_err(io_error(&registry_path))?;
    let log = sources.log.clone();
    let keys = sources.keys.clone();
    let records = sources.records.clone();
    let (snapshot, key_file, record_file) = sources
        .registry
        .copy_to(&registry_path, move || {
            (log.snapshot(), keys.file_bytes(), records.file_bytes())
        })
        .await
        .map_err(|e| BackupError::Copy(format!("the registry: {e}")))?;
    let snapshot = snapshot.map_err(|e| BackupError::Copy(e.to_string()))?;
    let key_file = key_file.map_err(|e| BackupError::Copy(e.to_string()))?;
    let record_file = record_file.map_err(|e| BackupError::Copy(e.to_string()))?;

    let created_at = Timestamp::now();
    let folder = dir.path().to_owned();
    let config = sources.config;
    let environment = BackupEnvironment {
        kind: config.environment.as_str().to_owned(),
        name: config.environment_name.clone(),
    };
    let log_mode = match config.log {
        LogMode::Durable => "durable",
        LogMode::Memory => "memory",
    };
    let kek_source = data_dir.join(crate::webhooks::KEK_FILE);
    let manifest = tokio::task::spawn_blocking(move || -> Result<Manifest, BackupError> {
        let range = snapshot
            .write_to(&folder.join(EVENT_LOG_FILE))
            .map_err(|e| BackupError::Copy(e.to_string()))?;
        let keys_path = folder.join(SIGNING_KEYS_FILE);
        write_private(&keys_path, &key_file).map_err(io_error(&keys_path))?;
        let records_path = folder.join(RECORD_KEYS_FILE);
        write_private(&records_path, &record_file).map_err(io_error(&records_path))?;
        // The key that seals the webhook endpoints' secrets in the registry copy.
        let kek = std::fs::read(&kek_source).map_err(io_error(&kek_source))?;
        let kek_path = folder.join(crate::webhooks::KEK_FILE);
        write_private(&kek_path, &kek).map_err(io_error(&kek_path))?;
        let mut files = Vec::new();
        for name in FILES {
            let (bytes, sha256) = hash_file(&folder.join(name))?;
            files.push(BackupFile {
                name: name.to_owned(),
                bytes,
                sha256,
            });
        }
        let manifest = Manifest {
            format: FORMAT.to_owned(),
            format_version: FORMAT_VERSION,
            broker_version: env!("CARGO_PKG_VERSION").to_owned(),
            created_at: created_at.to_string(),
            registry_schema: SqliteStore::schema_version(),
            log_format: LOG_FORMAT,
            log: log_mode.to_owned(),
            first_seq: range.first_seq,
            last_seq: range.last_seq,
            events: range.events,
            environment,
            files,
        };
        let text = serde_json::to_vec_pretty(&manifest).map_err(|e| BackupError::Io {
            path: MANIFEST_FILE.to_owned(),
            source: io::Error::other(e),
        })?;
        let manifest_path = folder.join(MANIFEST_FILE);
        write_private(&manifest_path, &text).map_err(io_error(&manifest_path))?;
        Ok(manifest)
    })
    .await
    .map_err(|e| BackupError::Copy(format!("the copy task failed: {e}")))??;
    Ok(Taken { manifest, dir })
}

/// Writes `taken` to `out` as a tar stream: `backup.json` first, then the files in the order
/// of [`FILES`], each a regular file of mode 0600. Blocking: call it on a blocking thread.
///
/// # Errors
/// The I/O error of reading a file or of `out` (the receiver went away).
pub(crate) fn write_tar(taken: &Taken, out: impl Write) -> io::Result<()> {
    let mtime = Timestamp::now().unix_nanos() / 1_000_000_000;
    let mut tar = tar::Builder::new(out);
    for name in std::iter::once(MANIFEST_FILE).chain(FILES) {
        append(&mut tar, &taken.dir.path().join(name), name, mtime as u64)?;
    }
    tar.into_inner()?.flush()
}

fn append(
    tar: &mut tar::Builder<impl Write>,
    path: &Path,
    name: &str,
    mtime: u64,
) -> io::Result<()> {
    let file = std::fs::File::open(path)?;
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(file.metadata()?.len());
    header.set_mode(0o600);
    header.set_mtime(mtime);
    tar.append_data(&mut header, name, file)
}
