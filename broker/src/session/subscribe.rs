//! A session's subscriptions: subscribe (with a replay when `since` is given), unsubscribe,
//! and the re-check that ends exactly the subscriptions a refresh or an admin change no
//! longer allows (PROTOCOL.md sections 3 and 5).

use std::time::Duration;

use scopecast_protocol::{
    ErrorFrame, Pattern, Reason, Replay, RequestId, ServerFrame, Since, Subscribed, Unsubscribed,
};

use super::outbox::{Kind, Queued};
use super::transport::{self, Socket};
use super::{Session, Step, error_frame};
use crate::access::{Action, Denied};
use crate::log::{Encodings, HistoryQuery};

/// Events a replay reads per page.
const REPLAY_PAGE: usize = 512;

/// The longest a resume waits for this node's fan-out to reach its `seq` (below the 5 s
/// shutdown grace: the session does nothing else meanwhile).
const MAX_RESUME_WAIT: Duration = Duration::from_secs(2);

impl<S: Socket> Session<S> {
    fn subscribed(&self, id: RequestId, topic: Pattern, head_seq: u64, replay: Option<Replay>) {
        self.reply(&ServerFrame::Subscribed(Subscribed {
            id,
            topic,
            head_seq,
            replay,
            log_epoch: Some(self.broker.log.epoch().to_owned()),
        }));
    }

    pub(super) async fn subscribe(
        &mut self,
        id: RequestId,
        pattern: Pattern,
        since: Option<Since>,
    ) -> Step {
        let metrics = self.broker.metrics.clone();
        if !self.admit(&id, &pattern) {
            return Step::Continue;
        }
        if self.subs.contains_key(&pattern) {
            // Idempotent: the subscription already runs; nothing is replayed again.
            metrics.subscribe_results.with_label_values(&["ok"]).inc();
            self.subscribed(id, pattern, self.broker.fanout.head_seq(), None);
            return Step::Continue;
        }
        if self.subs.len() >= self.broker.config.limits.max_subscriptions {
            metrics
                .subscribe_results
                .with_label_values(&["limit"])
                .inc();
            let msg = format!(
                "this connection already holds {} subscriptions",
                self.subs.len()
            );
            self.reply(&error_frame(Some(id), Reason::TooManySubscriptions, msg));
            return Step::Continue;
        }
        // Where the replay starts: after `seq` N, or from the first event at or after a time.
        let after = match since {
            None => None,
            Some(Since::Seq(n)) => Some(n),
            Some(Since::Time(t)) => match self.broker.log.seq_at(t).await {
                Ok(first) => Some(first.saturating_sub(1)),
                Err(e) => {
                    self.reply(&error_frame(
                        Some(id),
                        Reason::LogUnavailable,
                        format!("cannot read the event log: {e}"),
                    ));
                    return Step::Continue;
                }
            },
        };
        let mut bounds = match after {
            Some(_) => Some(self.broker.log.fresh_bounds().await),
            None => None,
        };
        // A resume point this node's fan-out has not reached yet (the event was stored
        // through another node a moment ago): wait for it, or the live events up to it would
        // come again after an empty replay. A point past the log's end is not waited for.
        if let (Some(after), Some(b)) = (after, bounds) {
            let reach = after.min(b.last);
            if self.broker.fanout.head_seq() < reach {
                // The session reads and writes nothing meanwhile: the wait is short (under
                // the shutdown grace), and a fan-out further behind is a node that is not
                // ready anyway.
                let broker = self.broker.clone();
                let wait = Duration::from_millis(broker.config.cluster.max_fanout_lag_ms)
                    .min(MAX_RESUME_WAIT);
                if !fanout_reaches(&broker.fanout, reach, wait).await {
                    let msg = format!(
                        "this node's fan-out has not reached seq {reach} yet; subscribe again \
                         (or through another node)"
                    );
                    self.reply(&error_frame(Some(id), Reason::LogUnavailable, msg));
                    return Step::Continue;
                }
                // Things may have changed while it waited: the grant, and what is retained.
                if !self.admit(&id, &pattern) {
                    return Step::Continue;
                }
                bounds = Some(self.broker.log.fresh_bounds().await);
            }
        }
        let first = bounds.map_or(0, |b| b.first);
        let replay = after.map(|after| Replay {
            from_seq: after.saturating_add(1).max(first),
            truncated: after.saturating_add(1) < first,
        });
        if replay.is_some() {
            // Live events wait until the replayed ones are queued.
            self.handle.hold();
        }
        let handle = self.handle.clone();
        let topic = pattern.clone();
        let id_for_gap = id.clone();
        let log_epoch = Some(self.broker.log.epoch().to_owned());
        let head = self
            .broker
            .fanout
            .subscribe(&pattern, &self.deliver, move |head_seq| {
                let _ = handle.reply(&ServerFrame::Subscribed(Subscribed {
                    id,
                    topic,
                    head_seq,
                    replay,
                    log_epoch,
                }));
            });
        // Asked for events already gone: say so before the replay (PROTOCOL.md "gap").
        if let Some(r) = replay
            && r.truncated
            && let Some(after) = after
        {
            let _ = self
                .handle
                .reply(&ServerFrame::Gap(scopecast_protocol::Gap {
                    id: Some(id_for_gap),
                    from_seq: after + 1,
                    to_seq: r.from_seq - 1,
                }));
        }
        // This subscription delivers every matching event after `after` (replayed) or after
        // `head` (live only): later replays on this connection skip those.
        let start = after.map_or(head, |a| a.min(head));
        self.subs.insert(pattern.clone(), start);
        // The audit's coverage starts where the replay really starts (after a truncation,
        // the first retained event).
        let covered_from = replay.map_or(start, |r| r.from_seq.saturating_sub(1).min(head));
        self.audit_grant(&pattern, covered_from, replay.is_some());
        self.handle.subscriptions.lock().push(pattern.clone());
        metrics.subscriptions.inc();
        metrics.subscribe_results.with_label_values(&["ok"]).inc();
        let mut step = match after {
            Some(after) => self.replay(&pattern, after, head).await,
            None => Step::Continue,
        };
        if after.is_some()
            && matches!(step, Step::Continue)
            && self.handle.outbox.queued_bytes() > 0
        {
            // Send the replay before the held live events join the queue.
            step = self.write().await;
        }
        if after.is_some() && matches!(step, Step::Continue) && !self.handle.outbox.is_closed() {
            // Every replayed event is written: the record covers what the connection writes.
            self.audit_replay_done(&pattern);
        }
        self.handle.release();
        step
    }

