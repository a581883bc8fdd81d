//! Application records across environments (README, "Environments and the catalog"): a
//! record's export as an [`ApplicationRecord`], its import from a signed record checked by
//! `crate::catalog`, this environment's grant per client ID (narrowed by `set-scope`, widened
//! by `approve`), and retirement.

use scopecast_protocol::admin::{ApplicationRecord, RecordClient, RecordClients};

use super::*;

/// What [`Registry::import_record`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportOutcome {
    /// The application was new here: both client IDs exist now, inactive, without secrets.
    Created,
    /// A newer version replaced the one here.
    Updated,
    /// This very version was imported before: nothing changed.
    Unchanged,
}

impl ImportOutcome {
    /// `created`, `updated` or `unchanged`.
    pub fn as_str(self) -> &'static str {
        match self {
            ImportOutcome::Created => "created",
            ImportOutcome::Updated => "updated",
            ImportOutcome::Unchanged => "unchanged",
        }
    }
}

fn record_client(c: &StoredClient) -> RecordClient {
    let (jwks, jwks_uri) = match &c.keys {
        ClientKeysSpec::None => (None, None),
        ClientKeysSpec::Jwks(v) => (Some(v.clone()), None),
        ClientKeysSpec::JwksUri(u) => (None, Some(u.clone())),
    };
    RecordClient {
        client_id: c.client_id.clone(),
        jwks,
        jwks_uri,
    }
}

/// The record's claims as the application is now (`iss` empty, `iat` 0).
pub(super) fn claims_of(r: &StoredApplication) -> Result<ApplicationRecord, RegistryError> {
    let of = |kind| {
        r.clients
            .iter()
            .find(|c| c.kind == kind)
            .map(record_client)
            .ok_or_else(|| RegistryError::Internal(format!("application {} lacks a client", r.id)))
    };
    Ok(ApplicationRecord {
        iss: String::new(),
        iat: 0,
        application_id: r.id.clone(),
        version: r.version,
        name: r.name.clone(),
        vendor: r.vendor.clone(),
        description: r.description.clone(),
        scope: r.scope.clone(),
        clients: RecordClients {
            production: of(EnvironmentKind::Production)?,
            non_production: of(EnvironmentKind::NonProduction)?,
        },
        retired: r.retired_at_ms.is_some(),
    })
}

/// The claims as JSON, for `frozen_record`.
pub(super) fn frozen_json(r: &StoredApplication) -> Result<String, RegistryError> {
    serde_json::to_string(&claims_of(r)?).map_err(|e| RegistryError::Internal(e.to_string()))
}

/// The newest frozen version's claims, with `iss` and `iat`.
fn frozen_claims(
    r: &StoredApplication,
    issuer: &str,
    now_s: i64,
) -> Result<ApplicationRecord, RegistryError> {
    if let Some(kid) = &r.origin {
        return Err(conflict(format!(
            "application {} was imported from a catalog (key {kid}): its signed record is \
             exported as it came",
            r.name
        )));
    }
    let mut claims = match (&r.frozen_record, r.frozen) {
        (Some(json), _) => serde_json::from_str::<ApplicationRecord>(json)
            .map_err(|e| RegistryError::Internal(format!("stored frozen record: {e}")))?,
        (None, true) => claims_of(r)?,
        (None, false) => {
            return Err(conflict(format!(
                "no version of application {} is ready for production yet: its developer \
                 marks one ready (`scopecast dev app ready`)",
                r.name
            )));
        }
    };
    claims.iss = issuer.to_owned();
    claims.iat = now_s;
    Ok(claims)
}

fn conflict(m: String) -> RegistryError {
    RegistryError::Conflict(m)
}

