//! The conformance suite of [`RegistryStore`]: every implementation runs it
//! (`conformance_tests!` in its module), so a new store starts green or red on its first day.
//! Each check states one rule of the trait's contract: round trips of what it stores, and its
//! change feed (one change per write, in the write's transaction; ids consecutive and visible
//! in order; catch-up by cursor whatever the wake-ups did).

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use scopecast_protocol::admin::Role;
use serde_json::json;

use super::credential::{Credential, CredentialSource};
use super::store::{
    ApplicationPatch, Change, ChangeKind, Deletion, NewApplication, RegistryStore, StoreError,
    StoredWebhook, WebhookAttempt, WebhookState,
};
use super::{AuditEntry, AuditQuery, ClientKeysSpec, StoredApplication, StoredClient};
use crate::config::EnvironmentKind;

/// A fresh, empty store under test.
pub(crate) struct Made {
    pub(crate) store: Arc<dyn RegistryStore>,
    /// Whatever the store needs to outlive (a temporary folder).
    pub(crate) _keep: Box<dyn Any + Send + Sync>,
}

/// Makes fresh, empty stores of one implementation.
#[async_trait]
pub(crate) trait Maker: Sync {
    /// A new store with nothing in it.
    async fn make(&self) -> Made;
}

pub(crate) fn entry(action: &str) -> AuditEntry {
    AuditEntry {
        id: uuid::Uuid::now_v7().to_string(),
        at_ms: 7,
        actor: "tester".to_owned(),
        action: action.to_owned(),
        application_id: None,
        client_id: None,
        environment: Some("non-production/test".to_owned()),
        detail: json!({}),
    }
}

fn client(kind: EnvironmentKind) -> StoredClient {
    StoredClient {
        client_id: uuid::Uuid::new_v4().to_string(),
        kind,
        active: false,
        secret_hash: Some("$argon2id$first".to_owned()),
        keys: ClientKeysSpec::None,
        client_id_header: false,
        granted_scope: None,
        created_at_ms: 1,
        updated_at_ms: 1,
    }
}

fn application(name: &str) -> StoredApplication {
    StoredApplication {
        id: uuid::Uuid::new_v4().to_string(),
        name: name.to_owned(),
        vendor: "Vendor".to_owned(),
        description: "about".to_owned(),
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
    }
}

pub(crate) async fn insert(store: &dyn RegistryStore, name: &str) -> StoredApplication {
    let app = application(name);
    store
        .insert_application(
            &NewApplication {
                application: app.clone(),
            },
            &entry("application.create"),
        )
        .await
        .unwrap();
    app
}

fn credential(name: &str) -> Credential {
    Credential {
        id: uuid::Uuid::new_v4().to_string(),
        name: name.to_owned(),
        role: Role::Viewer,
        token_hash: uuid::Uuid::new_v4().simple().to_string(),
        created_at_ms: 1,
        created_by: "tester".to_owned(),
        revoked_at_ms: None,
        revoked_by: None,
        source: CredentialSource::Store,
    }
}

/// The changes after `cursor`, read in pages of `page`, asserting they come in id order.
async fn all_after(store: &dyn RegistryStore, cursor: u64, page: usize) -> Vec<Change> {
    let mut out: Vec<Change> = Vec::new();
    let mut at = cursor;
    loop {
        let batch = store.changes_after(at, page).await.unwrap();
        assert!(batch.len() <= page, "at most `limit` changes");
        let Some(last) = batch.last() else {
            return out;
        };
        at = last.id;
        out.extend(batch);
    }
}

fn ids(changes: &[Change]) -> Vec<u64> {
    changes.iter().map(|c| c.id).collect()
}

/// Applications and their clients read back as written, one or all; every client write
/// changes only what it names; a write to a missing row says so.
pub(crate) async fn applications_round_trip(m: &dyn Maker) {
    let made = m.make().await;
    let store = &*made.store;
    assert!(store.load().await.unwrap().is_empty());
    let app = insert(store, "Round trip").await;
    let other = insert(store, "Other").await;
    let got = store.load_application(&app.id).await.unwrap().unwrap();
    assert_eq!(
        (&got.name, &got.vendor, &got.description, &got.scope),
        (&app.name, &app.vendor, &app.description, &app.scope)
    );
    assert_eq!(got.clients.len(), 2);
    assert_eq!(got.clients[0].kind, EnvironmentKind::Production, "first");
    assert_eq!(got.clients[0].client_id, app.clients[0].client_id);
    assert_eq!(store.load().await.unwrap().len(), 2);
    assert!(store.load_application("nope").await.unwrap().is_none());

    let patch = ApplicationPatch {
        name: Some("Renamed".to_owned()),
        scope: Some("subscribe:lab.>".to_owned()),
        ..ApplicationPatch::default()
    };
    assert!(
        store
            .update_application(&app.id, &patch, 9, &entry("application.update"))
            .await
            .unwrap()
    );
    assert!(
        !store
            .update_application("nope", &patch, 9, &entry("application.update"))
            .await
            .unwrap()
    );
    let c = &app.clients[1].client_id;
    assert!(
        store
            .set_secret_hash(c, "$argon2id$second", 9, &entry("x"))
            .await
            .unwrap()
    );
    let jwks = ClientKeysSpec::JwksUri("https://keys.example/jwks.json".to_owned());
    assert!(store.set_keys(c, &jwks, 9, &entry("x")).await.unwrap());
    assert!(
        store
            .set_active(c, true, "tester", "pilot", 9, &entry("x"))
            .await
            .unwrap()
    );
    assert!(
        store
            .set_client_id_header(c, true, 9, &entry("x"))
            .await
            .unwrap()
    );
    assert!(
        !store
            .set_secret_hash("nope", "x", 9, &entry("x"))
            .await
            .unwrap()
    );
    assert!(!store.set_keys("nope", &jwks, 9, &entry("x")).await.unwrap());
    assert!(
        !store
            .set_active("nope", true, "t", "r", 9, &entry("x"))
            .await
            .unwrap()
    );
    assert!(
        !store
            .set_client_id_header("nope", true, 9, &entry("x"))
            .await
            .unwrap()
    );

    let got = store.load_application(&app.id).await.unwrap().unwrap();
    assert_eq!(
        (got.name.as_str(), got.scope.as_str()),
        ("Renamed", "subscribe:lab.>")
    );
    assert_eq!(
        got.vendor, app.vendor,
        "a patch leaves what it does not name"
    );
    let np = &got.clients[1];
    assert_eq!(np.secret_hash.as_deref(), Some("$argon2id$second"));
    assert_eq!(np.keys, jwks);
    assert!(np.active && np.client_id_header);
    let prod = &got.clients[0];
    assert!(
        !prod.active && !prod.client_id_header,
        "the other client is untouched"
    );
    assert_eq!(prod.secret_hash.as_deref(), Some("$argon2id$first"));

    assert_eq!(
        store
            .delete_application(&app.id, &entry("application.delete"))
            .await
            .unwrap(),
        Deletion::Active(vec![c.clone()])
    );
    assert!(
        store
            .set_active(c, false, "tester", "done", 9, &entry("x"))
            .await
            .unwrap()
    );
    assert_eq!(
        store
            .delete_application(&app.id, &entry("application.delete"))
            .await
            .unwrap(),
        Deletion::Deleted
    );
    assert_eq!(
        store
            .delete_application(&app.id, &entry("application.delete"))
            .await
            .unwrap(),
        Deletion::NotFound
    );
    let left = store.load().await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].id, other.id);
}

