//! Policy-driven flows: each declared flow carries only its own fields, the Cedar policies
//! decide every disclosure and name themselves in the ledger and in refusals, support notices
//! go back to the landlord, and a policy reload takes effect at once or not at all.

use std::time::Duration;

use silta_server::proto::landlord_client::LandlordClient;
use silta_server::proto::{self, ArrearsBand, DisturbanceCategory, EvictionStage, SupportOutcome};
use silta_tests::{
    CONSENT, LANDLORD, MUNICIPAL, SOCIAL_A, SOCIAL_B, STATUTORY, TestGateway, consent, disturbance,
    enrol, eviction, report,
};
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::{Code, Streaming};
use tonic_types::StatusExt;

/// Synthetic identity codes (tests/fixtures/hetu-valid.txt); no real person has them.
const RESIDENT: &str = "150385-9345";
const NEIGHBOUR: &str = "020464-911D";
const LODGER: &str = "030755-930S";

const PURPOSE: &str = "eviction-prevention";

async fn next<T>(stream: &mut Streaming<T>) -> Option<T> {
    tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .ok()
        .flatten()
        .map(|r| r.expect("a message, not an error"))
}

async fn nothing_within<T>(stream: &mut Streaming<T>, ms: u64) -> bool {
    tokio::time::timeout(Duration::from_millis(ms), stream.next())
        .await
        .is_err()
}

async fn alerts_of(gw: &TestGateway, org: &str) -> Streaming<proto::Alert> {
    gw.social(org)
        .await
        .subscribe_alerts(proto::SubscribeAlertsRequest { after_sequence: 0 })
        .await
        .expect("subscribed to alerts")
        .into_inner()
}

async fn notices_of(landlord: &mut LandlordClient<Channel>) -> Streaming<proto::SupportNotice> {
    landlord
        .subscribe_notices(proto::SubscribeNoticesRequest { after_sequence: 0 })
        .await
        .expect("subscribed to notices")
        .into_inner()
}

/// The current UTC month, "YYYY-MM".
fn this_month() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!("{:04}-{:02}", now.year(), u8::from(now.month()))
}

/// The `google.rpc.ErrorInfo` reason of a refusal.
fn error_reason(err: &tonic::Status) -> String {
    err.get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default()
}

/// The `policy_ids` the `google.rpc.ErrorInfo` of a policy refusal names.
fn error_policy_ids(err: &tonic::Status) -> String {
    err.get_error_details()
        .error_info()
        .and_then(|i| i.metadata.get("policy_ids").cloned())
        .unwrap_or_default()
}

