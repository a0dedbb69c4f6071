//! The store conformance suite: one set of behaviours every `Store` must have, written once
//! against the trait, run against SQLite and against PostgreSQL (when `SILTA_TEST_POSTGRES_URL`
//! names a server; CI sets it).

use silta_core::audit::{AuditRecord, Outcome};
use silta_core::consent::ConsentStanding;
use silta_core::consent::ConsentState;
use silta_core::policy::{ConsentView, DecisionInput, Permit, Policies};
use silta_core::report::EvictionStage;
use silta_core::stats::{Cell, CellKey, Measure, Month};
use silta_core::{Caller, OrgId, Pseudonym, Role};
use silta_store::testing::TempDatabase;
use silta_store::{
    ConsentQuery, Due, Lookups, NewAlert, NewCase, NewConsentRow, NewReport, PostgresStore,
    ReportPosition, SqliteStore, Store, SubjectColumn, WriteTx,
};
use std::collections::{BTreeMap, HashMap};

const PURPOSE: &str = "eviction-prevention";
const FLOW: &str = "rent-arrears";
use time::{Duration, OffsetDateTime};

/// The landlord every test alert comes from.
static SENDER: std::sync::LazyLock<OrgId> = std::sync::LazyLock::new(|| org("landlord-1"));

fn org(s: &str) -> OrgId {
    OrgId::new(s).expect("valid org")
}

fn ps(s: &str) -> Pseudonym {
    Pseudonym::from_stored(s.to_owned())
}

fn now() -> OffsetDateTime {
    let t = OffsetDateTime::now_utc();
    t.replace_nanosecond(0).expect("0 is a valid nanosecond")
}

async fn enrol(store: &dyn Store, id: &str, subject: &str, recipient: &str) {
    let mut tx = store.begin().await.expect("begin");
    tx.insert_consent(&NewConsentRow {
        consent_id: id,
        subject_key: &ps(subject),
        audit_subject: &ps(&format!("audit-{subject}")),
        recipient: &org(recipient),
        purpose: PURPOSE,
        valid_from: now() - Duration::hours(1),
        valid_until: now() + Duration::days(30),
        evidence_ref: "E-1",
        notice_version: "v1",
        covers_landlord: false,
        flows: &[FLOW.to_owned()],
        subject_pseudonym: &ps(&format!("own-{subject}")),
        renews: None,
        now: now(),
    })
    .await
    .expect("insert consent");
    tx.commit().await.expect("commit");
}

/// Decides as the gateway does: permits come only from the policy decision.
async fn permits(store: &dyn Store, subject: &str) -> Vec<Permit> {
    let mut tx = store.begin().await.expect("begin");
    let consents = tx
        .consents_for(&ps(subject), PURPOSE)
        .await
        .expect("consents");
    let policies = Policies::builtin();
    let landlord = Caller {
        org: org("landlord-1"),
        role: Role::Landlord,
    };
    let flow = policies.flow(FLOW).expect("declared");
    let input = DecisionInput {
        flow,
        sender: &landlord,
        purpose: PURPOSE,
        legal_basis: &flow.legal_basis,
        eviction_stage: Some(EvictionStage::None),
    };
    policies
        .decide(&input, &ConsentView::by_recipient(&consents, now()))
        .permits
}

/// An alert with this id, its other fields fixed.
fn test_alert(alert_id: &str) -> NewAlert<'_> {
    NewAlert {
        alert_id,
        flow_id: FLOW,
        purpose: PURPOSE,
        legal_basis: "gdpr-6-1-a-consent",
        report_id: "r",
        sender: &SENDER,
        subject_pseudonym: "recipient-ps",
        case_ref: "case-1",
        payload: "{}",
        now: now(),
    }
}

async fn deliver(store: &dyn Store, permit: &Permit, n: usize) -> u64 {
    let mut tx = store.begin().await.expect("begin");
    let id = format!("alert-{n}-{}", permit.recipient());
    let seq = tx
        .insert_alert(permit, &test_alert(&id))
        .await
        .expect("insert alert");
    tx.commit().await.expect("commit");
    seq
}

async fn pending(store: &dyn Store, recipient: &str) -> Vec<u64> {
    store
        .pending_alerts(&org(recipient), 0, 100)
        .await
        .expect("pending")
        .into_iter()
        .map(|a| a.seq)
        .collect()
}

async fn consents_are_superseded_and_withdrawn_with_their_undelivered_alerts(store: &dyn Store) {
    enrol(store, "c1", "subject-1", "ss-a").await;
    enrol(store, "c2", "subject-1", "ss-a").await;
    enrol(store, "c3", "subject-1", "ss-b").await;
    let mut tx = store.begin().await.expect("begin");
    let mut states: Vec<(String, ConsentState)> = tx
        .consents_for(&ps("subject-1"), PURPOSE)
        .await
        .expect("consents")
        .into_iter()
        .map(|c| (c.consent_id, c.state))
        .collect();
    drop(tx);
    states.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        states,
        [
            ("c1".to_owned(), ConsentState::Superseded),
            ("c2".to_owned(), ConsentState::Active),
            ("c3".to_owned(), ConsentState::Active),
        ]
    );

    let permits = permits(store, "subject-1").await;
    assert_eq!(permits.len(), 2);
    for (i, p) in permits.iter().enumerate() {
        deliver(store, p, i).await;
    }
    let mut tx = store.begin().await.expect("begin");
    let done = tx
        .withdraw(&org("ss-a"), &ps("subject-1"), PURPOSE, now())
        .await
        .expect("withdraw");
    tx.commit().await.expect("commit");
    assert_eq!(done.withdrawn, ["c2"]);
    assert_eq!(done.purged_alerts, 1);
    assert!(pending(store, "ss-a").await.is_empty());
    assert_eq!(
        pending(store, "ss-b").await.len(),
        1,
        "another organisation's alerts stay"
    );
    let remaining = permits_for(store, "subject-1").await;
    assert_eq!(remaining, ["ss-b"]);
}

async fn permits_for(store: &dyn Store, subject: &str) -> Vec<String> {
    permits(store, subject)
        .await
        .iter()
        .map(|p| p.recipient().to_string())
        .collect()
}

