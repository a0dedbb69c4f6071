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

-- Consents stored before statistics began, counted as if they had been from the start:
-- recorded in the month they were created, and then either ended early (withdrawn or
-- superseded before their validity ran out, in the month that happened) or expiring in the
-- month their validity ends. Helsinki months; SQLite has no time zones, so summer time is
-- taken as April to October (the days around the switches may fall a month off).
INSERT INTO stat_cells (month, measure, flow_id, landlord_org, recipient_org, category, n)
SELECT strftime('%Y-%m', at / 1000 +
           CASE WHEN CAST(strftime('%m', at / 1000, 'unixepoch') AS INTEGER) BETWEEN 4 AND 10
                THEN 10800 ELSE 7200 END, 'unixepoch') AS month,
       measure, '', '', recipient_org, '', COUNT(*)
FROM (
    SELECT recipient_org, 'consents_recorded' AS measure, created_at AS at FROM consents
    UNION ALL
    SELECT recipient_org,
           CASE WHEN state <> 'active' AND changed_at < valid_until
                THEN 'consents_ended_early' ELSE 'consents_expiring' END,
           CASE WHEN state <> 'active' AND changed_at < valid_until
                THEN changed_at ELSE valid_until END
    FROM consents
)
GROUP BY 1, measure, recipient_org;
