//! `scopecast app webhook ...`: webhook endpoints over the admin API (WEBHOOKS.md).

use anyhow::Context;
use clap::Subcommand;
use scopecast_protocol::admin::{
    NewWebhook, Reason, WebhookAttemptList, WebhookList, WebhookPatch, WebhookReplay, WebhookView,
};

use super::{Admin, body, print, table};

/// `scopecast app webhook`.
#[derive(Debug, Subcommand)]
pub(crate) enum WebhookCommand {
    /// Register an endpoint for a client ID; prints its signing secret (shown once).
    /// Deliveries start with the events stored from now on.
    Add {
        /// Client ID.
        client_id: String,
        /// Where events are POSTed (https). (`--url` is the broker's address.)
        #[arg(long, value_name = "URL")]
        endpoint_url: String,
        /// Topic patterns, space-separated (each inside the client's scope), e.g.
        /// 'fhir.encounter.> lab.result'.
        #[arg(long)]
        topics: String,
        /// An extra header sent with every delivery, `Name: value` (repeatable); stored
        /// sealed, never shown again.
        #[arg(long = "header", value_name = "NAME: VALUE")]
        headers: Vec<String>,
        /// Requests in flight at once (1: in seq order).
        #[arg(long)]
        max_in_flight: Option<u32>,
        /// Events per request (above 1: a JSON array).
        #[arg(long)]
        max_batch: Option<u32>,
        /// Sign with `v1a` (ed25519) too; prints the public key receivers verify with.
        #[arg(long)]
        v1a: bool,
    },
    /// List endpoints (of one client ID, or all).
    List {
        /// Client ID.
        client_id: Option<String>,
    },
    /// Show an endpoint.
    Show {
        /// Endpoint id (`ep_...`).
        endpoint: String,
    },
    /// Change an endpoint's URL, topics, headers (all replaced) or limits.
    Update {
        /// Endpoint id.
        endpoint: String,
        /// A new endpoint URL.
        #[arg(long, value_name = "URL")]
        endpoint_url: Option<String>,
        /// New topic patterns, space-separated.
        #[arg(long)]
        topics: Option<String>,
        /// The extra headers (replace all of them; repeatable).
        #[arg(long = "header", value_name = "NAME: VALUE")]
        headers: Vec<String>,
        /// Remove every extra header.
        #[arg(long, conflicts_with = "headers")]
        no_headers: bool,
        /// New `max_in_flight`.
        #[arg(long)]
        max_in_flight: Option<u32>,
        /// New `max_batch`.
        #[arg(long)]
        max_batch: Option<u32>,
        /// `v1a` (ed25519) signatures on or off (`--v1a true|false`).
        #[arg(long, value_name = "BOOL")]
        v1a: Option<bool>,
    },
    /// Pause deliveries (the cursor stays; `resume` goes on from it).
    Pause {
        /// Endpoint id.
        endpoint: String,
        /// Why (recorded in the audit trail).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Resume a paused or disabled endpoint from its cursor.
    Resume {
        /// Endpoint id.
        endpoint: String,
        /// Why (recorded in the audit trail).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Delete an endpoint and its delivery log.
    Delete {
        /// Endpoint id.
        endpoint: String,
    },
    /// A new signing secret (printed once); the old one keeps signing for
    /// `webhooks.rotation_overlap_s`.
    RotateSecret {
        /// Endpoint id.
        endpoint: String,
    },
    /// Deliver again from a seq on (events a disabled endpoint missed, or ones skipped while
    /// the client ID was inactive).
    Replay {
        /// Endpoint id.
        endpoint: String,
        /// The first seq to deliver again.
        #[arg(long)]
        since: u64,
    },
    /// The delivery log: attempts and skips, newest first.
    Deliveries {
        /// Endpoint id.
        endpoint: String,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Older than this record id (paging).
        #[arg(long)]
        before: Option<i64>,
    },
}

fn headers(list: &[String]) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    list.iter()
        .map(|h| {
            let (name, value) = h
                .split_once(':')
                .context("--header: write it as `Name: value` (the value is not shown here)")?;
            Ok((name.trim().to_owned(), value.trim().to_owned()))
        })
        .collect()
}

fn topics(text: &str) -> Vec<String> {
    text.split_whitespace().map(str::to_owned).collect()
}

fn print_webhook(w: &WebhookView) {
    let mut t = table(&["field", "value"]);
    let mut row = |f: &str, v: String| {
        t.add_row(vec![f.to_owned(), v]);
    };
    row("id", w.id.clone());
    row("client_id", w.client_id.clone());
    row("url", w.url.clone());
    row("topics", w.topics.join(" "));
    row("headers", w.header_names.join(", "));
    row("state", w.state.clone());
    if let Some(r) = &w.state_reason {
        row("state_reason", r.clone());
    }
    row("cursor", w.cursor.to_string());
    row("max_in_flight", w.max_in_flight.to_string());
    row("max_batch", w.max_batch.to_string());
    if let Some(n) = &w.delivering_node {
        row("delivering_node", n.clone());
    }
    if let Some(u) = &w.previous_secret_until {
        row("previous_secret_until", u.clone());
    }
    if let Some(k) = &w.public_key {
        row("public_key (v1a)", k.clone());
    }
    row("updated_at", w.updated_at.clone());
    if let Some(s) = &w.secret {
        row("secret", s.clone());
    }
    outln!("{t}");
    if w.secret.is_some() {
        outln!("Store the signing secret now: it is not shown again.");
    }
}

/// Runs `scopecast app webhook ...`.
pub(crate) async fn run(admin: &Admin, json: bool, cmd: WebhookCommand) -> anyhow::Result<()> {
    use reqwest::Method as M;
    match cmd {
        WebhookCommand::Add {
            client_id,
            endpoint_url: url,
            topics: t,
            headers: h,
            max_in_flight,
            max_batch,
            v1a,
        } => {
            let new = NewWebhook {
                url,
                topics: topics(&t),
                headers: headers(&h)?,
                max_in_flight,
                max_batch,
                v1a,
            };
            let v = admin
                .call(
                    M::POST,
                    &format!("/clients/{client_id}/webhooks"),
                    body(&new)?,
                )
                .await?;
            print(json, &v, print_webhook)
        }
        WebhookCommand::List { client_id } => {
            let path = match client_id {
                Some(c) => format!("/clients/{c}/webhooks"),
                None => "/webhooks".to_owned(),
            };
            let v = admin.call(M::GET, &path, None).await?;
            print(json, &v, |v: &WebhookList| {
                let mut t = table(&["id", "client_id", "url", "topics", "state", "cursor"]);
                for w in &v.webhooks {
                    t.add_row(vec![
                        w.id.clone(),
                        w.client_id.clone(),
                        w.url.clone(),
                        w.topics.join(" "),
                        w.state.clone(),
                        w.cursor.to_string(),
                    ]);
                }
                outln!("{t}");
            })
        }
        WebhookCommand::Show { endpoint } => {
            let v = admin
                .call(M::GET, &format!("/webhooks/{endpoint}"), None)
                .await?;
            print(json, &v, print_webhook)
        }
        WebhookCommand::Update {
            endpoint,
            endpoint_url: url,
            topics: t,
            headers: h,
            no_headers,
            max_in_flight,
            max_batch,
            v1a,
        } => {
            let patch = WebhookPatch {
                url,
                topics: t.as_deref().map(topics),
                headers: if no_headers {
                    Some(Default::default())
                } else if h.is_empty() {
                    None
                } else {
                    Some(headers(&h)?)
                },
                max_in_flight,
                max_batch,
                v1a,
            };
            let v = admin
                .call(M::PATCH, &format!("/webhooks/{endpoint}"), body(&patch)?)
                .await?;
            print(json, &v, print_webhook)
        }
        WebhookCommand::Pause { endpoint, reason } => {
            let v = admin
                .call(
                    M::POST,
                    &format!("/webhooks/{endpoint}/pause"),
                    body(&Reason { reason })?,
                )
                .await?;
            print(json, &v, print_webhook)
        }
        WebhookCommand::Resume { endpoint, reason } => {
            let v = admin
                .call(
                    M::POST,
                    &format!("/webhooks/{endpoint}/resume"),
                    body(&Reason { reason })?,
                )
                .await?;
            print(json, &v, print_webhook)
        }
        WebhookCommand::Delete { endpoint } => {
            admin
                .send(M::DELETE, &format!("/webhooks/{endpoint}"), None)
                .await?;
            outln!("deleted webhook endpoint {endpoint}");
            Ok(())
        }
        WebhookCommand::RotateSecret { endpoint } => {
            let v = admin
                .call(
                    M::POST,
                    &format!("/webhooks/{endpoint}/rotate-secret"),
                    None,
                )
                .await?;
            print(json, &v, print_webhook)
        }
        WebhookCommand::Replay { endpoint, since } => {
            let v = admin
                .call(
                    M::POST,
                    &format!("/webhooks/{endpoint}/replay"),
                    body(&WebhookReplay { since_seq: since })?,
                )
                .await?;
            print(json, &v, print_webhook)
        }
        WebhookCommand::Deliveries {
            endpoint,
            limit,
            before,
        } => {
            let mut path = format!("/webhooks/{endpoint}/deliveries?limit={limit}");
            if let Some(b) = before {
                path.push_str(&format!("&before={b}"));
            }
            let v = admin.call(M::GET, &path, None).await?;
            print(json, &v, |v: &WebhookAttemptList| {
                let mut t = table(&[
                    "id",
                    "at",
                    "seq",
                    "attempt",
                    "status",
                    "latency_ms",
                    "outcome",
                    "error",
                ]);
                for a in &v.attempts {
                    t.add_row(vec![
                        a.id.to_string(),
                        a.at.clone(),
                        a.seq.to_string(),
                        a.attempt.to_string(),
                        a.status.map(|s| s.to_string()).unwrap_or_default(),
                        a.latency_ms.map(|l| l.to_string()).unwrap_or_default(),
                        a.outcome.clone(),
                        a.error.clone().unwrap_or_default(),
                    ]);
                }
                outln!("{t}");
            })
        }
    }
}
