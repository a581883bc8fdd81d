//! The access audit (SECURITY.md "Access audit"): which application received which events
//! under which token, who was refused, and every webhook attempt.
//!
//! - [`AccessAudit`]: what front ends call. A session sends its subscription records at
//!   subscribe, at each checkpoint (`audit.checkpoint_ms`), at unsubscribe and at its end;
//!   nothing per delivered event (the counts are the session's own counters). Refusals are
//!   counted in memory per (client ID or `unknown`, reason, missing scope, minute) and written
//!   once their minute is over, so a caller without a credential cannot write rows at will.
//! - The writer task (one per node): gathers records, chains them (`chain`), writes them to
//!   the registry store in one transaction every [`LINGER`], signs the chain's head every
//!   `audit.sign_ms`, and prunes by retention (only up to a signed checkpoint).
//! - `query`: `GET /admin/v1/audit/access` and its NDJSON and FHIR `AuditEvent` forms.

pub(crate) mod chain;
pub(crate) mod query;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use scopecast_protocol::Timestamp;
use scopecast_protocol::audit::{
    AccessRecord, RefusalRecord, SubscriptionRecord, WebhookAttemptRecord,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::AuditConfig;
use crate::metrics::UNKNOWN_CLIENT;
use crate::registry::{AccessFilter, AuditRow, Registry, RegistryError, StoreError};
use chain::{AuditKey, ZERO_HASH};

/// How long the writer gathers records before one write.
const LINGER: Duration = Duration::from_millis(250);
/// Records waiting for the writer at most; more are dropped (counted, logged).
const QUEUE: usize = 65_536;
/// Distinct refusal keys of one minute at most; more count under one `overflow` key.
const MAX_REFUSAL_KEYS: usize = 10_000;
/// Rows chained but not yet written at most (the store is down): more records are dropped,
/// counted and logged, so memory stays bounded.
const MAX_PENDING: usize = QUEUE;
/// How often retention runs.
const PRUNE_EVERY: Duration = Duration::from_secs(3_600);

/// The key of a refusal count: client ID (or `unknown`), claimed (not verified), reason,
/// missing scope, minute.
type RefusalKey = (String, bool, &'static str, Option<String>, i64);

/// The access audit's handle. Cheap to clone; does nothing when `audit.enabled` is false.
#[derive(Clone)]
pub(crate) struct AccessAudit {
    inner: Option<Arc<Inner>>,
}

impl std::fmt::Debug for AccessAudit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessAudit")
            .field("enabled", &self.inner.is_some())
            .finish_non_exhaustive()
    }
}

struct Inner {
    tx: mpsc::Sender<AccessRecord>,
    refusals: Mutex<HashMap<RefusalKey, u64>>,
    environment: String,
    node: String,
    key: AuditKey,
    dropped: AtomicU64,
    metrics: Arc<crate::metrics::Metrics>,
    /// This node's chain and the last row its writer stored (for [`chain::verify`]).
    written: Mutex<Option<(String, u64)>>,
}

/// What the writer task needs, made by [`AccessAudit::new`].
pub(crate) struct Writer {
    rx: mpsc::Receiver<AccessRecord>,
    inner: Arc<Inner>,
    registry: Registry,
    config: AuditConfig,
}

