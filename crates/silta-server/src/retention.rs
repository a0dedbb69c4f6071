//! Storage limitation: alerts are deleted when their retention period ends, and each purge is
//! recorded in the ledger by the gateway itself.

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

/// Deletes expired outbox messages once, flow by flow (each after its flow's
/// `retention_days`, capped by `alert_retention_s`), until none are left or `stop`; returns
/// how many.
pub(crate) async fn purge_once(
    store: &dyn Store,
    policies: &PolicyHandle,
    config: &RetentionConfig,
    stop: &CancellationToken,
) -> Result<u64, StoreError> {
    let now = OffsetDateTime::now_utc();
    let mut total = 0;
    for flow in policies.get().flows() {
        let keep_s = (u64::from(flow.retention_days) * 86_400).min(config.alert_retention_s);
        loop {
            if stop.is_cancelled() {
                return Ok(total);
            }
            let purged = match purge_chunk(store, &flow.id, keep_s, now).await {
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
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        match purge_once(&*store, &policies, &config, &stop).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(alerts = n, "retention purge"),
            Err(e) => tracing::error!(error = %e, "retention purge failed; will retry"),
        }
    }
}
