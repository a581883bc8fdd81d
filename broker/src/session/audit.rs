//! A session's part of the access audit (SECURITY.md "Access audit"): one record per
//! subscription lifetime, sent at subscribe, when its first event is written, at checkpoints
//! (at the first heartbeat after
//! `audit.checkpoint_ms`, when its count moved), at unsubscribe, at a revocation and at the
//! session's end. On a connection with one subscription nothing is done per delivered event: a
//! record's numbers are the session's own counters (events written to the socket, the last
//! `seq` written) taken at those moments. Once a connection holds two subscriptions at once,
//! those counters mix them: from then on each write also counts, per subscription, the events
//! written whose topic its pattern matches (at or after its `from_seq`), read from the frames
//! the write took ([`tally`]).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;

use scopecast_protocol::audit::SubscriptionRecord;
use scopecast_protocol::{Pattern, Timestamp};

use super::Session;
use super::outbox::Queued;
use super::transport::Socket;

/// What the session keeps of one live subscription for its record.
#[derive(Debug, Clone)]
pub(crate) struct SubAudit {
    id: String,
    granted_at: Timestamp,
    /// Every matching event from this `seq` on is delivered while it lives.
    from_seq: u64,
    /// The session's `delivered` counter at the grant.
    delivered_at_grant: u64,
    /// The first event `seq` written at or after `from_seq`.
    first_seq: Option<u64>,
    /// Its own count, once the connection has held two subscriptions at once.
    own: Option<OwnCount>,
    /// The count in its last record (a checkpoint is written only when it moved).
    recorded_count: u64,
    /// When its last record was sent.
    recorded_at: tokio::time::Instant,
    /// True while its replay runs: it has received the replayed events up to `replayed_to`
    /// only (the connection's other subscriptions may have written further).
    replaying: bool,
    /// The last replayed `seq` written.
    replayed_to: u64,
}

impl SubAudit {
    /// Its count: its own, or the connection's since the grant (`delivered`: the
    /// connection's count now).
    fn count(&self, delivered: u64) -> u64 {
        self.own
            .map_or(delivered - self.delivered_at_grant, |o| o.count)
    }
}

/// What a subscription counted itself: events written whose topic its pattern matches, at or
/// after its `from_seq`; the first and last of their `seq`s.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct OwnCount {
    count: u64,
    first: Option<u64>,
    last: u64,
}

/// The topic of an event frame this broker encoded (`{"type":"event","seq":N,"topic":"..."`),
/// read where the encoder put it.
fn frame_topic(text: &str) -> Option<&str> {
    const KEY: &str = ",\"topic\":\"";
    let at = text.find(KEY)? + KEY.len();
    let rest = &text[at..];
    rest.find('"').map(|end| &rest[..end])
}

/// For each subscription that counts itself, what `frames` (about to be written) add to it.
pub(super) fn tally(
    audits: &HashMap<Pattern, SubAudit>,
    frames: &VecDeque<Queued>,
) -> Vec<(Pattern, OwnCount)> {
    let mut out: Vec<(Pattern, u64, OwnCount)> = audits
        .iter()
        .filter(|(_, a)| a.own.is_some())
        .map(|(p, a)| (p.clone(), a.from_seq, OwnCount::default()))
        .collect();
    if out.is_empty() {
        return Vec::new();
    }
    for q in frames.iter().filter(|q| q.is_event()) {
        let Some(topic) = frame_topic(q.text.as_str()) else {
            continue;
        };
        for (p, from_seq, c) in &mut out {
            if q.seq >= *from_seq && p.matches_str(topic) {
                c.count += 1;
                c.first.get_or_insert(q.seq);
                c.last = c.last.max(q.seq);
            }
        }
    }
    out.into_iter()
        .filter(|(_, _, c)| c.count > 0)
        .map(|(p, _, c)| (p, c))
        .collect()
}

/// Adds what [`tally`] counted, once the frames were written; the subscriptions that got
/// their first `seq` now.
pub(super) fn add_tally(
    audits: &mut HashMap<Pattern, SubAudit>,
    tally: Vec<(Pattern, OwnCount)>,
) -> Vec<Pattern> {
    let mut firsts_now = Vec::new();
    for (p, c) in tally {
        if let Some(own) = audits.get_mut(&p).and_then(|a| a.own.as_mut()) {
            own.count += c.count;
            if own.first.is_none() {
                own.first = c.first;
                firsts_now.push(p);
            }
            own.last = own.last.max(c.last);
        }
    }
    firsts_now
}