/// Credentials read back as written; a valid name is unique; a revoked one frees it; the audit
/// trail holds every write's entry, newest first.
pub(crate) async fn credentials_and_audit_round_trip(m: &dyn Maker) {
    let made = m.make().await;
    let store = &*made.store;
    let a = credential("alice");
    store
        .insert_credential(&a, &entry("credential.create"))
        .await
        .unwrap();
    let all = store.load_credentials().await.unwrap();
    assert_eq!(all, vec![a.clone()]);
    let again = credential("alice");
    assert!(matches!(
        store
            .insert_credential(&again, &entry("credential.create"))
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert!(
        store
            .revoke_credential(&a.id, 5, "bob", &entry("credential.revoke"))
            .await
            .unwrap()
    );
    assert!(
        !store
            .revoke_credential(&a.id, 6, "bob", &entry("credential.revoke"))
            .await
            .unwrap(),
        "already revoked"
    );
    store
        .insert_credential(&again, &entry("credential.create"))
        .await
        .unwrap();
    let all = store.load_credentials().await.unwrap();
    let revoked = all.iter().find(|c| c.id == a.id).unwrap();
    assert_eq!(
        (revoked.revoked_at_ms, revoked.revoked_by.as_deref()),
        (Some(5), Some("bob"))
    );
    assert_eq!(all.len(), 2);
    store.append_audit(&entry("keys.rotate")).await.unwrap();
    let trail = store
        .audit(&AuditQuery {
            limit: 10,
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    let mut actions: Vec<_> = trail.iter().map(|e| e.action.as_str()).collect();
    actions.sort_unstable();
    assert_eq!(
        actions,
        [
            "credential.create",
            "credential.create",
            "credential.revoke",
            "keys.rotate"
        ]
    );
}

/// The one change a write just added after `before`: its id is `before + 1`, it is the
/// newest, and it has `kind` and names exactly `keys` (application, client, credential).
async fn one_change(
    store: &dyn RegistryStore,
    before: u64,
    kind: ChangeKind,
    keys: (Option<&str>, Option<&str>, Option<&str>),
) -> u64 {
    let got = store.changes_after(before, 100).await.unwrap();
    assert_eq!(ids(&got), [before + 1], "one change for {kind:?}");
    let c = &got[0];
    assert_eq!(c.kind, kind);
    assert_eq!(
        (
            c.application_id.as_deref(),
            c.client_id.as_deref(),
            c.credential_id.as_deref()
        ),
        keys,
        "the keys of {kind:?}"
    );
    assert_eq!(c.at_ms, 7, "the write's audit time");
    assert_eq!(store.latest_change().await.unwrap(), before + 1);
    before + 1
}

/// Every write adds exactly one change, of its kind and naming its keys, and the feed's
/// latest id moves by one; a write that changes nothing (a missing row, an audit-only entry)
/// adds none.
/// Record versions, grants, imported and retired records, and the audit's environment.
pub(crate) async fn records_grants_and_versions_round_trip(m: &dyn Maker) {
    let made = m.make().await;
    let store = &*made.store;
    let app = insert(store, "Records").await;
    let np = app.clients[1].client_id.clone();
    // The first activation grants the record's scope then; a deactivation keeps the grant.
    store
        .set_active(&np, true, "tester", "go", 2, &entry("client.activate"))
        .await
        .unwrap();
    let held = store.load_application(&app.id).await.unwrap().unwrap();
    assert_eq!(
        held.clients[1].granted_scope.as_deref(),
        Some("subscribe:adt.>")
    );
    assert_eq!(
        held.clients[0].granted_scope, None,
        "never activated: no grant"
    );
    let before = store.latest_change().await.unwrap();
    assert!(
        store
            .set_grant(&np, "subscribe:adt.a01", 3, &entry("client.set_grant"))
            .await
            .unwrap()
    );
    let changes = store.changes_after(before, 10).await.unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].kind, ChangeKind::GrantChanged);
    assert_eq!(changes[0].application_id.as_deref(), Some(app.id.as_str()));
    assert!(
        !store
            .set_grant("no-such-client", "subscribe:a", 3, &entry("x"))
            .await
            .unwrap()
    );
    // A version bump with a frozen record, then a draft that keeps the frozen record.
    let v2 = ApplicationPatch {
        scope: Some("subscribe:adt.> subscribe:lab.>".to_owned()),
        version: Some(2),
        frozen: Some(true),
        frozen_record: Some("{\"v\":2}".to_owned()),
        ..ApplicationPatch::default()
    };
    store
        .update_application(&app.id, &v2, 4, &entry("application.update"))
        .await
        .unwrap();
    let draft = ApplicationPatch {
        description: Some("draft".to_owned()),
        version: Some(3),
        frozen: Some(false),
        ..ApplicationPatch::default()
    };
    store
        .update_application(&app.id, &draft, 5, &entry("application.update"))
        .await
        .unwrap();
    let held = store.load_application(&app.id).await.unwrap().unwrap();
    assert_eq!((held.version, held.frozen), (3, false));
    assert_eq!(
        held.frozen_record.as_deref(),
        Some("{\"v\":2}"),
        "a draft keeps the frozen record"
    );
    assert_eq!(
        held.clients[1].granted_scope.as_deref(),
        Some("subscribe:adt.a01"),
        "a record change never touches the grant"
    );
    // A whole record put: retired, imported, one client deactivated, secrets kept.
    let mut put = held.clone();
    put.version = 4;
    put.origin = Some("kid-1".to_owned());
    put.record_jws = Some("a.b.c".to_owned());
    put.retired_at_ms = Some(6);
    put.updated_at_ms = 6;
    let before = store.latest_change().await.unwrap();
    store
        .put_record(
            &put,
            false,
            std::slice::from_ref(&np),
            "tester",
            "retired",
            &entry("application.import"),
        )
        .await
        .unwrap();
    let kinds: Vec<ChangeKind> = store
        .changes_after(before, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.kind)
        .collect();
    assert_eq!(
        kinds,
        [ChangeKind::RecordPut, ChangeKind::ClientDeactivated]
    );
    let held = store.load_application(&app.id).await.unwrap().unwrap();
    assert_eq!(
        (
            held.version,
            held.origin.as_deref(),
            held.record_jws.as_deref(),
            held.retired_at_ms
        ),
        (4, Some("kid-1"), Some("a.b.c"), Some(6))
    );
    assert!(!held.clients[1].active);
    assert_eq!(
        held.clients[1].secret_hash, app.clients[1].secret_hash,
        "secrets stay"
    );
    // A new record inserted whole.
    let mut fresh = application("Imported");
    fresh.origin = Some("kid-1".to_owned());
    fresh.version = 7;
    for c in &mut fresh.clients {
        c.secret_hash = None;
    }
    store
        .put_record(
            &fresh,
            true,
            &[],
            "tester",
            "",
            &entry("application.import"),
        )
        .await
        .unwrap();
    let got = store.load_application(&fresh.id).await.unwrap().unwrap();
    assert_eq!(
        (
            got.version,
            got.clients.len(),
            got.clients[0].secret_hash.clone()
        ),
        (7, 2, None)
    );
    // The audit keeps the environment it was written in.
    let audit = store
        .audit(&AuditQuery {
            application_id: None,
            client_id: None,
            limit: 1,
        })
        .await
        .unwrap();
    assert_eq!(audit[0].environment.as_deref(), Some("non-production/test"));
}

pub(crate) async fn every_write_adds_exactly_one_change(m: &dyn Maker) {
    let made = m.make().await;
    let store = &*made.store;
    assert_eq!(store.latest_change().await.unwrap(), 0);
    assert!(store.changes_after(0, 10).await.unwrap().is_empty());
    let app = insert(store, "Feed").await;
    let a = Some(app.id.as_str());
    let c = app.clients[0].client_id.as_str();
    let cred = credential("carol");
    let mut at = one_change(store, 0, ChangeKind::ApplicationCreated, (a, None, None)).await;

    let name_only = ApplicationPatch {
        name: Some("Feed 2".to_owned()),
        ..ApplicationPatch::default()
    };
    store
        .update_application(&app.id, &name_only, 8, &entry("x"))
        .await
        .unwrap();
    at = one_change(store, at, ChangeKind::ApplicationUpdated, (a, None, None)).await;
    let scope = ApplicationPatch {
        scope: Some("subscribe:lab.>".to_owned()),
        ..ApplicationPatch::default()
    };
    store
        .update_application(&app.id, &scope, 8, &entry("x"))
        .await
        .unwrap();
    at = one_change(store, at, ChangeKind::CeilingChanged, (a, None, None)).await;
    let client = (a, Some(c), None);
    store
        .set_secret_hash(c, "$h", 8, &entry("x"))
        .await
        .unwrap();
    at = one_change(store, at, ChangeKind::SecretChanged, client).await;
    store
        .set_keys(c, &ClientKeysSpec::None, 8, &entry("x"))
        .await
        .unwrap();
    at = one_change(store, at, ChangeKind::KeysChanged, client).await;
    store
        .set_active(c, true, "t", "r", 8, &entry("x"))
        .await
        .unwrap();
    at = one_change(store, at, ChangeKind::ClientActivated, client).await;
    store
        .set_active(c, false, "t", "r", 8, &entry("x"))
        .await
        .unwrap();
    at = one_change(store, at, ChangeKind::ClientDeactivated, client).await;
    store
        .set_client_id_header(c, true, 8, &entry("x"))
        .await
        .unwrap();
    at = one_change(store, at, ChangeKind::ClientIdHeaderChanged, client).await;
    let credential_keys = (None, None, Some(cred.id.as_str()));
    store.insert_credential(&cred, &entry("x")).await.unwrap();
    at = one_change(store, at, ChangeKind::CredentialCreated, credential_keys).await;
    store
        .revoke_credential(&cred.id, 8, "t", &entry("x"))
        .await
        .unwrap();
    at = one_change(store, at, ChangeKind::CredentialRevoked, credential_keys).await;

    // Writes that change nothing add nothing.
    store.append_audit(&entry("x")).await.unwrap();
    store
        .update_application("nope", &name_only, 8, &entry("x"))
        .await
        .unwrap();
    store
        .set_secret_hash("nope", "$h", 8, &entry("x"))
        .await
        .unwrap();
    store
        .set_keys("nope", &ClientKeysSpec::None, 8, &entry("x"))
        .await
        .unwrap();
    store
        .set_active("nope", true, "t", "r", 8, &entry("x"))
        .await
        .unwrap();
    store
        .set_client_id_header("nope", true, 8, &entry("x"))
        .await
        .unwrap();
    store
        .revoke_credential(&cred.id, 8, "t", &entry("x"))
        .await
        .unwrap();
    store.delete_application("nope", &entry("x")).await.unwrap();
    assert_eq!(store.latest_change().await.unwrap(), at);

    store
        .delete_application(&app.id, &entry("x"))
        .await
        .unwrap();
    let at = one_change(store, at, ChangeKind::ApplicationDeleted, (a, None, None)).await;
    assert_eq!(
        ids(&all_after(store, 0, 100).await),
        (1..=at).collect::<Vec<_>>()
    );
}

/// A write that fails leaves no change row (and no audit entry): both roll back with it, and
/// the next write takes the next id, leaving no hole.
pub(crate) async fn a_failed_write_adds_no_change(m: &dyn Maker) {
    let made = m.make().await;
    let store = &*made.store;
    let app = insert(store, "Taken").await;
    let cred = credential("dave");
    store.insert_credential(&cred, &entry("x")).await.unwrap();
    let before = store.latest_change().await.unwrap();
    assert_eq!(before, 2);

    let clash = insert_err(store, application("Taken")).await;
    assert!(matches!(clash, StoreError::Conflict(_)), "{clash}");
    let mut renamed = application("Fresh");
    renamed.clients[1].client_id = app.clients[0].client_id.clone();
    // The first rows go in, the second client clashes: the whole write rolls back.
    assert!(matches!(
        insert_err(store, renamed.clone()).await,
        StoreError::Conflict(_)
    ));
    assert!(store.load_application(&renamed.id).await.unwrap().is_none());
    let rename = ApplicationPatch {
        name: Some("Taken".to_owned()),
        ..ApplicationPatch::default()
    };
    let second = insert(store, "Second").await;
    let third = store.latest_change().await.unwrap();
    assert_eq!(third, before + 1);
    assert!(matches!(
        store
            .update_application(&second.id, &rename, 9, &entry("x"))
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store
            .insert_credential(&credential("dave"), &entry("x"))
            .await,
        Err(StoreError::Conflict(_))
    ));
    let c = &app.clients[0].client_id;
    store
        .set_active(c, true, "t", "r", 9, &entry("x"))
        .await
        .unwrap();
    assert_eq!(
        store
            .delete_application(&app.id, &entry("x"))
            .await
            .unwrap(),
        Deletion::Active(vec![c.clone()])
    );
    assert_eq!(store.latest_change().await.unwrap(), third + 1);
    let all = all_after(store, 0, 100).await;
    assert_eq!(ids(&all), (1..=third + 1).collect::<Vec<_>>(), "no hole");
    assert_eq!(
        store
            .audit(&AuditQuery {
                limit: 100,
                ..AuditQuery::default()
            })
            .await
            .unwrap()
            .len(),
        4,
        "only the writes that went in are audited"
    );
}

async fn insert_err(store: &dyn RegistryStore, app: StoredApplication) -> StoreError {
    store
        .insert_application(&NewApplication { application: app }, &entry("x"))
        .await
        .unwrap_err()
}

/// Ids are consecutive from 1 and come in id order, whatever the page size: reading by cursor
/// skips no id and repeats none.
pub(crate) async fn changes_are_read_by_cursor_in_order_without_skipping(m: &dyn Maker) {
    let made = m.make().await;
    let store = &*made.store;
    let app = insert(store, "Paged").await;
    let c = &app.clients[0].client_id;
    for i in 0..20 {
        store
            .set_active(c, i % 2 == 0, "t", "r", i, &entry("x"))
            .await
            .unwrap();
    }
    let all = all_after(store, 0, 1000).await;
    assert_eq!(ids(&all), (1..=21).collect::<Vec<_>>());
    for page in [1, 3, 7, 21, 22] {
        assert_eq!(all_after(store, 0, page).await, all, "pages of {page}");
    }
    let tail = all_after(store, 15, 4).await;
    assert_eq!(ids(&tail), (16..=21).collect::<Vec<_>>());
    assert!(store.changes_after(21, 10).await.unwrap().is_empty());
    assert!(store.changes_after(1000, 10).await.unwrap().is_empty());
    assert_eq!(all[1].kind, ChangeKind::ClientActivated);
    assert_eq!(all[2].kind, ChangeKind::ClientDeactivated);
}

/// Wake-ups are only hints: a follower that was not listening while several writes went in
/// finds every one of them by cursor; one that listens is woken after a write commits.
pub(crate) async fn a_follower_catches_up_after_missed_wakeups(m: &dyn Maker) {
    let made = m.make().await;
    let store = made.store.clone();
    let cursor = store.latest_change().await.unwrap();
    // Taken, never polled while the writes go in: every signal is missed.
    let mut missed = store.wakeups();
    let app = insert(&*store, "Quiet").await;
    for i in 0..4 {
        store
            .set_secret_hash(&app.clients[0].client_id, &format!("$h{i}"), i, &entry("x"))
            .await
            .unwrap();
    }
    let got = all_after(&*store, cursor, 2).await;
    assert_eq!(ids(&got), (cursor + 1..=cursor + 5).collect::<Vec<_>>());
    assert_eq!(got[0].kind, ChangeKind::ApplicationCreated);
    assert!(got[1..].iter().all(|c| c.kind == ChangeKind::SecretChanged));
    // The missed signals may be merged, but at least one is there for a late listener.
    tokio::time::timeout(Duration::from_secs(5), missed.next())
        .await
        .expect("a wake-up after the writes")
        .expect("the wake-ups go on while the store lives");

    // A listener waiting when a write commits is woken, and then finds the write.
    let mut listening = store.wakeups();
    let writer = {
        let store = store.clone();
        tokio::spawn(async move { insert(&*store, "Loud").await })
    };
    tokio::time::timeout(Duration::from_secs(5), listening.next())
        .await
        .expect("woken after the write")
        .expect("the wake-ups go on while the store lives");
    let loud = writer.await.unwrap();
    let last = all_after(&*store, cursor + 5, 10).await;
    assert_eq!(ids(&last), [cursor + 6]);
    assert_eq!(last[0].application_id.as_deref(), Some(loud.id.as_str()));
}

/// With writers racing, a reader never sees an id while a lower one can still appear: every
/// read by cursor starts right after it, and in the end every write is there once.
pub(crate) async fn concurrent_writes_become_visible_in_id_order(m: &dyn Maker) {
    let made = m.make().await;
    let store = made.store.clone();
    let app = insert(&*store, "Busy").await;
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let store = store.clone();
            let c = app.clients[w % 2].client_id.clone();
            tokio::spawn(async move {
                for i in 0..15 {
                    store
                        .set_secret_hash(&c, &format!("$w{w}-{i}"), i, &entry("x"))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    let total = 1 + 4 * 15;
    let mut cursor = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while cursor < total {
        assert!(tokio::time::Instant::now() < deadline, "stuck at {cursor}");
        for c in store.changes_after(cursor, 7).await.unwrap() {
            assert_eq!(c.id, cursor + 1, "a reader saw an id before a lower one");
            cursor = c.id;
        }
        tokio::task::yield_now().await;
    }
    for w in writers {
        w.await.unwrap();
    }
    assert_eq!(store.latest_change().await.unwrap(), total);
}

/// One `#[tokio::test]` per check, for the store made by `$maker` (an expression of a type
/// that implements [`Maker`]).
/// Shared state is written by compare-and-set (a write over a stale version changes
/// nothing), each write adds one `state.<name>` change; an assertion key is accepted once
/// until its time passes.
pub(crate) async fn shared_state_and_jtis(m: &dyn Maker) {
    let made = m.make().await;
    let store = &*made.store;
    assert_eq!(store.load_state("signing_keys").await.unwrap(), None);
    assert!(
        store
            .put_state("signing_keys", b"one", 0, &entry("keys.prepare"))
            .await
            .unwrap()
    );
    assert!(
        !store
            .put_state("signing_keys", b"other", 0, &entry("keys.prepare"))
            .await
            .unwrap()
    );
    assert_eq!(
        store.load_state("signing_keys").await.unwrap(),
        Some((b"one".to_vec(), 1))
    );
    assert!(
        !store
            .put_state("signing_keys", b"stale", 2, &entry("keys.rotate"))
            .await
            .unwrap()
    );
    assert!(
        store
            .put_state("signing_keys", b"two", 1, &entry("keys.rotate"))
            .await
            .unwrap()
    );
    assert_eq!(
        store.load_state("signing_keys").await.unwrap(),
        Some((b"two".to_vec(), 2))
    );
    let changes = all_after(store, 0, 100).await;
    assert_eq!(ids(&changes), [1, 2]);
    assert!(
        changes
            .iter()
            .all(|c| c.kind == ChangeKind::StateChanged("state.signing_keys".into()))
    );
    assert_eq!(
        ChangeKind::parse("state.signing_keys").as_str(),
        "state.signing_keys"
    );
    // A jti: once until it expires, then again.
    assert!(store.remember_jti("c j1", 1_000, 500).await.unwrap());
    assert!(!store.remember_jti("c j1", 1_000, 600).await.unwrap());
    assert!(store.remember_jti("c j2", 1_000, 600).await.unwrap());
    assert!(store.remember_jti("c j1", 2_000, 1_001).await.unwrap());
    assert!(!store.remember_jti("c j1", 2_000, 1_500).await.unwrap());
}

pub(crate) fn webhook(id: &str, client_id: &str) -> StoredWebhook {
    StoredWebhook {
        id: id.to_owned(),
        client_id: client_id.to_owned(),
        url: "https://receiver.example/hook".to_owned(),
        topics: vec!["fhir.encounter.>".to_owned(), "lab.result".to_owned()],
        sealed: vec![0, 1, 2, 255],
        state: WebhookState::Active,
        state_reason: None,
        cursor: 41,
        cursor_epoch: "log-1".to_owned(),
        replay_through: 0,
        fhir_subscription_id: None,
        max_in_flight: 1,
        max_batch: 1,
        created_at_ms: 7,
        updated_at_ms: 7,
        version: 1,
        lease: None,
    }
}

pub(crate) fn attempt(endpoint: &str, seq: u64, n: u32, outcome: &str) -> WebhookAttempt {
    WebhookAttempt {
        id: 0,
        endpoint_id: endpoint.to_owned(),
        seq,
        event_id: format!("ev-{seq}"),
        attempt: n,
        at_ms: i64::from(n) * 1_000,
        status: (n > 0).then_some(500),
        error: None,
        latency_ms: Some(12),
        outcome: outcome.to_owned(),
    }
}

/// Webhook endpoints: round trip, compare-and-set updates that add one change each, a cursor
/// that only moves forward, leases that one holder gets at a time, attempts newest first
/// with paging and pruning, and endpoints gone with their application.
pub(crate) async fn webhooks_round_trip(m: &dyn Maker) {
    let made = m.make().await;
    let store = &*made.store;
    let app = insert(store, "Hooked").await;
    let client_id = app.clients[0].client_id.clone();
    // The current active period: from the first activation after the last deactivation.
    assert_eq!(store.client_active_since(&client_id).await.unwrap(), None);
    for (active, at) in [(true, 10), (true, 20), (false, 30), (true, 40), (true, 50)] {
        store
            .set_active(&client_id, active, "tester", "", at, &entry("x"))
            .await
            .unwrap();
    }
    assert_eq!(
        store.client_active_since(&client_id).await.unwrap(),
        Some(40)
    );
    store
        .set_active(&client_id, false, "tester", "", 60, &entry("x"))
        .await
        .unwrap();
    assert_eq!(store.client_active_since(&client_id).await.unwrap(), None);
    let before = store.latest_change().await.unwrap();
    let w = webhook("ep_1", &client_id);
    store
        .insert_webhook(&w, &entry("webhook.create"))
        .await
        .unwrap();
    let changes = store.changes_after(before, 10).await.unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].kind, ChangeKind::WebhookChanged);
    assert_eq!(changes[0].webhook_id.as_deref(), Some("ep_1"));
    assert_eq!(changes[0].client_id.as_deref(), Some(client_id.as_str()));
    assert_eq!(changes[0].application_id.as_deref(), Some(app.id.as_str()));
    assert_eq!(store.load_webhooks().await.unwrap(), vec![w.clone()]);
    assert!(matches!(
        store.insert_webhook(&w, &entry("webhook.create")).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(
        store
            .insert_webhook(&webhook("ep_2", "no-such-client"), &entry("webhook.create"))
            .await
            .is_err(),
        "an endpoint needs its client ID"
    );

    // Compare-and-set: the writer that read version 1 wins, the next one with 1 loses.
    let mut paused = w.clone();
    paused.state = WebhookState::Paused;
    paused.state_reason = Some("maintenance".into());
    paused.topics = vec!["lab.>".into()];
    paused.updated_at_ms = 9;
    assert!(
        store
            .update_webhook(&paused, &entry("webhook.pause"))
            .await
            .unwrap()
    );
    assert!(
        !store
            .update_webhook(&paused, &entry("webhook.pause"))
            .await
            .unwrap()
    );
    let got = store.load_webhooks().await.unwrap().remove(0);
    assert_eq!(got.version, 2);
    assert_eq!(got.state, WebhookState::Paused);
    assert_eq!(got.state_reason.as_deref(), Some("maintenance"));
    assert_eq!(got.topics, ["lab.>"]);
    assert_eq!(got.cursor, 41, "an update leaves the cursor");

    assert!(
        !store
            .advance_webhook_cursor("ep_1", "node-a", 2, "log-1", 50)
            .await
            .unwrap(),
        "only the lease holder moves the cursor"
    );
    assert!(
        store
            .lease_webhook("ep_1", "node-a", 100, 200)
            .await
            .unwrap()
    );
    assert!(
        !store
            .lease_webhook("ep_1", "node-b", 150, 250)
            .await
            .unwrap()
    );
    assert!(
        store
            .lease_webhook("ep_1", "node-a", 150, 300)
            .await
            .unwrap(),
        "renewed"
    );
    // Several in one transaction: one answer each, in order (`ep_gone` does not exist).
    assert_eq!(
        store
            .lease_webhooks(
                &["ep_1".to_owned(), "ep_gone".to_owned()],
                "node-a",
                160,
                300
            )
            .await
            .unwrap(),
        [true, false]
    );
    for seq in [50, 45] {
        assert!(
            store
                .advance_webhook_cursor("ep_1", "node-a", 2, "log-1", seq)
                .await
                .unwrap()
        );
    }
    let got = store.load_webhooks().await.unwrap().remove(0);
    assert_eq!(
        (got.cursor, got.cursor_epoch.as_str()),
        (50, "log-1"),
        "never back"
    );
    assert!(
        store
            .advance_webhook_cursor("ep_1", "node-a", 2, "log-2", 3)
            .await
            .unwrap()
    );
    let got = store.load_webhooks().await.unwrap().remove(0);
    assert_eq!(
        (got.cursor, got.cursor_epoch.as_str()),
        (3, "log-2"),
        "a cursor of another log is replaced"
    );
    assert!(
        store
            .lease_webhook("ep_1", "node-b", 301, 400)
            .await
            .unwrap(),
        "ran out"
    );
    assert_eq!(
        store.load_webhooks().await.unwrap()[0].lease,
        Some(("node-b".to_owned(), 400))
    );
    assert!(
        !store
            .advance_webhook_cursor("ep_1", "node-a", 2, "log-2", 9)
            .await
            .unwrap(),
        "a holder whose lease was taken over no longer writes"
    );
    // An admin's replay moves the cursor back, as a change every node sees.
    let before_replay = store.latest_change().await.unwrap();
    assert!(
        store
            .replay_webhook("ep_1", "log-2", 1, 60, &entry("webhook.replay"))
            .await
            .unwrap()
    );
    assert!(
        !store
            .replay_webhook("ep_none", "log-2", 1, 60, &entry("webhook.replay"))
            .await
            .unwrap()
    );
    let got = store.load_webhooks().await.unwrap().remove(0);
    assert_eq!((got.cursor, got.version, got.replay_through), (1, 3, 60));
    store
        .lease_webhook("ep_1", "node-a", 500, 900)
        .await
        .unwrap();
    assert!(
        !store
            .advance_webhook_cursor("ep_1", "node-a", 2, "log-2", 9)
            .await
            .unwrap(),
        "a worker of the version before the replay no longer writes"
    );
    assert!(
        store
            .advance_webhook_cursor("ep_1", "node-a", 3, "log-2", 9)
            .await
            .unwrap()
    );
    let changes = store.changes_after(before_replay, 10).await.unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].kind, ChangeKind::WebhookChanged);

    store
        .append_webhook_attempts(&[
            attempt("ep_1", 51, 1, "failed"),
            attempt("ep_1", 51, 2, "failed"),
            attempt("ep_1", 51, 3, "delivered"),
            attempt("ep_1", 52, 0, "skipped_scope"),
        ])
        .await
        .unwrap();
    let newest = store.webhook_attempts("ep_1", None, 3).await.unwrap();
    assert_eq!(
        newest
            .iter()
            .map(|a| (a.seq, a.attempt))
            .collect::<Vec<_>>(),
        [(52, 0), (51, 3), (51, 2)]
    );
    assert_eq!(newest[0].status, None);
    assert_eq!(newest[1].status, Some(500));
    assert_eq!(newest[1].outcome, "delivered");
    let older = store
        .webhook_attempts("ep_1", Some(newest[2].id), 10)
        .await
        .unwrap();
    assert_eq!(older.iter().map(|a| a.attempt).collect::<Vec<_>>(), [1]);
    // Many in one call (several statements): all kept, in order.
    let many: Vec<_> = (1..=250u64)
        .map(|seq| attempt("ep_many", seq, 4, "delivered"))
        .collect();
    store.append_webhook_attempts(&many).await.unwrap();
    let kept = store.webhook_attempts("ep_many", None, 1000).await.unwrap();
    assert_eq!(
        kept.iter().map(|a| a.seq).collect::<Vec<_>>(),
        (1..=250u64).rev().collect::<Vec<_>>()
    );
    // Made at 0 (the skip), 1, 2 and 3 s: those before 2.5 s go.
    assert_eq!(store.prune_webhook_attempts(2_500).await.unwrap(), 3);
    let kept = store.webhook_attempts("ep_1", None, 10).await.unwrap();
    assert_eq!(kept.iter().map(|a| a.attempt).collect::<Vec<_>>(), [3]);

    let before = store.latest_change().await.unwrap();
    assert!(
        store
            .delete_webhook("ep_1", &entry("webhook.delete"))
            .await
            .unwrap()
    );
    assert!(
        !store
            .delete_webhook("ep_1", &entry("webhook.delete"))
            .await
            .unwrap()
    );
    let changes = store.changes_after(before, 10).await.unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].webhook_id.as_deref(), Some("ep_1"));
    assert!(store.load_webhooks().await.unwrap().is_empty());
    assert!(
        store
            .webhook_attempts("ep_1", None, 10)
            .await
            .unwrap()
            .is_empty()
    );

    // An application's deletion takes its endpoints with it.
    store
        .insert_webhook(&webhook("ep_3", &client_id), &entry("webhook.create"))
        .await
        .unwrap();
    store
        .delete_application(&app.id, &entry("application.delete"))
        .await
        .unwrap();
    assert!(store.load_webhooks().await.unwrap().is_empty());
}

/// The access audit's rows: chained per node, the newest snapshot per record, filters,
/// checkpoints, retention up to a checkpoint.
pub(crate) async fn access_audit_round_trip(m: &dyn Maker) {
    use super::store::{AccessFilter, AuditCheckpoint, AuditRow};
    let made = m.make().await;
    let store = &*made.store;
    assert_eq!(store.access_audit_head("node-a").await.unwrap(), None);
    let row =
        |chain: &str, n: u64, record: &str, client: &str, to: i64, seqs: (u64, u64), live: bool| {
            AuditRow {
                chain: chain.to_owned(),
                chain_seq: n,
                kind: "subscription".to_owned(),
                record_id: record.to_owned(),
                client_id: client.to_owned(),
                // Distinct starts, to tell the orders apart.
                from_ms: 1_000 + i64::try_from(n).unwrap() * 10,
                to_ms: to,
                first_seq: Some(seqs.0),
                last_seq: Some(seqs.1),
                live,
                written_ms: 1,
                body: format!("{{\"n\":{n}}}"),
                prev_hash: format!("{:064}", n - 1),
                hash: format!("{n:064}"),
            }
        };
    store
        .append_access_audit(
            &[
                row("node-a", 1, "sub_1", "c1", 1_000, (1, 0), true),
                row("node-a", 2, "sub_2", "c2", 1_500, (5, 9), true),
                row("node-a", 3, "sub_1", "c1", 2_000, (1, 20), false),
            ],
            Some(&AuditCheckpoint {
                chain: "node-a".into(),
                chain_seq: 3,
                hash: format!("{:064}", 3),
                at_ms: 2_000,
                key_id: "k".into(),
                signature: "ab".into(),
            }),
        )
        .await
        .unwrap();
    store
        .append_access_audit(&[row("node-b", 1, "sub_1", "c3", 900, (2, 2), false)], None)
        .await
        .unwrap();
    // A row number taken is a conflict, and nothing of that write is kept.
    assert!(matches!(
        store
            .append_access_audit(
                &[
                    row("node-a", 4, "sub_9", "c9", 1, (1, 1), false),
                    row("node-a", 3, "sub_9", "c9", 1, (1, 1), false)
                ],
                None
            )
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        store.access_audit_head("node-a").await.unwrap(),
        Some((3, format!("{:064}", 3)))
    );
    let latest = |f: AccessFilter| async move {
        let mut v: Vec<(String, u64)> = store
            .access_audit_latest(&AccessFilter { limit: 100, ..f })
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.chain, r.chain_seq))
            .collect();
        v.sort();
        v
    };
    // The newest snapshot of each record; a record id is per chain.
    assert_eq!(
        latest(AccessFilter::default()).await,
        [
            ("node-a".into(), 2),
            ("node-a".into(), 3),
            ("node-b".into(), 1)
        ]
    );
    assert_eq!(
        latest(AccessFilter {
            client_id: Some("c1".into()),
            ..AccessFilter::default()
        })
        .await,
        [("node-a".into(), 3)]
    );
    // Which records hold seq 7: sub_2 (5..9) and sub_1's newest (1..20); not node-b's.
    assert_eq!(
        latest(AccessFilter {
            seq: Some(7),
            ..AccessFilter::default()
        })
        .await,
        [("node-a".into(), 2), ("node-a".into(), 3)]
    );
    // From a time after every end: only the live one.
    assert_eq!(
        latest(AccessFilter {
            from_ms: Some(5_000),
            ..AccessFilter::default()
        })
        .await,
        [("node-a".into(), 2)]
    );
    assert_eq!(
        latest(AccessFilter {
            to_ms: Some(500),
            ..AccessFilter::default()
        })
        .await,
        []
    );
    assert_eq!(
        latest(AccessFilter {
            live_only: true,
            chain: Some("node-a".into()),
            ..AccessFilter::default()
        })
        .await,
        [("node-a".into(), 2)]
    );
    // Oldest first by default, newest first when asked; a limit keeps that end.
    let order = |newest_first: bool, limit: usize| async move {
        store
            .access_audit_latest(&AccessFilter {
                newest_first,
                limit,
                ..AccessFilter::default()
            })
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.from_ms)
            .collect::<Vec<_>>()
    };
    let oldest_first = order(false, 100).await;
    let newest_first = order(true, 100).await;
    assert!(
        oldest_first.windows(2).all(|w| w[0] <= w[1]),
        "{oldest_first:?}"
    );
    assert!(
        newest_first.windows(2).all(|w| w[0] >= w[1]),
        "{newest_first:?}"
    );
    assert_eq!(oldest_first, [1_010, 1_020, 1_030]);
    assert_eq!(newest_first, [1_030, 1_020, 1_010]);
    assert_eq!(order(true, 1).await, [1_030]);
    assert_eq!(
        store.access_audit_chains().await.unwrap(),
        ["node-a", "node-b"]
    );
    let page = store.access_audit_rows("node-a", 1, 10).await.unwrap();
    // Where retention may prune to: the checkpoint at 3, signed at 2 s, below row 4.
    assert_eq!(
        store
            .access_audit_prune_point("node-a", 2_001, 4)
            .await
            .unwrap(),
        Some(3)
    );
    assert_eq!(
        store
            .access_audit_prune_point("node-a", 2_000, 4)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .access_audit_prune_point("node-a", 9_000, 3)
            .await
            .unwrap(),
        None
    );
    assert_eq!(page.iter().map(|r| r.chain_seq).collect::<Vec<_>>(), [2, 3]);
    assert_eq!(page[1].body, "{\"n\":3}");
    assert_eq!(page[0].first_seq, Some(5));
    assert!(page[0].live && !page[1].live);
    assert_eq!(
        store
            .access_audit_checkpoints("node-a")
            .await
            .unwrap()
            .len(),
        1
    );
    // Retention up to the checkpoint at row 3: rows 1..=3 go, the checkpoint stays.
    assert_eq!(store.prune_access_audit("node-a", 3).await.unwrap(), 3);
    assert!(
        store
            .access_audit_rows("node-a", 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.access_audit_checkpoints("node-a").await.unwrap()[0].chain_seq,
        3
    );
}

