//! silta's persistence, behind one trait so that SQLite (the embedded default) and PostgreSQL
//! (several nodes) are interchangeable.
//!
//! **Architecture invariant:** no column holds an identity code or a free-text note. Subjects
//! are keyed pseudonyms; report bodies are compared by keyed fingerprint.
//!
//! **API boundary:** every write happens inside a [`WriteTx`], which the caller commits. The
//! report path puts the report, its audit record and its alerts into one transaction, and the
//! gateway answers only after [`WriteTx::commit`] returns, so an acknowledged report is never
//! lost. Alerts can only be inserted with a [`silta_core::policy::Permit`].

#![forbid(unsafe_code)]

mod ledger;
mod postgres;
mod postgres_roles;
mod read_ahead;
mod sqlite;
pub mod stats;
mod tail;
pub mod testing;
mod time_conv;

use async_trait::async_trait;
use silta_core::OrgId;
use silta_core::audit::AuditRecord;
use silta_core::consent::{ConsentRecord, ConsentStanding, ConsentState};
use silta_core::policy::Permit;
use silta_core::pseudonym::Pseudonym;
use silta_core::stats::{Cell, CellKey, Month};
use time::OffsetDateTime;

pub use ledger::ledger_entry;
pub use postgres::PostgresStore;
pub use postgres_roles::{Migrated, RUNTIME_PRIVILEGES, RUNTIME_SEQUENCES};
pub use silta_ledger::Hash;
pub use sqlite::{SqliteOptions, SqliteStore};
pub use time_conv::to_ms as unix_ms;

/// A store failure. Callers map it to `UNAVAILABLE`: the request may be retried.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database refused or failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The SQLite write connection refused or failed.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A schema migration failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// An audit record could not be encoded as a ledger entry.
    #[error("ledger entry: {0}")]
    Entry(#[from] silta_ledger::entry::EntryError),
    /// The write connection stayed busy for longer than a writer waits for it.
    #[error("the database's write connection stayed busy for {0:?}")]
    WriterBusy(std::time::Duration),
    /// The database cannot serve the gateway as it is set up (schema behind and not ours to
    /// migrate, missing privileges, file modes): the message says what to run or change.
    #[error("{0}")]
    Setup(String),
    /// Stored data could not be read back (corruption or a newer schema).
    #[error("stored data is not readable: {0}")]
    Corrupt(String),
}

/// Short for results of store calls.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A report as remembered for idempotent retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredReport {
    /// silta's id for the report.
    pub report_id: String,
    /// Keyed fingerprint of the body.
    pub fingerprint: Vec<u8>,
    /// When it was first accepted.
    pub received_at: OffsetDateTime,
}

/// A report to remember.
#[derive(Debug, Clone)]
pub struct NewReport<'a> {
    /// silta's id for the report.
    pub report_id: &'a str,
    /// The reporting landlord.
    pub landlord: &'a OrgId,
    /// Its idempotency key.
    pub idempotency_key: &'a str,
    /// Keyed fingerprint of the body.
    pub fingerprint: &'a [u8],
    /// Acceptance time.
    pub received_at: OffsetDateTime,
}

/// A report row's place in key order (landlord organisation, idempotency key), where a
/// purge of report rows continues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportPosition {
    /// The landlord organisation.
    pub landlord: String,
    /// Its idempotency key.
    pub key: String,
}

/// A consent to store.
#[derive(Debug, Clone)]
pub struct NewConsentRow<'a> {
    /// silta's id for the consent.
    pub consent_id: &'a str,
    /// The subject in the lookup domain.
    pub subject_key: &'a Pseudonym,
    /// The subject in the audit domain, so later records about this consent name the subject.
    pub audit_subject: &'a Pseudonym,
    /// The recipient organisation (the caller).
    pub recipient: &'a OrgId,
    /// Purpose.
    pub purpose: &'a str,
    /// Validity start.
    pub valid_from: OffsetDateTime,
    /// Validity end, exclusive.
    pub valid_until: OffsetDateTime,
    /// Evidence reference.
    pub evidence_ref: &'a str,
    /// Notice version.
    pub notice_version: &'a str,
    /// Whether the landlord may be told the outcome.
    pub covers_landlord: bool,
    /// The flows the consent opens (its receipt's data categories).
    pub flows: &'a [String],
    /// The subject's pseudonym in the recipient's own domain, as its receipt carries it.
    pub subject_pseudonym: &'a Pseudonym,
    /// The consent this one renews, if it is a renewal.
    pub renews: Option<&'a str>,
    /// Creation time.
    pub now: OffsetDateTime,
}

