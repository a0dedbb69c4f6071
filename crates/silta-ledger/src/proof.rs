//! Inclusion and consistency proofs: generated from stored perfect subtrees (RFC 6962 §2.1.1,
//! §2.1.2) and verified without the tree (RFC 9162 §2.1.3.2, §2.1.4.2).

use crate::hash::{Hash, node_hash};
use crate::tree::{NodeSource, range_hash, split_point};

/// Why a proof was not produced or did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProofError {
    /// The index or sizes do not describe a proof (index beyond the tree, sizes reversed, …).
    #[error("no such proof: {0}")]
    OutOfRange(&'static str),
    /// The proof has the wrong number of hashes for the sizes given.
    #[error("proof has the wrong length")]
    Length,
    /// The recomputed root differs: the entry is not in the tree, or the trees disagree.
    #[error("root mismatch: the proof does not verify")]
    Mismatch,
}

/// The audit path of leaf `index` in the tree of the first `size` leaves.
pub fn inclusion_proof<S: NodeSource>(
    src: &S,
    index: u64,
    size: u64,
) -> Result<Result<Vec<Hash>, ProofError>, S::Error> {
    if index >= size {
        return Ok(Err(ProofError::OutOfRange(
            "leaf index must be below the tree size",
        )));
    }
    let mut proof = Vec::new();
    let (mut start, mut end, mut m) = (0u64, size, index);
    // Walk down from the root, collecting siblings; RFC 6962 lists them leaf-side first.
    while end - start > 1 {
        let k = split_point(end - start);
        if m < k {
            proof.push(range_hash(src, start + k, end)?);
            end = start + k;
        } else {
            proof.push(range_hash(src, start, start + k)?);
            start += k;
            m -= k;
        }
    }
    proof.reverse();
    Ok(Ok(proof))
}

/// The proof that the tree of `first` leaves is a prefix of the tree of `second` leaves.
pub fn consistency_proof<S: NodeSource>(
    src: &S,
    first: u64,
    second: u64,
) -> Result<Result<Vec<Hash>, ProofError>, S::Error> {
    if first > second {
        return Ok(Err(ProofError::OutOfRange(
            "the first tree size must not exceed the second",
        )));
    }
    if first == 0 || first == second {
        return Ok(Ok(Vec::new()));
    }
    let mut proof = Vec::new();
    let (mut start, mut end, mut m, mut whole) = (0u64, second, first, true);
    // SUBPROOF(m, D[start:end], whole), iteratively; hashes are collected root-side first.
    loop {
        let n = end - start;
        if m == n {
            if !whole {
                proof.push(range_hash(src, start, end)?);
            }
            break;
        }
        let k = split_point(n);
        if m <= k {
            proof.push(range_hash(src, start + k, end)?);
            end = start + k;
        } else {
            proof.push(range_hash(src, start, start + k)?);
            start += k;
            m -= k;
            whole = false;
        }
    }
    proof.reverse();
    Ok(Ok(proof))
}

/// Verifies that `leaf` is leaf `index` of the tree of `size` leaves whose root is `root`.
pub fn verify_inclusion(
    leaf: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::OutOfRange(
            "leaf index must be below the tree size",
        ));
    }
    let (mut f, mut s, mut r) = (index, size - 1, *leaf);
    for p in proof {
        if s == 0 {
            return Err(ProofError::Length);
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(ProofError::Length);
    }
    if &r == root {
        Ok(())
    } else {
        Err(ProofError::Mismatch)
    }
}

/// Verifies that the tree of `first` leaves with root `first_root` is a prefix of the tree of
/// `second` leaves with root `second_root`.
pub fn verify_consistency(
    first: u64,
    second: u64,
    first_root: &Hash,
    second_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if first > second {
        return Err(ProofError::OutOfRange(
            "the first tree size must not exceed the second",
        ));
    }
    if first == second {
        if !proof.is_empty() {
            return Err(ProofError::Length);
        }
        return if first_root == second_root {
            Ok(())
        } else {
            Err(ProofError::Mismatch)
        };
    }
    if first == 0 {
        // Every tree extends the empty one.
        return if proof.is_empty() {
            Ok(())
        } else {
            Err(ProofError::Length)
        };
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if first.is_power_of_two() {
        path.push(*first_root);
    }
    path.extend_from_slice(proof);
    let Some((seed, rest)) = path.split_first() else {
        return Err(ProofError::Length);
    };
    let (mut f, mut s) = (first - 1, second - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (*seed, *seed);
    for c in rest {
        if s == 0 {
            return Err(ProofError::Length);
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(ProofError::Length);
    }
    if &fr == first_root && &sr == second_root {
        Ok(())
    } else {
        Err(ProofError::Mismatch)
    }
}
