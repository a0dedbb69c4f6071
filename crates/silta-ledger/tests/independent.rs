//! Cross-check against an independent, published implementation of RFC 6962: the `ct-merkle`
//! crate. Same leaves in, byte-identical roots and proofs out, on random trees.

// Tree sizes here are a few hundred at most, so index casts cannot truncate.
#![allow(clippy::cast_possible_truncation)]

use ct_merkle::mem_backed_tree::MemoryBackedTree;
use proptest::prelude::*;
use sha2::Sha256;
use silta_ledger::leaf_hash;
use silta_ledger::proof::{consistency_proof, inclusion_proof};
use silta_ledger::tree::MemoryTree;

fn flat(hashes: &[silta_ledger::Hash]) -> Vec<u8> {
    hashes.concat()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(100))]

    #[test]
    fn roots_and_proofs_are_byte_identical_to_ct_merkle(
        leaves in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..200),
        pick in any::<u64>(),
    ) {
        let mut theirs = MemoryBackedTree::<Sha256, Vec<u8>>::new();
        let mut ours = MemoryTree::new();
        for leaf in &leaves {
            theirs.push(leaf.clone());
            ours.append(leaf_hash(leaf));
        }
        let n = leaves.len() as u64;
        let (their_root, our_root) = (theirs.root(), ours.root());
        prop_assert_eq!(their_root.as_bytes().as_slice(), our_root.as_slice());

        let index = pick % n;
        let mine = inclusion_proof(&ours, index, n).expect("stored").expect("valid");
        prop_assert_eq!(theirs.prove_inclusion(index as usize).as_bytes().to_vec(), flat(&mine));

        if n > 1 {
            let additions = 1 + (pick >> 32) % (n - 1); // the older tree keeps at least one leaf
            let mine = consistency_proof(&ours, n - additions, n).expect("stored").expect("valid");
            prop_assert_eq!(theirs.prove_consistency(additions as usize).as_bytes().to_vec(), flat(&mine));
        }
    }
}
