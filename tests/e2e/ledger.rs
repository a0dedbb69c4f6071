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
        1 + 6 + 12 + 1,
        "one leaf per decision: the policy set loaded, enrolments, reports, the denial"
    );
    assert!(
        notes.len() >= 2,
        "checkpoints during the run and at shutdown: {}",
        notes.len()
    );
    let verified = verify(&entries, &notes, &gw.checkpoint_key).expect("the ledger verifies");
    assert_eq!(
        (verified.entries, verified.anchored),
        (20, 20),
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
        .find(|e| e.reason == "disclosed")
        .expect("a disclosure");
    assert_eq!(allowed.recipients, [SOCIAL_A]);
    assert!(allowed.fields.contains(&"arrears_band".to_owned()));

    // A byte changed in one entry.
    let mut changed = entries.clone();
    let last = changed[8].len() - 1;
    changed[8][last] ^= 1;
    assert!(matches!(
        verify(&changed, &notes, &gw.checkpoint_key),
        Err(VerifyError::Entry { index: 8, .. } | VerifyError::RootMismatch { .. })
    ));
    let mut rewritten = entries.clone();
    let mut entry = Entry::decode(&rewritten[8]).expect("canonical");
    entry.recipients.clear();
    rewritten[8] = entry.encode().expect("encodes");
    match verify(&rewritten, &notes, &gw.checkpoint_key) {
        Err(VerifyError::RootMismatch { from, to }) => assert!(from <= 8 && 8 < to, "{from}..{to}"),
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
    // Each start records the policy set it loaded.
    assert_eq!((verified.entries, verified.anchored), (4, 4));
}

mod service {
    use std::time::Duration;

    use silta_ledger::checkpoint::NoteVerifier;
    use silta_ledger::proof::{verify_consistency, verify_inclusion};
    use silta_server::proto;
    use silta_tests::{DPO, LANDLORD, SOCIAL_A, TestGateway, enrol, report};
    use tokio_stream::StreamExt;
    use tonic::Code;

    const RESIDENT: &str = "150385-9345";
    const OTHER: &str = "020702A9514";

    fn hash(bytes: &[u8]) -> silta_ledger::Hash {
        bytes.try_into().expect("32 bytes")
    }

    async fn checkpoint_at_least(gw: &TestGateway, size: u64) -> proto::SignedCheckpoint {
        let mut audit = gw.audit(DPO).await;
        for _ in 0..100 {
            if let Ok(c) = audit
                .get_checkpoint(proto::GetCheckpointRequest { size: 0 })
                .await
            {
                let c = c.into_inner();
                if c.size >= size {
                    return c;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no checkpoint of size {size} within 5 s");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_dpo_answers_an_access_request_and_proves_it_from_checkpoints() {
        let gw = TestGateway::start_with(|c| c.ledger.checkpoint_every = 1).await;
        let mut social = gw.social(SOCIAL_A).await;
        let mut landlord = gw.landlord(LANDLORD).await;
        social
            .enrol_client(enrol(RESIDENT))
            .await
            .expect("enrolled");
        landlord
            .report_rent_arrears(report("a-1", RESIDENT))
            .await
            .expect("accepted");
        landlord
            .report_rent_arrears(report("a-2", OTHER))
            .await
            .expect("accepted");
        let first = checkpoint_at_least(&gw, 3).await;

        // A resident's access request: by identity code, only their entries.
        let mut audit = gw.audit(DPO).await;
        let query = proto::AuditQueryRequest {
            subject_hetu: RESIDENT.into(),
            ..Default::default()
        };
        let entries: Vec<proto::AuditEntry> = audit
            .query(query)
            .await
            .expect("query")
            .into_inner()
            .collect::<Result<_, _>>()
            .await
            .expect("entries");
        let what: Vec<(&str, &str)> = entries
            .iter()
            .map(|e| (e.action.as_str(), e.reason.as_str()))
            .collect();
        assert_eq!(
            what,
            [
                ("SocialServices.EnrolClient", "consent-recorded"),
                ("Landlord.ReportRentArrears", "disclosed")
            ]
        );
        let disclosure = &entries[1];
        assert_eq!(disclosure.recipients, [SOCIAL_A]);
        assert!(disclosure.fields.contains(&"arrears_band".to_owned()));
        assert!(
            !format!("{entries:?}").contains("150385"),
            "the identity code came back"
        );

        // Each entry is provably in the checkpointed tree.
        let verifier = NoteVerifier::parse(&gw.checkpoint_key).expect("key");
        assert_eq!(first.verifier_key, gw.checkpoint_key);
        let cp = verifier
            .open_checkpoint(&first.note, "silta.local/audit")
            .expect("signed checkpoint");
        for e in &entries {
            let p = audit
                .get_inclusion_proof(proto::GetInclusionProofRequest {
                    index: e.index,
                    tree_size: cp.size,
                })
                .await
                .expect("proof")
                .into_inner();
            let path: Vec<_> = p.hashes.iter().map(|h| hash(h)).collect();
            assert_eq!(hash(&p.leaf_hash), silta_ledger::leaf_hash(&e.entry));
            verify_inclusion(&hash(&e.leaf_hash), e.index, cp.size, &path, &cp.root)
                .expect("included");
        }

        // The ledger only grows: the next checkpoint extends the first.
        landlord
            .report_rent_arrears(report("a-3", OTHER))
            .await
            .expect("accepted");
        let second = checkpoint_at_least(&gw, cp.size + 2).await;
        let cp2 = verifier
            .open_checkpoint(&second.note, "silta.local/audit")
            .expect("signed");
        let proof = audit
            .get_consistency_proof(proto::GetConsistencyProofRequest {
                from_size: cp.size,
                to_size: cp2.size,
            })
            .await
            .expect("proof")
            .into_inner();
        let path: Vec<_> = proof.hashes.iter().map(|h| hash(h)).collect();
        verify_consistency(cp.size, cp2.size, &cp.root, &cp2.root, &path).expect("consistent");

        // The export verifies offline.
        let items: Vec<proto::ExportItem> = audit
            .export(proto::ExportRequest::default())
            .await
            .expect("export")
            .into_inner()
            .collect::<Result<_, _>>()
            .await
            .expect("items");
        let mut entries = Vec::new();
        let mut notes = Vec::new();
        for item in items {
            match item.item.expect("item") {
                proto::export_item::Item::Entry(e) => entries.push(e.entry),
                proto::export_item::Item::CheckpointNote(n) => notes.push(n),
                proto::export_item::Item::KeyHandoverNote(_) => panic!("no key was promoted"),
            }
        }
        let notes: Vec<&str> = notes.iter().map(String::as_str).collect();
        let verified = silta_ledger::verify::verify_export(
            entries.iter().map(Vec::as_slice),
            &notes,
            &verifier,
            "silta.local/audit",
        )
        .expect("export verifies");
        assert!(verified.entries >= cp2.size);
        let queries = gw
            .query_strings("SELECT reason FROM audit WHERE action LIKE 'Audit.%'")
            .await;
        assert!(
            queries.contains(&"ledger-query".to_owned())
                && queries.contains(&"ledger-export".to_owned())
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_the_dpo_may_read_the_ledger_and_attempts_are_recorded() {
        let gw = TestGateway::start().await;
        for org in [LANDLORD, SOCIAL_A] {
            let err = gw
                .audit(org)
                .await
                .query(proto::AuditQueryRequest {
                    subject_hetu: RESIDENT.into(),
                    ..Default::default()
                })
                .await
                .expect_err("not a DPO");
            assert_eq!(err.code(), Code::PermissionDenied);
        }
        let denied = gw
            .query_strings("SELECT actor_org FROM audit WHERE action = 'Audit.Query' AND outcome = 'deny' ORDER BY seq")
            .await;
        assert_eq!(denied, [LANDLORD, SOCIAL_A]);
        let err = gw
            .audit(DPO)
            .await
            .query(proto::AuditQueryRequest {
                subject_hetu: "150385-9346".into(),
                ..Default::default()
            })
            .await
            .expect_err("bad code");
        assert_eq!(err.code(), Code::InvalidArgument);
    }
}

mod tampering {
    use silta_server::proto;
    use silta_tests::{DPO, LANDLORD, SOCIAL_A, TestGateway, captured_logs, enrol, report};
    use tokio_stream::StreamExt;
    use tonic::Code;

    const RESIDENT: &str = "150385-9345";
    const OTHER: &str = "020702A9514";

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_gateway_refuses_to_sign_a_ledger_rewritten_behind_its_back() {
        let mut gw = TestGateway::start_with(|c| c.ledger.checkpoint_every = 1).await;
        gw.social(SOCIAL_A)
            .await
            .enrol_client(enrol(RESIDENT))
            .await
            .expect("enrolled");
        gw.landlord(LANDLORD)
            .await
            .report_rent_arrears(report("t-1", RESIDENT))
            .await
            .expect("accepted");
        gw.stop().await;
        let signed = gw
            .query_strings("SELECT CAST(MAX(size) AS TEXT) FROM checkpoints")
            .await;
        // Someone with database access rewrites the subtree over the first two entries.
        gw.tamper(
            "DROP TRIGGER ledger_nodes_no_update;
             UPDATE ledger_nodes SET hash = zeroblob(32) WHERE level = 1 AND idx = 0;",
        )
        .await;
        gw.restart_after_stop().await;
        gw.landlord(LANDLORD)
            .await
            .report_rent_arrears(report("t-2", RESIDENT))
            .await
            .expect("still serving");
        gw.stop().await;
        assert_eq!(
            gw.query_strings("SELECT CAST(MAX(size) AS TEXT) FROM checkpoints")
                .await,
            signed,
            "a rewritten tree was signed"
        );
        assert!(captured_logs().contains("does not extend the last signed checkpoint"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_changed_index_column_never_puts_a_wrong_entry_into_a_report() {
        let mut gw = TestGateway::start().await;
        gw.social(SOCIAL_A)
            .await
            .enrol_client(enrol(RESIDENT))
            .await
            .expect("enrolled");
        gw.social(SOCIAL_A)
            .await
            .enrol_client(enrol(OTHER))
            .await
            .expect("enrolled");
        gw.stop().await;
        // Entry 0 records the policy set; entry 2 is about OTHER: make its index column claim
        // it is about RESIDENT (entry 1).
        gw.tamper(
            "DROP TRIGGER audit_no_update;
             UPDATE audit SET subject = (SELECT subject FROM audit WHERE seq = 1) WHERE seq = 2;",
        )
        .await;
        gw.restart_after_stop().await;
        let query = proto::AuditQueryRequest {
            subject_hetu: RESIDENT.into(),
            ..Default::default()
        };
        let result: Result<Vec<proto::AuditEntry>, _> = match gw.audit(DPO).await.query(query).await
        {
            Ok(stream) => stream.into_inner().collect().await,
            Err(e) => Err(e),
        };
        let err = result.expect_err("the mismatch is reported, not served");
        assert_eq!(err.code(), Code::DataLoss);
    }

    async fn query_all(gw: &TestGateway) -> Result<Vec<proto::AuditEntry>, tonic::Status> {
        match gw
            .audit(DPO)
            .await
            .query(proto::AuditQueryRequest::default())
            .await
        {
            Ok(stream) => stream.into_inner().collect().await,
            Err(e) => Err(e),
        }
    }

    async fn export_all(gw: &TestGateway) -> Result<Vec<proto::ExportItem>, tonic::Status> {
        match gw
            .audit(DPO)
            .await
            .export(proto::ExportRequest::default())
            .await
        {
            Ok(stream) => stream.into_inner().collect().await,
            Err(e) => Err(e),
        }
    }

    /// The refusal of a changed entry: DATA_LOSS, naming the entry's index.
    fn assert_names(err: &tonic::Status, index: &str) {
        assert_eq!(err.code(), Code::DataLoss, "{err:?}");
        let details = tonic_types::StatusExt::get_error_details(err);
        let info = details.error_info().expect("ErrorInfo");
        assert_eq!(info.reason, "LEDGER_ENTRY_MISMATCH");
        assert_eq!(
            info.metadata.get("indexes").map(String::as_str),
            Some(index)
        );
        assert!(
            err.message().contains(&format!("index {index} ")),
            "{}",
            err.message()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_changed_entry_is_never_served_as_genuine_by_query_or_export() {
        let mut gw = TestGateway::start_with(|c| {
            c.admin.listen = Some("127.0.0.1:0".parse().expect("addr"));
        })
        .await;
        gw.social(SOCIAL_A)
            .await
            .enrol_client(enrol(RESIDENT))
            .await
            .expect("enrolled");
        gw.social(SOCIAL_A)
            .await
            .enrol_client(enrol(OTHER))
            .await
            .expect("enrolled");
        gw.landlord(LANDLORD)
            .await
            .report_rent_arrears(report("t-1", RESIDENT))
            .await
            .expect("accepted");
        let genuine = query_all(&gw).await.expect("an intact ledger is served");
        assert!(genuine.len() >= 4, "{} entries", genuine.len());
        // Stopping publishes a checkpoint over every entry.
        gw.stop().await;
        // Entry 1 (an enrolment) is replaced with entry 2's bytes: a well-formed entry, that
        // every index column and filter would accept, but not the one the tree holds.
        gw.tamper(
            "DROP TRIGGER audit_no_update;
             UPDATE audit SET entry = (SELECT entry FROM audit WHERE seq = 2) WHERE seq = 1;",
        )
        .await;
        gw.restart_after_stop().await;
        assert_names(&query_all(&gw).await.expect_err("refused, not served"), "1");
        assert_names(
            &export_all(&gw).await.expect_err("refused, not exported"),
            "1",
        );
        let metrics = silta_tests::admin_get(gw.admin_addr().expect("admin"), "/metrics").await;
        assert!(
            metrics.contains(
                r#"silta_ledger_entry_mismatches_total{rpc="Audit.Query",check="checkpoint"} 1"#
            ),
            "{metrics}"
        );
        gw.stop().await;
        // The leaf hash rewritten to match the changed entry does not help: the signed root
        // still covers the original.
        gw.tamper(
            "DROP TRIGGER ledger_nodes_no_update;
             UPDATE ledger_nodes SET hash = (SELECT leaf_hash FROM audit WHERE seq = 2)
               WHERE level = 0 AND idx = 1;",
        )
        .await;
        gw.restart_after_stop().await;
        let err = query_all(&gw).await.expect_err("refused, not served");
        assert_eq!(err.code(), Code::DataLoss, "{err:?}");
        let err = export_all(&gw).await.expect_err("refused, not exported");
        assert_eq!(err.code(), Code::DataLoss, "{err:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_identity_code_pasted_as_a_pseudonym_is_refused_and_never_recorded() {
        let gw = TestGateway::start().await;
        let query = proto::AuditQueryRequest {
            subject_pseudonym: RESIDENT.into(),
            ..Default::default()
        };
        let err = gw.audit(DPO).await.query(query).await.expect_err("refused");
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(!format!("{err:?}").contains("150385"));
        let subjects = gw
            .query_strings("SELECT COALESCE(subject, '') FROM audit")
            .await;
        assert!(subjects.iter().all(|s| !s.contains("150385")));
    }
}
