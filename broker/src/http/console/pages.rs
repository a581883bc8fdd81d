//! The console's pages and forms. Reads come from the registry and the admin API's handlers;
//! every change goes through an admin API handler with the signed-in user as the caller, so it
//! is checked, applied and audited exactly as the CLI's request would be.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::{Extension, Json};
use maud::{Markup, html};
use scopecast_protocol::admin::{
    ApplicationList, ApplicationView, ClientView, IssuedSecret, Role, SessionList,
};
use scopecast_protocol::audit::AccessRecord;
use scopecast_protocol::{Timestamp, Topic};
use serde_json::json;

use super::{
    LOGIN_COOKIE, Refused, User, api, form, layout, reader, set_cookie, signed_in, writer,
};
use crate::audit::query::{AccessQuery, access, fhir_bundle, ndjson};
use crate::registry::AuditQuery;
use crate::state::Broker;

/// A page as an HTML answer.
pub(crate) fn page(title: &str, user: Option<&User>, body: Markup) -> Response {
    Html(layout(title, user, body).into_string()).into_response()
}

/// The hidden CSRF field of a form.
fn csrf(user: &User) -> Markup {
    html! { input type="hidden" name="csrf" value=(user.csrf); }
}

/// A message after a change (a fixed text chosen by a key, never echoed input).
fn notice(kind: &str, text: &str) -> Markup {
    html! { p class=(format!("notice {kind}")) role="status" { (text) } }
}

pub(crate) async fn not_found(State(state): State<Broker>, headers: HeaderMap) -> Response {
    let user = signed_in(&state, &headers).await;
    (
        StatusCode::NOT_FOUND,
        page(
            "Not found",
            user.as_ref(),
            html! { h1 { "Not found" } p { "There is no such console page." } },
        ),
    )
        .into_response()
}

/// `GET /console/`: the overview, the applications (developers) or the sign-in page.
pub(crate) async fn home(State(state): State<Broker>, headers: HeaderMap) -> Response {
    match signed_in(&state, &headers).await {
        Some(u) if u.can_read() => Redirect::to("/console/overview").into_response(),
        Some(_) => Redirect::to("/console/apps").into_response(),
        None => Redirect::to("/console/login").into_response(),
    }
}

#[derive(serde::Deserialize)]
pub(crate) struct LoginQuery {
    signed_out: Option<u8>,
}

/// `GET /console/login`.
pub(crate) async fn login_form(
    State(state): State<Broker>,
    Query(q): Query<LoginQuery>,
) -> Response {
    login_page(&state, q.signed_out.is_some(), None)
}

fn login_page(state: &Broker, signed_out: bool, error: Option<&str>) -> Response {
    let token = match super::random_token() {
        Ok(t) => t,
        Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    let body = html! {
        h1 { "Sign in" }
        @if signed_out { (notice("ok", "You are signed out.")) }
        @if let Some(e) = error { p class="notice error" role="alert" id="login-error" { (e) } }
        form method="post" action="/console/login" class="card" {
            input type="hidden" name="csrf" value=(token);
            label for="credential" { "Credential" }
            p class="hint" id="credential-hint" {
                "An admin, viewer or developer credential of this broker ("
                code { "scopecast credential create" } "; the first admin's is in "
                code { "admin.token" } " in the data folder)."
            }
            input id="credential" name="credential" type="password" autocomplete="current-password"
                required aria-describedby="credential-hint";
            button type="submit" { "Sign in" }
        }
    };
    let mut resp = page("Sign in", None, body);
    resp.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(state, LOGIN_COOKIE, &token, "/console/login", 600),
    );
    if error.is_some() {
        *resp.status_mut() = StatusCode::UNAUTHORIZED;
    }
    resp
}

/// `POST /console/login`: `credential`, `csrf` (equal to the sign-in cookie).
pub(crate) async fn login(
    State(state): State<Broker>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    let f = form(&bytes);
    let expected = super::cookie(&headers, LOGIN_COOKIE)
        .unwrap_or("")
        .to_owned();
    if expected.is_empty() || super::check_csrf(&state, &headers, &f, &expected).is_err() {
        return Refused::Csrf.into_response();
    }
    let token = f.get("credential").map(String::as_str).unwrap_or("").trim();
    match super::start_session(&state, token).await {
        Ok(Some((user, cookie))) => {
            if let Err(e) = state
                .registry
                .record(
                    &user.name,
                    "console.sign_in",
                    json!({"role": user.role.as_str()}),
                )
                .await
            {
                tracing::error!(error = %e, "could not record a console sign-in in the audit trail");
            }
            let mut resp = Redirect::to("/console/").into_response();
            resp.headers_mut().append(header::SET_COOKIE, cookie);
            resp.headers_mut().append(
                header::SET_COOKIE,
                set_cookie(&state, LOGIN_COOKIE, "", "/console/login", 0),
            );
            resp
        }
        Ok(None) => {
            state.access.refused(
                Some(token),
                peer,
                "console_sign_in",
                "console sign-in refused",
            );
            login_page(
                &state,
                false,
                Some(
                    "That credential is not valid here, or it is a metrics credential, which may not use the console.",
                ),
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "console sign-in failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "the registry cannot be reached; try again",
            )
                .into_response()
        }
    }
}

/// `POST /console/logout`: ends the session everywhere.
pub(crate) async fn logout(
    State(state): State<Broker>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    let f = form(&bytes);
    let Some(user) = signed_in(&state, &headers).await else {
        return Redirect::to("/console/login").into_response();
    };
    if let Err(r) = super::check_csrf(&state, &headers, &f, &user.csrf) {
        return r.into_response();
    }
    let cookie = super::end_session(&state, &user).await;
    if let Err(e) = state
        .registry
        .record(&user.name, "console.sign_out", json!({}))
        .await
    {
        tracing::error!(error = %e, "could not record a console sign-out in the audit trail");
    }
    let mut resp = Redirect::to("/console/login?signed_out=1").into_response();
    resp.headers_mut().append(header::SET_COOKIE, cookie);
    resp
}

