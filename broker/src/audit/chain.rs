//! The access audit's tamper evidence: each node's rows form a hash chain, and the chain's
//! newest row is signed (Ed25519) every `audit.sign_ms`. [`verify`] walks every chain.
//!
//! - Row hash: SHA-256 over `prev_hash` (hex), `\n`, the chain, `\n`, the row number, `\n`,
//!   and the record's JSON text; hex. Row 1's `prev_hash` is 64 zeros.
//! - Checkpoint signature: Ed25519 over `scopecast-audit-checkpoint-v1\n<chain>\n<seq>\n
//!   <hash>\n<at_ms>`. The key is derived from the key-encryption key (`webhooks.kek` on one
//!   node, `cluster.key_encryption_key_file` in a cluster), so every node of a cluster signs
//!   and verifies with the same key.
//!
//! What it shows: a changed, inserted or deleted row breaks the chain at that row; rows pruned
//! by retention leave the first row kept anchored by a signed checkpoint. Cut from the end:
//! rows after the newest checkpoint (at most `audit.sign_ms` of rows: the report says how many
//! are not signed yet), and rows together with the checkpoints that signed them, leave a
//! shorter chain that is whole. The node answering a verification compares its own chain with
//! the head its writer knows it wrote (`written`), which finds either cut in that chain while
//! the node runs; another node's chain cut so is found when that node writes its next row
//! (numbered after the rows that are gone: a hole) or is asked itself.

use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use scopecast_protocol::audit::{AccessRecord, ChainReport, VerifyReport};
use sha2::{Digest, Sha256};

use crate::registry::{AuditCheckpoint, AuditRow, Registry, RegistryError};

/// `prev_hash` of a chain's first row.
pub(crate) const ZERO_HASH: &str =
    "0000000000000000000000000000000000000000000000000000000000000000";

/// Rows the verifier reads per page.
const PAGE: usize = 2_000;

/// The hash of a row with these parts (hex).
pub(crate) fn row_hash(prev_hash: &str, chain: &str, chain_seq: u64, body: &str) -> String {
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(b"\n");
    h.update(chain.as_bytes());
    h.update(b"\n");
    h.update(chain_seq.to_string().as_bytes());
    h.update(b"\n");
    h.update(body.as_bytes());
    hex::encode(h.finalize())
}

fn checkpoint_message(chain: &str, chain_seq: u64, hash: &str, at_ms: i64) -> Vec<u8> {
    format!("scopecast-audit-checkpoint-v1\n{chain}\n{chain_seq}\n{hash}\n{at_ms}").into_bytes()
}

/// The columns a record's row repeats for queries: kind, from/to (Unix ms), first/last
/// `seq`, live.
pub(crate) fn columns(
    r: &AccessRecord,
) -> (&'static str, i64, i64, Option<u64>, Option<u64>, bool) {
    match r {
        AccessRecord::Subscription(s) => (
            "subscription",
            s.granted_at.unix_ms(),
            s.ended_at.unwrap_or(s.checkpoint_at).unix_ms(),
            Some(s.from_seq),
            s.last_seq,
            s.ended_at.is_none(),
        ),
        AccessRecord::Refusal(f) => (
            "refusal",
            f.minute.unix_ms(),
            f.minute.unix_ms() + 59_999,
            None,
            None,
            false,
        ),
        AccessRecord::WebhookAttempt(w) => (
            "webhook_attempt",
            w.at.unix_ms(),
            w.at.unix_ms(),
            Some(w.seq),
            Some(w.seq),
            false,
        ),
    }
}

/// The key that signs checkpoints.
pub(crate) struct AuditKey {
    pair: Ed25519KeyPair,
    id: String,
}

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditKey").field("id", &self.id).finish()
    }
}

impl AuditKey {
    /// The key of this seed (from [`crate::cluster::Kek::audit_seed`]).
    ///
    /// # Errors
    /// Never for a 32-byte seed; a sentence otherwise.
    pub(crate) fn from_seed(seed: &[u8; 32]) -> Result<AuditKey, String> {
        let pair = Ed25519KeyPair::from_seed_unchecked(seed)
            .map_err(|_| "unusable audit key seed".to_owned())?;
        let id = hex::encode(&Sha256::digest(pair.public_key().as_ref())[..8]);
        Ok(AuditKey { pair, id })
    }

    /// Its id: the first 8 bytes of SHA-256 of the public key, hex.
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// A signed checkpoint of row `chain_seq` of `chain`, which has `hash`.
    pub(crate) fn sign(
        &self,
        chain: &str,
        chain_seq: u64,
        hash: &str,
        at_ms: i64,
    ) -> AuditCheckpoint {
        let sig = self
            .pair
            .sign(&checkpoint_message(chain, chain_seq, hash, at_ms));
        AuditCheckpoint {
            chain: chain.to_owned(),
            chain_seq,
            hash: hash.to_owned(),
            at_ms,
            key_id: self.id.clone(),
            signature: hex::encode(sig.as_ref()),
        }
    }

