-- State every node of a deployment shares (cluster mode), and the assertion `jti` cache.
--
-- `shared_state`: named blobs, e.g. `signing_keys` (the token-signing key set, sealed with the
-- key-encryption key from `cluster.key_encryption_key_file`: AES-256-GCM, never plaintext
-- here). `version` counts writes from 1: a writer names the version it read, and a write
-- against another version changes nothing (compare-and-set), so two nodes rotating at once
-- cannot lose a key. Each write adds a `changes` row of kind `state.<name>`, which makes every
-- node reload it.
--
-- `assertion_jtis`: hex SHA-256 of `client_id \0 jti` of client assertions (RFC 7523) seen, with the time
-- (Unix s) until which each is refused; kept across restarts and shared by nodes, so an
-- assertion is accepted once by the whole deployment.
CREATE TABLE shared_state (
    name       TEXT PRIMARY KEY,
    value      BYTEA NOT NULL,
    version    BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE assertion_jtis (
    key   TEXT PRIMARY KEY,
    until BIGINT NOT NULL
);
CREATE INDEX assertion_jtis_until ON assertion_jtis (until);