/// `GET /console/overview`: publish rate, fan-out and latency, live.
pub(crate) async fn overview(State(state): State<Broker>, headers: HeaderMap) -> Response {
    let user = match reader(&state, &headers).await {
        Ok(u) => u,
        Err(r) => return r.into_response(),
    };
    let snap = state.registry.snapshot();
    let apps = snap.applications().len();
    let active = snap
        .applications()
        .iter()
        .flat_map(|a| a.record.clients.iter())
        .filter(|c| c.active && c.kind == state.config.environment)
        .count();
    let body = html! {
        h1 { "Overview" }
        p { "Environment " strong { (state.config.environment_id()) } ". "
            (apps) " applications, " (active) " client IDs active here. Updated every second." }
        div class="stats" data-live="overview" {
            div class="stat" { span class="label" { "Events published per second" } span class="value" data-field="publish_rate" { "-" } }
            div class="stat" { span class="label" { "Events delivered per second (fan-out)" } span class="value" data-field="deliver_rate" { "-" } }
            div class="stat" { span class="label" { "Publish to deliver, p50 (ms, this node)" } span class="value" data-field="p50_ms" { "-" } }
            div class="stat" { span class="label" { "Publish to deliver, p99 (ms, this node)" } span class="value" data-field="p99_ms" { "-" } }
            div class="stat" { span class="label" { "Connections" } span class="value" data-field="connections" { "-" } }
            div class="stat" { span class="label" { "Subscriptions" } span class="value" data-field="subscriptions" { "-" } }
        }
        h2 { "The last two minutes" }
        div class="charts" {
            figure { figcaption id="c-pub" { "Published per second" } svg class="chart" data-chart="publish_rate" role="img" aria-labelledby="c-pub" viewBox="0 0 240 60" {} }
            figure { figcaption id="c-del" { "Delivered per second" } svg class="chart" data-chart="deliver_rate" role="img" aria-labelledby="c-del" viewBox="0 0 240 60" {} }
            figure { figcaption id="c-lat" { "p99 publish to deliver (ms)" } svg class="chart" data-chart="p99_ms" role="img" aria-labelledby="c-lat" viewBox="0 0 240 60" {} }
        }
    };
    page("Overview", Some(&user), body)
}

#[derive(serde::Deserialize)]
pub(crate) struct AppsQuery {
    q: Option<String>,
}

/// The applications a user may see: all for admins and viewers, their own for developers.
fn visible(user: &User, apps: Vec<ApplicationView>) -> Vec<ApplicationView> {
    if user.role == Role::Developer {
        apps.into_iter()
            .filter(|a| a.owner.as_deref() == Some(user.name.as_str()))
            .collect()
    } else {
        apps
    }
}

/// `GET /console/apps?q=`: search, and (admins) the creation form.
pub(crate) async fn apps(
    State(state): State<Broker>,
    headers: HeaderMap,
    Query(q): Query<AppsQuery>,
) -> Response {
    let Some(user) = signed_in(&state, &headers).await else {
        return Refused::SignIn.into_response();
    };
    let list: ApplicationList =
        match api(super::super::admin::list_applications(State(state.clone())).await).await {
            Ok(l) => l,
            Err(e) => return failed(&user, &e),
        };
    let needle = q.q.clone().unwrap_or_default().to_lowercase();
    let mut shown: Vec<ApplicationView> = visible(&user, list.applications)
        .into_iter()
        .filter(|a| {
            needle.is_empty()
                || a.name.to_lowercase().contains(&needle)
                || a.vendor.to_lowercase().contains(&needle)
                || a.clients
                    .both()
                    .iter()
                    .any(|c| c.client_id.contains(&needle))
        })
        .collect();
    shown.sort_by_key(|a| a.name.to_lowercase());
    let body = html! {
        h1 { @if user.role == Role::Developer { "My applications" } @else { "Applications" } }
        form method="get" action="/console/apps" class="search" role="search" {
            label for="q" { "Search by name, vendor or client ID" }
            input id="q" name="q" type="search" value=(q.q.clone().unwrap_or_default());
            button type="submit" { "Search" }
        }
        (apps_table(&shown, &state))
        @if user.can_write() { (create_form(&user, None, &Default::default())) }
    };
    page("Applications", Some(&user), body)
}

fn apps_table(apps: &[ApplicationView], state: &Broker) -> Markup {
    let here = state.config.environment;
    html! {
        @if apps.is_empty() { p { "No application matches." } }
        @else {
            table {
                caption { "Applications and their client ID for this environment" }
                thead { tr { th scope="col" { "Name" } th scope="col" { "Vendor" } th scope="col" { "Scope" } th scope="col" { "Client ID here" } th scope="col" { "State here" } } }
                tbody {
                    @for a in apps {
                        @let c = if here == crate::config::EnvironmentKind::Production { &a.clients.production } else { &a.clients.non_production };
                        tr {
                            td { a href=(format!("/console/apps/{}", a.id)) { (a.name) } }
                            td { (a.vendor) }
                            td { code { (a.scope) } }
                            td { code { (c.client_id) } }
                            td { @if c.active { span class="badge on" { "active" } } @else { span class="badge off" { "inactive" } } }
                        }
                    }
                }
            }
        }
    }
}

