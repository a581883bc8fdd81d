//! [`RegistryStore`] on SQLite through sqlx: one file in the data folder, WAL journal, foreign
//! keys on. The SQL is kept portable to PostgreSQL (`$n` parameters, no SQLite-only types).

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};

use super::credential::{Credential, CredentialSource};
use super::store::{ApplicationPatch, NewApplication, RegistryStore, StoreError};
use super::{AuditEntry, AuditQuery, ClientKeysSpec, StoredApplication, StoredClient};
use crate::config::EnvironmentKind;

/// The registry in a SQLite file.
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
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
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .map_err(|e| StoreError::Database(format!("migrations: {e}")))?;
        Ok(SqliteStore { pool })
    }

    async fn write_audit(
        tx: &mut Transaction<'_, Sqlite>,
        a: &AuditEntry,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit_log (id, at, actor, action, application_id, client_id, detail) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&a.id)
        .bind(a.at_ms)
        .bind(&a.actor)
        .bind(&a.action)
        .bind(&a.application_id)
        .bind(&a.client_id)
        .bind(a.detail.to_string())
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
        let apps = sqlx::query(
            "SELECT id, name, vendor, description, scope, created_at, updated_at FROM applications",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        let clients = sqlx::query(
            "SELECT c.client_id, c.application_id, c.kind, c.active, c.client_id_header, c.created_at, c.updated_at, \
                    k.secret_hash, k.jwks, k.jwks_uri \
             FROM clients c LEFT JOIN client_credentials k ON k.client_id = c.client_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
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

    async fn insert_application(
        &self,
        new: &NewApplication,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        let app = &new.application;
        let mut tx = self.pool.begin().await.map_err(db)?;
        sqlx::query(
            "INSERT INTO applications (id, name, vendor, description, scope, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&app.id)
        .bind(&app.name)
        .bind(&app.vendor)
        .bind(&app.description)
        .bind(&app.scope)
        .bind(app.created_at_ms)
        .bind(app.updated_at_ms)
        .execute(&mut *tx)
        .await
        .map_err(|e| match db(e) {
            StoreError::Conflict(_) => StoreError::Conflict(format!("an application named {:?} already exists", app.name)),
            other => other,
        })?;
        for c in &app.clients {
            sqlx::query(
                "INSERT INTO clients (client_id, application_id, kind, active, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&c.client_id)
            .bind(&app.id)
            .bind(kind_str(c.kind))
            .bind(i64::from(c.active))
            .bind(c.created_at_ms)
            .bind(c.updated_at_ms)
            .execute(&mut *tx)
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
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        }
        Self::write_audit(&mut tx, audit).await?;
        tx.commit().await.map_err(db)
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
             description = COALESCE($4, description), scope = COALESCE($5, scope), updated_at = $6 \
             WHERE id = $1",
        )
        .bind(id)
        .bind(&patch.name)
        .bind(&patch.vendor)
        .bind(&patch.description)
        .bind(&patch.scope)
        .bind(at_ms)
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
        Self::write_audit(&mut tx, audit).await?;
        tx.commit().await.map_err(db)?;
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
        Self::write_audit(&mut tx, audit).await?;
        tx.commit().await.map_err(db)?;
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
        Self::write_audit(&mut tx, audit).await?;
        tx.commit().await.map_err(db)?;
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
        let done =
            sqlx::query("UPDATE clients SET active = $2, updated_at = $3 WHERE client_id = $1")
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
        Self::write_audit(&mut tx, audit).await?;
        tx.commit().await.map_err(db)?;
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
        Self::write_audit(&mut tx, audit).await?;
        tx.commit().await.map_err(db)?;
        Ok(true)
    }

    async fn append_audit(&self, audit: &AuditEntry) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        Self::write_audit(&mut tx, audit).await?;
        tx.commit().await.map_err(db)
    }

    async fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, at, actor, action, application_id, client_id, detail FROM audit_log \
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
        Self::write_audit(&mut tx, audit).await?;
        tx.commit().await.map_err(db)
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
        Self::write_audit(&mut tx, audit).await?;
        tx.commit().await.map_err(db)?;
        Ok(true)
    }
}
