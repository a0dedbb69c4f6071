-- silta schema v8 (PostgreSQL): programme statistics.

-- Monthly counters (silta_core::stats): a Helsinki month, what is counted, the flow, the two
-- organisations and a category chosen by silta (a bucket, an outcome, a reason code). No
-- pseudonym, no case reference, no time finer than a month. Updated in the transaction of the
-- event counted, under the write lock, so two nodes count each event once; never purged.
CREATE TABLE stat_cells (
    month         TEXT NOT NULL,
    measure       TEXT NOT NULL,
    flow_id       TEXT NOT NULL,
    landlord_org  TEXT NOT NULL,
    recipient_org TEXT NOT NULL,
    category      TEXT NOT NULL,
    n             BIGINT NOT NULL,
    PRIMARY KEY (month, measure, flow_id, landlord_org, recipient_org, category)
);

-- The organisation a message came from, so an acknowledgement counts under both organisations.
ALTER TABLE alerts ADD COLUMN sender_org TEXT NOT NULL DEFAULT '';

-- When the case's first support notice was sent (unix ms).
ALTER TABLE cases ADD COLUMN first_notice_at BIGINT;

-- Consents stored before statistics began, counted as if they had been from the start:
-- recorded in the month they were created, and then either ended early (withdrawn or
-- superseded before their validity ran out, in the month that happened) or expiring in the
-- month their validity ends, in Helsinki months.
INSERT INTO stat_cells (month, measure, flow_id, landlord_org, recipient_org, category, n)
SELECT to_char(to_timestamp(at / 1000.0) AT TIME ZONE 'Europe/Helsinki', 'YYYY-MM'),
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
) AS events
GROUP BY 1, measure, recipient_org;
