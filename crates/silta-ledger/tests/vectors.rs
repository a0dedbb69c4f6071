//! Known answers from RFC 6962 / Certificate Transparency and Go's `sumdb/note`, and a naive
//! reference tree, written straight from the RFC's recursive definitions, cross-checking the
//! fast code on random trees.

// Tree sizes here are a few hundred at most, so index casts cannot truncate.
#![allow(clippy::cast_possible_truncation)]

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use proptest::prelude::*;
use silta_ledger::checkpoint::{Checkpoint, NoteError, NoteSigner, NoteVerifier};
use silta_ledger::proof::{
    ProofError, consistency_proof, inclusion_proof, verify_consistency, verify_inclusion,
};
use silta_ledger::tree::{MemoryTree, root, root_with_leaves, split_point};
use silta_ledger::{Hash, empty_root, leaf_hash, node_hash};

fn h(hex: &str) -> Hash {
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect();
    bytes.try_into().expect("32 bytes")
}

/// The leaves and roots of the CT / transparency-dev reference tree (sizes 0..=8).
const LEAVES: [&str; 8] = [
    "",
    "00",
    "10",
    "2021",
    "3031",
    "40414243",
    "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
];
const ROOTS: [&str; 9] = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
];

fn reference_tree() -> MemoryTree {
    let mut t = MemoryTree::new();
    for leaf in LEAVES {
        let bytes: Vec<u8> = (0..leaf.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&leaf[i..i + 2], 16).expect("hex"))
            .collect();
        t.append(leaf_hash(&bytes));
    }
    t
}

#[test]
fn roots_match_rfc_6962_for_every_size() {
    let t = reference_tree();
    assert_eq!(empty_root(), h(ROOTS[0]));
    for (size, want) in ROOTS.iter().enumerate() {
        assert_eq!(
            root(&t, size as u64).expect("stored"),
            h(want),
            "size {size}"
        );
    }
    assert_eq!(t.root(), h(ROOTS[8]));
}

