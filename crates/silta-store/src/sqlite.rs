//! The SQLite store: one file, WAL journal, `synchronous = FULL` so a commit survives power
//! loss. One write connection serialises writers; a pool of read-only connections serves
//! subscriptions concurrently.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use silta_core::OrgId;
use silta_core::audit::AuditRecord;
use silta_core::consent::{ConsentRecord, ConsentState};
use silta_core::policy::Permit;
use silta_core::pseudonym::Pseudonym;
use silta_ledger::tree::Frontier;
use silta_ledger::{Hash, leaf_hash};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection, Transaction};
use time::OffsetDateTime;

use crate::ledger::ledger_entry;
use crate::read_ahead::ReadAhead;
use crate::time_conv::{from_ms, seq_from_i64, seq_to_i64, to_ms};
use crate::{
    AuditFilter, CaseRow, ConsentSubject, LedgerEntry, LedgerHead, Lookups, NewAlert, NewCase,
    NewConsentRow, NewReport, Rekey, Result, Store, StoreError, StoredAlert, StoredCheckpoint,
    StoredReport, Withdrawal, WriteTx,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// The embedded SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    write: SqlitePool,
    read: SqlitePool,
    /// The connection that copies the WAL back into the database file (see `checkpoint_wal`).
    wal: SqlitePool,
    /// Dropped with the last clone of the store, which stops the checkpoint task.
    _alive: Arc<()>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and applies pending migrations.
    pub async fn open(path: &Path) -> Result<Self> {
        let base = SqliteConnectOptions::new()
            .filename(path)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        // The writer's page cache: 64 MiB rather than SQLite's 2 MiB, so that the indexes a
        // commit touches (random pseudonyms, time-ordered ids) stay in memory as the file grows.
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(
                base.clone()
                    .create_if_missing(true)
                    .pragma("cache_size", "-65536")
                    .pragma("wal_autocheckpoint", "10000"),
            )
            .await?;
        MIGRATOR.run(&write).await?;
        let read = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(base.clone().read_only(true))
            .await?;
        let wal = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(base)
            .await?;
        let alive = Arc::new(());
        tokio::spawn(checkpoint_wal(wal.clone(), Arc::downgrade(&alive)));
        Ok(SqliteStore {
            write,
            read,
            wal,
            _alive: alive,
        })
    }

    /// Opens the database named by a `sqlite://PATH` URL or a plain path.
    pub async fn open_url(url: &str) -> Result<Self> {
        let path = url.strip_prefix("sqlite://").unwrap_or(url);
        // Validate the URL form the way sqlx would, without relying on its query options.
        SqliteConnectOptions::from_str(&format!("sqlite://{path}"))?;
        Self::open(Path::new(path)).await
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn begin(&self) -> Result<Box<dyn WriteTx>> {
        Ok(Box::new(SqliteTx {
            // IMMEDIATE takes the write lock at once: a transaction that read first and wrote
            // later would fail if another process (`silta keys promote`) wrote in between.
            tx: self.write.begin_with("BEGIN IMMEDIATE").await?,
            frontier: None,
            pending: Pending::default(),
            alert_seqs: HashMap::new(),
            prefetched: Prefetched::default(),
        }))
    }

    async fn find_case(&self, recipient: &OrgId, case_ref: &str) -> Result<Option<CaseRow>> {
        let row = sqlx::query(
            "SELECT landlord_org, tenancy_ref, subject_key, audit_subject FROM cases
             WHERE case_ref = ? AND recipient_org = ?",
        )
        .bind(case_ref)
        .bind(recipient.as_str())
        .fetch_optional(&self.read)
        .await?;
        row.map(|r| {
            let landlord: String = r.try_get("landlord_org")?;
            Ok(CaseRow {
                landlord: OrgId::new(&landlord)
                    .map_err(|e| StoreError::Corrupt(format!("case landlord: {e}")))?,
                tenancy_ref: r.try_get("tenancy_ref")?,
                subject_key: Pseudonym::from_stored(r.try_get("subject_key")?),
                audit_subject: Pseudonym::from_stored(r.try_get("audit_subject")?),
            })
        })
        .transpose()
    }

    async fn undelivered(&self) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM alerts WHERE acked_at IS NULL")
            .fetch_one(&self.read)
            .await?;
        seq_from_i64(n)
    }

    async fn ledger_head(&self) -> Result<LedgerHead> {
        let mut conn = self.read.acquire().await?;
        let frontier = load_frontier(&mut conn).await?;
        Ok(LedgerHead {
            size: frontier.size(),
            root: frontier.root(),
        })
    }

    async fn latest_checkpoint(&self) -> Result<Option<StoredCheckpoint>> {
        let row = sqlx::query("SELECT size, note FROM checkpoints ORDER BY size DESC LIMIT 1")
            .fetch_optional(&self.read)
            .await?;
        row.map(|r| {
            Ok(StoredCheckpoint {
                size: seq_from_i64(r.try_get("size")?)?,
                note: r.try_get("note")?,
            })
        })
        .transpose()
    }

    async fn pending_alerts(
        &self,
        org: &OrgId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<StoredAlert>> {
        let rows = sqlx::query(
            "SELECT seq, alert_id, flow_id, purpose, legal_basis, consent_id, subject_pseudonym,
                    case_ref, payload
             FROM alerts WHERE recipient_org = ? AND seq > ? AND acked_at IS NULL
             ORDER BY seq LIMIT ?",
        )
        .bind(org.as_str())
        .bind(seq_to_i64(after))
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(StoredAlert {
                    seq: seq_from_i64(r.try_get("seq")?)?,
                    alert_id: r.try_get("alert_id")?,
                    flow_id: r.try_get("flow_id")?,
                    purpose: r.try_get("purpose")?,
                    legal_basis: r.try_get("legal_basis")?,
                    consent_id: r.try_get("consent_id")?,
                    subject_pseudonym: r.try_get("subject_pseudonym")?,
                    case_ref: r.try_get("case_ref")?,
                    payload: r.try_get("payload")?,
                })
            })
            .collect()
    }

    async fn checkpoint_at(&self, size: u64) -> Result<Option<StoredCheckpoint>> {
        let note: Option<String> =
            sqlx::query_scalar("SELECT note FROM checkpoints WHERE size = ?")
                .bind(seq_to_i64(size))
                .fetch_optional(&self.read)
                .await?;
        Ok(note.map(|note| StoredCheckpoint { size, note }))
    }

    async fn key_handovers(&self) -> Result<Vec<StoredCheckpoint>> {
        let rows = sqlx::query("SELECT size, note FROM key_handovers ORDER BY size")
            .fetch_all(&self.read)
            .await?;
        rows.into_iter()
            .map(|r| {
                Ok(StoredCheckpoint {
                    size: seq_from_i64(r.try_get("size")?)?,
                    note: r.try_get("note")?,
                })
            })
            .collect()
    }

    async fn checkpoints(&self, max_size: u64) -> Result<Vec<StoredCheckpoint>> {
        let rows = sqlx::query("SELECT size, note FROM checkpoints WHERE size <= ? ORDER BY size")
            .bind(seq_to_i64(max_size))
            .fetch_all(&self.read)
            .await?;
        rows.into_iter()
            .map(|r| {
                Ok(StoredCheckpoint {
                    size: seq_from_i64(r.try_get("size")?)?,
                    note: r.try_get("note")?,
                })
            })
            .collect()
    }

    async fn ledger_entries(&self, f: &AuditFilter) -> Result<Vec<LedgerEntry>> {
        let mut q = sqlx::QueryBuilder::<Sqlite>::new("SELECT seq, entry FROM audit WHERE seq >= ");
        q.push_bind(seq_to_i64(f.start_index));
        if let Some(end) = f.end_index {
            q.push(" AND seq < ").push_bind(seq_to_i64(end));
        }
        if !f.subjects.is_empty() {
            q.push(" AND subject IN (");
            let mut list = q.separated(", ");
            for subject in &f.subjects {
                list.push_bind(subject);
            }
            q.push(")");
        }
        if let Some(org) = &f.organisation {
            q.push(" AND (actor_org = ")
                .push_bind(org)
                .push(" OR EXISTS (SELECT 1 FROM json_each(audit.recipients) WHERE value = ")
                .push_bind(org)
                .push("))");
        }
        if let Some(flow) = &f.flow_id {
            q.push(" AND flow_id = ").push_bind(flow);
        }
        if let Some(outcome) = &f.outcome {
            q.push(" AND outcome = ").push_bind(outcome);
        }
        if let Some(from) = f.from {
            q.push(" AND at >= ").push_bind(to_ms(from));
        }
        if let Some(until) = f.until {
            q.push(" AND at < ").push_bind(to_ms(until));
        }
        q.push(" ORDER BY seq LIMIT ").push_bind(i64::from(f.limit));
        q.build()
            .fetch_all(&self.read)
            .await?
            .into_iter()
            .map(|r| {
                Ok(LedgerEntry {
                    index: seq_from_i64(r.try_get("seq")?)?,
                    entry: r.try_get("entry")?,
                })
            })
            .collect()
    }

    async fn ledger_nodes(&self, wanted: &[(u32, u64)]) -> Result<Vec<Hash>> {
        let mut conn = self.read.acquire().await?;
        let mut out = Vec::with_capacity(wanted.len());
        for &(level, index) in wanted {
            out.push(read_node(&mut conn, level, index).await?);
        }
        Ok(out)
    }

    async fn close(&self) {
        self.read.close().await;
        self.write.close().await;
        self.wal.close().await;
    }
}