/// A consent as its holder reads it back (`ListConsents`, `GetConsent`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredConsent {
    /// Its terms and state.
    pub record: ConsentRecord,
    /// The subject's pseudonym in the recipient's domain, under the key version in use (a
    /// promotion moves it); empty for a consent recorded before schema v8 (SQLite; v7 on
    /// PostgreSQL) with no alert left to tell it.
    pub subject_pseudonym: String,
    /// The subject in the audit domain, for the ledger record of the read.
    pub audit_subject: Pseudonym,
    /// Evidence reference.
    pub evidence_ref: String,
    /// Notice version.
    pub notice_version: String,
    /// When it was recorded.
    pub created_at: OffsetDateTime,
    /// When its state last changed (for a withdrawn consent: when it was withdrawn).
    pub changed_at: OffsetDateTime,
    /// The consent it renewed, if any.
    pub renews: Option<String>,
}

/// Which of one organisation's consents to list, one page at a time, in consent id order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentQuery<'a> {
    /// Only consents with this status at `now`; `None`: every one.
    pub status: Option<ConsentStanding>,
    /// Only consents of the subject with this pseudonym (in the recipient's domain).
    pub subject_pseudonym: Option<&'a str>,
    /// The moment the status is judged at.
    pub now: OffsetDateTime,
    /// An active consent ending before this is expiring.
    pub expiring_before: OffsetDateTime,
    /// Only consents whose id sorts after this one (the previous page's last).
    pub after: Option<&'a str>,
    /// Most consents.
    pub limit: u32,
}

/// A message to put in a recipient's outbox: an alert to social services, or a support notice
/// to a landlord.
#[derive(Debug, Clone)]
pub struct NewAlert<'a> {
    /// silta's id for the message.
    pub alert_id: &'a str,
    /// Flow id.
    pub flow_id: &'a str,
    /// The flow's purpose.
    pub purpose: &'a str,
    /// The flow's legal basis.
    pub legal_basis: &'a str,
    /// The report or notice it comes from.
    pub report_id: &'a str,
    /// The organisation that sent it: the landlord of an alert, the social-services
    /// organisation of a support notice.
    pub sender: &'a OrgId,
    /// The subject's pseudonym in the recipient's domain; empty for a landlord.
    pub subject_pseudonym: &'a str,
    /// The reference the recipient knows the case by: silta's case reference for social
    /// services, the landlord's own tenancy reference for a landlord.
    pub case_ref: &'a str,
    /// The minimised fields, JSON.
    pub payload: &'a str,
    /// Creation time.
    pub now: OffsetDateTime,
}

/// A case to find or open.
#[derive(Debug, Clone)]
pub struct NewCase<'a> {
    /// The landlord.
    pub landlord: &'a OrgId,
    /// Its tenancy reference.
    pub tenancy_ref: &'a str,
    /// The recipient organisation.
    pub recipient: &'a OrgId,
    /// The resident in the lookup domain.
    pub subject_key: &'a Pseudonym,
    /// The resident in the audit domain.
    pub audit_subject: &'a Pseudonym,
    /// The reference to use if the case is new.
    pub new_ref: &'a str,
    /// Now.
    pub now: OffsetDateTime,
}

