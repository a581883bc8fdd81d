//! The operator console at `/console` (SECURITY.md "Operator console"): server-rendered pages
//! (maud: every value is escaped unless marked otherwise, and nothing is), a small script
//! served from here (`static/console.js`, no CDN, works offline), and the admin API's own
//! handlers for every change, so the console does exactly what the CLI does.
//!
//! - Sign-in with a credential of the one credential store (`admin`, `viewer`, `developer`;
//!   `metrics` is refused). The session is a random cookie (`HttpOnly`, `SameSite=Strict`,
//!   `Path=/console`, `Secure` when the public URL is https) whose SHA-256 is kept in the
//!   registry store (`console_sessions`), so every node of a cluster knows it and sign-out
//!   ends it everywhere. It ends after `console.idle_timeout_s` without a request, at
//!   `console.absolute_timeout_s` after sign-in, and as soon as its credential is revoked.
//! - Every form carries the session's CSRF token (the sign-in form: a double-submit cookie);
//!   a POST without it, or from another origin, is refused with 403. A viewer sees no button
//!   that changes anything, and its POSTs are refused with 403.
//! - Every answer has a strict `Content-Security-Policy` (`default-src 'none'`; scripts,
//!   styles and connections to this origin only; no inline script), `X-Frame-Options: DENY`,
//!   `Referrer-Policy: same-origin` (no URL leaves the console; same-origin form posts carry their `Origin`) and `Cache-Control: no-store`.

mod live;
mod pages;

use std::collections::HashMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use maud::{DOCTYPE, Markup, html};
use scopecast_protocol::admin::Role;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use super::auth::Caller;
use crate::registry::ConsoleSession;
use crate::state::Broker;

/// The session cookie.
const COOKIE: &str = "scopecast_console";
/// The sign-in form's double-submit cookie.
const LOGIN_COOKIE: &str = "scopecast_console_login";
/// A session's `last_seen` is written at most this often (ms).
const TOUCH_EVERY_MS: i64 = 30_000;
/// The largest form body (a record import is the largest).
pub(crate) const MAX_FORM_BYTES: usize = 256 * 1024;

/// The policy of every console answer.
pub(crate) const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; \
    base-uri 'none'";

/// The console's routes, under `/console`.
pub(crate) fn router(state: Broker) -> Router<Broker> {
    Router::new()
        .route("/", get(pages::home))
        .route("/login", get(pages::login_form).post(pages::login))
        .route("/logout", post(pages::logout))
        .route("/overview", get(pages::overview))
        .route("/apps", get(pages::apps).post(pages::create_app))
        .route("/apps/{id}", get(pages::app))
        .route("/clients/{client_id}/activate", post(pages::activate))
        .route("/clients/{client_id}/deactivate", post(pages::deactivate))
        .route(
            "/clients/{client_id}/rotate-secret",
            post(pages::rotate_secret),
        )
        .route("/clients/{client_id}/approve", post(pages::approve))
        .route("/live", get(pages::live))
        .route("/live/events", get(live::events))
        .route("/audit", get(pages::audit))
        .route("/audit/export", get(pages::audit_export))
        .route("/catalog", get(pages::catalog))
        .route("/records/import", post(pages::import_record))
        .route("/static/console.css", get(css))
        .route("/static/console.js", get(js))
        .fallback(pages::not_found)
        .layer(axum::middleware::from_fn_with_state(state, headers))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_FORM_BYTES))
}

/// Adds the security headers to every console answer.
async fn headers(State(_): State<Broker>, req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        include_str!("static/console.css"),
    )
        .into_response()
}

async fn js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        include_str!("static/console.js"),
    )
        .into_response()
}

/// A signed-in console user.
#[derive(Debug, Clone)]
pub(crate) struct User {
    /// The credential's name (the actor in the audit trail).
    pub(crate) name: String,
    /// Its role.
    pub(crate) role: Role,
    /// The session's CSRF token.
    pub(crate) csrf: String,
    /// SHA-256 of the cookie.
    id_hash: String,
}

impl User {
    /// True when this user may change things (admin).
    pub(crate) fn can_write(&self) -> bool {
        self.role.can_write_admin()
    }

    /// True when this user may read the operator pages (admin, viewer).
    pub(crate) fn can_read(&self) -> bool {
        self.role.can_read_admin()
    }

    /// The admin API's caller for this user.
    pub(crate) fn caller(&self) -> Caller {
        Caller {
            name: self.name.clone(),
            role: self.role,
        }
    }
}

fn now_ms() -> i64 {
    scopecast_protocol::Timestamp::now().unix_ms()
}

fn random_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

fn hash(v: &str) -> String {
    hex::encode(Sha256::digest(v.as_bytes()))
}

