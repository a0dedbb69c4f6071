-- silta schema v1 (PostgreSQL): the same tables as SQLite's migrations 0001 and 0002, for
-- several gateway nodes sharing one database. No column ever holds a personal identity code:
-- subjects are keyed pseudonyms, report bodies are compared by keyed fingerprint. Times are
-- Unix milliseconds (BIGINT), as on SQLite.

CREATE TABLE consents (
    consent_id      TEXT PRIMARY KEY,
    subject_key     TEXT NOT NULL,
    audit_subject   TEXT NOT NULL,
    recipient_org   TEXT NOT NULL,
    purpose         TEXT NOT NULL,
    valid_from      BIGINT NOT NULL,
    valid_until     BIGINT NOT NULL,
    evidence_ref    TEXT NOT NULL,
    notice_version  TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('active', 'withdrawn', 'superseded')),
    created_at      BIGINT NOT NULL,
    changed_at      BIGINT NOT NULL,
    covers_landlord BOOLEAN NOT NULL DEFAULT FALSE,
    flows           TEXT NOT NULL DEFAULT '["rent-arrears"]'   -- JSON array of flow ids
);
CREATE INDEX consents_by_subject ON consents (subject_key, purpose);

CREATE TABLE reports (
    report_id       TEXT PRIMARY KEY,
    landlord_org    TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    fingerprint     BYTEA NOT NULL,
    received_at     BIGINT NOT NULL,
    UNIQUE (landlord_org, idempotency_key)
);

CREATE TABLE cases (
    case_ref      TEXT PRIMARY KEY,
    landlord_org  TEXT NOT NULL,
    tenancy_ref   TEXT NOT NULL,
    recipient_org TEXT NOT NULL,
    subject_key   TEXT NOT NULL,
    audit_subject TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    UNIQUE (landlord_org, tenancy_ref, recipient_org, subject_key)
);

CREATE TABLE alert_sequences (
    recipient_org TEXT PRIMARY KEY,
    last_seq      BIGINT NOT NULL
);

CREATE TABLE alerts (
    id                BIGSERIAL PRIMARY KEY,
    alert_id          TEXT NOT NULL UNIQUE,
    recipient_org     TEXT NOT NULL,
    seq               BIGINT NOT NULL,
    flow_id           TEXT NOT NULL,
    consent_id        TEXT NOT NULL,
    report_id         TEXT NOT NULL,
    subject_pseudonym TEXT NOT NULL,
    case_ref          TEXT NOT NULL,
    payload           TEXT NOT NULL,
    created_at        BIGINT NOT NULL,
    acked_at          BIGINT,
    purpose           TEXT NOT NULL DEFAULT '',
    legal_basis       TEXT NOT NULL DEFAULT '',
    UNIQUE (recipient_org, seq)
);
CREATE INDEX alerts_pending ON alerts (recipient_org, seq) WHERE acked_at IS NULL;
CREATE INDEX alerts_by_consent ON alerts (consent_id);
CREATE INDEX alerts_by_flow ON alerts (flow_id, created_at);

-- The audit ledger: `seq` is the leaf index (0, 1, 2, … with no gaps). Appends are serialised
-- across nodes by the transaction-level advisory lock every write transaction takes first.
CREATE TABLE audit (
    seq          BIGINT PRIMARY KEY,
    at           BIGINT NOT NULL,
    request_id   TEXT NOT NULL,
    actor_org    TEXT NOT NULL,
    actor_role   TEXT NOT NULL,
    actor_person TEXT,
    action       TEXT NOT NULL,
    flow_id      TEXT,
    outcome      TEXT NOT NULL CHECK (outcome IN ('allow', 'deny')),
    reason       TEXT NOT NULL,
    policy_ids   TEXT NOT NULL,
    subject      TEXT,
    fields       TEXT NOT NULL,
    recipients   TEXT NOT NULL,
    entry        BYTEA NOT NULL,
    leaf_hash    BYTEA NOT NULL
);
CREATE INDEX audit_by_subject ON audit (subject);

CREATE TABLE ledger_nodes (
    level BIGINT NOT NULL,
    idx   BIGINT NOT NULL,
    hash  BYTEA NOT NULL,
    PRIMARY KEY (level, idx)
);

CREATE TABLE checkpoints (
    size       BIGINT PRIMARY KEY,
    root       BYTEA NOT NULL,
    note       TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

-- Append-only, as on SQLite.
CREATE FUNCTION silta_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% rows are append-only', TG_TABLE_NAME;
END $$;
CREATE FUNCTION silta_audit_next_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.seq IS DISTINCT FROM (SELECT COALESCE(MAX(seq) + 1, 0) FROM audit) THEN
        RAISE EXCEPTION 'audit entries are appended at the next index only';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER audit_append_only_at_the_end BEFORE INSERT ON audit
    FOR EACH ROW EXECUTE FUNCTION silta_audit_next_only();
CREATE TRIGGER audit_no_update BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION silta_refuse();
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
    FOR EACH STATEMENT EXECUTE FUNCTION silta_refuse();
CREATE TRIGGER ledger_nodes_no_update BEFORE UPDATE OR DELETE ON ledger_nodes
    FOR EACH ROW EXECUTE FUNCTION silta_refuse();
CREATE TRIGGER checkpoints_no_update BEFORE UPDATE OR DELETE ON checkpoints
    FOR EACH ROW EXECUTE FUNCTION silta_refuse();
CREATE TRIGGER ledger_nodes_no_truncate BEFORE TRUNCATE ON ledger_nodes
    FOR EACH STATEMENT EXECUTE FUNCTION silta_refuse();
CREATE TRIGGER checkpoints_no_truncate BEFORE TRUNCATE ON checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION silta_refuse();
-- These triggers stop the gateway's own mistakes and casual edits. The tables' owner (or a
-- superuser) can still disable them: a rewrite by such a role is what the signed checkpoints,
-- kept outside the database, reveal (docs/audit.md).