/// An alert as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAlert {
    /// Delivery sequence.
    pub seq: u64,
    /// silta's id for the alert.
    pub alert_id: String,
    /// Flow id.
    pub flow_id: String,
    /// The flow's purpose.
    pub purpose: String,
    /// The flow's legal basis.
    pub legal_basis: String,
    /// The consent it was delivered under; empty on a flow that needs none.
    pub consent_id: String,
    /// The subject's pseudonym in the recipient's domain.
    pub subject_pseudonym: String,
    /// The case reference.
    pub case_ref: String,
    /// The minimised fields, JSON.
    pub payload: String,
}

/// A case: one tenancy, one resident, one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseRow {
    /// The landlord whose tenancy it is.
    pub landlord: OrgId,
    /// The landlord's tenancy reference.
    pub tenancy_ref: String,
    /// The resident in the lookup domain.
    pub subject_key: Pseudonym,
    /// The resident in the audit domain.
    pub audit_subject: Pseudonym,
}

/// Who and what a consent is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentSubject {
    /// The subject in the lookup domain.
    pub subject_key: Pseudonym,
    /// The subject in the audit domain.
    pub audit_subject: Pseudonym,
    /// The purpose.
    pub purpose: String,
    /// The consent's state now.
    pub state: ConsentState,
}

/// What a withdrawal did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Withdrawal {
    /// Consents moved from active to withdrawn.
    pub withdrawn: Vec<String>,
    /// Unacknowledged alerts deleted.
    pub purged_alerts: u64,
}

/// The ledger's current size and root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerHead {
    /// Entries in the ledger.
    pub size: u64,
    /// RFC 6962 root of those entries.
    pub root: Hash,
}

/// A signed checkpoint as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCheckpoint {
    /// The tree size it vouches for.
    pub size: u64,
    /// The signed note (C2SP signed-note text).
    pub note: String,
}

/// Which ledger entries to read. Unset fields do not filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Audit-domain subject pseudonyms (one person under every key version); empty: any.
    pub subjects: Vec<String>,
    /// The acting or receiving organisation.
    pub organisation: Option<String>,
    /// Flow id.
    pub flow_id: Option<String>,
    /// `allow` or `deny`.
    pub outcome: Option<String>,
    /// At or after (inclusive).
    pub from: Option<OffsetDateTime>,
    /// Before (exclusive).
    pub until: Option<OffsetDateTime>,
    /// First leaf index (inclusive).
    pub start_index: u64,
    /// One past the last leaf index.
    pub end_index: Option<u64>,
    /// Most entries.
    pub limit: u32,
}

/// A ledger entry as stored: its leaf index and canonical bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    /// Leaf index.
    pub index: u64,
    /// Canonical entry bytes.
    pub entry: Vec<u8>,
}

/// Called with an organisation and its newest outbox sequence when another node committed
/// messages for it.
pub type Wakeup = Box<dyn Fn(&OrgId, u64) + Send + Sync>;

