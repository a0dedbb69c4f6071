//! A social worker's own consents: list, read with the receipt, renew.

use std::time::Duration;

use silta_server::proto::{self, ConsentState};
use silta_tests::{LANDLORD, SOCIAL_A, SOCIAL_B, TestGateway, enrol, report, valid_hetus};
use tokio_stream::StreamExt;
use tonic::{Code, Streaming};
use tonic_types::StatusExt;

fn ts(t: time::OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.unix_timestamp(),
        nanos: 0,
    }
}

/// An enrolment of `hetu` whose consent ends `days` from now.
fn enrol_until(hetu: &str, days: i64) -> proto::EnrolClientRequest {
    let mut e = enrol(hetu);
    if let Some(c) = e.consent.as_mut() {
        c.valid_until = Some(ts(
            time::OffsetDateTime::now_utc() + time::Duration::days(days)
        ));
    }
    e
}

fn list(state: ConsentState) -> proto::ListConsentsRequest {
    proto::ListConsentsRequest {
        state: state.into(),
        ..Default::default()
    }
}

fn ids(r: &proto::ListConsentsResponse) -> Vec<&str> {
    r.consents.iter().map(|c| c.consent_id.as_str()).collect()
}

fn bad_fields(err: &tonic::Status) -> Vec<String> {
    err.get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

fn renewal(evidence: &str, days: i64) -> proto::ConsentRenewal {
    let now = time::OffsetDateTime::now_utc();
    proto::ConsentRenewal {
        given_at: Some(ts(now - time::Duration::minutes(5))),
        valid_until: Some(ts(now + time::Duration::days(days))),
        evidence_ref: evidence.into(),
        notice_version: "v2".into(),
    }
}

async fn next_alert(stream: &mut Streaming<proto::Alert>) -> proto::Alert {
    tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("an alert in time")
        .expect("stream open")
        .expect("alert, not an error")
}

async fn ledger(gw: &TestGateway, action: &str) -> Vec<String> {
    gw.query_strings(&format!(
        "SELECT outcome || ':' || reason || ':' || COALESCE(subject, '') FROM audit \
         WHERE action = '{action}' ORDER BY seq"
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consents_are_listed_by_state_and_pseudonym_in_pages_and_never_another_organisations() {
    let gw = TestGateway::start().await;
    let mut a = gw.social(SOCIAL_A).await;
    let mut b = gw.social(SOCIAL_B).await;
    let hetus = valid_hetus();
    let (long, ending, gone) = (&hetus[0], &hetus[1], &hetus[2]);
    let c_long = a.enrol_client(enrol_until(long, 365)).await.expect("enrol");
    let c_long = c_long.into_inner();
    let c_ending = a
        .enrol_client(enrol_until(ending, 10))
        .await
        .expect("enrol");
    let c_ending = c_ending.into_inner();
    let c_gone = a
        .enrol_client(enrol(gone))
        .await
        .expect("enrol")
        .into_inner();
    a.withdraw_consent(proto::WithdrawConsentRequest {
        target: Some(proto::withdraw_consent_request::Target::ConsentId(
            c_gone.consent_id.clone(),
        )),
    })
    .await
    .expect("withdrawn");
    // The same person, enrolled by another organisation.
    let c_b = b
        .enrol_client(enrol(long))
        .await
        .expect("enrol")
        .into_inner();

    let all = a
        .list_consents(list(ConsentState::Unspecified))
        .await
        .expect("listed")
        .into_inner();
    assert_eq!(
        ids(&all),
        [
            c_long.consent_id.as_str(),
            c_ending.consent_id.as_str(),
            c_gone.consent_id.as_str()
        ]
    );
    assert!(all.next_page_token.is_empty());
    let first = &all.consents[0];
    assert_eq!(first.state(), ConsentState::Active);
    assert_eq!(first.subject_pseudonym, c_long.subject_pseudonym);
    assert_eq!(first.purpose, "eviction-prevention");
    assert!(first.share_outcome_with_landlord);
    assert!(first.flows.contains(&"rent-arrears".to_owned()));
    assert!(first.flows.contains(&"support-notice".to_owned()));
    let receipt = c_long.receipt.as_ref().expect("receipt");
    assert_eq!(first.valid_from, receipt.valid_from);
    assert_eq!(first.valid_until, receipt.valid_until);
    assert!(first.recorded_at.is_some());
    assert!(first.withdrawn_at.is_none());
    assert!(first.renews_consent_id.is_empty());
    assert_eq!(first.evidence_ref, "DOC-1");
    assert_eq!(all.consents[1].state(), ConsentState::Expiring);
    let withdrawn = &all.consents[2];
    assert_eq!(withdrawn.state(), ConsentState::Withdrawn);
    assert!(withdrawn.withdrawn_at.is_some());

    // Another organisation sees only its own, and never finds A's by pseudonym.
    let of_b = b
        .list_consents(list(ConsentState::Unspecified))
        .await
        .expect("listed")
        .into_inner();
    assert_eq!(ids(&of_b), [c_b.consent_id.as_str()]);
    assert_ne!(c_b.subject_pseudonym, c_long.subject_pseudonym);
    let by_a_pseudonym = b
        .list_consents(proto::ListConsentsRequest {
            subject_pseudonym: c_long.subject_pseudonym.clone(),
            ..Default::default()
        })
        .await
        .expect("listed")
        .into_inner();
    assert!(by_a_pseudonym.consents.is_empty());

    // Each state filter matches the item's state exactly.
    let by_state = |state| {
        let mut a = a.clone();
        async move { a.list_consents(list(state)).await.expect("listed") }
    };
    let active = by_state(ConsentState::Active).await.into_inner();
    assert_eq!(ids(&active), [c_long.consent_id.as_str()]);
    let expiring = by_state(ConsentState::Expiring).await.into_inner();
    assert_eq!(ids(&expiring), [c_ending.consent_id.as_str()]);
    let gone_list = by_state(ConsentState::Withdrawn).await.into_inner();
    assert_eq!(ids(&gone_list), [c_gone.consent_id.as_str()]);
    assert!(
        by_state(ConsentState::Expired)
            .await
            .into_inner()
            .consents
            .is_empty()
    );
    // A narrower window: ten days away is not expiring within five.
    let narrow = a
        .list_consents(proto::ListConsentsRequest {
            state: ConsentState::Active.into(),
            expiring_within_days: 5,
            ..Default::default()
        })
        .await
        .expect("listed")
        .into_inner();
    assert_eq!(
        ids(&narrow),
        [c_long.consent_id.as_str(), c_ending.consent_id.as_str()]
    );

    // By the pseudonym the alerts carry.
    let mine = a
        .list_consents(proto::ListConsentsRequest {
            subject_pseudonym: c_ending.subject_pseudonym.clone(),
            ..Default::default()
        })
        .await
        .expect("listed")
        .into_inner();
    assert_eq!(ids(&mine), [c_ending.consent_id.as_str()]);

    // Pages of two: the token leads to the rest, and the last page has none.
    let page1 = a
        .list_consents(proto::ListConsentsRequest {
            page_size: 2,
            ..Default::default()
        })
        .await
        .expect("page 1")
        .into_inner();
    assert_eq!(ids(&page1), ids(&all)[..2]);
    assert!(!page1.next_page_token.is_empty());
    let page2 = a
        .list_consents(proto::ListConsentsRequest {
            page_size: 2,
            page_token: page1.next_page_token.clone(),
            ..Default::default()
        })
        .await
        .expect("page 2")
        .into_inner();
    assert_eq!(ids(&page2), ids(&all)[2..]);
    assert!(page2.next_page_token.is_empty());

    // Every list is in the ledger; one naming a client names them there.
    let rows = ledger(&gw, "SocialServices.ListConsents").await;
    assert_eq!(rows.len(), 11, "{rows:?}");
    assert!(rows.iter().all(|r| r.starts_with("allow:consents-listed:")));
    assert_eq!(
        rows.iter().filter(|r| r.ends_with(':')).count(),
        10,
        "only the call that named a client found one: {rows:?}"
    );

    // Only the social-services role may list.
    let mut landlord_as_social =
        proto::social_services_client::SocialServicesClient::new(gw.channel(LANDLORD).await);
    let err = landlord_as_social
        .list_consents(list(ConsentState::Unspecified))
        .await
        .expect_err("a landlord may not list consents");
    assert_eq!(err.code(), Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_list_inputs_are_invalid_argument_naming_the_field_and_never_echo_a_code() {
    let gw = TestGateway::start().await;
    let mut a = gw.social(SOCIAL_A).await;
    let hetu = valid_hetus().remove(0);
    let cases = [
        (
            "state",
            proto::ListConsentsRequest {
                state: 99,
                ..Default::default()
            },
        ),
        (
            "page_token",
            proto::ListConsentsRequest {
                page_token: "not-a-token".into(),
                ..Default::default()
            },
        ),
        (
            "page_size",
            proto::ListConsentsRequest {
                page_size: 501,
                ..Default::default()
            },
        ),
        (
            "page_size",
            proto::ListConsentsRequest {
                page_size: -1,
                ..Default::default()
            },
        ),
        (
            "expiring_within_days",
            proto::ListConsentsRequest {
                expiring_within_days: 367,
                ..Default::default()
            },
        ),
        (
            "subject_pseudonym",
            proto::ListConsentsRequest {
                subject_pseudonym: hetu.clone(),
                ..Default::default()
            },
        ),
    ];
    for (field, request) in cases {
        let err = a
            .list_consents(request)
            .await
            .expect_err("a bad field is refused");
        assert_eq!(err.code(), Code::InvalidArgument, "{field}");
        assert_eq!(bad_fields(&err), [field]);
        assert!(!err.message().contains(&hetu), "the code came back");
        assert!(!format!("{:?}", err.details()).contains(&hetu));
    }
    // All at once, too.
    let err = a
        .list_consents(proto::ListConsentsRequest {
            state: -3,
            page_size: 100_000,
            page_token: "%%%".into(),
            ..Default::default()
        })
        .await
        .expect_err("refused");
    assert_eq!(bad_fields(&err), ["state", "page_size", "page_token"]);
    let refusals = ledger(&gw, "SocialServices.ListConsents").await;
    assert_eq!(refusals.len(), 7);
    assert!(refusals.iter().all(|r| r == "deny:invalid-argument:"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consent_is_read_back_with_its_receipt_and_foreign_or_unknown_ids_are_not_found() {
    let gw = TestGateway::start().await;
    let mut a = gw.social(SOCIAL_A).await;
    let mut b = gw.social(SOCIAL_B).await;
    let hetu = valid_hetus().remove(0);
    let enrolled = a
        .enrol_client(enrol(&hetu))
        .await
        .expect("enrol")
        .into_inner();

    let got = a
        .get_consent(proto::GetConsentRequest {
            consent_id: enrolled.consent_id.clone(),
        })
        .await
        .expect("read")
        .into_inner();
    // The very receipt EnrolClient returned: same signed bytes, same signature.
    assert_eq!(got.receipt, enrolled.receipt);
    let consent = got.consent.expect("consent");
    assert_eq!(consent.consent_id, enrolled.consent_id);
    assert_eq!(consent.subject_pseudonym, enrolled.subject_pseudonym);
    assert_eq!(consent.state(), ConsentState::Active);
    let reads = ledger(&gw, "SocialServices.GetConsent").await;
    assert_eq!(reads.len(), 1);
    assert!(reads[0].starts_with("allow:consent-read:ps"), "{reads:?}");

    // Another organisation's id and a made-up one: the same NOT_FOUND.
    let foreign = b
        .get_consent(proto::GetConsentRequest {
            consent_id: enrolled.consent_id.clone(),
        })
        .await
        .expect_err("not B's");
    let unknown = a
        .get_consent(proto::GetConsentRequest {
            consent_id: "01890a5d-ac96-774b-bcce-b302099a8057".into(),
        })
        .await
        .expect_err("nobody's");
    assert_eq!(foreign.code(), Code::NotFound);
    assert_eq!(unknown.code(), Code::NotFound);
    assert_eq!(foreign.message(), unknown.message());
    let malformed = a
        .get_consent(proto::GetConsentRequest {
            consent_id: hetu.clone(),
        })
        .await
        .expect_err("not an id");
    assert_eq!(malformed.code(), Code::InvalidArgument);
    assert_eq!(bad_fields(&malformed), ["consent_id"]);
    assert!(!malformed.message().contains(&hetu));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_supersedes_the_consent_and_keeps_the_delivery_history() {
    let gw = TestGateway::start().await;
    let mut a = gw.social(SOCIAL_A).await;
    let mut b = gw.social(SOCIAL_B).await;
    let mut landlord = gw.landlord(LANDLORD).await;
    let hetu = valid_hetus().remove(0);
    let old = a
        .enrol_client(enrol_until(&hetu, 20))
        .await
        .expect("enrol")
        .into_inner();
    landlord
        .report_rent_arrears(report("r-1", &hetu))
        .await
        .expect("accepted");
    landlord
        .report_rent_arrears(report("r-2", &hetu))
        .await
        .expect("accepted");
    let mut alerts = a
        .subscribe_alerts(proto::SubscribeAlertsRequest { after_sequence: 0 })
        .await
        .expect("subscribed")
        .into_inner();
    let first = next_alert(&mut alerts).await;
    a.ack_alerts(proto::AckAlertsRequest {
        up_to_sequence: first.sequence,
        sequences: vec![],
    })
    .await
    .expect("acked");
    drop(alerts);

    // Bad renewals name their fields; another organisation cannot renew A's consent.
    let err = a
        .renew_consent(proto::RenewConsentRequest {
            consent_id: old.consent_id.clone(),
            renewal: Some(proto::ConsentRenewal {
                evidence_ref: String::new(),
                ..renewal("x", -1)
            }),
        })
        .await
        .expect_err("bad renewal");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        bad_fields(&err),
        ["renewal.valid_until", "renewal.evidence_ref"]
    );
    let err = a
        .renew_consent(proto::RenewConsentRequest {
            consent_id: old.consent_id.clone(),
            renewal: None,
        })
        .await
        .expect_err("no renewal");
    assert_eq!(bad_fields(&err), ["renewal"]);
    // Every bad field at once, the id included, before any lookup.
    let err = a
        .renew_consent(proto::RenewConsentRequest {
            consent_id: hetu.clone(),
            renewal: Some(proto::ConsentRenewal {
                notice_version: "\u{200b}".into(),
                ..renewal("x", 365)
            }),
        })
        .await
        .expect_err("bad id and notice");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(bad_fields(&err), ["consent_id", "renewal.notice_version"]);
    assert!(!err.message().contains(&hetu), "the code came back");
    let err = b
        .renew_consent(proto::RenewConsentRequest {
            consent_id: old.consent_id.clone(),
            renewal: Some(renewal("DOC-2", 365)),
        })
        .await
        .expect_err("not B's");
    assert_eq!(err.code(), Code::NotFound);

    let renewed = a
        .renew_consent(proto::RenewConsentRequest {
            consent_id: old.consent_id.clone(),
            renewal: Some(renewal("DOC-2", 365)),
        })
        .await
        .expect("renewed")
        .into_inner();
    assert_ne!(renewed.consent_id, old.consent_id);
    assert_eq!(renewed.renewed_consent_id, old.consent_id);
    assert_eq!(renewed.subject_pseudonym, old.subject_pseudonym);
    let receipt = renewed.receipt.clone().expect("receipt");
    assert_eq!(receipt.receipt_id, renewed.consent_id);
    assert!(receipt.share_outcome_with_landlord, "terms kept");
    let payload = String::from_utf8(receipt.payload.clone()).expect("JSON");
    assert!(payload.contains("\"evidence_ref\":\"DOC-2\""), "{payload}");

    // After the renewal: the alert still waiting stays, under the consent it crossed on; the
    // next one crosses under the new consent, continuing the same sequence.
    landlord
        .report_rent_arrears(report("r-3", &hetu))
        .await
        .expect("accepted");
    let mut alerts = a
        .subscribe_alerts(proto::SubscribeAlertsRequest { after_sequence: 0 })
        .await
        .expect("subscribed")
        .into_inner();
    let pending = next_alert(&mut alerts).await;
    let after = next_alert(&mut alerts).await;
    assert_eq!(pending.sequence, first.sequence + 1);
    assert_eq!(pending.consent_id, old.consent_id);
    assert_eq!(after.sequence, pending.sequence + 1);
    assert_eq!(after.consent_id, renewed.consent_id);
    assert_eq!(after.subject_pseudonym, old.subject_pseudonym);
    assert_eq!(after.case_ref, pending.case_ref, "the case continues");

    // The list shows both, linked; the old one is superseded and can be renewed no more.
    let both = a
        .list_consents(proto::ListConsentsRequest {
            subject_pseudonym: old.subject_pseudonym.clone(),
            ..Default::default()
        })
        .await
        .expect("listed")
        .into_inner();
    assert_eq!(
        ids(&both),
        [old.consent_id.as_str(), renewed.consent_id.as_str()]
    );
    assert_eq!(both.consents[0].state(), ConsentState::Superseded);
    assert_eq!(both.consents[1].state(), ConsentState::Active);
    assert_eq!(both.consents[1].renews_consent_id, old.consent_id);
    assert_eq!(both.consents[1].evidence_ref, "DOC-2");
    let again = a
        .renew_consent(proto::RenewConsentRequest {
            consent_id: old.consent_id.clone(),
            renewal: Some(renewal("DOC-3", 365)),
        })
        .await
        .expect_err("superseded");
    assert_eq!(again.code(), Code::FailedPrecondition);
    // GetConsent issues the renewal's receipt again.
    let got = a
        .get_consent(proto::GetConsentRequest {
            consent_id: renewed.consent_id.clone(),
        })
        .await
        .expect("read")
        .into_inner();
    assert_eq!(got.receipt, renewed.receipt);

    // A withdrawal reaches every consent of the client: what waited under the old one too.
    let withdrawn = a
        .withdraw_consent(proto::WithdrawConsentRequest {
            target: Some(proto::withdraw_consent_request::Target::ConsentId(
                renewed.consent_id.clone(),
            )),
        })
        .await
        .expect("withdrawn")
        .into_inner();
    assert_eq!(withdrawn.purged_alerts, 2);
    let err = a
        .renew_consent(proto::RenewConsentRequest {
            consent_id: renewed.consent_id.clone(),
            renewal: Some(renewal("DOC-4", 365)),
        })
        .await
        .expect_err("withdrawn");
    assert_eq!(err.code(), Code::FailedPrecondition);

    // The ledger: one renewal, naming the client as the enrolment did.
    let enrolled = ledger(&gw, "SocialServices.EnrolClient").await;
    let renewals = ledger(&gw, "SocialServices.RenewConsent").await;
    let subject = enrolled[0].rsplit(':').next().expect("subject").to_owned();
    assert!(subject.starts_with("ps"));
    assert_eq!(
        renewals
            .iter()
            .filter(|r| r.starts_with("allow:"))
            .collect::<Vec<_>>(),
        [&format!("allow:consent-renewed:{subject}")]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_the_consent_rpcs() {
    use prost::Message as _;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let gw = TestGateway::start().await;
    let ask = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(
            "silta.v1.SocialServices".into(),
        )),
    };
    let answer = ServerReflectionClient::new(gw.channel(SOCIAL_A).await)
        .server_reflection_info(tokio_stream::iter(vec![ask]))
        .await
        .expect("reflection answers")
        .into_inner()
        .message()
        .await
        .expect("an answer")
        .expect("one");
    let Some(MessageResponse::FileDescriptorResponse(files)) = answer.message_response else {
        panic!("a file descriptor answer expected");
    };
    let methods: Vec<String> = files
        .file_descriptor_proto
        .iter()
        .map(|bytes| prost_types::FileDescriptorProto::decode(bytes.as_slice()).expect("decodes"))
        .flat_map(|f| f.service)
        .filter(|s| s.name() == "SocialServices")
        .flat_map(|s| s.method)
        .map(|m| m.name().to_owned())
        .collect();
    for rpc in ["ListConsents", "GetConsent", "RenewConsent"] {
        assert!(methods.iter().any(|m| m == rpc), "{rpc} in {methods:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_serves_the_error_detail_types_so_tools_can_print_them() {
    use prost::Message as _;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let gw = TestGateway::start().await;
    for symbol in [
        "google.rpc.BadRequest",
        "google.rpc.ErrorInfo",
        "google.rpc.QuotaFailure",
        "google.rpc.Status",
    ] {
        let ask = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(symbol.into())),
        };
        let answer = ServerReflectionClient::new(gw.channel(LANDLORD).await)
            .server_reflection_info(tokio_stream::iter(vec![ask]))
            .await
            .expect("reflection answers")
            .into_inner()
            .message()
            .await
            .expect("an answer")
            .expect("one");
        let Some(MessageResponse::FileDescriptorResponse(files)) = answer.message_response else {
            panic!("{symbol}: a file descriptor answer expected, got {answer:?}");
        };
        let name = symbol.rsplit('.').next().expect("a name");
        let found = files
            .file_descriptor_proto
            .iter()
            .map(|b| prost_types::FileDescriptorProto::decode(b.as_slice()).expect("decodes"))
            .any(|f| {
                f.package() == "google.rpc" && f.message_type.iter().any(|m| m.name() == name)
            });
        assert!(found, "{symbol}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_from_several_landlords_name_the_organisation_that_reported() {
    let gw = TestGateway::start().await;
    let mut a = gw.social(SOCIAL_A).await;
    let hetu = valid_hetus().remove(0);
    a.enrol_client(enrol(&hetu)).await.expect("enrol");
    gw.landlord(LANDLORD)
        .await
        .report_rent_arrears(report("r-1", &hetu))
        .await
        .expect("accepted");
    gw.landlord(silta_tests::LANDLORD_B)
        .await
        .report_eviction_stage(silta_tests::eviction(
            "e-1",
            &hetu,
            proto::EvictionStage::Warning,
            silta_tests::CONSENT,
        ))
        .await
        .expect("accepted");
    let mut alerts = a
        .subscribe_alerts(proto::SubscribeAlertsRequest { after_sequence: 0 })
        .await
        .expect("subscribed")
        .into_inner();
    let first = next_alert(&mut alerts).await;
    let second = next_alert(&mut alerts).await;
    // From the certificate of the landlord that sent it, not from any field it filled in.
    assert_eq!(first.reporting_organisation.as_deref(), Some(LANDLORD));
    assert_eq!(
        second.reporting_organisation.as_deref(),
        Some(silta_tests::LANDLORD_B)
    );
    assert_ne!(first.case_ref, second.case_ref, "one case per landlord");
}
