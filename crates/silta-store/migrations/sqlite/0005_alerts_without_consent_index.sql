-- silta schema v5 (SQLite): no index of alerts by consent.
-- Every new alert went into that index at a random place (its consent's), which cost the group
-- commit one more 4 KiB page of WAL per alert. Its one reader, the purge of undelivered
-- messages when a consent is withdrawn, reads the index of pending alerts instead, which now
-- carries the consent id: the purge reads only that index (the undelivered alerts), never the
-- table. Its entries are still appended at the end of each recipient's range.
DROP INDEX alerts_by_consent;
DROP INDEX alerts_pending;
CREATE INDEX alerts_pending ON alerts (recipient_org, seq, consent_id) WHERE acked_at IS NULL;
