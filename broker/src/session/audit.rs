//! A session's part of the access audit (SECURITY.md "Access audit"): one record per
//! subscription lifetime, sent at subscribe, at each checkpoint (`audit.checkpoint_ms`, when
//! its count moved), at unsubscribe, at a revocation and at the session's end. Nothing is done
//! per delivered event: a record's numbers are the session's own counters (events written to
//! the socket, the last `seq` written) taken at those moments.

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
    /// The count in its last record (a checkpoint is written only when it moved).
    recorded_count: u64,
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

/// Keeps the first `seq`s of [`first_candidates`] once their frames were written.
pub(super) fn set_firsts(audits: &mut HashMap<Pattern, SubAudit>, firsts: Vec<(Pattern, u64)>) {
    for (p, seq) in firsts {
        if let Some(a) = audits.get_mut(&p) {
            a.first_seq.get_or_insert(seq);
        }
    }
}

impl<S: Socket> Session<S> {
    /// Starts the record of a subscription to `pattern` granted now, delivering every matching
    /// event after `start` (and sends it).
    pub(super) fn audit_grant(&mut self, pattern: &Pattern, start: u64) {
        if !self.broker.access.audit().enabled() {
            return;
        }
        let a = SubAudit {
            id: crate::audit::record_id("sub_"),
            granted_at: Timestamp::now(),
            from_seq: start.saturating_add(1),
            delivered_at_grant: self.handle.delivered.load(Ordering::Relaxed),
            first_seq: None,
            recorded_count: 0,
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

    /// Ends every record: the session ends (`why`).
    pub(super) fn audit_end_all(&mut self, why: &str) {
        let patterns: Vec<Pattern> = self.audits.keys().cloned().collect();
        for p in patterns {
            self.audit_end(&p, why);
        }
    }

    /// A checkpoint: a new snapshot of each record whose count moved since its last one.
    pub(super) fn audit_checkpoint(&mut self) {
        let delivered = self.handle.delivered.load(Ordering::Relaxed);
        let mut records = Vec::new();
        for (p, a) in &self.audits {
            let count = delivered - a.delivered_at_grant;
            if count != a.recorded_count {
                records.push((p.clone(), self.audit_record(p, a, None), count));
            }
        }
        for (p, record, count) in records {
            self.broker.access.audit().subscription(record);
            if let Some(a) = self.audits.get_mut(&p) {
                a.recorded_count = count;
            }
        }
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
        let written = count > 0 && self.written_last >= a.from_seq;
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
            first_seq: if written { a.first_seq } else { None },
            last_seq: written.then_some(self.written_last),
            count,
            checkpoint_at: now,
            ended_at: ended.map(|_| now),
            end_reason: ended.map(str::to_owned),
        }
    }
}