async fn alerts_are_pending_in_order_until_acknowledged(store: &dyn Store) {
    enrol(store, "c-ack", "subject-2", "ss-c").await;
    let permit = permits(store, "subject-2").await.remove(0);
    let mut seqs = Vec::new();
    for n in 0..5 {
        seqs.push(deliver(store, &permit, 100 + n).await);
    }
    assert_eq!(pending(store, "ss-c").await, seqs);
    let after = store
        .pending_alerts(&org("ss-c"), seqs[2], 100)
        .await
        .expect("pending");
    assert_eq!(after.iter().map(|a| a.seq).collect::<Vec<_>>(), &seqs[3..]);

    let mut tx = store.begin().await.expect("begin");
    let acked = tx
        .ack_alerts(&org("ss-c"), seqs[1], &[seqs[3]], now())
        .await
        .expect("ack");
    assert_eq!(acked, 3);
    // Acknowledging again, or another organisation's alerts, changes nothing.
    assert_eq!(
        tx.ack_alerts(&org("ss-c"), seqs[1], &[], now())
            .await
            .expect("ack"),
        0
    );
    assert_eq!(
        tx.ack_alerts(&org("ss-other"), u64::MAX, &[], now())
            .await
            .expect("ack"),
        0
    );
    tx.commit().await.expect("commit");
    assert_eq!(pending(store, "ss-c").await, [seqs[2], seqs[4]]);
}

async fn reports_are_found_by_key_and_cases_are_stable(store: &dyn Store) {
    let landlord = org("landlord-1");
    let at = now();
    let mut tx = store.begin().await.expect("begin");
    assert!(
        tx.find_report(&landlord, "k1")
            .await
            .expect("find")
            .is_none()
    );
    tx.insert_report(&NewReport {
        report_id: "r1",
        landlord: &landlord,
        idempotency_key: "k1",
        fingerprint: &[7; 32],
        received_at: at,
    })
    .await
    .expect("insert report");
    let first = tx
        .case_ref(&NewCase {
            landlord: &landlord,
            tenancy_ref: "T-1",
            recipient: &org("ss-a"),
            subject_key: &ps("subject-c"),
            audit_subject: &ps("audit-subject-c"),
            new_ref: "case-new-1",
            now: at,
        })
        .await
        .expect("case");
    let again = tx
        .case_ref(&NewCase {
            landlord: &landlord,
            tenancy_ref: "T-1",
            recipient: &org("ss-a"),
            subject_key: &ps("subject-c"),
            audit_subject: &ps("audit-subject-c"),
            new_ref: "case-new-2",
            now: at,
        })
        .await
        .expect("case");
    let other = tx
        .case_ref(&NewCase {
            landlord: &landlord,
            tenancy_ref: "T-1",
            recipient: &org("ss-b"),
            subject_key: &ps("subject-c"),
            audit_subject: &ps("audit-subject-c"),
            new_ref: "case-new-3",
            now: at,
        })
        .await
        .expect("case");
    tx.commit().await.expect("commit");
    assert_eq!(
        (first.as_str(), again.as_str(), other.as_str()),
        ("case-new-1", "case-new-1", "case-new-3")
    );

    let mut tx = store.begin().await.expect("begin");
    let found = tx
        .find_report(&landlord, "k1")
        .await
        .expect("find")
        .expect("stored");
    assert_eq!(
        (
            found.report_id.as_str(),
            found.fingerprint.as_slice(),
            found.received_at
        ),
        ("r1", &[7u8; 32][..], at)
    );
    assert!(
        tx.find_report(&org("landlord-2"), "k1")
            .await
            .expect("find")
            .is_none(),
        "keys are per landlord"
    );
    drop(tx);

    // A case is found only by the organisation it was opened for.
    let case = store
        .find_case(&org("ss-a"), "case-new-1")
        .await
        .expect("find case")
        .expect("the recipient's case");
    assert_eq!(
        (case.landlord.as_str(), case.tenancy_ref.as_str()),
        ("landlord-1", "T-1")
    );
    assert_eq!(case.subject_key.as_str(), "subject-c");
    assert_eq!(case.audit_subject.as_str(), "audit-subject-c");
    for (who, reference) in [("ss-b", "case-new-1"), ("ss-a", "case-made-up")] {
        assert!(
            store
                .find_case(&org(who), reference)
                .await
                .expect("find case")
                .is_none(),
            "{who} must not find {reference}"
        );
    }
}

async fn retention_purges_one_flow_at_a_time(store: &dyn Store) {
    enrol(store, "c-ret", "subject-ret", "ss-ret").await;
    let permit = permits(store, "subject-ret").await.remove(0);
    let first = deliver(store, &permit, 900).await;
    let second = deliver(store, &permit, 901).await;
    // A message of a flow that is no longer declared anywhere: retention must still find it.
    let mut tx = store.begin().await.expect("begin");
    tx.insert_alert(
        &permit,
        &NewAlert {
            flow_id: "a-retired-flow",
            ..test_alert("retired-1")
        },
    )
    .await
    .expect("insert alert");
    tx.commit().await.expect("commit");
    let flows = store.outbox_flows().await.expect("flows");
    assert!(
        flows.iter().any(|f| f == FLOW) && flows.iter().any(|f| f == "a-retired-flow"),
        "{flows:?}"
    );
    let mut sorted = flows.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(flows, sorted, "each flow once");
    let mut tx = store.begin().await.expect("begin");
    let later = now() + Duration::days(1);
    assert_eq!(
        tx.purge_alerts_before("a-retired-flow", later, 100)
            .await
            .expect("purge"),
        1
    );
    assert_eq!(
        tx.purge_alerts_before("another-flow", later, 100)
            .await
            .expect("purge"),
        0,
        "another flow's retention never deletes this flow's messages"
    );
    assert_eq!(
        tx.purge_alerts_before(FLOW, now() - Duration::days(1), 100)
            .await
            .expect("purge"),
        0,
        "not yet expired"
    );
    assert_eq!(
        tx.purge_alerts_before(FLOW, later, 1).await.expect("purge"),
        1,
        "a purge deletes no more than its limit"
    );
    // The rest, with the suite's earlier alerts of the same flow.
    assert!(
        tx.purge_alerts_before(FLOW, later, 10_000)
            .await
            .expect("purge")
            >= 1
    );
    assert_eq!(
        tx.purge_alerts_before(FLOW, later, 10_000)
            .await
            .expect("purge"),
        0
    );
    tx.commit().await.expect("commit");
    let flows = store.outbox_flows().await.expect("flows");
    assert!(
        !flows.iter().any(|f| f == FLOW || f == "a-retired-flow"),
        "{flows:?}"
    );
    let left = pending(store, "ss-ret").await;
    assert!(!left.contains(&first) && !left.contains(&second));
}

fn old_case<'a>(subject: &'a Pseudonym, new_ref: &'a str, at: OffsetDateTime) -> NewCase<'a> {
    NewCase {
        landlord: &LANDLORD_RET,
        tenancy_ref: new_ref,
        recipient: &RECIPIENT_RET,
        subject_key: subject,
        audit_subject: subject,
        new_ref,
        now: at,
    }
}

static LANDLORD_RET: std::sync::LazyLock<OrgId> = std::sync::LazyLock::new(|| org("ret-ll"));
static RECIPIENT_RET: std::sync::LazyLock<OrgId> = std::sync::LazyLock::new(|| org("ret-ss"));

