//! The SQLite store: one file, WAL journal, `synchronous = FULL` so a commit survives power
//! loss. One write connection (rusqlite, synchronous; see `Writer`) serialises writers; a
//! pool of read-only sqlx connections serves subscriptions and queries concurrently.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};
use silta_core::OrgId;
use silta_core::audit::AuditRecord;
use silta_core::consent::{ConsentRecord, ConsentState};
use silta_core::policy::Permit;
use silta_core::pseudonym::Pseudonym;
use silta_core::stats::{Cell, CellKey, Month};
use silta_ledger::tree::Frontier;
use silta_ledger::{Hash, leaf_hash};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Row, Sqlite, SqliteConnection};
use time::OffsetDateTime;

use crate::ledger::ledger_entry;
use crate::stats::{self, Tally};
use crate::tail::{Tail, TailChanges};
use crate::time_conv::{from_ms, seq_from_i64, seq_to_i64, to_ms};
use crate::{
    AuditFilter, CaseRow, ConsentQuery, ConsentSubject, LedgerEntry, LedgerHead, NewAlert, NewCase,
    NewConsentRow, NewReport, Rekey, RekeyOwn, ReportPosition, Result, Store, StoreError,
    StoredAlert, StoredCheckpoint, StoredConsent, StoredReport, Withdrawal, WriteTx,
};

/// The embedded SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    write: Writer,
    read: SqlitePool,
    /// The connection that copies the WAL back into the database file (see `checkpoint_wal`).
    wal: SqlitePool,
    /// Dropped with the last clone of the store, which stops the checkpoint task.
    _alive: Arc<()>,
    /// The newest outbox messages, for subscribers that keep up (see `tail`).
    tail: Arc<Tail>,
}

/// How [`SqliteStore::open_with`] treats the database's files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SqliteOptions {
    /// Open a database whose files group or others may read or write (mode 0644 and the
    /// like). Off by default: the files hold the ledger and pseudonymised case data, and the
    /// store refuses them with the `chmod 600` that fixes it.
    pub allow_permissive_file_modes: bool,
}

impl SqliteOptions {
    /// The options with `allow_permissive_file_modes` set as given.
    pub fn allow_permissive_file_modes(mut self, allow: bool) -> Self {
        self.allow_permissive_file_modes = allow;
        self
    }
}

impl SqliteStore {
    /// Opens (creating if needed, mode 0600) the database at `path` and applies pending
    /// migrations, with the default [`SqliteOptions`]: a database file (or its `-wal`,
    /// `-shm`, `-journal`) that group or others may read or write is refused.
    pub async fn open(path: &Path) -> Result<Self> {
        Self::open_with(path, SqliteOptions::default()).await
    }

    /// [`SqliteStore::open`] with `options`.
    pub async fn open_with(path: &Path, options: SqliteOptions) -> Result<Self> {
        private_files(path, options)?;
        let base = SqliteConnectOptions::new()
            .filename(path)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let migrate = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(base.clone().create_if_missing(true))
            .await?;
        // As on PostgreSQL: a previous release started on a database a newer one migrated (a
        // rollback) ignores the migrations it does not know. Migrations are additive, so what
        // it reads and writes is still there (docs/operations.md, "Upgrades and migrations").
        let mut migrator = sqlx::migrate!("./migrations/sqlite");
        migrator.set_ignore_missing(true);
        migrator.run(&migrate).await?;
        migrate.close().await;
        let writer = open_writer(path)?;
        let tail = Arc::new(Tail::new(last_alert_seqs(&writer)?));
        let write = Arc::new(tokio::sync::Mutex::new(writer));
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
            tail,
        })
    }

    /// Opens the database named by a `sqlite://PATH` URL or a plain path.
    pub async fn open_url(url: &str) -> Result<Self> {
        Self::open_url_with(url, SqliteOptions::default()).await
    }

    /// [`SqliteStore::open_url`] with `options`.
    pub async fn open_url_with(url: &str, options: SqliteOptions) -> Result<Self> {
        let path = url.strip_prefix("sqlite://").unwrap_or(url);
        // Validate the URL form the way sqlx would, without relying on its query options.
        SqliteConnectOptions::from_str(&format!("sqlite://{path}"))?;
        Self::open_with(Path::new(path), options).await
    }
}

/// The files SQLite keeps beside the database (`-journal` only outside WAL mode).
const COMPANION_SUFFIXES: [&str; 3] = ["-wal", "-shm", "-journal"];

