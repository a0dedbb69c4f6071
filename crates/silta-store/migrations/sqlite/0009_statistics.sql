-- silta schema v9 (SQLite): programme statistics.

-- Monthly counters (silta_core::stats): a Helsinki month, what is counted, the flow, the two
-- organisations and a category chosen by silta (a bucket, an outcome, a reason code). No
-- pseudonym, no case reference, no time finer than a month. Updated in the transaction of the
-- event counted; never purged: the figures outlive the records they count.
CREATE TABLE stat_cells (
    month         TEXT NOT NULL,
    measure       TEXT NOT NULL,
    flow_id       TEXT NOT NULL,
    landlord_org  TEXT NOT NULL,
    recipient_org TEXT NOT NULL,
    category      TEXT NOT NULL,
    n             INTEGER NOT NULL,
    PRIMARY KEY (month, measure, flow_id, landlord_org, recipient_org, category)
) STRICT, WITHOUT ROWID;

-- The organisation a message came from (the landlord of an alert, the social-services
-- organisation of a support notice), so an acknowledgement counts under both organisations.
-- Empty for messages stored by earlier versions.
ALTER TABLE alerts ADD COLUMN sender_org TEXT NOT NULL DEFAULT '';

-- When the case's first support notice was sent (unix ms), so the time from the first alert to
-- the first notice is counted once per case.
ALTER TABLE cases ADD COLUMN first_notice_at INTEGER;
