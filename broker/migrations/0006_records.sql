-- Application records across environments (README "Environments and the catalog"):
-- each application record has a version (every change makes the next one; a version once
-- exported or imported is never edited), may come from a catalog as a signed record, may be
-- retired; each client ID carries this environment's grant, and the audit names the
-- environment it was written in.
--
-- `version`: the record's version, from 1. `origin`: NULL for a record registered here;
-- for an imported one, the key id (`kid`) of the catalog key that signed it. `record_jws`:
-- the signed record as imported (exported again unchanged). `retired_at`: when it was
-- retired (Unix ms); a retired application's client IDs cannot be activated.
ALTER TABLE applications ADD COLUMN version BIGINT NOT NULL DEFAULT 1;
ALTER TABLE applications ADD COLUMN origin TEXT;
ALTER TABLE applications ADD COLUMN record_jws TEXT;
ALTER TABLE applications ADD COLUMN retired_at BIGINT;
-- This environment's grant for the client ID: the scope its admin approved (set when the
-- client ID is first activated, to the record's scope then). NULL: not yet activated here,
-- and the record's scope applies as it is. The effective scope is the grant intersected
-- with the record's current scope.
ALTER TABLE clients ADD COLUMN granted_scope TEXT;
ALTER TABLE audit_log ADD COLUMN environment TEXT;
