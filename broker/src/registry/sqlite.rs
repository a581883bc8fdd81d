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
use super::store::{
    ApplicationPatch, Change, ChangeKind, Deletion, NewApplication, RegistryStore, StoreError,
    Wakeups,
};
use super::{AuditEntry, AuditQuery, ClientKeysSpec, StoredApplication, StoredClient};
use crate::config::EnvironmentKind;

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

/// The keys a change row names.
#[derive(Default)]
struct Keys<'a> {
    application_id: Option<&'a str>,
    client_id: Option<&'a str>,
    credential_id: Option<&'a str>,
}

fn db(e: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(d) = &e
        && d.is_unique_violation()
    {
        return StoreError::Conflict(format!("already exists: {}", d.message()));
    }
    StoreError::Database(e.to_string())
}

fn kind_str(kind: EnvironmentKind) -> &'static str {
    kind.as_str()
}

fn parse_kind(s: &str) -> Result<EnvironmentKind, StoreError> {
    match s {
        "production" => Ok(EnvironmentKind::Production),
        "non-production" => Ok(EnvironmentKind::NonProduction),
        other => Err(StoreError::Database(format!(
            "unknown client kind {other:?}"
        ))),
    }
}

impl SqliteStore {
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
            "INSERT INTO changes (kind, application_id, client_id, credential_id, at) \
             VALUES ($1, COALESCE($2, (SELECT application_id FROM clients WHERE client_id = $3)), \
                     $3, $4, $5)",
        )
        .bind(kind.as_str())
        .bind(keys.application_id)
        .bind(keys.client_id)
        .bind(keys.credential_id)
        .bind(at_ms)
        .execute(&mut **tx)
        .await
        .map_err(db)?;
        Ok(())
    }

    /// Applications (one, or every one when `id` is `None`) with their clients.
    async fn load_where(&self, id: Option<&str>) -> Result<Vec<StoredApplication>, StoreError> {
        // One read transaction, so the applications and the clients are of the same instant.
        let mut tx = self.pool.begin().await.map_err(db)?;
        let apps = sqlx::query(
            "SELECT id, name, vendor, description, scope, created_at, updated_at, version, origin, \
                    record_jws, retired_at, owner, frozen, frozen_record FROM applications \
             WHERE ($1 IS NULL OR id = $1)",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        let clients = sqlx::query(
            "SELECT c.client_id, c.application_id, c.kind, c.active, c.client_id_header, c.created_at, c.updated_at, c.granted_scope, \
                    k.secret_hash, k.jwks, k.jwks_uri \
             FROM clients c LEFT JOIN client_credentials k ON k.client_id = c.client_id \
             WHERE ($1 IS NULL OR c.application_id = $1)",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        let mut out: Vec<StoredApplication> = apps
            .iter()
            .map(|r| StoredApplication {
                id: r.get("id"),
                name: r.get("name"),
                vendor: r.get("vendor"),
                description: r.get("description"),
                scope: r.get("scope"),
                created_at_ms: r.get("created_at"),
                updated_at_ms: r.get("updated_at"),
                version: r.get::<i64, _>("version").max(1) as u64,
                origin: r.get("origin"),
                record_jws: r.get("record_jws"),
                retired_at_ms: r.get("retired_at"),
                owner: r.get("owner"),
                frozen: r.get::<i64, _>("frozen") == 1,
                frozen_record: r.get("frozen_record"),
                clients: Vec::new(),
            })
            .collect();
        let index: std::collections::HashMap<String, usize> = out
            .iter()
            .enumerate()
            .map(|(i, a)| (a.id.clone(), i))
            .collect();
        for r in clients {
            let app_id: String = r.get("application_id");
            let jwks: Option<String> = r.get("jwks");
            let jwks_uri: Option<String> = r.get("jwks_uri");
            let keys = match (jwks, jwks_uri) {
                (Some(j), _) => ClientKeysSpec::Jwks(
                    serde_json::from_str(&j)
                        .map_err(|e| StoreError::Database(format!("stored jwks: {e}")))?,
                ),
                (None, Some(u)) => ClientKeysSpec::JwksUri(u),
                (None, None) => ClientKeysSpec::None,
            };
            let active: i64 = r.get("active");
            let client_id_header: i64 = r.get("client_id_header");
            let client = StoredClient {
                client_id: r.get("client_id"),
                kind: parse_kind(r.get::<&str, _>("kind"))?,
                active: active == 1,
                secret_hash: r.get("secret_hash"),
                keys,
                client_id_header: client_id_header == 1,
                granted_scope: r.get("granted_scope"),
                created_at_ms: r.get("created_at"),
                updated_at_ms: r.get("updated_at"),
            };
            if let Some(&i) = index.get(&app_id) {
                out[i].clients.push(client);
            }
        }
        for app in &mut out {
            app.clients
                .sort_by_key(|c| c.kind != EnvironmentKind::Production);
        }
        Ok(out)
    }

    /// The rows of a new application: it, its two clients and their credentials.
    async fn insert_rows(
        tx: &mut Transaction<'_, Sqlite>,
        app: &StoredApplication,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO applications (id, name, vendor, description, scope, created_at, updated_at, \
             version, origin, record_jws, retired_at, owner, frozen, frozen_record) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        )
        .bind(&app.id)
        .bind(&app.name)
        .bind(&app.vendor)
        .bind(&app.description)
        .bind(&app.scope)
        .bind(app.created_at_ms)
        .bind(app.updated_at_ms)
        .bind(app.version as i64)
        .bind(&app.origin)
        .bind(&app.record_jws)
        .bind(app.retired_at_ms)
        .bind(&app.owner)
        .bind(i64::from(app.frozen))
        .bind(&app.frozen_record)
        .execute(&mut **tx)
        .await
        .map_err(|e| match db(e) {
            StoreError::Conflict(_) => StoreError::Conflict(format!("an application named {:?} already exists", app.name)),
            other => other,
        })?;
        for c in &app.clients {
            sqlx::query(
                "INSERT INTO clients (client_id, application_id, kind, active, created_at, updated_at, granted_scope) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(&c.client_id)
            .bind(&app.id)
            .bind(kind_str(c.kind))
            .bind(i64::from(c.active))
            .bind(c.created_at_ms)
            .bind(c.updated_at_ms)
            .bind(&c.granted_scope)
            .execute(&mut **tx)
            .await
            .map_err(db)?;
            let (jwks, jwks_uri) = keys_columns(&c.keys);
            sqlx::query(
                "INSERT INTO client_credentials (client_id, secret_hash, jwks, jwks_uri, updated_at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(&c.client_id)
            .bind(&c.secret_hash)
            .bind(jwks)
            .bind(jwks_uri)
            .bind(c.updated_at_ms)
            .execute(&mut **tx)
            .await
            .map_err(db)?;
        }
        Ok(())
    }

    async fn write_audit(
        tx: &mut Transaction<'_, Sqlite>,
        a: &AuditEntry,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit_log (id, at, actor, action, application_id, client_id, detail, environment) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&a.id)
        .bind(a.at_ms)
        .bind(&a.actor)
        .bind(&a.action)
        .bind(&a.application_id)
        .bind(&a.client_id)
        .bind(a.detail.to_string())
        .bind(&a.environment)
        .execute(&mut **tx)
        .await
        .map_err(db)?;
        Ok(())
    }
}

fn keys_columns(keys: &ClientKeysSpec) -> (Option<String>, Option<String>) {
    match keys {
        ClientKeysSpec::None => (None, None),
        ClientKeysSpec::Jwks(v) => (Some(v.to_string()), None),
        ClientKeysSpec::JwksUri(u) => (None, Some(u.clone())),
    }
}

#[async_trait]
impl RegistryStore for SqliteStore {
    async fn load(&self) -> Result<Vec<StoredApplication>, StoreError> {
        self.load_where(None).await
    }

    async fn load_application(&self, id: &str) -> Result<Option<StoredApplication>, StoreError> {
        Ok(self.load_where(Some(id)).await?.pop())
    }

    async fn changes_after(&self, cursor: u64, limit: usize) -> Result<Vec<Change>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, kind, application_id, client_id, credential_id, at FROM changes \
             WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(i64::try_from(cursor).unwrap_or(i64::MAX))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        Ok(rows
            .iter()
            .map(|r| Change {
                id: r.get::<i64, _>("id") as u64,
                kind: ChangeKind::parse(r.get("kind")),
                application_id: r.get("application_id"),
                client_id: r.get("client_id"),
                credential_id: r.get("credential_id"),
                at_ms: r.get("at"),
            })
            .collect())
    }

    async fn latest_change(&self) -> Result<u64, StoreError> {
        let id: i64 = sqlx::query("SELECT COALESCE(MAX(id), 0) FROM changes")
            .fetch_one(&self.pool)
            .await
            .map_err(db)?
            .get(0);
        Ok(id as u64)
    }

    fn wakeups(&self) -> Wakeups {
        let rx = self.wake.subscribe();
        futures_util::stream::unfold(rx, |mut rx| async move {
            rx.changed().await.ok()?;
            Some(((), rx))
        })
        .boxed()
    }

    async fn insert_application(
        &self,
        new: &NewApplication,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        let app = &new.application;
        let mut tx = self.pool.begin().await.map_err(db)?;
        Self::insert_rows(&mut tx, app).await?;
        Self::write_change(
            &mut tx,
            ChangeKind::ApplicationCreated,
            Keys {
                application_id: Some(&app.id),
                ..Keys::default()
            },
            audit.at_ms,
        )
        .await?;
        Self::write_audit(&mut tx, audit).await?;
        self.commit(tx).await
    }

    async fn update_application(
        &self,
        id: &str,
        patch: &ApplicationPatch,
        at_ms: i64,
        audit: &AuditEntry,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        let done = sqlx::query(
            "UPDATE applications SET name = COALESCE($2, name), vendor = COALESCE($3, vendor), \
             description = COALESCE($4, description), scope = COALESCE($5, scope), updated_at = $6, \
             version = COALESCE($7, version + 1), frozen = COALESCE($8, frozen), \
             frozen_record = COALESCE($9, frozen_record) WHERE id = $1",
        )
        .bind(id)
        .bind(&patch.name)
        .bind(&patch.vendor)
        .bind(&patch.description)
        .bind(&patch.scope)
        .bind(at_ms)
        .bind(patch.version.map(|v| v as i64))
        .bind(patch.frozen.map(i64::from))
        .bind(&patch.frozen_record)
        .execute(&mut *tx)
        .await
        .map_err(|e| match db(e) {
            StoreError::Conflict(_) => StoreError::Conflict(format!(
                "an application named {:?} already exists",
                patch.name.as_deref().unwrap_or_default()
            )),
            other => other,
        })?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        let kind = if patch.scope.is_some() {
            ChangeKind::CeilingChanged
        } else {
            ChangeKind::ApplicationUpdated
        };
        Self::write_change(
            &mut tx,
            kind,
            Keys {
                application_id: Some(id),
                ..Keys::default()
            },
            audit.at_ms,
        )
        .await?;
        Self::write_audit(&mut tx, audit).await?;
        self.commit(tx).await?;
        Ok(true)
    }

    async fn set_secret_hash(
        &self,
        client_id: &str,
        hash: &str,
        at_ms: i64,
        audit: &AuditEntry,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        let done = sqlx::query(
            "UPDATE client_credentials SET secret_hash = $2, updated_at = $3 WHERE client_id = $1",
        )
        .bind(client_id)
        .bind(hash)
        .bind(at_ms)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query("UPDATE clients SET updated_at = $2 WHERE client_id = $1")
            .bind(client_id)
            .bind(at_ms)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        Self::write_change(
            &mut tx,
            ChangeKind::SecretChanged,
            Keys {
                client_id: Some(client_id),
                ..Keys::default()
            },
            audit.at_ms,
        )
        .await?;
        Self::write_audit(&mut tx, audit).await?;
        self.commit(tx).await?;
        Ok(true)
    }

    async fn set_keys(
        &self,
        client_id: &str,
        keys: &ClientKeysSpec,
        at_ms: i64,
        audit: &AuditEntry,
    ) -> Result<bool, StoreError> {
        let (jwks, jwks_uri) = keys_columns(keys);
        let mut tx = self.pool.begin().await.map_err(db)?;
        let done = sqlx::query("UPDATE client_credentials SET jwks = $2, jwks_uri = $3, updated_at = $4 WHERE client_id = $1")
            .bind(client_id)
            .bind(jwks)
            .bind(jwks_uri)
            .bind(at_ms)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query("UPDATE clients SET updated_at = $2 WHERE client_id = $1")
            .bind(client_id)
            .bind(at_ms)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        Self::write_change(
            &mut tx,
            ChangeKind::KeysChanged,
            Keys {
                client_id: Some(client_id),
                ..Keys::default()
            },
            audit.at_ms,
        )
        .await?;
        Self::write_audit(&mut tx, audit).await?;
        self.commit(tx).await?;
        Ok(true)
    }

    async fn set_active(
        &self,
        client_id: &str,
        active: bool,
        actor: &str,
        reason: &str,
        at_ms: i64,
        audit: &AuditEntry,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        // The first activation here grants what the record asks for then; a later widening
        // of the record waits for `approve` (RegistryStore::set_grant).
        let done = sqlx::query(
            "UPDATE clients SET active = $2, updated_at = $3, \
                         granted_scope = CASE WHEN $2 = 1 THEN COALESCE(granted_scope, \
                           (SELECT scope FROM applications a WHERE a.id = clients.application_id)) \
                         ELSE granted_scope END \
                         WHERE client_id = $1",
        )
        .bind(client_id)
        .bind(i64::from(active))
        .bind(at_ms)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query("INSERT INTO activations (id, client_id, active, actor, reason, at) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(uuid::Uuid::now_v7().to_string())
            .bind(client_id)
            .bind(i64::from(active))
            .bind(actor)
            .bind(reason)
            .bind(at_ms)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        let kind = if active {
            ChangeKind::ClientActivated
        } else {
            ChangeKind::ClientDeactivated
        };
        Self::write_change(
            &mut tx,
            kind,
            Keys {
                client_id: Some(client_id),
                ..Keys::default()
            },
            audit.at_ms,
        )
        .await?;
        Self::write_audit(&mut tx, audit).await?;
        self.commit(tx).await?;
        Ok(true)
    }

    async fn set_client_id_header(
        &self,
        client_id: &str,
        enabled: bool,
        at_ms: i64,
        audit: &AuditEntry,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        let done = sqlx::query(
            "UPDATE clients SET client_id_header = $2, updated_at = $3 WHERE client_id = $1",
        )
        .bind(client_id)
        .bind(i64::from(enabled))
        .bind(at_ms)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        Self::write_change(
            &mut tx,
            ChangeKind::ClientIdHeaderChanged,
            Keys {
                client_id: Some(client_id),
                ..Keys::default()
            },
            audit.at_ms,
        )
        .await?;
        Self::write_audit(&mut tx, audit).await?;
        self.commit(tx).await?;
        Ok(true)
    }

    async fn set_grant(
        &self,
        client_id: &str,
        grant: &str,
        at_ms: i64,
        audit: &AuditEntry,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        let done = sqlx::query(
            "UPDATE clients SET granted_scope = $2, updated_at = $3 WHERE client_id = $1",
        )
        .bind(client_id)
        .bind(grant)
        .bind(at_ms)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        Self::write_change(
            &mut tx,
            ChangeKind::GrantChanged,
            Keys {
                client_id: Some(client_id),
                ..Keys::default()
            },
            audit.at_ms,
        )
        .await?;
        Self::write_audit(&mut tx, audit).await?;
        self.commit(tx).await?;
        Ok(true)
    }

    async fn put_record(
        &self,
        app: &StoredApplication,
        insert: bool,
        deactivate: &[String],
        actor: &str,
        reason: &str,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        if insert {
            // A new record: the same rows as a new application, then its change.
            let mut tx = self.pool.begin().await.map_err(db)?;
            Self::insert_rows(&mut tx, app).await?;
            Self::write_change(
                &mut tx,
                ChangeKind::RecordPut,
                Keys {
                    application_id: Some(&app.id),
                    ..Keys::default()
                },
                audit.at_ms,
            )
            .await?;
            Self::write_audit(&mut tx, audit).await?;
            return self.commit(tx).await;
        }
        let mut tx = self.pool.begin().await.map_err(db)?;
        let done = sqlx::query(
            "UPDATE applications SET name = $2, vendor = $3, description = $4, scope = $5, \
             updated_at = $6, version = $7, origin = $8, record_jws = $9, retired_at = $10, \
             frozen = $11, frozen_record = $12 WHERE id = $1",
        )
        .bind(&app.id)
        .bind(&app.name)
        .bind(&app.vendor)
        .bind(&app.description)
        .bind(&app.scope)
        .bind(app.updated_at_ms)
        .bind(app.version as i64)
        .bind(&app.origin)
        .bind(&app.record_jws)
        .bind(app.retired_at_ms)
        .bind(i64::from(app.frozen))
        .bind(&app.frozen_record)
        .execute(&mut *tx)
        .await
        .map_err(|e| match db(e) {
            StoreError::Conflict(_) => StoreError::Conflict(format!(
                "an application named {:?} already exists",
                app.name
            )),
            other => other,
        })?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Database(format!(
                "application {} vanished during the write",
                app.id
            )));
        }
        for c in &app.clients {
            let (jwks, jwks_uri) = keys_columns(&c.keys);
            sqlx::query(
                "UPDATE client_credentials SET jwks = $2, jwks_uri = $3, updated_at = $4 \
                 WHERE client_id = $1",
            )
            .bind(&c.client_id)
            .bind(jwks)
            .bind(jwks_uri)
            .bind(app.updated_at_ms)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        }
        Self::write_change(
            &mut tx,
            ChangeKind::RecordPut,
            Keys {
                application_id: Some(&app.id),
                ..Keys::default()
            },
            audit.at_ms,
        )
        .await?;
        for client_id in deactivate {
            sqlx::query("UPDATE clients SET active = 0, updated_at = $2 WHERE client_id = $1")
                .bind(client_id)
                .bind(app.updated_at_ms)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            sqlx::query("INSERT INTO activations (id, client_id, active, actor, reason, at) VALUES ($1, $2, 0, $3, $4, $5)")
                .bind(uuid::Uuid::now_v7().to_string())
                .bind(client_id)
                .bind(actor)
                .bind(reason)
                .bind(app.updated_at_ms)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            Self::write_change(
                &mut tx,
                ChangeKind::ClientDeactivated,
                Keys {
                    client_id: Some(client_id),
                    ..Keys::default()
                },
                audit.at_ms,
            )
            .await?;
        }
        Self::write_audit(&mut tx, audit).await?;
        self.commit(tx).await
    }

    async fn delete_application(
        &self,
        id: &str,
        audit: &AuditEntry,
    ) -> Result<Deletion, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        let exists = sqlx::query("SELECT id FROM applications WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
        if exists.is_none() {
            return Ok(Deletion::NotFound);
        }
        let active: Vec<String> = sqlx::query(
            "SELECT client_id FROM clients WHERE application_id = $1 AND active = 1 \
             ORDER BY kind",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?
        .iter()
        .map(|r| r.get("client_id"))
        .collect();
        if !active.is_empty() {
            return Ok(Deletion::Active(active));
        }
        sqlx::query(
            "DELETE FROM client_credentials WHERE client_id IN \
             (SELECT client_id FROM clients WHERE application_id = $1)",
        )
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        sqlx::query("DELETE FROM clients WHERE application_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        sqlx::query("DELETE FROM applications WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        Self::write_change(
            &mut tx,
            ChangeKind::ApplicationDeleted,
            Keys {
                application_id: Some(id),
                ..Keys::default()
            },
            audit.at_ms,
        )
        .await?;
        Self::write_audit(&mut tx, audit).await?;
        self.commit(tx).await?;
        Ok(Deletion::Deleted)
    }

    async fn copy_to(&self, path: &Path) -> Result<(), StoreError> {
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

    async fn append_audit(&self, audit: &AuditEntry) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        Self::write_audit(&mut tx, audit).await?;
        tx.commit().await.map_err(db)
    }

    async fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, at, actor, action, application_id, client_id, detail, environment FROM audit_log \
             WHERE ($1 IS NULL OR application_id = $1) AND ($2 IS NULL OR client_id = $2) \
             ORDER BY id DESC LIMIT $3",
        )
        .bind(&query.application_id)
        .bind(&query.client_id)
        .bind(i64::from(query.limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter()
            .map(|r| {
                let detail: String = r.get("detail");
                Ok(AuditEntry {
                    id: r.get("id"),
                    at_ms: r.get("at"),
                    actor: r.get("actor"),
                    action: r.get("action"),
                    application_id: r.get("application_id"),
                    client_id: r.get("client_id"),
                    environment: r.get("environment"),
                    detail: serde_json::from_str(&detail)
                        .map_err(|e| StoreError::Database(format!("audit detail: {e}")))?,
                })
            })
            .collect()
    }

    async fn load_credentials(&self) -> Result<Vec<Credential>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, name, role, token_hash, created_at, created_by, revoked_at, revoked_by \
             FROM credentials",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter()
            .map(|r| {
                let role: String = r.get("role");
                Ok(Credential {
                    id: r.get("id"),
                    name: r.get("name"),
                    role: role
                        .parse()
                        .map_err(|e: String| StoreError::Database(format!("credential: {e}")))?,
                    token_hash: r.get("token_hash"),
                    created_at_ms: r.get("created_at"),
                    created_by: r.get("created_by"),
                    revoked_at_ms: r.get("revoked_at"),
                    revoked_by: r.get("revoked_by"),
                    source: CredentialSource::Store,
                })
            })
            .collect()
    }

    async fn insert_credential(
        &self,
        c: &Credential,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        sqlx::query(
            "INSERT INTO credentials (id, name, role, token_hash, created_at, created_by) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&c.id)
        .bind(&c.name)
        .bind(c.role.as_str())
        .bind(&c.token_hash)
        .bind(c.created_at_ms)
        .bind(&c.created_by)
        .execute(&mut *tx)
        .await
        .map_err(|e| match db(e) {
            StoreError::Conflict(_) => {
                StoreError::Conflict(format!("a credential named {:?} already exists", c.name))
            }
            other => other,
        })?;
        Self::write_change(
            &mut tx,
            ChangeKind::CredentialCreated,
            Keys {
                credential_id: Some(&c.id),
                ..Keys::default()
            },
            audit.at_ms,
        )
        .await?;
        Self::write_audit(&mut tx, audit).await?;
        self.commit(tx).await
    }

    async fn revoke_credential(
        &self,
        id: &str,
        at_ms: i64,
        by: &str,
        audit: &AuditEntry,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        let done = sqlx::query(
            "UPDATE credentials SET revoked_at = $2, revoked_by = $3 \
             WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(id)
        .bind(at_ms)
        .bind(by)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        Self::write_change(
            &mut tx,
            ChangeKind::CredentialRevoked,
            Keys {
                credential_id: Some(id),
                ..Keys::default()
            },
            audit.at_ms,
        )
        .await?;
        Self::write_audit(&mut tx, audit).await?;
        self.commit(tx).await?;
        Ok(true)
    }
}

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
