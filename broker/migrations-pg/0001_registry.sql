-- The registry on PostgreSQL (cluster mode): the schema that SQLite reaches through
-- broker/migrations/0001..0007, in one migration, in the same portable shape: times are Unix
-- milliseconds (BIGINT), booleans are 0/1 BIGINTs, ids are UUID text. Every integer column is
-- BIGINT so that each reads back as the same Rust type on both databases.
--
-- A later change to the registry adds a migration in both folders.

CREATE TABLE applications (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    vendor        TEXT NOT NULL,
    description   TEXT NOT NULL,
    scope         TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    version       BIGINT NOT NULL DEFAULT 1,
    origin        TEXT,
    record_jws    TEXT,
    retired_at    BIGINT,
    owner         TEXT,
    frozen        BIGINT NOT NULL DEFAULT 1 CHECK (frozen IN (0, 1)),
    frozen_record TEXT
);
CREATE INDEX applications_owner ON applications (owner);

CREATE TABLE clients (
    client_id        TEXT PRIMARY KEY,
    application_id   TEXT NOT NULL REFERENCES applications (id),
    kind             TEXT NOT NULL CHECK (kind IN ('production', 'non-production')),
    active           BIGINT NOT NULL DEFAULT 0 CHECK (active IN (0, 1)),
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    client_id_header BIGINT NOT NULL DEFAULT 0 CHECK (client_id_header IN (0, 1)),
    granted_scope    TEXT,
    UNIQUE (application_id, kind)
);

CREATE TABLE client_credentials (
    client_id   TEXT PRIMARY KEY REFERENCES clients (client_id),
    secret_hash TEXT,
    jwks        TEXT,
    jwks_uri    TEXT,
    updated_at  BIGINT NOT NULL
);

-- Activation history; kept when an application is deleted (client_id as text).
CREATE TABLE activations (
    id        TEXT PRIMARY KEY,
    client_id TEXT NOT NULL,
    active    BIGINT NOT NULL CHECK (active IN (0, 1)),
    actor     TEXT NOT NULL,
    reason    TEXT NOT NULL,
    at        BIGINT NOT NULL
);
CREATE INDEX activations_client ON activations (client_id, at);

CREATE TABLE audit_log (
    id             TEXT PRIMARY KEY,
    at             BIGINT NOT NULL,
    actor          TEXT NOT NULL,
    action         TEXT NOT NULL,
    application_id TEXT,
    client_id      TEXT,
    detail         TEXT NOT NULL,
    environment    TEXT
);
CREATE INDEX audit_log_at ON audit_log (at);

CREATE TABLE credentials (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    role        TEXT NOT NULL CHECK (role IN ('admin', 'viewer', 'developer', 'metrics')),
    token_hash  TEXT NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL,
    created_by  TEXT NOT NULL,
    revoked_at  BIGINT,
    revoked_by  TEXT
);
CREATE UNIQUE INDEX credentials_valid_name ON credentials (name) WHERE revoked_at IS NULL;

-- The change feed. No sequence: a writer takes the transaction-level advisory lock of the
-- registry, then inserts MAX(id) + 1, so change writers commit one after the other, in id
-- order, without holes (see RegistryStore in broker/src/registry/store.rs).
CREATE TABLE changes (
    id             BIGINT PRIMARY KEY,
    kind           TEXT NOT NULL,
    application_id TEXT,
    client_id      TEXT,
    credential_id  TEXT,
    at             BIGINT NOT NULL
);