/// The value of cookie `name` in `headers`.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// `Secure` when the broker's public URL is https (TLS here, or ending at a load balancer).
fn secure(state: &Broker) -> &'static str {
    if state
        .public_url
        .get(..8)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
    {
        "; Secure"
    } else {
        ""
    }
}

fn set_cookie(state: &Broker, name: &str, value: &str, path: &str, max_age_s: u64) -> HeaderValue {
    let v = format!(
        "{name}={value}; Path={path}; HttpOnly; SameSite=Strict; Max-Age={max_age_s}{}",
        secure(state)
    );
    HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The signed-in user of this request, if its session is valid: known, not idle past
/// `console.idle_timeout_s`, younger than `console.absolute_timeout_s`, its credential still
/// valid and of a role that may sign in.
pub(crate) async fn signed_in(state: &Broker, headers: &HeaderMap) -> Option<User> {
    session(state, headers, true).await
}

/// As [`signed_in`]; `touch` false leaves `last_seen` as it is (a live stream's re-checks do
/// not keep its session from going idle).
pub(crate) async fn session(state: &Broker, headers: &HeaderMap, touch: bool) -> Option<User> {
    let value = cookie(headers, COOKIE)?;
    if value.is_empty() || value.len() > 128 {
        return None;
    }
    let id_hash = hash(value);
    let s = state.registry.console_session(&id_hash).await.ok()??;
    let c = &state.config.console;
    let now = now_ms();
    let idle = i64::try_from(c.idle_timeout_s * 1000).unwrap_or(i64::MAX);
    let absolute = i64::try_from(c.absolute_timeout_s * 1000).unwrap_or(i64::MAX);
    if now - s.last_seen_ms > idle || now - s.created_ms > absolute {
        let _ = state.registry.end_console_session(&id_hash).await;
        return None;
    }
    let credentials = state.registry.credentials();
    let cred = credentials
        .all()
        .iter()
        .find(|c| c.id == s.credential_id && c.is_valid())?
        .clone();
    if !may_sign_in(cred.role) {
        return None;
    }
    if touch && now - s.last_seen_ms > TOUCH_EVERY_MS.min(idle / 4) {
        let _ = state.registry.touch_console_session(&id_hash, now).await;
    }
    Some(User {
        name: cred.name.clone(),
        role: cred.role,
        csrf: s.csrf,
        id_hash,
    })
}

fn may_sign_in(role: Role) -> bool {
    matches!(role, Role::Admin | Role::Viewer | Role::Developer)
}

/// Why a console request was refused.
pub(crate) enum Refused {
    /// Not signed in: to the sign-in page.
    SignIn,
    /// Signed in, but the role may not (403).
    Role(User, &'static str),
    /// A POST without the session's CSRF token, or from another origin (403).
    Csrf,
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match self {
            Refused::SignIn => Redirect::to("/console/login").into_response(),
            Refused::Role(user, what) => (
                StatusCode::FORBIDDEN,
                pages::page(
                    "Not allowed",
                    Some(&user),
                    html! {
                        h1 { "Not allowed" }
                        p role="alert" { "Your role, " strong { (user.role.as_str()) } ", may not " (what) "." }
                    },
                ),
            )
                .into_response(),
            Refused::Csrf => (
                StatusCode::FORBIDDEN,
                pages::page(
                    "Refused",
                    None,
                    html! {
                        h1 { "Refused" }
                        p role="alert" { "This form was not sent from a page of this console (its security token is missing or wrong). Reload the page and try again." }
                    },
                ),
            )
                .into_response(),
        }
    }
}

/// A signed-in user who may read the operator pages (admin or viewer).
pub(crate) async fn reader(state: &Broker, headers: &HeaderMap) -> Result<User, Refused> {
    let user = signed_in(state, headers).await.ok_or(Refused::SignIn)?;
    if !user.can_read() {
        return Err(Refused::Role(user, "see the operator pages"));
    }
    Ok(user)
}

/// A form POST of an admin: signed in, role admin, the session's CSRF token, same origin.
pub(crate) async fn writer(
    state: &Broker,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Result<User, Refused> {
    let user = signed_in(state, headers).await.ok_or(Refused::SignIn)?;
    check_csrf(state, headers, form, &user.csrf)?;
    if !user.can_write() {
        return Err(Refused::Role(user, "change anything"));
    }
    Ok(user)
}

/// The form's `csrf` field equals `expected` (compared in constant time), and an `Origin`
/// header, when sent, names this request's host or the public URL's.
fn check_csrf(
    state: &Broker,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
    expected: &str,
) -> Result<(), Refused> {
    use subtle::ConstantTimeEq as _;
    let given = form.get("csrf").map(String::as_str).unwrap_or("");
    if given.is_empty() || !bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
        return Err(Refused::Csrf);
    }
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let origin_host = after_scheme(origin);
        // The Host this request came with, or the public URL's (a load balancer in front
        // may rewrite Host to the broker's own address). An Origin never names the scheme's
        // default port; the URL parser drops it from the public URL too.
        let public_host = reqwest::Url::parse(&state.public_url)
            .ok()
            .and_then(|u| {
                let host = u.host_str()?.to_owned();
                Some(match u.port() {
                    Some(port) => format!("{host}:{port}"),
                    None => host,
                })
            })
            .unwrap_or_default();
        if !origin_host.eq_ignore_ascii_case(host)
            && !origin_host.eq_ignore_ascii_case(&public_host)
        {
            return Err(Refused::Csrf);
        }
    }
    Ok(())
}

