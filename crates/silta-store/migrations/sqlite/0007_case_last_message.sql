-- silta schema v7 (SQLite): a case remembers when the last message on it was sent, so that it
-- can end when its flows' retention has passed since then (docs/audit.md, "Retention").
-- Existing cases count from their creation. The default lets an older release, which does not
-- know the column, still open cases; the purge counts from the later of the two times.
ALTER TABLE cases ADD COLUMN last_message_at INTEGER NOT NULL DEFAULT 0;
UPDATE cases SET last_message_at = created_at;