async fn old_consent(
    tx: &mut dyn WriteTx,
    id: &str,
    subject: &Pseudonym,
    from: OffsetDateTime,
    until: OffsetDateTime,
) {
    tx.insert_consent(&NewConsentRow {
        consent_id: id,
        subject_key: subject,
        audit_subject: subject,
        recipient: &RECIPIENT_RET,
        purpose: PURPOSE,
        valid_from: from,
        valid_until: until,
        evidence_ref: "E-ret",
        notice_version: "v1",
        covers_landlord: false,
        flows: &[FLOW.to_owned()],
        subject_pseudonym: subject,
        renews: None,
        now: from,
    })
    .await
    .expect("insert consent");
}

/// Storage limitation: report rows, ended consents and cases each go when their rule says,
/// and nothing else does. Rows are dated years back, so the rest of the suite's rows (dated
/// now) are out of every cutoff here.
async fn every_kind_of_record_expires(store: &dyn Store) {
    let base = now() - Duration::days(1_000);
    let cutoff = base + Duration::days(1);
    let (expired, withdrawn, standing) =
        (ps("ret-expired"), ps("ret-withdrawn"), ps("ret-standing"));

    let mut tx = store.begin().await.expect("begin");
    for (key, at) in [
        ("a", base),
        ("b", base),
        ("c", base),
        ("d", base + Duration::days(2)),
    ] {
        tx.insert_report(&NewReport {
            report_id: &format!("ret-report-{key}"),
            landlord: &LANDLORD_RET,
            idempotency_key: key,
            fingerprint: &[1; 32],
            received_at: at,
        })
        .await
        .expect("insert report");
    }
    old_consent(
        &mut *tx,
        "ret-c-expired",
        &expired,
        base - Duration::days(30),
        base,
    )
    .await;
    old_consent(
        &mut *tx,
        "ret-c-withdrawn",
        &withdrawn,
        base - Duration::days(30),
        now() + Duration::days(30),
    )
    .await;
    old_consent(
        &mut *tx,
        "ret-c-standing",
        &standing,
        base - Duration::days(30),
        now() + Duration::days(30),
    )
    .await;
    // Cases all opened at `base`; the last had a message two days later.
    tx.case_ref(&old_case(&expired, "ret-case-expired", base))
        .await
        .expect("case");
    tx.case_ref(&old_case(&standing, "ret-case-idle", base))
        .await
        .expect("case");
    tx.case_ref(&old_case(&standing, "ret-case-busy", base))
        .await
        .expect("case");
    tx.case_ref(&old_case(
        &standing,
        "ret-case-busy",
        base + Duration::days(2),
    ))
    .await
    .expect("case");
    tx.commit().await.expect("commit");
    let mut tx = store.begin().await.expect("begin");
    tx.withdraw(&RECIPIENT_RET, &withdrawn, PURPOSE, base)
        .await
        .expect("withdraw");
    tx.commit().await.expect("commit");

    // What is due is what the purges below then delete.
    let due = |d| async move { store.retention_due(d).await.expect("due").due };
    assert_eq!(due(Due::Reports { cutoff }).await, 3);
    assert_eq!(due(Due::Consents { ended: cutoff }).await, 2);
    let never = base - Duration::days(1);
    assert_eq!(
        due(Due::Cases {
            idle: never,
            ended: cutoff
        })
        .await,
        1
    );
    assert_eq!(
        due(Due::Cases {
            idle: cutoff,
            ended: cutoff
        })
        .await,
        2
    );
    let reports = store
        .retention_due(Due::Reports { cutoff })
        .await
        .expect("due");
    assert_eq!(reports.oldest, Some(base), "the oldest report row");
    assert!(reports.rows >= 4);

    // Reports: walked two rows at a time, the three received before the cutoff go.
    let mut deleted = 0;
    let mut from: Option<ReportPosition> = None;
    let mut windows = 0;
    loop {
        let mut tx = store.begin().await.expect("begin");
        let (n, next) = tx
            .purge_reports_before(cutoff, from.as_ref(), 2)
            .await
            .expect("purge");
        tx.commit().await.expect("commit");
        deleted += n;
        windows += 1;
        match next {
            Some(next) => from = Some(next),
            None => break,
        }
    }
    assert_eq!(deleted, 3);
    assert!(windows >= 3, "the walk went a window at a time ({windows})");
    let mut tx = store.begin().await.expect("begin");
    for (key, kept) in [("a", false), ("b", false), ("c", false), ("d", true)] {
        let found = tx.find_report(&LANDLORD_RET, key).await.expect("find");
        assert_eq!(found.is_some(), kept, "report {key}");
    }

    // Consents: the expired and the withdrawn one go, the standing one stays.
    assert_eq!(
        tx.purge_consents_ended_before(cutoff, 1)
            .await
            .expect("purge"),
        1,
        "a purge deletes no more than its limit"
    );
    assert_eq!(
        tx.purge_consents_ended_before(cutoff, 100)
            .await
            .expect("purge"),
        1
    );
    assert_eq!(
        tx.purge_consents_ended_before(cutoff, 100)
            .await
            .expect("purge"),
        0
    );
    for (subject, kept) in [(&expired, 0), (&withdrawn, 0), (&standing, 1)] {
        let left = tx.consents_for(subject, PURPOSE).await.expect("consents");
        assert_eq!(left.len(), kept, "{subject:?}");
    }

    // Cases: with no idle rule yet, the one whose resident no longer consents goes.
    assert_eq!(tx.purge_cases(never, cutoff, 100).await.expect("purge"), 1);
    // Then those without a message since the idle cutoff, whatever the consent.
    assert_eq!(tx.purge_cases(cutoff, cutoff, 100).await.expect("purge"), 1);
    assert_eq!(tx.purge_cases(cutoff, cutoff, 100).await.expect("purge"), 0);
    tx.commit().await.expect("commit");
    for (case, kept) in [
        ("ret-case-expired", false),
        ("ret-case-idle", false),
        ("ret-case-busy", true),
    ] {
        let found = store.find_case(&RECIPIENT_RET, case).await.expect("find");
        assert_eq!(found.is_some(), kept, "{case}");
    }
}

/// An alert from a transaction that rolled back is never pending, and the next one takes its
/// number (the SQLite store keeps the newest alerts in memory: this is its rollback too).
async fn a_rolled_back_alert_is_never_pending(store: &dyn Store) {
    enrol(store, "c-rb", "subject-rb", "ss-rb").await;
    let permit = permits(store, "subject-rb").await.remove(0);
    let first = deliver(store, &permit, 300).await;
    let mut tx = store.begin().await.expect("begin");
    tx.insert_alert(&permit, &test_alert("rolled-back"))
        .await
        .expect("insert alert");
    drop(tx);
    assert_eq!(pending(store, "ss-rb").await, [first]);
    let second = deliver(store, &permit, 301).await;
    assert_eq!(second, first + 1);
    let page = store
        .pending_alerts(&org("ss-rb"), first, 100)
        .await
        .expect("pending");
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].alert_id, "alert-301-ss-rb");
}

