-- The access audit (issue 19, SECURITY.md "Access audit"): who received which events under
-- which token, who was refused, every webhook attempt. Append-only: a subscription's record is
-- written again (same `record_id`) at its checkpoints and at its end; queries read the newest.
--
-- Each writing node appends to its own hash chain (`chain`: `local`, or the node's name):
-- `hash` = SHA-256 of (`prev_hash`, `chain`, `chain_seq`, `body`), hex; `prev_hash` of row 1
-- is 64 zeros. `body` is the record's JSON text (protocol::audit::AccessRecord), the bytes
-- the hash covers; the other columns repeat parts of it for queries (the verifier checks they
-- agree). `live`: 1 while a subscription's record has not ended. `written_ms`: when the writer
-- chained it (not covered by the hash: the verifier uses it only to tell a writer that is still
-- signing from one that stopped).
CREATE TABLE access_audit (
    chain       TEXT NOT NULL,
    chain_seq   BIGINT NOT NULL,
    kind        TEXT NOT NULL,
    record_id   TEXT NOT NULL,
    client_id   TEXT NOT NULL,
    from_ms     BIGINT NOT NULL,
    to_ms       BIGINT NOT NULL,
    first_seq   BIGINT,
    last_seq    BIGINT,
    live        INTEGER NOT NULL,
    written_ms  BIGINT NOT NULL,
    body        TEXT NOT NULL,
    prev_hash   TEXT NOT NULL,
    hash        TEXT NOT NULL,
    PRIMARY KEY (chain, chain_seq),
    CHECK (chain_seq > 0)
);
CREATE INDEX access_audit_record ON access_audit (chain, record_id, chain_seq);
CREATE INDEX access_audit_client ON access_audit (client_id, to_ms);
CREATE INDEX access_audit_seq ON access_audit (last_seq);

-- Signed checkpoints: the chain's row `chain_seq` has `hash`, signed (Ed25519, hex) by the
-- audit key `key_id` at `at_ms`. Retention prunes rows only up to a kept checkpoint, which
-- anchors the first row left.
CREATE TABLE access_audit_checkpoints (
    chain       TEXT NOT NULL,
    chain_seq   BIGINT NOT NULL,
    hash        TEXT NOT NULL,
    at_ms       BIGINT NOT NULL,
    key_id      TEXT NOT NULL,
    signature   TEXT NOT NULL,
    PRIMARY KEY (chain, chain_seq)
);