fn create_form(user: &User, error: Option<&str>, v: &HashMap<String, String>) -> Markup {
    let get = |k: &str| v.get(k).cloned().unwrap_or_default();
    html! {
        h2 id="create" { "Register an application" }
        @if let Some(e) = error { p class="notice error" role="alert" { (e) } }
        form method="post" action="/console/apps" class="card" aria-labelledby="create" {
            (csrf(user))
            label for="name" { "Name" }
            input id="name" name="name" required maxlength="200" value=(get("name"));
            label for="vendor" { "Vendor" }
            input id="vendor" name="vendor" required maxlength="200" value=(get("vendor"));
            label for="description" { "Description" }
            textarea id="description" name="description" rows="2" { (get("description")) }
            label for="scope" { "Scope" }
            p class="hint" id="scope-hint" {
                "Space-separated scopes: " code { "subscribe:PATTERN" } ", " code { "publish:PATTERN" } ", "
                code { "webhook:manage" } ", SMART " code { "system/Type.rs" } ". "
                "This is the ceiling: a token, a subscription or a webhook endpoint is allowed only when it is "
                strong { "contained" } " in it. " code { "subscribe:fhir.>" } " contains "
                code { "subscribe:fhir.encounter.started" } " and " code { "subscribe:fhir.encounter.*" }
                ", but not " code { "subscribe:adt.>" } "; " code { "*" } " matches one token, "
                code { ">" } " one or more at the end."
            }
            textarea id="scope" name="scope" rows="2" required aria-describedby="scope-hint" data-scope-editor { (get("scope")) }
            p class="hint" id="scope-check" aria-live="polite" {}
            button type="submit" { "Register" }
        }
    }
}

/// `POST /console/apps`: registers an application; shows both client IDs and their secrets,
/// once.
pub(crate) async fn create_app(
    State(state): State<Broker>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    let f = form(&bytes);
    let user = match writer(&state, &headers, &f).await {
        Ok(u) => u,
        Err(r) => return r.into_response(),
    };
    let get = |k: &str| f.get(k).cloned().unwrap_or_default();
    let body = json!({"name": get("name"), "vendor": get("vendor"), "description": get("description"), "scope": get("scope").split_whitespace().collect::<Vec<_>>().join(" ")});
    let resp = super::super::admin::create_application(
        State(state.clone()),
        Extension(user.caller()),
        Bytes::from(body.to_string()),
    )
    .await;
    match api::<ApplicationView>(resp).await {
        Ok(app) => {
            let body = html! {
                h1 { "Registered: " (app.name) }
                p class="notice ok" role="status" {
                    "Copy the secrets now: they are shown only this once (rotate a secret to get a new one)."
                }
                table {
                    caption { "Client IDs" }
                    thead { tr { th scope="col" { "Environments" } th scope="col" { "Client ID" } th scope="col" { "Client secret" } } }
                    tbody {
                        @for c in app.clients.both() {
                            tr { td { (c.kind) } td { code { (c.client_id) } } td { code class="secret" { (c.client_secret.clone().unwrap_or_default()) } } }
                        }
                    }
                }
                p { "Both client IDs start inactive. " a href=(format!("/console/apps/{}", app.id)) { "Open the application" } " to activate the one for this environment." }
            };
            page("Registered", Some(&user), body)
        }
        Err(e) => {
            let list: ApplicationList =
                api(super::super::admin::list_applications(State(state.clone())).await)
                    .await
                    .unwrap_or(ApplicationList {
                        applications: Vec::new(),
                    });
            let body = html! {
                h1 { "Applications" }
                (apps_table(&list.applications, &state))
                (create_form(&user, Some(&e), &f))
            };
            let mut r = page("Applications", Some(&user), body);
            *r.status_mut() = StatusCode::BAD_REQUEST;
            r
        }
    }
}

#[derive(serde::Deserialize, Default)]
pub(crate) struct AppQuery {
    done: Option<String>,
    closed: Option<u64>,
}

/// Sessions of `client_id` across the cluster.
async fn sessions_of(state: &Broker, client_id: &str) -> usize {
    let mut n = super::super::sessions::local(state, Some(client_id)).len();
    if state.cluster.is_some() {
        n += crate::cluster::remote_sessions(state, Some(client_id))
            .await
            .len();
    }
    n
}

/// `GET /console/apps/{id}`: scope, client IDs, activation with history, keys, webhooks.
pub(crate) async fn app(
    State(state): State<Broker>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<AppQuery>,
) -> Response {
    let Some(user) = signed_in(&state, &headers).await else {
        return Refused::SignIn.into_response();
    };
    let app: Option<ApplicationView> =
        api(super::super::admin::show_application(State(state.clone()), Path(id.clone())).await)
            .await
            .ok()
            .filter(|a: &ApplicationView| !visible(&user, vec![a.clone()]).is_empty());
    // Not there, and not this developer's, look the same.
    let Some(app) = app else {
        return not_found(State(state), headers).await;
    };
    let history = state
        .registry
        .audit(AuditQuery {
            application_id: Some(app.id.clone()),
            client_id: None,
            limit: 50,
        })
        .await
        .unwrap_or_default();
    let mut clients = Vec::new();
    for c in app.clients.both() {
        let here = c.kind == state.config.environment.as_str();
        let live = if here {
            sessions_of(&state, &c.client_id).await
        } else {
            0
        };
        let hooks: serde_json::Value = if user.can_read() {
            api(super::super::webhooks::list_for_client(
                State(state.clone()),
                Path(c.client_id.clone()),
            )
            .await)
            .await
            .unwrap_or_default()
        } else {
            serde_json::Value::Null
        };
        let mut health = std::collections::HashMap::new();
        if let Some(list) = hooks["webhooks"].as_array() {
            for w in list {
                let (Some(id), Some(cursor)) = (w["id"].as_str(), w["cursor"].as_u64()) else {
                    continue;
                };
                health.insert(id.to_owned(), webhook_health(&state, id, cursor).await);
            }
        }
        clients.push((c.clone(), here, live, hooks, health));
    }
    let done = match (q.done.as_deref(), q.closed) {
        (Some("activated"), _) => Some(notice(
            "ok",
            "Activated: the client ID can get tokens and connect in this environment now.",
        )),
        (Some("deactivated"), Some(n)) => Some(notice(
            "ok",
            &format!(
                "Deactivated. Its {n} live session(s) were told to close with 4003 (within 1 s); its webhooks stop before their next attempt."
            ),
        )),
        (Some("approved"), _) => Some(notice(
            "ok",
            "Approved: the wider scope is granted in this environment.",
        )),
        _ => None,
    };
    let body = html! {
        h1 { (app.name) }
        @if let Some(d) = done { (d) }
        dl class="facts" {
            dt { "Vendor" } dd { (app.vendor) }
            dt { "Description" } dd { (app.description) }
            dt { "Scope (ceiling)" } dd { code { (app.scope) } }
            dt { "Record version" } dd { (app.version) @if !app.ready { " (draft)" } }
            @if let Some(o) = &app.owner { dt { "Developer" } dd { (o) } }
            @if let Some(o) = &app.origin { dt { "Imported, signed by catalog key" } dd { code { (o) } } }
            @if let Some(r) = &app.retired_at { dt { "Retired" } dd { (r) } }
        }
        @for (c, here, live, hooks, health) in &clients {
            (client_section(&user, &app, c, *here, *live, hooks, health))
        }
        h2 { "History" }
        @if history.is_empty() { p { "Nothing recorded yet." } } @else {
            table {
                caption { "Changes to this application and its client IDs, newest first" }
                thead { tr { th scope="col" { "When" } th scope="col" { "Who" } th scope="col" { "What" } th scope="col" { "Client ID" } th scope="col" { "Reason and details" } } }
                tbody {
                    @for e in &history {
                        tr {
                            td { (time(e.at_ms)) }
                            td { (e.actor) }
                            td { code { (e.action) } }
                            td { code { (e.client_id.clone().unwrap_or_default()) } }
                            td { (e.detail["reason"].as_str().unwrap_or("")) " " span class="detail" { (compact(&e.detail)) } }
                        }
                    }
                }
            }
        }
    };
    page(&app.name, Some(&user), body)
}

