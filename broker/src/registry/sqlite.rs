//! [`RegistryStore`] on SQLite through sqlx: one file in the data folder, WAL journal, foreign
//! keys on. The SQL is kept portable to PostgreSQL (`$n` parameters, no SQLite-only types).
//! Change-feed wake-ups are an in-process signal: a write through one [`SqliteStore`] (or a
//! clone) wakes its followers; another process's writes are found by polling.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};

use super::credential::{Credential, CredentialSource};
use super::sql::{Keys, audit_row, db, keys_columns, kind_str, parse_kind, sql_store};
use super::store::{AccessFilter, AuditCheckpoint, AuditRow, ConsoleSession};
use super::store::{
    ApplicationPatch, Change, ChangeKind, Deletion, NewApplication, RegistryStore, StoreError,
    StoredWebhook, Wakeups, WebhookAttempt, WebhookState,
};
use super::{AuditEntry, AuditQuery, ClientKeysSpec, StoredApplication, StoredClient};

/// The registry's migrations (`broker/migrations/`), applied by [`SqliteStore::open`].
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The registry in a SQLite file.
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// Bumped after every committed write; [`RegistryStore::wakeups`] streams subscribe to it.
    /// Shared by clones; dropped with the last one, which ends those streams.
    wake: Arc<tokio::sync::watch::Sender<u64>>,
}

impl SqliteStore {
    /// The connection pool (the registry migration reads or writes whole tables).
    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Opens (creating if needed) the database at `path` and applies the migrations in
    /// `broker/migrations/`.
    ///
    /// # Errors
    /// [`StoreError::Database`] when the file cannot be opened or migrated.
    pub async fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let options = SqliteConnectOptions::from_str("sqlite://")
            .map_err(db)?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(db)?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| StoreError::Database(format!("migrations: {e}")))?;
        Ok(SqliteStore {
            pool,
            wake: Arc::new(tokio::sync::watch::channel(0).0),
        })
    }

    /// How many wake-up streams are alive (tests: a follower that stopped holds none).
    #[cfg(test)]
    pub(crate) fn wake_listeners(&self) -> usize {
        self.wake.receiver_count()
    }

    /// The registry's schema version this build writes: the number of its last migration
    /// (`broker/migrations/NNNN_*.sql`). A database migrated by a newer build has a higher
    /// one, and [`SqliteStore::open`] refuses it.
    pub fn schema_version() -> i64 {
        MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
    }

    /// Commits `tx`, then wakes the feed's followers.
    async fn commit(&self, tx: Transaction<'_, Sqlite>) -> Result<(), StoreError> {
        tx.commit().await.map_err(db)?;
        self.wake.send_modify(|n| *n = n.wrapping_add(1));
        Ok(())
    }

    /// Adds the change row of a write, in its transaction. A client's application id is looked
    /// up when not given (the client row must still exist then).
    async fn write_change(
        tx: &mut Transaction<'_, Sqlite>,
        kind: ChangeKind,
        keys: Keys<'_>,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO changes (kind, application_id, client_id, credential_id, at, webhook_id) \
             VALUES ($1, COALESCE($2, (SELECT application_id FROM clients WHERE client_id = $3)), \
                     $3, $4, $5, $6)",
        )
        .bind(kind.as_str())
        .bind(keys.application_id)
        .bind(keys.client_id)
        .bind(keys.credential_id)
        .bind(at_ms)
        .bind(keys.webhook_id)
        .execute(&mut **tx)
        .await
        .map_err(db)?;
        Ok(())
    }

    /// In-process wake-ups (see [`RegistryStore::wakeups`]).
    fn wakeups_stream(&self) -> Wakeups {
        let rx = self.wake.subscribe();
        futures_util::stream::unfold(rx, |mut rx| async move {
            rx.changed().await.ok()?;
            Some(((), rx))
        })
        .boxed()
    }

    /// `VACUUM INTO`: a consistent copy of the file (see [`RegistryStore::copy_to`]).
    async fn copy_file(&self, path: &Path) -> Result<(), StoreError> {
        let target = path.to_str().ok_or_else(|| {
            StoreError::Database(format!("{} is not a UTF-8 path", path.display()))
        })?;
        // One read transaction: the copy is the database as of its start, whatever is written
        // meanwhile (the WAL journal lets writers go on).
        sqlx::query("VACUUM INTO $1")
            .bind(target)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }
}

