//! [`RegistryStore`] on PostgreSQL through sqlx, for cluster mode: every broker node shares
//! one database. The SQL is the SQLite store's (`sql.rs`); what differs is here:
//!
//! - **Change ids in commit order.** A sequence would hand out ids before commit and leave
//!   holes on rollback, so a follower could read id N+1 while N is still to commit and skip N
//!   for good. Each change-writing transaction takes the registry's transaction-level advisory
//!   lock ([`CHANGES_LOCK`]) and inserts `MAX(id) + 1` under it: writers commit one after the
//!   other, in id order, without holes.
//! - **Wake-ups.** The same transaction sends `NOTIFY` on [`CHANNEL`] (delivered only after
//!   commit); [`RegistryStore::wakeups`] listens on its own connection (`PgListener`). A
//!   notification is only a hint: one sent while the listener was reconnecting is lost, so the
//!   stream also yields each time it (re)starts listening, and followers poll anyway.
//! - **Copies.** A PostgreSQL registry is backed up with the database's own tools
//!   (`pg_dump`), not by the broker.

use std::path::Path;
use std::str::FromStr;

use async_trait::async_trait;
use futures_util::StreamExt;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::{Postgres, Row, Transaction};

use super::credential::{Credential, CredentialSource};
use super::sql::{Keys, audit_row, db, keys_columns, kind_str, parse_kind, sql_store};
use super::store::{AccessFilter, AuditCheckpoint, AuditRow, ConsoleSession};
use super::store::{
    ApplicationPatch, Change, ChangeKind, Deletion, NewApplication, RegistryStore, StoreError,
    StoredWebhook, Wakeups, WebhookAttempt, WebhookState,
};
use super::{AuditEntry, AuditQuery, ClientKeysSpec, StoredApplication, StoredClient};

/// The PostgreSQL registry's migrations (`broker/migrations-pg/`), applied by [`PgStore::open`].
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations-pg");

/// The `NOTIFY` channel of registry changes.
pub(super) const CHANNEL: &str = "scopecast_registry";

/// The advisory lock key that serialises change writers (an arbitrary constant: "scopecst"
/// in ASCII).
pub(super) const CHANGES_LOCK: i64 = 0x7363_6f70_6563_7374;

/// The registry in a PostgreSQL database.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the URL: it may carry a password.
        f.debug_struct("PgStore").finish_non_exhaustive()
    }
}

impl PgStore {
    /// The connection pool (the registry migration reads or writes whole tables).
    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Connects to the database at `url` (`postgres://user:password@host:port/db`) and applies
    /// the migrations in `broker/migrations-pg/` (several nodes starting at once: sqlx takes
    /// an advisory lock around them).
    ///
    /// # Errors
    /// [`StoreError::Database`] when the database cannot be reached or migrated.
    pub async fn open(url: &str) -> Result<PgStore, StoreError> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Database(format!("registry URL: {e}")))?;
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect_with(options)
            .await
            .map_err(db)?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| StoreError::Database(format!("migrations: {e}")))?;
        Ok(PgStore { pool })
    }

    /// The registry's schema version this build writes on PostgreSQL.
    pub fn schema_version() -> i64 {
        MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
    }

    /// Commits `tx` (its `NOTIFY`, sent by [`PgStore::write_change`], goes out then).
    async fn commit(&self, tx: Transaction<'_, Postgres>) -> Result<(), StoreError> {
        tx.commit().await.map_err(db)
    }

    /// Adds the change row of a write, in its transaction, with the next id under the
    /// registry's advisory lock, and notifies [`CHANNEL`] on commit.
    async fn write_change(
        tx: &mut Transaction<'_, Postgres>,
        kind: ChangeKind,
        keys: Keys<'_>,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(CHANGES_LOCK)
            .execute(&mut **tx)
            .await
            .map_err(db)?;
        sqlx::query(
            "INSERT INTO changes (id, kind, application_id, client_id, credential_id, at, webhook_id) \
             VALUES ((SELECT COALESCE(MAX(id), 0) + 1 FROM changes), $1, \
                     COALESCE($2, (SELECT application_id FROM clients WHERE client_id = $3)), \
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
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(CHANNEL)
            .execute(&mut **tx)
            .await
            .map_err(db)?;
        Ok(())
    }

    /// Wake-ups from `LISTEN` on [`CHANNEL`], on a connection of its own; also one each time
    /// that connection drops (notifications may have been lost meanwhile). The stream ends
    /// only if the listener cannot be made at all (followers then rely on polling).
    fn wakeups_stream(&self) -> Wakeups {
        let pool = self.pool.clone();
        futures_util::stream::unfold(None::<PgListener>, move |listener| {
            let pool = pool.clone();
            async move {
                let mut listener = match listener {
                    Some(l) => l,
                    None => {
                        let mut l = match PgListener::connect_with(&pool).await {
                            Ok(l) => l,
                            Err(e) => {
                                tracing::warn!(error = %e, "registry: cannot LISTEN; following by polling only");
                                return None;
                            }
                        };
                        if let Err(e) = l.listen(CHANNEL).await {
                            tracing::warn!(error = %e, "registry: cannot LISTEN; following by polling only");
                            return None;
                        }
                        // Listening from now on: whatever committed before is in the table,
                        // so one wake-up now makes the follower read it.
                        return Some(((), Some(l)));
                    }
                };
                // `Ok(None)`: the connection was lost and is re-made by the next call; what
                // was sent meanwhile is lost, so wake the follower to read the table.
                match listener.try_recv().await {
                    Ok(_) => Some(((), Some(listener))),
                    Err(e) => {
                        tracing::debug!(error = %e, "registry: LISTEN connection failed; reconnecting");
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                        Some(((), None))
                    }
                }
            }
        })
        .boxed()
    }

    /// Not the broker's job on PostgreSQL.
    async fn copy_file(&self, _path: &Path) -> Result<(), StoreError> {
        Err(StoreError::Database(
            "a PostgreSQL registry is backed up with pg_dump, not by the broker".to_owned(),
        ))
    }
}

sql_store!(PgStore, Postgres);

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::registry::conformance::{Made, Maker};

    struct PgMaker;

    #[async_trait]
    impl Maker for PgMaker {
        async fn make(&self) -> Made {
            let url = scopecast_testkit::Postgres::shared().database().await;
            let store = PgStore::open(&url).await.unwrap();
            Made {
                store: std::sync::Arc::new(store),
                _keep: Box::new(()),
            }
        }
    }

    crate::registry::conformance::conformance_tests!(PgMaker);
}
