//! [`History`]: the one reader of stored events by pattern, page by page, used by a
//! subscription's replay (`since`) and by `GET /v1/events` alike.

use std::sync::Arc;

use scopecast_protocol::Pattern;

use super::{EventLog, LogError, StoredEvent};

/// Events read from the log per round.
const READ_PAGE: usize = 512;

/// What to read.
#[derive(Debug, Clone)]
pub struct HistoryQuery {
    /// Events whose topic this pattern matches.
    pub pattern: Pattern,
    /// Events with `seq` greater than this.
    pub after: u64,
    /// ...and at most this one (the head when the read began: a replay stops where its live
    /// events start).
    pub upto: u64,
    /// At most this many events in a page.
    pub limit: usize,
    /// A page stops before the event that would take its payload bytes (topic and id
    /// included) past this; at least one event always fits.
    pub max_bytes: usize,
    /// At most this many events scanned for a page (a rare pattern over a long log continues
    /// with the next page instead of scanning everything at once).
    pub max_scan: usize,
}

/// One page of history.
#[derive(Debug, Clone, Default)]
pub struct HistoryPage {
    /// The matching events, in `seq` order.
    pub events: Vec<Arc<StoredEvent>>,
    /// Every event up to this `seq` was scanned: the next page starts after it.
    pub scanned_to: u64,
    /// True when the page reached `upto` (nothing more to read below it).
    pub done: bool,
}

/// Reads pages of stored events by pattern. Cheap to clone.
#[derive(Clone)]
pub struct History {
    log: Arc<dyn EventLog>,
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("History").finish_non_exhaustive()
    }
}

impl History {
    /// A reader of `log`.
    pub fn new(log: Arc<dyn EventLog>) -> History {
        History { log }
    }

    /// The next page of `q`: matching events that `keep` accepts (a replay skips those the
    /// connection already has through another subscription).
    ///
    /// # Errors
    /// [`LogError`] when the log cannot be read.
    pub async fn page(
        &self,
        q: &HistoryQuery,
        keep: impl Fn(&StoredEvent) -> bool,
    ) -> Result<HistoryPage, LogError> {
        let mut cursor = q.after;
        let mut scanned = 0usize;
        let mut bytes = 0usize;
        let mut out: Vec<Arc<StoredEvent>> = Vec::new();
        'scan: while cursor < q.upto && out.len() < q.limit && scanned < q.max_scan {
            let page = self.log.read_from(cursor + 1, READ_PAGE).await?;
            if page.is_empty() {
                // Nothing retained after the cursor: everything up to `upto` is gone.
                cursor = q.upto;
                break;
            }
            for e in page {
                if e.seq > q.upto {
                    cursor = q.upto;
                    break 'scan;
                }
                let wanted = q.pattern.matches(&e.topic) && keep(&e);
                if wanted {
                    let size =
                        e.data.get().len() + e.topic.as_str().len() + e.event_id.as_str().len();
                    if !out.is_empty() && bytes + size > q.max_bytes {
                        break 'scan;
                    }
                    bytes += size;
                }
                cursor = e.seq;
                scanned += 1;
                if wanted {
                    out.push(e);
                    if out.len() == q.limit {
                        break 'scan;
                    }
                }
                if scanned >= q.max_scan {
                    break 'scan;
                }
            }
        }
        Ok(HistoryPage {
            events: out,
            scanned_to: cursor,
            done: cursor >= q.upto,
        })
    }
}
