-- silta schema v6 (SQLite): reports kept in the order of their idempotency key.
-- A report is only ever looked up by (landlord, idempotency key), so that key is the table's
-- own: one B-tree per report instead of three (the rowid table, the index of report ids and
-- the unique index of keys), and the row is written to the one page the key's random place
-- dirties already. Report ids stay unique by construction (UUIDv7, minted by the gateway).
CREATE TABLE reports_v2 (
    landlord_org    TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    report_id       TEXT NOT NULL,
    fingerprint     BLOB NOT NULL,
    received_at     INTEGER NOT NULL,
    PRIMARY KEY (landlord_org, idempotency_key)
) STRICT, WITHOUT ROWID;

INSERT INTO reports_v2 (landlord_org, idempotency_key, report_id, fingerprint, received_at)
    SELECT landlord_org, idempotency_key, report_id, fingerprint, received_at FROM reports
    ORDER BY landlord_org, idempotency_key; -- in key order (the old unique index): appends
DROP TABLE reports;
ALTER TABLE reports_v2 RENAME TO reports;
