-- silta schema v4 (PostgreSQL): no index of alerts by consent.
-- Every new alert went into that index at a random place (its consent's): one more page
-- dirtied, and written to the WAL in full after each checkpoint, per alert. Its one reader,
-- the purge of undelivered messages when a consent is withdrawn, reads the index of pending
-- alerts instead, which now carries the consent id. Both statements lock the alerts table for
-- as long as the partial index of undelivered alerts takes to build: a short pause for writes.
-- Nodes of the previous version keep working on this schema (no query of theirs names either
-- index).
DROP INDEX alerts_by_consent;
DROP INDEX alerts_pending;
CREATE INDEX alerts_pending ON alerts (recipient_org, seq, consent_id) WHERE acked_at IS NULL;