impl Registry {
    /// The application `id` if `editor` may change it: any for an admin, only their own for a
    /// developer (another's is "not found": a developer never learns it exists).
    ///
    /// # Errors
    /// [`RegistryError::Invalid`] for a malformed id, [`RegistryError::NotFound`].
    pub fn editable(&self, id: &str, editor: &Editor) -> Result<Arc<Application>, RegistryError> {
        let id = &validate::uuid_id("id", id)?;
        let not_found = || RegistryError::NotFound {
            what: "application",
            id: id.to_owned(),
        };
        let app = self
            .snapshot()
            .application(id)
            .cloned()
            .ok_or_else(not_found)?;
        if let Some(dev) = editor.developer()
            && app.record.owner.as_deref() != Some(dev)
        {
            return Err(not_found());
        }
        Ok(app)
    }

    /// `Ok` when the record of `app` may be changed here: registered here (an imported record
    /// changes in its catalog) and not retired.
    pub(super) fn changeable(&self, app: &Application) -> Result<(), RegistryError> {
        if let Some(kid) = &app.record.origin {
            return Err(conflict(format!(
                "application {} was imported from a catalog (key {kid}): change it (its keys \
                 too) in the catalog and import the new version; `scopecast app set-scope \
                 CLIENT_ID SCOPE` narrows this environment's grant",
                app.record.name
            )));
        }
        if app.record.retired_at_ms.is_some() {
            return Err(conflict(format!(
                "application {} is retired: its record does not change any more",
                app.record.name
            )));
        }
        Ok(())
    }

    /// Moves `next` (a copy of the held record with a change applied) to the version the
    /// change makes: the next one when the held version is frozen, the same draft otherwise;
    /// frozen at once for an admin, a draft for a developer.
    pub(super) fn next_version(
        &self,
        next: &mut StoredApplication,
        editor: &Editor,
    ) -> Result<(), RegistryError> {
        if next.frozen {
            next.version += 1;
        }
        // An admin's change is a version at once, except on a developer's application: there
        // it joins the developer's draft, which only the developer marks ready (freezing it
        // here would publish whatever the draft holds).
        next.frozen = editor.is_admin() && next.owner.is_none();
        next.frozen_record = if next.frozen {
            Some(frozen_json(next)?)
        } else {
            None
        };
        Ok(())
    }

    /// After a change stored apart from the record's fields (keys): the record's version
    /// moves as [`Registry::next_version`] says.
    pub(super) async fn record_changed(
        &self,
        id: &str,
        actor: &str,
        editor: &Editor,
        cause: &str,
    ) -> Result<(), RegistryError> {
        let Some(app) = self.snapshot().application(id).cloned() else {
            return Ok(());
        };
        let mut next = app.record.clone();
        self.next_version(&mut next, editor)?;
        let patch = ApplicationPatch {
            version: Some(next.version),
            frozen: Some(next.frozen),
            frozen_record: next.frozen_record.clone(),
            ..ApplicationPatch::default()
        };
        let entry = self.audit_entry(
            actor,
            "application.version",
            Some(id),
            None,
            serde_json::json!({"version": next.version, "ready": next.frozen, "cause": cause}),
        );
        self.inner
            .store
            .update_application(id, &patch, now_ms(), &entry)
            .await?;
        self.catch_up().await
    }

    /// Marks the current version of a developer's application ready for production: it is
    /// frozen (a later change makes the next version) and becomes what the catalog hands
    /// out. Ready already: nothing changes.
    ///
    /// # Errors
    /// [`RegistryError::NotFound`] (also another developer's application),
    /// [`RegistryError::Conflict`] for an imported or retired application, a storage failure.
    pub async fn ready(
        &self,
        id: &str,
        actor: &str,
        editor: &Editor,
    ) -> Result<Arc<Application>, RegistryError> {
        let id = validate::uuid_id("id", id)?;
        let _guard = self.inner.writes.lock().await;
        let held = self.editable(&id, editor)?;
        self.changeable(&held)?;
        if held.record.frozen {
            return Ok(held);
        }
        let mut next = held.record.clone();
        next.frozen = true;
        next.frozen_record = Some(frozen_json(&next)?);
        let patch = ApplicationPatch {
            version: Some(next.version),
            frozen: Some(true),
            frozen_record: next.frozen_record.clone(),
            ..ApplicationPatch::default()
        };
        let entry = self.audit_entry(
            actor,
            "application.ready",
            Some(&id),
            None,
            serde_json::json!({"version": next.version, "scope": next.scope}),
        );
        self.inner
            .store
            .update_application(&id, &patch, now_ms(), &entry)
            .await?;
        self.catch_up().await?;
        self.editable(&id, editor)
    }

