//! Enrolment, alerts, acknowledgement, withdrawal, restart.

use std::time::Duration;

use silta_server::proto::{self, ArrearsBand, EvictionStage};
use silta_tests::{LANDLORD, SOCIAL_A, SOCIAL_B, TestGateway, enrol, report};
use tokio_stream::StreamExt;
use tonic::Streaming;

const RESIDENT: &str = "150385-9345";

async fn next_alert(stream: &mut Streaming<proto::Alert>) -> Option<proto::Alert> {
    tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .ok()
        .flatten()
        .map(|r| r.expect("alert, not an error"))
}

async fn nothing_within(stream: &mut Streaming<proto::Alert>, ms: u64) -> bool {
    tokio::time::timeout(Duration::from_millis(ms), stream.next())
        .await
        .is_err()
}

fn subscribe_from(after: u64) -> proto::SubscribeAlertsRequest {
    proto::SubscribeAlertsRequest {
        after_sequence: after,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_enrol_report_alert_ack_then_reconnect_gets_nothing_new() {
    let gw = TestGateway::start().await;
    let mut social = gw.social(SOCIAL_A).await;
    let mut landlord = gw.landlord(LANDLORD).await;

    let enrolled = social
        .enrol_client(enrol(RESIDENT))
        .await
        .expect("enrolled")
        .into_inner();
    let mut alerts = social
        .subscribe_alerts(subscribe_from(0))
        .await
        .expect("subscribed")
        .into_inner();
    let receipt = landlord
        .report_rent_arrears(report("r-1", RESIDENT))
        .await
        .expect("accepted")
        .into_inner();
    assert!(!receipt.report_id.is_empty());

    let alert = next_alert(&mut alerts).await.expect("alert delivered");
    assert_eq!(alert.subject_pseudonym, enrolled.subject_pseudonym);
    assert_eq!(alert.consent_id, enrolled.consent_id);
    assert_eq!(alert.flow_id, "rent-arrears");
    assert_eq!(alert.purpose, "eviction-prevention");
    let Some(proto::alert::Details::RentArrears(details)) = &alert.details else {
        panic!("rent-arrears details expected: {alert:?}");
    };
    assert_eq!(details.arrears_band(), ArrearsBand::ArrearsBand500To1500);
    assert_eq!(details.months_overdue, Some(2));
    assert_eq!(details.eviction_stage(), EvictionStage::Warning);
    assert_eq!(
        alert.landlord_contact_office.as_deref(),
        Some("Kallio office")
    );
    assert!(alert.case_ref.starts_with("case-"));
    assert_eq!(alert.report_month.as_deref().map(str::len), Some(7));

    let acked = social
        .ack_alerts(proto::AckAlertsRequest {
            up_to_sequence: alert.sequence,
            sequences: vec![],
        })
        .await
        .expect("acked")
        .into_inner();
    assert_eq!(acked.acknowledged, 1);
    drop(alerts);

    let mut again = social.subscribe_from_cursor(alert.sequence).await;
    assert!(
        nothing_within(&mut again, 600).await,
        "an acknowledged alert came back"
    );
    let mut from_zero = social.subscribe_from_cursor(0).await;
    assert!(
        nothing_within(&mut from_zero, 400).await,
        "acknowledged alerts are never resent"
    );
}

/// Small helper so tests read as the behaviour.
trait SubscribeFrom {
    async fn subscribe_from_cursor(&mut self, after: u64) -> Streaming<proto::Alert>;
}

impl SubscribeFrom
    for proto::social_services_client::SocialServicesClient<tonic::transport::Channel>
{
    async fn subscribe_from_cursor(&mut self, after: u64) -> Streaming<proto::Alert> {
        self.subscribe_alerts(subscribe_from(after))
            .await
            .expect("subscribed")
            .into_inner()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_alerts_are_redelivered_and_several_subscribers_see_the_same_stream() {
    let gw = TestGateway::start().await;
    let mut social = gw.social(SOCIAL_A).await;
    let mut landlord = gw.landlord(LANDLORD).await;
    social
        .enrol_client(enrol(RESIDENT))
        .await
        .expect("enrolled");
    for i in 0..3 {
        landlord
            .report_rent_arrears(report(&format!("r-{i}"), RESIDENT))
            .await
            .expect("accepted");
    }
    let mut first = social.subscribe_from_cursor(0).await;
    let mut second = gw.social(SOCIAL_A).await.subscribe_from_cursor(0).await;
    let mut seqs = Vec::new();
    for _ in 0..3 {
        let a = next_alert(&mut first).await.expect("alert");
        let b = next_alert(&mut second).await.expect("alert");
        assert_eq!(
            a, b,
            "both subscribers see the same alerts in the same order"
        );
        seqs.push(a.sequence);
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in sequence order");
    drop((first, second));

    // Acknowledge only the middle one by id: the others come back on reconnect.
    social
        .ack_alerts(proto::AckAlertsRequest {
            up_to_sequence: 0,
            sequences: vec![seqs[1]],
        })
        .await
        .expect("acked");
    let mut again = social.subscribe_from_cursor(0).await;
    assert_eq!(
        next_alert(&mut again).await.expect("redelivered").sequence,
        seqs[0]
    );
    assert_eq!(
        next_alert(&mut again).await.expect("redelivered").sequence,
        seqs[2]
    );
    assert!(nothing_within(&mut again, 300).await);
    // A cursor skips what the subscriber says it has processed.
    let mut past = social.subscribe_from_cursor(seqs[0]).await;
    assert_eq!(
        next_alert(&mut past).await.expect("after cursor").sequence,
        seqs[2]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_for_a_person_nobody_enrolled_gets_the_same_receipt_and_nothing_is_delivered() {
    let gw = TestGateway::start().await;
    let mut social = gw.social(SOCIAL_A).await;
    let mut landlord = gw.landlord(LANDLORD).await;
    social
        .enrol_client(enrol(RESIDENT))
        .await
        .expect("enrolled");
    let mut alerts = social.subscribe_from_cursor(0).await;

    let stranger = landlord
        .report_rent_arrears(report("r-stranger", "020702A9514"))
        .await
        .expect("accepted")
        .into_inner();
    let client = landlord
        .report_rent_arrears(report("r-client", RESIDENT))
        .await
        .expect("accepted")
        .into_inner();
    // Same shape: every field set, nothing that tells the two apart but their values.
    assert!(!stranger.report_id.is_empty() && stranger.received_at.is_some());
    assert_eq!(stranger.report_id.len(), client.report_id.len());
    assert_eq!(stranger.idempotency_key, "r-stranger");

    let only = next_alert(&mut alerts).await.expect("the client's alert");
    assert!(
        nothing_within(&mut alerts, 400).await,
        "the stranger's report was delivered"
    );
    assert_eq!(only.case_ref.len(), "case-".len() + 32);

    let outcomes = gw
        .query_strings("SELECT outcome || ':' || reason FROM audit WHERE action = 'Landlord.ReportRentArrears' ORDER BY seq")
        .await;
    assert_eq!(outcomes, ["deny:not-disclosed", "allow:disclosed"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withdrawal_purges_undelivered_alerts_stops_forwarding_and_is_audited() {
    let gw = TestGateway::start().await;
    let mut social = gw.social(SOCIAL_A).await;
    let mut landlord = gw.landlord(LANDLORD).await;
    let enrolled = social
        .enrol_client(enrol(RESIDENT))
        .await
        .expect("enrolled")
        .into_inner();
    landlord
        .report_rent_arrears(report("r-1", RESIDENT))
        .await
        .expect("accepted");
    landlord
        .report_rent_arrears(report("r-2", RESIDENT))
        .await
        .expect("accepted");

    let withdrawn = social
        .withdraw_consent(proto::WithdrawConsentRequest {
            target: Some(proto::withdraw_consent_request::Target::Subject(
                proto::SubjectPurpose {
                    hetu: RESIDENT.into(),
                    purpose: "eviction-prevention".into(),
                },
            )),
        })
        .await
        .expect("withdrawn")
        .into_inner();
    assert_eq!(
        withdrawn.withdrawn_consent_ids,
        std::slice::from_ref(&enrolled.consent_id)
    );
    assert_eq!(withdrawn.purged_alerts, 2);

    let mut alerts = social.subscribe_from_cursor(0).await;
    assert!(
        nothing_within(&mut alerts, 400).await,
        "purged alerts were delivered"
    );
    landlord
        .report_rent_arrears(report("r-3", RESIDENT))
        .await
        .expect("accepted after withdrawal");
    assert!(
        nothing_within(&mut alerts, 600).await,
        "a report after withdrawal was forwarded"
    );

    // Withdrawing again by id succeeds and changes nothing.
    let again = social
        .withdraw_consent(proto::WithdrawConsentRequest {
            target: Some(proto::withdraw_consent_request::Target::ConsentId(
                enrolled.consent_id.clone(),
            )),
        })
        .await
        .expect("idempotent")
        .into_inner();
    assert!(again.withdrawn_consent_ids.is_empty());
    assert_eq!(again.purged_alerts, 0);

    let actions = gw
        .query_strings("SELECT action || ':' || reason FROM audit ORDER BY seq")
        .await;
    assert!(
        actions.contains(&"PurgeUndeliveredAlerts:purged-2-unacknowledged-alerts".to_owned()),
        "{actions:?}"
    );
    assert!(actions.contains(&"SocialServices.WithdrawConsent:consent-withdrawn".to_owned()));
    assert_eq!(
        actions.last().map(String::as_str),
        Some("SocialServices.WithdrawConsent:consent-already-inactive")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_acknowledged_before_a_restart_is_delivered_after_it() {
    let mut gw = TestGateway::start().await;
    let enrolled = gw
        .social(SOCIAL_A)
        .await
        .enrol_client(enrol(RESIDENT))
        .await
        .expect("enrolled")
        .into_inner();
    let receipt = gw
        .landlord(LANDLORD)
        .await
        .report_rent_arrears(report("before-restart", RESIDENT))
        .await
        .expect("accepted")
        .into_inner();
    gw.restart().await;

    let mut alerts = gw.social(SOCIAL_A).await.subscribe_from_cursor(0).await;
    let alert = next_alert(&mut alerts)
        .await
        .expect("delivered after restart");
    assert_eq!(alert.subject_pseudonym, enrolled.subject_pseudonym);
    // The retry after the restart still gets the first receipt.
    let retry = gw
        .landlord(LANDLORD)
        .await
        .report_rent_arrears(report("before-restart", RESIDENT))
        .await
        .expect("accepted")
        .into_inner();
    assert_eq!(retry, receipt);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pseudonyms_differ_between_organisations_and_are_stable_across_restarts() {
    let mut gw = TestGateway::start().await;
    let a1 = gw
        .social(SOCIAL_A)
        .await
        .enrol_client(enrol(RESIDENT))
        .await
        .expect("a")
        .into_inner();
    let b1 = gw
        .social(SOCIAL_B)
        .await
        .enrol_client(enrol(RESIDENT))
        .await
        .expect("b")
        .into_inner();
    assert_ne!(a1.subject_pseudonym, b1.subject_pseudonym);
    gw.restart().await;
    let a2 = gw
        .social(SOCIAL_A)
        .await
        .enrol_client(enrol(RESIDENT))
        .await
        .expect("a")
        .into_inner();
    assert_eq!(a1.subject_pseudonym, a2.subject_pseudonym);

    // Both organisations get the report, each under its own pseudonym.
    gw.landlord(LANDLORD)
        .await
        .report_rent_arrears(report("r-both", RESIDENT))
        .await
        .expect("accepted");
    let mut sa = gw.social(SOCIAL_A).await.subscribe_from_cursor(0).await;
    let mut sb = gw.social(SOCIAL_B).await.subscribe_from_cursor(0).await;
    let (a, b) = (
        next_alert(&mut sa).await.expect("a"),
        next_alert(&mut sb).await.expect("b"),
    );
    assert_eq!(a.subject_pseudonym, a1.subject_pseudonym);
    assert_eq!(b.subject_pseudonym, b1.subject_pseudonym);
    assert_ne!(a.case_ref, b.case_ref, "case refs are per recipient");
    assert_eq!(
        (a.sequence, b.sequence),
        (1, 1),
        "each recipient has its own sequence"
    );
    // The newer enrolment superseded the first: the alert names the current consent.
    assert_eq!(a.consent_id, a2.consent_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_withdrawal_by_an_old_consent_id_never_touches_a_newer_consent() {
    let gw = TestGateway::start().await;
    let mut social = gw.social(SOCIAL_A).await;
    let by_id = |id: &str| proto::WithdrawConsentRequest {
        target: Some(proto::withdraw_consent_request::Target::ConsentId(
            id.to_owned(),
        )),
    };
    let old = social
        .enrol_client(enrol(RESIDENT))
        .await
        .expect("enrolled")
        .into_inner();
    social
        .withdraw_consent(by_id(&old.consent_id))
        .await
        .expect("withdrawn");
    let new = social
        .enrol_client(enrol(RESIDENT))
        .await
        .expect("re-enrolled")
        .into_inner();
    // A retry of the first withdrawal, and one naming a superseded consent, change nothing.
    let retry = social
        .withdraw_consent(by_id(&old.consent_id))
        .await
        .expect("ok")
        .into_inner();
    assert!(retry.withdrawn_consent_ids.is_empty());
    let newer = social
        .enrol_client(enrol(RESIDENT))
        .await
        .expect("again")
        .into_inner();
    let superseded = social
        .withdraw_consent(by_id(&new.consent_id))
        .await
        .expect("ok")
        .into_inner();
    assert!(superseded.withdrawn_consent_ids.is_empty());

    gw.landlord(LANDLORD)
        .await
        .report_rent_arrears(report("r-after", RESIDENT))
        .await
        .expect("accepted");
    let mut alerts = social.subscribe_from_cursor(0).await;
    let alert = next_alert(&mut alerts)
        .await
        .expect("the newest consent still holds");
    assert_eq!(alert.consent_id, newer.consent_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_past_their_retention_are_purged_and_the_purge_is_in_the_ledger() {
    let gw = TestGateway::start_with(|c| {
        c.retention.alert_retention_s = 1;
        c.retention.purge_interval_ms = 200;
    })
    .await;
    let mut social = gw.social(SOCIAL_A).await;
    social
        .enrol_client(enrol(RESIDENT))
        .await
        .expect("enrolled");
    gw.landlord(LANDLORD)
        .await
        .report_rent_arrears(report("old", RESIDENT))
        .await
        .expect("accepted");
    tokio::time::sleep(Duration::from_millis(1_800)).await;
    let mut alerts = social.subscribe_from_cursor(0).await;
    assert!(
        nothing_within(&mut alerts, 300).await,
        "an expired alert was delivered"
    );
    assert!(
        gw.query_strings("SELECT alert_id FROM alerts")
            .await
            .is_empty()
    );
    let purges = gw
        .query_strings(
            "SELECT actor_role || ':' || reason FROM audit WHERE action = 'RetentionPurge'",
        )
        .await;
    // The alert's case goes with it: no message on it for longer than any flow's retention.
    assert_eq!(
        purges,
        [
            "gateway:purged-1-messages-older-than-1s",
            "gateway:purged-1-cases-idle-1s-or-without-consent-for-2592000s"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_of_a_flow_no_longer_declared_still_expire() {
    let mut gw = TestGateway::start_with(|c| {
        c.retention.alert_retention_s = 1;
        c.retention.purge_interval_ms = 200;
    })
    .await;
    gw.stop().await;
    // Messages of a flow that `flows.toml` once declared and no longer does.
    gw.tamper(
        "INSERT INTO alerts (alert_id, recipient_org, seq, flow_id, consent_id, report_id,
                             subject_pseudonym, case_ref, payload, created_at, purpose,
                             legal_basis)
         VALUES ('retired-1', 'helsinki-social-services', 1, 'a-retired-flow', 'c', 'r', 'p',
                 'case-x', '{}', 1000 * (unixepoch() - 3600), 'eviction-prevention',
                 'gdpr-6-1-a-consent'),
                ('retired-2', 'helsinki-social-services', 2, 'a-retired-flow', 'c', 'r', 'p',
                 'case-x', '{}', 1000 * (unixepoch() - 3600), 'eviction-prevention',
                 'gdpr-6-1-a-consent')",
    )
    .await;
    gw.restart_after_stop().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let purges = loop {
        let purges = gw
            .query_strings(
                "SELECT flow_id || ':' || reason FROM audit WHERE action = 'RetentionPurge'",
            )
            .await;
        if !purges.is_empty() || tokio::time::Instant::now() > deadline {
            break purges;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        purges,
        ["a-retired-flow:purged-2-messages-older-than-1s"],
        "the retired flow's messages were not purged"
    );
    assert!(
        gw.query_strings("SELECT alert_id FROM alerts")
            .await
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_purge_runs_in_chunks_each_in_the_ledger() {
    let mut gw = TestGateway::start_with(|c| {
        c.retention.alert_retention_s = 1;
        c.retention.purge_interval_ms = 200;
    })
    .await;
    gw.stop().await;
    // As after a long outage: 2,500 expired messages, more than one purge transaction takes.
    gw.tamper(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2500)
         INSERT INTO alerts (alert_id, recipient_org, seq, flow_id, consent_id, report_id,
                             subject_pseudonym, case_ref, payload, created_at, purpose,
                             legal_basis)
         SELECT 'old-' || i, 'helsinki-social-services', i, 'rent-arrears', 'c', 'r', 'p',
                'case-x', '{}', 1000 * (unixepoch() - 3600), 'eviction-prevention',
                'gdpr-6-1-a-consent'
         FROM n",
    )
    .await;
    gw.restart_after_stop().await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(
        gw.query_strings("SELECT alert_id FROM alerts")
            .await
            .is_empty()
    );
    let purges = gw
        .query_strings("SELECT reason FROM audit WHERE action = 'RetentionPurge' ORDER BY seq")
        .await;
    assert_eq!(
        purges,
        [
            "purged-1000-messages-older-than-1s",
            "purged-1000-messages-older-than-1s",
            "purged-500-messages-older-than-1s"
        ]
    );
}
