-- FHIR Subscriptions (issue 18, FHIR.md): R4B topic-based Subscriptions (Subscriptions
-- Backport IG STU 1.1), owned by the client ID that created them (gone with it).
--
-- `resource`: the Subscription as the client sent it (JSON text; its `id`, `status` and
-- `error` are the server's, written over it when it is read). `status`: `requested`,
-- `active`, `error` or `off`, with `error` (a sentence). `epoch`/`start_seq`: the event log
-- and the last `seq` before the Subscription began: its event number n is the n-th event after
-- `start_seq` that matches its topic and filters. `count`/`count_seq`: a checkpoint, `count`
-- matching events with `seq <= count_seq` (written by every node computing the same numbers;
-- only ever moves forward). `version` counts writes from 1 (compare-and-set updates).
CREATE TABLE fhir_subscriptions (
    id          TEXT PRIMARY KEY,
    client_id   TEXT NOT NULL REFERENCES clients (client_id) ON DELETE CASCADE,
    resource    TEXT NOT NULL,
    status      TEXT NOT NULL,
    error       TEXT,
    epoch       TEXT NOT NULL,
    start_seq   BIGINT NOT NULL,
    count       BIGINT NOT NULL,
    count_seq   BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    version     BIGINT NOT NULL
);
CREATE INDEX fhir_subscriptions_client ON fhir_subscriptions (client_id);

-- A rest-hook Subscription is delivered by the webhook engine: its endpoint names it here
-- (the engine then sends notification Bundles instead of event bodies).
ALTER TABLE webhook_endpoints ADD COLUMN fhir_subscription_id TEXT;