    /// The newest frozen version of a local application's record, for the catalog to sign,
    /// with `iss` and `iat` filled in.
    ///
    /// # Errors
    /// [`RegistryError::NotFound`]; [`RegistryError::Conflict`] for an imported application
    /// (its signed record is exported as it came, [`StoredApplication::record_jws`]) or one
    /// with no version ready for production yet.
    pub fn record_of(
        &self,
        id: &str,
        issuer: &str,
        now_s: i64,
    ) -> Result<ApplicationRecord, RegistryError> {
        let id = validate::uuid_id("id", id)?;
        let app = self
            .snapshot()
            .application(&id)
            .cloned()
            .ok_or(RegistryError::NotFound {
                what: "application",
                id: id.clone(),
            })?;
        frozen_claims(&app.record, issuer, now_s)
    }

    /// Every local application's newest frozen version, signed by the caller (the catalog's
    /// record list), with `iss` and `iat` filled in. Drafts never ready and imported records
    /// are left out.
    pub fn frozen_records(&self, issuer: &str, now_s: i64) -> Vec<ApplicationRecord> {
        self.snapshot()
            .applications()
            .iter()
            .filter(|a| a.record.origin.is_none())
            .filter_map(|a| frozen_claims(&a.record, issuer, now_s).ok())
            .collect()
    }

