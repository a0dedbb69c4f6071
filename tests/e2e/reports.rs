//! Reports: idempotency and bad input.

use silta_server::proto::{self, EvictionStage};
use silta_tests::{LANDLORD, SOCIAL_A, TestGateway, enrol, invalid_hetus, report};
use tonic::Code;
use tonic_types::StatusExt;

const RESIDENT: &str = "150385-9345";

fn bad_fields(status: &tonic::Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .expect("BadRequest details")
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_resend_gives_the_same_receipt_and_one_alert_and_a_conflict_is_refused() {
    let gw = TestGateway::start().await;
    gw.social(SOCIAL_A)
        .await
        .enrol_client(enrol(RESIDENT))
        .await
        .expect("enrolled");
    let mut landlord = gw.landlord(LANDLORD).await;
    let first = landlord
        .report_rent_arrears(report("same-key", RESIDENT))
        .await
        .expect("ok")
        .into_inner();
    let second = landlord
        .report_rent_arrears(report("same-key", RESIDENT))
        .await
        .expect("ok")
        .into_inner();
    assert_eq!(first, second);
    let alerts = gw.query_strings("SELECT alert_id FROM alerts").await;
    assert_eq!(alerts.len(), 1, "a retry must not duplicate the alert");

    let mut changed = report("same-key", RESIDENT);
    changed.arrears_cents += 1;
    let err = landlord
        .report_rent_arrears(changed)
        .await
        .expect_err("conflict");
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(
        err.message().contains("idempotency key"),
        "{}",
        err.message()
    );
    assert_eq!(
        gw.query_strings("SELECT alert_id FROM alerts").await.len(),
        1
    );
    // The free-text note is not stored, but it is part of the body.
    let mut other_note = report("same-key", RESIDENT);
    other_note.free_text_note = "another note".into();
    let err = landlord
        .report_rent_arrears(other_note)
        .await
        .expect_err("conflict");
    assert_eq!(err.code(), Code::AlreadyExists);
    let denied = gw
        .query_strings("SELECT reason FROM audit WHERE outcome = 'deny'")
        .await;
    assert_eq!(denied, ["idempotency-conflict", "idempotency-conflict"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_invalid_fixture_code_is_invalid_argument_naming_hetu_without_echoing_it() {
    let gw = TestGateway::start().await;
    let mut landlord = gw.landlord(LANDLORD).await;
    let mut social = gw.social(SOCIAL_A).await;
    for (code, reason) in invalid_hetus() {
        let err = landlord
            .report_rent_arrears(report(&format!("k-{}", code.len()), &code))
            .await
            .expect_err(&reason);
        assert_eq!(err.code(), Code::InvalidArgument, "{reason}");
        assert_eq!(bad_fields(&err), ["hetu"], "{reason}");
        let text = format!("{} {:?}", err.message(), err.details());
        if code.trim().len() >= 6 {
            assert!(
                !text.contains(code.trim()),
                "{reason}: the error echoed the input"
            );
        }
        let err = social.enrol_client(enrol(&code)).await.expect_err(&reason);
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(bad_fields(&err), ["hetu"], "{reason}");
    }
    // Nothing but the audited denials was stored, and the gateway still serves.
    assert!(
        gw.query_strings("SELECT report_id FROM reports")
            .await
            .is_empty()
    );
    assert!(
        gw.query_strings("SELECT consent_id FROM consents")
            .await
            .is_empty()
    );
    let denials = gw
        .query_strings("SELECT reason FROM audit WHERE actor_role != 'gateway'")
        .await;
    assert_eq!(denials.len(), 2 * invalid_hetus().len());
    assert!(denials.iter().all(|r| r == "invalid-argument"));
    landlord
        .report_rent_arrears(report("still-serving", RESIDENT))
        .await
        .expect("still serving");
}

/// Sends `messages` to `path` as `org` in one call, each encoded as it is and length-prefixed
/// in the one request body: bodies a generated client cannot send (another message type, more
/// than one message).
async fn raw_call<M: prost::Message + 'static>(
    gw: &TestGateway,
    org: &str,
    path: &'static str,
    messages: Vec<M>,
) -> Result<proto::ReportReceipt, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(gw.channel(org).await);
    grpc.ready().await.expect("ready");
    grpc.client_streaming::<_, _, proto::ReportReceipt, _>(
        tonic::Request::new(tokio_stream::iter(messages)),
        tonic::codegen::http::uri::PathAndQuery::from_static(path),
        tonic_prost::ProstCodec::default(),
    )
    .await
    .map(tonic::Response::into_inner)
}

/// Sends `request` to `path` as `org` with [`raw_call`] and returns the refusal.
async fn refusal_of(
    gw: &TestGateway,
    org: &str,
    path: &'static str,
    request: impl prost::Message + 'static,
) -> tonic::Status {
    raw_call(gw, org, path, vec![request])
        .await
        .expect_err("refused")
}

/// `ReportRentArrearsRequest` as a client with a broken encoder would send it: `hetu` (tag 2)
/// as bytes that are not UTF-8.
#[derive(Clone, PartialEq, prost::Message)]
struct NotUtf8 {
    #[prost(string, tag = "1")]
    idempotency_key: String,
    #[prost(bytes = "vec", tag = "2")]
    hetu: Vec<u8>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_is_not_valid_protobuf_is_invalid_argument_naming_the_field() {
    let gw = TestGateway::start().await;
    let request = NotUtf8 {
        idempotency_key: "k-1".into(),
        hetu: b"150385-9345\xff".to_vec(),
    };
    let err = refusal_of(
        &gw,
        LANDLORD,
        "/silta.v1.Landlord/ReportRentArrears",
        request,
    )
    .await;
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(bad_fields(&err), ["hetu"]);
    assert!(
        !format!("{err:?}").contains("150385"),
        "the input came back"
    );
    gw.landlord(LANDLORD)
        .await
        .report_rent_arrears(report("still-serving", RESIDENT))
        .await
        .expect("still serving");
}

/// `EnrolClientRequest` with `consent.evidence_ref` (tag 2, then tag 4) as bytes.
#[derive(Clone, PartialEq, prost::Message)]
struct NestedNotUtf8 {
    #[prost(message, optional, tag = "2")]
    consent: Option<NotUtf8Consent>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct NotUtf8Consent {
    #[prost(bytes = "vec", tag = "4")]
    evidence_ref: Vec<u8>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nested_field_that_does_not_decode_is_named_by_its_path_with_a_request_id() {
    let gw = TestGateway::start().await;
    let request = NestedNotUtf8 {
        consent: Some(NotUtf8Consent {
            evidence_ref: b"SOS-\xc3\x28".to_vec(),
        }),
    };
    let err = refusal_of(
        &gw,
        SOCIAL_A,
        "/silta.v1.SocialServices/EnrolClient",
        request,
    )
    .await;
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(bad_fields(&err), ["consent.evidence_ref"]);
    assert!(err.metadata().get("x-request-id").is_some(), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rpc_the_gateway_does_not_serve_is_unimplemented_saying_what_it_serves() {
    let gw = TestGateway::start().await;
    // A method a served service lacks, and a service not served at all.
    for path in ["/silta.v1.Landlord/ReportRent", "/acme.v1.Nope/Report"] {
        let request = proto::ReportRentArrearsRequest::default();
        let err = refusal_of(&gw, LANDLORD, path, request).await;
        assert_eq!(err.code(), Code::Unimplemented, "{path}: {err:?}");
        assert!(
            err.message().contains("silta.v1.Landlord") && err.message().contains("silta.v1.Audit"),
            "{path}: {}",
            err.message()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_field_is_named_at_once() {
    let gw = TestGateway::start().await;
    let mut landlord = gw.landlord(LANDLORD).await;
    let bad = proto::ReportRentArrearsRequest {
        idempotency_key: "bad key with spaces".into(),
        hetu: RESIDENT.into(),
        tenancy_ref: String::new(),
        arrears_cents: -5,
        months_overdue: 500,
        eviction_stage: 99,
        landlord_contact_office: format!("desk of {RESIDENT}"),
        free_text_note: "x".repeat(2001),
        purpose: String::new(),
        legal_basis: "gdpr-6-1-a-consent".into(),
    };
    let err = landlord
        .report_rent_arrears(bad)
        .await
        .expect_err("invalid");
    let mut fields = bad_fields(&err);
    fields.sort();
    assert_eq!(
        fields,
        [
            "arrears_cents",
            "eviction_stage",
            "free_text_note",
            "idempotency_key",
            "landlord_contact_office",
            "months_overdue",
            "purpose",
            "tenancy_ref"
        ]
    );
    assert!(
        !format!("{err:?}").contains("150385"),
        "an identity code came back in the error"
    );

    let mut social = gw.social(SOCIAL_A).await;
    let err = social
        .enrol_client(proto::EnrolClientRequest {
            hetu: RESIDENT.into(),
            consent: None,
        })
        .await
        .expect_err("no consent");
    assert_eq!(bad_fields(&err), ["consent"]);
    let mut wrong = enrol(RESIDENT);
    if let Some(c) = wrong.consent.as_mut() {
        c.purpose = "marketing".into();
        c.valid_until = Some(prost_types::Timestamp {
            seconds: 0,
            nanos: 0,
        });
    }
    let err = social.enrol_client(wrong).await.expect_err("bad consent");
    assert_eq!(bad_fields(&err), ["consent.purpose", "consent.valid_until"]);

    let err = social
        .ack_alerts(proto::AckAlertsRequest::default())
        .await
        .expect_err("empty ack");
    assert_eq!(bad_fields(&err), ["up_to_sequence"]);
    let err = social
        .withdraw_consent(proto::WithdrawConsentRequest { target: None })
        .await
        .expect_err("no target");
    assert_eq!(bad_fields(&err), ["target"]);
    let err = social
        .withdraw_consent(proto::WithdrawConsentRequest {
            target: Some(proto::withdraw_consent_request::Target::ConsentId(
                "0190f5a2-0000-7000-8000-000000000000".into(),
            )),
        })
        .await
        .expect_err("unknown consent");
    assert_eq!(err.code(), Code::NotFound);
    // Identity codes hidden where they would be stored or cross: in a key, mistyped, en-dashed.
    for (field, change) in [
        ("idempotency_key", "key-150385-9345"),
        ("landlord_contact_office", "desk 150385-9346"),
        ("tenancy_ref", "150385\u{2013}9345"),
    ] {
        let mut smuggled = report("smuggle", RESIDENT);
        match field {
            "idempotency_key" => smuggled.idempotency_key = change.into(),
            "landlord_contact_office" => smuggled.landlord_contact_office = change.into(),
            _ => smuggled.tenancy_ref = change.into(),
        }
        let err = landlord
            .report_rent_arrears(smuggled)
            .await
            .expect_err(field);
        assert_eq!(bad_fields(&err), [field]);
        assert!(!format!("{err:?}").contains("150385"), "{field}: echoed");
    }
    let good = report("fine", RESIDENT);
    assert_eq!(good.eviction_stage(), EvictionStage::Warning);
    landlord
        .report_rent_arrears(good)
        .await
        .expect("gateway still serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_carrying_two_request_messages_is_refused_and_neither_is_processed() {
    let gw = TestGateway::start().await;
    let path = "/silta.v1.Landlord/ReportRentArrears";
    let two = vec![report("first", RESIDENT), report("second", RESIDENT)];
    let err = raw_call(&gw, LANDLORD, path, two)
        .await
        .expect_err("a second request message is refused");
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
    assert!(
        err.message().contains("exactly one request message"),
        "{}",
        err.message()
    );
    assert_eq!(
        err.get_error_details()
            .error_info()
            .map(|i| i.reason.as_str()),
        Some("CARDINALITY_VIOLATION")
    );
    assert!(err.metadata().get("x-request-id").is_some(), "{err:?}");
    assert!(
        !format!("{err:?}").contains("150385"),
        "the input came back"
    );
    // A server-streaming method takes one request too.
    let subscribe = vec![proto::SubscribeAlertsRequest::default(); 2];
    let err = raw_call(
        &gw,
        SOCIAL_A,
        "/silta.v1.SocialServices/SubscribeAlerts",
        subscribe,
    )
    .await
    .expect_err("a second request message is refused");
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
    // No handler ran: nothing stored, nothing audited.
    assert!(
        gw.query_strings("SELECT report_id FROM reports")
            .await
            .is_empty()
    );
    assert!(
        gw.query_strings("SELECT action FROM audit WHERE actor_role != 'gateway'")
            .await
            .is_empty()
    );

    // The same call with one message is served.
    raw_call(&gw, LANDLORD, path, vec![report("only", RESIDENT)])
        .await
        .expect("one request message is served");
    // Reflection, with its own codec, still takes many messages on its bidirectional stream.
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    let ask = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = ServerReflectionClient::new(gw.channel(LANDLORD).await)
        .server_reflection_info(tokio_stream::iter(vec![ask.clone(), ask]))
        .await
        .expect("reflection answers")
        .into_inner();
    for _ in 0..2 {
        answers
            .message()
            .await
            .expect("an answer")
            .expect("one per request");
    }
}

/// The `(field, description)` pairs of a status's `google.rpc.BadRequest`.
fn violations(status: &tonic::Status) -> Vec<(String, String)> {
    status
        .get_details_bad_request()
        .expect("BadRequest details")
        .field_violations
        .into_iter()
        .map(|v| (v.field, v.description))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undeclared_purpose_offers_only_the_purposes_the_caller_may_send_on() {
    let gw = TestGateway::start().await;
    let mut landlord = gw.landlord(LANDLORD).await;
    let mut typo = report("typo", RESIDENT);
    typo.purpose = "eviction-prevension".into();
    typo.legal_basis = "gdpr-6-1-f".into();
    let err = landlord
        .report_rent_arrears(typo)
        .await
        .expect_err("undeclared purpose and basis");
    assert_eq!(err.code(), Code::InvalidArgument);
    let found = violations(&err);
    let [(purpose, p_text), (basis, b_text)] = found.as_slice() else {
        panic!("two violations: {found:?}");
    };
    assert_eq!(
        (purpose.as_str(), basis.as_str()),
        ("purpose", "legal_basis")
    );
    // debt-collection is declared only to be refused: it is not offered.
    assert!(p_text.contains("eviction-prevention"), "{p_text}");
    assert!(!p_text.contains("debt-collection"), "{p_text}");
    assert!(b_text.contains("gdpr-6-1-a-consent"), "{b_text}");
    // Rent arrears are never sent on the statutory basis: not offered either.
    assert!(!b_text.contains("fi-shl-35-notification"), "{b_text}");
    // The field stands apart from its description, which is not run into it.
    assert!(
        err.message()
            .starts_with("invalid request: purpose: is not a declared purpose"),
        "{}",
        err.message()
    );
    assert!(
        err.message().contains("; legal_basis: is not a declared"),
        "{}",
        err.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reference_shaped_like_a_code_is_refused_naming_where_and_a_plain_one_passes() {
    let gw = TestGateway::start().await;
    gw.social(SOCIAL_A)
        .await
        .enrol_client(enrol(RESIDENT))
        .await
        .expect("enrolled");
    let mut landlord = gw.landlord(LANDLORD).await;
    let mut lease = report("lease-1", RESIDENT);
    lease.tenancy_ref = "LEASE-010124-0001".into();
    let err = landlord
        .report_rent_arrears(lease)
        .await
        .expect_err("the reference holds a code's shape");
    assert_eq!(err.code(), Code::InvalidArgument);
    let found = violations(&err);
    let [(field, text)] = found.as_slice() else {
        panic!("one violation: {found:?}");
    };
    assert_eq!(field, "tenancy_ref");
    assert!(
        text.contains("characters 7–17 have the shape of an identity code"),
        "{text}"
    );
    let all = format!("{} {:?}", err.message(), err.get_error_details());
    assert!(
        !all.contains("010124") && !all.contains("LEASE"),
        "the reference was echoed: {all}"
    );
    // The formats docs/api.md says always pass.
    for (i, reference) in ["LEASE-2024-0001", "KALLIO-12-B-34", "L2024A01N0001"]
        .into_iter()
        .enumerate()
    {
        let mut plain = report(&format!("plain-{i}"), RESIDENT);
        plain.tenancy_ref = reference.into();
        landlord
            .report_rent_arrears(plain)
            .await
            .unwrap_or_else(|e| panic!("{reference} refused: {e:?}"));
    }
}
