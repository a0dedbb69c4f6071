-- silta schema v7 (PostgreSQL): consents a social worker can list, read and renew.

-- The subject's pseudonym in the recipient's own domain (the one its receipt and alerts carry),
-- so the recipient can find its consents by the pseudonym it knows, never by identity code.
-- Consents from earlier versions take it from an alert delivered under them where one is left;
-- the others keep it empty (they are listed, not found by pseudonym, and are renewed by
-- enrolling again).
ALTER TABLE consents ADD COLUMN subject_pseudonym TEXT NOT NULL DEFAULT '';
-- The consent this one renewed (RenewConsent), empty for an enrolment.
ALTER TABLE consents ADD COLUMN renews_consent_id TEXT NOT NULL DEFAULT '';
UPDATE consents c
SET subject_pseudonym = a.subject_pseudonym
FROM (SELECT DISTINCT ON (consent_id) consent_id, subject_pseudonym FROM alerts
      WHERE consent_id <> '' AND subject_pseudonym <> '') a
WHERE a.consent_id = c.consent_id;
-- ListConsents reads one organisation's consents in id order (ids are UUIDv7: creation order).
CREATE INDEX consents_by_recipient ON consents (recipient_org, consent_id);
