//! `scopecast audit access ...` and `scopecast audit verify`: the access audit (SECURITY.md
//! "Access audit") through the admin API.

use clap::Subcommand;
use scopecast_protocol::audit::{AccessList, AccessRecord, VerifyReport};

use super::{Admin, AdminAuth, Target, print, table};

/// `scopecast audit ...`.
#[derive(Subcommand)]
pub(crate) enum AuditCommand {
    /// Who received what: subscription lifetimes, refusals and webhook attempts, e.g.
    /// `audit access --seq 123456` (which applications received event 123456) or
    /// `audit access --client-id C --from 2026-12-03T00:00:00Z --to 2026-12-04T00:00:00Z`.
    Access {
        /// Only this client ID.
        #[arg(long)]
        client_id: Option<String>,
        /// Only records of events on this topic.
        #[arg(long)]
        topic: Option<String>,
        /// Only records of this event: who received it.
        #[arg(long)]
        seq: Option<u64>,
        /// Only records covering time at or after this (RFC 3339).
        #[arg(long)]
        from: Option<String>,
        /// Only records that began at or before this (RFC 3339).
        #[arg(long)]
        to: Option<String>,
        /// Only `subscription`, `refusal` or `webhook_attempt` records.
        #[arg(long)]
        kind: Option<String>,
        /// At most this many records.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// `table` (default), `ndjson` (one record per line), or `fhir` (a Bundle of FHIR R4B
        /// AuditEvents); `--json` prints the API's JSON.
        #[arg(long, default_value = "table")]
        format: String,
    },
    /// Check every hash chain of the access audit against its signed checkpoints; exits 1
    /// when one fails.
    Verify,
}

fn encode(v: &str) -> String {
    percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Runs an `audit` subcommand.
pub(crate) async fn run(target: Target, auth: AdminAuth, cmd: AuditCommand) -> anyhow::Result<()> {
    let admin = Admin::new(&target, &auth)?;
    match cmd {
        AuditCommand::Access {
            client_id,
            topic,
            seq,
            from,
            to,
            kind,
            limit,
            format,
        } => {
            if !matches!(format.as_str(), "table" | "ndjson" | "fhir") {
                anyhow::bail!("--format must be table, ndjson or fhir");
            }
            let mut q = vec![format!("limit={limit}")];
            for (name, v) in [
                ("client_id", client_id),
                ("topic", topic),
                ("from", from),
                ("to", to),
                ("kind", kind),
            ] {
                if let Some(v) = v {
                    q.push(format!("{name}={}", encode(&v)));
                }
            }
            if let Some(s) = seq {
                q.push(format!("seq={s}"));
            }
            if format != "table" {
                q.push(format!("format={format}"));
                let resp = admin
                    .send(
                        reqwest::Method::GET,
                        &format!("/audit/access?{}", q.join("&")),
                        None,
                    )
                    .await?;
                let text = resp.text().await?;
                outln!("{}", text.trim_end());
                return Ok(());
            }
            let v = admin
                .call(
                    reqwest::Method::GET,
                    &format!("/audit/access?{}", q.join("&")),
                    None,
                )
                .await?;
            print(auth.json, &v, |v: &AccessList| {
                let mut t = table(&["kind", "client", "what", "when", "seq", "count", "end"]);
                for r in &v.records {
                    t.add_row(row(r));
                }
                outln!("{t}");
                if v.truncated {
                    outln!("(more records matched: narrow the query or raise --limit)");
                }
            })
        }
        AuditCommand::Verify => {
            let v = admin
                .call(reqwest::Method::GET, "/audit/verify", None)
                .await?;
            let report: VerifyReport = serde_json::from_value(v.clone())?;
            print(auth.json, &v, |r: &VerifyReport| {
                for c in &r.chains {
                    outln!(
                        "chain {}: {} rows ({}..{}), {} signed checkpoints, {} rows since the newest: {}",
                        c.chain,
                        c.rows,
                        c.first.map_or("-".into(), |f| f.to_string()),
                        c.last.map_or("-".into(), |l| l.to_string()),
                        c.checkpoints,
                        c.unsigned_tail,
                        if c.problems.is_empty() {
                            "ok"
                        } else {
                            "FAILED"
                        }
                    );
                    for p in &c.problems {
                        outln!("  {p}");
                    }
                }
                outln!(
                    "{}",
                    if r.ok {
                        "access audit verified"
                    } else {
                        "access audit FAILED verification"
                    }
                );
            })?;
            if !report.ok {
                anyhow::bail!("the access audit failed verification");
            }
            Ok(())
        }
    }
}

fn row(r: &AccessRecord) -> Vec<String> {
    match r {
        AccessRecord::Subscription(s) => vec![
            "subscription".into(),
            s.client_id.clone(),
            format!("{} (session {}, {})", s.pattern, s.session, s.source),
            s.granted_at.to_string(),
            match (s.first_seq, s.last_seq) {
                (Some(f), Some(l)) => format!("{f}..{l}"),
                _ => "-".into(),
            },
            s.count.to_string(),
            s.end_reason.clone().unwrap_or_else(|| "live".into()),
        ],
        AccessRecord::Refusal(f) => vec![
            "refusal".into(),
            f.client_id.clone(),
            match &f.missing_scope {
                Some(m) => format!("{} (missing {m})", f.reason),
                None => f.reason.clone(),
            },
            f.minute.to_string(),
            "-".into(),
            f.count.to_string(),
            String::new(),
        ],
        AccessRecord::WebhookAttempt(w) => vec![
            "webhook".into(),
            w.client_id.clone(),
            format!("{} {} attempt {}", w.endpoint_id, w.topic, w.attempt),
            w.at.to_string(),
            w.seq.to_string(),
            "1".into(),
            format!(
                "{}{}",
                w.outcome,
                w.status.map(|s| format!(" ({s})")).unwrap_or_default()
            ),
        ],
    }
}
