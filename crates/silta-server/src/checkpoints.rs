//! Publishes signed checkpoints of the audit ledger: every `checkpoint_interval_ms` while the
//! ledger grows, as soon as `checkpoint_every` entries were appended, and once more at shutdown.
//!
//! Before signing, the checkpointer proves that the stored tree extends the last checkpoint it
//! signed. Someone who rewrites the database (but holds no key) therefore cannot get the
//! gateway to vouch for a rewritten history: it refuses, and says so loudly.

use std::sync::Arc;
use std::time::Duration;

use silta_core::Pseudonymiser;
use silta_ledger::Hash;
use silta_ledger::checkpoint::{Checkpoint, NoteSigner, NoteVerifier};
use silta_ledger::proof::verify_consistency;
use silta_store::{LedgerHead, Store, StoreError};
use time::OffsetDateTime;
use tokio::sync::{Mutex, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::commit::Job;
use crate::config::LedgerConfig;
use crate::ledger_proofs;

/// Why a checkpoint was not published.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CheckpointError {
    /// The store failed; retried later.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stored ledger does not extend what was signed before: tampering or corruption.
    #[error(
        "the stored ledger does not extend the last signed checkpoint (size {0}): refusing to sign; investigate the database"
    )]
    NotAnExtension(u64),
    /// The committer's batch failed; retried later.
    #[error("the batch storing the checkpoint was not committed")]
    NotCommitted,
}

/// The checkpoint signer of key `version`.
pub(crate) fn signer_for(
    p: &Pseudonymiser,
    origin: &str,
    version: u32,
) -> Result<NoteSigner, StoreError> {
    let seed = p.checkpoint_seed_at(version).ok_or_else(|| {
        StoreError::Corrupt(format!("key v{version} is not in this node's keyring"))
    })?;
    // The origin was validated at start-up (see `start`).
    NoteSigner::from_seed(origin, &seed)
        .map_err(|e| StoreError::Corrupt(format!("checkpoint key: {e}")))
}

/// The verifier key, of any version in the keyring, that `note` verifies with, and the
/// checkpoint it holds.
pub(crate) fn signing_key_of(
    p: &Pseudonymiser,
    origin: &str,
    note: &str,
) -> Option<(String, Checkpoint)> {
    (p.first_version()..=p.latest_version())
        .filter_map(|v| signer_for(p, origin, v).ok())
        .map(|s| s.verifier_key())
        .find_map(|key| {
            let checkpoint = NoteVerifier::parse(&key)
                .ok()?
                .open_checkpoint(note, origin)
                .ok()?;
            Some((key, checkpoint))
        })
}