/// The persistence seam. Implementations: [`SqliteStore`] (one node) and [`PostgresStore`]
/// (several nodes on one database).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Begins a write transaction. Writes are serialised: one transaction at a time.
    async fn begin(&self) -> Result<Box<dyn WriteTx>>;

    /// Unacknowledged alerts of `org` with a sequence greater than `after`, in order.
    async fn pending_alerts(&self, org: &OrgId, after: u64, limit: u32)
    -> Result<Vec<StoredAlert>>;

    /// The case `case_ref` of `recipient`: `None` when it does not exist or is another
    /// organisation's.
    async fn find_case(&self, recipient: &OrgId, case_ref: &str) -> Result<Option<CaseRow>>;

    /// `recipient`'s consent `consent_id`; `None` when it does not exist or is another
    /// organisation's (the caller cannot tell which).
    async fn consent(&self, recipient: &OrgId, consent_id: &str) -> Result<Option<StoredConsent>>;

    /// `recipient`'s consents matching `query`, in consent id order. Never another
    /// organisation's.
    async fn list_consents(
        &self,
        recipient: &OrgId,
        query: &ConsentQuery<'_>,
    ) -> Result<Vec<StoredConsent>>;

    /// Outbox messages (alerts and support notices) not yet acknowledged, all recipients.
    async fn undelivered(&self) -> Result<u64>;

    /// How many rows of a kind are stored, the oldest, and how many `due` would delete now.
    async fn retention_due(&self, due: Due<'_>) -> Result<KindCount>;

    /// Every flow id that outbox messages are stored under, including flows no longer
    /// declared, so that retention reaches them too.
    async fn outbox_flows(&self) -> Result<Vec<String>>;

    /// The ledger's current size and root (O(log n) reads).
    async fn ledger_head(&self) -> Result<LedgerHead>;

    /// Whether a write transaction's statements run synchronously on the calling thread (the
    /// embedded SQLite store), so a busy writer such as the group committer belongs on a thread
    /// of its own rather than on an async worker.
    fn synchronous_writes(&self) -> bool {
        false
    }

    /// The checkpoint with the largest tree size, if any.
    async fn latest_checkpoint(&self) -> Result<Option<StoredCheckpoint>>;

    /// The checkpoint published at exactly `size`, if any.
    async fn checkpoint_at(&self, size: u64) -> Result<Option<StoredCheckpoint>>;

    /// Every checkpoint with a size up to `max_size`, smallest first.
    async fn checkpoints(&self, max_size: u64) -> Result<Vec<StoredCheckpoint>>;

    /// Every checkpoint key handover (size and signed note), oldest first.
    async fn key_handovers(&self) -> Result<Vec<StoredCheckpoint>>;

    /// Ledger entries matching `filter`, in leaf order.
    async fn ledger_entries(&self, filter: &AuditFilter) -> Result<Vec<LedgerEntry>>;

    /// The hashes of perfect subtrees `(level, index)`, in the order asked.
    async fn ledger_nodes(&self, wanted: &[(u32, u64)]) -> Result<Vec<Hash>>;

    /// Starts announcing outbox messages committed by *other* processes (other gateway nodes)
    /// through `wake`. A single-node store has none and does nothing.
    async fn listen(&self, wake: Wakeup) -> Result<()> {
        drop(wake);
        Ok(())
    }

    /// Every statistics counter of a month up to and including `until`, in key order.
    async fn stat_cells(&self, until: Month) -> Result<Vec<Cell>>;

    /// Waits for in-flight work and closes connections (flushing SQLite's WAL).
    async fn close(&self);
}

/// What a batch is about to look up (see [`WriteTx::prefetch`]).
#[derive(Debug, Default)]
pub struct Lookups<'a> {
    /// (landlord, idempotency key) of each report.
    pub reports: Vec<(&'a OrgId, &'a str)>,
    /// (subject key, purpose) of each message.
    pub consents: Vec<(&'a Pseudonym, &'a str)>,
}

/// One write transaction. Dropping it without [`WriteTx::commit`] rolls it back.
#[async_trait]
pub trait WriteTx: Send {
    /// Says which reports ([`WriteTx::find_report`]) and consents ([`WriteTx::consents_for`])
    /// the calls that follow will look up, so the store can read them in one query each rather
    /// than one round trip per call. A hint only: every lookup answers the same with or without
    /// it. PostgreSQL uses it; SQLite, in process with a statement cache, looks each one up.
    async fn prefetch(&mut self, _lookups: &Lookups<'_>) -> Result<()> {
        Ok(())
    }

    /// The report `landlord` sent under `idempotency_key`, if any.
    async fn find_report(
        &mut self,
        landlord: &OrgId,
        idempotency_key: &str,
    ) -> Result<Option<StoredReport>>;