async fn an_uncommitted_transaction_leaves_nothing(store: &dyn Store) {
    let mut tx = store.begin().await.expect("begin");
    let caller = Caller {
        org: org("ss-z"),
        role: Role::SocialServices,
    };
    tx.append_audit(&AuditRecord::new(
        now(),
        "req",
        &caller,
        "Test",
        Outcome::Deny,
        "x",
    ))
    .await
    .expect("append");
    drop(tx);
    enrol(store, "c-z", "subject-z", "ss-z").await;
    let mut tx = store.begin().await.expect("begin");
    assert_eq!(
        tx.consents_for(&ps("subject-z"), PURPOSE)
            .await
            .expect("consents")
            .len(),
        1
    );
}

async fn audit_appends_build_a_ledger_that_survives_rollbacks(store: &dyn Store) {
    let caller = Caller {
        org: org("ll"),
        role: Role::Landlord,
    };
    let start = store.ledger_head().await.expect("head").size;
    let mut expected = Vec::new();
    for batch in 0..5u64 {
        let mut tx = store.begin().await.expect("begin");
        for i in 0..=batch {
            let mut record = AuditRecord::new(
                now(),
                &format!("req-{batch}-{i}"),
                &caller,
                "Test",
                Outcome::Allow,
                "x",
            );
            record.fields = vec!["arrears_band".into()];
            let index = tx.append_audit(&record).await.expect("append");
            assert_eq!(index, start + expected.len() as u64);
            expected.push(
                silta_store::ledger_entry(&record)
                    .encode()
                    .expect("encodes"),
            );
        }
        tx.commit().await.expect("commit");
        // A rolled-back append leaves no gap and no stray node behind.
        let mut tx = store.begin().await.expect("begin");
        tx.append_audit(&AuditRecord::new(
            now(),
            "rolled-back",
            &caller,
            "Test",
            Outcome::Deny,
            "x",
        ))
        .await
        .expect("append");
        drop(tx);
    }
    let head = store.ledger_head().await.expect("head");
    assert_eq!(head.size, start + expected.len() as u64);
    if start == 0 {
        let mut tree = silta_ledger::tree::MemoryTree::new();
        expected
            .iter()
            .for_each(|e| tree.append(silta_ledger::leaf_hash(e)));
        assert_eq!(
            head.root,
            tree.root(),
            "the stored tree is the tree of the entries"
        );
        // Nodes come back in the order asked, repeats included, in one read.
        let wanted = [(0, 3), (1, 0), (0, 3), (3, 0), (0, 0)];
        let nodes = store.ledger_nodes(&wanted).await.expect("nodes");
        let expected_nodes: Vec<_> = wanted
            .iter()
            .map(|&(level, index)| {
                silta_ledger::tree::NodeSource::node(&tree, level, index).expect("in memory")
            })
            .collect();
        assert_eq!(nodes, expected_nodes);
        assert!(
            store.ledger_nodes(&[(0, 0), (0, head.size)]).await.is_err(),
            "a node past the tree is an error, not a silent zero"
        );
        assert!(store.ledger_nodes(&[]).await.expect("none").is_empty());
    }

    assert!(store.latest_checkpoint().await.expect("latest").is_none());
    let mut tx = store.begin().await.expect("begin");
    tx.append_checkpoint(head.size, &head.root, "note\n", now())
        .await
        .expect("checkpoint");
    tx.append_checkpoint(head.size, &head.root, "note\n", now())
        .await
        .expect("same checkpoint again");
    tx.commit().await.expect("commit");
    let latest = store
        .latest_checkpoint()
        .await
        .expect("latest")
        .expect("stored");
    assert_eq!((latest.size, latest.note.as_str()), (head.size, "note\n"));
}

/// `prefetch` is a hint: the lookups after it answer as without it, also after other writes
/// in the same transaction (an acknowledgement) and for cases opened in it.
async fn prefetched_lookups_answer_as_without_prefetch(store: &dyn Store) {
    let landlord = org("landlord-p");
    let recipient = org("ss-p");
    let (subject, audit) = (ps("subject-p"), ps("audit-p"));
    let at = now();
    let mut tx = store.begin().await.expect("begin");
    tx.prefetch(&Lookups {
        reports: vec![(&landlord, "pk-1"), (&landlord, "pk-2")],
        consents: vec![(&subject, PURPOSE)],
    })
    .await
    .expect("prefetch");
    assert!(
        tx.find_report(&landlord, "pk-1")
            .await
            .expect("find")
            .is_none()
    );
    assert!(
        tx.consents_for(&subject, PURPOSE)
            .await
            .expect("consents")
            .is_empty()
    );
    tx.insert_report(&NewReport {
        report_id: "rp-1",
        landlord: &landlord,
        idempotency_key: "pk-1",
        fingerprint: &[9; 32],
        received_at: at,
    })
    .await
    .expect("insert report");
    let case = |new_ref| NewCase {
        landlord: &landlord,
        tenancy_ref: "T-P",
        recipient: &recipient,
        subject_key: &subject,
        audit_subject: &audit,
        new_ref,
        now: at,
    };
    let first = tx.case_ref(&case("case-p-1")).await.expect("case");
    assert_eq!(first, "case-p-1");
    assert_eq!(tx.case_ref(&case("case-p-2")).await.expect("case"), first);
    // Makes the SQLite store write what it holds; the lookups must not change their answers.
    tx.ack_alerts(&recipient, 0, &[], at).await.expect("ack");
    let found = tx
        .find_report(&landlord, "pk-1")
        .await
        .expect("find")
        .expect("the report inserted above");
    assert_eq!(found.report_id, "rp-1");
    assert!(
        tx.find_report(&landlord, "pk-2")
            .await
            .expect("find")
            .is_none()
    );
    assert_eq!(tx.case_ref(&case("case-p-3")).await.expect("case"), first);
    // A consent stored after the read-ahead is seen by the next lookup.
    tx.insert_consent(&NewConsentRow {
        consent_id: "c-prefetch",
        subject_key: &subject,
        audit_subject: &audit,
        recipient: &recipient,
        purpose: PURPOSE,
        valid_from: at - Duration::hours(1),
        valid_until: at + Duration::days(30),
        evidence_ref: "E-P",
        notice_version: "v1",
        covers_landlord: false,
        flows: &[FLOW.to_owned()],
        subject_pseudonym: &ps("own-prefetch"),
        renews: None,
        now: at,
    })
    .await
    .expect("insert consent");
    assert_eq!(
        tx.consents_for(&subject, PURPOSE)
            .await
            .expect("consents")
            .len(),
        1
    );
    tx.commit().await.expect("commit");
    let found = store
        .find_case(&recipient, &first)
        .await
        .expect("find case");
    assert!(
        found.is_some(),
        "the case opened in the transaction is stored"
    );
}

