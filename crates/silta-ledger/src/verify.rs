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
        "the entries with index {from} to {last} (counting from 0) do not match the checkpoint \
         at size {to}: an entry in that range was changed, removed, inserted or reordered",
        last = to.saturating_sub(1)
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
    /// Two key handovers retire the same key, or hand over to the same key.
    #[error(
        "two checkpoint key handovers involve key {key}: a key signed two different histories, \
         so it was misused or has leaked; ask the operator"
    )]
    ConflictingHandovers {
        /// The key both handovers name.
        key: String,
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

/// As [`verify_export`], for a log whose checkpoint key changed. A handover note counts only
/// when both keys it names signed it. From the trusted `verifier`, the chain of handovers is
/// followed both ways: forward to the keys it handed over to, backward to the keys that handed
/// over to it. Each key vouches only for the tree sizes between the handover that brought it
/// in and the one that retired it. Two handovers from the same key, or to the same key, are a
/// key signing two histories: the export is refused. Handovers off the chain are ignored.
pub fn verify_export_with_handovers<'a>(
    entries: impl IntoIterator<Item = &'a [u8]>,
    notes: &[&str],
    handovers: &[&str],
    verifier: &NoteVerifier,
    origin: &str,
) -> Result<Verified, VerifyError> {
    let keys = key_spans(handovers, verifier, origin)?;
    let mut checkpoints: Vec<Checkpoint> = notes
        .iter()
        .enumerate()
        .map(|(position, note)| {
            let mut last = NoteError::Unverified(origin.to_owned());
            for (key, from, until) in &keys {
                match key.open_checkpoint(note, origin) {
                    Ok(c) if *from <= c.size && until.is_none_or(|u| c.size <= u) => return Ok(c),
                    Ok(_) => {
                        last = NoteError::Malformed(
                            "signed by a key that did not vouch for this tree size (see its key handovers)",
                        )
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

/// The trusted keys and the tree sizes each may vouch for: `(key, from, until)`, inclusive.
#[allow(clippy::type_complexity)]
fn key_spans(
    handovers: &[&str],
    trusted: &NoteVerifier,
    origin: &str,
) -> Result<Vec<(NoteVerifier, u64, Option<u64>)>, VerifyError> {
    let opened: Vec<(KeyHandover, NoteVerifier, NoteVerifier)> = handovers
        .iter()
        .filter_map(|note| KeyHandover::open(note, origin).ok())
        .collect();
    for (i, (a, a_old, a_new)) in opened.iter().enumerate() {
        for (b, b_old, b_new) in &opened[i + 1..] {
            if a == b {
                continue; // the same handover twice
            }
            if a_old == b_old || a_new == b_new {
                return Err(VerifyError::ConflictingHandovers {
                    key: if a_old == b_old {
                        a.old_key.clone()
                    } else {
                        a.new_key.clone()
                    },
                });
            }
        }
    }
    let from_key = |k: &NoteVerifier| opened.iter().find(|(_, old, _)| old == k);
    let to_key = |k: &NoteVerifier| opened.iter().find(|(_, _, new)| new == k);
    let mut spans = vec![(trusted.clone(), 0, None)];
    // Forward: the trusted key until its handover, its successor from then, and on.
    let mut key = trusted.clone();
    for _ in 0..opened.len() {
        let Some((h, _, new)) = from_key(&key) else {
            break;
        };
        if spans.iter().any(|(k, _, _)| k == new) {
            break; // a cycle
        }
        if let Some(last) = spans.last_mut() {
            last.2 = Some(h.size);
        }
        spans.push((new.clone(), h.size, None));
        key = new.clone();
    }
    // Backward: the trusted key from the handover that brought it in, its predecessor until
    // then, and back.
    let mut key = trusted.clone();
    for _ in 0..opened.len() {
        let Some((h, old, _)) = to_key(&key) else {
            break;
        };
        if spans.iter().any(|(k, _, _)| k == old) {
            break;
        }
        if let Some(span) = spans.iter_mut().find(|(k, _, _)| *k == key) {
            span.1 = h.size;
        }
        spans.push((old.clone(), 0, Some(h.size)));
        key = old.clone();
    }
    Ok(spans)
}
