-- Operator console sessions (issue 19, SECURITY.md "Operator console"): one row per signed-in
-- browser, shared by the nodes of a cluster. `id_hash`: SHA-256 (hex) of the session cookie's
-- random value (the cookie itself is never stored). `credential_id`: the credential signed in
-- with (its name and role are read from the credential store at every request, so a revoked
-- credential's sessions end at once). `csrf`: the token every form of this session carries.
-- Times are Unix ms; a session ends at `created_at` plus the absolute lifetime, after the idle
-- time without a request, or when it signs out (the row is deleted).
CREATE TABLE console_sessions (
    id_hash       TEXT PRIMARY KEY,
    credential_id TEXT NOT NULL,
    csrf          TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    last_seen     BIGINT NOT NULL
);