struct SqliteTx {
    tx: Transaction<'static, Sqlite>,
    /// The ledger's right edge, read on the first append of this transaction and advanced in
    /// memory; dropped with the transaction, so a rollback leaves nothing stale.
    frontier: Option<Frontier>,
    /// Rows written by this transaction that SQLite has not seen yet. sqlx runs every SQLite
    /// statement on its own worker thread, so each one costs two thread switches: writing a
    /// batch's rows as a few multi-row inserts at the end (or before any statement that reads
    /// those tables) instead of one statement per row more than doubled the reports a second
    /// the group commit keeps up with (docs/performance.md).
    pending: Pending,
    /// Each recipient's last alert sequence number, as this transaction has advanced it.
    alert_seqs: HashMap<String, i64>,
    /// What [`WriteTx::prefetch`] read, for the same reason as `pending`.
    prefetched: Prefetched,
}

/// Reports, consents and cases read ahead for a batch.
#[derive(Default)]
struct Prefetched {
    /// Reports and consents, as on every store.
    read: ReadAhead,
    /// (landlord, tenancy reference) pairs whose cases were all read into `cases`; cases this
    /// transaction opens are added to `cases` too (and to `Pending::cases`).
    tenancies: HashSet<(String, String)>,
    cases: HashMap<CaseKey, String>,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct CaseKey {
    landlord: String,
    tenancy_ref: String,
    recipient: String,
    subject_key: String,
}

#[derive(Default)]
struct Pending {
    reports: Vec<PendingReport>,
    /// (landlord, idempotency key) → index in `reports`.
    report_index: HashMap<(String, String), usize>,
    /// New cases: (key, case reference, audit subject, created at).
    cases: Vec<(CaseKey, String, String, i64)>,
    alerts: Vec<PendingAlert>,
    audit: Vec<PendingAudit>,
    nodes: Vec<(u32, u64, Hash)>,
    /// Whether `alert_seqs` changed since the last flush.
    seqs_changed: bool,
}

struct PendingReport {
    report_id: String,
    landlord: String,
    idempotency_key: String,
    fingerprint: Vec<u8>,
    received_at: i64,
}

struct PendingAlert {
    alert_id: String,
    recipient: String,
    seq: i64,
    flow_id: String,
    purpose: String,
    legal_basis: String,
    consent_id: String,
    report_id: String,
    subject_pseudonym: String,
    case_ref: String,
    payload: String,
    created_at: i64,
}

struct PendingAudit {
    seq: i64,
    at: i64,
    request_id: String,
    actor_org: String,
    actor_role: &'static str,
    actor_person: Option<String>,
    action: String,
    flow_id: Option<String>,
    outcome: &'static str,
    reason: String,
    policy_ids: String,
    subject: Option<String>,
    fields: String,
    recipients: String,
    entry: Vec<u8>,
    leaf: Hash,
}

/// Rows per multi-row insert: well under SQLite's limit of 32,766 bound variables.
const ROWS_PER_INSERT: usize = 1_000;

impl SqliteTx {
    /// Writes the pending rows, in an order that satisfies every constraint: reports before
    /// the alerts that name them, audit entries in ledger order before their tree nodes.
    async fn flush(&mut self) -> Result<()> {
        let pending = std::mem::take(&mut self.pending);
        // One multi-statement query: sqlx binds the `?`s of each statement in turn, and the
        // whole flush costs one trip to SQLite's worker thread.
        let mut q = QueryBuilder::<Sqlite>::new("");
        let mut statements = 0usize;
        let mut next = |q: &mut QueryBuilder<'_, Sqlite>| {
            if statements > 0 {
                q.push(";\n");
            }
            statements += 1;
        };
        for chunk in pending.reports.chunks(ROWS_PER_INSERT) {
            next(&mut q);
            q.push("INSERT INTO reports (report_id, landlord_org, idempotency_key, fingerprint, received_at) ");
            q.push_values(chunk, |mut b, r| {
                b.push_bind(r.report_id.as_str())
                    .push_bind(r.landlord.as_str())
                    .push_bind(r.idempotency_key.as_str())
                    .push_bind(r.fingerprint.as_slice())
                    .push_bind(r.received_at);
            });
        }
        for chunk in pending.cases.chunks(ROWS_PER_INSERT) {
            next(&mut q);
            q.push("INSERT INTO cases (case_ref, landlord_org, tenancy_ref, recipient_org, subject_key,
                                    audit_subject, created_at) ");
            q.push_values(chunk, |mut b, (key, case_ref, audit_subject, at)| {
                b.push_bind(case_ref.as_str())
                    .push_bind(key.landlord.as_str())
                    .push_bind(key.tenancy_ref.as_str())
                    .push_bind(key.recipient.as_str())
                    .push_bind(key.subject_key.as_str())
                    .push_bind(audit_subject.as_str())
                    .push_bind(*at);
            });
        }
        for chunk in pending.alerts.chunks(ROWS_PER_INSERT) {
            next(&mut q);
            q.push(
                "INSERT INTO alerts (alert_id, recipient_org, seq, flow_id, purpose, legal_basis,
                                     consent_id, report_id, subject_pseudonym, case_ref, payload,
                                     created_at) ",
            );
            q.push_values(chunk, |mut b, a| {
                b.push_bind(a.alert_id.as_str())
                    .push_bind(a.recipient.as_str())
                    .push_bind(a.seq)
                    .push_bind(a.flow_id.as_str())
                    .push_bind(a.purpose.as_str())
                    .push_bind(a.legal_basis.as_str())
                    .push_bind(a.consent_id.as_str())
                    .push_bind(a.report_id.as_str())
                    .push_bind(a.subject_pseudonym.as_str())
                    .push_bind(a.case_ref.as_str())
                    .push_bind(a.payload.as_str())
                    .push_bind(a.created_at);
            });
        }
        if pending.seqs_changed {
            next(&mut q);
            q.push("INSERT INTO alert_sequences (recipient_org, last_seq) ");
            q.push_values(&self.alert_seqs, |mut b, (org, seq)| {
                b.push_bind(org.as_str()).push_bind(*seq);
            });
            q.push(" ON CONFLICT (recipient_org) DO UPDATE SET last_seq = excluded.last_seq");
        }
        for chunk in pending.audit.chunks(ROWS_PER_INSERT) {
            next(&mut q);
            q.push("INSERT INTO audit (seq, at, request_id, actor_org, actor_role, actor_person, action,
                                    flow_id, outcome, reason, policy_ids, subject, fields, recipients,
                                    entry, leaf_hash) ");
            q.push_values(chunk, |mut b, r| {
                b.push_bind(r.seq)
                    .push_bind(r.at)
                    .push_bind(r.request_id.as_str())
                    .push_bind(r.actor_org.as_str())
                    .push_bind(r.actor_role)
                    .push_bind(r.actor_person.as_deref())
                    .push_bind(r.action.as_str())
                    .push_bind(r.flow_id.as_deref())
                    .push_bind(r.outcome)
                    .push_bind(r.reason.as_str())
                    .push_bind(r.policy_ids.as_str())
                    .push_bind(r.subject.as_deref())
                    .push_bind(r.fields.as_str())
                    .push_bind(r.recipients.as_str())
                    .push_bind(r.entry.as_slice())
                    .push_bind(r.leaf.as_slice());
            });
        }
        for chunk in pending.nodes.chunks(ROWS_PER_INSERT) {
            next(&mut q);
            q.push("INSERT INTO ledger_nodes (level, idx, hash) ");
            q.push_values(chunk, |mut b, (level, index, hash)| {
                b.push_bind(i64::from(*level))
                    .push_bind(seq_to_i64(*index))
                    .push_bind(hash.as_slice());
            });
        }
        if statements > 0 {
            // Statements whose text depends on the batch's size: not worth caching.
            q.build().persistent(false).execute(&mut *self.tx).await?;
        }
        // Written reports stay findable without a read, like those never prefetched.
        for r in pending.reports {
            let report = StoredReport {
                report_id: r.report_id,
                fingerprint: r.fingerprint,
                received_at: from_ms(r.received_at)?,
            };
            self.prefetched
                .read
                .found_report(&r.landlord, r.idempotency_key, report);
        }
        Ok(())
    }
}