/// Each subscription still without a first `seq`, and the first event `seq` of `frames` at or
/// after its `from_seq`.
pub(super) fn first_candidates(
    audits: &HashMap<Pattern, SubAudit>,
    frames: &VecDeque<Queued>,
) -> Vec<(Pattern, u64)> {
    audits
        .iter()
        .filter(|(_, a)| a.first_seq.is_none())
        .filter_map(|(p, a)| {
            frames
                .iter()
                .find(|q| q.is_event() && q.seq >= a.from_seq)
                .map(|q| (p.clone(), q.seq))
        })
        .collect()
}

/// Keeps the first `seq`s of [`first_candidates`] once their frames were written, and moves
/// the replaying subscription (one at a time) to `replayed`, the newest replayed `seq` written.
///
/// Returns the subscriptions that got their first `seq` now.
pub(super) fn set_firsts(
    audits: &mut HashMap<Pattern, SubAudit>,
    firsts: Vec<(Pattern, u64)>,
    replayed: u64,
) -> Vec<Pattern> {
    let mut firsts_now = Vec::new();
    for (p, seq) in firsts {
        if let Some(a) = audits.get_mut(&p)
            && a.first_seq.is_none()
        {
            a.first_seq = Some(seq);
            firsts_now.push(p);
        }
    }
    if replayed > 0 {
        for a in audits.values_mut().filter(|a| a.replaying) {
            a.replayed_to = a.replayed_to.max(replayed);
        }
    }
    firsts_now
}

impl<S: Socket> Session<S> {
    /// Starts the record of a subscription to `pattern` granted now, delivering every matching
    /// event after `start` (and sends it); `replaying` while a replay runs for it first.
    pub(super) fn audit_grant(&mut self, pattern: &Pattern, start: u64, replaying: bool) {
        if !self.broker.access.audit().enabled() {
            return;
        }
        // A second subscription at once: the connection's counters would mix them, so every
        // subscription counts itself from now on (the ones before carry what they had).
        let counts_itself = !self.audits.is_empty();
        if counts_itself {
            let delivered = self.handle.delivered.load(Ordering::Relaxed);
            let written_last = self.handle.written_last.load(Ordering::Relaxed);
            let mut switched = Vec::new();
            for (p, a) in self.audits.iter_mut().filter(|(_, a)| a.own.is_none()) {
                switched.push(p.clone());
                let count = delivered - a.delivered_at_grant;
                let upto = if a.replaying {
                    a.replayed_to
                } else {
                    written_last
                };
                a.own = Some(OwnCount {
                    count,
                    first: a.first_seq,
                    last: if count > 0 { upto } else { 0 },
                });
            }
            // A snapshot of each as it switches: the stored one says it counts itself from now
            // on, so a query never brings it up to date from the connection's counters again.
            for p in switched {
                if let Some(a) = self.audits.get(&p) {
                    let record = self.audit_record(&p, a, None);
                    self.broker.access.audit().subscription(record);
                }
            }
        }
        let a = SubAudit {
            id: crate::audit::record_id("sub_"),
            granted_at: Timestamp::now(),
            from_seq: start.saturating_add(1),
            delivered_at_grant: self.handle.delivered.load(Ordering::Relaxed),
            first_seq: None,
            own: counts_itself.then(OwnCount::default),
            recorded_count: 0,
            recorded_at: tokio::time::Instant::now(),
            replaying,
            replayed_to: 0,
        };
        let record = self.audit_record(pattern, &a, None);
        self.broker.access.audit().subscription(record);
        self.audits.insert(pattern.clone(), a);
    }

    /// Ends the record of `pattern`'s subscription (`why`: `unsubscribed`, `revoked`...).
    pub(super) fn audit_end(&mut self, pattern: &Pattern, why: &str) {
        if let Some(a) = self.audits.remove(pattern) {
            let record = self.audit_record(pattern, &a, Some(why));
            self.broker.access.audit().subscription(record);
        }
    }

    /// The replay of `pattern` is over: from now on its record covers what the connection
    /// writes.
    pub(super) fn audit_replay_done(&mut self, pattern: &Pattern) {
        if let Some(a) = self.audits.get_mut(pattern) {
            a.replaying = false;
        }
    }

