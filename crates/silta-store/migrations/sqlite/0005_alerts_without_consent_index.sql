-- silta schema v5 (SQLite): no index of alerts by consent.
-- Every new alert inserted into this index at a random place (its consent's), which cost the
-- group commit one more 4 KiB page of WAL per alert. Its one reader, the purge of undelivered
-- messages when a consent is withdrawn, reads the pending-alerts index instead: it holds just
-- the undelivered alerts, which subscribers keep short.
DROP INDEX alerts_by_consent;