/// `select WHERE eq.0 = eq.1 AND within.0 IN (within.1…)`, in chunks under SQLite's limit on
/// bound variables. Column names are the caller's constants, never input.
async fn select_in(
    conn: &mut SqliteConnection,
    select: &str,
    eq: (&str, &str),
    within: (&str, &[&str]),
) -> Result<Vec<sqlx::sqlite::SqliteRow>> {
    let mut rows = Vec::new();
    for chunk in within.1.chunks(ROWS_PER_INSERT) {
        let mut q = QueryBuilder::<Sqlite>::new(select);
        q.push(" WHERE ")
            .push(eq.0)
            .push(" = ")
            .push_bind(eq.1)
            .push(" AND ")
            .push(within.0)
            .push(" IN (");
        let mut list = q.separated(", ");
        for value in chunk {
            list.push_bind(*value);
        }
        q.push(")");
        // Its text depends on the batch's size: not worth caching.
        rows.extend(q.build().persistent(false).fetch_all(&mut *conn).await?);
    }
    Ok(rows)
}

/// Copies committed pages from the WAL back into the database file, twice a second, on a
/// connection of its own. SQLite would otherwise do it inside whichever commit crosses 1,000 WAL
/// pages, and that commit, with every report in its batch, would wait for the whole copy and
/// its fsync (100 ms and more on a busy disk). A passive checkpoint never blocks the writer; a
/// crash at any moment loses nothing, since committed pages are in the WAL until copied.
///
/// Under constant writes a passive checkpoint never quite catches up with the end of the WAL,
/// so SQLite never starts the file over and it would grow without bound (the benchmark saw
/// 1.5 GB). The writer therefore keeps an automatic checkpoint at 10,000 pages (40 MB): when it
/// runs, this task has already copied nearly everything, so it is short, and it lets the next
/// transaction start the WAL over.
async fn checkpoint_wal(pool: SqlitePool, store: std::sync::Weak<()>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if store.strong_count() == 0 {
            pool.close().await;
            return;
        }
        if pool.is_closed() {
            return;
        }
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&pool)
            .await
        {
            if pool.is_closed() {
                return;
            }
            tracing::warn!(error = %e, "WAL checkpoint failed; the next one retries");
        }
    }
}