/// Creates the database file 0600 if it is missing, and refuses (unless `options` allow it)
/// a database or companion file that group or others may read or write. SQLite creates the
/// `-wal`, `-shm` and `-journal` files with the database file's mode, so they follow it.
fn private_files(path: &Path, options: SqliteOptions) -> Result<()> {
    if path.as_os_str().is_empty() || path == Path::new(":memory:") {
        return Ok(());
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            // An empty file is an empty SQLite database: SQLite writes its header.
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(StoreError::Setup(format!(
                    "cannot create the database file {}: {e}",
                    path.display()
                )));
            }
        }
        if options.allow_permissive_file_modes {
            return Ok(());
        }
        let mut files = vec![path.to_path_buf()];
        for suffix in COMPANION_SUFFIXES {
            let mut name = path.as_os_str().to_owned();
            name.push(suffix);
            files.push(name.into());
        }
        for file in files {
            let mode = match std::fs::metadata(&file) {
                Ok(meta) => meta.permissions().mode(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(StoreError::Setup(format!("{}: {e}", file.display())));
                }
            };
            if mode & 0o066 != 0 {
                return Err(StoreError::Setup(format!(
                    "the SQLite file {path} has mode {mode:04o}: group or others may read or \
                     write the ledger and case data. Fix it with `chmod 600 {path}` (and the \
                     same for any -wal, -shm or -journal file beside it), or set \
                     store.allow_permissive_file_modes = true to accept it",
                    path = file.display(),
                    mode = mode & 0o7777,
                )));
            }
        }
    }
    #[cfg(not(unix))]
    let _ = options;
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    async fn begin(&self) -> Result<Box<dyn WriteTx>> {
        // As long as sqlx's pool waited for a connection: a writer stuck longer (a hung disk)
        // makes the others answer UNAVAILABLE rather than queue for ever.
        let conn = tokio::time::timeout(WRITER_WAIT, Arc::clone(&self.write).lock_owned())
            .await
            .map_err(|_| StoreError::WriterBusy(WRITER_WAIT))?;
        off_runtime(|| {
            if !conn.is_autocommit() {
                // A rollback that failed when its transaction was dropped: finish it first.
                conn.execute_batch("ROLLBACK")?;
            }
            // IMMEDIATE takes the write lock at once: a transaction that read first and wrote
            // later would fail if another process (`silta keys promote`) wrote in between.
            conn.execute_batch("BEGIN IMMEDIATE")
        })?;
        Ok(Box::new(SqliteTx {
            conn,
            open: true,
            frontier: None,
            alert_seqs: HashMap::new(),
            tail: Arc::clone(&self.tail),
            tail_changes: TailChanges::default(),
            tally: Tally::default(),
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

    async fn retention_due(&self, due: crate::Due<'_>) -> Result<crate::KindCount> {
        let (sql, times, flow) = due.query();
        let mut q = sqlx::query_as::<_, (i64, Option<i64>, i64)>(sql);
        for t in times {
            q = q.bind(t);
        }
        if let Some(flow) = flow {
            q = q.bind(flow);
        }
        let (rows, oldest, due) = q.fetch_one(&self.read).await?;
        crate::kind_count(rows, oldest, due)
    }

    async fn consent(&self, recipient: &OrgId, consent_id: &str) -> Result<Option<StoredConsent>> {
        let row = sqlx::query(&format!(
            "SELECT {} FROM consents WHERE consent_id = ? AND recipient_org = ?",
            crate::CONSENT_COLUMNS
        ))
        .bind(consent_id)
        .bind(recipient.as_str())
        .fetch_optional(&self.read)
        .await?;
        row.as_ref().map(stored_consent_from_row).transpose()
    }

    async fn list_consents(
        &self,
        recipient: &OrgId,
        q: &ConsentQuery<'_>,
    ) -> Result<Vec<StoredConsent>> {
        let rows = sqlx::query(&format!(
            "SELECT {} FROM consents WHERE {}",
            crate::CONSENT_COLUMNS,
            crate::LIST_CONSENTS_WHERE
        ))
        .bind(recipient.as_str())
        .bind(q.subject_pseudonym.unwrap_or(""))
        .bind(q.after.unwrap_or(""))
        .bind(crate::status_filter(q.status))
        .bind(to_ms(q.now))
        .bind(to_ms(q.expiring_before))
        .bind(i64::from(q.limit))
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(stored_consent_from_row).collect()
    }

    async fn outbox_flows(&self) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(crate::OUTBOX_FLOWS)
            .fetch_all(&self.read)
            .await?)
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

    fn synchronous_writes(&self) -> bool {
        true
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
        if let Some(page) = self.tail.pending(
            org.as_str(),
            after,
            usize::try_from(limit).unwrap_or(usize::MAX),
        ) {
            return Ok(page);
        }
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

    async fn stat_cells(&self, until: Month) -> Result<Vec<Cell>> {
        let rows = sqlx::query(
            "SELECT month, measure, flow_id, landlord_org, recipient_org, category, n
             FROM stat_cells WHERE month <= ?
             ORDER BY month, measure, flow_id, landlord_org, recipient_org, category",
        )
        .bind(until.to_string())
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                stats::stored_cell(
                    &r.try_get::<String, _>(0)?,
                    &r.try_get::<String, _>(1)?,
                    r.try_get(2)?,
                    r.try_get(3)?,
                    r.try_get(4)?,
                    r.try_get(5)?,
                    r.try_get(6)?,
                )
            })
            .collect()
    }

    async fn close(&self) {
        self.read.close().await;
        self.wal.close().await;
    }
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

/// The write connection. SQLite has one writer at a time, so silta keeps one connection for
/// every write and lends it to one transaction at a time.
///
/// It is a synchronous rusqlite connection rather than a sqlx one: sqlx runs each SQLite
/// statement on a worker thread of its own, so every statement cost two thread switches, and a
/// group commit spent more time handing work between threads than in SQLite
/// (docs/performance.md). Here statements run on the caller's thread from a cache of prepared
/// statements. The group committer has a thread of its own; the other writers (enrolment,
/// withdrawal, checkpoints, retention) wait for the lock and the fsync off the async workers
/// (see [`off_runtime`]).
type Writer = Arc<tokio::sync::Mutex<rusqlite::Connection>>;

/// How long a writer waits for the write connection.
const WRITER_WAIT: Duration = Duration::from_secs(30);

/// Opens the write connection with the settings every commit relies on.
fn open_writer(path: &Path) -> Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(10))?;
    // The page cache is 8 MiB rather than SQLite's 2 MiB, so that more of the indexes a commit
    // touches (random pseudonyms, time-ordered ids) stay in memory as the file grows. Not more:
    // at the end of every transaction SQLite walks the cache's hash table, and at 64 MiB that
    // walk was an eighth of the committer's time (docs/performance.md). The automatic WAL
    // checkpoint is explained at `checkpoint_wal`.
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;
         PRAGMA cache_size = -8192;
         PRAGMA wal_autocheckpoint = 10000;
         PRAGMA secure_delete = ON;",
    )?;
    // Every statement the write path runs, with room to spare.
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Runs `f`, which may wait (for a write lock another process holds, or for an fsync), without
/// stalling an async worker: on a multi-threaded runtime's worker, the worker's other tasks move
/// to another thread meanwhile. Elsewhere (the committer's own thread, a single-threaded
/// runtime) it runs `f` directly.
fn off_runtime<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

