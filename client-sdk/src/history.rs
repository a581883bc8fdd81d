//! Catch-up from the history endpoint (`GET /v1/events`, PROTOCOL.md section 8): a
//! subscription whose reader fell behind, that starts in the past, or that resumes after a
//! reconnect reads the events it needs here, at its reader's pace.

use scopecast_protocol::{ErrorCode, ErrorFrame, Event, Pattern};
use std::sync::Arc;

use crate::connection::{Feed, backoff};
use crate::error::subscribe_error;
use crate::token::TokenError;
use crate::{ConnectError, ConnectOptions, Item, SubscribeError};

/// The access token to present: from the token source (cached, refreshed near expiry), or the
/// fixed one.
pub(crate) async fn current_token(opts: &ConnectOptions) -> Result<String, ConnectError> {
    match (&opts.token, &opts.static_token) {
        (Some(source), _) => Ok(source.token().await?.access_token),
        (None, Some(t)) => Ok(t.clone()),
        (None, None) => Err(ConnectError::Token(TokenError::Key(
            "no token source and no token".to_owned(),
        ))),
    }
}

/// Reads `GET /v1/events` (PROTOCOL.md section 8) for subscriptions that must catch up: after
/// `subscribe_since`, after a reconnect, or after the reader fell behind.
#[derive(Clone)]
pub(crate) struct History {
    pub(crate) http: reqwest::Client,
    /// `http(s)://host:port/v1/events` of the broker node the connection is on now (the
    /// WebSocket dial moves it when it fails over to another node).
    pub(crate) url: Arc<std::sync::Mutex<String>>,
    pub(crate) opts: ConnectOptions,
}

/// One page of `GET /v1/events`.
#[derive(serde::Deserialize)]
pub(crate) struct HistoryPage {
    pub(crate) events: Vec<Event>,
    pub(crate) next_since: u64,
    pub(crate) first_seq: u64,
    pub(crate) truncated: bool,
}

/// The JSON body of a refused HTTP request.
#[derive(serde::Deserialize)]
pub(crate) struct HttpError {
    pub(crate) error: ErrorCode,
    pub(crate) reason: scopecast_protocol::ErrorReason,
    #[serde(default)]
    pub(crate) message: String,
    #[serde(default)]
    pub(crate) required_scope: Option<String>,
}

/// Why a history page could not be had.
pub(crate) enum PageError {
    /// Worth another try later (network, 429, 5xx, a token to refresh).
    Retry,
    /// The subscription cannot be served.
    Fatal(SubscribeError),
}

/// Events per history page (the broker's maximum; it also bounds a page's bytes).
pub(crate) const HISTORY_PAGE: usize = 1000;

/// Transient history failures in a row (with backoff, minutes) before a catch-up gives up
/// and ends its subscription with [`SubscribeError::Unavailable`].
pub(crate) const MAX_HISTORY_FAILURES: u32 = 20;

impl History {
    pub(crate) async fn page(
        &self,
        pattern: &Pattern,
        since: u64,
        refreshed: &mut bool,
    ) -> Result<HistoryPage, PageError> {
        let token = match current_token(&self.opts).await {
            Ok(t) => t,
            Err(ConnectError::Token(e)) if e.is_permanent() => {
                return Err(PageError::Fatal(SubscribeError::Unauthorized(
                    e.to_string(),
                )));
            }
            Err(_) => return Err(PageError::Retry),
        };
        let url = self
            .url
            .lock()
            .map(|u| u.clone())
            .unwrap_or_else(|p| p.into_inner().clone());
        let resp = self
            .http
            .get(&url)
            .query(&[
                ("topic", pattern.as_str()),
                ("since", &since.to_string()),
                ("limit", &HISTORY_PAGE.to_string()),
            ])
            .bearer_auth(token)
            .send()
            .await
            .map_err(|_| PageError::Retry)?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(|_| PageError::Retry)?;
        if status == 200 {
            return serde_json::from_slice(&body).map_err(|e| {
                PageError::Fatal(SubscribeError::Protocol(format!("history page: {e}")))
            });
        }
        if status == 429 || status >= 500 {
            return Err(PageError::Retry);
        }
        let refused = serde_json::from_slice::<HttpError>(&body)
            .map(|h| ErrorFrame {
                id: None,
                code: h.error,
                error: h.reason,
                message: h.message,
                required_scope: h.required_scope,
                topic: None,
                retry_after_ms: None,
            })
            .map(|f| subscribe_error(&f))
            .unwrap_or_else(|_| SubscribeError::Protocol(format!("history: HTTP {status}")));
        match (&refused, &self.opts.token) {
            // A token the broker no longer takes (its keys rotated): get a new one, once.
            (SubscribeError::Unauthorized(_) | SubscribeError::TokenExpired, Some(source))
                if !*refreshed =>
            {
                *refreshed = true;
                let _ = source.refresh().await;
                Err(PageError::Retry)
            }
            _ => Err(PageError::Fatal(refused)),
        }
    }

    /// Hands the matching events with `seq` > `from` to `events`, in order, until `target` is
    /// reached; a range gone past retention becomes one [`Item::Gap`]. Returns the `seq` the
    /// subscription has reached. Waits for the reader, and retries transient failures with
    /// capped, jittered backoff.
    pub(crate) async fn catch_up(
        self,
        pattern: Pattern,
        from: u64,
        target: u64,
        feed: Feed,
    ) -> Result<u64, SubscribeError> {
        let mut cursor = from;
        let mut failures = 0u32;
        let mut refreshed = false;
        while cursor < target {
            let page = match self.page(&pattern, cursor, &mut refreshed).await {
                Ok(p) if p.next_since > cursor || !p.events.is_empty() => p,
                Ok(_) | Err(PageError::Retry) => {
                    failures += 1;
                    if failures > MAX_HISTORY_FAILURES {
                        return Err(SubscribeError::Unavailable(format!(
                            "the history endpoint failed {MAX_HISTORY_FAILURES} times in a row"
                        )));
                    }
                    tokio::time::sleep(backoff(failures, self.opts.max_delay)).await;
                    continue;
                }
                Err(PageError::Fatal(e)) => return Err(e),
            };
            failures = 0;
            refreshed = false;
            // What is gone: up to the oldest retained event, and never past one this page holds
            // (retention may have moved on while the broker read the page).
            let gone_to = page
                .events
                .first()
                .map_or(page.first_seq, |e| e.seq.min(page.first_seq))
                .saturating_sub(1);
            if page.truncated && gone_to > cursor {
                let gap = Item::Gap {
                    from_seq: cursor + 1,
                    to_seq: gone_to,
                };
                if !feed.send(gap).await {
                    return Err(SubscribeError::Closed);
                }
            }
            for e in page.events {
                if e.seq <= cursor {
                    continue;
                }
                cursor = e.seq;
                if !feed.send(Item::Event(e)).await {
                    return Err(SubscribeError::Closed);
                }
            }
            cursor = cursor.max(page.next_since);
        }
        Ok(cursor)
    }
}