/// A promotion moves every stored subject in one transaction, or none if one cannot move.
async fn a_key_promotion_moves_every_subject_or_none(store: &dyn Store) {
    enrol(store, "c-promote", "subject-k", "ss-a").await;
    let mut tx = store.begin().await.expect("begin");
    let case_ref = tx
        .case_ref(&NewCase {
            landlord: &org("landlord-1"),
            tenancy_ref: "T-P",
            recipient: &org("ss-a"),
            subject_key: &ps("subject-k"),
            audit_subject: &ps("audit-subject-k"),
            new_ref: "case-promote",
            now: now(),
        })
        .await
        .expect("case");
    assert_eq!(tx.pseudonym_version().await.expect("version"), None);
    tx.commit().await.expect("commit");

    // One value that cannot move abandons the whole promotion.
    let mut tx = store.begin().await.expect("begin");
    let refuse = |_: SubjectColumn, v: &str| (v != "subject-k").then(|| format!("{v}@2"));
    let own = |o: &OrgId, v: &str| Some(format!("{v}@{o}"));
    assert!(tx.promote_pseudonyms(2, &refuse, &own).await.is_err());
    drop(tx);
    // A recipient's own pseudonym that cannot move abandons it as well.
    let mut tx = store.begin().await.expect("begin");
    let all = |_: SubjectColumn, v: &str| Some(format!("{v}@2"));
    let refuse_own = |o: &OrgId, v: &str| (v != "own-subject-k").then(|| format!("{v}@{o}"));
    assert!(tx.promote_pseudonyms(2, &all, &refuse_own).await.is_err());
    drop(tx);
    let mut tx = store.begin().await.expect("begin");
    assert_eq!(tx.pseudonym_version().await.expect("version"), None);
    assert_eq!(
        tx.consents_for(&ps("subject-k"), PURPOSE)
            .await
            .expect("consents")
            .len(),
        1
    );
    drop(tx);

    let mut tx = store.begin().await.expect("begin");
    let rekey = |column: SubjectColumn, v: &str| {
        Some(match column {
            SubjectColumn::Lookup => format!("{v}@2"),
            SubjectColumn::Audit => format!("{v}@a2"),
        })
    };
    let moved = tx
        .promote_pseudonyms(2, &rekey, &own)
        .await
        .expect("promote");
    assert!(moved >= 2, "the consent and the case moved ({moved})");
    tx.append_key_handover(7, "handover note\n", now())
        .await
        .expect("handover");
    tx.commit().await.expect("commit");
    let handovers = store.key_handovers().await.expect("handovers");
    assert_eq!(
        handovers
            .iter()
            .map(|h| (h.size, h.note.as_str()))
            .collect::<Vec<_>>(),
        [(7, "handover note\n")]
    );

    let mut tx = store.begin().await.expect("begin");
    assert_eq!(tx.pseudonym_version().await.expect("version"), Some(2));
    let old = tx
        .consents_for(&ps("subject-k"), PURPOSE)
        .await
        .expect("consents");
    let new = tx
        .consents_for(&ps("subject-k@2"), PURPOSE)
        .await
        .expect("consents");
    assert!(old.is_empty());
    assert_eq!(new.len(), 1);
    let subject = tx
        .consent_subject(&org("ss-a"), "c-promote")
        .await
        .expect("subject")
        .expect("stored");
    assert_eq!(subject.audit_subject, ps("audit-subject-k@a2"));
    drop(tx);
    let held = store
        .consent(&org("ss-a"), "c-promote")
        .await
        .expect("read")
        .expect("stored");
    assert_eq!(held.subject_pseudonym, "own-subject-k@ss-a");
    let case = store
        .find_case(&org("ss-a"), &case_ref)
        .await
        .expect("case")
        .expect("stored");
    assert_eq!(
        (case.subject_key, case.audit_subject),
        (ps("subject-k@2"), ps("audit-subject-k@a2"))
    );
}

/// Stores a consent of `holder` for `subject` valid until `until`, as of `at`.
async fn hold(
    store: &dyn Store,
    id: &str,
    holder: &str,
    subject: &str,
    until: OffsetDateTime,
    renews: Option<&str>,
    at: OffsetDateTime,
) {
    let mut tx = store.begin().await.expect("begin");
    tx.insert_consent(&NewConsentRow {
        consent_id: id,
        subject_key: &ps(&format!("key-{subject}")),
        audit_subject: &ps(&format!("audit-{subject}")),
        recipient: &org(holder),
        purpose: PURPOSE,
        valid_from: at - Duration::hours(1),
        valid_until: until,
        evidence_ref: "E-L",
        notice_version: "v1",
        covers_landlord: subject == "s2",
        flows: &[FLOW.to_owned()],
        subject_pseudonym: &ps(&format!("own-{holder}-{subject}")),
        renews,
        now: at,
    })
    .await
    .expect("insert consent");
    tx.commit().await.expect("commit");
}

/// Lists `holder`'s consents ids; the status is judged at `now` with a 30-day window.
async fn listed(
    store: &dyn Store,
    holder: &str,
    status: Option<ConsentStanding>,
    subject: Option<&str>,
    now: OffsetDateTime,
    after: Option<&str>,
    limit: u32,
) -> Vec<String> {
    let query = ConsentQuery {
        status,
        subject_pseudonym: subject,
        now,
        expiring_before: now + Duration::days(30),
        after,
        limit,
    };
    store
        .list_consents(&org(holder), &query)
        .await
        .expect("list")
        .into_iter()
        .map(|c| c.record.consent_id)
        .collect()
}