struct SqliteTx {
    /// The write connection, inside `BEGIN IMMEDIATE` until `open` is false.
    conn: tokio::sync::OwnedMutexGuard<rusqlite::Connection>,
    open: bool,
    /// The ledger's right edge, read on the first append of this transaction and advanced in
    /// memory; dropped with the transaction, so a rollback leaves nothing stale.
    frontier: Option<Frontier>,
    /// Each recipient's last alert sequence number as this transaction left it, read on its
    /// first alert and advanced in memory; written back at commit. One plain read per
    /// recipient and batch instead of an upsert with `RETURNING` per alert (SQLite builds a
    /// temporary table for every `RETURNING`). Only `insert_alert` touches the table, and the
    /// write lock is held, so nothing else can see or change it meanwhile.
    alert_seqs: HashMap<String, i64>,
    /// The store's tail of newest messages, and what this transaction does to it once
    /// committed.
    tail: Arc<Tail>,
    tail_changes: TailChanges,
    /// Statistics counted in this transaction, written at commit.
    tally: Tally,
}

impl Drop for SqliteTx {
    fn drop(&mut self) {
        // Not committed (an error, or a caller that gave up): nothing of it stays. A COMMIT that
        // failed on an I/O error may have rolled back already; then there is nothing to do.
        if self.open
            && !self.conn.is_autocommit()
            && let Err(e) = self.conn.execute_batch("ROLLBACK")
        {
            tracing::warn!(error = %e, "rollback failed; the next transaction retries it");
        }
    }
}

/// A consent row as read, before its columns are checked.
type RawConsent = (String, String, String, i64, i64, String, i64, String);

/// A resident's consents for a purpose, in the columns `raw_consent` reads. A constant: the
/// statement cache is keyed by the text, which was formatted anew for every report.
const CONSENTS_FOR: &str =
    "SELECT consent_id, recipient_org, purpose, valid_from, valid_until, state,
                                   covers_landlord, flows
                            FROM consents WHERE subject_key = ? AND purpose = ?";

fn raw_consent(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawConsent> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
    ))
}

fn consent_record(raw: RawConsent) -> Result<ConsentRecord> {
    let (consent_id, org, purpose, valid_from, valid_until, state, covers_landlord, flows) = raw;
    Ok(ConsentRecord {
        consent_id,
        recipient: OrgId::new(&org)
            .map_err(|e| StoreError::Corrupt(format!("consent recipient: {e}")))?,
        purpose,
        valid_from: from_ms(valid_from)?,
        valid_until: from_ms(valid_until)?,
        state: ConsentState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt("consent state".into()))?,
        covers_landlord: covers_landlord != 0,
        flows: serde_json::from_str(&flows)
            .map_err(|e| StoreError::Corrupt(format!("consent flows: {e}")))?,
    })
}

