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

/// Deletes expired alerts once; returns how many.
pub(crate) async fn purge_once(
    store: &dyn Store,
    config: &RetentionConfig,
) -> Result<u64, StoreError> {
    let now = OffsetDateTime::now_utc();
    let keep = time::Duration::seconds(i64::try_from(config.alert_retention_s).unwrap_or(i64::MAX));
    let mut tx = store.begin().await?;
    let purged = tx.purge_alerts_before(now - keep).await?;
    if purged > 0 {
        let gateway = Caller {
            // A literal that follows the organisation id rules.
            org: OrgId::new("silta-gateway").expect("valid literal org id"),
            role: Role::Gateway,
        };
        let request_id = uuid::Uuid::new_v4().simple().to_string();
        let reason = format!(
            "purged-{purged}-alerts-older-than-{}s",
            config.alert_retention_s
        );
        tx.append_audit(&AuditRecord::new(
            now,
            &request_id,
            &gateway,
            "RetentionPurge",
            Outcome::Allow,
            &reason,
        ))
        .await?;
    }
    tx.commit().await?;
    Ok(purged)
}

/// Purges every `purge_interval_ms` until `stop`.
pub(crate) async fn run(store: Arc<dyn Store>, config: RetentionConfig, stop: CancellationToken) {
    let interval = Duration::from_millis(config.purge_interval_ms);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        match purge_once(&*store, &config).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(alerts = n, "retention purge"),
            Err(e) => tracing::error!(error = %e, "retention purge failed; will retry"),
        }
    }
}