    /// Remembers an accepted report.
    async fn insert_report(&mut self, report: &NewReport<'_>) -> Result<()>;

    /// Every consent (any state) stored for `subject_key` and `purpose`.
    async fn consents_for(
        &mut self,
        subject_key: &Pseudonym,
        purpose: &str,
    ) -> Result<Vec<ConsentRecord>>;

    /// The case reference for a tenancy, resident and recipient: the existing one, or
    /// `new_ref` stored as the new one.
    async fn case_ref(&mut self, case: &NewCase<'_>) -> Result<String>;

    /// Puts an alert in the recipient's outbox, as the permit allows. Returns its sequence in
    /// the recipient's own stream (1, 2, 3, …; never reused).
    async fn insert_alert(&mut self, permit: &Permit, alert: &NewAlert<'_>) -> Result<u64>;

    /// Stores a consent, superseding the recipient's earlier active consents for the same
    /// subject and purpose.
    async fn insert_consent(&mut self, consent: &NewConsentRow<'_>) -> Result<()>;

    /// Who and what `recipient`'s consent `consent_id` is about, if it exists.
    async fn consent_subject(
        &mut self,
        recipient: &OrgId,
        consent_id: &str,
    ) -> Result<Option<ConsentSubject>>;

    /// Withdraws `recipient`'s consents for a subject and purpose and purges every
    /// unacknowledged message sent under any of them: its alerts, and the support notices it
    /// sent to landlords.
    async fn withdraw(
        &mut self,
        recipient: &OrgId,
        subject_key: &Pseudonym,
        purpose: &str,
        now: OffsetDateTime,
    ) -> Result<Withdrawal>;

    /// Acknowledges `recipient`'s alerts up to `up_to` and those in `seqs`. Returns how many
    /// were newly acknowledged.
    async fn ack_alerts(
        &mut self,
        recipient: &OrgId,
        up_to: u64,
        seqs: &[u64],
        now: OffsetDateTime,
    ) -> Result<u64>;

    /// Deletes at most `limit` of `flow_id`'s messages created before `cutoff`, delivered or
    /// not (storage limitation), oldest first. Returns how many; fewer than `limit` means none
    /// are left. The limit keeps a large purge from holding the write lock while reports wait.
    async fn purge_alerts_before(
        &mut self,
        flow_id: &str,
        cutoff: OffsetDateTime,
        limit: u32,
    ) -> Result<u64>;

    /// Deletes, among the next `scan` report rows in key order after `from` (`None`: from the
    /// start), those received before `cutoff`: once no retry can arrive, the idempotency row
    /// has no purpose left. Returns how many it deleted and where the next call continues
    /// (`None`: the whole table was seen). Bounded by rows looked at, not rows deleted, so that
    /// a purge over millions of live reports never holds the write lock for long.
    async fn purge_reports_before(
        &mut self,
        cutoff: OffsetDateTime,
        from: Option<&ReportPosition>,
        scan: u32,
    ) -> Result<(u64, Option<ReportPosition>)>;

    /// Deletes at most `limit` consents that ended before `cutoff`: withdrawn or superseded
    /// then, or valid only until then. Returns how many.
    async fn purge_consents_ended_before(
        &mut self,
        cutoff: OffsetDateTime,
        limit: u32,
    ) -> Result<u64>;

    /// Deletes at most `limit` cases: those with no message since `idle_cutoff`, and those
    /// with no message since `ended_cutoff` whose resident holds no consent for the case's
    /// recipient that stood at `ended_cutoff` or later. Returns how many.
    async fn purge_cases(
        &mut self,
        idle_cutoff: OffsetDateTime,
        ended_cutoff: OffsetDateTime,
        limit: u32,
    ) -> Result<u64>;

    /// Appends an audit record to the ledger: its canonical entry becomes the next leaf, and
    /// the perfect subtrees it completes are stored. Returns its leaf index.
    async fn append_audit(&mut self, record: &AuditRecord) -> Result<u64>;

    /// Stores a signed checkpoint for tree size `size` with root `root`.
    async fn append_checkpoint(
        &mut self,
        size: u64,
        root: &Hash,
        note: &str,
        now: OffsetDateTime,
    ) -> Result<()>;

    /// Stores a checkpoint key handover note made at tree size `size`.
    async fn append_key_handover(
        &mut self,
        size: u64,
        note: &str,
        now: OffsetDateTime,
    ) -> Result<()>;

    /// The pseudonym key version records are written under; `None` until a version was
    /// promoted (the keyring's first is in use). Read in the transaction, so every record it
    /// writes agrees with the stored ones.
    async fn pseudonym_version(&mut self) -> Result<Option<u32>>;

    /// Moves every stored lookup and audit pseudonym (of consents and cases) to `version` with
    /// `rekey`, and records `version` as the one in use. Returns how many rows changed. The
    /// audit ledger is not touched: its entries are immutable and keep the version they were
    /// written under.
    /// Each consent's pseudonym in its recipient's own domain moves too, with `rekey_own`, so
    /// the recipient finds it by the pseudonym its alerts carry from then on.
    async fn promote_pseudonyms(
        &mut self,
        version: u32,
        rekey: &Rekey<'_>,
        rekey_own: &RekeyOwn<'_>,
    ) -> Result<u64>;

    /// Adds `n` to a statistics counter, with this transaction: counted if and only if the
    /// event it counts is committed. Counters the ledger entry of an audit append implies are
    /// counted by [`WriteTx::append_audit`] itself.
    fn count(&mut self, key: CellKey, n: i64);

    /// Marks the first support notice on `recipient`'s case `case_ref`. Returns when the case
    /// was opened (its first alert) if this is the case's first notice, `None` otherwise.
    async fn first_notice(
        &mut self,
        recipient: &OrgId,
        case_ref: &str,
        now: OffsetDateTime,
    ) -> Result<Option<OffsetDateTime>>;

    /// The ledger's size as this transaction sees it (it holds the write lock: no entry can be
    /// appended meanwhile by anyone else).
    async fn ledger_size(&mut self) -> Result<u64>;

    /// Replaces every counter the ledger implies ([`silta_core::stats::Measure::from_ledger`]) with `cells`: the
    /// rebuild. The others are left as they are.
    async fn replace_ledger_stats(&mut self, cells: &[Cell]) -> Result<()>;

    /// Commits durably.
    async fn commit(self: Box<Self>) -> Result<()>;
}

/// Which kind of pseudonym a stored column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubjectColumn {
    /// silta's lookup domain (`subject_key`).
    Lookup,
    /// The audit domain (`audit_subject`).
    Audit,
}

/// Maps a stored pseudonym to the promoted version; `None` if it cannot (the promotion is then
/// abandoned and nothing changes).
pub type Rekey<'a> = dyn Fn(SubjectColumn, &str) -> Option<String> + Send + Sync + 'a;

/// Maps a consent's stored pseudonym in its recipient's domain (the recipient given) to the
/// promoted version; `None` if it cannot (the promotion is then abandoned).
pub type RekeyOwn<'a> = dyn Fn(&OrgId, &str) -> Option<String> + Send + Sync + 'a;

/// The new own-domain pseudonym of a consent, or `None` if it does not change. Consents stored
/// before schema v7 without one keep it empty.
fn rekey_own_row(rekey: &RekeyOwn<'_>, recipient: &str, stored: &str) -> Result<Option<String>> {
    if stored.is_empty() {
        return Ok(None);
    }
    let corrupt = || {
        StoreError::Corrupt(
            "a stored recipient pseudonym cannot be moved to the promoted key version".into(),
        )
    };
    let org = OrgId::new(recipient).map_err(|_| corrupt())?;
    let moved = rekey(&org, stored).ok_or_else(corrupt)?;
    Ok((moved != stored).then_some(moved))
}

/// The new `(subject_key, audit_subject)` of a row, or `None` if they do not change. Rows from
/// schema v1 hold empty subjects and keep them.
fn rekey_row(rekey: &Rekey<'_>, key: &str, audit: &str) -> Result<Option<(String, String)>> {
    let map = |column, value: &str| -> Result<String> {
        if value.is_empty() {
            return Ok(String::new());
        }
        rekey(column, value).ok_or_else(|| {
            StoreError::Corrupt(format!(
                "a stored {column:?} pseudonym cannot be moved to the promoted key version"
            ))
        })
    };
    let (k, a) = (
        map(SubjectColumn::Lookup, key)?,
        map(SubjectColumn::Audit, audit)?,
    );
    Ok((k != key || a != audit).then_some((k, a)))
}

fn version_from_row(v: Option<i64>) -> Result<Option<u32>> {
    v.map(|v| {
        u32::try_from(v)
            .map_err(|_| StoreError::Corrupt("key_state.pseudonym_version out of range".into()))
    })
    .transpose()
}

/// The columns [`StoredConsent`] is read from, in the order `consent_query` binds.
pub(crate) const CONSENT_COLUMNS: &str = "consent_id, recipient_org, purpose, valid_from, \
    valid_until, state, covers_landlord, flows, subject_pseudonym, audit_subject, evidence_ref, \
    notice_version, created_at, changed_at, renews_consent_id";

/// The filter of `list_consents`, with `?N` placeholders (PostgreSQL turns them into `$N`):
/// 1 recipient, 2 pseudonym or '', 3 after id or '', 4 status or 'all', 5 now, 6 the expiring
/// bound (unix ms), 7 limit. One statement text for every filter, so it is prepared once; the
/// index by (recipient_org, consent_id) serves the order and the paging.
pub(crate) const LIST_CONSENTS_WHERE: &str = "recipient_org = ?1
      AND (?2 = '' OR subject_pseudonym = ?2)
      AND consent_id > ?3
      AND (?4 = 'all'
           OR (?4 = 'withdrawn' AND state = 'withdrawn')
           OR (?4 = 'superseded' AND state = 'superseded')
           OR (?4 = 'expired' AND state = 'active' AND valid_until <= ?5)
           OR (?4 = 'expiring' AND state = 'active' AND valid_until > ?5 AND valid_until <= ?6)
           OR (?4 = 'active' AND state = 'active' AND valid_until > ?6))
    ORDER BY consent_id
    LIMIT ?7";

/// The status filter's bound value.
pub(crate) fn status_filter(status: Option<ConsentStanding>) -> &'static str {
    status.map_or("all", ConsentStanding::as_str)
}

/// A consent from its stored columns, checked.
#[allow(clippy::too_many_arguments)]
pub(crate) fn stored_consent(
    record: ConsentRecord,
    subject_pseudonym: String,
    audit_subject: String,
    evidence_ref: String,
    notice_version: String,
    created_at: i64,
    changed_at: i64,
    renews: String,
) -> Result<StoredConsent> {
    Ok(StoredConsent {
        record,
        subject_pseudonym,
        audit_subject: Pseudonym::from_stored(audit_subject),
        evidence_ref,
        notice_version,
        created_at: time_conv::from_ms(created_at)?,
        changed_at: time_conv::from_ms(changed_at)?,
        renews: (!renews.is_empty()).then_some(renews),
    })
}

/// The distinct flow ids of the outbox, one index probe per flow (`alerts_by_flow`), not a scan
/// of every message: a loose index scan, written out since neither engine does it for
/// `SELECT DISTINCT`.
pub(crate) const OUTBOX_FLOWS: &str = "WITH RECURSIVE f(flow_id) AS (
        SELECT MIN(flow_id) FROM alerts
        UNION ALL
        SELECT (SELECT MIN(flow_id) FROM alerts WHERE flow_id > f.flow_id)
        FROM f WHERE f.flow_id IS NOT NULL)
    SELECT flow_id FROM f WHERE flow_id IS NOT NULL";

/// A case's `last_message_at` is moved forward only when it is this much behind (a day):
/// retention counts in days, and rewriting the case on every report would cost the report path
/// a dirtied page each time.
pub(crate) const CASE_TOUCH_MS: i64 = 86_400_000;

/// Whether case `c` has ended (`$1`: the idle cutoff, `$2`: the ended-consent cutoff; SQLite
/// reads `$n` as the n-th parameter). A case counts from its last message, or its creation for
/// a row an older release wrote. A consent that stood at the cutoff or later keeps the case:
/// active and valid past it, or ended after it.
macro_rules! case_ended {
    () => {
        "(CASE WHEN c.last_message_at > c.created_at
               THEN c.last_message_at ELSE c.created_at END < $1
          OR (CASE WHEN c.last_message_at > c.created_at
                   THEN c.last_message_at ELSE c.created_at END < $2 AND NOT EXISTS (
                SELECT 1 FROM consents k
                WHERE k.subject_key = c.subject_key AND k.recipient_org = c.recipient_org
                  AND ((k.state = 'active' AND k.valid_until >= $2)
                       OR (k.state <> 'active' AND k.changed_at >= $2)))))"
    };
}

