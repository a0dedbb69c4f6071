//! Merkle tree heads and perfect subtrees.
//!
//! A *perfect subtree* `(level, index)` covers leaves `[index·2^level, (index+1)·2^level)`; its
//! hash never changes once its last leaf is appended. Storing these (one per node of the full
//! binary tree) lets any root, inclusion proof or consistency proof be computed with
//! O(log n) reads: see [`NodeSource`].

use std::collections::BTreeMap;

use crate::hash::{Hash, empty_root, node_hash};

/// Where perfect-subtree hashes come from (a database table, memory, an export being checked).
pub trait NodeSource {
    /// The error a lookup can fail with.
    type Error;
    /// The hash of the perfect subtree at `level` and `index`. Level 0 holds the leaf hashes.
    fn node(&self, level: u32, index: u64) -> Result<Hash, Self::Error>;
}

/// The largest power of two strictly smaller than `n` (`n ≥ 2`): RFC 6962's split point.
pub fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// The hash of leaves `[start, end)`, where the range is one RFC 6962 produces (`start` is a
/// multiple of the largest power of two not exceeding `end - start`).
pub fn range_hash<S: NodeSource>(src: &S, start: u64, end: u64) -> Result<Hash, S::Error> {
    let n = end - start;
    if n == 0 {
        return Ok(empty_root());
    }
    if n.is_power_of_two() && start.is_multiple_of(n) {
        return src.node(n.trailing_zeros(), start / n);
    }
    let k = split_point(n);
    Ok(node_hash(
        &range_hash(src, start, start + k)?,
        &range_hash(src, start + k, end)?,
    ))
}

/// The root of the tree of the first `size` leaves.
pub fn root<S: NodeSource>(src: &S, size: u64) -> Result<Hash, S::Error> {
    range_hash(src, 0, size)
}

/// The root of the tree of the first `size` leaves, where the leaves in `known` (index → leaf
/// hash, every index below `size`) are taken from the caller, not from `src`; every subtree
/// that holds none of them is read from `src`. Hashing the entries one serves and comparing
/// the result with a signed root proves them all at once, in O(k·log n) reads for k entries.
pub fn root_with_leaves<S: NodeSource>(
    src: &S,
    size: u64,
    known: &BTreeMap<u64, Hash>,
) -> Result<Hash, S::Error> {
    range_hash_with(src, 0, size, known)
}

fn range_hash_with<S: NodeSource>(
    src: &S,
    start: u64,
    end: u64,
    known: &BTreeMap<u64, Hash>,
) -> Result<Hash, S::Error> {
    let mut inside = known.range(start..end);
    match inside.next() {
        None => range_hash(src, start, end),
        Some((_, &leaf)) if end - start == 1 => Ok(leaf),
        Some(_) => {
            // The same split as `range_hash`, so the result is the same tree's root.
            let k = split_point(end - start);
            Ok(node_hash(
                &range_hash_with(src, start, start + k, known)?,
                &range_hash_with(src, start + k, end, known)?,
            ))
        }
    }
}

/// The right edge of a growing tree: the roots of its perfect subtrees, largest first. Appending
/// a leaf costs amortised O(1) hashes and yields the perfect subtrees it completes (to store);
/// the root costs O(log n). This is how an export is re-hashed at millions of entries a second.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// `(level, hash)` of each perfect subtree on the right edge, levels strictly decreasing.
    edge: Vec<(u32, Hash)>,
}

impl Frontier {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Leaves appended so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The perfect subtrees `(level, index)` on the right edge of a tree of `size` leaves,
    /// largest first: the O(log n) nodes to read to resume appending to a stored tree.
    pub fn edge_nodes(size: u64) -> Vec<(u32, u64)> {
        let mut start = 0u64;
        (0..64u32)
            .rev()
            .filter(|level| (size >> level) & 1 == 1)
            .map(|level| {
                let node = (level, start >> level);
                start += 1 << level;
                node
            })
            .collect()
    }

    /// Resumes a tree of `size` leaves from the hashes of its [`Frontier::edge_nodes`], in
    /// that order; `None` if the count does not match.
    pub fn from_edge(size: u64, hashes: &[Hash]) -> Option<Self> {
        let nodes = Self::edge_nodes(size);
        (nodes.len() == hashes.len()).then(|| Frontier {
            size,
            edge: nodes
                .iter()
                .map(|&(level, _)| level)
                .zip(hashes.iter().copied())
                .collect(),
        })
    }

    /// Appends a leaf hash; calls `completed(level, index, hash)` for every perfect subtree the
    /// leaf completes, the leaf itself (level 0) first.
    pub fn append(&mut self, leaf: Hash, mut completed: impl FnMut(u32, u64, &Hash)) {
        let index = self.size;
        completed(0, index, &leaf);
        let (mut level, mut hash) = (0u32, leaf);
        while let Some(&(l, left)) = self.edge.last() {
            if l != level {
                break;
            }
            self.edge.pop();
            hash = node_hash(&left, &hash);
            level += 1;
            completed(level, index >> level, &hash);
        }
        self.edge.push((level, hash));
        self.size += 1;
    }

    /// The current root.
    pub fn root(&self) -> Hash {
        let mut it = self.edge.iter().rev();
        match it.next() {
            None => empty_root(),
            Some(&(_, last)) => it.fold(last, |acc, (_, left)| node_hash(left, &acc)),
        }
    }
}

/// A tree held in memory, every perfect subtree stored: a [`NodeSource`] for tests, tools and
/// offline verification.
#[derive(Debug, Clone, Default)]
pub struct MemoryTree {
    frontier: Frontier,
    levels: Vec<Vec<Hash>>,
}

impl MemoryTree {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a leaf hash.
    pub fn append(&mut self, leaf: Hash) {
        let levels = &mut self.levels;
        self.frontier.append(leaf, |level, _, hash| {
            let level = level as usize; // a level is below 64
            if levels.len() <= level {
                levels.push(Vec::new());
            }
            levels[level].push(*hash);
        });
    }

    /// Leaves appended so far.
    pub fn size(&self) -> u64 {
        self.frontier.size()
    }

    /// The current root.
    pub fn root(&self) -> Hash {
        self.frontier.root()
    }
}

/// A node that is not (yet) in the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no perfect subtree at level {level}, index {index}")]
pub struct MissingNode {
    /// Its level.
    pub level: u32,
    /// Its index.
    pub index: u64,
}

impl NodeSource for MemoryTree {
    type Error = MissingNode;
    fn node(&self, level: u32, index: u64) -> Result<Hash, MissingNode> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.levels.get(level as usize)?.get(i).copied())
            .ok_or(MissingNode { level, index })
    }
}