async fn consents_are_listed_by_holder_status_subject_and_page(store: &dyn Store) {
    let t = now();
    let days = Duration::days;
    hold(store, "lc-1", "holder-1", "s1", t + days(100), None, t).await;
    hold(store, "lc-2", "holder-1", "s2", t + days(10), None, t).await;
    hold(store, "lc-3", "holder-1", "s3", t + days(1), None, t).await;
    hold(store, "lc-4", "holder-1", "s4", t + days(100), None, t).await;
    // A renewal of lc-1: lc-1 is superseded, and lc-5 says what it renewed.
    hold(
        store,
        "lc-5",
        "holder-1",
        "s1",
        t + days(200),
        Some("lc-1"),
        t,
    )
    .await;
    // Another organisation's consent for the same person.
    hold(store, "lc-6", "holder-2", "s1", t + days(100), None, t).await;
    let mut tx = store.begin().await.expect("begin");
    let withdrawn = tx
        .withdraw(&org("holder-1"), &ps("key-s4"), PURPOSE, t + days(1))
        .await
        .expect("withdraw");
    assert_eq!(withdrawn.withdrawn, vec!["lc-4".to_owned()]);
    tx.commit().await.expect("commit");

    let all = |s| async move { listed(store, "holder-1", s, None, t, None, 100).await };
    assert_eq!(all(None).await, ["lc-1", "lc-2", "lc-3", "lc-4", "lc-5"]);
    assert_eq!(all(Some(ConsentStanding::Active)).await, ["lc-5"]);
    assert_eq!(all(Some(ConsentStanding::Expiring)).await, ["lc-2", "lc-3"]);
    assert!(all(Some(ConsentStanding::Expired)).await.is_empty());
    assert_eq!(all(Some(ConsentStanding::Withdrawn)).await, ["lc-4"]);
    assert_eq!(all(Some(ConsentStanding::Superseded)).await, ["lc-1"]);
    // Judged two days later (an explicit time, no waiting): lc-3 has ended.
    let later = t + days(2);
    let at_later = |s| async move { listed(store, "holder-1", s, None, later, None, 100).await };
    assert_eq!(at_later(Some(ConsentStanding::Expired)).await, ["lc-3"]);
    assert_eq!(at_later(Some(ConsentStanding::Expiring)).await, ["lc-2"]);

    // By the holder's own pseudonym of the subject: both of s1's, never the other holder's.
    let s1 = Some("own-holder-1-s1");
    assert_eq!(
        listed(store, "holder-1", None, s1, t, None, 100).await,
        ["lc-1", "lc-5"]
    );
    let foreign = Some("own-holder-2-s1");
    assert!(
        listed(store, "holder-1", None, foreign, t, None, 100)
            .await
            .is_empty()
    );
    assert_eq!(
        listed(store, "holder-2", None, None, t, None, 100).await,
        ["lc-6"]
    );
    // Pages continue after the previous page's last id.
    assert_eq!(
        listed(store, "holder-1", None, None, t, None, 2).await,
        ["lc-1", "lc-2"]
    );
    assert_eq!(
        listed(store, "holder-1", None, None, t, Some("lc-2"), 2).await,
        ["lc-3", "lc-4"]
    );
    assert_eq!(
        listed(store, "holder-1", None, None, t, Some("lc-4"), 2).await,
        ["lc-5"]
    );

    // One consent by id: the holder's only.
    let c5 = store
        .consent(&org("holder-1"), "lc-5")
        .await
        .expect("read")
        .expect("lc-5 is holder-1's");
    assert_eq!(c5.renews.as_deref(), Some("lc-1"));
    assert_eq!(c5.subject_pseudonym, "own-holder-1-s1");
    assert_eq!(c5.audit_subject, ps("audit-s1"));
    assert_eq!(c5.record.valid_until, t + days(200));
    assert_eq!(c5.created_at, t);
    let c4 = store
        .consent(&org("holder-1"), "lc-4")
        .await
        .expect("read")
        .expect("lc-4 is holder-1's");
    assert_eq!(c4.record.state, ConsentState::Withdrawn);
    assert_eq!(c4.changed_at, t + days(1));
    assert!(c4.renews.is_none());
    let c2 = store
        .consent(&org("holder-1"), "lc-2")
        .await
        .expect("read")
        .expect("lc-2");
    assert!(c2.record.covers_landlord);
    assert_eq!(c2.evidence_ref, "E-L");
    assert!(
        store
            .consent(&org("holder-2"), "lc-5")
            .await
            .expect("read")
            .is_none()
    );
    assert!(
        store
            .consent(&org("holder-1"), "lc-6")
            .await
            .expect("read")
            .is_none()
    );
}

/// Every counter, as a map, to compare before and after.
async fn counters(store: &dyn Store) -> HashMap<CellKey, i64> {
    let until = Month::of(now() + Duration::days(400));
    store
        .stat_cells(until)
        .await
        .expect("read statistics")
        .into_iter()
        .map(|c| (c.key, c.n))
        .collect()
}

/// What changed between two readings, zeros left out.
fn changes(before: &HashMap<CellKey, i64>, after: &HashMap<CellKey, i64>) -> BTreeMap<String, i64> {
    after
        .iter()
        .map(|(k, n)| (k, n - before.get(k).copied().unwrap_or(0)))
        .chain(
            before
                .iter()
                .filter(|(k, _)| !after.contains_key(*k))
                .map(|(k, n)| (k, -n)),
        )
        .filter(|(_, n)| *n != 0)
        .map(|(k, n)| {
            (
                format!(
                    "{} {} {} {} {} {}",
                    k.month,
                    k.measure.as_str(),
                    k.flow,
                    k.landlord,
                    k.recipient,
                    k.category
                ),
                n,
            )
        })
        .collect()
}