#[test]
fn proofs_match_the_published_vectors() {
    let t = reference_tree();
    let inclusion: [(u64, u64, &[&str]); 2] = [
        (
            0,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            5,
            8,
            &[
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
    ];
    for (index, size, want) in inclusion {
        let want: Vec<Hash> = want.iter().map(|x| h(x)).collect();
        assert_eq!(
            inclusion_proof(&t, index, size)
                .expect("stored")
                .expect("valid"),
            want
        );
    }
    let consistency: [(u64, u64, &[&str]); 3] = [
        (
            2,
            8,
            &[
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            6,
            8,
            &[
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (
            2,
            5,
            &[
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
    ];
    for (first, second, want) in consistency {
        let want: Vec<Hash> = want.iter().map(|x| h(x)).collect();
        assert_eq!(
            consistency_proof(&t, first, second)
                .expect("stored")
                .expect("valid"),
            want
        );
        let (r1, r2) = (h(ROOTS[first as usize]), h(ROOTS[second as usize]));
        assert_eq!(verify_consistency(first, second, &r1, &r2, &want), Ok(()));
        assert_eq!(
            verify_consistency(first, second, &h(ROOTS[1]), &r2, &want),
            Err(ProofError::Mismatch)
        );
    }
}

// The reference: RFC 6962 §2.1 written as recursion over a slice, no cleverness.
fn mth(d: &[Hash]) -> Hash {
    match d.len() {
        0 => empty_root(),
        1 => d[0],
        n => {
            let k = split_point(n as u64) as usize;
            node_hash(&mth(&d[..k]), &mth(&d[k..]))
        }
    }
}

fn path(m: usize, d: &[Hash]) -> Vec<Hash> {
    if d.len() <= 1 {
        return Vec::new();
    }
    let k = split_point(d.len() as u64) as usize;
    if m < k {
        let mut p = path(m, &d[..k]);
        p.push(mth(&d[k..]));
        p
    } else {
        let mut p = path(m - k, &d[k..]);
        p.push(mth(&d[..k]));
        p
    }
}

fn subproof(m: usize, d: &[Hash], whole: bool) -> Vec<Hash> {
    let n = d.len();
    if m == n {
        return if whole { Vec::new() } else { vec![mth(d)] };
    }
    let k = split_point(n as u64) as usize;
    if m <= k {
        let mut p = subproof(m, &d[..k], whole);
        p.push(mth(&d[k..]));
        p
    } else {
        let mut p = subproof(m - k, &d[k..], false);
        p.push(mth(&d[..k]));
        p
    }
}

fn leaves(n: usize, seed: u64) -> Vec<Hash> {
    (0..n as u64)
        .map(|i| leaf_hash(&(i ^ seed).to_be_bytes()))
        .collect()
}

fn tree_of(d: &[Hash]) -> MemoryTree {
    let mut t = MemoryTree::new();
    d.iter().for_each(|l| t.append(*l));
    t
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn fast_tree_agrees_with_the_reference(n in 1usize..300, seed in any::<u64>(), pick in any::<u64>()) {
        let d = leaves(n, seed);
        let t = tree_of(&d);
        let size = 1 + (pick % n as u64) as usize;
        prop_assert_eq!(t.root(), mth(&d));
        prop_assert_eq!(root(&t, size as u64).expect("stored"), mth(&d[..size]));
        let index = (pick >> 20) as usize % size;
        let proof = inclusion_proof(&t, index as u64, size as u64).expect("stored").expect("valid");
        prop_assert_eq!(&proof, &path(index, &d[..size]));
        prop_assert_eq!(verify_inclusion(&d[index], index as u64, size as u64, &proof, &mth(&d[..size])), Ok(()));
        let first = 1 + (pick >> 40) as usize % size;
        let cproof = consistency_proof(&t, first as u64, size as u64).expect("stored").expect("valid");
        if first < size {
            prop_assert_eq!(&cproof, &subproof(first, &d[..size], true));
        }
        prop_assert_eq!(verify_consistency(first as u64, size as u64, &mth(&d[..first]), &mth(&d[..size]), &cproof), Ok(()));
    }

    #[test]
    fn corrupted_proofs_never_verify(n in 2usize..200, seed in any::<u64>(), pick in any::<u64>(), flip in 0usize..32) {
        let d = leaves(n, seed);
        let t = tree_of(&d);
        let size = n as u64;
        let index = pick % size;
        let root = t.root();
        let proof = inclusion_proof(&t, index, size).expect("stored").expect("valid");
        let leaf = d[index as usize];
        // Wrong index, wrong leaf, a flipped bit, a dropped or an extra hash. (A wrong size is
        // caught by the signed checkpoint that vouches for size and root together.)
        prop_assert!(verify_inclusion(&leaf, (index + 1) % size, size, &proof, &root).is_err() || d[((index + 1) % size) as usize] == leaf);
        prop_assert!(verify_inclusion(&leaf_hash(b"forged"), index, size, &proof, &root).is_err());
        let mut bad = proof.clone();
        let at = (pick as usize >> 8) % bad.len();
        bad[at][flip] ^= 1;
        prop_assert!(verify_inclusion(&leaf, index, size, &bad, &root).is_err());
        prop_assert!(verify_inclusion(&leaf, index, size, &proof[..proof.len() - 1], &root).is_err());
        let mut longer = proof.clone();
        longer.push(root);
        prop_assert!(verify_inclusion(&leaf, index, size, &longer, &root).is_err());

        let first = 1 + pick % (size - 1);
        let old_root = mth(&d[..first as usize]);
        let cproof = consistency_proof(&t, first, size).expect("stored").expect("valid");
        let mut rewritten = d.clone();
        rewritten[(pick >> 32) as usize % first as usize] = leaf_hash(b"rewritten history");
        prop_assert!(verify_consistency(first, size, &old_root, &mth(&rewritten), &cproof).is_err());
        if !cproof.is_empty() {
            let mut bad = cproof.clone();
            bad[0][flip] ^= 1;
            prop_assert!(verify_consistency(first, size, &old_root, &root, &bad).is_err());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Leaves taken from the caller (the entries an audit read serves) give the signed root
    /// exactly when they are the leaves the tree holds, whichever leaves they are.
    #[test]
    fn a_root_over_served_leaves_matches_only_when_they_are_genuine(
        n in 1usize..300, seed in any::<u64>(), picks in proptest::collection::vec(any::<u64>(), 1..40), flip in 0usize..32,
    ) {
        let d = leaves(n, seed);
        let t = tree_of(&d);
        let size = 1 + (picks[0] % n as u64);
        let known: std::collections::BTreeMap<u64, Hash> = picks
            .iter()
            .map(|p| (p >> 8) % size)
            .map(|i| (i, d[i as usize]))
            .collect();
        prop_assert_eq!(root_with_leaves(&t, size, &known).expect("stored"), mth(&d[..size as usize]));
        let mut changed = known.clone();
        let (&victim, _) = changed.iter().nth((picks[0] >> 40) as usize % known.len()).expect("non-empty");
        changed.get_mut(&victim).expect("present")[flip] ^= 1;
        prop_assert_ne!(root_with_leaves(&t, size, &changed).expect("stored"), mth(&d[..size as usize]));
    }
}

// Go's golang.org/x/mod/sumdb/note example key, text and signature.
const PETER_SKEY: &str =
    "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
const PETER_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
const PETER_TEXT: &str = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n";
const PETER_SIG: &str =
    "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=";

fn peter() -> NoteSigner {
    let material = STANDARD
        .decode(PETER_SKEY.splitn(5, '+').nth(4).expect("key material"))
        .expect("base64");
    let seed: [u8; 32] = material[1..].try_into().expect("32-byte seed");
    NoteSigner::from_seed("PeterNeumann", &seed).expect("signer")
}

#[test]
fn signed_notes_match_go_sumdb_note_byte_for_byte() {
    let signer = peter();
    assert_eq!(signer.verifier_key(), PETER_VKEY);
    let note = signer.sign(PETER_TEXT).expect("signed");
    assert_eq!(
        note,
        format!("{PETER_TEXT}\n\u{2014} PeterNeumann {PETER_SIG}\n")
    );
    let verifier = NoteVerifier::parse(PETER_VKEY).expect("key");
    assert_eq!(verifier.open(&note), Ok(PETER_TEXT));
    // A cosignature by another key, before or after ours, is ignored either way.
    let enoch = "\u{2014} EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n";
    let cosigned_after = format!("{note}{enoch}");
    let cosigned_before = format!("{PETER_TEXT}\n{enoch}\u{2014} PeterNeumann {PETER_SIG}\n");
    assert_eq!(verifier.open(&cosigned_after), Ok(PETER_TEXT));
    assert_eq!(verifier.open(&cosigned_before), Ok(PETER_TEXT));
    // A malformed line fails the note wherever it stands; so does a carriage return.
    assert!(verifier.open(&format!("{note}not a signature\n")).is_err());
    assert!(
        verifier
            .open(&format!(
                "{PETER_TEXT}\nnot a signature\n\u{2014} PeterNeumann {PETER_SIG}\n"
            ))
            .is_err()
    );
    assert!(verifier.open(&note.replace('\n', "\r\n")).is_err());
    assert!(NoteVerifier::parse(&PETER_VKEY.replace("c74f20a3", "C74F20A3")).is_ok());
    let tampered = note.replace("cryptography", "cryptographY");
    assert!(matches!(
        verifier.open(&tampered),
        Err(NoteError::Unverified(_))
    ));
}

#[test]
fn checkpoints_round_trip_and_reject_tampering_and_other_keys() {
    let signer = NoteSigner::from_seed("silta.example/audit", &[7; 32]).expect("signer");
    let verifier = NoteVerifier::parse(&signer.verifier_key()).expect("key");
    let cp = Checkpoint {
        origin: "silta.example/audit".into(),
        size: 8,
        root: h(ROOTS[8]),
    };
    let note = signer.sign(&cp.body()).expect("signed");
    assert!(note.starts_with("silta.example/audit\n8\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\n\n\u{2014} silta.example/audit "));
    assert_eq!(
        verifier.open_checkpoint(&note, "silta.example/audit"),
        Ok(cp.clone())
    );
    assert!(verifier.open_checkpoint(&note, "other/log").is_err());
    assert!(verifier.open(&note.replacen("\n8\n", "\n9\n", 1)).is_err());
    let other = NoteSigner::from_seed("silta.example/audit", &[8; 32]).expect("signer");
    assert!(
        verifier
            .open(&other.sign(&cp.body()).expect("signed"))
            .is_err()
    );
    for bad in [
        "",
        "origin\n",
        "origin\n08\nAA==\n",
        "origin\n1\nnot base64\n",
        "origin\n-1\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\n",
    ] {
        assert!(Checkpoint::parse(bad).is_err(), "{bad:?}");
    }
    assert!(
        NoteVerifier::parse("PeterNeumann+00000000+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")
            .is_err()
    );
}

proptest! {
    #[test]
    fn a_frontier_resumed_from_stored_edge_nodes_continues_the_same_tree(n in 0usize..500, more in 1usize..50) {
        let d = leaves(n + more, 99);
        let t = tree_of(&d[..n]);
        let edge: Vec<Hash> = silta_ledger::tree::Frontier::edge_nodes(n as u64)
            .into_iter()
            .map(|(level, index)| silta_ledger::tree::NodeSource::node(&t, level, index).expect("stored"))
            .collect();
        let mut resumed = silta_ledger::tree::Frontier::from_edge(n as u64, &edge).expect("edge matches size");
        prop_assert_eq!(resumed.root(), mth(&d[..n]));
        for leaf in &d[n..] {
            resumed.append(*leaf, |_, _, _| {});
        }
        prop_assert_eq!(resumed.root(), mth(&d));
    }
}

#[test]
fn a_history_rewritten_and_re_signed_is_caught_by_a_checkpoint_kept_from_before() {
    use silta_ledger::entry::Entry;
    use silta_ledger::verify::{VerifyError, verify_export};
    let signer = NoteSigner::from_seed("log/audit", &[5; 32]).expect("signer");
    let verifier = NoteVerifier::parse(&signer.verifier_key()).expect("key");
    let entry = |i: u64, who: &str| {
        Entry {
            time_ms: i64::try_from(i).expect("small"),
            reason: who.into(),
            ..Entry::default()
        }
        .encode()
        .expect("encodes")
    };
    let checkpoint = |entries: &[Vec<u8>]| {
        let hashes: Vec<Hash> = entries.iter().map(|e| leaf_hash(e)).collect();
        let body = Checkpoint {
            origin: "log/audit".into(),
            size: entries.len() as u64,
            root: mth(&hashes),
        }
        .body();
        signer.sign(&body).expect("signed")
    };
    let original: Vec<Vec<u8>> = (0..8).map(|i| entry(i, "original")).collect();
    let held = checkpoint(&original); // the auditor kept this one, at size 8

    // The operator rewrites entries 5.. from the checkpoint at 5, grows the log, and signs fresh
    // checkpoints with the real key. On its own the export is self-consistent.
    let rewritten: Vec<Vec<u8>> = (0..10)
        .map(|i| entry(i, if i < 5 { "original" } else { "rewritten" }))
        .collect();
    let resigned = [checkpoint(&rewritten[..5]), checkpoint(&rewritten)];
    let mut notes: Vec<&str> = resigned.iter().map(String::as_str).collect();
    let export = || rewritten.iter().map(Vec::as_slice);
    assert!(verify_export(export(), &notes, &verifier, "log/audit").is_ok());
    // With the checkpoint kept from before, the rewrite shows.
    notes.push(&held);
    assert_eq!(
        verify_export(export(), &notes, &verifier, "log/audit"),
        Err(VerifyError::RootMismatch { from: 5, to: 8 })
    );
}

#[test]
fn a_checkpoint_key_handover_is_followed_only_from_the_trusted_key() {
    use silta_ledger::checkpoint::KeyHandover;
    use silta_ledger::entry::Entry;
    use silta_ledger::verify::{VerifyError, verify_export_with_handovers};
    let old = NoteSigner::from_seed("log/audit", &[5; 32]).expect("signer");
    let new = NoteSigner::from_seed("log/audit", &[6; 32]).expect("signer");
    let stranger = NoteSigner::from_seed("log/audit", &[7; 32]).expect("signer");
    let trusted = NoteVerifier::parse(&old.verifier_key()).expect("key");
    let entries: Vec<Vec<u8>> = (0..6)
        .map(|i| {
            Entry {
                time_ms: i,
                reason: "e".into(),
                ..Entry::default()
            }
            .encode()
            .expect("encodes")
        })
        .collect();
    let checkpoint = |size: usize, by: &NoteSigner| {
        let hashes: Vec<Hash> = entries[..size].iter().map(|e| leaf_hash(e)).collect();
        let body = Checkpoint {
            origin: "log/audit".into(),
            size: size as u64,
            root: mth(&hashes),
        }
        .body();
        by.sign(&body).expect("signed")
    };
    let handover = |from: &NoteSigner, to: &NoteSigner, second: &NoteSigner| {
        let h = KeyHandover {
            origin: "log/audit".into(),
            size: 3,
            old_key: from.verifier_key(),
            new_key: to.verifier_key(),
        };
        h.sign(from, second).expect("signed")
    };
    let export = || entries.iter().map(Vec::as_slice);
    let good = handover(&old, &new, &new);
    let (before, after) = (checkpoint(2, &old), checkpoint(6, &new));
    let notes = [before.as_str(), after.as_str()];
    let verified = verify_export_with_handovers(export(), &notes, &[&good], &trusted, "log/audit")
        .expect("the chain from the trusted key verifies");
    assert_eq!((verified.checkpoints, verified.anchored), (2, 6));
    // Without the handover the new key is unknown.
    assert!(matches!(
        verify_export_with_handovers(export(), &notes, &[], &trusted, "log/audit"),
        Err(VerifyError::Checkpoint { position: 1, .. })
    ));
    // The retired key cannot vouch for a size past the handover, even though it signed it.
    let late = checkpoint(5, &old);
    assert!(matches!(
        verify_export_with_handovers(export(), &[&late], &[&good], &trusted, "log/audit"),
        Err(VerifyError::Checkpoint { position: 0, .. })
    ));
    // Nor can the new key vouch for a size before the handover.
    let early = checkpoint(2, &new);
    assert!(matches!(
        verify_export_with_handovers(export(), &[&early], &[&good], &trusted, "log/audit"),
        Err(VerifyError::Checkpoint { position: 0, .. })
    ));
    // An auditor who trusts the new key follows the handover backwards to the old one.
    let trusts_new = NoteVerifier::parse(&new.verifier_key()).expect("key");
    assert!(
        verify_export_with_handovers(export(), &notes, &[&good], &trusts_new, "log/audit").is_ok()
    );
    assert!(
        verify_export_with_handovers(export(), &[&late], &[&good], &trusts_new, "log/audit")
            .is_err()
    );
    // A leaked old key that hands over a second time, to a key of the thief's, is caught.
    let forged = handover(&old, &stranger, &stranger);
    assert!(matches!(
        verify_export_with_handovers(export(), &notes, &[&good, &forged], &trusted, "log/audit"),
        Err(VerifyError::ConflictingHandovers { .. })
    ));
    // The same handover twice is no conflict.
    assert!(
        verify_export_with_handovers(export(), &notes, &[&good, &good], &trusted, "log/audit")
            .is_ok()
    );
    // A handover the new key did not sign, or one from a key nobody trusts, is ignored.
    let unproven = handover(&old, &new, &stranger);
    let rogue = handover(&stranger, &new, &new);
    for bad in [&unproven, &rogue] {
        assert!(
            verify_export_with_handovers(export(), &notes, &[bad.as_str()], &trusted, "log/audit")
                .is_err()
        );
    }
}

proptest! {
    #[test]
    fn note_and_checkpoint_parsers_never_panic_on_hostile_text(
        text in "\\PC{0,200}",
        lines in proptest::collection::vec("(\u{2014} )?[A-Za-z0-9+/=. -]{0,80}", 0..6),
    ) {
        let verifier = NoteVerifier::parse(PETER_VKEY).expect("key");
        let note = format!("{text}\n\n{}\n", lines.join("\n"));
        prop_assert!(verifier.open(&note).is_err());
        let _ = verifier.open(&text);
        let _ = Checkpoint::parse(&text);
        let _ = NoteVerifier::parse(&text);
        prop_assert!(silta_ledger::checkpoint::KeyHandover::open(&note, "log/audit").is_err());
    }
}