sql_store!(SqliteStore, Sqlite);

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("connections", &self.pool.size())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EnvironmentKind;
    use serde_json::json;

    /// Fresh SQLite stores, each in its own temporary folder.
    struct SqliteMaker;

    #[async_trait]
    impl crate::registry::conformance::Maker for SqliteMaker {
        async fn make(&self) -> crate::registry::conformance::Made {
            let dir = tempfile::tempdir().unwrap();
            let store = SqliteStore::open(&dir.path().join("r.sqlite"))
                .await
                .unwrap();
            crate::registry::conformance::Made {
                store: Arc::new(store),
                _keep: Box::new(dir),
            }
        }
    }

    crate::registry::conformance::conformance_tests!(SqliteMaker);

    fn entry(action: &str, application_id: &str) -> AuditEntry {
        AuditEntry {
            id: uuid::Uuid::now_v7().to_string(),
            at_ms: 1,
            actor: "tester".to_owned(),
            action: action.to_owned(),
            application_id: Some(application_id.to_owned()),
            client_id: None,
            environment: None,
            detail: json!({}),
        }
    }

    fn client(kind: EnvironmentKind) -> StoredClient {
        StoredClient {
            client_id: uuid::Uuid::new_v4().to_string(),
            kind,
            active: false,
            secret_hash: Some("$argon2id$fake".to_owned()),
            keys: ClientKeysSpec::JwksUri("https://keys.example/jwks.json".to_owned()),
            client_id_header: false,
            granted_scope: None,
            created_at_ms: 1,
            updated_at_ms: 1,
        }
    }

    async fn app(store: &SqliteStore, name: &str) -> StoredApplication {
        let app = StoredApplication {
            id: uuid::Uuid::new_v4().to_string(),
            name: name.to_owned(),
            vendor: "V".to_owned(),
            description: String::new(),
            scope: "subscribe:adt.>".to_owned(),
            created_at_ms: 1,
            updated_at_ms: 1,
            version: 1,
            origin: None,
            record_jws: None,
            retired_at_ms: None,
            owner: None,
            frozen: true,
            frozen_record: None,
            clients: vec![
                client(EnvironmentKind::Production),
                client(EnvironmentKind::NonProduction),
            ],
        };
        store
            .insert_application(
                &NewApplication {
                    application: app.clone(),
                },
                &entry("application.create", &app.id),
            )
            .await
            .unwrap();
        app
    }

    async fn count(store: &SqliteStore, sql: &str, id: &str) -> i64 {
        sqlx::query(sql)
            .bind(id)
            .fetch_one(&store.pool)
            .await
            .unwrap()
            .get(0)
    }

    #[tokio::test]
    async fn delete_is_refused_while_a_client_is_active_and_keeps_the_history() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("r.sqlite"))
            .await
            .unwrap();
        let doomed = app(&store, "Doomed").await;
        let kept = app(&store, "Kept").await;
        let np = &doomed.clients[1].client_id;
        let act = entry("client.activate", &doomed.id);
        assert!(
            store
                .set_active(np, true, "t", "pilot", 2, &act)
                .await
                .unwrap()
        );
        assert_eq!(
            store
                .delete_application(&doomed.id, &entry("application.delete", &doomed.id))
                .await
                .unwrap(),
            Deletion::Active(vec![np.clone()])
        );
        assert_eq!(store.load().await.unwrap().len(), 2, "nothing deleted");
        let deact = entry("client.deactivate", &doomed.id);
        assert!(
            store
                .set_active(np, false, "t", "done", 3, &deact)
                .await
                .unwrap()
        );
        let delete = entry("application.delete", &doomed.id);
        assert_eq!(
            store.delete_application(&doomed.id, &delete).await.unwrap(),
            Deletion::Deleted
        );
        let left = store.load().await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].id, kept.id);
        assert_eq!(
            left[0].clients.len(),
            2,
            "the other application is untouched"
        );
        for c in &doomed.clients {
            let rows = |sql| count(&store, sql, &c.client_id);
            assert_eq!(
                rows("SELECT COUNT(*) FROM clients WHERE client_id = $1").await,
                0
            );
            assert_eq!(
                rows("SELECT COUNT(*) FROM client_credentials WHERE client_id = $1").await,
                0
            );
        }
        assert_eq!(
            count(
                &store,
                "SELECT COUNT(*) FROM activations WHERE client_id = $1",
                np
            )
            .await,
            2,
            "the activation history stays"
        );
        let trail = store
            .audit(&AuditQuery {
                application_id: Some(doomed.id.clone()),
                client_id: None,
                limit: 10,
            })
            .await
            .unwrap();
        assert_eq!(trail[0].action, "application.delete");
        assert_eq!(trail.len(), 4, "create, activate, deactivate, delete");
        assert_eq!(
            store.delete_application(&doomed.id, &delete).await.unwrap(),
            Deletion::NotFound
        );
    }

    #[tokio::test]
    async fn the_activations_migration_keeps_every_row_of_an_older_registry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.sqlite");
        // A registry as the build before migration 0004 left it.
        let old_migrations = dir.path().join("migrations");
        std::fs::create_dir(&old_migrations).unwrap();
        let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        for m in MIGRATOR.iter().filter(|m| m.version < 4) {
            let name = format!("{:04}_{}.sql", m.version, m.description.replace(' ', "_"));
            std::fs::copy(here.join(&name), old_migrations.join(&name)).unwrap();
        }
        let options = SqliteConnectOptions::from_str("sqlite://")
            .unwrap()
            .filename(&path)
            .create_if_missing(true)
            .foreign_keys(true);
        let pool = SqlitePool::connect_with(options).await.unwrap();
        sqlx::migrate::Migrator::new(old_migrations.as_path())
            .await
            .unwrap()
            .run(&pool)
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO applications (id, name, vendor, description, scope, created_at, updated_at) \
             VALUES ('a', 'A', 'V', '', 'subscribe:a', 1, 1)",
        )
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO clients (client_id, application_id, kind, active, created_at, updated_at) \
             VALUES ('c', 'a', 'production', 1, 1, 1)",
        )
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO activations (id, client_id, active, actor, reason, at) \
             VALUES ('x1', 'c', 1, 'admin', 'pilot', 5)",
        )
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;

        let store = SqliteStore::open(&path).await.unwrap();
        let row =
            sqlx::query("SELECT client_id, actor, reason, at FROM activations WHERE id = 'x1'")
                .fetch_one(&store.pool)
                .await
                .unwrap();
        assert_eq!(
            (
                row.get::<String, _>("client_id"),
                row.get::<String, _>("actor"),
                row.get::<String, _>("reason"),
                row.get::<i64, _>("at")
            ),
            ("c".to_owned(), "admin".to_owned(), "pilot".to_owned(), 5)
        );
        // The history no longer depends on the client row.
        sqlx::query("DELETE FROM clients WHERE client_id = 'c'")
            .execute(&store.pool)
            .await
            .unwrap();
        assert_eq!(
            count(
                &store,
                "SELECT COUNT(*) FROM activations WHERE client_id = $1",
                "c"
            )
            .await,
            1
        );
    }

    #[tokio::test]
    async fn a_copy_opens_as_a_registry_with_the_same_rows() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("r.sqlite"))
            .await
            .unwrap();
        let a = app(&store, "Copied").await;
        let copy = dir.path().join("copy.sqlite");
        crate::data_dir::private_file(&copy).unwrap();
        store.copy_to(&copy).await.unwrap();
        // Written after the copy: not in it.
        app(&store, "Later").await;
        let copied = SqliteStore::open(&copy)
            .await
            .unwrap()
            .load()
            .await
            .unwrap();
        assert_eq!(copied.len(), 1);
        assert_eq!(copied[0].id, a.id);
        assert_eq!(copied[0].clients.len(), 2);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&copy).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
    }
}
