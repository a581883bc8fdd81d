//! What the SQL registry stores share: [`RegistryStore`] written once in portable SQL
//! (`$n` parameters, integer booleans, no database-only types) and expanded for each sqlx
//! database by `sql_store!` (SQLite in `sqlite.rs`, PostgreSQL in `postgres.rs`). A macro rather
//! than generics over `sqlx::Database`: each expansion is ordinary code for one database.
//!
//! Each store supplies what differs: `open`, `commit` (and its wake-up), `write_change` (how a
//! change id is assigned in commit order), `wakeups_stream` and `copy_file`.

use super::ClientKeysSpec;
use super::StoreError;
use crate::config::EnvironmentKind;

/// The keys a change row names.
#[derive(Default)]
pub(super) struct Keys<'a> {
    pub(super) application_id: Option<&'a str>,
    pub(super) client_id: Option<&'a str>,
    pub(super) credential_id: Option<&'a str>,
    pub(super) webhook_id: Option<&'a str>,
}

pub(super) fn db(e: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(d) = &e
        && d.is_unique_violation()
    {
        return StoreError::Conflict(format!("already exists: {}", d.message()));
    }
    StoreError::Database(e.to_string())
}

/// An `access_audit` row read by any SQL store.
pub(super) fn audit_row<R: sqlx::Row>(r: &R) -> super::store::AuditRow
where
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    for<'q> String: sqlx::Decode<'q, R::Database> + sqlx::Type<R::Database>,
    for<'q> i64: sqlx::Decode<'q, R::Database> + sqlx::Type<R::Database>,
    for<'q> i32: sqlx::Decode<'q, R::Database> + sqlx::Type<R::Database>,
    for<'q> Option<i64>: sqlx::Decode<'q, R::Database> + sqlx::Type<R::Database>,
{
    let seq = |v: Option<i64>| v.and_then(|v| u64::try_from(v).ok());
    super::store::AuditRow {
        chain: r.get("chain"),
        chain_seq: u64::try_from(r.get::<i64, _>("chain_seq")).unwrap_or(0),
        kind: r.get("kind"),
        record_id: r.get("record_id"),
        client_id: r.get("client_id"),
        from_ms: r.get("from_ms"),
        to_ms: r.get("to_ms"),
        written_ms: r.get("written_ms"),
        first_seq: seq(r.get("first_seq")),
        last_seq: seq(r.get("last_seq")),
        live: r.get::<i32, _>("live") != 0,
        body: r.get("body"),
        prev_hash: r.get("prev_hash"),
        hash: r.get("hash"),
    }
}

pub(super) fn kind_str(kind: EnvironmentKind) -> &'static str {
    kind.as_str()
}

pub(super) fn parse_kind(s: &str) -> Result<EnvironmentKind, StoreError> {
    match s {
        "production" => Ok(EnvironmentKind::Production),
        "non-production" => Ok(EnvironmentKind::NonProduction),
        other => Err(StoreError::Database(format!(
            "unknown client kind {other:?}"
        ))),
    }
}

pub(super) fn keys_columns(keys: &ClientKeysSpec) -> (Option<String>, Option<String>) {
    match keys {
        ClientKeysSpec::None => (None, None),
        ClientKeysSpec::Jwks(v) => (Some(v.to_string()), None),
        ClientKeysSpec::JwksUri(u) => (None, Some(u.clone())),
    }
}

