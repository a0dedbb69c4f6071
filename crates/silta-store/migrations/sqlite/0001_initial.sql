-- silta schema v1 (SQLite). No column ever holds a personal identity code: subjects are
-- keyed pseudonyms, report bodies are compared by keyed fingerprint.

-- Consents, keyed by the subject's pseudonym in silta's lookup domain.
CREATE TABLE consents (
    consent_id     TEXT PRIMARY KEY,
    subject_key    TEXT NOT NULL,
    audit_subject  TEXT NOT NULL,             -- the subject's pseudonym in the audit domain
    recipient_org  TEXT NOT NULL,
    purpose        TEXT NOT NULL,
    valid_from     INTEGER NOT NULL,          -- unix ms
    valid_until    INTEGER NOT NULL,          -- unix ms, exclusive
    evidence_ref   TEXT NOT NULL,
    notice_version TEXT NOT NULL,
    state          TEXT NOT NULL CHECK (state IN ('active', 'withdrawn', 'superseded')),
    created_at     INTEGER NOT NULL,
    changed_at     INTEGER NOT NULL
) STRICT;
CREATE INDEX consents_by_subject ON consents (subject_key, purpose);

-- Accepted reports, for idempotent retries. Only a keyed fingerprint of the body is kept.
CREATE TABLE reports (
    report_id       TEXT PRIMARY KEY,
    landlord_org    TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    fingerprint     BLOB NOT NULL,
    received_at     INTEGER NOT NULL,
    UNIQUE (landlord_org, idempotency_key)
) STRICT;

-- One case per tenancy and recipient: the opaque case_ref a recipient answers on, mapped to
-- the landlord's own tenancy reference, which never crosses.
CREATE TABLE cases (
    case_ref      TEXT PRIMARY KEY,
    landlord_org  TEXT NOT NULL,
    tenancy_ref   TEXT NOT NULL,
    recipient_org TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    UNIQUE (landlord_org, tenancy_ref, recipient_org)
) STRICT;

-- Each recipient's own alert sequence, so that a recipient's sequence numbers say nothing about
-- how many alerts other organisations received. Never reused, even after a purge.
CREATE TABLE alert_sequences (
    recipient_org TEXT PRIMARY KEY,
    last_seq      INTEGER NOT NULL
) STRICT;

-- The outbox: one row per alert per recipient, in delivery order.
CREATE TABLE alerts (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    alert_id          TEXT NOT NULL UNIQUE,
    recipient_org     TEXT NOT NULL,
    seq               INTEGER NOT NULL,       -- the recipient's own sequence (alert_sequences)
    flow_id           TEXT NOT NULL,
    consent_id        TEXT NOT NULL,
    report_id         TEXT NOT NULL,
    subject_pseudonym TEXT NOT NULL,
    case_ref          TEXT NOT NULL,
    payload           TEXT NOT NULL,          -- the minimised fields, JSON
    created_at        INTEGER NOT NULL,
    acked_at          INTEGER,
    UNIQUE (recipient_org, seq)
) STRICT;
CREATE INDEX alerts_pending ON alerts (recipient_org, seq) WHERE acked_at IS NULL;
CREATE INDEX alerts_by_consent ON alerts (consent_id);

-- The audit ledger: one row per decision, allow or deny. `seq` is the leaf index in the
-- RFC 6962 tree (0, 1, 2, … with no gaps); `entry` is the canonical encoding the leaf hash
-- covers (silta-ledger `entry` v1); the other columns index it for queries. Rows are never
-- updated or deleted (triggers below).
CREATE TABLE audit (
    seq          INTEGER PRIMARY KEY,
    at           INTEGER NOT NULL,
    request_id   TEXT NOT NULL,
    actor_org    TEXT NOT NULL,
    actor_role   TEXT NOT NULL,
    actor_person TEXT,
    action       TEXT NOT NULL,
    flow_id      TEXT,
    outcome      TEXT NOT NULL CHECK (outcome IN ('allow', 'deny')),
    reason       TEXT NOT NULL,
    policy_ids   TEXT NOT NULL,               -- JSON array
    subject      TEXT,                        -- pseudonym in the audit domain
    fields       TEXT NOT NULL,               -- JSON array of field names
    recipients   TEXT NOT NULL,               -- JSON array of organisation ids
    entry        BLOB NOT NULL,               -- canonical entry bytes
    leaf_hash    BLOB NOT NULL                -- SHA-256(0x00 || entry)
) STRICT;

-- Hashes of the ledger's perfect subtrees: (level, idx) covers leaves
-- [idx * 2^level, (idx + 1) * 2^level). Written once, when the subtree's last leaf is appended,
-- so any root or proof costs O(log n) reads.
CREATE TABLE ledger_nodes (
    level INTEGER NOT NULL,
    idx   INTEGER NOT NULL,
    hash  BLOB NOT NULL,
    PRIMARY KEY (level, idx)
) STRICT, WITHOUT ROWID;

-- Signed checkpoints (C2SP tlog-checkpoint in a signed note), one per published tree size.
CREATE TABLE checkpoints (
    size       INTEGER PRIMARY KEY,
    root       BLOB NOT NULL,
    note       TEXT NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;
-- Leaf indexes are consecutive: an entry can only be appended at the end.
CREATE TRIGGER audit_append_only_at_the_end BEFORE INSERT ON audit
WHEN NEW.seq IS NOT (SELECT COALESCE(MAX(seq) + 1, 0) FROM audit)
BEGIN SELECT RAISE(ABORT, 'audit entries are appended at the next index only'); END;
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'audit rows are append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'audit rows are append-only'); END;
CREATE TRIGGER ledger_nodes_no_update BEFORE UPDATE ON ledger_nodes
BEGIN SELECT RAISE(ABORT, 'ledger nodes are append-only'); END;
CREATE TRIGGER ledger_nodes_no_delete BEFORE DELETE ON ledger_nodes
BEGIN SELECT RAISE(ABORT, 'ledger nodes are append-only'); END;
CREATE TRIGGER checkpoints_no_update BEFORE UPDATE ON checkpoints
BEGIN SELECT RAISE(ABORT, 'checkpoints are append-only'); END;
CREATE TRIGGER checkpoints_no_delete BEFORE DELETE ON checkpoints
BEGIN SELECT RAISE(ABORT, 'checkpoints are append-only'); END;