/// A consent read through the read pool, in `CONSENT_COLUMNS`.
fn stored_consent_from_row(r: &sqlx::sqlite::SqliteRow) -> Result<StoredConsent> {
    let record = consent_record((
        r.try_get(0)?,
        r.try_get(1)?,
        r.try_get(2)?,
        r.try_get(3)?,
        r.try_get(4)?,
        r.try_get(5)?,
        r.try_get(6)?,
        r.try_get(7)?,
    ))?;
    crate::stored_consent(
        record,
        r.try_get(8)?,
        r.try_get(9)?,
        r.try_get(10)?,
        r.try_get(11)?,
        r.try_get(12)?,
        r.try_get(13)?,
        r.try_get(14)?,
    )
}

/// Each recipient's last committed sequence number, for the tail to start from.
fn last_alert_seqs(conn: &rusqlite::Connection) -> Result<Vec<(String, u64)>> {
    let rows = conn
        .prepare("SELECT recipient_org, last_seq FROM alert_sequences")?
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.into_iter()
        .map(|(org, last)| Ok((org, seq_from_i64(last)?)))
        .collect()
}

/// Reads the ledger's size and right edge on the write connection: O(log n) indexed reads.
fn writer_frontier(conn: &rusqlite::Connection) -> Result<Frontier> {
    let size: i64 = conn
        .prepare_cached("SELECT COALESCE(MAX(seq) + 1, 0) FROM audit")?
        .query_row([], |r| r.get(0))?;
    let size = seq_from_i64(size)?;
    let mut node =
        conn.prepare_cached("SELECT hash FROM ledger_nodes WHERE level = ? AND idx = ?")?;
    let mut edge = Vec::new();
    for (level, index) in Frontier::edge_nodes(size) {
        let hash: Vec<u8> = node
            .query_row(params![i64::from(level), seq_to_i64(index)], |r| r.get(0))
            .optional()?
            .ok_or_else(|| {
                StoreError::Corrupt(format!("ledger node ({level}, {index}) is missing"))
            })?;
        edge.push(
            Hash::try_from(hash.as_slice())
                .map_err(|_| StoreError::Corrupt("ledger node is not 32 bytes".into()))?,
        );
    }
    Frontier::from_edge(size, &edge).ok_or_else(|| StoreError::Corrupt("ledger edge".into()))
}

/// Adds to a statistics counter, creating it at zero.
const UPSERT_CELL: &str = "INSERT INTO stat_cells (month, measure, flow_id, landlord_org,
                                        recipient_org, category, n)
     VALUES (?, ?, ?, ?, ?, ?, ?)
     ON CONFLICT (month, measure, flow_id, landlord_org, recipient_org, category)
     DO UPDATE SET n = n + excluded.n";

fn upsert_cell(st: &mut rusqlite::CachedStatement<'_>, c: &Cell) -> Result<()> {
    let k = &c.key;
    st.execute(params![
        k.month.to_string(),
        k.measure.as_str(),
        k.flow,
        k.landlord,
        k.recipient,
        k.category,
        c.n
    ])?;
    Ok(())
}

fn json_list<T: AsRef<str>>(items: &[T]) -> String {
    let v: Vec<&str> = items.iter().map(AsRef::as_ref).collect();
    // A list of strings always serialises.
    serde_json::to_string(&v).expect("a list of strings serialises")
}

fn changed(n: usize) -> u64 {
    // A count of rows always fits.
    u64::try_from(n).unwrap_or(u64::MAX)
}