    /// The access check of a subscribe: true when `principal` may subscribe to `pattern` now;
    /// otherwise the session has answered (`insufficient_scope` naming the scope, or the close
    /// of an inactive client ID).
    fn admit(&mut self, id: &RequestId, pattern: &Pattern) -> bool {
        match self
            .broker
            .access
            .check(&self.principal, Action::Subscribe(pattern))
        {
            Ok(()) => true,
            Err(Denied::Inactive) => {
                self.broker
                    .access
                    .refused_subscribe(&self.principal, &Denied::Inactive);
                self.inactive();
                false
            }
            Err(Denied::Scope {
                required_scope,
                whose,
            }) => {
                self.broker.access.refused_subscribe(
                    &self.principal,
                    &Denied::Scope {
                        required_scope: required_scope.clone(),
                        whose,
                    },
                );
                self.broker
                    .metrics
                    .subscribe_results
                    .with_label_values(&["forbidden"])
                    .inc();
                let mut e = ErrorFrame::new(
                    Some(id.clone()),
                    Reason::InsufficientScope,
                    format!(
                        "client {} may not subscribe to {pattern}: {} does not include {required_scope}",
                        self.principal.client_id,
                        whose.words()
                    ),
                );
                e.required_scope = Some(required_scope);
                self.reply(&ServerFrame::Error(e));
                false
            }
        }
    }

