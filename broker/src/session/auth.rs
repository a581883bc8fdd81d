//! A session's credentials: the first `auth` frame (for clients that cannot send the token
//! on the upgrade), refreshes on a live session, and the token's end: `token_expiring` before
//! it, close 4002 at it (plus the leeway), after which nothing is delivered.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use scopecast_protocol::{ClientFrame, CloseCode, Reason, Timestamp};
use tokio::time::Instant;

use super::transport::{self, Incoming, Socket};
use super::{Session, error_frame};
use crate::auth::token::{Principal, VerifyError};
use crate::state::Broker;

/// Waits for the first frame, which must be `auth`, within the auth timeout; on any other
/// outcome the connection is closed (4001, 4003, or the transport fault's code).
pub(super) async fn first_auth<S: Socket>(
    socket: &mut S,
    broker: &Broker,
    peer: SocketAddr,
) -> Option<Principal> {
    let limits = &broker.config.limits;
    let deadline = Duration::from_millis(limits.auth_timeout_ms);
    let msg = loop {
        let next = match tokio::time::timeout(deadline, socket.next()).await {
            Ok(next) => transport::incoming(next),
            Err(_) => {
                broker
                    .access
                    .refused(None, peer, "auth_timeout", "no auth frame in time");
                let why = format!("no auth frame within {} ms", deadline.as_millis());
                transport::refuse(socket, None, CloseCode::Unauthorized, &why).await;
                return None;
            }
        };
        match next {
            Incoming::Gone => return None,
            Incoming::Fault(code, why) => {
                transport::refuse(socket, None, code, why).await;
                return None;
            }
            Incoming::Control => continue,
            Incoming::Close(_) => {
                transport::flush(socket).await;
                return None;
            }
            Incoming::Binary => {
                transport::refuse(
                    socket,
                    None,
                    CloseCode::UnsupportedData,
                    "binary messages are not part of scopecast.v1",
                )
                .await;
                return None;
            }
            Incoming::Text(t) => break t,
        }
    };
    let refusal = match ClientFrame::decode(&msg, limits.max_frame_bytes) {
        Ok(ClientFrame::Auth { token }) => match broker.verifier.verify(&token).await {
            Ok(p) => return Some(p),
            Err(e) => {
                broker
                    .access
                    .refused(Some(&token), peer, e.label(), &e.to_string());
                let code = if e.reason() == Reason::ClientInactive {
                    CloseCode::Forbidden
                } else {
                    CloseCode::Unauthorized
                };
                (
                    error_frame(None, e.reason(), e.to_string()),
                    code,
                    e.to_string(),
                )
            }
        },
        Ok(other) => (
            error_frame(
                other.id().cloned(),
                Reason::AuthRequired,
                "authenticate first: send an `auth` frame".into(),
            ),
            CloseCode::Unauthorized,
            "authenticate first".to_owned(),
        ),
        Err(e) => (
            e.to_frame(),
            CloseCode::Unauthorized,
            "authenticate first".to_owned(),
        ),
    };
    let (frame, code, why) = refusal;
    transport::refuse(socket, Some(&frame), code, &why).await;
    None
}

impl<S: Socket> Session<S> {
    /// When the token's validity ends (its `exp` plus the leeway), as a timer instant; the
    /// fan-out stops queueing events accepted from then on, to the millisecond.
    pub(super) fn expiry(&self) -> Instant {
        let left = self.principal.expires_at.unix_ms() - Timestamp::now().unix_ms();
        let leeway = self.broker.verifier.leeway_s() as i64 * 1000;
        self.handle
            .set_deadline_ms(self.principal.expires_at.unix_ms() + leeway);
        Instant::now() + Duration::from_millis((left + leeway).max(0) as u64)
    }

    /// When `token_expiring` is due: before `exp` by `token_warning_ms`, or by half of what
    /// is left when that is shorter.
    pub(super) fn warning(&self) -> Instant {
        let left = (self.principal.expires_at.unix_ms() - Timestamp::now().unix_ms()).max(0) as u64;
        let before = self.broker.config.limits.token_warning_ms.min(left / 2);
        Instant::now() + Duration::from_millis(left - before)
    }

    /// An `auth` frame on a live session: a new token of the same client replaces the old
    /// one, and exactly the subscriptions it no longer allows end (PROTOCOL.md section 3).
    pub(super) async fn refresh(&mut self, token: &str) {
        match self.broker.verifier.verify(token).await {
            Err(e) => {
                self.broker.access.refused(
                    Some(token),
                    self.handle.peer,
                    e.label(),
                    &e.to_string(),
                );
                self.reply(&error_frame(
                    None,
                    e.reason(),
                    format!("refresh refused: {e}; the current token stays in force"),
                ));
                if matches!(
                    e,
                    VerifyError::ClientInactive | VerifyError::WrongEnvironment
                ) {
                    self.inactive();
                }
            }
            Ok(p) if p.client_id != self.principal.client_id => {
                self.broker.access.refused(
                    Some(token),
                    self.handle.peer,
                    "client_mismatch",
                    "a refresh with another client's token",
                );
                let msg = format!(
                    "a refresh must carry a token of client {}",
                    self.principal.client_id
                );
                self.reply(&error_frame(None, Reason::ClientMismatch, msg));
                self.handle.outbox.close(
                    CloseCode::Forbidden,
                    "refresh with another client's token",
                    true,
                );
            }
            Ok(p) => {
                let another = p.token_id != self.principal.token_id;
                self.principal = p;
                self.warned = false;
                self.refreshed = true;
                if another {
                    // The access audit names the token events went out under.
                    self.audit_restart_all("token_refreshed");
                }
                self.recheck();
                self.welcome();
            }
        }
    }
}