#[async_trait]
impl WriteTx for SqliteTx {
    async fn find_report(
        &mut self,
        landlord: &OrgId,
        idempotency_key: &str,
    ) -> Result<Option<StoredReport>> {
        let row = self
            .conn
            .prepare_cached(
                "SELECT report_id, fingerprint, received_at FROM reports
                 WHERE landlord_org = ? AND idempotency_key = ?",
            )?
            .query_row(params![landlord.as_str(), idempotency_key], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?, r.get(2)?))
            })
            .optional()?;
        row.map(|(report_id, fingerprint, at)| {
            Ok(StoredReport {
                report_id,
                fingerprint,
                received_at: from_ms(at)?,
            })
        })
        .transpose()
    }

    async fn insert_report(&mut self, report: &NewReport<'_>) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO reports (report_id, landlord_org, idempotency_key, fingerprint,
                                      received_at)
                 VALUES (?, ?, ?, ?, ?)",
            )?
            .execute(params![
                report.report_id,
                report.landlord.as_str(),
                report.idempotency_key,
                report.fingerprint,
                to_ms(report.received_at),
            ])?;
        Ok(())
    }

    async fn consents_for(
        &mut self,
        subject_key: &Pseudonym,
        purpose: &str,
    ) -> Result<Vec<ConsentRecord>> {
        let mut st = self.conn.prepare_cached(CONSENTS_FOR)?;
        let raw = st
            .query_map(params![subject_key.as_str(), purpose], raw_consent)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        raw.into_iter().map(consent_record).collect()
    }

    async fn case_ref(&mut self, c: &NewCase<'_>) -> Result<String> {
        // Read first, insert only a new case: an upsert would rewrite the existing row, and
        // every rewritten page is another page for the commit to write to the WAL. The write
        // lock is held, so nothing comes between the two.
        let key = params![
            c.landlord.as_str(),
            c.tenancy_ref,
            c.recipient.as_str(),
            c.subject_key.as_str(),
        ];
        let known: Option<(String, i64)> = self
            .conn
            .prepare_cached(
                "SELECT case_ref, last_message_at FROM cases
                 WHERE landlord_org = ? AND tenancy_ref = ? AND recipient_org = ? AND subject_key = ?",
            )?
            .query_row(key, |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let now = to_ms(c.now);
        if let Some((case_ref, last)) = known {
            if last < now - crate::CASE_TOUCH_MS {
                // Retention counts from the last message on a case.
                self.conn
                    .prepare_cached("UPDATE cases SET last_message_at = ? WHERE case_ref = ?")?
                    .execute(params![now, case_ref])?;
            }
            return Ok(case_ref);
        }
        self.conn
            .prepare_cached(
                "INSERT INTO cases (case_ref, landlord_org, tenancy_ref, recipient_org, subject_key,
                                    audit_subject, created_at, last_message_at)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            )?
            .execute(params![
                c.new_ref,
                c.landlord.as_str(),
                c.tenancy_ref,
                c.recipient.as_str(),
                c.subject_key.as_str(),
                c.audit_subject.as_str(),
                now,
                now,
            ])?;
        Ok(c.new_ref.to_owned())
    }

    async fn insert_alert(&mut self, permit: &Permit, alert: &NewAlert<'_>) -> Result<u64> {
        let recipient = permit.recipient().as_str();
        let seq = match self.alert_seqs.get_mut(recipient) {
            Some(last) => {
                *last += 1;
                *last
            }
            None => {
                let last: i64 = self
                    .conn
                    .prepare_cached("SELECT last_seq FROM alert_sequences WHERE recipient_org = ?")?
                    .query_row(params![recipient], |r| r.get(0))
                    .optional()?
                    .unwrap_or(0);
                self.alert_seqs.insert(recipient.to_owned(), last + 1);
                last + 1
            }
        };
        self.conn
            .prepare_cached(
                "INSERT INTO alerts (alert_id, recipient_org, seq, flow_id, purpose, legal_basis,
                                     consent_id, report_id, subject_pseudonym, case_ref, payload,
                                     created_at, sender_org)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )?
            .execute(params![
                alert.alert_id,
                recipient,
                seq,
                alert.flow_id,
                alert.purpose,
                alert.legal_basis,
                permit.consent_id().unwrap_or(""),
                alert.report_id,
                alert.subject_pseudonym,
                alert.case_ref,
                alert.payload,
                to_ms(alert.now),
                alert.sender.as_str(),
            ])?;
        let seq = seq_from_i64(seq)?;
        self.tail_changes.added(
            recipient,
            StoredAlert {
                seq,
                alert_id: alert.alert_id.to_owned(),
                flow_id: alert.flow_id.to_owned(),
                purpose: alert.purpose.to_owned(),
                legal_basis: alert.legal_basis.to_owned(),
                consent_id: permit.consent_id().unwrap_or("").to_owned(),
                subject_pseudonym: alert.subject_pseudonym.to_owned(),
                case_ref: alert.case_ref.to_owned(),
                payload: alert.payload.to_owned(),
            },
        );
        Ok(seq)
    }

    async fn insert_consent(&mut self, c: &NewConsentRow<'_>) -> Result<()> {
        let superseded = self
            .conn
            .prepare_cached(
                "UPDATE consents SET state = 'superseded', changed_at = ?
                 WHERE subject_key = ? AND recipient_org = ? AND purpose = ? AND state = 'active'
                 RETURNING valid_until",
            )?
            .query_map(
                params![
                    to_ms(c.now),
                    c.subject_key.as_str(),
                    c.recipient.as_str(),
                    c.purpose,
                ],
                |r| r.get::<_, i64>(0),
            )?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        for until in superseded {
            stats::consent_ended(
                &mut self.tally,
                c.recipient.as_str(),
                from_ms(until)?,
                c.now,
            );
        }
        stats::consent_recorded(&mut self.tally, c.recipient.as_str(), c.valid_until);
        self.conn
            .prepare_cached(
                "INSERT INTO consents (consent_id, subject_key, audit_subject, recipient_org,
                                       purpose, valid_from, valid_until, evidence_ref,
                                       notice_version, state, created_at, changed_at,
                                       covers_landlord, flows, subject_pseudonym,
                                       renews_consent_id)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'active', ?, ?, ?, ?, ?, ?)",
            )?
            .execute(params![
                c.consent_id,
                c.subject_key.as_str(),
                c.audit_subject.as_str(),
                c.recipient.as_str(),
                c.purpose,
                to_ms(c.valid_from),
                to_ms(c.valid_until),
                c.evidence_ref,
                c.notice_version,
                to_ms(c.now),
                to_ms(c.now),
                i64::from(c.covers_landlord),
                json_list(c.flows),
                c.subject_pseudonym.as_str(),
                c.renews.unwrap_or(""),
            ])?;
        Ok(())
    }

    async fn consent_subject(
        &mut self,
        recipient: &OrgId,
        consent_id: &str,
    ) -> Result<Option<ConsentSubject>> {
        let row = self
            .conn
            .prepare_cached(
                "SELECT subject_key, audit_subject, purpose, state FROM consents
                 WHERE consent_id = ? AND recipient_org = ?",
            )?
            .query_row(params![consent_id, recipient.as_str()], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })
            .optional()?;
        row.map(|(key, audit, purpose, state)| {
            Ok(ConsentSubject {
                subject_key: Pseudonym::from_stored(key),
                audit_subject: Pseudonym::from_stored(audit),
                purpose,
                state: ConsentState::parse(&state)
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
        // Possibly many rows: off the async worker, as a commit is.
        off_runtime(|| -> Result<Withdrawal> {
            let ended = self
                .conn
                .prepare_cached(
                    "UPDATE consents SET state = 'withdrawn', changed_at = ?
                     WHERE subject_key = ? AND recipient_org = ? AND purpose = ? AND state = 'active'
                     RETURNING consent_id, valid_until",
                )?
                .query_map(
                    params![
                        to_ms(now),
                        subject_key.as_str(),
                        recipient.as_str(),
                        purpose
                    ],
                    |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut withdrawn = Vec::with_capacity(ended.len());
            for (id, until) in ended {
                stats::consent_ended(&mut self.tally, recipient.as_str(), from_ms(until)?, now);
                withdrawn.push(id);
            }
            // Every undelivered message under these consents: alerts to the organisation itself
            // and support notices it sent to a landlord alike. Found in the index of undelivered
            // alerts, which carries the consent id (schema v5), without reading the table.
            let purged = self
                .conn
                .prepare_cached(
                    "DELETE FROM alerts INDEXED BY alerts_pending
                     WHERE acked_at IS NULL AND consent_id IN
                       (SELECT consent_id FROM consents
                        WHERE subject_key = ? AND recipient_org = ? AND purpose = ?)",
                )?
                .execute(params![subject_key.as_str(), recipient.as_str(), purpose])?;
            if purged > 0 {
                // Forgotten in memory before the commit, for every recipient: none may be
                // sent from there once the rows are gone.
                self.tail.clear_all();
                self.tail_changes.purged();
            }
            Ok(Withdrawal {
                withdrawn,
                purged_alerts: changed(purged),
            })
        })
    }

    async fn ack_alerts(
        &mut self,
        recipient: &OrgId,
        up_to: u64,
        seqs: &[u64],
        now: OffsetDateTime,
    ) -> Result<u64> {
        // Possibly many rows: off the async worker, as a commit is.
        off_runtime(|| -> Result<u64> {
            let listed: Vec<i64> = seqs.iter().map(|&s| seq_to_i64(s)).collect();
            let listed = serde_json::to_string(&listed).expect("a list of integers serialises");
            // Each alert's flow, sender and age, for the statistics of delays; a support notice
            // (to a landlord: no pseudonym) is acknowledged but not counted as an alert.
            let done = self
                .conn
                .prepare_cached(
                    "UPDATE alerts SET acked_at = ?
                     WHERE recipient_org = ? AND acked_at IS NULL
                       AND (seq <= ? OR seq IN (SELECT value FROM json_each(?)))
                     RETURNING flow_id, sender_org, created_at, subject_pseudonym <> ''",
                )?
                .query_map(
                    params![to_ms(now), recipient.as_str(), seq_to_i64(up_to), listed],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, i64>(2)?,
                            r.get::<_, bool>(3)?,
                        ))
                    },
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            for (flow, sender, created, is_alert) in &done {
                if *is_alert {
                    stats::alert_acked(
                        &mut self.tally,
                        flow,
                        sender,
                        recipient.as_str(),
                        from_ms(*created)?,
                        now,
                    );
                }
            }
            self.tail_changes.acked(recipient.as_str(), up_to, seqs);
            Ok(changed(done.len()))
        })
    }

    async fn purge_alerts_before(
        &mut self,
        flow_id: &str,
        cutoff: OffsetDateTime,
        limit: u32,
    ) -> Result<u64> {
        // Possibly many rows: off the async worker, as a commit is.
        off_runtime(|| -> Result<u64> {
            let purged = self
                .conn
                .prepare_cached(
                    "DELETE FROM alerts WHERE id IN (
                         SELECT id FROM alerts WHERE flow_id = ? AND created_at < ?
                         ORDER BY created_at LIMIT ?)",
                )?
                .execute(params![flow_id, to_ms(cutoff), limit])?;
            if purged > 0 {
                // Forgotten in memory before the commit: none may be sent from there.
                self.tail.clear_all();
                self.tail_changes.purged();
            }
            Ok(changed(purged))
        })
    }

    async fn purge_reports_before(
        &mut self,
        cutoff: OffsetDateTime,
        from: Option<&ReportPosition>,
        scan: u32,
    ) -> Result<(u64, Option<ReportPosition>)> {
        off_runtime(|| {
            // Any real key sorts after ("", ""): organisation ids are never empty.
            let (landlord, key) = from.map_or(("", ""), |p| (p.landlord.as_str(), p.key.as_str()));
            let end: Option<(String, String)> = self
                .conn
                .prepare_cached(
                    "SELECT landlord_org, idempotency_key FROM reports
                     WHERE (landlord_org, idempotency_key) > (?, ?)
                     ORDER BY landlord_org, idempotency_key LIMIT 1 OFFSET ?",
                )?
                .query_row(params![landlord, key, scan.saturating_sub(1)], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()?;
            let deleted = match &end {
                Some((end_landlord, end_key)) => self
                    .conn
                    .prepare_cached(
                        "DELETE FROM reports
                         WHERE (landlord_org, idempotency_key) > (?, ?)
                           AND (landlord_org, idempotency_key) <= (?, ?)
                           AND received_at < ?",
                    )?
                    .execute(params![landlord, key, end_landlord, end_key, to_ms(cutoff)])?,
                None => self
                    .conn
                    .prepare_cached(
                        "DELETE FROM reports
                         WHERE (landlord_org, idempotency_key) > (?, ?) AND received_at < ?",
                    )?
                    .execute(params![landlord, key, to_ms(cutoff)])?,
            };
            Ok((
                changed(deleted),
                end.map(|(landlord, key)| ReportPosition { landlord, key }),
            ))
        })
    }

    async fn purge_consents_ended_before(
        &mut self,
        cutoff: OffsetDateTime,
        limit: u32,
    ) -> Result<u64> {
        off_runtime(|| {
            let deleted = self
                .conn
                .prepare_cached(
                    "DELETE FROM consents WHERE consent_id IN (
                         SELECT consent_id FROM consents
                         WHERE (state <> 'active' AND changed_at < ?1)
                            OR (state = 'active' AND valid_until < ?1)
                         LIMIT ?2)",
                )?
                .execute(params![to_ms(cutoff), limit])?;
            Ok(changed(deleted))
        })
    }

    async fn purge_cases(
        &mut self,
        idle_cutoff: OffsetDateTime,
        ended_cutoff: OffsetDateTime,
        limit: u32,
    ) -> Result<u64> {
        off_runtime(|| {
            let deleted = self
                .conn
                .prepare_cached(crate::PURGE_CASES)?
                .execute(params![to_ms(idle_cutoff), to_ms(ended_cutoff), limit])?;
            Ok(changed(deleted))
        })
    }

    async fn append_audit(&mut self, r: &AuditRecord) -> Result<u64> {
        let entry = ledger_entry(r);
        stats::count_entry(&entry, |key, n| self.tally.add(key, n));
        let entry = entry.encode()?;
        let leaf = leaf_hash(&entry);
        if self.frontier.is_none() {
            self.frontier = Some(writer_frontier(&self.conn)?);
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
        self.conn
            .prepare_cached(
                "INSERT INTO audit (seq, at, request_id, actor_org, actor_role, actor_person,
                                    action, flow_id, outcome, reason, policy_ids, subject, fields,
                                    recipients, entry, leaf_hash)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )?
            .execute(params![
                seq_to_i64(seq),
                to_ms(r.at),
                r.request_id,
                r.actor.org.as_str(),
                r.actor.role.as_str(),
                r.actor_person,
                r.action,
                r.flow_id,
                r.outcome.as_str(),
                r.reason,
                json_list(&r.policy_ids),
                r.subject.as_ref().map(Pseudonym::as_str),
                json_list(&r.fields),
                json_list(&r.recipients.iter().map(OrgId::as_str).collect::<Vec<_>>()),
                entry,
                leaf.as_slice(),
            ])?;
        let mut node = self
            .conn
            .prepare_cached("INSERT INTO ledger_nodes (level, idx, hash) VALUES (?, ?, ?)")?;
        for (level, index, hash) in completed {
            node.execute(params![
                i64::from(level),
                seq_to_i64(index),
                hash.as_slice()
            ])?;
        }
        Ok(seq)
    }

    async fn append_checkpoint(
        &mut self,
        size: u64,
        root: &Hash,
        note: &str,
        now: OffsetDateTime,
    ) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO checkpoints (size, root, note, created_at) VALUES (?, ?, ?, ?)
                 ON CONFLICT (size) DO NOTHING",
            )?
            .execute(params![seq_to_i64(size), root.as_slice(), note, to_ms(now)])?;
        Ok(())
    }

    async fn append_key_handover(
        &mut self,
        size: u64,
        note: &str,
        now: OffsetDateTime,
    ) -> Result<()> {
        self.conn
            .prepare_cached("INSERT INTO key_handovers (size, note, created_at) VALUES (?, ?, ?)")?
            .execute(params![seq_to_i64(size), note, to_ms(now)])?;
        Ok(())
    }

    async fn pseudonym_version(&mut self) -> Result<Option<u32>> {
        let v: Option<i64> = self
            .conn
            .prepare_cached("SELECT pseudonym_version FROM key_state WHERE id = 1")?
            .query_row([], |r| r.get(0))
            .optional()?;
        crate::version_from_row(v)
    }

    async fn promote_pseudonyms(
        &mut self,
        version: u32,
        rekey: &Rekey<'_>,
        rekey_own: &RekeyOwn<'_>,
    ) -> Result<u64> {
        // Possibly many rows: off the async worker, as a commit is.
        off_runtime(|| -> Result<u64> {
            let mut changed = 0;
            for (table, id) in [("consents", "consent_id"), ("cases", "case_ref")] {
                let rows = self
                    .conn
                    .prepare(&format!(
                        "SELECT {id}, subject_key, audit_subject FROM {table}"
                    ))?
                    .query_map([], |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                        ))
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                let mut update = self.conn.prepare(&format!(
                    "UPDATE {table} SET subject_key = ?, audit_subject = ? WHERE {id} = ?"
                ))?;
                for (row, key, audit) in rows {
                    let Some((key, audit)) = crate::rekey_row(rekey, &key, &audit)? else {
                        continue;
                    };
                    update.execute(params![key, audit, row])?;
                    changed += 1;
                }
            }
            let owned = self
                .conn
                .prepare(
                    "SELECT consent_id, recipient_org, subject_pseudonym FROM consents
                     WHERE subject_pseudonym <> ''",
                )?
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut update = self
                .conn
                .prepare("UPDATE consents SET subject_pseudonym = ? WHERE consent_id = ?")?;
            for (id, recipient, own) in owned {
                if let Some(own) = crate::rekey_own_row(rekey_own, &recipient, &own)? {
                    update.execute(params![own, id])?;
                    changed += 1;
                }
            }
            drop(update);
            self.conn.execute(
                "INSERT INTO key_state (id, pseudonym_version) VALUES (1, ?)
                 ON CONFLICT (id) DO UPDATE SET pseudonym_version = excluded.pseudonym_version",
                params![i64::from(version)],
            )?;
            Ok(changed)
        })
    }

    fn count(&mut self, key: CellKey, n: i64) {
        self.tally.add(key, n);
    }

    async fn first_notice(
        &mut self,
        recipient: &OrgId,
        case_ref: &str,
        now: OffsetDateTime,
    ) -> Result<Option<OffsetDateTime>> {
        let opened: Option<i64> = self
            .conn
            .prepare_cached(
                "UPDATE cases SET first_notice_at = ?
                 WHERE case_ref = ? AND recipient_org = ? AND first_notice_at IS NULL
                 RETURNING created_at",
            )?
            .query_row(params![to_ms(now), case_ref, recipient.as_str()], |r| {
                r.get(0)
            })
            .optional()?;
        opened.map(from_ms).transpose()
    }

    async fn ledger_size(&mut self) -> Result<u64> {
        let size: i64 = self
            .conn
            .prepare_cached("SELECT COALESCE(MAX(seq) + 1, 0) FROM audit")?
            .query_row([], |r| r.get(0))?;
        seq_from_i64(size)
    }

    async fn replace_ledger_stats(&mut self, cells: &[Cell]) -> Result<()> {
        off_runtime(|| -> Result<()> {
            let measures = json_list(&stats::ledger_measures());
            self.conn
                .prepare(
                    "DELETE FROM stat_cells WHERE measure IN (SELECT value FROM json_each(?))",
                )?
                .execute(params![measures])?;
            let mut st = self.conn.prepare_cached(UPSERT_CELL)?;
            for c in cells {
                upsert_cell(&mut st, c)?;
            }
            Ok(())
        })
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        let cells = self.tally.drain();
        if !cells.is_empty() {
            let mut st = self.conn.prepare_cached(UPSERT_CELL)?;
            for c in &cells {
                upsert_cell(&mut st, c)?;
            }
        }
        if !self.alert_seqs.is_empty() {
            let mut st = self.conn.prepare_cached(
                "INSERT INTO alert_sequences (recipient_org, last_seq) VALUES (?, ?)
                 ON CONFLICT (recipient_org) DO UPDATE SET last_seq = excluded.last_seq",
            )?;
            for (recipient, last) in &self.alert_seqs {
                st.execute(params![recipient, last])?;
            }
        }
        // The fsync: a commit returns once the transaction is on disk.
        off_runtime(|| self.conn.execute_batch("COMMIT"))?;
        self.open = false;
        // Still holding the write lock: no purge can come between the commit and this.
        self.tail.apply(std::mem::take(&mut self.tail_changes));
        Ok(())
    }
}