    /// Queues the stored events of `pattern` with `after < seq <= head`, writing as it goes so
    /// a long replay never overflows the queue. An event already delivered on this connection
    /// (through another subscription that was live when it was published) is skipped.
    async fn replay(&mut self, pattern: &Pattern, after: u64, head: u64) -> Step {
        let half_queue = self.broker.config.limits.outbound_queue_bytes / 2;
        let mut q = HistoryQuery {
            pattern: pattern.clone(),
            after,
            upto: head,
            limit: REPLAY_PAGE,
            max_bytes: half_queue.max(1),
            max_scan: usize::MAX,
        };
        loop {
            let subs = &self.subs;
            let page = self
                .broker
                .history
                .page(&q, |e| {
                    !subs
                        .iter()
                        .any(|(p, start)| p != pattern && *start < e.seq && p.matches(&e.topic))
                })
                .await;
            let page = match page {
                Ok(p) => p,
                Err(e) => {
                    let mut err = ErrorFrame::new(
                        None,
                        Reason::LogUnavailable,
                        format!("replay of {pattern} stopped: {e}"),
                    );
                    err.topic = Some(pattern.clone());
                    self.reply(&ServerFrame::Error(err));
                    self.audit_replay_failed(pattern, head);
                    return Step::Continue;
                }
            };
            for e in &page.events {
                // A replay is one session's: nothing to share the encoding with.
                let text = transport::event_text(e, &Encodings::default());
                // Write out before this event could overflow the queue: a replay never makes a
                // reader that keeps up a slow consumer.
                if self.handle.outbox.queued_bytes() + text.len() > half_queue
                    && let Step::Stop = self.write().await
                {
                    return Step::Stop;
                }
                if self
                    .handle
                    .outbox
                    .push(Queued {
                        text,
                        kind: Kind::Replayed,
                        seq: e.seq,
                    })
                    .is_err()
                {
                    return Step::Continue;
                }
            }
            if self.handle.outbox.queued_bytes() > half_queue
                && let Step::Stop = self.write().await
            {
                return Step::Stop;
            }
            if page.done || page.scanned_to <= q.after {
                return Step::Continue;
            }
            q.after = page.scanned_to;
        }
    }

    pub(super) fn unsubscribe(&mut self, id: RequestId, pattern: &Pattern) {
        if self.subs.remove(pattern).is_none() {
            let msg = format!("this connection holds no subscription to {pattern}");
            return self.reply(&error_frame(Some(id), Reason::SubscriptionNotFound, msg));
        }
        self.broker.fanout.unsubscribe(pattern, &self.deliver);
        self.handle.subscriptions.lock().retain(|p| p != pattern);
        self.broker.metrics.subscriptions.dec();
        self.audit_end(pattern, "unsubscribed");
        self.reply(&ServerFrame::Unsubscribed(Unsubscribed { id }));
    }

    /// Ends exactly the subscriptions the token's scope and the application's grant no
    /// longer allow, each with `scope_revoked`; closes with 4003 if the client is inactive.
    pub(super) fn recheck(&mut self) {
        if !self.broker.access.active(&self.principal) {
            return self.inactive();
        }
        let lost: Vec<Pattern> = self
            .subs
            .keys()
            .filter(|p| {
                self.broker
                    .access
                    .check(&self.principal, Action::Subscribe(p))
                    .is_err()
            })
            .cloned()
            .collect();
        for p in lost {
            self.subs.remove(&p);
            self.handle.subscriptions.lock().retain(|x| *x != p);
            self.broker.fanout.unsubscribe(&p, &self.deliver);
            self.broker.metrics.subscriptions.dec();
            self.audit_end(&p, "revoked");
            let mut e = ErrorFrame::new(
                None,
                Reason::ScopeRevoked,
                format!("the subscription to {p} ended: subscribe:{p} is no longer granted"),
            );
            e.required_scope = Some(format!("subscribe:{p}"));
            e.topic = Some(p);
            self.reply(&ServerFrame::Error(e));
        }
    }
}

/// Whether this node's fan-out has reached `seq`, waiting for it at most `wait`
/// (`cluster.max_fanout_lag_ms`: a node further behind is not ready anyway, see `/readyz`).
async fn fanout_reaches(fanout: &crate::fanout::Fanout, seq: u64, wait: Duration) -> bool {
    if fanout.head_seq() >= seq {
        return true;
    }
    let deadline = tokio::time::Instant::now() + wait;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
        if fanout.head_seq() >= seq {
            return true;
        }
    }
    false
}