/// Reads the ledger's size and right edge: O(log n) indexed reads.
async fn load_frontier(conn: &mut SqliteConnection) -> Result<Frontier> {
    let size: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq) + 1, 0) FROM audit")
        .fetch_one(&mut *conn)
        .await?;
    let size = seq_from_i64(size)?;
    let mut edge = Vec::new();
    for (level, index) in Frontier::edge_nodes(size) {
        edge.push(read_node(conn, level, index).await?);
    }
    Frontier::from_edge(size, &edge).ok_or_else(|| StoreError::Corrupt("ledger edge".into()))
}

async fn read_node(conn: &mut SqliteConnection, level: u32, index: u64) -> Result<Hash> {
    let hash: Vec<u8> =
        sqlx::query_scalar("SELECT hash FROM ledger_nodes WHERE level = ? AND idx = ?")
            .bind(i64::from(level))
            .bind(seq_to_i64(index))
            .fetch_optional(&mut *conn)
            .await?
            .ok_or_else(|| {
                StoreError::Corrupt(format!("ledger node ({level}, {index}) is missing"))
            })?;
    Hash::try_from(hash.as_slice())
        .map_err(|_| StoreError::Corrupt("ledger node is not 32 bytes".into()))
}

fn consent_from_row(r: &sqlx::sqlite::SqliteRow) -> Result<ConsentRecord> {
    let org: String = r.try_get("recipient_org")?;
    let state: String = r.try_get("state")?;
    Ok(ConsentRecord {
        consent_id: r.try_get("consent_id")?,
        recipient: OrgId::new(&org)
            .map_err(|e| StoreError::Corrupt(format!("consent recipient: {e}")))?,
        purpose: r.try_get("purpose")?,
        valid_from: from_ms(r.try_get("valid_from")?)?,
        valid_until: from_ms(r.try_get("valid_until")?)?,
        state: ConsentState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt("consent state".into()))?,
        covers_landlord: r.try_get::<i64, _>("covers_landlord")? != 0,
        flows: serde_json::from_str(&r.try_get::<String, _>("flows")?)
            .map_err(|e| StoreError::Corrupt(format!("consent flows: {e}")))?,
    })
}