fn compact(v: &serde_json::Value) -> String {
    let s = v.to_string();
    if s.len() > 300 {
        format!("{}…", &s[..s.floor_char_boundary(300)])
    } else {
        s
    }
}

fn time(ms: i64) -> String {
    Timestamp::from_unix_ms(ms).map_or_else(|_| ms.to_string(), |t| t.to_string())
}

fn client_section(
    user: &User,
    app: &ApplicationView,
    c: &ClientView,
    here: bool,
    live: usize,
    hooks: &serde_json::Value,
    health: &std::collections::HashMap<String, String>,
) -> Markup {
    let heading = format!("{} client ID", c.kind);
    html! {
        section aria-label=(heading) class="card" {
            h2 { (heading) @if here { " (this environment)" } }
            dl class="facts" {
                dt { "Client ID" } dd { code { (c.client_id) } }
                dt { "State here" } dd { @if c.active { span class="badge on" { "active" } } @else { span class="badge off" { "inactive" } } }
                dt { "Keys" } dd { @if c.has_secret { "client secret" } @else { "no secret" } ", " (keys_text(&c.keys)) }
                @if let Some(g) = &c.granted_scope { dt { "Granted here" } dd { code { (g) } } }
                @if !c.effective_scope.is_empty() { dt { "Effective scope" } dd { code { (c.effective_scope) } } }
                @if !c.pending_scope.is_empty() { dt { "Waiting for approval" } dd { code { (c.pending_scope) } } }
                @if here { dt { "Live sessions" } dd { (live) } }
            }
            @if here && user.can_write() {
                @if c.active {
                    form method="post" action=(format!("/console/clients/{}/deactivate", c.client_id)) class="inline" {
                        (csrf(user))
                        p class="warn" id=(format!("warn-{}", c.client_id)) {
                            "Deactivating closes this client ID's " (live) " live session(s) at once (close code 4003, within 1 s), "
                            "refuses its tokens and stops its webhooks."
                        }
                        label for=(format!("reason-d-{}", c.client_id)) { "Reason" }
                        input id=(format!("reason-d-{}", c.client_id)) name="reason" maxlength="500" aria-describedby=(format!("warn-{}", c.client_id));
                        button type="submit" class="danger" { "Deactivate" }
                    }
                } @else if app.retired_at.is_none() {
                    form method="post" action=(format!("/console/clients/{}/activate", c.client_id)) class="inline" {
                        (csrf(user))
                        label for=(format!("reason-a-{}", c.client_id)) { "Reason" }
                        input id=(format!("reason-a-{}", c.client_id)) name="reason" maxlength="500";
                        button type="submit" { "Activate" }
                    }
                }
                @if !c.pending_scope.is_empty() {
                    form method="post" action=(format!("/console/clients/{}/approve", c.client_id)) class="inline" {
                        (csrf(user))
                        label for=(format!("reason-p-{}", c.client_id)) { "Reason for approving " code { (c.pending_scope) } }
                        input id=(format!("reason-p-{}", c.client_id)) name="reason" maxlength="500";
                        button type="submit" { "Approve the wider scope" }
                    }
                }
            }
            @if user.can_write() && c.has_secret {
                form method="post" action=(format!("/console/clients/{}/rotate-secret", c.client_id)) class="inline" {
                    (csrf(user))
                    button type="submit" { "Rotate the secret" }
                }
            }
            @if let Some(list) = hooks["webhooks"].as_array() {
                h3 { "Webhook endpoints" }
                @if list.is_empty() { p { "None." } } @else {
                    table {
                        caption { "Endpoints of " (c.client_id) }
                        thead { tr { th scope="col" { "URL" } th scope="col" { "Topics" } th scope="col" { "State" } th scope="col" { "Delivered up to seq" } th scope="col" { "Health" } } }
                        tbody {
                            @for w in list {
                                tr {
                                    td { code { (w["url"].as_str().unwrap_or("")) } }
                                    td { code { (w["topics"].as_array().map(|t| t.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(" ")).unwrap_or_default()) } }
                                    td { (w["state"].as_str().unwrap_or("")) " " (w["state_reason"].as_str().unwrap_or("")) }
                                    td { (w["cursor"].as_u64().map(|c| c.to_string()).unwrap_or_default()) }
                                    td { (w["id"].as_str().and_then(|id| health.get(id)).cloned().unwrap_or_default()) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Which version of `a` a catalog hands out: the current one when it is ready, else the
/// newest frozen one (kept while a draft is worked on), else none yet.
fn handed_out(snapshot: &crate::registry::Snapshot, a: &ApplicationView) -> String {
    if a.retired_at.is_some() {
        return format!(
            "version {} (retired: its client IDs cannot be activated)",
            a.version
        );
    }
    if a.ready {
        return format!("version {}", a.version);
    }
    let frozen = snapshot
        .application(&a.id)
        .and_then(|app| app.record.frozen_record.as_deref())
        .and_then(|json| {
            serde_json::from_str::<scopecast_protocol::admin::ApplicationRecord>(json).ok()
        });
    match frozen {
        Some(r) => format!("version {} (version {} is a draft)", r.version, a.version),
        None => "none yet (no version is ready)".to_owned(),
    }
}

/// Attempts read for an endpoint's health line.
const HEALTH_ATTEMPTS: usize = 20;

/// An endpoint's health in a line: events the log holds past its cursor, its last attempt
/// (outcome, HTTP status or error, when) and how many attempts in a row failed, from its
/// delivery log.
async fn webhook_health(state: &Broker, id: &str, cursor: u64) -> String {
    let behind = state.log.bounds().last.saturating_sub(cursor);
    let attempts = state
        .webhooks
        .attempts(id, None, HEALTH_ATTEMPTS)
        .await
        .unwrap_or_default();
    let Some(last) = attempts.first() else {
        return format!("{behind} event(s) of the log past its cursor; no attempt yet");
    };
    let answer = match (last.status, last.error.as_deref()) {
        (Some(code), _) => format!("HTTP {code}"),
        (None, Some(e)) => e.to_owned(),
        (None, None) => String::new(),
    };
    let failing = attempts
        .iter()
        .take_while(|a| a.outcome == "failed" || a.outcome == "disabled")
        .count();
    let streak = match failing {
        0 => String::new(),
        n if n == HEALTH_ATTEMPTS => format!("; the last {n}+ attempts failed"),
        n => format!("; the last {n} attempt(s) failed"),
    };
    format!(
        "{behind} event(s) of the log past its cursor; last attempt {} {} for seq {} at {}{streak}",
        last.outcome,
        answer,
        last.seq,
        time(last.at_ms)
    )
}

/// The client ID's `private_key_jwt` keys as text: none, the registered set's key ids, or the
/// set's URL (RFC 7523; never key material, which the API does not show either).
fn keys_text(k: &scopecast_protocol::admin::ClientKeysView) -> String {
    use scopecast_protocol::admin::ClientKeysView;
    match k {
        ClientKeysView::None => "no private_key_jwt keys".to_owned(),
        ClientKeysView::Jwks { kids } if kids.is_empty() => {
            "private_key_jwt: a JWK Set without key ids".to_owned()
        }
        ClientKeysView::Jwks { kids } => {
            format!("private_key_jwt: a JWK Set, keys {}", kids.join(", "))
        }
        ClientKeysView::JwksUri { jwks_uri } => {
            format!("private_key_jwt: the JWK Set at {jwks_uri}")
        }
    }
}

fn failed(user: &User, e: &str) -> Response {
    let mut r = page(
        "Failed",
        Some(user),
        html! { h1 { "That did not work" } p class="notice error" role="alert" { (e) } },
    );
    *r.status_mut() = StatusCode::BAD_REQUEST;
    r
}

/// The application of `client_id`, for the redirect after a change.
fn app_of(state: &Broker, client_id: &str) -> Option<String> {
    state
        .registry
        .client(client_id)
        .map(|c| c.application_id.clone())
}

async fn set_active(
    state: Broker,
    headers: HeaderMap,
    client_id: String,
    bytes: Bytes,
    on: bool,
) -> Response {
    let f = form(&bytes);
    let user = match writer(&state, &headers, &f).await {
        Ok(u) => u,
        Err(r) => return r.into_response(),
    };
    let reason = f.get("reason").cloned().unwrap_or_default();
    let before = sessions_of(&state, &client_id).await;
    let body = Bytes::from(json!({"reason": reason}).to_string());
    let resp = if on {
        super::super::admin::activate(
            State(state.clone()),
            Path(client_id.clone()),
            Extension(user.caller()),
            body,
        )
        .await
    } else {
        super::super::admin::deactivate(
            State(state.clone()),
            Path(client_id.clone()),
            Extension(user.caller()),
            body,
        )
        .await
    };
    match api::<serde_json::Value>(resp).await {
        Ok(_) => {
            let app = app_of(&state, &client_id).unwrap_or_default();
            let to = if on {
                format!("/console/apps/{app}?done=activated")
            } else {
                format!("/console/apps/{app}?done=deactivated&closed={before}")
            };
            Redirect::to(&to).into_response()
        }
        Err(e) => failed(&user, &e),
    }
}

/// `POST /console/clients/{client_id}/activate`.
pub(crate) async fn activate(
    State(state): State<Broker>,
    headers: HeaderMap,
    Path(client_id): Path<String>,
    bytes: Bytes,
) -> Response {
    set_active(state, headers, client_id, bytes, true).await
}

/// `POST /console/clients/{client_id}/deactivate`: as `scopecast app deactivate`; its live
/// sessions close with 4003 within 1 s.
pub(crate) async fn deactivate(
    State(state): State<Broker>,
    headers: HeaderMap,
    Path(client_id): Path<String>,
    bytes: Bytes,
) -> Response {
    set_active(state, headers, client_id, bytes, false).await
}

/// `POST /console/clients/{client_id}/approve`.
pub(crate) async fn approve(
    State(state): State<Broker>,
    headers: HeaderMap,
    Path(client_id): Path<String>,
    bytes: Bytes,
) -> Response {
    let f = form(&bytes);
    let user = match writer(&state, &headers, &f).await {
        Ok(u) => u,
        Err(r) => return r.into_response(),
    };
    let body =
        Bytes::from(json!({"reason": f.get("reason").cloned().unwrap_or_default()}).to_string());
    let resp = super::super::records::approve(
        State(state.clone()),
        Path(client_id.clone()),
        Extension(user.caller()),
        body,
    )
    .await;
    match api::<serde_json::Value>(resp).await {
        Ok(_) => Redirect::to(&format!(
            "/console/apps/{}?done=approved",
            app_of(&state, &client_id).unwrap_or_default()
        ))
        .into_response(),
        Err(e) => failed(&user, &e),
    }
}

/// `POST /console/clients/{client_id}/rotate-secret`: the new secret, shown once.
pub(crate) async fn rotate_secret(
    State(state): State<Broker>,
    headers: HeaderMap,
    Path(client_id): Path<String>,
    bytes: Bytes,
) -> Response {
    let f = form(&bytes);
    let user = match writer(&state, &headers, &f).await {
        Ok(u) => u,
        Err(r) => return r.into_response(),
    };
    let resp = super::super::admin::rotate_secret(
        State(state.clone()),
        Path(client_id.clone()),
        Extension(user.caller()),
    )
    .await;
    match api::<IssuedSecret>(resp).await {
        Ok(s) => page(
            "New secret",
            Some(&user),
            html! {
                h1 { "New client secret" }
                p class="notice ok" role="status" { "Copy it now: it is shown only this once. The old secret no longer works." }
                dl class="facts" { dt { "Client ID" } dd { code { (s.client_id) } } dt { "Client secret" } dd { code class="secret" { (s.client_secret) } } }
                p { a href=(format!("/console/apps/{}", app_of(&state, &client_id).unwrap_or_default())) { "Back to the application" } }
            },
        ),
        Err(e) => failed(&user, &e),
    }
}

/// `GET /console/live`: connections, subscriptions and deliveries per second per client ID,
/// across the cluster, updating by itself.
pub(crate) async fn live(State(state): State<Broker>, headers: HeaderMap) -> Response {
    let user = match reader(&state, &headers).await {
        Ok(u) => u,
        Err(r) => return r.into_response(),
    };
    let body = html! {
        h1 { "Live" }
        p { "Connections, subscriptions and deliveries per client ID"
            @if state.cluster.is_some() { ", across every node of the cluster" }
            ", updated every second." }
        p class="hint" data-field="updated" aria-live="off" {}
        table data-live="clients" {
            caption { "Live sessions by client ID" }
            thead { tr {
                th scope="col" { "Application" } th scope="col" { "Client ID" } th scope="col" { "Connections" }
                th scope="col" { "Subscriptions" } th scope="col" { "Delivered per second" } th scope="col" { "Delivered in total" }
            } }
            tbody { tr { td colspan="6" { "Waiting for the first update…" } } }
        }
    };
    page("Live", Some(&user), body)
}

#[derive(serde::Deserialize, Default, Clone)]
pub(crate) struct AuditForm {
    client_id: Option<String>,
    topic: Option<String>,
    seq: Option<String>,
    from: Option<String>,
    to: Option<String>,
    kind: Option<String>,
    format: Option<String>,
}

fn non_empty(v: &Option<String>) -> Option<String> {
    v.as_ref()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

fn access_query(f: &AuditForm) -> Result<AccessQuery, String> {
    let t = |v: &Option<String>, name: &str| -> Result<Option<Timestamp>, String> {
        non_empty(v)
            .map(|s| Timestamp::parse(&s).map_err(|e| format!("{name}: {e}")))
            .transpose()
    };
    Ok(AccessQuery {
        client_id: non_empty(&f.client_id),
        topic: non_empty(&f.topic)
            .map(|s| {
                Topic::new(&s).map_err(|_| {
                    "Topic: one concrete topic such as fhir.encounter.started (no wildcard)"
                        .to_owned()
                })
            })
            .transpose()?,
        seq: non_empty(&f.seq)
            .map(|s| {
                s.parse::<u64>()
                    .map_err(|_| "seq: a whole number".to_owned())
            })
            .transpose()?,
        from: t(&f.from, "from")?,
        to: t(&f.to, "to")?,
        kind: non_empty(&f.kind)
            .filter(|k| matches!(k.as_str(), "subscription" | "refusal" | "webhook_attempt")),
        limit: 500,
        newest_first: false,
    })
}

/// `GET /console/audit`: the registry's audit trail and the access records, filterable.
pub(crate) async fn audit(
    State(state): State<Broker>,
    headers: HeaderMap,
    Query(f): Query<AuditForm>,
) -> Response {
    let user = match reader(&state, &headers).await {
        Ok(u) => u,
        Err(r) => return r.into_response(),
    };
    let changes = state
        .registry
        .audit(AuditQuery {
            application_id: None,
            client_id: non_empty(&f.client_id),
            limit: 100,
        })
        .await
        .unwrap_or_default();
    // The newest records first: an operator looks for what happened lately; the exports
    // are in time order.
    let (records, truncated, error) = if state.access.audit().enabled() {
        match (access_query(&f), crate::audit::query::permit()) {
            (Ok(mut q), Some(_permit)) => {
                q.newest_first = true;
                match access(&state, &q).await {
                    Ok((r, truncated)) => (r, truncated, None),
                    Err(e) => (Vec::new(), false, Some(e.to_string())),
                }
            }
            (Ok(_), None) => (
                Vec::new(),
                false,
                Some("Two audit queries already run on this node; reload shortly.".to_owned()),
            ),
            (Err(e), _) => (Vec::new(), false, Some(e)),
        }
    } else {
        (
            Vec::new(),
            false,
            Some("The access audit is off on this broker (audit.enabled = false).".to_owned()),
        )
    };
    let qs = serde_urlencoded_query(&f);
    let val = |v: &Option<String>| v.clone().unwrap_or_default();
    let body = html! {
        h1 { "Audit" }
        form method="get" action="/console/audit" class="card filters" aria-label="Filter" {
            label for="f-client" { "Client ID" } input id="f-client" name="client_id" value=(val(&f.client_id));
            label for="f-topic" { "Topic" } input id="f-topic" name="topic" value=(val(&f.topic));
            label for="f-seq" { "Event seq (who received it)" } input id="f-seq" name="seq" inputmode="numeric" value=(val(&f.seq));
            label for="f-from" { "From (RFC 3339)" } input id="f-from" name="from" placeholder="2026-12-03T00:00:00Z" value=(val(&f.from));
            label for="f-to" { "To (RFC 3339)" } input id="f-to" name="to" value=(val(&f.to));
            label for="f-kind" { "Kind" }
            select id="f-kind" name="kind" {
                @for (k, label) in [("", "all"), ("subscription", "subscriptions"), ("refusal", "refusals"), ("webhook_attempt", "webhook attempts")] {
                    option value=(k) selected[val(&f.kind) == k] { (label) }
                }
            }
            button type="submit" { "Filter" }
        }
        h2 { "Access records" }
        @if let Some(e) = &error { p class="notice error" role="alert" { (e) } }
        p { "Export: " a href=(format!("/console/audit/export?format=ndjson&{qs}")) { "NDJSON" } " · "
            a href=(format!("/console/audit/export?format=fhir&{qs}")) { "FHIR AuditEvent Bundle" } }
        @if truncated {
            p class="notice" role="status" {
                "More records match than the " (records.len()) " shown (the newest). Narrow the filter (From, To, Client ID) to see older ones; the exports hold up to "
                (crate::audit::query::MAX_LIMIT) " records in time order and say when they are cut."
            }
        }
        @if records.is_empty() { p { "No access record matches." } } @else {
            table {
                caption { "Who received what (newest snapshot of each record, newest first)" }
                thead { tr { th scope="col" { "Kind" } th scope="col" { "Client ID" } th scope="col" { "What" } th scope="col" { "When" } th scope="col" { "Seq" } th scope="col" { "Count" } th scope="col" { "End" } } }
                tbody { @for r in &records { (access_row(r)) } }
            }
        }
        h2 { "Registry changes" }
        table {
            caption { "Changes made through the admin API, the CLI and this console, newest first" }
            thead { tr { th scope="col" { "When" } th scope="col" { "Who" } th scope="col" { "What" } th scope="col" { "Client ID" } th scope="col" { "Details" } } }
            tbody {
                @for e in &changes {
                    tr { td { (time(e.at_ms)) } td { (e.actor) } td { code { (e.action) } } td { code { (e.client_id.clone().unwrap_or_default()) } } td { span class="detail" { (compact(&e.detail)) } } }
                }
            }
        }
    };
    page("Audit", Some(&user), body)
}

fn serde_urlencoded_query(f: &AuditForm) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in [
        ("client_id", &f.client_id),
        ("topic", &f.topic),
        ("seq", &f.seq),
        ("from", &f.from),
        ("to", &f.to),
        ("kind", &f.kind),
    ] {
        if let Some(v) = non_empty(v) {
            s.append_pair(k, &v);
        }
    }
    s.finish()
}

fn access_row(r: &AccessRecord) -> Markup {
    match r {
        AccessRecord::Subscription(s) => html! { tr {
            td { "subscription" } td { code { (s.client_id) } }
            td { code { (s.pattern) } " · session " (s.session) " · " (s.source) }
            td { (s.granted_at.to_string()) }
            td { @if let (Some(f), Some(l)) = (s.first_seq, s.last_seq) { (f) "–" (l) } @else { "–" } }
            td { (s.count) } td { (s.end_reason.clone().unwrap_or_else(|| "live".into())) }
        } },
        AccessRecord::Refusal(f) => html! { tr {
            td { "refusal" } td { code { (f.client_id) } }
            td { (f.reason) @if let Some(m) = &f.missing_scope { " (missing " code { (m) } ")" } }
            td { (f.minute.to_string()) } td { "–" } td { (f.count) } td {}
        } },
        AccessRecord::WebhookAttempt(w) => html! { tr {
            td { "webhook attempt" } td { code { (w.client_id) } }
            td { (w.endpoint_id) " · " code { (w.topic) } " · attempt " (w.attempt) }
            td { (w.at.to_string()) } td { (w.seq) } td { "1" }
            td { (w.outcome) @if let Some(s) = w.status { " (" (s) ")" } }
        } },
    }
}

/// `GET /console/audit/export?format=ndjson|fhir&...`: the access records as a download.
pub(crate) async fn audit_export(
    State(state): State<Broker>,
    headers: HeaderMap,
    Query(f): Query<AuditForm>,
) -> Response {
    let user = match reader(&state, &headers).await {
        Ok(u) => u,
        Err(r) => return r.into_response(),
    };
    let mut q = match access_query(&f) {
        Ok(q) => q,
        Err(e) => return failed(&user, &e),
    };
    q.limit = crate::audit::query::MAX_LIMIT;
    let Some(_permit) = crate::audit::query::permit() else {
        return failed(
            &user,
            "Two audit queries already run on this node; try again shortly.",
        );
    };
    let (records, truncated) = match access(&state, &q).await {
        Ok(r) => r,
        Err(e) => return failed(&user, &e.to_string()),
    };
    if f.format.as_deref() == Some("fhir") {
        (
            [
                (header::CONTENT_TYPE, "application/fhir+json"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"access-audit.fhir.json\"",
                ),
            ],
            Json(fhir_bundle(&records, &state.public_url, truncated)),
        )
            .into_response()
    } else {
        (
            [
                (header::CONTENT_TYPE, "application/x-ndjson"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"access-audit.ndjson\"",
                ),
            ],
            ndjson(&records, truncated),
        )
            .into_response()
    }
}

/// `GET /console/catalog`: developers, records and their versions, trusted catalog keys,
/// approvals waiting, and the import of a record.
pub(crate) async fn catalog(State(state): State<Broker>, headers: HeaderMap) -> Response {
    let user = match reader(&state, &headers).await {
        Ok(u) => u,
        Err(r) => return r.into_response(),
    };
    let creds = state.registry.credentials();
    let developers: Vec<_> = creds
        .all()
        .iter()
        .filter(|c| c.role == Role::Developer && c.is_valid())
        .cloned()
        .collect();
    let list: ApplicationList =
        api(super::super::admin::list_applications(State(state.clone())).await)
            .await
            .unwrap_or(ApplicationList {
                applications: Vec::new(),
            });
    let snapshot = state.registry.snapshot();
    let waiting: Vec<(&ApplicationView, &ClientView)> = list
        .applications
        .iter()
        .flat_map(|a| a.clients.both().into_iter().map(move |c| (a, c)))
        .filter(|(_, c)| !c.pending_scope.is_empty() && c.kind == state.config.environment.as_str())
        .collect();
    let body = html! {
        h1 { "Catalog and environments" }
        p { "Applications are registered once (here or in a catalog) and activated per environment. This is "
            strong { (state.config.environment_id()) } "." }
        h2 { "Approvals waiting" }
        @if waiting.is_empty() { p { "No record version asks for more than this environment granted." } } @else {
            table {
                caption { "Record versions whose scope is wider than this environment's grant" }
                thead { tr { th scope="col" { "Application" } th scope="col" { "Client ID" } th scope="col" { "Granted" } th scope="col" { "Asks for" } } }
                tbody { @for (a, c) in &waiting { tr {
                    td { a href=(format!("/console/apps/{}", a.id)) { (a.name) } }
                    td { code { (c.client_id) } } td { code { (c.granted_scope.clone().unwrap_or_default()) } } td { code { (c.pending_scope) } }
                } } }
            }
        }
        h2 { "Records and versions" }
        table {
            caption { "Every application record known here: its current version, and the version a catalog hands out (the newest ready one)" }
            thead { tr { th scope="col" { "Application" } th scope="col" { "Version" } th scope="col" { "State" } th scope="col" { "Handed out" } th scope="col" { "Developer" } th scope="col" { "Origin" } } }
            tbody { @for a in &list.applications { tr {
                td { a href=(format!("/console/apps/{}", a.id)) { (a.name) } }
                td { (a.version) } td { @if a.retired_at.is_some() { "retired" } @else if a.ready { "ready" } @else { "draft" } }
                td { (handed_out(&snapshot, a)) }
                td { (a.owner.clone().unwrap_or_default()) }
                td { @if let Some(o) = &a.origin { "imported (key " code { (o) } ")" } @else { "registered here" } }
            } } }
        }
        h2 { "Developer accounts" }
        @if developers.is_empty() { p { "None." } } @else {
            ul { @for d in &developers { li { (d.name) " — " (list.applications.iter().filter(|a| a.owner.as_deref() == Some(d.name.as_str())).count()) " application(s)" } } }
        }
        h2 { "Trusted catalogs" }
        @if state.trusted.kids().is_empty() { p { "This environment pins no catalog key (" code { "catalog.trusted_keys_file" } ")." } } @else {
            ul { @for k in state.trusted.kids() { li { code { (k) } } } }
        }
        @if user.can_write() {
            h2 id="import" { "Import a record" }
            form method="post" action="/console/records/import" class="card" aria-labelledby="import" {
                (csrf(&user))
                label for="record" { "Signed record (the JSON of " code { "scopecast app export" } ")" }
                textarea id="record" name="record" rows="6" required {}
                button type="submit" { "Import" }
            }
        }
    };
    page("Catalog", Some(&user), body)
}

/// `POST /console/records/import`.
pub(crate) async fn import_record(
    State(state): State<Broker>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    let f = form(&bytes);
    let user = match writer(&state, &headers, &f).await {
        Ok(u) => u,
        Err(r) => return r.into_response(),
    };
    let record = f.get("record").cloned().unwrap_or_default();
    let resp = super::super::records::import(
        State(state.clone()),
        Extension(user.caller()),
        Bytes::from(record),
    )
    .await;
    match api::<serde_json::Value>(resp).await {
        Ok(v) => match v["application"]["id"].as_str().or_else(|| v["id"].as_str()) {
            Some(id) => Redirect::to(&format!("/console/apps/{id}")).into_response(),
            None => Redirect::to("/console/catalog").into_response(),
        },
        Err(e) => failed(&user, &e),
    }
}

/// Sessions across the cluster (the live view's source).
pub(crate) async fn all_sessions(state: &Broker) -> SessionList {
    let mut sessions = super::super::sessions::local(state, None);
    if state.cluster.is_some() {
        sessions.extend(crate::cluster::remote_sessions(state, None).await);
    }
    SessionList { sessions }
}

#[cfg(test)]
mod tests {
    use scopecast_protocol::admin::ClientKeysView;

    use super::keys_text;

    #[test]
    fn keys_are_named_by_kind_with_their_ids_or_url() {
        assert_eq!(keys_text(&ClientKeysView::None), "no private_key_jwt keys");
        assert_eq!(
            keys_text(&ClientKeysView::Jwks {
                kids: vec!["k1".into(), "k2".into()]
            }),
            "private_key_jwt: a JWK Set, keys k1, k2"
        );
        assert_eq!(
            keys_text(&ClientKeysView::JwksUri {
                jwks_uri: "https://app.example/jwks.json".into()
            }),
            "private_key_jwt: the JWK Set at https://app.example/jwks.json"
        );
    }
}
