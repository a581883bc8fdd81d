//! Moving a single node's registry into a cluster's (README "Cluster mode", "From one node to
//! a cluster"): every row of the SQLite registry copied into an empty PostgreSQL registry,
//! table by table in one PostgreSQL transaction. The two schemas have the same tables and
//! columns (`broker/migrations-pg/` mirrors `broker/migrations/`), so the copy is by column
//! name; values keep their types (integers, text, bytes; NULLs typed by the PostgreSQL
//! column).

use std::path::Path;

use sqlx::{Column, Row, TypeInfo, ValueRef};

use super::{PgStore, SqliteStore, StoreError};

/// The tables copied, parents before children. `assertion_jtis` is not copied (assertions
/// live minutes); `shared_state` is written by the cluster from the node's key files.
/// `access_audit_checkpoints` is not copied: the cluster signs them again with its key
/// (`cluster::migrate`).
const TABLES: [&str; 11] = [
    "applications",
    "clients",
    "client_credentials",
    "activations",
    "audit_log",
    "credentials",
    "changes",
    "webhook_endpoints",
    "webhook_attempts",
    "fhir_subscriptions",
    "access_audit",
];

/// Tables whose PostgreSQL `id` is a sequence (`BIGSERIAL`): after rows are copied with their
/// ids, the sequence moves past them.
const SERIAL_TABLES: [&str; 1] = ["webhook_attempts"];

/// Rows copied per table.
pub type Copied = Vec<(&'static str, u64)>;

fn db(e: sqlx::Error) -> StoreError {
    StoreError::Database(e.to_string())
}

/// Copies the registry in `sqlite_file` (a stopped node's `registry.sqlite`, migrated to
/// this build's schema first) into the PostgreSQL registry at `postgres_url` (migrated too),
/// which must hold no application, credential or change yet.
///
/// # Errors
/// [`StoreError::Conflict`] when the PostgreSQL registry is not empty;
/// [`StoreError::Database`] when either database fails (nothing is written then: one
/// transaction).
pub async fn sqlite_to_postgres(
    sqlite_file: &Path,
    postgres_url: &str,
) -> Result<Copied, StoreError> {
    if !sqlite_file.exists() {
        return Err(StoreError::Database(format!(
            "{} does not exist",
            sqlite_file.display()
        )));
    }
    // Opening runs each store's migrations, so both have this build's schema.
    let source = SqliteStore::open(sqlite_file).await?;
    let target = PgStore::open(postgres_url).await?;
    let mut pg = target.pool().begin().await.map_err(db)?;
    for table in ["applications", "credentials", "changes"] {
        let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(&mut *pg)
            .await
            .map_err(db)?;
        if n > 0 {
            return Err(StoreError::Conflict(format!(
                "the PostgreSQL registry is not empty ({n} rows in {table}); migrate into a new database"
            )));
        }
    }
    let mut lite = source.pool().acquire().await.map_err(db)?;
    let mut copied = Vec::new();
    for table in TABLES {
        // PostgreSQL's column types, to bind each NULL as its column's type.
        let types: Vec<(String, String)> = sqlx::query_as(
            "SELECT column_name::text, data_type::text FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = $1",
        )
        .bind(table)
        .fetch_all(&mut *pg)
        .await
        .map_err(db)?;
        let rows = sqlx::query(&format!("SELECT * FROM {table}"))
            .fetch_all(&mut *lite)
            .await
            .map_err(db)?;
        for row in &rows {
            let columns: Vec<&str> = row.columns().iter().map(|c| c.name()).collect();
            let marks: Vec<String> = (1..=columns.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "INSERT INTO {table} ({}) VALUES ({})",
                columns.join(", "),
                marks.join(", ")
            );
            let mut q = sqlx::query(&sql);
            for (i, name) in columns.iter().enumerate() {
                let raw = row.try_get_raw(i).map_err(db)?;
                let pg_type = types
                    .iter()
                    .find(|(c, _)| c == name)
                    .map(|(_, t)| t.as_str())
                    .unwrap_or("text");
                if raw.is_null() {
                    q = match pg_type {
                        "bigint" | "integer" | "smallint" => q.bind(None::<i64>),
                        "bytea" => q.bind(None::<Vec<u8>>),
                        _ => q.bind(None::<String>),
                    };
                    continue;
                }
                let kind = raw.type_info().name().to_ascii_uppercase();
                q = match (kind.as_str(), pg_type) {
                    ("INTEGER", _) | (_, "bigint" | "integer" | "smallint") => {
                        q.bind(row.try_get::<i64, _>(i).map_err(db)?)
                    }
                    ("BLOB", _) | (_, "bytea") => q.bind(row.try_get::<Vec<u8>, _>(i).map_err(db)?),
                    _ => q.bind(row.try_get::<String, _>(i).map_err(db)?),
                };
            }
            q.execute(&mut *pg).await.map_err(db)?;
        }
        copied.push((table, rows.len() as u64));
    }
    for table in SERIAL_TABLES {
        sqlx::query(&format!(
            "SELECT setval(pg_get_serial_sequence('{table}', 'id'), \
             (SELECT COALESCE(MAX(id), 0) + 1 FROM {table}), false)"
        ))
        .execute(&mut *pg)
        .await
        .map_err(db)?;
    }
    pg.commit().await.map_err(db)?;
    let _ = lite.close().await;
    Ok(copied)
}

#[cfg(test)]
mod tests {
    // A test that cannot go on should stop at once, with the value it choked on.
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::registry::RegistryStore;
    use crate::registry::conformance::{attempt, entry, insert, webhook};

    #[tokio::test]
    async fn webhook_endpoints_and_attempts_move_with_the_registry() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("registry.sqlite");
        {
            let lite = SqliteStore::open(&file).await.unwrap();
            let app = insert(&lite, "Moved").await;
            let w = webhook("ep_m", &app.clients[0].client_id);
            lite.insert_webhook(&w, &entry("webhook.create"))
                .await
                .unwrap();
            lite.append_webhook_attempts(&[attempt("ep_m", 3, 1, "delivered")])
                .await
                .unwrap();
            lite.pool().close().await;
        }
        let url = scopecast_testkit::Postgres::shared().database().await;
        let copied = sqlite_to_postgres(&file, &url).await.unwrap();
        assert!(copied.contains(&("webhook_endpoints", 1)), "{copied:?}");
        assert!(copied.contains(&("webhook_attempts", 1)), "{copied:?}");
        let pg = PgStore::open(&url).await.unwrap();
        let moved = pg.load_webhooks().await.unwrap();
        assert_eq!(moved.len(), 1);
        assert_eq!(moved[0].sealed, vec![0, 1, 2, 255]);
        assert_eq!(
            (moved[0].cursor, moved[0].cursor_epoch.as_str()),
            (41, "log-1")
        );
        // The attempts' id sequence is past the copied rows: new attempts go in.
        pg.append_webhook_attempts(&[attempt("ep_m", 4, 1, "delivered")])
            .await
            .unwrap();
        let all = pg.webhook_attempts("ep_m", None, 10).await.unwrap();
        assert_eq!(all.iter().map(|a| a.seq).collect::<Vec<_>>(), [4, 3]);
        let changes = pg.changes_after(0, 100).await.unwrap();
        assert!(
            changes
                .iter()
                .any(|c| c.webhook_id.as_deref() == Some("ep_m"))
        );
    }
}