fn json_list<T: AsRef<str>>(items: &[T]) -> String {
    let v: Vec<&str> = items.iter().map(AsRef::as_ref).collect();
    // A list of strings always serialises.
    serde_json::to_string(&v).expect("a list of strings serialises")
}

#[async_trait]
impl WriteTx for SqliteTx {
    async fn prefetch(&mut self, lookups: &Lookups<'_>) -> Result<()> {
        let by_landlord = self.prefetched.read.unread_reports(lookups);
        for (landlord, keys) in by_landlord {
            let rows = select_in(
                &mut self.tx,
                "SELECT idempotency_key, report_id, fingerprint, received_at FROM reports",
                ("landlord_org", landlord),
                ("idempotency_key", &keys),
            )
            .await?;
            for r in rows {
                let report = StoredReport {
                    report_id: r.try_get("report_id")?,
                    fingerprint: r.try_get("fingerprint")?,
                    received_at: from_ms(r.try_get("received_at")?)?,
                };
                self.prefetched
                    .read
                    .found_report(landlord, r.try_get("idempotency_key")?, report);
            }
        }
        for (purpose, subjects) in self.prefetched.read.unread_consents(lookups) {
            let rows = select_in(
                &mut self.tx,
                "SELECT subject_key, consent_id, recipient_org, purpose, valid_from, valid_until,
                        state, covers_landlord, flows FROM consents",
                ("purpose", purpose),
                ("subject_key", &subjects),
            )
            .await?;
            for r in rows {
                let consent = consent_from_row(&r)?;
                self.prefetched
                    .read
                    .found_consent(r.try_get("subject_key")?, purpose, consent);
            }
        }
        let mut tenancies: HashMap<&str, Vec<&str>> = HashMap::new();
        for (landlord, tenancy) in &lookups.tenancies {
            let key = (landlord.as_str().to_owned(), (*tenancy).to_owned());
            if self.prefetched.tenancies.insert(key) {
                tenancies
                    .entry(landlord.as_str())
                    .or_default()
                    .push(tenancy);
            }
        }
        for (landlord, refs) in tenancies {
            let rows = select_in(
                &mut self.tx,
                "SELECT case_ref, tenancy_ref, recipient_org, subject_key FROM cases",
                ("landlord_org", landlord),
                ("tenancy_ref", &refs),
            )
            .await?;
            for r in rows {
                self.prefetched.cases.insert(
                    CaseKey {
                        landlord: landlord.to_owned(),
                        tenancy_ref: r.try_get("tenancy_ref")?,
                        recipient: r.try_get("recipient_org")?,
                        subject_key: r.try_get("subject_key")?,
                    },
                    r.try_get("case_ref")?,
                );
            }
        }
        Ok(())
    }