/// The cases to delete (`purge_cases`), for both engines; `$3` is the limit.
pub(crate) const PURGE_CASES: &str = concat!(
    "DELETE FROM cases WHERE case_ref IN (SELECT c.case_ref FROM cases c WHERE ",
    case_ended!(),
    " LIMIT $3)"
);

/// Every case, the oldest, and those [`PURGE_CASES`] would delete.
pub(crate) const CASES_DUE: &str = concat!(
    "SELECT COUNT(*), MIN(c.created_at), COALESCE(SUM(CASE WHEN ",
    case_ended!(),
    " THEN 1 ELSE 0 END), 0) FROM cases c"
);

/// Every report row, the oldest, and those received before `$1`.
pub(crate) const REPORTS_DUE: &str = "SELECT COUNT(*), MIN(received_at),
        COALESCE(SUM(CASE WHEN received_at < $1 THEN 1 ELSE 0 END), 0) FROM reports";

/// Every consent, the oldest, and those that ended before `$1`.
pub(crate) const CONSENTS_DUE: &str = "SELECT COUNT(*), MIN(created_at),
        COALESCE(SUM(CASE WHEN (state <> 'active' AND changed_at < $1)
                            OR (state = 'active' AND valid_until < $1)
                          THEN 1 ELSE 0 END), 0) FROM consents";