    /// Imports a record whose signature `crate::catalog` verified with the pinned catalog
    /// key `kid`; `jws` is the signed record as received (kept, and exported again as is).
    ///
    /// Idempotent: the same version again changes nothing. Keeps the record's client IDs;
    /// never touches this environment's secrets, activation or grants, except that a retired
    /// record deactivates both client IDs. `source` (`file`, `sync`) goes into the audit.
    ///
    /// # Errors
    /// [`RegistryError::Invalid`] for a record whose fields break the registry's rules;
    /// [`RegistryError::Conflict`] for an older version, a different record under a version
    /// held here, client IDs other than the ones held here (or held by another
    /// application), a name taken by another application, or an application registered here;
    /// a storage failure.
    pub async fn import_record(
        &self,
        record: &ApplicationRecord,
        kid: &str,
        jws: &str,
        actor: &str,
        source: &str,
    ) -> Result<(Arc<Application>, ImportOutcome), RegistryError> {
        let id = validate::uuid_id("application_id", &record.application_id)?;
        let name = validate::name("name", &record.name)?;
        let vendor = validate::name("vendor", &record.vendor)?;
        let description = validate::description(&record.description)?;
        let scope = scope_ceiling(&record.scope)?;
        if record.version == 0 || record.version > i64::MAX as u64 {
            return Err(invalid("version", "versions run from 1 to 2^63 - 1").into());
        }
        let mut clients = Vec::new();
        for (kind, c, field) in [
            (
                EnvironmentKind::Production,
                &record.clients.production,
                "clients.production",
            ),
            (
                EnvironmentKind::NonProduction,
                &record.clients.non_production,
                "clients.non_production",
            ),
        ] {
            let client_id = validate::uuid_id(&format!("{field}.client_id"), &c.client_id)?;
            let keys = match (&c.jwks, &c.jwks_uri) {
                (Some(_), Some(_)) => {
                    return Err(invalid(field, "give jwks or jwks_uri, not both").into());
                }
                (Some(j), None) => {
                    validate::jwk_set(j)?;
                    ClientKeysSpec::Jwks(j.clone())
                }
                (None, Some(u)) => ClientKeysSpec::JwksUri(validate::public_jwks_uri(u)?),
                (None, None) => ClientKeysSpec::None,
            };
            clients.push((kind, client_id, keys));
        }
        let _guard = self.inner.writes.lock().await;
        let snap = self.snapshot();
        let now = now_ms();
        let existing = snap.application(&id).cloned();
        let (insert, mut app) = match &existing {
            Some(held) => {
                let h = &held.record;
                if h.origin.is_none() {
                    return Err(conflict(format!(
                        "application {id} ({}) was registered here: an import cannot replace it",
                        h.name
                    )));
                }
                for (kind, client_id, _) in &clients {
                    let here = h.clients.iter().find(|c| c.kind == *kind);
                    if here.map(|c| &c.client_id) != Some(client_id) {
                        return Err(conflict(format!(
                            "the record's {} client ID {client_id} is not the one held here for \
                             application {id} ({}): client IDs never change",
                            kind.as_str(),
                            here.map_or("none", |c| c.client_id.as_str())
                        )));
                    }
                }
                if record.version < h.version {
                    return Err(conflict(format!(
                        "version {} of application {id} is older than version {} held here",
                        record.version, h.version
                    )));
                }
                if record.version == h.version {
                    if h.record_jws.as_deref() == Some(jws) || same_record(h, record) {
                        return Ok((held.clone(), ImportOutcome::Unchanged));
                    }
                    return Err(conflict(format!(
                        "version {} of application {id} is held here with other contents: a \
                         version is never edited",
                        record.version
                    )));
                }
                (false, h.clone())
            }
            None => {
                for (_, client_id, _) in &clients {
                    if snap.client(client_id).is_some() {
                        return Err(conflict(format!(
                            "client ID {client_id} already belongs to another application here"
                        )));
                    }
                }
                let app = StoredApplication {
                    id: id.clone(),
                    name: String::new(),
                    vendor: String::new(),
                    description: String::new(),
                    scope: String::new(),
                    created_at_ms: now,
                    updated_at_ms: now,
                    version: 0,
                    origin: None,
                    record_jws: None,
                    retired_at_ms: None,
                    owner: None,
                    frozen: true,
                    frozen_record: None,
                    clients: clients
                        .iter()
                        .map(|(kind, client_id, _)| StoredClient {
                            client_id: client_id.clone(),
                            kind: *kind,
                            active: false,
                            secret_hash: None,
                            keys: ClientKeysSpec::None,
                            client_id_header: false,
                            granted_scope: None,
                            created_at_ms: now,
                            updated_at_ms: now,
                        })
                        .collect(),
                };
                (true, app)
            }
        };
        app.name = name.clone();
        app.vendor = vendor;
        app.description = description;
        app.scope = scope.clone();
        app.updated_at_ms = now;
        app.version = record.version;
        app.origin = Some(kid.to_owned());
        app.record_jws = Some(jws.to_owned());
        app.frozen = true;
        app.frozen_record = None;
        if record.retired {
            app.retired_at_ms = app.retired_at_ms.or(Some(now));
        } else {
            app.retired_at_ms = None;
        }
        for c in &mut app.clients {
            if let Some((_, _, keys)) = clients.iter().find(|(k, _, _)| *k == c.kind) {
                c.keys = keys.clone();
            }
        }
        let deactivate: Vec<String> = if record.retired {
            app.clients
                .iter()
                .filter(|c| c.active)
                .map(|c| c.client_id.clone())
                .collect()
        } else {
            Vec::new()
        };
        let outcome = if insert {
            ImportOutcome::Created
        } else {
            ImportOutcome::Updated
        };
        let entry = self.audit_entry(
            actor,
            "application.import",
            Some(&id),
            None,
            serde_json::json!({
                "outcome": outcome.as_str(), "version": record.version, "name": name,
                "scope": scope, "catalog": record.iss, "kid": kid, "source": source,
                "retired": record.retired, "deactivated": deactivate,
                "client_ids": app.clients.iter().map(|c| &c.client_id).collect::<Vec<_>>(),
            }),
        );
        let reason = "the application was retired in its catalog";
        self.inner
            .store
            .put_record(&app, insert, &deactivate, actor, reason, &entry)
            .await?;
        self.catch_up().await?;
        let app = self
            .snapshot()
            .application(&id)
            .cloned()
            .ok_or_else(|| RegistryError::Internal("imported application vanished".into()))?;
        Ok((app, outcome))
    }