    async fn find_report(
        &mut self,
        landlord: &OrgId,
        idempotency_key: &str,
    ) -> Result<Option<StoredReport>> {
        let key = (landlord.as_str().to_owned(), idempotency_key.to_owned());
        if let Some(r) = self
            .pending
            .report_index
            .get(&key)
            .and_then(|&i| self.pending.reports.get(i))
        {
            return Ok(Some(StoredReport {
                report_id: r.report_id.clone(),
                fingerprint: r.fingerprint.clone(),
                received_at: from_ms(r.received_at)?,
            }));
        }
        if let Some(known) = self.prefetched.read.report(&key.0, &key.1) {
            return Ok(known);
        }
        let row = sqlx::query(
            "SELECT report_id, fingerprint, received_at FROM reports
             WHERE landlord_org = ? AND idempotency_key = ?",
        )
        .bind(landlord.as_str())
        .bind(idempotency_key)
        .fetch_optional(&mut *self.tx)
        .await?;
        row.map(|r| {
            Ok(StoredReport {
                report_id: r.try_get("report_id")?,
                fingerprint: r.try_get("fingerprint")?,
                received_at: from_ms(r.try_get("received_at")?)?,
            })
        })
        .transpose()
    }

    async fn insert_report(&mut self, report: &NewReport<'_>) -> Result<()> {
        self.pending.report_index.insert(
            (
                report.landlord.as_str().to_owned(),
                report.idempotency_key.to_owned(),
            ),
            self.pending.reports.len(),
        );
        self.pending.reports.push(PendingReport {
            report_id: report.report_id.to_owned(),
            landlord: report.landlord.as_str().to_owned(),
            idempotency_key: report.idempotency_key.to_owned(),
            fingerprint: report.fingerprint.to_vec(),
            received_at: to_ms(report.received_at),
        });
        Ok(())
    }

    async fn consents_for(
        &mut self,
        subject_key: &Pseudonym,
        purpose: &str,
    ) -> Result<Vec<ConsentRecord>> {
        if let Some(consents) = self.prefetched.read.consents(subject_key.as_str(), purpose) {
            return Ok(consents);
        }
        let rows = sqlx::query(
            "SELECT consent_id, recipient_org, purpose, valid_from, valid_until, state,
                    covers_landlord, flows
             FROM consents WHERE subject_key = ? AND purpose = ?",
        )
        .bind(subject_key.as_str())
        .bind(purpose)
        .fetch_all(&mut *self.tx)
        .await?;
        rows.iter().map(consent_from_row).collect()
    }

    async fn case_ref(&mut self, c: &NewCase<'_>) -> Result<String> {
        let key = CaseKey {
            landlord: c.landlord.as_str().to_owned(),
            tenancy_ref: c.tenancy_ref.to_owned(),
            recipient: c.recipient.as_str().to_owned(),
            subject_key: c.subject_key.as_str().to_owned(),
        };
        if let Some(case_ref) = self.prefetched.cases.get(&key) {
            return Ok(case_ref.clone());
        }
        if self
            .prefetched
            .tenancies
            .contains(&(key.landlord.clone(), key.tenancy_ref.clone()))
        {
            // Every case of this tenancy was read ahead: this one is new.
            self.prefetched
                .cases
                .insert(key.clone(), c.new_ref.to_owned());
            self.pending.cases.push((
                key,
                c.new_ref.to_owned(),
                c.audit_subject.as_str().to_owned(),
                to_ms(c.now),
            ));
            return Ok(c.new_ref.to_owned());
        }
        let row = sqlx::query(
            "INSERT INTO cases (case_ref, landlord_org, tenancy_ref, recipient_org, subject_key,
                                audit_subject, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (landlord_org, tenancy_ref, recipient_org, subject_key)
             DO UPDATE SET case_ref = case_ref
             RETURNING case_ref",
        )
        .bind(c.new_ref)
        .bind(c.landlord.as_str())
        .bind(c.tenancy_ref)
        .bind(c.recipient.as_str())
        .bind(c.subject_key.as_str())
        .bind(c.audit_subject.as_str())
        .bind(to_ms(c.now))
        .fetch_one(&mut *self.tx)
        .await?;
        Ok(row.try_get("case_ref")?)
    }