/// What follows `scheme://` (all of `url` when it has no scheme).
fn after_scheme(url: &str) -> &str {
    url.split_once("://").map_or(url, |(_, rest)| rest)
}

/// Reads a urlencoded form body (the console's only request body).
pub(crate) fn form(bytes: &Bytes) -> HashMap<String, String> {
    form_urlencoded::parse(bytes).into_owned().collect()
}

/// Starts a session for credential `token`: the cookie, or `None` when the token is not a
/// valid credential of a role that may sign in.
async fn start_session(state: &Broker, token: &str) -> Result<Option<(User, HeaderValue)>, String> {
    let Some(cred) = state.registry.authenticate(token) else {
        return Ok(None);
    };
    if !may_sign_in(cred.role) {
        return Ok(None);
    }
    let value = random_token().map_err(|e| e.to_string())?;
    let csrf = random_token().map_err(|e| e.to_string())?;
    let now = now_ms();
    let s = ConsoleSession {
        id_hash: hash(&value),
        credential_id: cred.id.clone(),
        csrf: csrf.clone(),
        created_ms: now,
        last_seen_ms: now,
    };
    state
        .registry
        .insert_console_session(&s)
        .await
        .map_err(|e| e.to_string())?;
    // Sessions that ran out are deleted at the next sign-in (a read also refuses them).
    let c = &state.config.console;
    let _ = state
        .registry
        .prune_console_sessions(
            now - i64::try_from(c.absolute_timeout_s * 1000).unwrap_or(i64::MAX),
            now - i64::try_from(c.idle_timeout_s * 1000).unwrap_or(i64::MAX),
        )
        .await;
    let cookie = set_cookie(
        state,
        COOKIE,
        &value,
        "/console",
        state.config.console.absolute_timeout_s,
    );
    Ok(Some((
        User {
            name: cred.name.clone(),
            role: cred.role,
            csrf,
            id_hash: s.id_hash,
        },
        cookie,
    )))
}

/// Ends `user`'s session (server side) and the cookie that named it.
async fn end_session(state: &Broker, user: &User) -> HeaderValue {
    let _ = state.registry.end_console_session(&user.id_hash).await;
    set_cookie(state, COOKIE, "", "/console", 0)
}

/// Calls one of the admin API's handlers and reads its JSON answer as `T`; on a refusal, the
/// API's message.
pub(crate) async fn api<T: DeserializeOwned>(resp: Response) -> Result<T, String> {
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 16 * 1024 * 1024)
        .await
        .map_err(|e| e.to_string())?;
    if !status.is_success() {
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        return Err(v["message"]
            .as_str()
            .map_or_else(|| format!("the broker answered {status}"), str::to_owned));
    }
    serde_json::from_slice(&bytes).map_err(|e| e.to_string())
}

/// The whole page around `body`.
pub(crate) fn layout(title: &str, user: Option<&User>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Scopecast console" }
                link rel="stylesheet" href="/console/static/console.css";
                script src="/console/static/console.js" defer {}
            }
            body {
                a class="skip" href="#main" { "Skip to content" }
                header {
                    span class="brand" { "Scopecast" }
                    @if let Some(u) = user {
                        nav aria-label="Console" {
                            ul {
                                @if u.can_read() {
                                    li { a href="/console/overview" { "Overview" } }
                                }
                                li { a href="/console/apps" { "Applications" } }
                                @if u.can_read() {
                                    li { a href="/console/live" { "Live" } }
                                    li { a href="/console/audit" { "Audit" } }
                                    li { a href="/console/catalog" { "Catalog" } }
                                }
                            }
                        }
                        form class="signout" method="post" action="/console/logout" {
                            input type="hidden" name="csrf" value=(u.csrf);
                            span { (u.name) " (" (u.role.as_str()) ")" }
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main id="main" tabindex="-1" { (body) }
            }
        }
    }
}
