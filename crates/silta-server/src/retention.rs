//! Storage limitation: alerts are deleted when their retention period ends, and each purge is
//! recorded in the ledger by the gateway itself. The purge goes by the flows that have messages
//! stored, not by the flows declared now: a flow removed from `flows.toml` leaves messages that
//! must expire too.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use silta_core::audit::{AuditRecord, Outcome};
use silta_core::{Caller, OrgId, Role};
use silta_store::{Store, StoreError};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::config::RetentionConfig;
use crate::policy_source::PolicyHandle;

/// Messages deleted per transaction. A purge after a long outage, or after a flow's retention
/// was shortened, can find millions: in one transaction it would hold the write lock (and every
/// report waiting for it) for seconds. In chunks, reports are committed in between.
const CHUNK: u32 = 1_000;

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
}

/// Deletes expired outbox messages once, flow by flow, for every flow that has messages stored
/// (each after its flow's `retention_days`, capped by `alert_retention_s`; a flow no longer
/// declared after its last known retention, or the cap), until none are left or `stop`;
/// returns how many.
pub(crate) async fn purge_once(
    store: &dyn Store,
    policies: &PolicyHandle,
    retentions: &mut Retentions,
    config: &RetentionConfig,
    stop: &CancellationToken,
) -> Result<u64, StoreError> {
    let now = OffsetDateTime::now_utc();
    let cap_s = config.alert_retention_s;
    retentions.learn(policies, cap_s);
    let mut total = 0;
    for flow_id in store.outbox_flows().await? {
        let keep_s = retentions.keep_s(&flow_id, cap_s);
        loop {
            if stop.is_cancelled() {
                return Ok(total);
            }
            let purged = match purge_chunk(store, &flow_id, keep_s, now).await {
                Ok(purged) => purged,
                Err(e) => {
                    // What earlier chunks deleted is committed and in the ledger: say so.
                    if total > 0 {
                        tracing::info!(alerts = total, "retention purge, before an error");
                    }
                    return Err(e);
                }
            };
            total += purged;
            if purged < u64::from(CHUNK) {
                break;
            }
        }
    }
    Ok(total)
}

/// Deletes up to [`CHUNK`] of a flow's expired messages and records it in the ledger, in one
/// transaction.
async fn purge_chunk(
    store: &dyn Store,
    flow_id: &str,
    keep_s: u64,
    now: OffsetDateTime,
) -> Result<u64, StoreError> {
    let keep = time::Duration::seconds(i64::try_from(keep_s).unwrap_or(i64::MAX));
    let mut tx = store.begin().await?;
    let purged = tx.purge_alerts_before(flow_id, now - keep, CHUNK).await?;
    if purged > 0 {
        let gateway = Caller {
            // A literal that follows the organisation id rules.
            org: OrgId::new("silta-gateway").expect("valid literal org id"),
            role: Role::Gateway,
        };
        let request_id = uuid::Uuid::new_v4().simple().to_string();
        let reason = format!("purged-{purged}-messages-older-than-{keep_s}s");
        let mut record = AuditRecord::new(
            now,
            &request_id,
            &gateway,
            "RetentionPurge",
            Outcome::Allow,
            &reason,
        );
        record.flow_id = Some(flow_id.to_owned());
        tx.append_audit(&record).await?;
    }
    tx.commit().await?;
    Ok(purged)
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
        match purge_once(&*store, &policies, &mut retentions, &config, &stop).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(alerts = n, "retention purge"),
            Err(e) => tracing::error!(error = %e, "retention purge failed; will retry"),
        }
    }
}