fn bad_fields(err: &tonic::Status) -> Vec<String> {
    err.get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

/// `outcome|reason|policy_ids` of each audit row of `action`, in ledger order.
async fn audit_rows(gw: &TestGateway, action: &str) -> Vec<String> {
    gw.query_strings(&format!(
        "SELECT outcome || '|' || reason || '|' || policy_ids FROM audit \
         WHERE action = '{action}' ORDER BY seq"
    ))
    .await
}

fn support_notice(key: &str, case_ref: &str) -> proto::SendSupportNoticeRequest {
    proto::SendSupportNoticeRequest {
        idempotency_key: key.into(),
        case_ref: case_ref.into(),
        purpose: PURPOSE.into(),
        legal_basis: CONSENT.into(),
        outcome: SupportOutcome::PaymentCommitment.into(),
        commitment_cents: 60_000,
        commitment_month: "2027-01".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eviction_stage_on_consent_reaches_the_consenting_organisation_as_its_month_only() {
    let gw = TestGateway::start().await;
    let enrolled = gw
        .social(SOCIAL_A)
        .await
        .enrol_client(enrol(RESIDENT))
        .await
        .expect("enrolled")
        .into_inner();
    let mut alerts = alerts_of(&gw, SOCIAL_A).await;
    let before = this_month();
    gw.landlord(LANDLORD)
        .await
        .report_eviction_stage(eviction("e-1", RESIDENT, EvictionStage::Warning, CONSENT))
        .await
        .expect("accepted");
    let after = this_month();

    let alert = next(&mut alerts).await.expect("alert delivered");
    assert_eq!(alert.flow_id, "eviction-stage");
    assert_eq!(alert.purpose, PURPOSE);
    assert_eq!(alert.legal_basis, CONSENT);
    assert_eq!(alert.consent_id, enrolled.consent_id);
    assert_eq!(alert.subject_pseudonym, enrolled.subject_pseudonym);
    assert!(alert.case_ref.starts_with("case-"), "{}", alert.case_ref);
    let month = alert.report_month.clone().expect("report_month set");
    assert!(month == before || month == after, "report month {month}");
    assert_eq!(
        alert.landlord_contact_office.as_deref(),
        Some("Kallio office")
    );
    let Some(proto::alert::Details::EvictionStageChange(details)) = &alert.details else {
        panic!("eviction_stage_change details expected: {alert:?}");
    };
    assert_eq!(details.eviction_stage(), EvictionStage::Warning);
    assert_eq!(details.stage_month.as_deref(), Some("2026-12"));

    // Neither the tenancy reference nor the day of the step crosses, nor is it stored with
    // the alert.
    let shown = format!("{alert:?}");
    assert!(!shown.contains("T-1/A"), "tenancy_ref crossed: {shown}");
    assert!(
        !shown.contains("2026-12-15"),
        "the date's day crossed: {shown}"
    );
    let payloads = gw.query_strings("SELECT payload FROM alerts").await;
    assert_eq!(payloads.len(), 1);
    assert!(
        !payloads[0].contains("T-1/A") && !payloads[0].contains("2026-12-15"),
        "{}",
        payloads[0]
    );
    assert_eq!(
        audit_rows(&gw, "Landlord.ReportEvictionStage").await,
        ["allow|disclosed|[\"eviction-stage-on-consent\"]"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disturbance_notice_crosses_as_a_category_a_count_and_a_month() {
    let gw = TestGateway::start().await;
    let enrolled = gw
        .social(SOCIAL_A)
        .await
        .enrol_client(enrol(RESIDENT))
        .await
        .expect("enrolled")
        .into_inner();
    let mut alerts = alerts_of(&gw, SOCIAL_A).await;
    gw.landlord(LANDLORD)
        .await
        .report_disturbance(disturbance("d-1", RESIDENT))
        .await
        .expect("accepted");

    let alert = next(&mut alerts).await.expect("alert delivered");
    assert_eq!(alert.flow_id, "disturbance-notice");
    assert_eq!(alert.consent_id, enrolled.consent_id);
    assert_eq!(alert.subject_pseudonym, enrolled.subject_pseudonym);
    assert!(alert.report_month.is_some());
    let Some(proto::alert::Details::Disturbance(details)) = &alert.details else {
        panic!("disturbance details expected: {alert:?}");
    };
    assert_eq!(details.category(), DisturbanceCategory::Noise);
    assert_eq!(details.count_in_period, Some(3));
    assert_eq!(details.period_month.as_deref(), Some("2026-10"));
    assert!(!format!("{alert:?}").contains("T-1/A"));
    assert_eq!(
        audit_rows(&gw, "Landlord.ReportDisturbance").await,
        ["allow|disclosed|[\"disturbance-notice-on-consent\"]"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_statutory_notice_reaches_only_the_municipality_without_consent_and_only_at_enforcement()
 {
    let gw = TestGateway::start().await;
    // Nobody enrolled anyone.
    let mut municipal = alerts_of(&gw, MUNICIPAL).await;
    let mut social_a = alerts_of(&gw, SOCIAL_A).await;
    let mut landlord = gw.landlord(LANDLORD).await;
    landlord
        .report_eviction_stage(eviction(
            "s-1",
            RESIDENT,
            EvictionStage::EnforcementScheduled,
            STATUTORY,
        ))
        .await
        .expect("accepted");

    let alert = next(&mut municipal)
        .await
        .expect("the municipality is told");
    assert_eq!(alert.flow_id, "eviction-enforcement-notice");
    assert_eq!(alert.purpose, PURPOSE);
    assert_eq!(alert.legal_basis, STATUTORY);
    assert_eq!(alert.consent_id, "", "no consent stands behind it");
    assert!(!alert.subject_pseudonym.is_empty());
    assert!(alert.case_ref.starts_with("case-"));
    let Some(proto::alert::Details::EvictionStageChange(details)) = &alert.details else {
        panic!("eviction_stage_change details expected: {alert:?}");
    };
    assert_eq!(
        details.eviction_stage(),
        EvictionStage::EnforcementScheduled
    );
    assert_eq!(details.stage_month.as_deref(), Some("2026-12"));
    assert!(
        nothing_within(&mut social_a, 500).await,
        "an organisation the flow does not name received the statutory notice"
    );
    let rows = gw
        .query_strings(
            "SELECT reason || '|' || policy_ids || '|' || recipients FROM audit \
             WHERE action = 'Landlord.ReportEvictionStage'",
        )
        .await;
    assert_eq!(
        rows,
        ["disclosed-statutory|[\"eviction-enforcement-notice-statutory\"]|[\"helsinki-social\"]"]
    );

    // An earlier stage on the statutory basis is refused whatever the resident's consent, so
    // the landlord is told which rule refused it.
    let err = landlord
        .report_eviction_stage(eviction("s-2", RESIDENT, EvictionStage::Warning, STATUTORY))
        .await
        .expect_err("a warning is not a statutory notice");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message()
            .contains("statutory-notice-only-at-enforcement"),
        "{}",
        err.message()
    );
    assert_eq!(error_reason(&err), "POLICY_DENIED");
    assert!(error_policy_ids(&err).contains("statutory-notice-only-at-enforcement"));
    assert!(nothing_within(&mut municipal, 400).await);
    let rows = gw
        .query_strings(
            "SELECT outcome || '|' || reason || '|' || policy_ids FROM audit \
             WHERE action = 'Landlord.ReportEvictionStage' ORDER BY seq",
        )
        .await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(
        rows[1].starts_with("deny|policy-denied|")
            && rows[1].contains("statutory-notice-only-at-enforcement"),
        "{rows:?}"
    );
    assert_eq!(
        gw.query_strings("SELECT alert_id FROM alerts").await.len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_that_depend_on_consent_get_the_same_receipt_and_the_ledger_names_the_policy() {
    let mut gw = TestGateway::start().await;
    let mut social = gw.social(SOCIAL_A).await;
    let mut alerts = alerts_of(&gw, SOCIAL_A).await;
    let mut landlord = gw.landlord(LANDLORD).await;

    // (a) Nobody has the resident's consent.
    let absent = landlord
        .report_rent_arrears(report("r-absent", RESIDENT))
        .await
        .expect("a receipt all the same")
        .into_inner();
    // A report that is delivered, for comparison.
    let enrolled = social
        .enrol_client(enrol(NEIGHBOUR))
        .await
        .expect("enrolled")
        .into_inner();
    let delivered = landlord
        .report_rent_arrears(report("r-valid", NEIGHBOUR))
        .await
        .expect("accepted")
        .into_inner();
    assert!(absent.received_at.is_some() && delivered.received_at.is_some());
    assert_eq!(absent.report_id.len(), delivered.report_id.len());
    assert_eq!(absent.idempotency_key, "r-absent");
    let only = next(&mut alerts).await.expect("the consented report");
    assert_eq!(only.consent_id, enrolled.consent_id);
    assert!(nothing_within(&mut alerts, 400).await);
    // Acknowledged, so that the withdrawal below does not purge it.
    social
        .ack_alerts(proto::AckAlertsRequest {
            up_to_sequence: only.sequence,
            sequences: vec![],
        })
        .await
        .expect("acked");

    // (b) The consent is withdrawn.
    social
        .withdraw_consent(proto::WithdrawConsentRequest {
            target: Some(proto::withdraw_consent_request::Target::ConsentId(
                enrolled.consent_id.clone(),
            )),
        })
        .await
        .expect("withdrawn");
    let withdrawn = landlord
        .report_rent_arrears(report("r-withdrawn", NEIGHBOUR))
        .await
        .expect("a receipt all the same")
        .into_inner();
    assert_eq!(withdrawn.report_id.len(), delivered.report_id.len());
    assert!(
        nothing_within(&mut alerts, 500).await,
        "a report after withdrawal crossed"
    );

    // (c) The consent expired (its end set in the past behind the gateway's back: the API
    // only takes consents valid in the future).
    let lodger = social
        .enrol_client(enrol(LODGER))
        .await
        .expect("enrolled")
        .into_inner();
    drop((social, alerts, landlord));
    gw.stop().await;
    gw.tamper(&format!(
        "UPDATE consents SET valid_until = valid_from + 1000 WHERE consent_id = '{}'",
        lodger.consent_id
    ))
    .await;
    gw.restart_after_stop().await;
    let mut alerts = alerts_of(&gw, SOCIAL_A).await;
    gw.landlord(LANDLORD)
        .await
        .report_rent_arrears(report("r-expired", LODGER))
        .await
        .expect("a receipt all the same");
    assert!(
        nothing_within(&mut alerts, 500).await,
        "a report under an expired consent crossed"
    );

    let rows = audit_rows(&gw, "Landlord.ReportRentArrears").await;
    assert_eq!(rows.len(), 4, "{rows:?}");
    let expect = [
        ("deny|not-disclosed|", "\"consent-absent\""),
        ("allow|disclosed|", "\"rent-arrears-on-consent\""),
        ("deny|not-disclosed|", "\"consent-withdrawn\""),
        ("deny|not-disclosed|", "\"consent-expired\""),
    ];
    for (row, (head, policy)) in rows.iter().zip(expect) {
        assert!(
            row.starts_with(head) && row.contains(policy),
            "{row} should be {head}…{policy}"
        );
    }
    assert_eq!(
        gw.query_strings("SELECT alert_id FROM alerts").await.len(),
        1,
        "only the consented report was stored for delivery"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_whatever_the_consent_are_told_to_the_sender_with_the_deciding_policy() {
    let gw = TestGateway::start().await;
    gw.social(SOCIAL_A)
        .await
        .enrol_client(enrol(RESIDENT))
        .await
        .expect("enrolled");
    let mut alerts = alerts_of(&gw, SOCIAL_A).await;
    let mut landlord = gw.landlord(LANDLORD).await;

    // A purpose no flow serves.
    let mut collect = report("k-debt", RESIDENT);
    collect.purpose = "debt-collection".into();
    let err = landlord
        .report_rent_arrears(collect)
        .await
        .expect_err("purpose limitation");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("purpose-limitation"),
        "{}",
        err.message()
    );
    assert_eq!(error_reason(&err), "POLICY_DENIED");
    assert!(error_policy_ids(&err).contains("purpose-limitation"));

    // A purpose not declared at all is bad input.
    let mut marketing = report("k-marketing", RESIDENT);
    marketing.purpose = "marketing".into();
    let err = landlord
        .report_rent_arrears(marketing)
        .await
        .expect_err("undeclared purpose");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(bad_fields(&err), ["purpose"]);

    // A declared basis on which no flow is declared for this message.
    let mut statutory = report("k-statutory", RESIDENT);
    statutory.legal_basis = STATUTORY.into();
    let err = landlord
        .report_rent_arrears(statutory)
        .await
        .expect_err("undeclared flow");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(error_reason(&err), "UNDECLARED_FLOW");

    // A social-services certificate sending on a landlord's flow.
    let mut impostor = LandlordClient::new(gw.channel(SOCIAL_A).await);
    let err = impostor
        .report_disturbance(disturbance("k-impostor", RESIDENT))
        .await
        .expect_err("wrong role");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("sender-role"), "{}", err.message());
    assert_eq!(error_reason(&err), "POLICY_DENIED");
    assert!(error_policy_ids(&err).contains("sender-role"));

    assert!(
        nothing_within(&mut alerts, 500).await,
        "a refused report crossed"
    );
    assert!(
        gw.query_strings("SELECT report_id FROM reports")
            .await
            .is_empty(),
        "a refused report was stored"
    );
    let rows = gw
        .query_strings(
            "SELECT actor_org || '|' || action || '|' || outcome || '|' || reason || '|' || policy_ids \
             FROM audit WHERE action LIKE 'Landlord.%' ORDER BY seq",
        )
        .await;
    assert_eq!(rows.len(), 4, "one audit row per refusal: {rows:?}");
    let expect = [
        "city-housing|Landlord.ReportRentArrears|deny|policy-denied|[\"purpose-limitation\"]",
        "city-housing|Landlord.ReportRentArrears|deny|invalid-argument|[]",
        "city-housing|Landlord.ReportRentArrears|deny|undeclared-flow|[\"flows.toml\"]",
        "social-a|Landlord.ReportDisturbance|deny|policy-denied|[\"sender-role\"]",
    ];
    assert_eq!(rows, expect);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_support_notice_reaches_the_landlord_under_its_own_tenancy_ref_and_never_the_pseudonym() {
    let gw = TestGateway::start().await;
    let mut social = gw.social(SOCIAL_A).await;
    let mut landlord = gw.landlord(LANDLORD).await;
    let enrolled = social
        .enrol_client(enrol(RESIDENT))
        .await
        .expect("enrolled")
        .into_inner();
    assert!(consent().share_outcome_with_landlord);
    let mut alerts = alerts_of(&gw, SOCIAL_A).await;
    landlord
        .report_rent_arrears(report("r-1", RESIDENT))
        .await
        .expect("accepted");
    let alert = next(&mut alerts).await.expect("alert");
    assert_eq!(alert.subject_pseudonym, enrolled.subject_pseudonym);

    let receipt = social
        .send_support_notice(support_notice("n-1", &alert.case_ref))
        .await
        .expect("notice accepted")
        .into_inner();
    assert!(!receipt.notice_id.is_empty() && receipt.received_at.is_some());
    assert_eq!(receipt.idempotency_key, "n-1");

    let mut notices = notices_of(&mut landlord).await;
    let notice = next(&mut notices).await.expect("notice delivered");
    assert_eq!(notice.flow_id, "support-notice");
    assert_eq!(notice.purpose, PURPOSE);
    assert_eq!(notice.legal_basis, CONSENT);
    assert_eq!(notice.tenancy_ref, "T-1/A", "the landlord's own reference");
    assert_eq!(notice.outcome(), SupportOutcome::PaymentCommitment);
    assert_eq!(notice.commitment_band(), ArrearsBand::ArrearsBand500To1500);
    assert_eq!(notice.commitment_month.as_deref(), Some("2027-01"));
    assert_eq!(
        notice.notice_month.as_deref().map(str::len),
        Some(7),
        "{notice:?}"
    );
    let shown = format!("{notice:?}");
    assert!(
        !shown.contains(&alert.subject_pseudonym) && !shown.contains(&alert.case_ref),
        "the notice names the client: {shown}"
    );
    assert!(!shown.contains("60000"), "the exact sum crossed: {shown}");
    // Nor is the pseudonym or social services' case stored with it.
    let stored = gw
        .query_strings(
            "SELECT subject_pseudonym || '|' || case_ref || '|' || payload FROM alerts \
             WHERE flow_id = 'support-notice'",
        )
        .await;
    assert_eq!(stored.len(), 1);
    assert!(stored[0].starts_with("|T-1/A|"), "{}", stored[0]);
    assert!(!stored[0].contains(&alert.case_ref) && !stored[0].contains("60000"));

    let acked = landlord
        .ack_notices(proto::AckNoticesRequest {
            up_to_sequence: notice.sequence,
            sequences: vec![],
        })
        .await
        .expect("acked")
        .into_inner();
    assert_eq!(acked.acknowledged, 1);
    drop(notices);
    let mut again = notices_of(&mut landlord).await;
    assert!(
        nothing_within(&mut again, 500).await,
        "an acknowledged notice came back"
    );

    // A retry gets the same receipt; the same key on another body is a conflict.
    let retry = social
        .send_support_notice(support_notice("n-1", &alert.case_ref))
        .await
        .expect("retry accepted")
        .into_inner();
    assert_eq!(retry.notice_id, receipt.notice_id);
    assert_eq!(retry, receipt);
    let mut other = support_notice("n-1", &alert.case_ref);
    other.outcome = SupportOutcome::SupportEngaged.into();
    other.commitment_cents = 0;
    other.commitment_month = String::new();
    let err = social
        .send_support_notice(other)
        .await
        .expect_err("conflict");
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(
        nothing_within(&mut again, 400).await,
        "a retry or a conflict crossed again"
    );
    assert_eq!(
        audit_rows(&gw, "SocialServices.SendSupportNotice").await,
        [
            "allow|disclosed|[\"support-notice-on-consent\"]",
            "deny|idempotency-conflict|[]"
        ]
    );
}

/// Enrols the resident with SOCIAL_A, has the landlord report rent arrears, and returns the
/// alert SOCIAL_A receives.
async fn alert_for_a_client(gw: &TestGateway) -> proto::Alert {
    gw.social(SOCIAL_A)
        .await
        .enrol_client(enrol(RESIDENT))
        .await
        .expect("enrolled");
    let mut alerts = alerts_of(gw, SOCIAL_A).await;
    gw.landlord(LANDLORD)
        .await
        .report_rent_arrears(report("r-1", RESIDENT))
        .await
        .expect("accepted");
    next(&mut alerts).await.expect("alert")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_support_notice_receipt_names_the_notice_the_landlord_receives() {
    let gw = TestGateway::start().await;
    let alert = alert_for_a_client(&gw).await;
    let receipt = gw
        .social(SOCIAL_A)
        .await
        .send_support_notice(support_notice("n-1", &alert.case_ref))
        .await
        .expect("notice accepted")
        .into_inner();
    let mut landlord = gw.landlord(LANDLORD).await;
    let notice = next(&mut notices_of(&mut landlord).await)
        .await
        .expect("notice delivered");
    // Both are documented as "silta's identifier for the notice".
    assert_eq!(
        receipt.notice_id, notice.notice_id,
        "SupportNoticeReceipt.notice_id and SupportNotice.notice_id name different things"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_lists_only_the_fields_a_support_notice_carried() {
    let gw = TestGateway::start().await;
    let alert = alert_for_a_client(&gw).await;
    let mut social = gw.social(SOCIAL_A).await;
    // No commitment: its two optional fields do not cross, so the ledger must not say they did.
    let engaged = proto::SendSupportNoticeRequest {
        outcome: SupportOutcome::SupportEngaged.into(),
        commitment_cents: 0,
        commitment_month: String::new(),
        ..support_notice("n-engaged", &alert.case_ref)
    };
    social.send_support_notice(engaged).await.expect("accepted");
    social
        .send_support_notice(support_notice("n-commitment", &alert.case_ref))
        .await
        .expect("accepted");
    let fields = gw
        .query_strings(
            "SELECT fields FROM audit WHERE action = 'SocialServices.SendSupportNotice' ORDER BY seq",
        )
        .await;
    assert_eq!(fields.len(), 2);
    assert!(!fields[0].contains("commitment"), "{}", fields[0]);
    assert!(fields[0].contains("outcome"), "{}", fields[0]);
    assert!(fields[1].contains("commitment"), "{}", fields[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_landlord_certificate_may_not_send_a_support_notice() {
    let gw = TestGateway::start().await;
    let alert = alert_for_a_client(&gw).await;
    // The landlord knows no case_ref; even with the real one, its role may not send.
    let mut impostor =
        proto::social_services_client::SocialServicesClient::new(gw.channel(LANDLORD).await);
    let err = impostor
        .send_support_notice(support_notice("n-landlord", &alert.case_ref))
        .await
        .expect_err("wrong role");
    assert_eq!(
        err.code(),
        Code::PermissionDenied,
        "SocialServices is for role social_services: {err:?}"
    );
    let mut landlord = gw.landlord(LANDLORD).await;
    assert!(nothing_within(&mut notices_of(&mut landlord).await, 400).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn support_notices_are_refused_on_unknown_cases_without_consent_to_tell_and_with_codes() {
    let gw = TestGateway::start().await;
    let mut social_a = gw.social(SOCIAL_A).await;
    let mut social_b = gw.social(SOCIAL_B).await;
    let mut landlord = gw.landlord(LANDLORD).await;
    let told_consent = social_a
        .enrol_client(enrol(RESIDENT))
        .await
        .expect("enrolled")
        .into_inner()
        .consent_id;
    let mut no_telling = enrol(NEIGHBOUR);
    if let Some(c) = no_telling.consent.as_mut() {
        c.share_outcome_with_landlord = false;
    }
    social_a
        .enrol_client(no_telling)
        .await
        .expect("enrolled without telling the landlord");
    let mut alerts = alerts_of(&gw, SOCIAL_A).await;
    landlord
        .report_rent_arrears(report("r-1", RESIDENT))
        .await
        .expect("accepted");
    let mut second = report("r-2", NEIGHBOUR);
    second.tenancy_ref = "T-2/B".into();
    landlord
        .report_rent_arrears(second)
        .await
        .expect("accepted");
    let told = next(&mut alerts).await.expect("alert");
    let untold = next(&mut alerts).await.expect("alert");
    assert_ne!(told.case_ref, untold.case_ref);

    // (a) A made-up case and another organisation's case look the same.
    let made_up = social_a
        .send_support_notice(support_notice(
            "n-made-up",
            "case-0123456789abcdef0123456789abcdef",
        ))
        .await
        .expect_err("no such case");
    assert_eq!(made_up.code(), Code::NotFound);
    let not_yours = social_b
        .send_support_notice(support_notice("n-not-yours", &told.case_ref))
        .await
        .expect_err("not B's case");
    assert_eq!(not_yours.code(), Code::NotFound);
    assert_eq!(made_up.message(), not_yours.message());
    assert_eq!(error_reason(&made_up), error_reason(&not_yours));

    // (b) The client did not agree that the landlord be told.
    let err = social_a
        .send_support_notice(support_notice("n-untold", &untold.case_ref))
        .await
        .expect_err("consent does not cover the landlord");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message()
            .contains("support-notice-needs-consent-to-tell-landlord"),
        "{}",
        err.message()
    );
    assert_eq!(error_reason(&err), "POLICY_DENIED");
    // The consent is valid: only the rule that decided is named, not an absent consent, and
    // the message says what to change.
    assert_eq!(
        error_policy_ids(&err),
        "support-notice-needs-consent-to-tell-landlord"
    );
    assert!(
        err.message()
            .contains("record their consent to share outcomes with the landlord")
            && err
                .message()
                .contains("consent.share_outcome_with_landlord = true")
            && !err.message().contains("no consent covers"),
        "{}",
        err.message()
    );

    // (c) An identity code inside the case reference is bad input, and is not echoed.
    let err = social_a
        .send_support_notice(support_notice("n-code", "case-150385-9345"))
        .await
        .expect_err("identity code in case_ref");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(bad_fields(&err), ["case_ref"]);
    let text = format!("{} {:?} {err:?}", err.message(), err.get_error_details());
    assert!(!text.contains("150385"), "the code was echoed: {text}");

    let mut notices = notices_of(&mut landlord).await;
    assert!(
        nothing_within(&mut notices, 500).await,
        "a refused notice reached the landlord"
    );
    let rows = audit_rows(&gw, "SocialServices.SendSupportNotice").await;
    assert_eq!(rows.len(), 4, "one audit row per refusal: {rows:?}");
    assert!(rows.iter().all(|r| r.starts_with("deny|")), "{rows:?}");
    assert!(rows[0].starts_with("deny|not-found|") && rows[1].starts_with("deny|not-found|"));
    assert!(
        rows[2].ends_with("|[\"support-notice-needs-consent-to-tell-landlord\"]"),
        "{rows:?}"
    );
    assert!(rows[3].starts_with("deny|invalid-argument|"), "{rows:?}");
    let stored = gw
        .query_strings("SELECT alert_id FROM alerts WHERE flow_id = 'support-notice'")
        .await;
    assert!(stored.is_empty(), "a refused notice was stored: {stored:?}");

    // (d) A consent that let the landlord be told, withdrawn: the withdrawal alone decided.
    social_a
        .withdraw_consent(proto::WithdrawConsentRequest {
            target: Some(proto::withdraw_consent_request::Target::ConsentId(
                told_consent,
            )),
        })
        .await
        .expect("withdrawn");
    let err = social_a
        .send_support_notice(support_notice("n-withdrawn", &told.case_ref))
        .await
        .expect_err("the consent was withdrawn");
    assert_eq!(error_policy_ids(&err), "consent-withdrawn", "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_field_the_flow_does_not_declare_never_reaches_the_recipient_or_the_store() {
    let root = tempfile::tempdir().expect("temp dir");
    let dir = TestGateway::copy_policies(root.path());
    let flows = dir.join("flows.toml");
    let text = std::fs::read_to_string(&flows).expect("read flows.toml");
    let line = "landlord_contact_office = \"pass\"\n";
    let first = text.find(line).expect("the office is declared");
    let rent_arrears = text
        .find("id = \"rent-arrears\"")
        .expect("rent-arrears flow");
    let next_flow = text
        .find("id = \"eviction-stage\"")
        .expect("eviction-stage flow");
    assert!(
        rent_arrears < first && first < next_flow,
        "the first declaration is the rent-arrears flow's"
    );
    std::fs::write(&flows, text.replacen(line, "", 1)).expect("write flows.toml");

    let gw = TestGateway::start_with(|c| c.policy.dir = Some(dir)).await;
    gw.social(SOCIAL_A)
        .await
        .enrol_client(enrol(RESIDENT))
        .await
        .expect("enrolled");
    let mut alerts = alerts_of(&gw, SOCIAL_A).await;
    let mut landlord = gw.landlord(LANDLORD).await;
    let mut filled = report("r-office", RESIDENT);
    filled.landlord_contact_office = "Vallila desk seven".into();
    landlord
        .report_rent_arrears(filled)
        .await
        .expect("accepted");

    let alert = next(&mut alerts).await.expect("alert delivered");
    assert_eq!(alert.flow_id, "rent-arrears");
    assert_eq!(
        alert.landlord_contact_office, None,
        "an undeclared field crossed"
    );
    let Some(proto::alert::Details::RentArrears(details)) = &alert.details else {
        panic!("rent-arrears details expected: {alert:?}");
    };
    assert_eq!(details.arrears_band(), ArrearsBand::ArrearsBand500To1500);
    assert_eq!(details.months_overdue, Some(2));
    assert!(!format!("{alert:?}").contains("Vallila"));
    let payloads = gw.query_strings("SELECT payload FROM alerts").await;
    assert_eq!(payloads.len(), 1);
    assert!(
        !payloads[0].contains("Vallila") && !payloads[0].contains("landlord_contact_office"),
        "{}",
        payloads[0]
    );
    let fields = gw
        .query_strings("SELECT fields FROM audit WHERE action = 'Landlord.ReportRentArrears'")
        .await;
    assert_eq!(fields.len(), 1);
    assert!(
        !fields[0].contains("landlord_contact_office"),
        "{}",
        fields[0]
    );

    // The other flows still declare it, and carry it.
    let mut stage = eviction("e-office", RESIDENT, EvictionStage::Warning, CONSENT);
    stage.landlord_contact_office = "Vallila desk seven".into();
    landlord
        .report_eviction_stage(stage)
        .await
        .expect("accepted");
    let alert = next(&mut alerts).await.expect("alert delivered");
    assert_eq!(alert.flow_id, "eviction-stage");
    assert_eq!(
        alert.landlord_contact_office.as_deref(),
        Some("Vallila desk seven")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_reload_takes_effect_at_once_and_a_broken_set_is_refused_while_the_old_one_serves()
{
    let root = tempfile::tempdir().expect("temp dir");
    let dir = TestGateway::copy_policies(root.path());
    let gw = TestGateway::start_with(|c| c.policy.dir = Some(dir.clone())).await;
    gw.social(SOCIAL_A)
        .await
        .enrol_client(enrol(RESIDENT))
        .await
        .expect("enrolled");
    let mut alerts = alerts_of(&gw, SOCIAL_A).await;
    let mut landlord = gw.landlord(LANDLORD).await;
    landlord
        .report_rent_arrears(report("r-before", RESIDENT))
        .await
        .expect("accepted");
    next(&mut alerts).await.expect("delivered before the pause");

    // Pause rent arrears.
    let principles = dir.join("principles.cedar");
    let original = std::fs::read_to_string(&principles).expect("read principles.cedar");
    let paused = format!(
        "{original}\n@id(\"pause-rent-arrears\")\n@reason(\"paused\")\n\
         forbid (principal, action == Action::\"rent-arrears\", resource);\n"
    );
    std::fs::write(&principles, &paused).expect("write principles.cedar");
    let digest = gw.reload_policies().await.expect("a valid set reloads");
    let err = landlord
        .report_rent_arrears(report("r-paused", RESIDENT))
        .await
        .expect_err("paused");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("pause-rent-arrears"),
        "{}",
        err.message()
    );
    assert!(err.message().contains("paused"), "{}", err.message());
    assert!(
        nothing_within(&mut alerts, 500).await,
        "a paused flow crossed"
    );
    let rows = audit_rows(&gw, "Landlord.ReportRentArrears").await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(
        rows[1].starts_with("deny|") && rows[1].contains("pause-rent-arrears"),
        "{rows:?}"
    );
    // Other flows are untouched by the pause.
    landlord
        .report_disturbance(disturbance("d-during", RESIDENT))
        .await
        .expect("accepted");
    let alert = next(&mut alerts).await.expect("delivered during the pause");
    assert_eq!(alert.flow_id, "disturbance-notice");

    // A broken file is refused, naming the file and the line; the paused set keeps serving.
    let broken = dir.join("broken.cedar");
    std::fs::write(
        &broken,
        "// A policy naming an attribute the schema does not have.\n\
         @id(\"broken\")\n\
         forbid (principal, action, resource)\n\
         when { resource.nonexistent == \"x\" };\n",
    )
    .expect("write broken.cedar");
    let errors = gw
        .reload_policies()
        .await
        .expect_err("a broken set is refused");
    let text = errors.to_string();
    assert!(text.contains("broken.cedar:"), "{text}");
    assert!(
        errors
            .0
            .iter()
            .any(|e| e.file.ends_with("broken.cedar") && e.line.is_some()),
        "{errors:?}"
    );
    let err = landlord
        .report_rent_arrears(report("r-still-paused", RESIDENT))
        .await
        .expect_err("still paused");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("pause-rent-arrears"),
        "{}",
        err.message()
    );
    assert!(nothing_within(&mut alerts, 400).await);
    let rows = audit_rows(&gw, "Landlord.ReportRentArrears").await;
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert!(rows[2].contains("pause-rent-arrears"), "{rows:?}");

    // Undo both: the flow crosses again.
    std::fs::remove_file(&broken).expect("remove broken.cedar");
    std::fs::write(&principles, &original).expect("restore principles.cedar");
    let restored = gw
        .reload_policies()
        .await
        .expect("the original set reloads");
    assert_ne!(restored, digest);
    landlord
        .report_rent_arrears(report("r-after", RESIDENT))
        .await
        .expect("accepted");
    let alert = next(&mut alerts).await.expect("delivered after the pause");
    assert_eq!(alert.flow_id, "rent-arrears");

    // Each reload is in the ledger, the refused one as a denial.
    let reloads = gw
        .query_strings(
            "SELECT outcome || '|' || reason FROM audit WHERE action = 'ReloadPolicies' ORDER BY seq",
        )
        .await;
    assert_eq!(
        reloads,
        [
            format!("allow|policy-set-{digest}"),
            "deny|policy-set-invalid-old-set-kept".to_owned(),
            format!("allow|policy-set-{restored}"),
        ]
    );
    let loaded = gw
        .query_strings("SELECT reason FROM audit WHERE action = 'LoadPolicies'")
        .await;
    assert_eq!(
        loaded,
        [format!("policy-set-{restored}")],
        "same files, same digest"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withdrawal_purges_the_support_notices_the_landlord_has_not_yet_received() {
    let gw = TestGateway::start().await;
    let alert = alert_for_a_client(&gw).await;
    let mut social = gw.social(SOCIAL_A).await;
    social
        .send_support_notice(support_notice("n-1", &alert.case_ref))
        .await
        .expect("notice accepted");
    let withdrawn = social
        .withdraw_consent(proto::WithdrawConsentRequest {
            target: Some(proto::withdraw_consent_request::Target::ConsentId(
                alert.consent_id.clone(),
            )),
        })
        .await
        .expect("withdrawn")
        .into_inner();
    assert!(withdrawn.purged_alerts >= 1, "{withdrawn:?}");
    let mut landlord = gw.landlord(LANDLORD).await;
    let mut notices = notices_of(&mut landlord).await;
    assert!(
        nothing_within(&mut notices, 400).await,
        "a notice sent under a withdrawn consent reached the landlord"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consent_opens_only_the_flows_its_receipt_lists() {
    let gw = TestGateway::start().await;
    let mut social = gw.social(SOCIAL_A).await;
    let enrolled = social
        .enrol_client(enrol(RESIDENT))
        .await
        .expect("enrolled")
        .into_inner();
    let listed = enrolled.receipt.expect("receipt").data_categories;
    assert!(listed.contains(&"eviction-stage".to_owned()), "{listed:?}");
    // As a consent given before the eviction-stage flow was declared: rent arrears only.
    gw.tamper("UPDATE consents SET flows = '[\"rent-arrears\"]'")
        .await;
    let mut alerts = alerts_of(&gw, SOCIAL_A).await;
    let mut landlord = gw.landlord(LANDLORD).await;
    landlord
        .report_eviction_stage(eviction("e-1", RESIDENT, EvictionStage::Warning, CONSENT))
        .await
        .expect("receipt all the same");
    assert!(
        nothing_within(&mut alerts, 400).await,
        "a flow the consent does not list crossed"
    );
    let rows = audit_rows(&gw, "Landlord.ReportEvictionStage").await;
    assert!(
        rows.iter().any(|r| r.contains("consent-absent")),
        "{rows:?}"
    );
    landlord
        .report_rent_arrears(report("r-1", RESIDENT))
        .await
        .expect("accepted");
    let alert = next(&mut alerts)
        .await
        .expect("the listed flow still crosses");
    assert_eq!(alert.flow_id, "rent-arrears");
}