/// Console sessions: stored, found by hash, touched forward only, ended, pruned.
pub(crate) async fn console_sessions_round_trip(m: &dyn Maker) {
    use super::store::ConsoleSession;
    let made = m.make().await;
    let store = &*made.store;
    let s = |id: &str, created: i64| ConsoleSession {
        id_hash: id.to_owned(),
        credential_id: "cred-1".to_owned(),
        csrf: format!("csrf-{id}"),
        created_ms: created,
        last_seen_ms: created,
    };
    store.insert_console_session(&s("a", 1_000)).await.unwrap();
    store.insert_console_session(&s("b", 5_000)).await.unwrap();
    assert!(matches!(
        store.insert_console_session(&s("a", 9)).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        store.console_session("a").await.unwrap(),
        Some(s("a", 1_000))
    );
    assert_eq!(store.console_session("zz").await.unwrap(), None);
    store.touch_console_session("a", 3_000).await.unwrap();
    store.touch_console_session("a", 2_000).await.unwrap();
    assert_eq!(
        store
            .console_session("a")
            .await
            .unwrap()
            .unwrap()
            .last_seen_ms,
        3_000
    );
    assert!(store.end_console_session("b").await.unwrap());
    assert!(!store.end_console_session("b").await.unwrap());
    store.insert_console_session(&s("c", 10_000)).await.unwrap();
    // Created before 5 s, or idle since before 4 s: `a` (seen at 3 s) goes, `c` stays.
    assert_eq!(store.prune_console_sessions(5_000, 4_000).await.unwrap(), 1);
    assert!(store.console_session("a").await.unwrap().is_none());
    assert!(store.console_session("c").await.unwrap().is_some());
}

macro_rules! conformance_tests {
    ($maker:expr) => {
        mod conformance {
            #[allow(unused_imports)]
            use super::*;
            use crate::registry::conformance as c;

            #[tokio::test]
            async fn console_sessions_round_trip() {
                c::console_sessions_round_trip(&$maker).await;
            }

            #[tokio::test]
            async fn access_audit_round_trip() {
                c::access_audit_round_trip(&$maker).await;
            }

            #[tokio::test]
            async fn webhooks_round_trip() {
                c::webhooks_round_trip(&$maker).await;
            }
            #[tokio::test]
            async fn shared_state_and_jtis() {
                c::shared_state_and_jtis(&$maker).await;
            }
            #[tokio::test]
            async fn applications_round_trip() {
                c::applications_round_trip(&$maker).await;
            }
            #[tokio::test]
            async fn credentials_and_audit_round_trip() {
                c::credentials_and_audit_round_trip(&$maker).await;
            }
            #[tokio::test]
            async fn records_grants_and_versions_round_trip() {
                c::records_grants_and_versions_round_trip(&$maker).await;
            }
            #[tokio::test]
            async fn every_write_adds_exactly_one_change() {
                c::every_write_adds_exactly_one_change(&$maker).await;
            }
            #[tokio::test]
            async fn a_failed_write_adds_no_change() {
                c::a_failed_write_adds_no_change(&$maker).await;
            }
            #[tokio::test]
            async fn changes_are_read_by_cursor_in_order_without_skipping() {
                c::changes_are_read_by_cursor_in_order_without_skipping(&$maker).await;
            }
            #[tokio::test]
            async fn a_follower_catches_up_after_missed_wakeups() {
                c::a_follower_catches_up_after_missed_wakeups(&$maker).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn concurrent_writes_become_visible_in_id_order() {
                c::concurrent_writes_become_visible_in_id_order(&$maker).await;
            }
        }
    };
}
pub(crate) use conformance_tests;