    /// True when `c`'s signature is this key's over its fields.
    pub(crate) fn verifies(&self, c: &AuditCheckpoint) -> bool {
        let Ok(sig) = hex::decode(&c.signature) else {
            return false;
        };
        UnparsedPublicKey::new(&ED25519, self.pair.public_key().as_ref())
            .verify(
                &checkpoint_message(&c.chain, c.chain_seq, &c.hash, c.at_ms),
                &sig,
            )
            .is_ok()
    }
}

/// What the verifier holds a chain to, besides its hashes and signatures.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy {
    /// Now, Unix ms.
    pub(crate) now_ms: i64,
    /// `audit.sign_ms`: a writer signs its new rows at least this often.
    pub(crate) sign_ms: i64,
    /// `audit.retention_days` in ms: rows younger than this are never pruned.
    pub(crate) retention_ms: i64,
}

impl Policy {
    /// Rows written before this and still after a chain's newest checkpoint were never signed:
    /// their writer stopped (a crash not followed by a restart) or someone else added them.
    fn stale_before(&self) -> i64 {
        self.now_ms - 2 * self.sign_ms - 60_000
    }
}

/// Walks every chain: row numbers consecutive from 1 (or from a kept checkpoint), each hash
/// recomputed, each `prev_hash` the row before's, the columns equal to the record's, every
/// checkpoint signed by `key` and equal to its row, the first row kept anchored (row 1, or a
/// checkpoint of the row before, older than the retention), and rows after the newest
/// checkpoint only while its writer is still signing; and with `written` (this node's chain
/// and the last row its writer stored), that the chain still reaches that row.
///
/// # Errors
/// A storage failure.
pub(crate) async fn verify(
    registry: &Registry,
    key: &AuditKey,
    policy: Policy,
    written: Option<(&str, u64)>,
) -> Result<VerifyReport, RegistryError> {
    let mut chains = Vec::new();
    for chain in registry.access_audit_chains().await? {
        let mut report = verify_chain(registry, key, &chain, policy).await?;
        if let Some((mine, head)) = written
            && mine == chain
            && report.last.is_none_or(|l| l < head)
        {
            report.problems.push(format!(
                "rows {}..{head} that this node wrote are gone (cut from the end of its chain)",
                report.last.map_or(1, |l| l + 1)
            ));
        }
        chains.push(report);
    }
    if let Some((mine, head)) = written
        && !chains.iter().any(|c| c.chain == mine)
    {
        chains.push(ChainReport {
            chain: mine.to_owned(),
            rows: 0,
            first: None,
            last: None,
            checkpoints: 0,
            unsigned_tail: 0,
            problems: vec![format!(
                "rows 1..{head} that this node wrote are gone (the whole chain)"
            )],
        });
    }
    Ok(VerifyReport {
        ok: chains.iter().all(|c| c.problems.is_empty()),
        chains,
    })
}

