//! Storage limitation (GDPR art. 5(1)(e)): every kind of record silta stores is deleted when
//! its retention ends, and each purge is recorded in the ledger by the gateway itself, with
//! how many rows of which kind went. The rules, their periods and their reasons are in
//! `docs/audit.md` ("Retention"):
//!
//! - outbox messages (alerts and support notices) after their flow's `retention_days`, capped
//!   by `retention.alert_retention_s`. The purge goes by the flows that have messages stored,
//!   not by the flows declared now: a flow removed from `flows.toml` leaves messages that must
//!   expire too;
//! - report rows (idempotency keys, fingerprints) after `retention.report_retry_window_s`;
//! - consents that were withdrawn, superseded or expired, `retention.ended_consent_grace_s`
//!   after they ended;
//! - cases once the longest flow retention has passed since their last message, or once their
//!   resident has held no consent for their recipient for `retention.ended_consent_grace_s`.
//!
//! Ledger entries stay: they hold no payload, and they are what proves that processing was
//! lawful while a consent stood.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use silta_core::audit::{AuditRecord, Outcome};
use silta_core::{Caller, OrgId, Role};
use silta_store::{Due, KindCount, ReportPosition, Store, StoreError, WriteTx};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::config::RetentionConfig;
use crate::policy_source::PolicyHandle;

/// Rows deleted per transaction. A purge after a long outage, or after a flow's retention was
/// shortened, can find millions: in one transaction it would hold the write lock (and every
/// report waiting for it) for seconds. In chunks, reports are committed in between.
const CHUNK: u32 = 1_000;

/// Report rows looked at per transaction. Reports are keyed by (landlord, idempotency key), in
/// no time order, so their purge walks the table in key order, a window at a time.
const REPORT_WINDOW: u32 = 10_000;

/// The retention of each flow, in seconds, as the policies declared it: the current set's
/// flows, and flows a reload has since removed, whose messages stay in the outbox until this
/// purge reaches them.
#[derive(Debug, Default)]
pub(crate) struct Retentions(HashMap<String, u64>);

impl Retentions {
    /// Learns the current policies' flows (a re-declared flow takes its new retention).
    fn learn(&mut self, policies: &PolicyHandle, cap_s: u64) {
        for flow in policies.get().flows() {
            let keep_s = (u64::from(flow.retention_days) * 86_400).min(cap_s);
            self.0.insert(flow.id.clone(), keep_s);
        }
    }

    /// How long `flow_id`'s messages are kept: its declared retention, or, for a flow this
    /// process never saw declared (retired before a restart), the global cap.
    fn keep_s(&self, flow_id: &str, cap_s: u64) -> u64 {
        self.0.get(flow_id).copied().unwrap_or(cap_s)
    }

    /// How long a case is kept after its last message: the longest retention of any flow, so
    /// that a case outlives every message on it.
    fn case_keep_s(&self, cap_s: u64) -> u64 {
        self.0.values().copied().max().unwrap_or(cap_s)
    }
}

/// What one purge deleted, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    /// Alerts and support notices.
    pub messages: u64,
    /// Report rows (idempotency keys and fingerprints).
    pub reports: u64,
    /// Consents that had ended.
    pub consents: u64,
    /// Cases.
    pub cases: u64,
}

impl Purged {
    fn total(&self) -> u64 {
        self.messages + self.reports + self.consents + self.cases
    }
}

/// Runs every retention rule once, as of `now`, and returns what it deleted. `now` is a
/// parameter so that tests and `silta demo` can look at a store as it will be in a few months;
/// the gateway's own purge passes the wall clock.
pub async fn purge(
    store: &dyn Store,
    policies: &PolicyHandle,
    config: &RetentionConfig,
    now: OffsetDateTime,
) -> Result<Purged, StoreError> {
    let mut retentions = Retentions::default();
    purge_once(
        store,
        policies,
        &mut retentions,
        config,
        now,
        &CancellationToken::new(),
    )
    .await
}

/// One kind of record, its rule, and its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindStatus {
    /// `messages`, `reports`, `consents` or `cases`.
    pub kind: &'static str,
    /// For messages: their flow.
    pub flow_id: Option<String>,
    /// The rule in words.
    pub rule: String,
    /// The rule's period, seconds.
    pub kept_for_s: u64,
    /// Rows, the oldest, and how many the purge would delete at `now`.
    pub count: KindCount,
}

