//! Pseudonym key rotation while the gateway serves: a new key version is added, promoted from
//! a second process, and every stored consent and case moves to it without the identity code;
//! recipients see the new version from then on, and the audit trail finds the person under
//! both.

use std::time::Duration;

use silta_server::proto::{self, withdraw_consent_request::Target};
use silta_tests::{DPO, LANDLORD, SOCIAL_A, TestGateway, enrol, report};
use tokio_stream::StreamExt;
use tonic::Streaming;

/// Synthetic identity code (tests/fixtures/hetu-valid.txt); no real person has it.
const RESIDENT: &str = "150385-9345";

async fn next(stream: &mut Streaming<proto::Alert>) -> proto::Alert {
    tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("an alert within 5 s")
        .expect("stream open")
        .expect("an alert, not an error")
}

async fn alerts(gw: &TestGateway) -> Streaming<proto::Alert> {
    gw.social(SOCIAL_A)
        .await
        .subscribe_alerts(proto::SubscribeAlertsRequest { after_sequence: 0 })
        .await
        .expect("subscribed")
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_key_version_moves_stored_subjects_while_serving() {
    let mut gw = TestGateway::start_with(|c| c.ledger.checkpoint_every = 1).await;
    let first_key = gw.checkpoint_key.clone();
    let enrolled = gw
        .social(SOCIAL_A)
        .await
        .enrol_client(enrol(RESIDENT))
        .await
        .expect("enrolled")
        .into_inner();
    let v1 = enrolled.subject_pseudonym.clone();
    assert!(v1.starts_with("ps1."), "{v1}");
    let mut landlord = gw.landlord(LANDLORD).await;
    let first = landlord
        .report_rent_arrears(report("k-1", RESIDENT))
        .await
        .expect("accepted")
        .into_inner();
    let mut stream = alerts(&gw).await;
    let a1 = next(&mut stream).await;
    assert_eq!(a1.subject_pseudonym, v1);

    // A new version in the keyring changes nothing until it is promoted.
    gw.rotate_keys();
    gw.restart().await;
    let mut landlord = gw.landlord(LANDLORD).await;
    landlord
        .report_rent_arrears(report("k-2", RESIDENT))
        .await
        .expect("accepted");
    let mut stream = alerts(&gw).await;
    assert_eq!(next(&mut stream).await.subject_pseudonym, v1);
    assert_eq!(next(&mut stream).await.subject_pseudonym, v1);

    // Promoted from outside while the gateway runs: the consent and the case move.
    let done = gw.promote_keys().await;
    assert_eq!((done.from, done.to), (1, 2));
    assert!(done.rows >= 2, "the consent and the case moved: {done:?}");
    let stored = gw
        .query_strings("SELECT subject_key || ' ' || audit_subject FROM consents")
        .await;
    assert!(
        stored
            .iter()
            .all(|s| s.starts_with("ps2.") && s.contains(" ps2.")),
        "{stored:?}"
    );

    // The next report finds the consent and the case under the new version.
    landlord
        .report_rent_arrears(report("k-3", RESIDENT))
        .await
        .expect("accepted");
    let a3 = next(&mut stream).await;
    assert!(a3.subject_pseudonym.starts_with("ps2."), "{a3:?}");
    assert_ne!(a3.subject_pseudonym, v1);
    assert_eq!(a3.case_ref, a1.case_ref, "the same case");
    // The social worker finds the consent by the pseudonym the alerts now carry, not the old.
    let mut social = gw.social(SOCIAL_A).await;
    let by = |pseudonym: &str| proto::ListConsentsRequest {
        subject_pseudonym: pseudonym.to_owned(),
        ..Default::default()
    };
    let found = social
        .list_consents(by(&a3.subject_pseudonym))
        .await
        .expect("listed")
        .into_inner();
    assert_eq!(found.consents.len(), 1);
    assert_eq!(found.consents[0].subject_pseudonym, a3.subject_pseudonym);
    let old = social.list_consents(by(&v1)).await.expect("listed");
    assert!(old.into_inner().consents.is_empty());
    // A retry from before the promotion is still recognised.
    let retried = landlord
        .report_rent_arrears(report("k-1", RESIDENT))
        .await
        .expect("retry")
        .into_inner();
    assert_eq!(retried.report_id, first.report_id);
    // Withdrawal by identity code finds the moved consent.
    let withdrawn = gw
        .social(SOCIAL_A)
        .await
        .withdraw_consent(proto::WithdrawConsentRequest {
            target: Some(Target::Subject(proto::SubjectPurpose {
                hetu: RESIDENT.into(),
                purpose: "eviction-prevention".into(),
            })),
        })
        .await
        .expect("withdrawn")
        .into_inner();
    assert_eq!(withdrawn.withdrawn_consent_ids, [enrolled.consent_id]);

    // The DPO finds the person's entries under both versions, by code and by either pseudonym.
    let subjects = |entries: Vec<proto::AuditEntry>| {
        let mut s: Vec<String> = entries
            .into_iter()
            .map(|e| e.subject_pseudonym[..4].to_owned())
            .collect();
        s.dedup();
        s
    };
    let mut audit = gw.audit(DPO).await;
    let by_code: Vec<proto::AuditEntry> = audit
        .query(proto::AuditQueryRequest {
            subject_hetu: RESIDENT.into(),
            ..Default::default()
        })
        .await
        .expect("query")
        .into_inner()
        .map(|e| e.expect("entry"))
        .collect()
        .await;
    let old_audit = by_code[0].subject_pseudonym.clone();
    assert_eq!(subjects(by_code.clone()), ["ps1.", "ps2."]);
    let by_old: Vec<proto::AuditEntry> = audit
        .query(proto::AuditQueryRequest {
            subject_pseudonym: old_audit,
            ..Default::default()
        })
        .await
        .expect("query")
        .into_inner()
        .map(|e| e.expect("entry"))
        .collect()
        .await;
    // The same entries, plus the record of the first query, which names the person too.
    assert_eq!(
        by_old.len(),
        by_code.len() + 1,
        "an old pseudonym finds the newer entries too"
    );
    let promoted = gw
        .query_strings("SELECT reason FROM audit WHERE action = 'PromotePseudonymKey'")
        .await;
    assert_eq!(promoted.len(), 1);
    assert!(
        promoted[0].starts_with("pseudonym-key-v1-to-v2-"),
        "{promoted:?}"
    );

    // Checkpoints are now signed by the new version's key, and an auditor who holds only the
    // first key follows the handover to it.
    let latest = loop {
        let latest = audit
            .get_checkpoint(proto::GetCheckpointRequest { size: 0 })
            .await
            .expect("checkpoint")
            .into_inner();
        if latest.verifier_key != first_key {
            break latest;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let items: Vec<proto::ExportItem> = audit
        .export(proto::ExportRequest::default())
        .await
        .expect("export")
        .into_inner()
        .map(|i| i.expect("item"))
        .collect()
        .await;
    let (mut entries, mut notes, mut handovers) = (Vec::new(), Vec::new(), Vec::new());
    for item in items {
        match item.item.expect("item") {
            proto::export_item::Item::Entry(e) => entries.push(e.entry),
            proto::export_item::Item::CheckpointNote(n) => notes.push(n),
            proto::export_item::Item::KeyHandoverNote(n) => handovers.push(n),
        }
    }
    assert_eq!(handovers.len(), 1);
    let trusted = silta_ledger::checkpoint::NoteVerifier::parse(&first_key).expect("key");
    let notes: Vec<&str> = notes.iter().map(String::as_str).collect();
    let handovers: Vec<&str> = handovers.iter().map(String::as_str).collect();
    let verified = silta_ledger::verify::verify_export_with_handovers(
        entries.iter().map(Vec::as_slice),
        &notes,
        &handovers,
        &trusted,
        &gw.config.ledger.origin,
    )
    .expect("the export verifies from the first key");
    assert!(verified.anchored >= latest.size);
    assert!(
        silta_ledger::verify::verify_export(
            entries.iter().map(Vec::as_slice),
            &notes,
            &trusted,
            &gw.config.ledger.origin,
        )
        .is_err(),
        "without the handover the new key's checkpoints are not trusted"
    );

    // A node given the old keyring refuses to start rather than write under the wrong key.
    gw.stop().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let err = silta_server::start(&gw.config, gw.keyring_of(1), listener)
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("keyring lacks"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_with_another_master_secret_refuses_to_start_on_a_signed_ledger() {
    let mut gw = TestGateway::start_with(|c| c.ledger.checkpoint_every = 1).await;
    gw.landlord(LANDLORD)
        .await
        .report_rent_arrears(report("k-1", RESIDENT))
        .await
        .expect("accepted");
    gw.stop().await; // the final checkpoint is signed and stored
    let secret: String = (0u8..32)
        .map(|i| format!("{:02x}", i.wrapping_mul(37)))
        .collect();
    let other =
        silta_core::secret::Keyring::parse(&format!("v1 {secret}\n"), 1).expect("a keyring");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let Err(refused) = silta_server::start(&gw.config, other, listener).await else {
        panic!("a gateway with another secret started on a ledger signed with the first");
    };
    let text = refused.to_string();
    assert!(text.contains("does not verify with any key"), "{text}");
    // With the right secret it starts again.
    gw.restart_after_stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_missed_a_rotation_is_not_ready_until_restarted_with_it() {
    let mut gw =
        TestGateway::start_with(|c| c.admin.listen = Some("127.0.0.1:0".parse().expect("addr")))
            .await;
    let admin = gw.admin_addr().expect("admin port");
    // Rotated and promoted elsewhere; this node still runs with v1 only.
    gw.rotate_keys();
    gw.promote_keys().await;
    let err = gw
        .landlord(LANDLORD)
        .await
        .report_rent_arrears(report("k-1", RESIDENT))
        .await
        .expect_err("this node cannot write under v2");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    let ready = silta_tests::admin_get(admin, "/readyz").await;
    assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
    assert!(ready.contains("keyring lacks"), "{ready}");
    // Restarted with the rotated keyring: ready, and writing again.
    gw.restart().await;
    let admin = gw.admin_addr().expect("admin port");
    gw.landlord(LANDLORD)
        .await
        .report_rent_arrears(report("k-1", RESIDENT))
        .await
        .expect("accepted");
    let ready = silta_tests::admin_get(admin, "/readyz").await;
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_gateway_on_the_same_sqlite_file_is_refused() {
    let mut gw = TestGateway::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let Err(refused) = silta_server::start(&gw.config, gw.keyring(), listener).await else {
        panic!("two gateways started on one SQLite file");
    };
    assert!(
        refused.to_string().contains("another silta serve"),
        "{refused}"
    );
    // Once the first has stopped, the file is free again.
    gw.stop().await;
    gw.restart_after_stop().await;

    let mut config = gw.config.clone();
    config.store.url = format!(
        "sqlite://{}",
        gw.dir.path().join("no-such-dir/silta.db").display()
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let Err(refused) = silta_server::start(&config, gw.keyring(), listener).await else {
        panic!("started without the database's directory");
    };
    assert!(refused.to_string().contains("does not exist"), "{refused}");
}