    /// Retires an application registered here: a new version marked retired, both client IDs
    /// deactivated (live sessions close), recorded with `actor` and `reason`. An imported
    /// application is retired by its catalog.
    ///
    /// # Errors
    /// [`RegistryError::NotFound`], [`RegistryError::Conflict`] (imported, or retired
    /// already), a storage failure.
    pub async fn retire(
        &self,
        id: &str,
        actor: &str,
        reason: &str,
        editor: &Editor,
    ) -> Result<Arc<Application>, RegistryError> {
        let id = validate::uuid_id("id", id)?;
        let reason = validate::note("reason", reason)?;
        let _guard = self.inner.writes.lock().await;
        let held = self.editable(&id, editor)?;
        if let Some(kid) = &held.record.origin {
            return Err(conflict(format!(
                "application {} was imported from a catalog (key {kid}): it is retired there",
                held.record.name
            )));
        }
        if held.record.retired_at_ms.is_some() {
            return Err(conflict(format!(
                "application {} is retired already",
                held.record.name
            )));
        }
        let mut app = held.record.clone();
        let now = now_ms();
        // The retired version replaces a pending draft (never published, so it is not frozen
        // now) or follows the frozen one; its content is the newest frozen version's.
        if app.frozen {
            app.version += 1;
        }
        app.retired_at_ms = Some(now);
        app.updated_at_ms = now;
        let mut claims = match &app.frozen_record {
            Some(json) if !held.record.frozen => serde_json::from_str::<ApplicationRecord>(json)
                .map_err(|e| RegistryError::Internal(format!("stored frozen record: {e}")))?,
            _ => claims_of(&app)?,
        };
        claims.version = app.version;
        claims.retired = true;
        app.frozen = true;
        app.frozen_record = Some(
            serde_json::to_string(&claims).map_err(|e| RegistryError::Internal(e.to_string()))?,
        );
        let deactivate: Vec<String> = app
            .clients
            .iter()
            .filter(|c| c.active)
            .map(|c| c.client_id.clone())
            .collect();
        let entry = self.audit_entry(
            actor,
            "application.retire",
            Some(&id),
            None,
            serde_json::json!({"reason": reason, "version": app.version, "deactivated": deactivate}),
        );
        self.inner
            .store
            .put_record(&app, false, &deactivate, actor, &reason, &entry)
            .await?;
        self.catch_up().await?;
        self.snapshot()
            .application(&id)
            .cloned()
            .ok_or(RegistryError::NotFound {
                what: "application",
                id,
            })
    }

    /// Sets this environment's grant for a client ID: `scope` must lie inside the record's
    /// scope (each of its scopes covered by one of the record's). Narrowing ends live
    /// subscriptions outside it at once, as a narrower record does.
    ///
    /// # Errors
    /// [`RegistryError::Invalid`] (a malformed scope, or one the record does not cover, named),
    /// [`RegistryError::NotFound`], a storage failure.
    pub async fn set_grant(
        &self,
        client_id: &str,
        scope: &str,
        actor: &str,
        reason: &str,
    ) -> Result<Arc<ClientEntry>, RegistryError> {
        let client = self.existing_client(client_id)?;
        let reason = validate::note("reason", reason)?;
        let grant = scope_ceiling(scope)?;
        let app = self
            .snapshot()
            .application(&client.application_id)
            .cloned()
            .ok_or_else(|| RegistryError::Internal("client without application".into()))?;
        let parsed = ScopeSet::parse(&grant).map_err(|e| invalid("scope", e.to_string()))?;
        if let Some(beyond) = app.ceiling.first_uncovered(&parsed) {
            return Err(invalid(
                "scope",
                format!(
                    "{beyond} is outside the application's record ({}): a grant can only narrow it",
                    app.record.scope
                ),
            )
            .into());
        }
        self.write_grant(&client, &grant, actor, "client.set_grant", &reason)
            .await
    }

