//! The PostgreSQL store: several gateway nodes share one database, one ledger and one
//! delivery state.
//!
//! **Ledger order across nodes.** Every write transaction first takes one transaction-level
//! advisory lock (`pg_advisory_xact_lock`), so write transactions are serialised across all
//! nodes exactly as SQLite's single writer serialises them in one process: the ledger stays
//! one gap-free sequence and its right edge, read inside the lock, is always current. Each
//! node's group committer puts many requests into one transaction, so the lock is taken once
//! per batch, not per request.
//!
//! **Wake-ups across nodes.** A transaction that puts messages in an outbox sends
//! `NOTIFY silta_outbox, '<org> <seq>'`, delivered when it commits. Each node listens and wakes
//! its own subscribers of that organisation; the table stays the truth (subscriptions also
//! re-poll), so a lost notification only delays a delivery.

use std::sync::Arc;

use async_trait::async_trait;
use silta_core::OrgId;
use silta_core::audit::AuditRecord;
use silta_core::consent::{ConsentRecord, ConsentState};
use silta_core::policy::Permit;
use silta_core::pseudonym::Pseudonym;
use silta_core::stats::{Cell, CellKey, Month};
use silta_ledger::tree::Frontier;
use silta_ledger::{Hash, leaf_hash};
use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPool, PgPoolOptions};
use sqlx::{Postgres, Row, Transaction};
use time::OffsetDateTime;

use crate::ledger::ledger_entry;
use crate::postgres_roles::{self, Migrated};
use crate::read_ahead::ReadAhead;
use crate::stats::{self, Tally};
use crate::time_conv::{from_ms, seq_from_i64, seq_to_i64, to_ms};
use crate::{
    AuditFilter, CaseRow, ConsentQuery, ConsentSubject, LedgerEntry, LedgerHead, Lookups, NewAlert,
    NewCase, NewConsentRow, NewReport, Rekey, RekeyOwn, ReportPosition, Result, Store, StoreError,
    StoredAlert, StoredCheckpoint, StoredConsent, StoredReport, Wakeup, Withdrawal, WriteTx,
};

/// The advisory lock key that serialises write transactions (ASCII "silta-wr").
const WRITE_LOCK: i64 = 0x7369_6c74_612d_7772;
/// The notification channel of outbox wake-ups.
const CHANNEL: &str = "silta_outbox";

/// The PostgreSQL store.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://…`) and readies its schema: a role that
    /// owns the schema applies pending migrations (sqlx serialises concurrent migrators, so
    /// nodes may start together); any other role starts only on a current schema and with the
    /// privileges of [`crate::RUNTIME_PRIVILEGES`], and otherwise fails naming
    /// `silta db migrate` (see `postgres_roles`).
    pub async fn open(url: &str) -> Result<Self> {
        let pool = connect(url, "silta", 16).await?;
        if let Err(e) = postgres_roles::prepare_for_gateway(&pool).await {
            pool.close().await;
            return Err(e);
        }
        Ok(PostgresStore { pool })
    }

    /// [`PostgresStore::open`] for a tool that works on an existing store (`silta keys show`,
    /// `silta keys promote`): a database without silta's schema is an error, never given one.
    pub async fn open_existing(url: &str) -> Result<Self> {
        let pool = connect(url, "silta-tool", 2).await?;
        match postgres_roles::schema_exists(&pool).await {
            Ok(true) => {}
            Ok(false) => {
                pool.close().await;
                return Err(StoreError::Setup(
                    "the database holds no silta store (no schema): this command only works on \
                     an existing store and creates none"
                        .into(),
                ));
            }
            Err(e) => {
                pool.close().await;
                return Err(e);
            }
        }
        if let Err(e) = postgres_roles::prepare_for_gateway(&pool).await {
            pool.close().await;
            return Err(e);
        }
        Ok(PostgresStore { pool })
    }

    /// `silta db migrate`: connects to `owner_url` as the schema's owner, applies pending
    /// migrations and, if `runtime_role` is given, grants that role exactly the gateway's
    /// runtime privileges (creating it `NOLOGIN` if missing). See [`crate::Migrated`].
    pub async fn migrate_as_owner(owner_url: &str, runtime_role: Option<&str>) -> Result<Migrated> {
        let pool = connect(owner_url, "silta-migrate", 2).await?;
        let migrated = postgres_roles::migrate(&pool, runtime_role).await;
        pool.close().await;
        migrated
    }
}

