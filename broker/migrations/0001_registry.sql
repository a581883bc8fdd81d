-- Application registry (DESIGN section 2). Portable SQL: runs on SQLite and PostgreSQL.
-- Times are Unix milliseconds; booleans are 0/1 integers; ids are UUID text.

CREATE TABLE applications (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    vendor      TEXT NOT NULL,
    description TEXT NOT NULL,
    scope       TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE clients (
    client_id      TEXT PRIMARY KEY,
    application_id TEXT NOT NULL REFERENCES applications (id),
    kind           TEXT NOT NULL CHECK (kind IN ('production', 'non-production')),
    active         INTEGER NOT NULL DEFAULT 0 CHECK (active IN (0, 1)),
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL,
    UNIQUE (application_id, kind)
);

-- Credentials per client ID: an argon2id PHC hash of the client secret, and/or public keys
-- for private_key_jwt (an inline JWK Set or a JWK Set URL). Never a secret in clear.
CREATE TABLE client_credentials (
    client_id   TEXT PRIMARY KEY REFERENCES clients (client_id),
    secret_hash TEXT,
    jwks        TEXT,
    jwks_uri    TEXT,
    updated_at  BIGINT NOT NULL
);

-- Every activation and deactivation: who, when, why. The current state is clients.active.
CREATE TABLE activations (
    id        TEXT PRIMARY KEY,
    client_id TEXT NOT NULL REFERENCES clients (client_id),
    active    INTEGER NOT NULL CHECK (active IN (0, 1)),
    actor     TEXT NOT NULL,
    reason    TEXT NOT NULL,
    at        BIGINT NOT NULL
);
CREATE INDEX activations_client ON activations (client_id, at);

-- Audit trail of every change. ids are UUID v7, so they sort by time.
CREATE TABLE audit_log (
    id             TEXT PRIMARY KEY,
    at             BIGINT NOT NULL,
    actor          TEXT NOT NULL,
    action         TEXT NOT NULL,
    application_id TEXT,
    client_id      TEXT,
    detail         TEXT NOT NULL
);
CREATE INDEX audit_log_at ON audit_log (at);