    async fn insert_alert(&mut self, permit: &Permit, alert: &NewAlert<'_>) -> Result<u64> {
        let recipient = permit.recipient().as_str();
        let last = match self.alert_seqs.get(recipient) {
            Some(last) => *last,
            None => {
                sqlx::query_scalar("SELECT last_seq FROM alert_sequences WHERE recipient_org = ?")
                    .bind(recipient)
                    .fetch_optional(&mut *self.tx)
                    .await?
                    .unwrap_or(0)
            }
        };
        let seq = last + 1;
        self.alert_seqs.insert(recipient.to_owned(), seq);
        self.pending.seqs_changed = true;
        self.pending.alerts.push(PendingAlert {
            alert_id: alert.alert_id.to_owned(),
            recipient: recipient.to_owned(),
            seq,
            flow_id: alert.flow_id.to_owned(),
            purpose: alert.purpose.to_owned(),
            legal_basis: alert.legal_basis.to_owned(),
            consent_id: permit.consent_id().unwrap_or("").to_owned(),
            report_id: alert.report_id.to_owned(),
            subject_pseudonym: alert.subject_pseudonym.to_owned(),
            case_ref: alert.case_ref.to_owned(),
            payload: alert.payload.to_owned(),
            created_at: to_ms(alert.now),
        });
        seq_from_i64(seq)
    }