async fn verify_chain(
    registry: &Registry,
    key: &AuditKey,
    chain: &str,
    policy: Policy,
) -> Result<ChainReport, RegistryError> {
    let mut problems = Vec::new();
    let checkpoints = registry.access_audit_checkpoints(chain).await?;
    let signed_at: std::collections::HashMap<u64, i64> =
        checkpoints.iter().map(|c| (c.chain_seq, c.at_ms)).collect();
    let mut good = std::collections::BTreeMap::new();
    for c in &checkpoints {
        if c.key_id != key.id() {
            problems.push(format!(
                "checkpoint at row {} is signed by key {}, not this deployment's {}",
                c.chain_seq,
                c.key_id,
                key.id()
            ));
        } else if !key.verifies(c) {
            problems.push(format!("checkpoint at row {}: bad signature", c.chain_seq));
        } else {
            good.insert(c.chain_seq, c.hash.clone());
        }
    }
    let mut rows = 0u64;
    let mut first = None;
    let mut last: Option<(u64, String)> = None;
    let mut after = i64::MIN;
    let newest_good = good.keys().next_back().copied().unwrap_or(0);
    // When the oldest row after the newest checkpoint was written.
    let mut first_unsigned_written: Option<i64> = None;
    loop {
        let page = registry.access_audit_rows(chain, after, PAGE).await?;
        let Some(end) = page.last().map(|r| r.chain_seq) else {
            break;
        };
        for r in &page {
            rows += 1;
            if r.chain_seq == 0 {
                problems.push("a row numbered 0 or less: no writer makes one".to_owned());
                continue;
            }
            check_row(r, last.as_ref(), &good, &mut problems);
            if r.chain_seq > newest_good && first_unsigned_written.is_none() {
                first_unsigned_written = Some(r.written_ms);
            }
            if first.is_none() {
                first = Some(r.chain_seq);
            }
            if let Some(h) = good.get(&r.chain_seq)
                && *h != r.hash
            {
                problems.push(format!(
                    "row {}: its hash differs from the signed checkpoint's",
                    r.chain_seq
                ));
            }
            last = Some((r.chain_seq, r.hash.clone()));
        }
        after = i64::try_from(end).unwrap_or(i64::MAX).max(0);
    }
    let last_seq = last.as_ref().map(|(s, _)| *s);
    // Rows before the first kept one went by retention only if the checkpoint anchoring it is
    // older than the retention.
    if let Some(f) = first.filter(|f| *f > 1)
        && let Some(at) = signed_at.get(&(f - 1))
        && *at >= policy.now_ms - policy.retention_ms
    {
        problems.push(format!(
            "rows before {f} were removed although they are within the retention (audit.retention_days)"
        ));
    }
    for (&seq, _) in good.iter() {
        // The anchor (the row before the first kept) was pruned; any other must be there.
        let anchor = first.is_some_and(|f| seq + 1 == f);
        let present = first.is_some_and(|f| seq >= f) && last_seq.is_some_and(|l| seq <= l);
        if !anchor && !present {
            problems.push(format!(
                "the signed checkpoint at row {seq} names a row that is gone"
            ));
        }
    }
    let newest_signed = good.keys().next_back().copied().unwrap_or(0);
    let unsigned = last_seq.map_or(0, |l| l.saturating_sub(newest_signed));
    if let Some(at) = first_unsigned_written
        && at < policy.stale_before()
    {
        problems.push(format!(
            "{unsigned} rows after the newest signed checkpoint, written over {} s ago and never \
             signed (a node that crashed and was not started again, or rows added by someone \
             else)",
            (policy.now_ms - at) / 1000
        ));
    }
    Ok(ChainReport {
        chain: chain.to_owned(),
        rows,
        first,
        last: last_seq,
        checkpoints: good.len() as u64,
        unsigned_tail: unsigned,
        problems,
    })
}

fn check_row(
    r: &AuditRow,
    before: Option<&(u64, String)>,
    good: &std::collections::BTreeMap<u64, String>,
    problems: &mut Vec<String>,
) {
    let n = r.chain_seq;
    match before {
        Some((prev, prev_hash)) => {
            if n != prev + 1 {
                problems.push(format!("rows {} to {} are missing", prev + 1, n - 1));
            } else if r.prev_hash != *prev_hash {
                problems.push(format!("row {n}: it does not follow row {prev}"));
            }
        }
        None if n == 1 => {
            if r.prev_hash != ZERO_HASH {
                problems.push("row 1: it does not start the chain".to_owned());
            }
        }
        None => match good.get(&(n - 1)) {
            Some(h) if *h == r.prev_hash => {}
            Some(_) => problems.push(format!(
                "row {n}: the first row kept does not follow the signed checkpoint before it"
            )),
            None => problems.push(format!(
                "row {n}: the first row kept has no signed checkpoint before it (rows before it were removed)"
            )),
        },
    }
    if row_hash(&r.prev_hash, &r.chain, n, &r.body) != r.hash {
        problems.push(format!("row {n}: its content does not match its hash"));
        return;
    }
    match serde_json::from_str::<AccessRecord>(&r.body) {
        Ok(rec) => {
            let (kind, from, to, first_seq, last_seq, live) = columns(&rec);
            if kind != r.kind
                || from != r.from_ms
                || to != r.to_ms
                || first_seq != r.first_seq
                || last_seq != r.last_seq
                || live != r.live
                || rec.id() != r.record_id
                || rec.client_id() != r.client_id
            {
                problems.push(format!("row {n}: its columns differ from its record"));
            }
        }
        Err(e) => problems.push(format!("row {n}: not a record: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_and_fail_when_changed() {
        let key = AuditKey::from_seed(&[7; 32]).unwrap();
        let c = key.sign("local", 5, &"ab".repeat(32), 1_000);
        assert!(key.verifies(&c));
        let mut bad = c.clone();
        bad.chain_seq = 6;
        assert!(!key.verifies(&bad));
        let other = AuditKey::from_seed(&[8; 32]).unwrap();
        assert_ne!(other.id(), key.id());
        assert!(!other.verifies(&c));
    }

    #[test]
    fn the_hash_covers_every_part() {
        let h = row_hash(ZERO_HASH, "local", 1, "{}");
        assert_ne!(h, row_hash(ZERO_HASH, "local", 2, "{}"));
        assert_ne!(h, row_hash(ZERO_HASH, "node-b", 1, "{}"));
        assert_ne!(h, row_hash(ZERO_HASH, "local", 1, "{ }"));
        assert_eq!(h.len(), 64);
    }
}
