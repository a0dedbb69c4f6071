//! Proofs over the stored ledger. The proof algorithms depend only on sizes, so a first pass
//! records which perfect subtrees a proof needs; they are then read in one go (O(log n) reads)
//! and the proof is computed over them.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;

use silta_ledger::Hash;
use silta_ledger::proof::{ProofError, consistency_proof, inclusion_proof};
use silta_ledger::tree::{MissingNode, NodeSource, root_with_leaves};
use silta_store::{Store, StoreError};

struct Recorder(RefCell<Vec<(u32, u64)>>);

impl NodeSource for Recorder {
    type Error = Infallible;
    fn node(&self, level: u32, index: u64) -> Result<Hash, Infallible> {
        self.0.borrow_mut().push((level, index));
        Ok([0; 32])
    }
}

struct Fetched(HashMap<(u32, u64), Hash>);

impl NodeSource for Fetched {
    type Error = MissingNode;
    fn node(&self, level: u32, index: u64) -> Result<Hash, MissingNode> {
        self.0
            .get(&(level, index))
            .copied()
            .ok_or(MissingNode { level, index })
    }
}

/// A proof could not be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProveError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The sizes do not describe a proof.
    #[error(transparent)]
    Proof(#[from] ProofError),
    /// A node the proof needs is not stored.
    #[error(transparent)]
    Missing(#[from] MissingNode),
}

async fn fetch(store: &dyn Store, wanted: Vec<(u32, u64)>) -> Result<Fetched, StoreError> {
    let hashes = store.ledger_nodes(&wanted).await?;
    Ok(Fetched(wanted.into_iter().zip(hashes).collect()))
}

/// The inclusion proof of leaf `index` in the tree of `size` leaves, and the leaf hash.
pub(crate) async fn inclusion(
    store: &dyn Store,
    index: u64,
    size: u64,
) -> Result<(Hash, Vec<Hash>), ProveError> {
    let recorder = Recorder(RefCell::new(Vec::new()));
    let Ok(listed) = inclusion_proof(&recorder, index, size);
    listed?;
    let mut wanted = recorder.0.into_inner();
    wanted.push((0, index));
    let fetched = fetch(store, wanted).await?;
    let proof = inclusion_proof(&fetched, index, size)??;
    Ok((fetched.node(0, index)?, proof))
}

/// The consistency proof from the tree of `from` leaves to the tree of `to` leaves.
pub(crate) async fn consistency(
    store: &dyn Store,
    from: u64,
    to: u64,
) -> Result<Vec<Hash>, ProveError> {
    let recorder = Recorder(RefCell::new(Vec::new()));
    let Ok(listed) = consistency_proof(&recorder, from, to);
    listed?;
    let fetched = fetch(store, recorder.0.into_inner()).await?;
    Ok(consistency_proof(&fetched, from, to)??)
}

/// The root of the tree of `size` leaves with the leaves in `known` hashed from the entries the
/// caller holds and every other subtree read from the store, in one read.
pub(crate) async fn root_over(
    store: &dyn Store,
    size: u64,
    known: &BTreeMap<u64, Hash>,
) -> Result<Hash, ProveError> {
    let recorder = Recorder(RefCell::new(Vec::new()));
    let Ok(_) = root_with_leaves(&recorder, size, known);
    let fetched = fetch(store, recorder.0.into_inner()).await?;
    Ok(root_with_leaves(&fetched, size, known)?)
}
