//! Offline verification of a ledger export: every entry decodes, every checkpoint is signed by
//! the log's key, and the tree recomputed from the entries has, at each checkpoint's size,
//! exactly the root the checkpoint signed. All checkpoints being prefixes of the one
//! recomputed tree is what makes them consistent with each other.

use crate::checkpoint::{Checkpoint, KeyHandover, NoteError, NoteVerifier};
use crate::entry::{Entry, EntryError};
use crate::hash::{Hash, leaf_hash};
use crate::tree::Frontier;

/// What a successful verification covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Entries checked.
    pub entries: u64,
    /// Checkpoints whose signature and root matched.
    pub checkpoints: usize,
    /// The largest tree size a checkpoint vouches for.
    pub anchored: u64,
    /// The root of all entries.
    pub root: Hash,
}

/// Why an export does not verify; names the first place it fails.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// A checkpoint's note is malformed, for another log, or not signed by the key.
    #[error("checkpoint #{position} is not valid: {error}")]
    Checkpoint {
        /// Its position in the export.
        position: usize,
        /// Why.
        error: NoteError,
    },
    /// An entry's bytes do not decode.
    #[error("entry {index} is malformed: {error}")]
    Entry {
        /// Its leaf index.
        index: u64,
        /// Why.
        error: EntryError,
    },
    /// The entries do not hash to the root a checkpoint signed.
    #[error(
        "entries {from}..{to} do not match the checkpoint at size {to}: an entry in that range was \
         changed, removed, inserted or reordered"
    )]
    RootMismatch {
        /// The last size that did match (0 if none).
        from: u64,
        /// The checkpoint's size.
        to: u64,
    },
    /// A checkpoint vouches for more entries than the export holds.
    #[error(
        "a checkpoint vouches for {size} entries but the export holds {entries}: entries are missing"
    )]
    Missing {
        /// The checkpoint's size.
        size: u64,
        /// Entries in the export.
        entries: u64,
    },
    /// No checkpoint at all: nothing anchors the entries.
    #[error("the export holds no checkpoint, so nothing vouches for its entries")]
    NoCheckpoint,
}

/// Verifies `entries` (canonical bytes, in leaf order) against signed checkpoint `notes`.
pub fn verify_export<'a>(
    entries: impl IntoIterator<Item = &'a [u8]>,
    notes: &[&str],
    verifier: &NoteVerifier,
    origin: &str,
) -> Result<Verified, VerifyError> {
    verify_export_with_handovers(entries, notes, &[], verifier, origin)
}

/// As [`verify_export`], for a log whose checkpoint key changed: each handover note signed by
/// a key already trusted (starting from `verifier`) and by its successor makes the successor
/// trusted, and limits the key it retires to checkpoints no larger than the handover's size. A
/// handover that no trusted key signed is ignored, and so are the checkpoints of its key.
pub fn verify_export_with_handovers<'a>(
    entries: impl IntoIterator<Item = &'a [u8]>,
    notes: &[&str],
    handovers: &[&str],
    verifier: &NoteVerifier,
    origin: &str,
) -> Result<Verified, VerifyError> {
    // (key, the largest size it may vouch for)
    let mut keys: Vec<(NoteVerifier, Option<u64>)> = vec![(verifier.clone(), None)];
    let mut opened: Vec<_> = handovers
        .iter()
        .filter_map(|note| KeyHandover::open(note, origin).ok())
        .collect();
    // Follow the chain from the trusted key, whatever order the handovers come in.
    while let Some(i) = opened
        .iter()
        .position(|(_, old, _)| keys.iter().any(|(k, _)| k == old))
    {
        let (handover, old, new) = opened.swap_remove(i);
        for (k, retired) in &mut keys {
            if *k == old {
                *retired = Some(retired.map_or(handover.size, |r| r.min(handover.size)));
            }
        }
        if !keys.iter().any(|(k, _)| *k == new) {
            keys.push((new, None));
        }
    }
    let mut checkpoints: Vec<Checkpoint> = notes
        .iter()
        .enumerate()
        .map(|(position, note)| {
            let mut last = NoteError::Unverified(origin.to_owned());
            for (key, retired) in &keys {
                match key.open_checkpoint(note, origin) {
                    Ok(c) if retired.is_none_or(|r| c.size <= r) => return Ok(c),
                    Ok(_) => {
                        last = NoteError::Malformed("signed by a key retired before this tree size")
                    }
                    Err(e) => last = e,
                }
            }
            Err(VerifyError::Checkpoint {
                position,
                error: last,
            })
        })
        .collect::<Result<_, _>>()?;
    if checkpoints.is_empty() {
        return Err(VerifyError::NoCheckpoint);
    }
    checkpoints.sort_by_key(|c| c.size);
    let mut pending = checkpoints.iter().peekable();
    let mut frontier = Frontier::new();
    let (mut matched, mut anchored) = (0usize, 0u64);
    let mut check =
        |frontier: &Frontier,
         pending: &mut std::iter::Peekable<std::slice::Iter<'_, Checkpoint>>| {
            while let Some(c) = pending.next_if(|c| c.size == frontier.size()) {
                if c.root != frontier.root() {
                    return Err(VerifyError::RootMismatch {
                        from: anchored,
                        to: c.size,
                    });
                }
                matched += 1;
                anchored = c.size;
            }
            Ok(())
        };
    check(&frontier, &mut pending)?;
    for (index, bytes) in (0u64..).zip(entries) {
        Entry::check(bytes).map_err(|error| VerifyError::Entry { index, error })?;
        frontier.append(leaf_hash(bytes), |_, _, _| {});
        check(&frontier, &mut pending)?;
    }
    if let Some(c) = pending.next() {
        return Err(VerifyError::Missing {
            size: c.size,
            entries: frontier.size(),
        });
    }
    Ok(Verified {
        entries: frontier.size(),
        checkpoints: matched,
        anchored,
        root: frontier.root(),
    })
}