impl AccessAudit {
    /// An audit for `environment` (`<kind>/<name>`) written by `node` (`local` on one node)
    /// and signed with `key`, and its writer (to run with [`Writer::run`]); `None` writer when
    /// the audit is off.
    pub(crate) fn new(
        config: &AuditConfig,
        registry: Registry,
        environment: String,
        node: String,
        key: AuditKey,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> (AccessAudit, Option<Writer>) {
        if !config.enabled {
            return (AccessAudit { inner: None }, None);
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let inner = Arc::new(Inner {
            tx,
            refusals: Mutex::new(HashMap::new()),
            environment,
            node,
            key,
            dropped: AtomicU64::new(0),
            metrics,
            written: Mutex::new(None),
        });
        let writer = Writer {
            rx,
            inner: inner.clone(),
            registry,
            config: config.clone(),
        };
        (AccessAudit { inner: Some(inner) }, Some(writer))
    }

    /// True when records are written.
    pub(crate) fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// This node's chain and the last row its writer stored, once it stored one.
    pub(crate) fn written(&self) -> Option<(String, u64)> {
        self.inner.as_deref().and_then(|i| i.written.lock().clone())
    }

    /// The key that signs checkpoints (`None` when off).
    pub(crate) fn key(&self) -> Option<&AuditKey> {
        self.inner.as_deref().map(|i| &i.key)
    }

    fn send(&self, record: AccessRecord) {
        let Some(inner) = &self.inner else { return };
        if inner.tx.try_send(record).is_err() {
            let n = inner.dropped.fetch_add(1, Ordering::Relaxed);
            inner.metrics.audit_dropped.inc();
            if n.is_power_of_two() {
                tracing::warn!(
                    dropped = n + 1,
                    "the access audit writer is behind: records were dropped (scopecast_audit_dropped_total)"
                );
            }
        }
    }

    /// Records a snapshot of a subscription's lifetime.
    pub(crate) fn subscription(&self, record: SubscriptionRecord) {
        self.send(AccessRecord::Subscription(record));
    }

    /// Records webhook attempts (and skips), each with its endpoint's client ID and the
    /// event's topic.
    pub(crate) fn webhook_attempts(&self, attempts: Vec<WebhookAttemptRecord>) {
        for a in attempts {
            self.send(AccessRecord::WebhookAttempt(a));
        }
    }

    /// Counts a refusal: of `client_id` (`None`, or one not registered here: `unknown`) for
    /// `reason`, lacking `missing_scope`. Written once its minute is over.
    pub(crate) fn refusal(
        &self,
        client_id: Option<&str>,
        claimed: bool,
        reason: &'static str,
        missing_scope: Option<&str>,
    ) {
        let Some(inner) = &self.inner else { return };
        let minute = Timestamp::now().unix_ms() / 60_000 * 60_000;
        let client = client_id.unwrap_or(UNKNOWN_CLIENT).to_owned();
        let claimed = claimed && client != UNKNOWN_CLIENT;
        let mut map = inner.refusals.lock();
        let key = (
            client,
            claimed,
            reason,
            missing_scope.map(str::to_owned),
            minute,
        );
        if map.len() >= MAX_REFUSAL_KEYS && !map.contains_key(&key) {
            *map.entry((UNKNOWN_CLIENT.to_owned(), false, "overflow", None, minute))
                .or_insert(0) += 1;
            return;
        }
        *map.entry(key).or_insert(0) += 1;
    }

    /// The environment's name and this node's, as records carry them.
    pub(crate) fn environment(&self) -> &str {
        self.inner.as_deref().map_or("", |i| i.environment.as_str())
    }

    /// This node's name in records.
    pub(crate) fn node(&self) -> &str {
        self.inner.as_deref().map_or("", |i| i.node.as_str())
    }
}

/// A new record id: `prefix` and 32 hex digits.
pub(crate) fn record_id(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

impl Writer {
    /// Runs until `shutdown`, then writes what is left (the current minute's refusals too)
    /// and signs the head.
    pub(crate) async fn run(mut self, shutdown: CancellationToken) {
        let chain = self.inner.node.clone();
        let mut state = ChainState {
            chain,
            head: None,
            pending: Vec::new(),
            signed_seq: 0,
            // The first tick signs the head: rows a crash left unsigned are signed now.
            last_sign: tokio::time::Instant::now()
                .checked_sub(Duration::from_millis(self.config.sign_ms))
                .unwrap_or_else(tokio::time::Instant::now),
        };
        // The head, and the records this node left live when it stopped last.
        loop {
            match self.start(&mut state).await {
                Ok(()) => {
                    // What this node wrote before it stopped is its own: a cut of it is found
                    // from the start, not only after the next write.
                    if let Some((seq, _)) = &state.head {
                        *self.inner.written.lock() = Some((state.chain.clone(), *seq));
                    }
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "access audit: cannot read its chain; trying again");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
        let sign_every = Duration::from_millis(self.config.sign_ms);
        let mut tick = tokio::time::interval(LINGER);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_prune = tokio::time::Instant::now() - PRUNE_EVERY + Duration::from_secs(30);
        let mut batch = Vec::new();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                n = self.rx.recv_many(&mut batch, 1024) => {
                    if n == 0 { break; }
                    self.add(&mut state, std::mem::take(&mut batch));
                    if state.pending.len() < 1024 { continue; }
                    self.flush(&mut state, false).await;
                }
                _ = tick.tick() => {
                    let records = self.refusals(false);
                    self.add(&mut state, records);
                    let sign = state.last_sign.elapsed() >= sign_every;
                    self.flush(&mut state, sign).await;
                    if last_prune.elapsed() >= PRUNE_EVERY {
                        last_prune = tokio::time::Instant::now();
                        self.prune(&state).await;
                    }
                }
            }
        }
        // Shutdown: what is queued, every refusal counted, then one signed write.
        self.rx.close();
        while let Ok(r) = self.rx.try_recv() {
            batch.push(r);
        }
        self.add(&mut state, std::mem::take(&mut batch));
        let records = self.refusals(true);
        self.add(&mut state, records);
        for _ in 0..3 {
            self.flush(&mut state, true).await;
            if state.pending.is_empty() {
                break;
            }
        }
    }

    async fn start(&self, state: &mut ChainState) -> Result<(), RegistryError> {
        state.head = self.registry.access_audit_head(&state.chain).await?;
        state.signed_seq = self
            .registry
            .access_audit_checkpoints(&state.chain)
            .await?
            .last()
            .map_or(0, |c| c.chain_seq);
        let stale = self
            .registry
            .access_audit_latest(&AccessFilter {
                chain: Some(state.chain.clone()),
                kind: Some("subscription".into()),
                live_only: true,
                limit: 100_000,
                ..AccessFilter::default()
            })
            .await?;
        let mut closed = Vec::new();
        for row in stale {
            if let Ok(AccessRecord::Subscription(mut s)) = serde_json::from_str(&row.body) {
                s.ended_at = Some(s.checkpoint_at);
                s.end_reason = Some("node_stopped".into());
                closed.push(AccessRecord::Subscription(s));
            }
        }
        if !closed.is_empty() {
            tracing::info!(
                records = closed.len(),
                "access audit: ending the subscription records this node left live when it stopped"
            );
            self.add(state, closed);
        }
        Ok(())
    }

    /// The refusal counts whose minute is over (all of them when `all`), as records.
    fn refusals(&self, all: bool) -> Vec<AccessRecord> {
        let now_minute = Timestamp::now().unix_ms() / 60_000 * 60_000;
        let mut map = self.inner.refusals.lock();
        let keys: Vec<RefusalKey> = map
            .keys()
            .filter(|k| all || k.4 < now_minute)
            .cloned()
            .collect();
        keys.into_iter()
            .filter_map(|k| {
                let count = map.remove(&k)?;
                let minute = Timestamp::from_unix_ms(k.4).ok()?;
                Some(AccessRecord::Refusal(RefusalRecord {
                    id: record_id("ref_"),
                    client_id: k.0,
                    claimed: k.1,
                    environment: self.inner.environment.clone(),
                    node: self.inner.node.clone(),
                    reason: k.2.to_owned(),
                    missing_scope: k.3,
                    minute,
                    count,
                }))
            })
            .collect()
    }

    /// Chains `records` after the head.
    fn add(&self, state: &mut ChainState, records: Vec<AccessRecord>) {
        for r in records {
            if state.pending.len() >= MAX_PENDING {
                self.inner.metrics.audit_dropped.inc();
                let n = self.inner.dropped.fetch_add(1, Ordering::Relaxed);
                if n.is_power_of_two() {
                    tracing::warn!(
                        dropped = n + 1,
                        "the access audit cannot write (registry store down?): records were dropped"
                    );
                }
                continue;
            }
            let Ok(body) = serde_json::to_string(&r) else {
                continue;
            };
            state.push(&r, body);
        }
    }

    /// Writes the pending rows (with a signed checkpoint of the head when `sign` and rows were
    /// added since the last one). On failure they stay pending; on a conflict (another writer
    /// took a row number) they go to a new chain of this writer's own.
    async fn flush(&self, state: &mut ChainState, sign: bool) {
        let head = state.head.clone();
        let checkpoint = match &head {
            Some((seq, hash)) if sign && *seq > state.signed_seq => Some(self.inner.key.sign(
                &state.chain,
                *seq,
                hash,
                Timestamp::now().unix_ms(),
            )),
            _ => None,
        };
        if state.pending.is_empty() && checkpoint.is_none() {
            if sign {
                state.last_sign = tokio::time::Instant::now();
            }
            return;
        }
        match self
            .registry
            .append_access_audit(&state.pending, checkpoint.as_ref())
            .await
        {
            Ok(()) => {
                self.inner
                    .metrics
                    .audit_records
                    .inc_by(state.pending.len() as u64);
                state.pending.clear();
                if let Some((seq, _)) = &state.head {
                    *self.inner.written.lock() = Some((state.chain.clone(), *seq));
                }
                if let Some(c) = checkpoint {
                    state.signed_seq = c.chain_seq;
                    state.last_sign = tokio::time::Instant::now();
                }
            }
            Err(RegistryError::Store(StoreError::Conflict(e))) => {
                // Another writer uses this chain's name (two nodes with one
                // cluster.node_name): its rows are not this writer's to sign. Go on in a chain
                // of its own.
                let fresh = format!(
                    "{}~{}",
                    self.inner.node,
                    &uuid::Uuid::new_v4().simple().to_string()[..8]
                );
                tracing::error!(chain = %state.chain, new_chain = %fresh, error = %e, "access audit: another writer uses this chain (two nodes with one cluster.node_name?); writing to a new chain");
                let bodies: Vec<(AccessRecord, String)> = state
                    .pending
                    .drain(..)
                    .filter_map(|r| Some((serde_json::from_str(&r.body).ok()?, r.body)))
                    .collect();
                state.chain = fresh;
                state.head = None;
                state.signed_seq = 0;
                for (r, body) in bodies {
                    state.push(&r, body);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, rows = state.pending.len(), "access audit: write failed; trying again");
            }
        }
    }

    /// Retention: drops this chain's rows older than `audit.retention_days`, up to the newest
    /// checkpoint signed before the cutoff (which stays, anchoring the first row kept); never
    /// the newest row, so the chain goes on from it.
    async fn prune(&self, state: &ChainState) {
        let keep_ms = i64::try_from(self.config.retention_days.saturating_mul(86_400_000))
            .unwrap_or(i64::MAX);
        let cutoff = Timestamp::now().unix_ms().saturating_sub(keep_ms);
        let Some((head, _)) = state.head.clone() else {
            return;
        };
        let result: Result<u64, RegistryError> = async {
            match self
                .registry
                .access_audit_prune_point(&state.chain, cutoff, head)
                .await?
            {
                Some(through) => {
                    self.registry
                        .prune_access_audit(&state.chain, through)
                        .await
                }
                None => Ok(0),
            }
        }
        .await;
        match result {
            Ok(0) => {}
            Ok(n) => tracing::info!(rows = n, "access audit: rows past retention pruned"),
            Err(e) => tracing::warn!(error = %e, "access audit: retention failed"),
        }
    }
}

/// The writer's place in its chain.
struct ChainState {
    chain: String,
    /// The newest row (written or pending): number and hash.
    head: Option<(u64, String)>,
    /// Rows chained but not written yet, in order.
    pending: Vec<AuditRow>,
    /// The newest row signed.
    signed_seq: u64,
    last_sign: tokio::time::Instant,
}

impl ChainState {
    fn push(&mut self, r: &AccessRecord, body: String) {
        let (seq, prev) = match &self.head {
            Some((s, h)) => (s + 1, h.clone()),
            None => (1, ZERO_HASH.to_owned()),
        };
        let hash = chain::row_hash(&prev, &self.chain, seq, &body);
        let (kind, from_ms, to_ms, first_seq, last_seq, live) = chain::columns(r);
        self.pending.push(AuditRow {
            chain: self.chain.clone(),
            chain_seq: seq,
            kind: kind.to_owned(),
            record_id: r.id().to_owned(),
            client_id: r.client_id().to_owned(),
            from_ms,
            to_ms,
            first_seq,
            last_seq,
            live,
            written_ms: Timestamp::now().unix_ms(),
            body,
            prev_hash: prev,
            hash: hash.clone(),
        });
        self.head = Some((seq, hash));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::SqliteStore;
    use scopecast_protocol::audit::SubscriptionRecord;

    fn sub(id: &str, at_ms: i64, ended: bool) -> AccessRecord {
        let t = Timestamp::from_unix_ms(at_ms).unwrap();
        AccessRecord::Subscription(SubscriptionRecord {
            id: id.to_owned(),
            client_id: "c1".into(),
            application_id: "a1".into(),
            environment: "non-production/default".into(),
            node: "local".into(),
            session: "1".into(),
            source: "127.0.0.1:1".into(),
            token_jti: Some("j".into()),
            token_iat: None,
            pattern: "lab.>".into(),
            granted_at: t,
            from_seq: 1,
            first_seq: Some(1),
            last_seq: Some(5),
            count: 5,
            connection_delivered_at_grant: 0,
            checkpoint_at: t,
            ended_at: ended.then_some(t),
            end_reason: ended.then(|| "unsubscribed".to_owned()),
        })
    }

    /// Retention prunes up to a signed checkpoint older than the cutoff, and the chain still
    /// verifies; a restart continues it; a removed row and another key's checkpoints do not
    /// verify (a changed row: `cli/tests/audit.rs`).
    #[tokio::test]
    async fn retention_keeps_the_chain_verifiable_and_a_removed_row_or_another_key_fails() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::open(
            SqliteStore::open(&dir.path().join("r.sqlite"))
                .await
                .unwrap(),
        )
        .await
        .unwrap();
        let config = AuditConfig {
            retention_days: 1,
            ..AuditConfig::default()
        };
        let key = || AuditKey::from_seed(&[3; 32]).unwrap();
        let metrics = Arc::new(crate::metrics::Metrics::new().unwrap());
        let (_audit, writer) = AccessAudit::new(
            &config,
            registry.clone(),
            "non-production/default".into(),
            "local".into(),
            key(),
            metrics,
        );
        let writer = writer.unwrap();
        let mut state = ChainState {
            chain: "local".into(),
            head: None,
            pending: Vec::new(),
            signed_seq: 0,
            last_sign: tokio::time::Instant::now(),
        };
        let old = Timestamp::now().unix_ms() - 3 * 86_400_000;
        let policy = || chain::Policy {
            now_ms: Timestamp::now().unix_ms(),
            sign_ms: 10_000,
            retention_ms: 86_400_000,
        };
        // Two old records, signed three days ago; then a new one, signed now.
        writer.add(
            &mut state,
            vec![sub("sub_1", old, true), sub("sub_2", old + 1, true)],
        );
        writer.flush(&mut state, false).await;
        let (seq, hash) = state.head.clone().unwrap();
        registry
            .append_access_audit(&[], Some(&key().sign("local", seq, &hash, old + 2)))
            .await
            .unwrap();
        writer.add(
            &mut state,
            vec![sub("sub_3", Timestamp::now().unix_ms(), false)],
        );
        writer.flush(&mut state, true).await;
        assert!(state.pending.is_empty());
        let report = chain::verify(&registry, &key(), policy(), None)
            .await
            .unwrap();
        assert!(report.ok, "{report:?}");
        assert_eq!(
            (report.chains[0].rows, report.chains[0].checkpoints),
            (3, 2)
        );
        writer.prune(&state).await;
        let report = chain::verify(&registry, &key(), policy(), None)
            .await
            .unwrap();
        assert!(report.ok, "after pruning: {report:?}");
        assert_eq!(report.chains[0].first, Some(3), "{report:?}");
        // Under a longer retention, rows removed before 3 would not have been pruned.
        let longer = chain::Policy {
            retention_ms: 10 * 86_400_000,
            ..policy()
        };
        assert!(
            !chain::verify(&registry, &key(), longer, None)
                .await
                .unwrap()
                .ok
        );
        // Another key did not sign these checkpoints.
        let other = AuditKey::from_seed(&[4; 32]).unwrap();
        assert!(
            !chain::verify(&registry, &other, policy(), None)
                .await
                .unwrap()
                .ok
        );
        // Restarted (a new writer state from the store) it continues the chain.
        let mut again = ChainState {
            chain: "local".into(),
            head: None,
            pending: Vec::new(),
            signed_seq: 0,
            last_sign: tokio::time::Instant::now(),
        };
        writer.start(&mut again).await.unwrap();
        // sub_3 was left live: the restart ends it as node_stopped, as row 4.
        assert_eq!(again.pending.len(), 1);
        assert_eq!(again.pending[0].chain_seq, 4);
        assert!(again.pending[0].body.contains("node_stopped"));
        writer.flush(&mut again, true).await;
        assert!(
            chain::verify(&registry, &key(), policy(), None)
                .await
                .unwrap()
                .ok
        );
        // Rows written long ago and never signed: a writer that stopped, or someone else.
        writer.add(
            &mut again,
            vec![sub("sub_9", Timestamp::now().unix_ms(), true)],
        );
        again.pending[0].written_ms = old;
        writer.flush(&mut again, false).await;
        let report = chain::verify(&registry, &key(), policy(), None)
            .await
            .unwrap();
        assert!(
            !report.ok && report.chains[0].problems[0].contains("never signed"),
            "{report:?}"
        );
        // Signed (as a restarted writer does at once), it verifies again.
        writer.flush(&mut again, true).await;
        assert!(
            chain::verify(&registry, &key(), policy(), None)
                .await
                .unwrap()
                .ok
        );
        let pool = sqlx::SqlitePool::connect(&format!(
            "sqlite://{}",
            dir.path().join("r.sqlite").display()
        ))
        .await
        .unwrap();
        // The newest row cut together with the checkpoint that signed it: the shorter chain
        // is whole, and only the writer's own head shows the cut.
        let head = writer.inner.written.lock().clone().unwrap();
        assert_eq!(head, ("local".to_owned(), 5));
        sqlx::query("DELETE FROM access_audit WHERE chain_seq = 5")
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query("DELETE FROM access_audit_checkpoints WHERE chain_seq = 5")
            .execute(&pool)
            .await
            .unwrap();
        assert!(
            chain::verify(&registry, &key(), policy(), None)
                .await
                .unwrap()
                .ok
        );
        let report = chain::verify(&registry, &key(), policy(), Some(("local", 5)))
            .await
            .unwrap();
        assert!(
            !report.ok
                && report.chains[0].problems[0].contains("rows 5..5 that this node wrote are gone"),
            "{report:?}"
        );
        // A row removed from the middle is found.
        sqlx::query("DELETE FROM access_audit WHERE chain_seq = 3")
            .execute(&pool)
            .await
            .unwrap();
        let report = chain::verify(&registry, &key(), policy(), None)
            .await
            .unwrap();
        assert!(!report.ok);
        assert!(
            report.chains[0].problems.iter().any(|p| p.contains("gone")),
            "{report:?}"
        );
    }
}
