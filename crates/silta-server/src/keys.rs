//! Pseudonym key rotation: promote a keyring version to the one in use.
//!
//! Rotation is two steps, so that no node ever writes under a version another node cannot
//! read: `silta keys rotate` adds a version to the keyring, which every node is given (and
//! restarted with) while the old version stays in use; then `silta keys promote` moves every
//! stored lookup and audit pseudonym to the new version and records it as in use, in one
//! transaction that every writer serialises with. The promotion is itself an entry in the
//! audit ledger, and the checkpoint signing key moves with it: a handover note signed by the
//! retiring key and its successor lets an auditor who trusts the old key follow to the new.

use silta_core::audit::{AuditRecord, Outcome};
use silta_core::{Domain, OrgId, Pseudonym, Pseudonymiser};
use silta_ledger::checkpoint::KeyHandover;
use silta_store::{Store, StoreError, SubjectColumn};
use time::OffsetDateTime;

/// Why a promotion was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PromoteError {
    /// The store failed; nothing changed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The keyring does not hold the version asked for.
    #[error("the keyring holds v{first}..=v{latest}; v{wanted} is not in it")]
    NotInKeyring {
        /// Wanted.
        wanted: u32,
        /// Oldest held.
        first: u32,
        /// Newest held.
        latest: u32,
    },
    /// Versions only move forward: older pseudonyms cannot be computed from newer ones.
    #[error("v{in_use} is in use; a promotion goes to a newer version only")]
    NotNewer {
        /// In use now.
        in_use: u32,
    },
}

/// What a promotion did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Promotion {
    /// The version in use before.
    pub from: u32,
    /// The version in use now.
    pub to: u32,
    /// Consent and case rows whose pseudonyms moved.
    pub rows: u64,
}

/// The version in use in `store` (`None` in the store: the keyring's first).
pub async fn version_in_use(store: &dyn Store, p: &Pseudonymiser) -> Result<u32, StoreError> {
    let mut tx = store.begin().await?;
    // Read and dropped: the transaction rolls back, having written nothing.
    Ok(tx
        .pseudonym_version()
        .await?
        .unwrap_or_else(|| p.first_version()))
}

/// Makes `to` the pseudonym key version in use: moves every stored lookup and audit pseudonym
/// to it, records it, and appends the promotion to the audit ledger, all in one transaction.
/// Promoting to the version already in use changes nothing and succeeds.
pub async fn promote(
    store: &dyn Store,
    p: &Pseudonymiser,
    to: u32,
    origin: &str,
) -> Result<Promotion, PromoteError> {
    if !p.has_version(to) {
        return Err(PromoteError::NotInKeyring {
            wanted: to,
            first: p.first_version(),
            latest: p.latest_version(),
        });
    }
    let mut tx = store.begin().await?;
    let from = tx
        .pseudonym_version()
        .await?
        .unwrap_or_else(|| p.first_version());
    if from == to {
        return Ok(Promotion { from, to, rows: 0 });
    }
    if from > to {
        return Err(PromoteError::NotNewer { in_use: from });
    }
    let rekey = |column: SubjectColumn, stored: &str| {
        let domain = match column {
            SubjectColumn::Lookup => Domain::Lookup,
            SubjectColumn::Audit => Domain::Audit,
        };
        Some(
            p.translate(&Pseudonym::parse(stored)?, &domain, to)?
                .to_string(),
        )
    };
    let rekey_own = |recipient: &OrgId, stored: &str| {
        let domain = Domain::Org(recipient.clone());
        Some(
            p.translate(&Pseudonym::parse(stored)?, &domain, to)?
                .to_string(),
        )
    };
    let rows = tx.promote_pseudonyms(to, &rekey, &rekey_own).await?;
    let gateway = crate::gateway::gateway_caller();
    let request_id = uuid::Uuid::new_v4().simple().to_string();
    let record = AuditRecord::new(
        OffsetDateTime::now_utc(),
        &request_id,
        &gateway,
        "PromotePseudonymKey",
        Outcome::Allow,
        &format!("pseudonym-key-v{from}-to-v{to}-{rows}-rows"),
    );
    let index = tx.append_audit(&record).await?;
    // The checkpoint key changes with the version: the retiring key vouches for checkpoints
    // up to and including this entry, its successor for those after, and both sign the note
    // that says so.
    let old = crate::checkpoints::signer_for(p, origin, from)?;
    let new = crate::checkpoints::signer_for(p, origin, to)?;
    let size = index + 1;
    let handover = KeyHandover {
        origin: origin.to_owned(),
        size,
        old_key: old.verifier_key(),
        new_key: new.verifier_key(),
    };
    let note = handover
        .sign(&old, &new)
        .map_err(|e| StoreError::Corrupt(format!("key handover note: {e}")))?;
    tx.append_key_handover(size, &note, OffsetDateTime::now_utc())
        .await?;
    tx.commit().await?;
    p.observe(to);
    tracing::info!(from, to, rows, "pseudonym key promoted");
    Ok(Promotion { from, to, rows })
}