/// Signs and stores checkpoints with the key of the version in use: the version is checked
/// again in the transaction that stores the checkpoint, so no checkpoint past a key handover is
/// stored under the key it retired.
pub(crate) struct Checkpointer {
    pub store: Arc<dyn Store>,
    pub pseudonymiser: Pseudonymiser,
    pub config: LedgerConfig,
    /// The ledger's size after this node's latest batch, sent by the committer.
    pub appended: watch::Receiver<u64>,
    /// The committer's queue, which stores checkpoints with its batches.
    pub commits: mpsc::Sender<Job>,
    /// The last (size, root) this gateway signed or verified at start-up.
    pub last: Mutex<Option<(u64, Hash)>>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl Checkpointer {
    /// Loads the latest stored checkpoint. One that no key of this keyring (under this
    /// origin) signed means another master secret or origin than the ledger's: the gateway
    /// would compute other pseudonyms and sign the ledger under a key no export's verifier
    /// follows, so it refuses to start.
    pub async fn load(&self) -> Result<(), crate::ServeError> {
        let Some(stored) = self.store.latest_checkpoint().await? else {
            return Ok(());
        };
        let opened = signing_key_of(&self.pseudonymiser, &self.config.origin, &stored.note);
        match opened {
            Some((_, c)) => *self.last.lock().await = Some((c.size, c.root)),
            None => {
                return Err(crate::ServeError::Config(format!(
                    "the latest stored checkpoint (size {}) does not verify with any key of this \
                     gateway's keyring under origin {:?}: this is not the master secret (or \
                     ledger.origin) this ledger was signed with. Start with the secret file and \
                     origin the ledger was created with; to change keys, use `silta keys rotate` \
                     and `silta keys promote`, which keep the old key to verify with",
                    stored.size, self.config.origin
                )));
            }
        }
        Ok(())
    }

    /// Publishes a checkpoint of the current head if the ledger grew by at least `min_growth`
    /// entries since the last one. `known_size` is the size a batch of this node's committer
    /// left: with it, the ledger is not read at all until enough entries accrued.
    ///
    /// While the committer runs, the checkpoint is signed here and stored with its next batch;
    /// once it has stopped (the final checkpoint at shutdown), in a transaction of its own.
    pub async fn publish(
        &self,
        min_growth: u64,
        known_size: Option<u64>,
    ) -> Result<(), CheckpointError> {
        let mut last = self.last.lock().await;
        if let Some(size) = known_size {
            // After a batch: the wake-up that follows every commit costs next to nothing until
            // enough accrued. The timer's call (no size) still reads the head and compares the
            // root at an unchanged size, which is how a ledger rewritten underneath the gateway
            // shows.
            self.metrics
                .ledger_entries
                .set(i64::try_from(size).unwrap_or(i64::MAX));
            if size < last.map_or(0, |(size, _)| size).saturating_add(min_growth) {
                return Ok(());
            }
        }
        // The key version is read before the head: if it is the version a handover moved to,
        // the head already includes the handover, so the new key never signs a tree before it.
        // The committer stores the note only if the version is still in use, so the retired key
        // never signs a tree past it either.
        let version = self.pseudonymiser.observed_version();
        let head = self.store.ledger_head().await?;
        self.metrics
            .ledger_entries
            .set(i64::try_from(head.size).unwrap_or(i64::MAX));
        if !due(*last, &head, min_growth)? {
            return Ok(());
        }
        if !self.commits.is_closed() {
            let note = self.sign(*last, &head, version).await?;
            let (reply, stored) = oneshot::channel();
            let job = Job::Checkpoint {
                version,
                size: head.size,
                root: head.root,
                note,
                reply,
            };
            // A closed queue means the committer has stopped: store the checkpoint directly.
            if self.commits.send(job).await.is_ok() {
                return match stored.await {
                    Ok(Ok(true)) => {
                        self.published(&mut last, &head);
                        Ok(())
                    }
                    Ok(Ok(false)) => {
                        tracing::debug!(
                            version,
                            "key version changed while signing; signing again later"
                        );
                        Ok(())
                    }
                    Ok(Err(_)) | Err(_) => Err(CheckpointError::NotCommitted),
                };
            }
        }
        // The key version and the head are read while holding the write lock, so a checkpoint
        // is signed by the key in use for exactly the tree it names.
        let mut tx = self.store.begin().await?;
        let version = crate::commit::version_in_use(&mut *tx, &self.pseudonymiser).await?;
        let head = self.store.ledger_head().await?;
        if !due(*last, &head, 1)? {
            return Ok(());
        }
        let note = self.sign(*last, &head, version).await?;
        tx.append_checkpoint(head.size, &head.root, &note, OffsetDateTime::now_utc())
            .await?;
        tx.commit().await?;
        self.published(&mut last, &head);
        Ok(())
    }

    /// Proves that `head` extends `last` and signs it with key `version`.
    async fn sign(
        &self,
        last: Option<(u64, Hash)>,
        head: &LedgerHead,
        version: u32,
    ) -> Result<String, CheckpointError> {
        if let Some((size, root)) = last {
            let proof = ledger_proofs::consistency(&*self.store, size, head.size)
                .await
                .map_err(|_| CheckpointError::NotAnExtension(size))?;
            verify_consistency(size, head.size, &root, &head.root, &proof)
                .map_err(|_| CheckpointError::NotAnExtension(size))?;
        }
        let checkpoint = Checkpoint {
            origin: self.config.origin.clone(),
            size: head.size,
            root: head.root,
        };
        // The origin was validated at start-up, so the body is well-formed.
        let note = signer_for(&self.pseudonymiser, &self.config.origin, version)?
            .sign(&checkpoint.body())
            .map_err(|e| StoreError::Corrupt(format!("checkpoint note: {e}")))?;
        Ok(note)
    }

    fn published(&self, last: &mut Option<(u64, Hash)>, head: &LedgerHead) {
        *last = Some((head.size, head.root));
        self.metrics
            .last_checkpoint
            .set(OffsetDateTime::now_utc().unix_timestamp());
        tracing::debug!(size = head.size, "checkpoint published");
    }

    /// Runs until `stop`; the final checkpoint is the caller's, once the last commits are in.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let interval = Duration::from_millis(self.config.checkpoint_interval_ms);
        let mut appended = self.appended.clone();
        let mut committing = true;
        let mut deadline = tokio::time::Instant::now() + interval;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep_until(deadline) => {
                    deadline = tokio::time::Instant::now() + interval;
                }
                changed = appended.changed(), if committing => {
                    if changed.is_err() {
                        // The committer is gone; the timer still signs what it left.
                        committing = false;
                        continue;
                    }
                    // After a batch, sign only once `checkpoint_every` entries have accrued.
                    let size = *appended.borrow_and_update();
                    if let Err(e) = self.publish(self.config.checkpoint_every, Some(size)).await {
                        tracing::error!(error = %e, "checkpoint not published; will retry");
                    }
                    continue;
                }
            }
            if let Err(e) = self.publish(1, None).await {
                tracing::error!(error = %e, "checkpoint not published; will retry");
            }
        }
    }
}

/// Whether `head` is worth a checkpoint after `last`: grown by `min_growth`. A head that shrank,
/// or changed its root at the same size, is an error.
fn due(
    last: Option<(u64, Hash)>,
    head: &LedgerHead,
    min_growth: u64,
) -> Result<bool, CheckpointError> {
    let Some((size, root)) = last else {
        return Ok(head.size >= min_growth.max(1));
    };
    // A committed ledger never shrinks, and at the same size it has the same root.
    if head.size < size || (head.size == size && head.root != root) {
        return Err(CheckpointError::NotAnExtension(size));
    }
    Ok(head.size >= size.saturating_add(min_growth.max(1)))
}
