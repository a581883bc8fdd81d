-- Deleting an application (`scopecast app delete`) removes its client IDs, but the history of
-- who activated and deactivated them, when and why, stays, as the audit trail does: the
-- activations' `client_id` becomes the client ID as text instead of a reference to `clients`.
-- Recreating the table is the portable way to drop a foreign key (SQLite cannot alter one);
-- every row is carried over.
CREATE TABLE activations_kept (
    id        TEXT PRIMARY KEY,
    client_id TEXT NOT NULL,
    active    INTEGER NOT NULL CHECK (active IN (0, 1)),
    actor     TEXT NOT NULL,
    reason    TEXT NOT NULL,
    at        BIGINT NOT NULL
);
INSERT INTO activations_kept (id, client_id, active, actor, reason, at)
    SELECT id, client_id, active, actor, reason, at FROM activations;
DROP TABLE activations;
ALTER TABLE activations_kept RENAME TO activations;
CREATE INDEX activations_client ON activations (client_id, at);
