-- The one credential store (SECURITY.md, "Credentials"): named, revocable bearer credentials
-- with a role, for the admin API, the console, the developer API and Prometheus. Only the
-- SHA-256 of each token is stored (tokens are 256 random bits, so a slow hash adds nothing).
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
-- A name belongs to one valid credential at a time; a revoked one frees it.
CREATE UNIQUE INDEX credentials_valid_name ON credentials (name) WHERE revoked_at IS NULL;