    /// Approves the record's current scope for a client ID here: the grant becomes the
    /// record's scope, so scopes a newer version added (`pending_scope`) take effect.
    ///
    /// # Errors
    /// [`RegistryError::NotFound`], a storage failure.
    pub async fn approve_scope(
        &self,
        client_id: &str,
        actor: &str,
        reason: &str,
    ) -> Result<Arc<ClientEntry>, RegistryError> {
        let client = self.existing_client(client_id)?;
        let reason = validate::note("reason", reason)?;
        let scope = self
            .snapshot()
            .application(&client.application_id)
            .map(|a| a.record.scope.clone())
            .ok_or_else(|| RegistryError::Internal("client without application".into()))?;
        self.write_grant(&client, &scope, actor, "client.approve_scope", &reason)
            .await
    }

    async fn write_grant(
        &self,
        client: &ClientEntry,
        grant: &str,
        actor: &str,
        action: &str,
        reason: &str,
    ) -> Result<Arc<ClientEntry>, RegistryError> {
        let entry = self.audit_entry(
            actor,
            action,
            Some(&client.application_id),
            Some(&client.client_id),
            serde_json::json!({"granted_scope": grant, "reason": reason,
                "previous": self.stored_grant(&client.client_id)}),
        );
        let _guard = self.inner.writes.lock().await;
        self.inner
            .store
            .set_grant(&client.client_id, grant, now_ms(), &entry)
            .await?;
        self.catch_up().await?;
        self.existing_client(&client.client_id)
    }

    /// The stored grant of a client ID, if any.
    fn stored_grant(&self, client_id: &str) -> Option<String> {
        let snap = self.snapshot();
        let entry = snap.client(client_id)?;
        snap.application(&entry.application_id)?
            .record
            .clients
            .iter()
            .find(|c| c.client_id == client_id)?
            .granted_scope
            .clone()
    }

    /// After an admin changed the scope of a record registered here: each client ID that has
    /// a grant gets the new scope as its grant (the admin who changed the record approved
    /// it). Called with the write lock held.
    pub(super) async fn regrant_after_update(
        &self,
        id: &str,
        scope: &str,
        actor: &str,
    ) -> Result<(), RegistryError> {
        let Some(app) = self.snapshot().application(id).cloned() else {
            return Ok(());
        };
        for c in app
            .record
            .clients
            .iter()
            .filter(|c| c.granted_scope.is_some())
        {
            if c.granted_scope.as_deref() == Some(scope) {
                continue;
            }
            let entry = self.audit_entry(
                actor,
                "client.set_grant",
                Some(id),
                Some(&c.client_id),
                serde_json::json!({"granted_scope": scope,
                    "reason": "the record's scope was changed here by an admin",
                    "previous": c.granted_scope}),
            );
            self.inner
                .store
                .set_grant(&c.client_id, scope, now_ms(), &entry)
                .await?;
        }
        self.catch_up().await
    }
}

/// True when the record held here says what `r` says (another signature of the same version,
/// e.g. signed again at another time).
fn same_record(h: &StoredApplication, r: &ApplicationRecord) -> bool {
    let keys_of = |kind| h.clients.iter().find(|c| c.kind == kind).map(record_client);
    h.name == r.name
        && h.vendor == r.vendor
        && h.description == r.description
        && ScopeSet::parse(&h.scope).ok() == ScopeSet::parse(&r.scope).ok()
        && h.retired_at_ms.is_some() == r.retired
        && keys_of(EnvironmentKind::Production).as_ref() == Some(&r.clients.production)
        && keys_of(EnvironmentKind::NonProduction).as_ref() == Some(&r.clients.non_production)
}