/// The retention state of every kind of record as of `now`: what `silta audit retention` and
/// `Audit/GetRetention` show. Uses the same cutoffs as [`purge`].
pub async fn status(
    store: &dyn Store,
    policies: &PolicyHandle,
    config: &RetentionConfig,
    now: OffsetDateTime,
) -> Result<Vec<KindStatus>, StoreError> {
    let cap_s = config.alert_retention_s;
    let mut retentions = Retentions::default();
    retentions.learn(policies, cap_s);
    let mut out = Vec::new();
    for flow_id in store.outbox_flows().await? {
        let keep_s = retentions.keep_s(&flow_id, cap_s);
        let due = Due::Messages {
            flow_id: &flow_id,
            cutoff: before(now, keep_s),
        };
        let count = store.retention_due(due).await?;
        out.push(KindStatus {
            kind: "messages",
            rule: format!(
                "deleted {keep_s} s after they were sent (the flow's retention_days, at most \
                 retention.alert_retention_s); undelivered ones when the consent is withdrawn"
            ),
            flow_id: Some(flow_id),
            kept_for_s: keep_s,
            count,
        });
    }
    let retry_s = config.report_retry_window_s;
    let grace_s = config.ended_consent_grace_s;
    let idle_s = retentions.case_keep_s(cap_s);
    let ended = before(now, grace_s);
    let rest = [
        (
            "reports",
            format!("deleted {retry_s} s after receipt (retention.report_retry_window_s)"),
            retry_s,
            Due::Reports {
                cutoff: before(now, retry_s),
            },
        ),
        (
            "consents",
            format!(
                "deleted {grace_s} s after they ended: withdrawn, superseded or expired \
                 (retention.ended_consent_grace_s)"
            ),
            grace_s,
            Due::Consents { ended },
        ),
        (
            "cases",
            format!(
                "deleted {idle_s} s after the last message on them (the longest flow \
                 retention), or {grace_s} s after it once the resident no longer consents"
            ),
            idle_s,
            Due::Cases {
                idle: before(now, idle_s),
                ended,
            },
        ),
    ];
    for (kind, rule, kept_for_s, due) in rest {
        out.push(KindStatus {
            kind,
            flow_id: None,
            rule,
            kept_for_s,
            count: store.retention_due(due).await?,
        });
    }
    Ok(out)
}

/// Deletes what has expired as of `now`, kind by kind, in chunks, until nothing is left or
/// `stop`. What earlier chunks deleted is committed, and in the ledger, whatever happens later.
pub(crate) async fn purge_once(
    store: &dyn Store,
    policies: &PolicyHandle,
    retentions: &mut Retentions,
    config: &RetentionConfig,
    now: OffsetDateTime,
    stop: &CancellationToken,
) -> Result<Purged, StoreError> {
    let cap_s = config.alert_retention_s;
    retentions.learn(policies, cap_s);
    let mut purged = Purged::default();
    let result = async {
        for flow_id in store.outbox_flows().await? {
            let keep_s = retentions.keep_s(&flow_id, cap_s);
            let cutoff = before(now, keep_s);
            let reason = |n| format!("purged-{n}-messages-older-than-{keep_s}s");
            let chunk = Chunk::Messages {
                flow_id: &flow_id,
                cutoff,
            };
            purged.messages += in_chunks(store, stop, reason, chunk).await?;
        }

        let keep_s = config.report_retry_window_s;
        let cutoff = before(now, keep_s);
        let mut from: Option<ReportPosition> = None;
        loop {
            if stop.is_cancelled() {
                return Ok(());
            }
            let mut tx = store.begin().await?;
            let (deleted, next) = tx
                .purge_reports_before(cutoff, from.as_ref(), REPORT_WINDOW)
                .await?;
            if deleted > 0 {
                let reason = format!("purged-{deleted}-reports-older-than-{keep_s}s");
                record(&mut *tx, &reason, None).await?;
            }
            tx.commit().await?;
            purged.reports += deleted;
            match next {
                Some(next) => from = Some(next),
                None => break,
            }
        }

        let grace_s = config.ended_consent_grace_s;
        let ended = before(now, grace_s);
        let reason = |n| format!("purged-{n}-consents-ended-more-than-{grace_s}s-ago");
        purged.consents += in_chunks(store, stop, reason, Chunk::Consents { ended }).await?;

        let idle_s = retentions.case_keep_s(cap_s);
        let idle = before(now, idle_s);
        let reason =
            |n| format!("purged-{n}-cases-idle-{idle_s}s-or-without-consent-for-{grace_s}s");
        purged.cases += in_chunks(store, stop, reason, Chunk::Cases { idle, ended }).await?;
        Ok(())
    }
    .await;
    match result {
        Ok(()) => Ok(purged),
        Err(e) => {
            // What earlier chunks deleted is committed and in the ledger: say so.
            if purged.total() > 0 {
                tracing::info!(?purged, "retention purge, before an error");
            }
            Err(e)
        }
    }
}

