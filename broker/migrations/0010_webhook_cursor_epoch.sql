-- Outgoing delivery (issue 17): an endpoint's cursor names the event log it counts in
-- (`EventLog::epoch`, e.g. `jetstream:<stream>:<created>`): a `seq` of another log (a new
-- stream, a restored backup of another deployment) means nothing, and the worker starts that
-- log from its first retained event instead of skipping it. Empty: not delivered yet.
ALTER TABLE webhook_endpoints ADD COLUMN cursor_epoch TEXT NOT NULL DEFAULT '';
-- `replay_through`: events up to this `seq` go out although they were accepted while the client
-- ID was inactive (an admin replayed them).
ALTER TABLE webhook_endpoints ADD COLUMN replay_through BIGINT NOT NULL DEFAULT 0;
-- `replayed_at_version`: the endpoint's version a replay made. A worker that started from an
-- older version must not write its cursor (it would undo the replay); other changes (pause,
-- rotation) leave its progress to be saved.
ALTER TABLE webhook_endpoints ADD COLUMN replayed_at_version BIGINT NOT NULL DEFAULT 0;
