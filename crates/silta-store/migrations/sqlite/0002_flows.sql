-- silta schema v2 (SQLite): declared flows in both directions.

-- Whether the client agreed that the landlord may be told the outcome (support notices).
ALTER TABLE consents ADD COLUMN covers_landlord INTEGER NOT NULL DEFAULT 0;
-- The flows the consent opens (JSON array of flow ids), as its signed receipt lists them. A flow
-- declared later needs a new consent. Consents from v1 were given for rent arrears only.
ALTER TABLE consents ADD COLUMN flows TEXT NOT NULL DEFAULT '["rent-arrears"]';

-- The outbox now carries every flow, to social services (alerts) and back to landlords
-- (support notices), with the purpose and legal basis it crossed on. For a notice,
-- subject_pseudonym is empty (the landlord never learns it) and case_ref holds the landlord's
-- own tenancy reference.
ALTER TABLE alerts ADD COLUMN purpose TEXT NOT NULL DEFAULT '';
ALTER TABLE alerts ADD COLUMN legal_basis TEXT NOT NULL DEFAULT '';
CREATE INDEX alerts_by_flow ON alerts (flow_id, created_at);
-- v1 alerts were all rent arrears, their payload the bare fields with serde's band names.
UPDATE alerts
SET purpose = 'eviction-prevention',
    legal_basis = 'gdpr-6-1-a-consent',
    payload = json_object(
        'message', 'rent-arrears',
        'fields', json_set(json(payload), '$.arrears_band',
            CASE json_extract(payload, '$.arrears_band')
                WHEN 'under500' THEN 'under_500'
                WHEN 'from500_to1500' THEN 'from_500_to_1500'
                WHEN 'from1500_to5000' THEN 'from_1500_to_5000'
                ELSE 'from_5000'
            END))
WHERE purpose = '' AND flow_id = 'rent-arrears';

-- A case is one tenancy, one resident and one recipient, so that a support notice on it is
-- decided against that resident's consent. Cases from v1 have no subject and cannot be
-- answered (the decision sees no consent).
CREATE TABLE cases_v2 (
    case_ref      TEXT PRIMARY KEY,
    landlord_org  TEXT NOT NULL,
    tenancy_ref   TEXT NOT NULL,
    recipient_org TEXT NOT NULL,
    subject_key   TEXT NOT NULL,              -- the resident in the lookup domain
    audit_subject TEXT NOT NULL,              -- the resident in the audit domain
    created_at    INTEGER NOT NULL,
    UNIQUE (landlord_org, tenancy_ref, recipient_org, subject_key)
) STRICT;
INSERT INTO cases_v2
    SELECT case_ref, landlord_org, tenancy_ref, recipient_org, '', '', created_at FROM cases;
DROP TABLE cases;
ALTER TABLE cases_v2 RENAME TO cases;