/// A pool on `url`. Errors carry sqlx's message, which never repeats the URL's password.
async fn connect(url: &str, application: &str, max_connections: u32) -> Result<PgPool> {
    let options = PgConnectOptions::from_str(url)?
        .application_name(application)
        // A node that stalls inside a transaction (holding the write lock) is cut off, so
        // the other nodes do not wait on it for long.
        .options([("idle_in_transaction_session_timeout", "10s")]);
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect_with(options)
        .await?)
}

#[async_trait]
impl Store for PostgresStore {
    async fn begin(&self) -> Result<Box<dyn WriteTx>> {
        let mut tx = self.pool.begin().await?;
        // The ledger's order rests on READ COMMITTED: each statement after the lock sees what
        // the previous holder committed. Pinned, whatever the server's default. A lock wait
        // is bounded: a timeout fails this batch with UNAVAILABLE and callers retry.
        for setting in [
            "SET TRANSACTION ISOLATION LEVEL READ COMMITTED",
            "SET LOCAL lock_timeout = '5s'",
        ] {
            sqlx::query(setting).execute(&mut *tx).await?;
        }
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(WRITE_LOCK)
            .execute(&mut *tx)
            .await?;
        Ok(Box::new(PgTx {
            tx,
            frontier: None,
            notified: Vec::new(),
            audit: Vec::new(),
            nodes: Vec::new(),
            prefetched: ReadAhead::default(),
            tally: Tally::default(),
        }))
    }