/// Expands the shared SQL of a registry store for `$store` over the sqlx database `$db`.
macro_rules! sql_store {
    ($store:ty, $db:ty) => {
        impl $store {
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
                    .sort_by_key(|c| c.kind != $crate::config::EnvironmentKind::Production);
            }
            Ok(out)
        }

        /// The rows of a new application: it, its two clients and their credentials.
        async fn insert_rows(
            tx: &mut Transaction<'_, $db>,
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
            tx: &mut Transaction<'_, $db>,
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

        /// Ends a FHIR Subscription's write: its `fhir.subscription.change` row, `audit`,
        /// commit.
        async fn fhir_written(
            &self,
            mut tx: Transaction<'_, $db>,
            client_id: &str,
            audit: &AuditEntry,
        ) -> Result<(), StoreError> {
            Self::write_change(
                &mut tx,
                ChangeKind::FhirSubscriptionChanged,
                Keys {
                    client_id: Some(client_id),
                    ..Keys::default()
                },
                audit.at_ms,
            )
            .await?;
            Self::write_audit(&mut tx, audit).await?;
            self.commit(tx).await
        }

        /// Ends a webhook endpoint's write: its `webhook.change` row, `audit`, commit.
        async fn webhook_written(
            &self,
            mut tx: Transaction<'_, $db>,
            client_id: &str,
            id: &str,
            audit: &AuditEntry,
        ) -> Result<(), StoreError> {
            Self::write_change(
                &mut tx,
                ChangeKind::WebhookChanged,
                Keys {
                    client_id: Some(client_id),
                    webhook_id: Some(id),
                    ..Keys::default()
                },
                audit.at_ms,
            )
            .await?;
            Self::write_audit(&mut tx, audit).await?;
            self.commit(tx).await
        }
        }

        #[async_trait]
        impl RegistryStore for $store {
            async fn load(&self) -> Result<Vec<StoredApplication>, StoreError> {
                self.load_where(None).await
            }

            async fn load_application(&self, id: &str) -> Result<Option<StoredApplication>, StoreError> {
                Ok(self.load_where(Some(id)).await?.pop())
            }

            async fn changes_after(&self, cursor: u64, limit: usize) -> Result<Vec<Change>, StoreError> {
                let rows = sqlx::query(
                    "SELECT id, kind, application_id, client_id, credential_id, webhook_id, at FROM changes \
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
                        webhook_id: r.get("webhook_id"),
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

            async fn load_state(&self, name: &str) -> Result<Option<(Vec<u8>, i64)>, StoreError> {
                let row = sqlx::query("SELECT value, version FROM shared_state WHERE name = $1")
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db)?;
                Ok(row.map(|r| (r.get::<Vec<u8>, _>(0), r.get::<i64, _>(1))))
            }

            async fn put_state(
                &self,
                name: &str,
                value: &[u8],
                expected: i64,
                audit: &AuditEntry,
            ) -> Result<bool, StoreError> {
                let mut tx = self.pool.begin().await.map_err(db)?;
                let written = if expected == 0 {
                    sqlx::query(
                        "INSERT INTO shared_state (name, value, version, updated_at) \
                         VALUES ($1, $2, 1, $3) ON CONFLICT (name) DO NOTHING",
                    )
                    .bind(name)
                    .bind(value)
                    .bind(audit.at_ms)
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?
                } else {
                    sqlx::query(
                        "UPDATE shared_state SET value = $2, version = version + 1, updated_at = $3 \
                         WHERE name = $1 AND version = $4",
                    )
                    .bind(name)
                    .bind(value)
                    .bind(audit.at_ms)
                    .bind(expected)
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?
                };
                if written.rows_affected() == 0 {
                    return Ok(false);
                }
                Self::write_change(
                    &mut tx,
                    ChangeKind::StateChanged(format!("state.{name}")),
                    Keys::default(),
                    audit.at_ms,
                )
                .await?;
                Self::write_audit(&mut tx, audit).await?;
                self.commit(tx).await?;
                Ok(true)
            }

            async fn remember_jti(&self, key: &str, until: i64, now: i64) -> Result<bool, StoreError> {
                let mut tx = self.pool.begin().await.map_err(db)?;
                // A key seen before whose time has passed is taken again (its row updated).
                let done = sqlx::query(
                    "INSERT INTO assertion_jtis (key, until) VALUES ($1, $2) \
                     ON CONFLICT (key) DO UPDATE SET until = excluded.until \
                     WHERE assertion_jtis.until < $3",
                )
                .bind(key)
                .bind(until)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
                // Forgets the expired keys (an index range: cheap when there are none).
                sqlx::query("DELETE FROM assertion_jtis WHERE until < $1")
                    .bind(now)
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
                tx.commit().await.map_err(db)?;
                Ok(done.rows_affected() == 1)
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

            async fn load_fhir_subscriptions(
                &self,
            ) -> Result<Vec<crate::registry::StoredFhirSubscription>, StoreError> {
                let rows = sqlx::query(
                    "SELECT id, client_id, resource, status, error, epoch, start_seq, count, \
                     count_seq, created_at, updated_at, version FROM fhir_subscriptions \
                     ORDER BY created_at, id",
                )
                .fetch_all(&self.pool)
                .await
                .map_err(db)?;
                let u = |v: i64| u64::try_from(v).unwrap_or(0);
                Ok(rows
                    .iter()
                    .map(|r| crate::registry::StoredFhirSubscription {
                        id: r.get("id"),
                        client_id: r.get("client_id"),
                        resource: r.get("resource"),
                        status: r.get("status"),
                        error: r.get("error"),
                        epoch: r.get("epoch"),
                        start_seq: u(r.get("start_seq")),
                        count: u(r.get("count")),
                        count_seq: u(r.get("count_seq")),
                        created_at_ms: r.get("created_at"),
                        updated_at_ms: r.get("updated_at"),
                        version: r.get("version"),
                    })
                    .collect())
            }

            async fn insert_fhir_subscription(
                &self,
                s: &crate::registry::StoredFhirSubscription,
                audit: &AuditEntry,
            ) -> Result<(), StoreError> {
                let i = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
                let mut tx = self.pool.begin().await.map_err(db)?;
                sqlx::query(
                    "INSERT INTO fhir_subscriptions (id, client_id, resource, status, error, epoch, \
                     start_seq, count, count_seq, created_at, updated_at, version) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 1)",
                )
                .bind(&s.id)
                .bind(&s.client_id)
                .bind(&s.resource)
                .bind(&s.status)
                .bind(&s.error)
                .bind(&s.epoch)
                .bind(i(s.start_seq))
                .bind(i(s.count))
                .bind(i(s.count_seq))
                .bind(s.created_at_ms)
                .bind(s.updated_at_ms)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
                self.fhir_written(tx, &s.client_id, audit).await
            }

            async fn update_fhir_subscription(
                &self,
                s: &crate::registry::StoredFhirSubscription,
                audit: &AuditEntry,
            ) -> Result<bool, StoreError> {
                let mut tx = self.pool.begin().await.map_err(db)?;
                let done = sqlx::query(
                    "UPDATE fhir_subscriptions SET resource = $3, status = $4, error = $5, \
                     updated_at = $6, version = version + 1 WHERE id = $1 AND version = $2",
                )
                .bind(&s.id)
                .bind(s.version)
                .bind(&s.resource)
                .bind(&s.status)
                .bind(&s.error)
                .bind(s.updated_at_ms)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
                if done.rows_affected() == 0 {
                    return Ok(false);
                }
                self.fhir_written(tx, &s.client_id, audit).await?;
                Ok(true)
            }

            async fn delete_fhir_subscription(
                &self,
                id: &str,
                audit: &AuditEntry,
            ) -> Result<bool, StoreError> {
                let mut tx = self.pool.begin().await.map_err(db)?;
                let client: Option<String> =
                    sqlx::query_scalar("SELECT client_id FROM fhir_subscriptions WHERE id = $1")
                        .bind(id)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(db)?;
                let Some(client) = client else {
                    return Ok(false);
                };
                sqlx::query("DELETE FROM fhir_subscriptions WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
                self.fhir_written(tx, &client, audit).await?;
                Ok(true)
            }

            async fn checkpoint_fhir_subscriptions(
                &self,
                checkpoints: &[crate::registry::FhirCheckpoint],
            ) -> Result<(), StoreError> {
                if checkpoints.is_empty() {
                    return Ok(());
                }
                let i = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
                let mut tx = self.pool.begin().await.map_err(db)?;
                for c in checkpoints {
                    sqlx::query(
                        "UPDATE fhir_subscriptions SET epoch = $2, count = $3, count_seq = $4 \
                         WHERE id = $1 AND count <= $3 AND (epoch <> $2 OR count_seq < $4)",
                    )
                    .bind(&c.id)
                    .bind(&c.epoch)
                    .bind(i(c.count))
                    .bind(i(c.seq))
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
                }
                tx.commit().await.map_err(db)?;
                Ok(())
            }

            async fn load_webhooks(&self) -> Result<Vec<StoredWebhook>, StoreError> {
                let rows = sqlx::query(
                    "SELECT id, client_id, url, topics, sealed, state, state_reason, cursor, \
                     max_in_flight, max_batch, created_at, updated_at, version, lease_holder, \
                     lease_until, cursor_epoch, replay_through, fhir_subscription_id FROM webhook_endpoints \
                     ORDER BY created_at, id",
                )
                .fetch_all(&self.pool)
                .await
                .map_err(db)?;
                rows.iter()
                    .map(|r| {
                        let topics: String = r.get("topics");
                        let holder: Option<String> = r.get("lease_holder");
                        let until: Option<i64> = r.get("lease_until");
                        Ok(StoredWebhook {
                            id: r.get("id"),
                            client_id: r.get("client_id"),
                            url: r.get("url"),
                            topics: topics.split_whitespace().map(str::to_owned).collect(),
                            sealed: r.get("sealed"),
                            state: WebhookState::parse(r.get("state"))?,
                            state_reason: r.get("state_reason"),
                            cursor: u64::try_from(r.get::<i64, _>("cursor")).unwrap_or(0),
                            cursor_epoch: r.get("cursor_epoch"),
                            replay_through: u64::try_from(r.get::<i64, _>("replay_through"))
                                .unwrap_or(0),
                            max_in_flight: u32::try_from(r.get::<i32, _>("max_in_flight")).unwrap_or(1),
                            max_batch: u32::try_from(r.get::<i32, _>("max_batch")).unwrap_or(1),
                            created_at_ms: r.get("created_at"),
                            updated_at_ms: r.get("updated_at"),
                            version: r.get("version"),
                            lease: holder.zip(until),
                            fhir_subscription_id: r.get("fhir_subscription_id"),
                        })
                    })
                    .collect()
            }

            async fn insert_webhook(
                &self,
                w: &StoredWebhook,
                audit: &AuditEntry,
            ) -> Result<(), StoreError> {
                let mut tx = self.pool.begin().await.map_err(db)?;
                sqlx::query(
                    "INSERT INTO webhook_endpoints (id, client_id, url, topics, sealed, state, \
                     state_reason, cursor, max_in_flight, max_batch, created_at, updated_at, version, \
                     cursor_epoch, replay_through, fhir_subscription_id) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 1, $13, $14, $15)",
                )
                .bind(&w.id)
                .bind(&w.client_id)
                .bind(&w.url)
                .bind(w.topics.join(" "))
                .bind(&w.sealed)
                .bind(w.state.as_str())
                .bind(&w.state_reason)
                .bind(i64::try_from(w.cursor).unwrap_or(i64::MAX))
                .bind(i32::try_from(w.max_in_flight).unwrap_or(i32::MAX))
                .bind(i32::try_from(w.max_batch).unwrap_or(i32::MAX))
                .bind(w.created_at_ms)
                .bind(w.updated_at_ms)
                .bind(&w.cursor_epoch)
                .bind(i64::try_from(w.replay_through).unwrap_or(i64::MAX))
                .bind(&w.fhir_subscription_id)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
                self.webhook_written(tx, &w.client_id, &w.id, audit).await
            }

            async fn update_webhook(
                &self,
                w: &StoredWebhook,
                audit: &AuditEntry,
            ) -> Result<bool, StoreError> {
                let mut tx = self.pool.begin().await.map_err(db)?;
                let done = sqlx::query(
                    "UPDATE webhook_endpoints SET url = $3, topics = $4, sealed = $5, state = $6, \
                     state_reason = $7, max_in_flight = $8, max_batch = $9, updated_at = $10, \
                     version = version + 1 WHERE id = $1 AND version = $2",
                )
                .bind(&w.id)
                .bind(w.version)
                .bind(&w.url)
                .bind(w.topics.join(" "))
                .bind(&w.sealed)
                .bind(w.state.as_str())
                .bind(&w.state_reason)
                .bind(i32::try_from(w.max_in_flight).unwrap_or(i32::MAX))
                .bind(i32::try_from(w.max_batch).unwrap_or(i32::MAX))
                .bind(w.updated_at_ms)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
                if done.rows_affected() == 0 {
                    return Ok(false);
                }
                self.webhook_written(tx, &w.client_id, &w.id, audit).await?;
                Ok(true)
            }

            async fn delete_webhook(&self, id: &str, audit: &AuditEntry) -> Result<bool, StoreError> {
                let mut tx = self.pool.begin().await.map_err(db)?;
                let client: Option<String> =
                    sqlx::query_scalar("SELECT client_id FROM webhook_endpoints WHERE id = $1")
                        .bind(id)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(db)?;
                let Some(client) = client else {
                    return Ok(false);
                };
                sqlx::query("DELETE FROM webhook_attempts WHERE endpoint_id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
                sqlx::query("DELETE FROM webhook_endpoints WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
                self.webhook_written(tx, &client, id, audit).await?;
                Ok(true)
            }

            async fn advance_webhook_cursors(
                &self,
                holder: &str,
                writes: &[crate::registry::CursorWrite],
            ) -> Result<Vec<bool>, StoreError> {
                let mut tx = self.pool.begin().await.map_err(db)?;
                let mut out = Vec::with_capacity(writes.len());
                for w in writes {
                    let done = sqlx::query(
                        "UPDATE webhook_endpoints SET \
                         cursor = CASE WHEN cursor_epoch <> $3 OR cursor < $4 THEN $4 ELSE cursor END, \
                         cursor_epoch = $3 WHERE id = $1 AND lease_holder = $2 AND replayed_at_version <= $5",
                    )
                    .bind(&w.endpoint_id)
                    .bind(holder)
                    .bind(&w.epoch)
                    .bind(i64::try_from(w.seq).unwrap_or(i64::MAX))
                    .bind(w.version)
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
                    out.push(done.rows_affected() == 1);
                }
                self.commit(tx).await?;
                Ok(out)
            }

            async fn client_active_since(&self, client_id: &str) -> Result<Option<i64>, StoreError> {
                sqlx::query_scalar(
                    "SELECT MIN(at) FROM activations WHERE client_id = $1 AND active = 1 \
                     AND at >= COALESCE((SELECT MAX(at) FROM activations \
                     WHERE client_id = $1 AND active = 0), -1)",
                )
                .bind(client_id)
                .fetch_one(&self.pool)
                .await
                .map_err(db)
            }

            async fn replay_webhook(
                &self,
                id: &str,
                epoch: &str,
                cursor: u64,
                through: u64,
                audit: &AuditEntry,
            ) -> Result<bool, StoreError> {
                let mut tx = self.pool.begin().await.map_err(db)?;
                let client: Option<String> = sqlx::query_scalar(
                    "UPDATE webhook_endpoints SET cursor = $2, cursor_epoch = $3, \
                     version = version + 1, replayed_at_version = version + 1, updated_at = $4, \
                     replay_through = $5 WHERE id = $1 RETURNING client_id",
                )
                .bind(id)
                .bind(i64::try_from(cursor).unwrap_or(i64::MAX))
                .bind(epoch)
                .bind(audit.at_ms)
                .bind(i64::try_from(through).unwrap_or(i64::MAX))
                .fetch_optional(&mut *tx)
                .await
                .map_err(db)?;
                let Some(client) = client else {
                    return Ok(false);
                };
                self.webhook_written(tx, &client, id, audit).await?;
                Ok(true)
            }

            async fn lease_webhooks(
                &self,
                ids: &[String],
                holder: &str,
                now_ms: i64,
                until_ms: i64,
            ) -> Result<Vec<bool>, StoreError> {
                let mut tx = self.pool.begin().await.map_err(db)?;
                let mut out = Vec::with_capacity(ids.len());
                for id in ids {
                    let done = sqlx::query(
                        "UPDATE webhook_endpoints SET lease_holder = $2, lease_until = $4 \
                         WHERE id = $1 AND (lease_holder IS NULL OR lease_holder = $2 \
                         OR lease_until < $3)",
                    )
                    .bind(id)
                    .bind(holder)
                    .bind(now_ms)
                    .bind(until_ms)
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
                    out.push(done.rows_affected() == 1);
                }
                self.commit(tx).await?;
                Ok(out)
            }

            async fn append_webhook_attempts(
                &self,
                attempts: &[WebhookAttempt],
            ) -> Result<(), StoreError> {
                // Rows of one statement: a statement per row was a round trip each to the
                // database (to SQLite's worker thread), more than the row cost.
                const ROWS: usize = 100;
                let mut tx = self.pool.begin().await.map_err(db)?;
                for chunk in attempts.chunks(ROWS) {
                    let mut insert = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO webhook_attempts (endpoint_id, seq, event_id, attempt, at, \
                         status, error, latency_ms, outcome) ",
                    );
                    insert.push_values(chunk, |mut row, a| {
                        row.push_bind(&a.endpoint_id)
                            .push_bind(i64::try_from(a.seq).unwrap_or(i64::MAX))
                            .push_bind(&a.event_id)
                            .push_bind(i32::try_from(a.attempt).unwrap_or(i32::MAX))
                            .push_bind(a.at_ms)
                            .push_bind(a.status.map(i32::from))
                            .push_bind(&a.error)
                            .push_bind(a.latency_ms)
                            .push_bind(&a.outcome);
                    });
                    insert.build().execute(&mut *tx).await.map_err(db)?;
                }
                tx.commit().await.map_err(db)
            }

            async fn webhook_attempts(
                &self,
                endpoint_id: &str,
                before: Option<i64>,
                limit: usize,
            ) -> Result<Vec<WebhookAttempt>, StoreError> {
                let rows = sqlx::query(
                    "SELECT id, endpoint_id, seq, event_id, attempt, at, status, error, \
                     latency_ms, outcome FROM webhook_attempts \
                     WHERE endpoint_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
                )
                .bind(endpoint_id)
                .bind(before.unwrap_or(i64::MAX))
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(&self.pool)
                .await
                .map_err(db)?;
                Ok(rows
                    .iter()
                    .map(|r| WebhookAttempt {
                        id: r.get("id"),
                        endpoint_id: r.get("endpoint_id"),
                        seq: u64::try_from(r.get::<i64, _>("seq")).unwrap_or(0),
                        event_id: r.get("event_id"),
                        attempt: u32::try_from(r.get::<i32, _>("attempt")).unwrap_or(0),
                        at_ms: r.get("at"),
                        status: r
                            .get::<Option<i32>, _>("status")
                            .and_then(|s| u16::try_from(s).ok()),
                        error: r.get("error"),
                        latency_ms: r.get("latency_ms"),
                        outcome: r.get("outcome"),
                    })
                    .collect())
            }

            async fn prune_webhook_attempts(&self, before_ms: i64) -> Result<u64, StoreError> {
                let done = sqlx::query("DELETE FROM webhook_attempts WHERE at < $1")
                    .bind(before_ms)
                    .execute(&self.pool)
                    .await
                    .map_err(db)?;
                Ok(done.rows_affected())
            }

            async fn append_access_audit(
                &self,
                rows: &[AuditRow],
                checkpoint: Option<&AuditCheckpoint>,
            ) -> Result<(), StoreError> {
                const ROWS: usize = 50;
                let mut tx = self.pool.begin().await.map_err(db)?;
                for chunk in rows.chunks(ROWS) {
                    let mut insert = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO access_audit (chain, chain_seq, kind, record_id, client_id, \
                         from_ms, to_ms, first_seq, last_seq, live, written_ms, body, prev_hash, hash) ",
                    );
                    insert.push_values(chunk, |mut row, r| {
                        row.push_bind(&r.chain)
                            .push_bind(i64::try_from(r.chain_seq).unwrap_or(i64::MAX))
                            .push_bind(&r.kind)
                            .push_bind(&r.record_id)
                            .push_bind(&r.client_id)
                            .push_bind(r.from_ms)
                            .push_bind(r.to_ms)
                            .push_bind(r.first_seq.map(|s| i64::try_from(s).unwrap_or(i64::MAX)))
                            .push_bind(r.last_seq.map(|s| i64::try_from(s).unwrap_or(i64::MAX)))
                            .push_bind(i32::from(r.live))
                            .push_bind(r.written_ms)
                            .push_bind(&r.body)
                            .push_bind(&r.prev_hash)
                            .push_bind(&r.hash);
                    });
                    insert.build().execute(&mut *tx).await.map_err(db)?;
                }
                if let Some(c) = checkpoint {
                    sqlx::query(
                        "INSERT INTO access_audit_checkpoints (chain, chain_seq, hash, at_ms, \
                         key_id, signature) VALUES ($1, $2, $3, $4, $5, $6)",
                    )
                    .bind(&c.chain)
                    .bind(i64::try_from(c.chain_seq).unwrap_or(i64::MAX))
                    .bind(&c.hash)
                    .bind(c.at_ms)
                    .bind(&c.key_id)
                    .bind(&c.signature)
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
                }
                tx.commit().await.map_err(db)
            }

            async fn access_audit_head(
                &self,
                chain: &str,
            ) -> Result<Option<(u64, String)>, StoreError> {
                let row = sqlx::query(
                    "SELECT chain_seq, hash FROM access_audit WHERE chain = $1 \
                     ORDER BY chain_seq DESC LIMIT 1",
                )
                .bind(chain)
                .fetch_optional(&self.pool)
                .await
                .map_err(db)?;
                Ok(row.map(|r| (r.get::<i64, _>("chain_seq") as u64, r.get("hash"))))
            }

            async fn access_audit_latest(
                &self,
                f: &AccessFilter,
            ) -> Result<Vec<AuditRow>, StoreError> {
                let seq = f.seq.map(|s| i64::try_from(s).unwrap_or(i64::MAX));
                let rows = sqlx::query(
                    "SELECT chain, chain_seq, kind, record_id, client_id, from_ms, to_ms, \
                     first_seq, last_seq, live, written_ms, body, prev_hash, hash FROM access_audit a \
                     WHERE ($1 IS NULL OR a.chain = $1) AND ($2 IS NULL OR a.kind = $2) \
                     AND ($3 IS NULL OR a.client_id = $3) \
                     AND ($4 IS NULL OR a.to_ms >= $4 OR a.live = 1) \
                     AND ($5 IS NULL OR a.from_ms <= $5) \
                     AND ($6 IS NULL OR (a.first_seq <= $6 AND (a.last_seq >= $6 OR a.live = 1))) \
                     AND ($7 = 0 OR a.live = 1) \
                     AND NOT EXISTS (SELECT 1 FROM access_audit b WHERE b.chain = a.chain \
                         AND b.record_id = a.record_id AND b.chain_seq > a.chain_seq) \
                     ORDER BY CASE WHEN $9 = 1 THEN -a.from_ms ELSE a.from_ms END, a.chain, a.chain_seq \
                     LIMIT $8",
                )
                .bind(f.chain.as_deref())
                .bind(f.kind.as_deref())
                .bind(f.client_id.as_deref())
                .bind(f.from_ms)
                .bind(f.to_ms)
                .bind(seq)
                .bind(i32::from(f.live_only))
                .bind(i64::try_from(f.limit).unwrap_or(i64::MAX))
                .bind(i32::from(f.newest_first))
                .fetch_all(&self.pool)
                .await
                .map_err(db)?;
                Ok(rows.iter().map(audit_row).collect())
            }

            async fn access_audit_rows(
                &self,
                chain: &str,
                after: i64,
                limit: usize,
            ) -> Result<Vec<AuditRow>, StoreError> {
                let rows = sqlx::query(
                    "SELECT chain, chain_seq, kind, record_id, client_id, from_ms, to_ms, \
                     first_seq, last_seq, live, written_ms, body, prev_hash, hash FROM access_audit \
                     WHERE chain = $1 AND chain_seq > $2 ORDER BY chain_seq LIMIT $3",
                )
                .bind(chain)
                .bind(after)
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(&self.pool)
                .await
                .map_err(db)?;
                Ok(rows.iter().map(audit_row).collect())
            }

            async fn access_audit_prune_point(
                &self,
                chain: &str,
                before_ms: i64,
                below_seq: u64,
            ) -> Result<Option<u64>, StoreError> {
                let row = sqlx::query(
                    "SELECT MAX(chain_seq) AS s FROM access_audit_checkpoints \
                     WHERE chain = $1 AND at_ms < $2 AND chain_seq < $3",
                )
                .bind(chain)
                .bind(before_ms)
                .bind(i64::try_from(below_seq).unwrap_or(i64::MAX))
                .fetch_one(&self.pool)
                .await
                .map_err(db)?;
                Ok(row
                    .get::<Option<i64>, _>("s")
                    .and_then(|s| u64::try_from(s).ok()))
            }

            async fn access_audit_chains(&self) -> Result<Vec<String>, StoreError> {
                let rows = sqlx::query(
                    "SELECT DISTINCT chain FROM access_audit UNION \
                     SELECT DISTINCT chain FROM access_audit_checkpoints ORDER BY chain",
                )
                .fetch_all(&self.pool)
                .await
                .map_err(db)?;
                Ok(rows.iter().map(|r| r.get("chain")).collect())
            }

            async fn access_audit_checkpoints(
                &self,
                chain: &str,
            ) -> Result<Vec<AuditCheckpoint>, StoreError> {
                let rows = sqlx::query(
                    "SELECT chain, chain_seq, hash, at_ms, key_id, signature \
                     FROM access_audit_checkpoints WHERE chain = $1 ORDER BY chain_seq",
                )
                .bind(chain)
                .fetch_all(&self.pool)
                .await
                .map_err(db)?;
                Ok(rows
                    .iter()
                    .map(|r| AuditCheckpoint {
                        chain: r.get("chain"),
                        chain_seq: r.get::<i64, _>("chain_seq") as u64,
                        hash: r.get("hash"),
                        at_ms: r.get("at_ms"),
                        key_id: r.get("key_id"),
                        signature: r.get("signature"),
                    })
                    .collect())
            }

            async fn prune_access_audit(&self, chain: &str, through: u64) -> Result<u64, StoreError> {
                let through = i64::try_from(through).unwrap_or(i64::MAX);
                let mut tx = self.pool.begin().await.map_err(db)?;
                let done = sqlx::query("DELETE FROM access_audit WHERE chain = $1 AND chain_seq <= $2")
                    .bind(chain)
                    .bind(through)
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
                sqlx::query("DELETE FROM access_audit_checkpoints WHERE chain = $1 AND chain_seq < $2")
                    .bind(chain)
                    .bind(through)
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
                tx.commit().await.map_err(db)?;
                Ok(done.rows_affected())
            }

            async fn insert_console_session(&self, s: &ConsoleSession) -> Result<(), StoreError> {
                sqlx::query(
                    "INSERT INTO console_sessions (id_hash, credential_id, csrf, created_at, last_seen) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(&s.id_hash)
                .bind(&s.credential_id)
                .bind(&s.csrf)
                .bind(s.created_ms)
                .bind(s.last_seen_ms)
                .execute(&self.pool)
                .await
                .map_err(db)?;
                Ok(())
            }

            async fn console_session(&self, id_hash: &str) -> Result<Option<ConsoleSession>, StoreError> {
                let row = sqlx::query(
                    "SELECT id_hash, credential_id, csrf, created_at, last_seen FROM console_sessions \
                     WHERE id_hash = $1",
                )
                .bind(id_hash)
                .fetch_optional(&self.pool)
                .await
                .map_err(db)?;
                Ok(row.map(|r| ConsoleSession {
                    id_hash: r.get("id_hash"),
                    credential_id: r.get("credential_id"),
                    csrf: r.get("csrf"),
                    created_ms: r.get("created_at"),
                    last_seen_ms: r.get("last_seen"),
                }))
            }

            async fn touch_console_session(&self, id_hash: &str, at_ms: i64) -> Result<(), StoreError> {
                sqlx::query("UPDATE console_sessions SET last_seen = $2 WHERE id_hash = $1 AND last_seen < $2")
                    .bind(id_hash)
                    .bind(at_ms)
                    .execute(&self.pool)
                    .await
                    .map_err(db)?;
                Ok(())
            }

            async fn end_console_session(&self, id_hash: &str) -> Result<bool, StoreError> {
                let done = sqlx::query("DELETE FROM console_sessions WHERE id_hash = $1")
                    .bind(id_hash)
                    .execute(&self.pool)
                    .await
                    .map_err(db)?;
                Ok(done.rows_affected() > 0)
            }

            async fn prune_console_sessions(
                &self,
                created_before_ms: i64,
                seen_before_ms: i64,
            ) -> Result<u64, StoreError> {
                let done = sqlx::query("DELETE FROM console_sessions WHERE created_at < $1 OR last_seen < $2")
                    .bind(created_before_ms)
                    .bind(seen_before_ms)
                    .execute(&self.pool)
                    .await
                    .map_err(db)?;
                Ok(done.rows_affected())
            }

            fn wakeups(&self) -> Wakeups {
                self.wakeups_stream()
            }

            async fn copy_to(&self, path: &Path) -> Result<(), StoreError> {
                self.copy_file(path).await
            }
        }
    };
}
pub(super) use sql_store;
