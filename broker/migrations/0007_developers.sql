-- Developers in the catalog (README "Environments and the catalog"): an application may be
-- owned by a developer account (the name of a credential with the `developer` role), and its
-- record moves from drafts to frozen versions.
--
-- `owner`: the developer account that registered it; NULL when an admin did.
-- `frozen`: 1 when the current version is frozen ("ready for production"); a change to a
-- frozen version makes the next version, a draft (0) until the developer marks it ready
-- (an admin's change is frozen at once).
-- `frozen_record`: the claims of the newest frozen version (JSON of an ApplicationRecord
-- without `iss` and `iat`), which the catalog signs when it exports or lists the record;
-- NULL until a version is frozen.
ALTER TABLE applications ADD COLUMN owner TEXT;
ALTER TABLE applications ADD COLUMN frozen INTEGER NOT NULL DEFAULT 1 CHECK (frozen IN (0, 1));
ALTER TABLE applications ADD COLUMN frozen_record TEXT;
CREATE INDEX applications_owner ON applications (owner);