/// `now` minus `keep_s` seconds (the cutoff of a retention period).
fn before(now: OffsetDateTime, keep_s: u64) -> OffsetDateTime {
    now - time::Duration::seconds(i64::try_from(keep_s).unwrap_or(i64::MAX))
}

/// One kind of row to delete, at most [`CHUNK`] at a time.
#[derive(Clone, Copy)]
enum Chunk<'a> {
    Messages {
        flow_id: &'a str,
        cutoff: OffsetDateTime,
    },
    Consents {
        ended: OffsetDateTime,
    },
    Cases {
        idle: OffsetDateTime,
        ended: OffsetDateTime,
    },
}

impl Chunk<'_> {
    /// The flow the rows belong to, recorded with the purge.
    fn flow_id(&self) -> Option<&str> {
        match *self {
            Chunk::Messages { flow_id, .. } => Some(flow_id),
            Chunk::Consents { .. } | Chunk::Cases { .. } => None,
        }
    }

    async fn delete(self, tx: &mut dyn WriteTx) -> Result<u64, StoreError> {
        match self {
            Chunk::Messages { flow_id, cutoff } => {
                tx.purge_alerts_before(flow_id, cutoff, CHUNK).await
            }
            Chunk::Consents { ended } => tx.purge_consents_ended_before(ended, CHUNK).await,
            Chunk::Cases { idle, ended } => tx.purge_cases(idle, ended, CHUNK).await,
        }
    }
}

/// Deletes `chunk` in one transaction after another, each recorded in the ledger with
/// `reason(count)`, until a chunk comes back short or `stop`. Returns how many.
async fn in_chunks(
    store: &dyn Store,
    stop: &CancellationToken,
    reason: impl Fn(u64) -> String,
    chunk: Chunk<'_>,
) -> Result<u64, StoreError> {
    let mut total = 0;
    while !stop.is_cancelled() {
        let mut tx = store.begin().await?;
        let deleted = chunk.delete(&mut *tx).await?;
        if deleted > 0 {
            record(&mut *tx, &reason(deleted), chunk.flow_id()).await?;
        }
        tx.commit().await?;
        total += deleted;
        if deleted < u64::from(CHUNK) {
            break;
        }
    }
    Ok(total)
}

/// Records a purge in the ledger, in the transaction that deleted, under the gateway's own
/// identity, at the time it happened (whatever clock the rules were applied with).
async fn record(
    tx: &mut dyn WriteTx,
    reason: &str,
    flow_id: Option<&str>,
) -> Result<(), StoreError> {
    let gateway = Caller {
        // A literal that follows the organisation id rules.
        org: OrgId::new("silta-gateway").expect("valid literal org id"),
        role: Role::Gateway,
    };
    let request_id = uuid::Uuid::new_v4().simple().to_string();
    let mut record = AuditRecord::new(
        OffsetDateTime::now_utc(),
        &request_id,
        &gateway,
        "RetentionPurge",
        Outcome::Allow,
        reason,
    );
    record.flow_id = flow_id.map(str::to_owned);
    tx.append_audit(&record).await?;
    Ok(())
}

/// Purges every `purge_interval_ms` until `stop`.
pub(crate) async fn run(
    store: Arc<dyn Store>,
    policies: Arc<PolicyHandle>,
    config: RetentionConfig,
    stop: CancellationToken,
) {
    let interval = Duration::from_millis(config.purge_interval_ms);
    let mut retentions = Retentions::default();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        let now = OffsetDateTime::now_utc();
        match purge_once(&*store, &policies, &mut retentions, &config, now, &stop).await {
            Ok(purged) if purged.total() == 0 => {}
            Ok(purged) => tracing::info!(
                messages = purged.messages,
                reports = purged.reports,
                consents = purged.consents,
                cases = purged.cases,
                "retention purge"
            ),
            Err(e) => tracing::error!(error = %e, "retention purge failed; will retry"),
        }
    }
}
