//! Publishes signed checkpoints of the audit ledger: every `checkpoint_interval_ms` while the
//! ledger grows, as soon as `checkpoint_every` entries were appended, and once more at shutdown.

use std::sync::Arc;
use std::time::Duration;

use silta_ledger::checkpoint::{Checkpoint, NoteSigner};
use silta_store::{Store, StoreError};
use time::OffsetDateTime;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::LedgerConfig;

/// Signs and stores checkpoints.
pub(crate) struct Checkpointer {
    pub store: Arc<dyn Store>,
    pub signer: NoteSigner,
    pub config: LedgerConfig,
    /// Poked by the committer after each batch.
    pub appended: Arc<Notify>,
}

impl Checkpointer {
    /// Publishes a checkpoint of the current head if it is newer than the last one, returning
    /// its size.
    pub async fn publish(&self, last: u64) -> Result<u64, StoreError> {
        let head = self.store.ledger_head().await?;
        if head.size <= last {
            return Ok(last);
        }
        let checkpoint = Checkpoint {
            origin: self.config.origin.clone(),
            size: head.size,
            root: head.root,
        };
        // The origin was validated at start-up, so the body is well-formed.
        let note = self
            .signer
            .sign(&checkpoint.body())
            .map_err(|e| StoreError::Corrupt(format!("checkpoint note: {e}")))?;
        let mut tx = self.store.begin().await?;
        tx.append_checkpoint(head.size, &head.root, &note, OffsetDateTime::now_utc())
            .await?;
        tx.commit().await?;
        tracing::debug!(size = head.size, "checkpoint published");
        Ok(head.size)
    }

    /// Runs until `stop`; the final checkpoint is the caller's, once the last commits are in.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let interval = Duration::from_millis(self.config.checkpoint_interval_ms);
        let mut last = match self.store.latest_checkpoint().await {
            Ok(c) => c.map_or(0, |c| c.size),
            Err(e) => {
                tracing::error!(error = %e, "cannot read the latest checkpoint");
                0
            }
        };
        let mut deadline = tokio::time::Instant::now() + interval;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep_until(deadline) => {
                    deadline = tokio::time::Instant::now() + interval;
                }
                () = self.appended.notified() => {
                    match self.store.ledger_head().await {
                        Ok(h) if h.size >= last + self.config.checkpoint_every => {}
                        _ => continue,
                    }
                }
            }
            match self.publish(last).await {
                Ok(size) => last = size,
                Err(e) => tracing::error!(error = %e, "checkpoint not published; will retry"),
            }
        }
    }
}