    async fn listen(&self, wake: Wakeup) -> Result<()> {
        // On a connection of the store's pool: closing the store ends the listener too.
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(CHANNEL).await?;
        let wake: Arc<dyn Fn(&OrgId, u64) + Send + Sync> = Arc::from(wake);
        tokio::spawn(async move {
            loop {
                // `recv` reconnects by itself after a lost connection; notifications sent
                // meanwhile are lost, which the subscriptions' re-polling covers.
                match listener.recv().await {
                    Ok(n) => {
                        let mut parts = n.payload().split(' ');
                        let org = parts.next().and_then(|o| OrgId::new(o).ok());
                        let seq = parts.next().and_then(|s| s.parse::<u64>().ok());
                        if let (Some(org), Some(seq)) = (org, seq) {
                            wake(&org, seq);
                        }
                    }
                    Err(sqlx::Error::PoolClosed) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "outbox listener: reconnecting");
                        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    }
                }
            }
        });
        Ok(())
    }

    async fn find_case(&self, recipient: &OrgId, case_ref: &str) -> Result<Option<CaseRow>> {
        let row = sqlx::query(
            "SELECT landlord_org, tenancy_ref, subject_key, audit_subject FROM cases
             WHERE case_ref = $1 AND recipient_org = $2",
        )
        .bind(case_ref)
        .bind(recipient.as_str())
        .fetch_optional(&self.pool)
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
        let (rows, oldest, due) = q.fetch_one(&self.pool).await?;
        crate::kind_count(rows, oldest, due)
    }

    async fn consent(&self, recipient: &OrgId, consent_id: &str) -> Result<Option<StoredConsent>> {
        let row = sqlx::query(&format!(
            "SELECT {} FROM consents WHERE consent_id = $1 AND recipient_org = $2",
            crate::CONSENT_COLUMNS
        ))
        .bind(consent_id)
        .bind(recipient.as_str())
        .fetch_optional(&self.pool)
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
            crate::LIST_CONSENTS_WHERE.replace('?', "$")
        ))
        .bind(recipient.as_str())
        .bind(q.subject_pseudonym.unwrap_or(""))
        .bind(q.after.unwrap_or(""))
        .bind(crate::status_filter(q.status))
        .bind(to_ms(q.now))
        .bind(to_ms(q.expiring_before))
        .bind(i64::from(q.limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(stored_consent_from_row).collect()
    }

    async fn outbox_flows(&self) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(crate::OUTBOX_FLOWS)
            .fetch_all(&self.pool)
            .await?)
    }

    async fn undelivered(&self) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM alerts WHERE acked_at IS NULL")
            .fetch_one(&self.pool)
            .await?;
        seq_from_i64(n)
    }

    async fn ledger_head(&self) -> Result<LedgerHead> {
        let mut conn = self.pool.acquire().await?;
        let frontier = load_frontier(&mut conn).await?;
        Ok(LedgerHead {
            size: frontier.size(),
            root: frontier.root(),
        })
    }

    async fn latest_checkpoint(&self) -> Result<Option<StoredCheckpoint>> {
        let row = sqlx::query("SELECT size, note FROM checkpoints ORDER BY size DESC LIMIT 1")
            .fetch_optional(&self.pool)
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
             FROM alerts WHERE recipient_org = $1 AND seq > $2 AND acked_at IS NULL
             ORDER BY seq LIMIT $3",
        )
        .bind(org.as_str())
        .bind(seq_to_i64(after))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
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
            sqlx::query_scalar("SELECT note FROM checkpoints WHERE size = $1")
                .bind(seq_to_i64(size))
                .fetch_optional(&self.pool)
                .await?;
        Ok(note.map(|note| StoredCheckpoint { size, note }))
    }

    async fn key_handovers(&self) -> Result<Vec<StoredCheckpoint>> {
        let rows = sqlx::query("SELECT size, note FROM key_handovers ORDER BY size")
            .fetch_all(&self.pool)
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
        let rows = sqlx::query("SELECT size, note FROM checkpoints WHERE size <= $1 ORDER BY size")
            .bind(seq_to_i64(max_size))
            .fetch_all(&self.pool)
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
        let mut q =
            sqlx::QueryBuilder::<Postgres>::new("SELECT seq, entry FROM audit WHERE seq >= ");
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
                .push(" OR audit.recipients::jsonb ? ")
                .push_bind(org)
                .push(")");
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
            .fetch_all(&self.pool)
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
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        // One round trip for all of them: an audit page checked against the signed root
        // needs thousands of nodes, and a round trip each was most of the page's time.
        let levels: Vec<i64> = wanted.iter().map(|&(l, _)| i64::from(l)).collect();
        let indexes: Vec<i64> = wanted.iter().map(|&(_, i)| seq_to_i64(i)).collect();
        let rows: Vec<(i64, i64, Vec<u8>)> = sqlx::query_as(
            "SELECT n.level, n.idx, n.hash FROM ledger_nodes n \
             JOIN UNNEST($1::BIGINT[], $2::BIGINT[]) AS w(level, idx) \
             ON n.level = w.level AND n.idx = w.idx",
        )
        .bind(&levels)
        .bind(&indexes)
        .fetch_all(&self.pool)
        .await?;
        let found: std::collections::HashMap<(i64, i64), Vec<u8>> =
            rows.into_iter().map(|(l, i, h)| ((l, i), h)).collect();
        wanted
            .iter()
            .map(|&(level, index)| {
                let hash = found
                    .get(&(i64::from(level), seq_to_i64(index)))
                    .ok_or_else(|| {
                        StoreError::Corrupt(format!("ledger node ({level}, {index}) is missing"))
                    })?;
                Hash::try_from(hash.as_slice())
                    .map_err(|_| StoreError::Corrupt("ledger node is not 32 bytes".into()))
            })
            .collect()
    }

    async fn stat_cells(&self, until: Month) -> Result<Vec<Cell>> {
        let rows: Vec<(String, String, String, String, String, String, i64)> = sqlx::query_as(
            "SELECT month, measure, flow_id, landlord_org, recipient_org, category, n
             FROM stat_cells WHERE month <= $1
             ORDER BY month, measure, flow_id, landlord_org, recipient_org, category",
        )
        .bind(until.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(month, measure, flow, landlord, recipient, category, n)| {
                stats::stored_cell(&month, &measure, flow, landlord, recipient, category, n)
            })
            .collect()
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

/// Adds to statistics counters, creating them at zero: one statement for a whole batch.
async fn upsert_cells(tx: &mut Transaction<'static, Postgres>, cells: &[Cell]) -> Result<()> {
    if cells.is_empty() {
        return Ok(());
    }
    let column = |f: fn(&Cell) -> String| cells.iter().map(f).collect::<Vec<String>>();
    sqlx::query(
        "INSERT INTO stat_cells (month, measure, flow_id, landlord_org, recipient_org, category, n)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                              $6::text[], $7::bigint[])
         ON CONFLICT (month, measure, flow_id, landlord_org, recipient_org, category)
         DO UPDATE SET n = stat_cells.n + EXCLUDED.n",
    )
    .bind(column(|c| c.key.month.to_string()))
    .bind(column(|c| c.key.measure.as_str().to_owned()))
    .bind(column(|c| c.key.flow.clone()))
    .bind(column(|c| c.key.landlord.clone()))
    .bind(column(|c| c.key.recipient.clone()))
    .bind(column(|c| c.key.category.clone()))
    .bind(cells.iter().map(|c| c.n).collect::<Vec<i64>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

struct PgTx {
    tx: Transaction<'static, Postgres>,
    /// Outbox wake-ups to announce with this transaction.
    notified: Vec<(String, u64)>,
    /// The ledger's right edge, read on the first append of this transaction and advanced in
    /// memory; dropped with the transaction, so a rollback leaves nothing stale.
    frontier: Option<Frontier>,
    /// Ledger entries appended in this transaction, written at commit in one statement (a
    /// round trip per entry was most of a batch's time). Nothing in the transaction reads the
    /// ledger back: the frontier answers for it.
    audit: Vec<AuditRow>,
    /// The subtrees those entries completed, written with them.
    nodes: Vec<(u32, u64, Hash)>,
    /// What `prefetch` read for this transaction's batch.
    prefetched: ReadAhead,
    /// Statistics counted in this transaction, written at commit in one statement.
    tally: Tally,
}

/// An audit row waiting for commit.
struct AuditRow {
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

impl PgTx {
    /// Writes the pending ledger entries and subtrees: one statement each, whatever their
    /// number.
    async fn flush_ledger(&mut self) -> Result<()> {
        let audit = std::mem::take(&mut self.audit);
        if !audit.is_empty() {
            macro_rules! column {
                ($field:ident) => {
                    audit.iter().map(|r| r.$field.clone()).collect::<Vec<_>>()
                };
            }
            sqlx::query(
                "INSERT INTO audit (seq, at, request_id, actor_org, actor_role, actor_person,
                                    action, flow_id, outcome, reason, policy_ids, subject,
                                    fields, recipients, entry, leaf_hash)
                 SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::text[],
                                      $5::text[], $6::text[], $7::text[], $8::text[], $9::text[],
                                      $10::text[], $11::text[], $12::text[], $13::text[],
                                      $14::text[], $15::bytea[], $16::bytea[])",
            )
            .bind(column!(seq))
            .bind(column!(at))
            .bind(column!(request_id))
            .bind(column!(actor_org))
            .bind(column!(actor_role))
            .bind(column!(actor_person))
            .bind(column!(action))
            .bind(column!(flow_id))
            .bind(column!(outcome))
            .bind(column!(reason))
            .bind(column!(policy_ids))
            .bind(column!(subject))
            .bind(column!(fields))
            .bind(column!(recipients))
            .bind(column!(entry))
            .bind(audit.iter().map(|r| r.leaf.to_vec()).collect::<Vec<_>>())
            .execute(&mut *self.tx)
            .await?;
        }
        let nodes = std::mem::take(&mut self.nodes);
        if !nodes.is_empty() {
            sqlx::query(
                "INSERT INTO ledger_nodes (level, idx, hash)
                 SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::bytea[])",
            )
            .bind(nodes.iter().map(|n| i64::from(n.0)).collect::<Vec<_>>())
            .bind(nodes.iter().map(|n| seq_to_i64(n.1)).collect::<Vec<_>>())
            .bind(nodes.iter().map(|n| n.2.to_vec()).collect::<Vec<_>>())
            .execute(&mut *self.tx)
            .await?;
        }
        Ok(())
    }
}

/// Reads the ledger's size and right edge: O(log n) indexed reads.
async fn load_frontier(conn: &mut PgConnection) -> Result<Frontier> {
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

async fn read_node(conn: &mut PgConnection, level: u32, index: u64) -> Result<Hash> {
    let hash: Vec<u8> =
        sqlx::query_scalar("SELECT hash FROM ledger_nodes WHERE level = $1 AND idx = $2")
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

fn consent_from_row(r: &sqlx::postgres::PgRow) -> Result<ConsentRecord> {
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
        covers_landlord: r.try_get::<bool, _>("covers_landlord")?,
        flows: serde_json::from_str(&r.try_get::<String, _>("flows")?)
            .map_err(|e| StoreError::Corrupt(format!("consent flows: {e}")))?,
    })
}

/// A consent in `CONSENT_COLUMNS`.
fn stored_consent_from_row(r: &sqlx::postgres::PgRow) -> Result<StoredConsent> {
    crate::stored_consent(
        consent_from_row(r)?,
        r.try_get("subject_pseudonym")?,
        r.try_get("audit_subject")?,
        r.try_get("evidence_ref")?,
        r.try_get("notice_version")?,
        r.try_get("created_at")?,
        r.try_get("changed_at")?,
        r.try_get("renews_consent_id")?,
    )
}

fn json_list<T: AsRef<str>>(items: &[T]) -> String {
    let v: Vec<&str> = items.iter().map(AsRef::as_ref).collect();
    // A list of strings always serialises.
    serde_json::to_string(&v).expect("a list of strings serialises")
}

#[async_trait]
impl WriteTx for PgTx {
    async fn prefetch(&mut self, lookups: &Lookups<'_>) -> Result<()> {
        let by_landlord = self.prefetched.unread_reports(lookups);
        for (landlord, keys) in by_landlord {
            let rows = sqlx::query(
                "SELECT idempotency_key, report_id, fingerprint, received_at FROM reports
                 WHERE landlord_org = $1 AND idempotency_key = ANY($2::text[])",
            )
            .bind(landlord)
            .bind(&keys)
            // Planned for these very keys: a cached generic plan for `= ANY($2)` can fall
            // back to scanning the table.
            .persistent(false)
            .fetch_all(&mut *self.tx)
            .await?;
            for r in rows {
                let report = StoredReport {
                    report_id: r.try_get("report_id")?,
                    fingerprint: r.try_get("fingerprint")?,
                    received_at: from_ms(r.try_get("received_at")?)?,
                };
                self.prefetched
                    .found_report(landlord, r.try_get("idempotency_key")?, report);
            }
        }
        for (purpose, subjects) in self.prefetched.unread_consents(lookups) {
            let rows = sqlx::query(
                "SELECT subject_key, consent_id, recipient_org, purpose, valid_from, valid_until,
                        state, covers_landlord, flows
                 FROM consents WHERE purpose = $1 AND subject_key = ANY($2::text[])",
            )
            .bind(purpose)
            .bind(&subjects)
            .persistent(false)
            .fetch_all(&mut *self.tx)
            .await?;
            for r in rows {
                let consent = consent_from_row(&r)?;
                self.prefetched
                    .found_consent(r.try_get("subject_key")?, purpose, consent);
            }
        }
        Ok(())
    }

    async fn find_report(
        &mut self,
        landlord: &OrgId,
        idempotency_key: &str,
    ) -> Result<Option<StoredReport>> {
        if let Some(known) = self.prefetched.report(landlord.as_str(), idempotency_key) {
            return Ok(known);
        }
        let row = sqlx::query(
            "SELECT report_id, fingerprint, received_at FROM reports
             WHERE landlord_org = $1 AND idempotency_key = $2",
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
        sqlx::query(
            "INSERT INTO reports (report_id, landlord_org, idempotency_key, fingerprint, received_at)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(report.report_id)
        .bind(report.landlord.as_str())
        .bind(report.idempotency_key)
        .bind(report.fingerprint)
        .bind(to_ms(report.received_at))
        .execute(&mut *self.tx)
        .await?;
        // A prefetched "absent" must not hide it from a retry later in the batch.
        self.prefetched.found_report(
            report.landlord.as_str(),
            report.idempotency_key.to_owned(),
            StoredReport {
                report_id: report.report_id.to_owned(),
                fingerprint: report.fingerprint.to_vec(),
                received_at: report.received_at,
            },
        );
        Ok(())
    }

    async fn consents_for(
        &mut self,
        subject_key: &Pseudonym,
        purpose: &str,
    ) -> Result<Vec<ConsentRecord>> {
        if let Some(consents) = self.prefetched.consents(subject_key.as_str(), purpose) {
            return Ok(consents);
        }
        let rows = sqlx::query(
            "SELECT consent_id, recipient_org, purpose, valid_from, valid_until, state,
                    covers_landlord, flows
             FROM consents WHERE subject_key = $1 AND purpose = $2",
        )
        .bind(subject_key.as_str())
        .bind(purpose)
        .fetch_all(&mut *self.tx)
        .await?;
        rows.iter().map(consent_from_row).collect()
    }

    async fn case_ref(&mut self, c: &NewCase<'_>) -> Result<String> {
        // Insert only a new case, in one round trip: an upsert's `DO UPDATE` would write a new
        // version of the existing row for every report (a dead tuple each). Writers hold the
        // ledger's advisory lock, so nothing comes between the read and the insert.
        let row = sqlx::query(
            "WITH found AS (
                 SELECT case_ref FROM cases
                 WHERE landlord_org = $2 AND tenancy_ref = $3 AND recipient_org = $4
                   AND subject_key = $5),
             touched AS (
                 UPDATE cases SET last_message_at = $7
                 WHERE case_ref IN (SELECT case_ref FROM found)
                   AND last_message_at < $7 - $8),
             opened AS (
                 INSERT INTO cases (case_ref, landlord_org, tenancy_ref, recipient_org,
                                    subject_key, audit_subject, created_at, last_message_at)
                 SELECT $1, $2, $3, $4, $5, $6, $7, $7 WHERE NOT EXISTS (SELECT 1 FROM found)
                 RETURNING case_ref)
             SELECT case_ref FROM found UNION ALL SELECT case_ref FROM opened",
        )
        .bind(c.new_ref)
        .bind(c.landlord.as_str())
        .bind(c.tenancy_ref)
        .bind(c.recipient.as_str())
        .bind(c.subject_key.as_str())
        .bind(c.audit_subject.as_str())
        .bind(to_ms(c.now))
        // Retention counts from the last message on a case (see CASE_TOUCH_MS).
        .bind(crate::CASE_TOUCH_MS)
        .fetch_one(&mut *self.tx)
        .await?;
        Ok(row.try_get("case_ref")?)
    }

    async fn insert_alert(&mut self, permit: &Permit, alert: &NewAlert<'_>) -> Result<u64> {
        let recipient = permit.recipient().as_str();
        // The recipient's next sequence number and the alert in one statement: one round trip
        // per alert rather than two, while the batch holds the advisory lock.
        let seq: i64 = sqlx::query_scalar(
            "WITH next AS (
                 INSERT INTO alert_sequences (recipient_org, last_seq) VALUES ($2, 1)
                 ON CONFLICT (recipient_org) DO UPDATE SET last_seq = alert_sequences.last_seq + 1
                 RETURNING last_seq
             )
             INSERT INTO alerts (alert_id, recipient_org, seq, flow_id, purpose, legal_basis,
                                 consent_id, report_id, subject_pseudonym, case_ref, payload,
                                 created_at, sender_org)
             SELECT $1, $2, next.last_seq, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12 FROM next
             RETURNING seq",
        )
        .bind(alert.alert_id)
        .bind(recipient)
        .bind(alert.flow_id)
        .bind(alert.purpose)
        .bind(alert.legal_basis)
        .bind(permit.consent_id().unwrap_or(""))
        .bind(alert.report_id)
        .bind(alert.subject_pseudonym)
        .bind(alert.case_ref)
        .bind(alert.payload)
        .bind(to_ms(alert.now))
        .bind(alert.sender.as_str())
        .fetch_one(&mut *self.tx)
        .await?;
        let seq = seq_from_i64(seq)?;
        self.notified.push((recipient.to_owned(), seq));
        Ok(seq)
    }

    async fn insert_consent(&mut self, c: &NewConsentRow<'_>) -> Result<()> {
        self.prefetched.forget_consents();
        let superseded: Vec<i64> = sqlx::query_scalar(
            "UPDATE consents SET state = 'superseded', changed_at = $1
             WHERE subject_key = $2 AND recipient_org = $3 AND purpose = $4 AND state = 'active'
             RETURNING valid_until",
        )
        .bind(to_ms(c.now))
        .bind(c.subject_key.as_str())
        .bind(c.recipient.as_str())
        .bind(c.purpose)
        .fetch_all(&mut *self.tx)
        .await?;
        for until in superseded {
            stats::consent_ended(
                &mut self.tally,
                c.recipient.as_str(),
                from_ms(until)?,
                c.now,
            );
        }
        stats::consent_recorded(&mut self.tally, c.recipient.as_str(), c.valid_until);
        sqlx::query(
            "INSERT INTO consents (consent_id, subject_key, audit_subject, recipient_org, purpose,
                                   valid_from, valid_until, evidence_ref, notice_version, state,
                                   created_at, changed_at, covers_landlord, flows,
                                   subject_pseudonym, renews_consent_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'active', $10, $11, $12, $13, $14,
                     $15)",
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
        .bind(c.covers_landlord)
        .bind(json_list(c.flows))
        .bind(c.subject_pseudonym.as_str())
        .bind(c.renews.unwrap_or(""))
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
            "SELECT subject_key, audit_subject, purpose, state FROM consents WHERE consent_id = $1 AND recipient_org = $2",
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
        self.prefetched.forget_consents();
        let ended: Vec<(String, i64)> = sqlx::query_as(
            "UPDATE consents SET state = 'withdrawn', changed_at = $1
             WHERE subject_key = $2 AND recipient_org = $3 AND purpose = $4 AND state = 'active'
             RETURNING consent_id, valid_until",
        )
        .bind(to_ms(now))
        .bind(subject_key.as_str())
        .bind(recipient.as_str())
        .bind(purpose)
        .fetch_all(&mut *self.tx)
        .await?;
        let mut withdrawn = Vec::with_capacity(ended.len());
        for (id, until) in ended {
            stats::consent_ended(&mut self.tally, recipient.as_str(), from_ms(until)?, now);
            withdrawn.push(id);
        }
        // Every undelivered message under these consents: alerts to the organisation itself
        // and support notices it sent to a landlord alike.
        let purged = sqlx::query(
            "DELETE FROM alerts WHERE acked_at IS NULL AND consent_id IN
               (SELECT consent_id FROM consents
                WHERE subject_key = $1 AND recipient_org = $2 AND purpose = $3)",
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
        let listed: Vec<i64> = seqs.iter().map(|&s| seq_to_i64(s)).collect();
        // Each alert's flow, sender and age, for the statistics of delays; a support notice
        // (to a landlord: no pseudonym) is acknowledged but not counted as an alert.
        let done: Vec<(String, String, i64, bool)> = sqlx::query_as(
            "UPDATE alerts SET acked_at = $1
             WHERE recipient_org = $2 AND acked_at IS NULL
               AND (seq <= $3 OR seq = ANY($4))
             RETURNING flow_id, sender_org, created_at, subject_pseudonym <> ''",
        )
        .bind(to_ms(now))
        .bind(recipient.as_str())
        .bind(seq_to_i64(up_to))
        .bind(listed)
        .fetch_all(&mut *self.tx)
        .await?;
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
        Ok(u64::try_from(done.len()).unwrap_or(u64::MAX))
    }

    async fn purge_alerts_before(
        &mut self,
        flow_id: &str,
        cutoff: OffsetDateTime,
        limit: u32,
    ) -> Result<u64> {
        Ok(sqlx::query(
            "DELETE FROM alerts WHERE id IN (
                 SELECT id FROM alerts WHERE flow_id = $1 AND created_at < $2
                 ORDER BY created_at LIMIT $3)",
        )
        .bind(flow_id)
        .bind(to_ms(cutoff))
        .bind(i64::from(limit))
        .execute(&mut *self.tx)
        .await?
        .rows_affected())
    }

    async fn purge_reports_before(
        &mut self,
        cutoff: OffsetDateTime,
        from: Option<&ReportPosition>,
        scan: u32,
    ) -> Result<(u64, Option<ReportPosition>)> {
        // Any real key sorts after ("", ""): organisation ids are never empty.
        let (landlord, key) = from.map_or(("", ""), |p| (p.landlord.as_str(), p.key.as_str()));
        let end: Option<(String, String)> = sqlx::query_as(
            "SELECT landlord_org, idempotency_key FROM reports
             WHERE (landlord_org, idempotency_key) > ($1, $2)
             ORDER BY landlord_org, idempotency_key LIMIT 1 OFFSET $3",
        )
        .bind(landlord)
        .bind(key)
        .bind(i64::from(scan.saturating_sub(1)))
        .fetch_optional(&mut *self.tx)
        .await?;
        let (end_landlord, end_key) = end.clone().unzip();
        let deleted = sqlx::query(
            "DELETE FROM reports
             WHERE (landlord_org, idempotency_key) > ($1, $2)
               AND ($3::TEXT IS NULL OR (landlord_org, idempotency_key) <= ($3, $4))
               AND received_at < $5",
        )
        .bind(landlord)
        .bind(key)
        .bind(end_landlord)
        .bind(end_key)
        .bind(to_ms(cutoff))
        .execute(&mut *self.tx)
        .await?
        .rows_affected();
        Ok((
            deleted,
            end.map(|(landlord, key)| ReportPosition { landlord, key }),
        ))
    }

    async fn purge_consents_ended_before(
        &mut self,
        cutoff: OffsetDateTime,
        limit: u32,
    ) -> Result<u64> {
        Ok(sqlx::query(
            "DELETE FROM consents WHERE consent_id IN (
                 SELECT consent_id FROM consents
                 WHERE (state <> 'active' AND changed_at < $1)
                    OR (state = 'active' AND valid_until < $1)
                 LIMIT $2)",
        )
        .bind(to_ms(cutoff))
        .bind(i64::from(limit))
        .execute(&mut *self.tx)
        .await?
        .rows_affected())
    }

    async fn purge_cases(
        &mut self,
        idle_cutoff: OffsetDateTime,
        ended_cutoff: OffsetDateTime,
        limit: u32,
    ) -> Result<u64> {
        Ok(sqlx::query(crate::PURGE_CASES)
            .bind(to_ms(idle_cutoff))
            .bind(to_ms(ended_cutoff))
            .bind(i64::from(limit))
            .execute(&mut *self.tx)
            .await?
            .rows_affected())
    }

    async fn append_audit(&mut self, r: &AuditRecord) -> Result<u64> {
        let entry = ledger_entry(r);
        stats::count_entry(&entry, |key, n| self.tally.add(key, n));
        let entry = entry.encode()?;
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
        self.audit.push(AuditRow {
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
        self.nodes.extend(completed);
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
            "INSERT INTO checkpoints (size, root, note, created_at) VALUES ($1, $2, $3, $4)
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
        sqlx::query("INSERT INTO key_handovers (size, note, created_at) VALUES ($1, $2, $3)")
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

    async fn promote_pseudonyms(
        &mut self,
        version: u32,
        rekey: &Rekey<'_>,
        rekey_own: &RekeyOwn<'_>,
    ) -> Result<u64> {
        self.prefetched.forget_consents();
        // Every writer holds the same advisory lock (see `begin`): no node writes a record
        // under the old version once this commits, nor under the new one before.
        let mut changed = 0u64;
        for (table, id) in [("consents", "consent_id"), ("cases", "case_ref")] {
            let rows: Vec<(String, String, String)> = sqlx::query_as(&format!(
                "SELECT {id}, subject_key, audit_subject FROM {table}"
            ))
            .fetch_all(&mut *self.tx)
            .await?;
            let mut ids = Vec::new();
            let mut keys = Vec::new();
            let mut audits = Vec::new();
            for (row, key, audit) in rows {
                if let Some((key, audit)) = crate::rekey_row(rekey, &key, &audit)? {
                    ids.push(row);
                    keys.push(key);
                    audits.push(audit);
                }
            }
            // One statement per 5,000 rows rather than a round trip per row.
            for ((ids, keys), audits) in ids
                .chunks(5_000)
                .zip(keys.chunks(5_000))
                .zip(audits.chunks(5_000))
            {
                changed += sqlx::query(&format!(
                    "UPDATE {table} AS t SET subject_key = v.k, audit_subject = v.a
                     FROM UNNEST($1::text[], $2::text[], $3::text[]) AS v(id, k, a)
                     WHERE t.{id} = v.id"
                ))
                .bind(ids)
                .bind(keys)
                .bind(audits)
                .execute(&mut *self.tx)
                .await?
                .rows_affected();
            }
        }
        let owned: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT consent_id, recipient_org, subject_pseudonym FROM consents
             WHERE subject_pseudonym <> ''",
        )
        .fetch_all(&mut *self.tx)
        .await?;
        let mut ids = Vec::new();
        let mut owns = Vec::new();
        for (id, recipient, own) in owned {
            if let Some(own) = crate::rekey_own_row(rekey_own, &recipient, &own)? {
                ids.push(id);
                owns.push(own);
            }
        }
        for (ids, owns) in ids.chunks(5_000).zip(owns.chunks(5_000)) {
            changed += sqlx::query(
                "UPDATE consents AS t SET subject_pseudonym = v.o
                 FROM UNNEST($1::text[], $2::text[]) AS v(id, o)
                 WHERE t.consent_id = v.id",
            )
            .bind(ids)
            .bind(owns)
            .execute(&mut *self.tx)
            .await?
            .rows_affected();
        }
        sqlx::query(
            "INSERT INTO key_state (id, pseudonym_version) VALUES (1, $1)
             ON CONFLICT (id) DO UPDATE SET pseudonym_version = excluded.pseudonym_version",
        )
        .bind(i64::from(version))
        .execute(&mut *self.tx)
        .await?;
        Ok(changed)
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
        let opened: Option<i64> = sqlx::query_scalar(
            "UPDATE cases SET first_notice_at = $1
             WHERE case_ref = $2 AND recipient_org = $3 AND first_notice_at IS NULL
             RETURNING created_at",
        )
        .bind(to_ms(now))
        .bind(case_ref)
        .bind(recipient.as_str())
        .fetch_optional(&mut *self.tx)
        .await?;
        opened.map(from_ms).transpose()
    }

    async fn ledger_size(&mut self) -> Result<u64> {
        self.flush_ledger().await?;
        let size: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq) + 1, 0) FROM audit")
            .fetch_one(&mut *self.tx)
            .await?;
        seq_from_i64(size)
    }

    async fn replace_ledger_stats(&mut self, cells: &[Cell]) -> Result<()> {
        sqlx::query("DELETE FROM stat_cells WHERE measure = ANY($1)")
            .bind(stats::ledger_measures())
            .execute(&mut *self.tx)
            .await?;
        upsert_cells(&mut self.tx, cells).await
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        self.flush_ledger().await?;
        let cells = self.tally.drain();
        upsert_cells(&mut self.tx, &cells).await?;
        // Sent with the transaction: delivered to every node's listener only if it commits.
        // One notification per organisation, for its highest new sequence.
        self.notified.sort();
        let mut last: Vec<(String, u64)> = Vec::new();
        for (org, seq) in self.notified.drain(..) {
            match last.last_mut() {
                Some((o, s)) if *o == org => *s = (*s).max(seq),
                _ => last.push((org, seq)),
            }
        }
        for (org, seq) in last {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(format!("{org} {seq}"))
                .execute(&mut *self.tx)
                .await?;
        }
        self.tx.commit().await?;
        Ok(())
    }
}