async fn statistics_count_with_the_events_they_count(store: &dyn Store) {
    let t = now();
    let m = Month::of(t);
    let landlord = Caller {
        org: org("landlord-st"),
        role: Role::Landlord,
    };
    let mut report = AuditRecord::new(
        t,
        "rq-st",
        &landlord,
        "Landlord.ReportRentArrears",
        Outcome::Allow,
        "disclosed",
    );
    report.flow_id = Some(FLOW.to_owned());
    report.recipients = vec![org("ss-st-a"), org("ss-st-b")];
    let custom = CellKey {
        month: m,
        measure: Measure::FirstAlertStage,
        flow: FLOW.to_owned(),
        landlord: "landlord-st".to_owned(),
        recipient: "ss-st-a".to_owned(),
        category: "warning".to_owned(),
    };

    // Rolled back: nothing counted.
    let before = counters(store).await;
    let mut tx = store.begin().await.expect("begin");
    tx.append_audit(&report).await.expect("append");
    tx.count(custom.clone(), 5);
    drop(tx);
    assert_eq!(changes(&before, &counters(store).await), BTreeMap::new());

    // Committed: counted once, from the ledger entry and as asked.
    let mut tx = store.begin().await.expect("begin");
    tx.append_audit(&report).await.expect("append");
    tx.count(custom.clone(), 5);
    tx.count(custom.clone(), -1);
    tx.commit().await.expect("commit");
    let expect = |pairs: &[(&str, i64)]| -> BTreeMap<String, i64> {
        pairs
            .iter()
            .map(|(k, n)| (k.replace("{m}", &m.to_string()), *n))
            .collect()
    };
    assert_eq!(
        changes(&before, &counters(store).await),
        expect(&[
            ("{m} reports rent-arrears landlord-st  forwarded", 1),
            ("{m} alerts_sent rent-arrears landlord-st ss-st-a ", 1),
            ("{m} alerts_sent rent-arrears landlord-st ss-st-b ", 1),
            (
                "{m} first_alert_stage rent-arrears landlord-st ss-st-a warning",
                4
            ),
        ])
    );

    // A consent expires in the month its validity ends, unless it ends early.
    let before = counters(store).await;
    let until = Month::of(now() + Duration::days(30));
    enrol(store, "c-st-1", "subject-st", "ss-st-a").await;
    let recorded = changes(&before, &counters(store).await);
    assert_eq!(
        recorded,
        BTreeMap::from([(format!("{until} consents_expiring   ss-st-a "), 1)])
    );
    // Superseded by a new one: the first ends early, the second will expire.
    enrol(store, "c-st-2", "subject-st", "ss-st-a").await;
    let mut tx = store.begin().await.expect("begin");
    let withdrawal = tx
        .withdraw(&org("ss-st-a"), &ps("subject-st"), PURPOSE, now())
        .await
        .expect("withdraw");
    tx.commit().await.expect("commit");
    assert_eq!(withdrawal.withdrawn, ["c-st-2"]);
    let m_now = Month::of(now());
    assert_eq!(
        changes(&before, &counters(store).await),
        BTreeMap::from([(format!("{m_now} consents_ended_early   ss-st-a "), 2)]),
        "two recorded, two ended early, none left to expire"
    );

    // An acknowledged alert counts its delay under its flow and both organisations; a support
    // notice to a landlord (no pseudonym) is acknowledged but is not an alert.
    enrol(store, "c-st-3", "subject-st3", "ss-st-c").await;
    let permit = permits(store, "subject-st3").await.remove(0);
    let mut tx = store.begin().await.expect("begin");
    tx.insert_alert(&permit, &test_alert("st-alert"))
        .await
        .expect("alert");
    tx.insert_alert(
        &permit,
        &NewAlert {
            subject_pseudonym: "",
            ..test_alert("st-notice")
        },
    )
    .await
    .expect("notice");
    tx.commit().await.expect("commit");
    let before = counters(store).await;
    let mut tx = store.begin().await.expect("begin");
    let acked = tx
        .ack_alerts(&org("ss-st-c"), u64::MAX, &[], now() + Duration::hours(5))
        .await
        .expect("ack");
    tx.commit().await.expect("commit");
    assert_eq!(acked, 2);
    let m_ack = Month::of(now() + Duration::hours(5));
    assert_eq!(
        changes(&before, &counters(store).await),
        BTreeMap::from([(
            format!("{m_ack} ack_delay {FLOW} landlord-1 ss-st-c 4h_1d"),
            1
        )])
    );

    // A case's first notice is marked once and tells when the case was opened.
    let opened = now() - Duration::days(3);
    let mut tx = store.begin().await.expect("begin");
    let case_ref = tx
        .case_ref(&old_case(&ps("subject-st4"), "case-st-4", opened))
        .await
        .expect("case");
    let recipient = RECIPIENT_RET.clone();
    assert_eq!(
        tx.first_notice(&recipient, &case_ref, now())
            .await
            .expect("first"),
        Some(opened)
    );
    assert_eq!(
        tx.first_notice(&recipient, &case_ref, now())
            .await
            .expect("second"),
        None
    );
    assert_eq!(
        tx.first_notice(&org("someone-else"), &case_ref, now())
            .await
            .expect("other"),
        None,
        "another organisation's case is not marked"
    );
    tx.commit().await.expect("commit");

    // A rebuild replaces what the ledger implies and keeps the rest.
    let before = counters(store).await;
    let mut tx = store.begin().await.expect("begin");
    let size = tx.ledger_size().await.expect("size");
    assert_eq!(size, store.ledger_head().await.expect("head").size);
    let only = CellKey {
        month: m,
        measure: Measure::Reports,
        flow: FLOW.to_owned(),
        landlord: "landlord-rebuilt".to_owned(),
        recipient: String::new(),
        category: "forwarded".to_owned(),
    };
    tx.replace_ledger_stats(&[Cell {
        key: only.clone(),
        n: 7,
    }])
    .await
    .expect("replace");
    tx.commit().await.expect("commit");
    let after = counters(store).await;
    assert_eq!(after.get(&only), Some(&7));
    for (k, n) in &before {
        if k.measure.from_ledger() {
            assert!(!after.contains_key(k), "{k:?} left by the rebuild");
        } else {
            assert_eq!(after.get(k), Some(n), "{k:?} changed by the rebuild");
        }
    }
}

async fn suite(store: &dyn Store) {
    audit_appends_build_a_ledger_that_survives_rollbacks(store).await;
    consents_are_superseded_and_withdrawn_with_their_undelivered_alerts(store).await;
    alerts_are_pending_in_order_until_acknowledged(store).await;
    reports_are_found_by_key_and_cases_are_stable(store).await;
    an_uncommitted_transaction_leaves_nothing(store).await;
    a_rolled_back_alert_is_never_pending(store).await;
    retention_purges_one_flow_at_a_time(store).await;
    prefetched_lookups_answer_as_without_prefetch(store).await;
    every_kind_of_record_expires(store).await;
    consents_are_listed_by_holder_status_subject_and_page(store).await;
    statistics_count_with_the_events_they_count(store).await;
    // Last: it rewrites every stored subject.
    a_key_promotion_moves_every_subject_or_none(store).await;
}

#[tokio::test]
async fn sqlite_store_conforms() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(&dir.path().join("conformance.db"))
        .await
        .expect("open");
    suite(&store).await;
    store.close().await;
}

/// The SQLite store answers subscribers from memory what it committed itself; what an
/// earlier run committed is read from the file.
#[tokio::test]
async fn sqlite_alerts_of_an_earlier_run_stay_pending() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("reopen.db");
    let store = SqliteStore::open(&path).await.expect("open");
    enrol(&store, "c-re", "subject-re", "ss-re").await;
    let permit = permits(&store, "subject-re").await.remove(0);
    let earlier = [
        deliver(&store, &permit, 400).await,
        deliver(&store, &permit, 401).await,
    ];
    store.close().await;
    drop(store);

    let store = SqliteStore::open(&path).await.expect("reopen");
    assert_eq!(pending(&store, "ss-re").await, earlier);
    let later = deliver(&store, &permit, 402).await;
    assert_eq!(
        pending(&store, "ss-re").await,
        [earlier[0], earlier[1], later]
    );
    let after = store
        .pending_alerts(&org("ss-re"), earlier[1], 100)
        .await
        .expect("pending");
    assert_eq!(after.iter().map(|a| a.seq).collect::<Vec<_>>(), [later]);
    store.close().await;
}

