-- The registry's change feed (ARCHITECTURE.md, "The registry change feed"): every write to
-- applications, clients, their credentials and the credential store adds one row here in the
-- same transaction. A follower (this broker's in-memory view, or another node sharing the
-- database) reads the rows after its cursor in id order and reloads what they name.
-- `id` is the cursor: consecutive from 1, never reused (AUTOINCREMENT keeps the highest id
-- ever given even if rows are pruned; a rolled-back write gives its id back). The PostgreSQL
-- schema spells it `BIGINT PRIMARY KEY` and assigns `MAX(id) + 1` under a transaction-level
-- advisory lock (see `RegistryStore` in broker/src/registry/store.rs).
-- `kind` is e.g. `client.deactivate`; the keys it concerns are set, the others NULL.
CREATE TABLE changes (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    kind           TEXT NOT NULL,
    application_id TEXT,
    client_id      TEXT,
    credential_id  TEXT,
    at             BIGINT NOT NULL
);
