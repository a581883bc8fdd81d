-- Outgoing delivery (issue 17, WEBHOOKS.md): the endpoints events are pushed to, and every
-- attempt made.
--
-- `webhook_endpoints`: one row per endpoint, owned by a client ID (gone with it). `topics`:
-- the patterns it receives, space-separated. `sealed`: its signing secrets and extra headers,
-- sealed with the key-encryption key (AES-256-GCM; a signing secret cannot be stored as a
-- hash). `state`: `active`, `paused` (by an admin) or `disabled` (410, or failing past the
-- retry window), with `state_reason`. `cursor`: the last `seq` delivered or skipped: a restart
-- resumes after it. `version` counts writes from 1 (compare-and-set updates).
-- `lease_holder`/`lease_until` (Unix ms): the node that delivers to it now (cluster mode).
--
-- `webhook_attempts`: one row per attempt or skip, pruned by age.
--
-- `changes.webhook_id`: the endpoint a `webhook.change` row names.
ALTER TABLE changes ADD COLUMN webhook_id TEXT;

CREATE TABLE webhook_endpoints (
    id            TEXT PRIMARY KEY,
    client_id     TEXT NOT NULL REFERENCES clients (client_id) ON DELETE CASCADE,
    url           TEXT NOT NULL,
    topics        TEXT NOT NULL,
    sealed        BLOB NOT NULL,
    state         TEXT NOT NULL,
    state_reason  TEXT,
    cursor        BIGINT NOT NULL,
    max_in_flight INTEGER NOT NULL,
    max_batch     INTEGER NOT NULL,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    version       BIGINT NOT NULL,
    lease_holder  TEXT,
    lease_until   BIGINT
);
CREATE INDEX webhook_endpoints_client ON webhook_endpoints (client_id);

CREATE TABLE webhook_attempts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint_id TEXT NOT NULL,
    seq         BIGINT NOT NULL,
    event_id    TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    at          BIGINT NOT NULL,
    status      INTEGER,
    error       TEXT,
    latency_ms  BIGINT,
    outcome     TEXT NOT NULL
);
CREATE INDEX webhook_attempts_endpoint ON webhook_attempts (endpoint_id, id);
CREATE INDEX webhook_attempts_at ON webhook_attempts (at);
