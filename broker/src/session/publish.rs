//! Publishing over a session: the `publish` frame goes through the one admission
//! (`access::Admission`), and its answer (`published` or `error`) is queued when the log has
//! it, in the order the frames came, while the session goes on reading.

use scopecast_protocol::{
    ErrorFrame, EventId, Published, RawJson, Reason, RequestId, ServerFrame, Topic,
};

use super::transport::Socket;
use super::{Session, error_frame};
use crate::access::{Ack, Denied, PublishRefused};

impl<S: Socket> Session<S> {
    pub(super) async fn publish(
        &mut self,
        id: RequestId,
        topic: Topic,
        data: RawJson,
        event_id: Option<EventId>,
    ) {
        match self
            .broker
            .admission
            .submit(&self.principal, topic.clone(), data, event_id)
            .await
        {
            Ok(pending) => self.acks.push_back((id, pending)),
            Err(refused) => self.refused(id, Some(&topic), refused),
        }
    }

    /// Answers a publish whose outcome the log gave.
    pub(super) fn acknowledge(&mut self, id: RequestId, result: Result<Ack, PublishRefused>) {
        match result {
            Ok(ack) => {
                if !ack.duplicate {
                    self.handle.count_published();
                }
                self.reply(&ServerFrame::Published(Published {
                    id,
                    seq: ack.seq,
                    event_id: ack.event_id,
                    duplicate: ack.duplicate,
                }));
            }
            Err(refused) => self.refused(id, None, refused),
        }
    }

    /// The `error` frame of a refused publish (`topic` when it is known here: refusals from
    /// the log come without it).
    fn refused(&self, id: RequestId, topic: Option<&Topic>, refused: PublishRefused) {
        let frame = match refused {
            PublishRefused::Denied(Denied::Inactive) => return self.inactive(),
            PublishRefused::Denied(Denied::Scope {
                required_scope,
                whose,
            }) => {
                let mut e = ErrorFrame::new(
                    Some(id),
                    Reason::InsufficientScope,
                    format!(
                        "client {} may not publish to {}: {} does not include {required_scope}",
                        self.principal.client_id,
                        topic.map_or("this topic", |t| t.as_str()),
                        whose.words()
                    ),
                );
                e.required_scope = Some(required_scope);
                ServerFrame::Error(e)
            }
            PublishRefused::RateLimited {
                retry_after,
                per_sec,
            } => {
                let mut e = ErrorFrame::new(
                    Some(id),
                    Reason::PublishRateExceeded,
                    format!("over {per_sec} publishes per second for this client ID"),
                );
                e.retry_after_ms = Some(retry_after.as_millis().max(1) as u64);
                ServerFrame::Error(e)
            }
            PublishRefused::Unavailable(_) => error_frame(
                Some(id),
                Reason::LogUnavailable,
                "the event log cannot store events right now; nothing was stored, retry later"
                    .to_owned(),
            ),
            PublishRefused::Unknown(_) => error_frame(
                Some(id),
                Reason::LogUnavailable,
                "the event log did not say whether the event was stored: retry with the same \
                 event_id (a stored one is answered with its seq)"
                    .to_owned(),
            ),
            PublishRefused::Conflict => error_frame(
                Some(id),
                Reason::EventIdConflict,
                "this event_id was already used within the idempotency window for another \
                 topic or payload"
                    .to_owned(),
            ),
        };
        self.reply(&frame);
    }
}
