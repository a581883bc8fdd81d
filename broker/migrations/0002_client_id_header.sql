-- Per client ID: may the HTTP publish and history APIs identify it by the Scopecast-Client-Id
-- header instead of a token (DESIGN section 6)? Off unless an admin turns it on, and only
-- effective when the broker's `http.client_id_header` setting is on too.
ALTER TABLE clients ADD COLUMN client_id_header INTEGER NOT NULL DEFAULT 0 CHECK (client_id_header IN (0, 1));
