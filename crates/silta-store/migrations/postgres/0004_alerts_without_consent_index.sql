-- silta schema v4 (PostgreSQL): no index of alerts by consent.
-- Every new alert inserted into this index at a random place (its consent's): one more page
-- dirtied, and written to the WAL in full after each checkpoint, per alert. Its one reader,
-- the purge of undelivered messages when a consent is withdrawn, reads the pending-alerts
-- index instead: it holds just the undelivered alerts, which subscribers keep short.
DROP INDEX alerts_by_consent;