    /// The replay of `pattern` stopped short (the log failed): its record ends with what was
    /// replayed, and a new one covers the live events after `head`.
    pub(super) fn audit_replay_failed(&mut self, pattern: &Pattern, head: u64) {
        if self.audits.contains_key(pattern) {
            self.audit_end(pattern, "replay_failed");
            self.audit_grant(pattern, head, false);
        }
    }

    /// Ends every record and starts a new one for each live subscription (`why`: a refresh
    /// brought another token; each record names the token its events went out under).
    pub(super) fn audit_restart_all(&mut self, why: &str) {
        let live: Vec<(Pattern, bool)> = self
            .audits
            .iter()
            .map(|(p, a)| (p.clone(), a.replaying))
            .collect();
        for (p, replaying) in live {
            if replaying {
                // Mid-replay (not reachable: a refresh waits for the subscribe), keep it.
                continue;
            }
            self.audit_end(&p, why);
            let written = self.handle.written_last.load(Ordering::Relaxed);
            self.audit_grant(&p, written, false);
        }
    }

    /// Ends every record: the session ends (`why`).
    pub(super) fn audit_end_all(&mut self, why: &str) {
        let patterns: Vec<Pattern> = self.audits.keys().cloned().collect();
        for p in patterns {
            self.audit_end(&p, why);
        }
    }

    /// A snapshot of each of `patterns`' records (their first event was just written: a live
    /// record answers with its first `seq` from then on, not only after a checkpoint).
    pub(super) fn audit_snapshot(&mut self, patterns: &[Pattern]) {
        let delivered = self.handle.delivered.load(Ordering::Relaxed);
        for p in patterns {
            let Some(a) = self.audits.get(p) else {
                continue;
            };
            let count = a.count(delivered);
            let record = self.audit_record(p, a, None);
            self.broker.access.audit().subscription(record);
            if let Some(a) = self.audits.get_mut(p) {
                a.recorded_count = count;
                a.recorded_at = tokio::time::Instant::now();
            }
        }
    }

    /// A checkpoint (at a heartbeat): a new snapshot of each record whose count moved and
    /// whose last one is at least `audit.checkpoint_ms` old.
    pub(super) fn audit_checkpoint(&mut self) {
        let delivered = self.handle.delivered.load(Ordering::Relaxed);
        let every = std::time::Duration::from_millis(self.broker.config.audit.checkpoint_ms);
        let moved: Vec<Pattern> = self
            .audits
            .iter()
            .filter(|(_, a)| {
                a.count(delivered) != a.recorded_count && a.recorded_at.elapsed() >= every
            })
            .map(|(p, _)| p.clone())
            .collect();
        self.audit_snapshot(&moved);
    }

    fn audit_record(
        &self,
        pattern: &Pattern,
        a: &SubAudit,
        ended: Option<&str>,
    ) -> SubscriptionRecord {
        let audit = self.broker.access.audit();
        let now = Timestamp::now();
        let count = self.handle.delivered.load(Ordering::Relaxed) - a.delivered_at_grant;
        // How far it is covered: while replaying, the replayed events written; after, every
        // matching event up to the connection's last write (the fan-out offers in `seq` order,
        // and the queue is written in order).
        let upto = if a.replaying {
            a.replayed_to
        } else {
            self.handle.written_last.load(Ordering::Relaxed)
        };
        let written = count > 0 && upto >= a.from_seq;
        let (count, first_seq, last_seq, at_grant) = match a.own {
            // Counted by itself: a query cannot bring it up to date from the connection's
            // counters (`u64::MAX` says so).
            Some(o) => (o.count, o.first, (o.count > 0).then_some(o.last), u64::MAX),
            None => (
                count,
                if written { a.first_seq } else { None },
                written.then_some(upto),
                a.delivered_at_grant,
            ),
        };
        SubscriptionRecord {
            id: a.id.clone(),
            client_id: self.principal.client_id.clone(),
            application_id: self.principal.application_id.clone(),
            environment: audit.environment().to_owned(),
            node: audit.node().to_owned(),
            session: format!("{:x}", self.handle.id),
            source: self.handle.peer.to_string(),
            token_jti: self.principal.token_id.clone(),
            token_iat: self.principal.issued_at,
            pattern: pattern.to_string(),
            granted_at: a.granted_at,
            from_seq: a.from_seq,
            first_seq,
            last_seq,
            connection_delivered_at_grant: at_grant,
            count,
            checkpoint_at: now,
            ended_at: ended.map(|_| now),
            end_reason: ended.map(str::to_owned),
        }
    }
}
