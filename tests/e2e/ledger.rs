//! The audit ledger: every decision is a leaf, checkpoints are signed, and tampering is found.

use silta_ledger::checkpoint::{NoteSigner, NoteVerifier};
use silta_ledger::entry::Entry;
use silta_ledger::verify::{VerifyError, verify_export};
use silta_tests::{LANDLORD, SOCIAL_A, TestGateway, enrol, report, valid_hetus};

const ORIGIN: &str = "silta.local/audit";

async fn export(gw: &TestGateway) -> (Vec<Vec<u8>>, Vec<String>) {
    let entries = gw.query_blobs("SELECT entry FROM audit ORDER BY seq").await;
    let notes = gw
        .query_strings("SELECT note FROM checkpoints ORDER BY size")
        .await;
    (entries, notes)
}

fn verify(
    entries: &[Vec<u8>],
    notes: &[String],
    key: &str,
) -> Result<silta_ledger::verify::Verified, VerifyError> {
    let verifier = NoteVerifier::parse(key).expect("verifier key");
    let notes: Vec<&str> = notes.iter().map(String::as_str).collect();
    verify_export(entries.iter().map(Vec::as_slice), &notes, &verifier, ORIGIN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_decision_is_in_a_ledger_that_verifies_and_tampering_is_found() {
    let mut gw = TestGateway::start_with(|c| c.ledger.checkpoint_every = 5).await;
    let mut social = gw.social(SOCIAL_A).await;
    let mut landlord = gw.landlord(LANDLORD).await;
    let codes = valid_hetus();
    for (i, code) in codes.iter().take(12).enumerate() {
        if i % 2 == 0 {
            social.enrol_client(enrol(code)).await.expect("enrolled");
        }
        landlord
            .report_rent_arrears(report(&format!("l-{i}"), code))
            .await
            .expect("accepted");
    }
    let _ = landlord
        .report_rent_arrears(report("bad", "not-a-code"))
        .await;
    gw.stop().await;

    let (entries, notes) = export(&gw).await;
    assert_eq!(
        entries.len(),
        6 + 12 + 1,
        "one leaf per decision: enrolments, reports, the denial"
    );
    assert!(
        notes.len() >= 2,
        "checkpoints during the run and at shutdown: {}",
        notes.len()
    );
    let verified = verify(&entries, &notes, &gw.checkpoint_key).expect("the ledger verifies");
    assert_eq!(
        (verified.entries, verified.anchored),
        (19, 19),
        "the final checkpoint covers every entry"
    );

    // Entries hold pseudonyms and field names, never an identity code.
    for bytes in &entries {
        let entry = Entry::decode(bytes).expect("canonical");
        let text = format!("{entry:?}");
        assert!(codes.iter().all(|c| !text.contains(c.as_str())), "{text}");
    }
    let allowed = entries
        .iter()
        .filter_map(|b| Entry::decode(b).ok())
        .find(|e| e.reason == "consent")
        .expect("a disclosure");
    assert_eq!(allowed.recipients, [SOCIAL_A]);
    assert!(allowed.fields.contains(&"arrears_band".to_owned()));

    // A byte changed in one entry.
    let mut changed = entries.clone();
    let last = changed[7].len() - 1;
    changed[7][last] ^= 1;
    assert!(matches!(
        verify(&changed, &notes, &gw.checkpoint_key),
        Err(VerifyError::Entry { index: 7, .. } | VerifyError::RootMismatch { .. })
    ));
    let mut rewritten = entries.clone();
    let mut entry = Entry::decode(&rewritten[7]).expect("canonical");
    entry.recipients.clear();
    rewritten[7] = entry.encode().expect("encodes");
    match verify(&rewritten, &notes, &gw.checkpoint_key) {
        Err(VerifyError::RootMismatch { from, to }) => assert!(from <= 7 && 7 < to, "{from}..{to}"),
        other => panic!("a rewritten entry was not found: {other:?}"),
    }
    // An entry deleted; two entries swapped.
    let mut deleted = entries.clone();
    deleted.remove(3);
    assert!(verify(&deleted, &notes, &gw.checkpoint_key).is_err());
    let mut swapped = entries.clone();
    swapped.swap(2, 3);
    assert!(matches!(
        verify(&swapped, &notes, &gw.checkpoint_key),
        Err(VerifyError::RootMismatch { .. })
    ));
    // A checkpoint re-signed with another key.
    let forger = NoteSigner::from_seed(ORIGIN, &[9; 32]).expect("signer");
    let body = NoteVerifier::parse(&gw.checkpoint_key)
        .expect("key")
        .open(&notes[0])
        .expect("valid")
        .to_owned();
    let mut forged = notes.clone();
    forged[0] = forger.sign(&body).expect("signed");
    assert!(matches!(
        verify(&entries, &forged, &gw.checkpoint_key),
        Err(VerifyError::Checkpoint { position: 0, .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_continues_across_restarts() {
    let mut gw = TestGateway::start().await;
    gw.social(SOCIAL_A)
        .await
        .enrol_client(enrol("150385-9345"))
        .await
        .expect("enrolled");
    gw.restart().await;
    gw.landlord(LANDLORD)
        .await
        .report_rent_arrears(report("after", "150385-9345"))
        .await
        .expect("accepted");
    gw.stop().await;
    let (entries, notes) = export(&gw).await;
    let verified = verify(&entries, &notes, &gw.checkpoint_key).expect("one tree across restarts");
    assert_eq!((verified.entries, verified.anchored), (2, 2));
}