/// A flow's messages (`$2`), the oldest, and those created before `$1`.
pub(crate) const MESSAGES_DUE: &str = "SELECT COUNT(*), MIN(created_at),
        COALESCE(SUM(CASE WHEN created_at < $1 THEN 1 ELSE 0 END), 0) FROM alerts
        WHERE flow_id = $2";

/// Which rows a retention rule would delete now.
#[derive(Debug, Clone, Copy)]
pub enum Due<'a> {
    /// A flow's messages created before `cutoff`.
    Messages {
        /// The flow.
        flow_id: &'a str,
        /// The cutoff.
        cutoff: OffsetDateTime,
    },
    /// Report rows received before `cutoff`.
    Reports {
        /// The cutoff.
        cutoff: OffsetDateTime,
    },
    /// Consents that ended before `ended`.
    Consents {
        /// The cutoff.
        ended: OffsetDateTime,
    },
    /// Cases as [`WriteTx::purge_cases`] chooses them.
    Cases {
        /// No message since then.
        idle: OffsetDateTime,
        /// No message, and no consent standing, since then.
        ended: OffsetDateTime,
    },
}

impl Due<'_> {
    /// The query and its parameters (unix ms; a flow id for messages).
    pub(crate) fn query(&self) -> (&'static str, Vec<i64>, Option<&str>) {
        use crate::time_conv::to_ms;
        match *self {
            Due::Messages { flow_id, cutoff } => (MESSAGES_DUE, vec![to_ms(cutoff)], Some(flow_id)),
            Due::Reports { cutoff } => (REPORTS_DUE, vec![to_ms(cutoff)], None),
            Due::Consents { ended } => (CONSENTS_DUE, vec![to_ms(ended)], None),
            Due::Cases { idle, ended } => (CASES_DUE, vec![to_ms(idle), to_ms(ended)], None),
        }
    }
}

/// How many rows of a kind are stored, since when, and how many a rule would delete now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KindCount {
    /// Rows stored.
    pub rows: u64,
    /// When the oldest was created (`None`: no rows).
    pub oldest: Option<OffsetDateTime>,
    /// Rows the rule would delete now.
    pub due: u64,
}

pub(crate) fn kind_count(rows: i64, oldest: Option<i64>, due: i64) -> Result<KindCount> {
    Ok(KindCount {
        rows: time_conv::seq_from_i64(rows)?,
        oldest: oldest.map(time_conv::from_ms).transpose()?,
        due: time_conv::seq_from_i64(due)?,
    })
}