#[tokio::test]
async fn sqlite_audit_rows_cannot_be_changed_or_deleted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("audit.db");
    let store = SqliteStore::open(&path).await.expect("open");
    let mut tx = store.begin().await.expect("begin");
    let caller = Caller {
        org: org("ll"),
        role: Role::Landlord,
    };
    tx.append_audit(&AuditRecord::new(
        now(),
        "req",
        &caller,
        "Test",
        Outcome::Allow,
        "x",
    ))
    .await
    .expect("append");
    tx.commit().await.expect("commit");
    store.close().await;

    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
        .await
        .expect("open");
    for sql in ["UPDATE audit SET reason = 'rewritten'", "DELETE FROM audit"] {
        let err = sqlx::query(sql)
            .execute(&pool)
            .await
            .expect_err("append-only");
        assert!(err.to_string().contains("append-only"), "{err}");
    }
    pool.close().await;
}

#[tokio::test]
async fn postgres_store_conforms() {
    let Some(db) = TempDatabase::create("postgres_store_conforms").await else {
        return;
    };
    let store = PostgresStore::open(&db.url).await.expect("open");
    suite(&store).await;
    store.close().await;
    db.drop_now().await;
}

/// The whole suite as production runs the gateway: its role holds only the runtime privileges
/// the owner granted (`silta db migrate --runtime-role`), so a query needing more fails here.
#[tokio::test]
async fn postgres_store_conforms_as_a_runtime_role() {
    let Some(db) = TempDatabase::create("postgres_store_conforms_as_a_runtime_role").await else {
        return;
    };
    let roles = db.split_roles().await;
    PostgresStore::migrate_as_owner(&roles.url_as(&roles.owner, None), Some(&roles.gateway))
        .await
        .expect("the owner migrates and grants");
    let store = PostgresStore::open(&roles.url_as(&roles.gateway, None))
        .await
        .expect("open as the runtime role");
    suite(&store).await;
    store.close().await;
    db.drop_now().await;
    roles.drop_now().await;
}

#[tokio::test]
async fn postgres_audit_rows_cannot_be_changed_or_deleted() {
    let Some(db) = TempDatabase::create("postgres_audit_rows_cannot_be_changed_or_deleted").await
    else {
        return;
    };
    let store = PostgresStore::open(&db.url).await.expect("open");
    let mut tx = store.begin().await.expect("begin");
    let caller = Caller {
        org: org("ll"),
        role: Role::Landlord,
    };
    tx.append_audit(&AuditRecord::new(
        now(),
        "req",
        &caller,
        "Test",
        Outcome::Allow,
        "x",
    ))
    .await
    .expect("append");
    tx.commit().await.expect("commit");
    store.close().await;
    let pool = sqlx::PgPool::connect(&db.url).await.expect("open");
    for sql in [
        "UPDATE audit SET reason = 'rewritten'",
        "DELETE FROM audit",
        "TRUNCATE audit",
        "TRUNCATE ledger_nodes",
        "TRUNCATE checkpoints",
        "INSERT INTO audit SELECT seq + 5, at, request_id, actor_org, actor_role, actor_person, action, flow_id, outcome, reason, policy_ids, subject, fields, recipients, entry, leaf_hash FROM audit",
    ] {
        let err = sqlx::query(sql)
            .execute(&pool)
            .await
            .expect_err("append-only");
        assert!(
            err.to_string().contains("append-only") || err.to_string().contains("next index"),
            "{sql}: {err}"
        );
    }
    pool.close().await;
    db.drop_now().await;
}

/// Writers on several connections (as several nodes are) append to one ledger: no gaps, no
/// forks, every leaf where the tree says it is.
#[tokio::test]
async fn postgres_concurrent_writers_keep_one_ledger() {
    let Some(db) = TempDatabase::create("postgres_concurrent_writers_keep_one_ledger").await else {
        return;
    };
    let nodes = [
        PostgresStore::open(&db.url).await.expect("node a"),
        PostgresStore::open(&db.url).await.expect("node b"),
    ];
    let caller = Caller {
        org: org("ll"),
        role: Role::Landlord,
    };
    let mut tasks = Vec::new();
    for (n, store) in nodes.iter().enumerate() {
        for w in 0..4 {
            let store = store.clone();
            let caller = caller.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..25 {
                    let mut tx = store.begin().await.expect("begin");
                    for j in 0..3 {
                        let id = format!("{n}-{w}-{i}-{j}");
                        tx.append_audit(&AuditRecord::new(
                            now(),
                            &id,
                            &caller,
                            "Test",
                            Outcome::Allow,
                            "x",
                        ))
                        .await
                        .expect("append");
                    }
                    tx.commit().await.expect("commit");
                }
            }));
        }
    }
    for t in tasks {
        t.await.expect("writer");
    }
    let head = nodes[0].ledger_head().await.expect("head");
    assert_eq!(head.size, 2 * 4 * 25 * 3);
    let entries = nodes[1]
        .ledger_entries(&silta_store::AuditFilter {
            limit: 10_000,
            ..Default::default()
        })
        .await
        .expect("entries");
    let indexes: Vec<u64> = entries.iter().map(|e| e.index).collect();
    assert_eq!(
        indexes,
        (0..head.size).collect::<Vec<_>>(),
        "gaps or duplicates"
    );
    let mut tree = silta_ledger::tree::MemoryTree::default();
    for e in &entries {
        tree.append(silta_ledger::leaf_hash(&e.entry));
    }
    assert_eq!(
        tree.root(),
        head.root,
        "the stored tree is not the tree of the entries"
    );
    for store in nodes {
        store.close().await;
    }
    db.drop_now().await;
}

/// The previous release, started again on a SQLite database a newer release migrated (a
/// rollback), ignores the migration it does not know.
#[tokio::test]
async fn sqlite_an_older_release_starts_on_a_newer_schema() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("silta.db");
    SqliteStore::open(&path).await.expect("open").close().await;
    let url = format!("sqlite://{}", path.display());
    let pool = sqlx::SqlitePool::connect(&url).await.expect("open");
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (9999, 'from a newer release', TRUE, x'00', 0)",
    )
    .execute(&pool)
    .await
    .expect("a newer migration");
    pool.close().await;
    let store = SqliteStore::open(&path)
        .await
        .expect("the older release starts");
    store.ledger_head().await.expect("and serves");
    store.close().await;
}

/// A node of the previous release restarts on a database a newer node already migrated (a
/// rolling upgrade, or a rollback): it ignores the migration it does not know.
#[tokio::test]
async fn postgres_an_older_node_starts_on_a_newer_schema() {
    let Some(db) = TempDatabase::create("postgres_an_older_node_starts_on_a_newer_schema").await
    else {
        return;
    };
    let store = PostgresStore::open(&db.url).await.expect("open");
    store.close().await;
    let pool = sqlx::PgPool::connect(&db.url).await.expect("open");
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (9999, 'from a newer release', TRUE, '\\x00'::bytea, 0)",
    )
    .execute(&pool)
    .await
    .expect("a newer migration");
    pool.close().await;
    let store = PostgresStore::open(&db.url)
        .await
        .expect("the older node starts");
    store.ledger_head().await.expect("and serves");
    store.close().await;
    db.drop_now().await;
}