    async fn insert_consent(&mut self, c: &NewConsentRow<'_>) -> Result<()> {
        self.prefetched.read.forget_consents();
        sqlx::query(
            "UPDATE consents SET state = 'superseded', changed_at = ?
             WHERE subject_key = ? AND recipient_org = ? AND purpose = ? AND state = 'active'",
        )
        .bind(to_ms(c.now))
        .bind(c.subject_key.as_str())
        .bind(c.recipient.as_str())
        .bind(c.purpose)
        .execute(&mut *self.tx)
        .await?;
        sqlx::query(
            "INSERT INTO consents (consent_id, subject_key, audit_subject, recipient_org, purpose,
                                   valid_from, valid_until, evidence_ref, notice_version, state,
                                   created_at, changed_at, covers_landlord, flows)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'active', ?, ?, ?, ?)",
        )
        .bind(c.consent_id)
        .bind(c.subject_key.as_str())
        .bind(c.audit_subject.as_str())
        .bind(c.recipient.as_str())
        .bind(c.purpose)
        .bind(to_ms(c.valid_from))
        .bind(to_ms(c.valid_until))
        .bind(c.evidence_ref)
        .bind(c.notice_version)
        .bind(to_ms(c.now))
        .bind(to_ms(c.now))
        .bind(i64::from(c.covers_landlord))
        .bind(json_list(c.flows))
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn consent_subject(
        &mut self,
        recipient: &OrgId,
        consent_id: &str,
    ) -> Result<Option<ConsentSubject>> {
        let row = sqlx::query(
            "SELECT subject_key, audit_subject, purpose, state FROM consents WHERE consent_id = ? AND recipient_org = ?",
        )
        .bind(consent_id)
        .bind(recipient.as_str())
        .fetch_optional(&mut *self.tx)
        .await?;
        row.map(|r| {
            Ok(ConsentSubject {
                subject_key: Pseudonym::from_stored(r.try_get("subject_key")?),
                audit_subject: Pseudonym::from_stored(r.try_get("audit_subject")?),
                purpose: r.try_get("purpose")?,
                state: ConsentState::parse(r.try_get("state")?)
                    .ok_or_else(|| StoreError::Corrupt("consent state".into()))?,
            })
        })
        .transpose()
    }

    async fn withdraw(
        &mut self,
        recipient: &OrgId,
        subject_key: &Pseudonym,
        purpose: &str,
        now: OffsetDateTime,
    ) -> Result<Withdrawal> {
        self.flush().await?;
        self.prefetched.read.forget_consents();
        let withdrawn: Vec<String> = sqlx::query_scalar(
            "UPDATE consents SET state = 'withdrawn', changed_at = ?
             WHERE subject_key = ? AND recipient_org = ? AND purpose = ? AND state = 'active'
             RETURNING consent_id",
        )
        .bind(to_ms(now))
        .bind(subject_key.as_str())
        .bind(recipient.as_str())
        .bind(purpose)
        .fetch_all(&mut *self.tx)
        .await?;
        // Every undelivered message under these consents: alerts to the organisation itself
        // and support notices it sent to a landlord alike.
        let purged = sqlx::query(
            "DELETE FROM alerts WHERE acked_at IS NULL AND consent_id IN
               (SELECT consent_id FROM consents
                WHERE subject_key = ? AND recipient_org = ? AND purpose = ?)",
        )
        .bind(subject_key.as_str())
        .bind(recipient.as_str())
        .bind(purpose)
        .execute(&mut *self.tx)
        .await?
        .rows_affected();
        Ok(Withdrawal {
            withdrawn,
            purged_alerts: purged,
        })
    }

    async fn ack_alerts(
        &mut self,
        recipient: &OrgId,
        up_to: u64,
        seqs: &[u64],
        now: OffsetDateTime,
    ) -> Result<u64> {
        self.flush().await?;
        let listed: Vec<i64> = seqs.iter().map(|&s| seq_to_i64(s)).collect();
        let listed = serde_json::to_string(&listed).expect("a list of integers serialises");
        let done = sqlx::query(
            "UPDATE alerts SET acked_at = ?
             WHERE recipient_org = ? AND acked_at IS NULL
               AND (seq <= ? OR seq IN (SELECT value FROM json_each(?)))",
        )
        .bind(to_ms(now))
        .bind(recipient.as_str())
        .bind(seq_to_i64(up_to))
        .bind(listed)
        .execute(&mut *self.tx)
        .await?
        .rows_affected();
        Ok(done)
    }

    async fn purge_alerts_before(&mut self, flow_id: &str, cutoff: OffsetDateTime) -> Result<u64> {
        self.flush().await?;
        Ok(
            sqlx::query("DELETE FROM alerts WHERE flow_id = ? AND created_at < ?")
                .bind(flow_id)
                .bind(to_ms(cutoff))
                .execute(&mut *self.tx)
                .await?
                .rows_affected(),
        )
    }

    async fn append_audit(&mut self, r: &AuditRecord) -> Result<u64> {
        let entry = ledger_entry(r).encode()?;
        let leaf = leaf_hash(&entry);
        if self.frontier.is_none() {
            self.frontier = Some(load_frontier(&mut self.tx).await?);
        }
        let frontier = self
            .frontier
            .as_mut()
            .ok_or_else(|| StoreError::Corrupt("ledger edge".into()))?;
        let seq = frontier.size();
        let mut completed: Vec<(u32, u64, Hash)> = Vec::with_capacity(4);
        frontier.append(leaf, |level, index, hash| {
            completed.push((level, index, *hash))
        });
        self.pending.audit.push(PendingAudit {
            seq: seq_to_i64(seq),
            at: to_ms(r.at),
            request_id: r.request_id.clone(),
            actor_org: r.actor.org.as_str().to_owned(),
            actor_role: r.actor.role.as_str(),
            actor_person: r.actor_person.clone(),
            action: r.action.clone(),
            flow_id: r.flow_id.clone(),
            outcome: r.outcome.as_str(),
            reason: r.reason.clone(),
            policy_ids: json_list(&r.policy_ids),
            subject: r.subject.as_ref().map(|s| s.as_str().to_owned()),
            fields: json_list(&r.fields),
            recipients: json_list(&r.recipients.iter().map(OrgId::as_str).collect::<Vec<_>>()),
            entry,
            leaf,
        });
        self.pending.nodes.extend(completed);
        Ok(seq)
    }

    async fn append_checkpoint(
        &mut self,
        size: u64,
        root: &Hash,
        note: &str,
        now: OffsetDateTime,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO checkpoints (size, root, note, created_at) VALUES (?, ?, ?, ?)
             ON CONFLICT (size) DO NOTHING",
        )
        .bind(seq_to_i64(size))
        .bind(root.as_slice())
        .bind(note)
        .bind(to_ms(now))
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn append_key_handover(
        &mut self,
        size: u64,
        note: &str,
        now: OffsetDateTime,
    ) -> Result<()> {
        sqlx::query("INSERT INTO key_handovers (size, note, created_at) VALUES (?, ?, ?)")
            .bind(seq_to_i64(size))
            .bind(note)
            .bind(to_ms(now))
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    async fn pseudonym_version(&mut self) -> Result<Option<u32>> {
        let v: Option<i64> =
            sqlx::query_scalar("SELECT pseudonym_version FROM key_state WHERE id = 1")
                .fetch_optional(&mut *self.tx)
                .await?;
        crate::version_from_row(v)
    }

    async fn promote_pseudonyms(&mut self, version: u32, rekey: &Rekey<'_>) -> Result<u64> {
        self.flush().await?;
        self.prefetched = Prefetched::default();
        let mut changed = 0;
        for (table, id) in [("consents", "consent_id"), ("cases", "case_ref")] {
            let rows: Vec<(String, String, String)> = sqlx::query_as(&format!(
                "SELECT {id}, subject_key, audit_subject FROM {table}"
            ))
            .fetch_all(&mut *self.tx)
            .await?;
            for (row, key, audit) in rows {
                let Some((key, audit)) = crate::rekey_row(rekey, &key, &audit)? else {
                    continue;
                };
                sqlx::query(&format!(
                    "UPDATE {table} SET subject_key = ?, audit_subject = ? WHERE {id} = ?"
                ))
                .bind(key)
                .bind(audit)
                .bind(row)
                .execute(&mut *self.tx)
                .await?;
                changed += 1;
            }
        }
        sqlx::query(
            "INSERT INTO key_state (id, pseudonym_version) VALUES (1, ?)
             ON CONFLICT (id) DO UPDATE SET pseudonym_version = excluded.pseudonym_version",
        )
        .bind(i64::from(version))
        .execute(&mut *self.tx)
        .await?;
        Ok(changed)
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        self.flush().await?;
        self.tx.commit().await?;
        Ok(())
    }
}
