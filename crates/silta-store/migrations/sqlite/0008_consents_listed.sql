-- silta schema v8 (SQLite): consents a social worker can list, read and renew.

-- The subject's pseudonym in the recipient's own domain (the one its receipt and alerts carry),
-- so the recipient can find its consents by the pseudonym it knows, never by identity code.
-- Consents from earlier versions take it from an alert delivered under them where one is left;
-- the others keep it empty (they are listed, not found by pseudonym, and are renewed by
-- enrolling again).
ALTER TABLE consents ADD COLUMN subject_pseudonym TEXT NOT NULL DEFAULT '';
-- The consent this one renewed (RenewConsent), empty for an enrolment: the ledger's record of
-- the renewal names the subject, this column the two consents.
ALTER TABLE consents ADD COLUMN renews_consent_id TEXT NOT NULL DEFAULT '';
UPDATE consents
SET subject_pseudonym = COALESCE(
    (SELECT a.subject_pseudonym FROM alerts a
     WHERE a.consent_id = consents.consent_id AND a.subject_pseudonym <> '' LIMIT 1), '');
-- ListConsents reads one organisation's consents in id order (ids are UUIDv7: creation order).
CREATE INDEX consents_by_recipient ON consents (recipient_org, consent_id);
