//! mTLS identity: roles per RPC, missing and foreign certificates.

use silta_core::{Caller, OrgId, Role};
use silta_server::proto::landlord_client::LandlordClient;
use silta_server::proto::social_services_client::SocialServicesClient;
use silta_server::proto::{self};
use silta_tests::{DPO, LANDLORD, SOCIAL_A, TestGateway, enrol, report};
use tonic::Code;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

const RESIDENT: &str = "150385-9345";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_calling_another_roles_rpc_is_permission_denied_and_audited() {
    let gw = TestGateway::start().await;
    let as_landlord = gw.channel(LANDLORD).await;
    let as_social = gw.channel(SOCIAL_A).await;
    let as_dpo = gw.channel(DPO).await;

    for ch in [as_social.clone(), as_dpo.clone()] {
        let err = LandlordClient::new(ch)
            .report_rent_arrears(report("k", RESIDENT))
            .await
            .expect_err("denied");
        // The flow's policy names who may send on it; the refusal names the policy.
        assert_eq!(err.code(), Code::PermissionDenied);
        assert!(err.message().contains("sender-role"), "{}", err.message());
    }
    for ch in [as_landlord, as_dpo] {
        let mut c = SocialServicesClient::new(ch);
        assert_eq!(
            c.enrol_client(enrol(RESIDENT))
                .await
                .expect_err("denied")
                .code(),
            Code::PermissionDenied
        );
        let sub = c
            .subscribe_alerts(proto::SubscribeAlertsRequest { after_sequence: 0 })
            .await;
        assert_eq!(sub.expect_err("denied").code(), Code::PermissionDenied);
        let ack = c
            .ack_alerts(proto::AckAlertsRequest {
                up_to_sequence: 1,
                sequences: vec![],
            })
            .await;
        assert_eq!(ack.expect_err("denied").code(), Code::PermissionDenied);
    }
    let denials = gw
        .query_strings(
            "SELECT actor_org || ':' || reason FROM audit WHERE outcome = 'deny' ORDER BY seq",
        )
        .await;
    assert_eq!(denials.len(), 2 + 2 * 3);
    let (policy, role): (Vec<_>, Vec<_>) =
        denials.iter().partition(|d| d.ends_with(":policy-denied"));
    assert_eq!(policy.len(), 2, "{denials:?}");
    assert!(
        role.iter().all(|d| d.ends_with(":role-not-allowed")),
        "{denials:?}"
    );
    assert!(
        gw.query_strings("SELECT report_id FROM reports")
            .await
            .is_empty()
    );
}

async fn try_report(endpoint: Endpoint) -> bool {
    match endpoint.connect().await {
        Err(_) => false,
        Ok(ch) => LandlordClient::new(ch)
            .report_rent_arrears(report("k", RESIDENT))
            .await
            .is_ok(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_certificate_or_with_a_foreign_one_cannot_call() {
    let gw = TestGateway::start().await;
    let url = format!("https://{}", gw.addr());
    let trust_server = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&gw.pki.ca_cert))
        .domain_name("localhost");

    let no_cert = Endpoint::from_shared(url.clone())
        .expect("url")
        .tls_config(trust_server.clone())
        .expect("tls");
    assert!(
        !try_report(no_cert).await,
        "a call without a client certificate succeeded"
    );

    // A certificate naming the same organisation and role, from another CA.
    let landlord = Caller {
        org: OrgId::new(LANDLORD).expect("valid"),
        role: Role::Landlord,
    };
    let foreign =
        silta_server::devpki::mint("another CA", "silta.local", &[landlord]).expect("pki");
    let (_, pem) = &foreign.clients[0];
    let foreign_cert = Endpoint::from_shared(url.clone())
        .expect("url")
        .tls_config(
            trust_server
                .clone()
                .identity(Identity::from_pem(&pem.cert, &pem.key)),
        )
        .expect("tls");
    assert!(
        !try_report(foreign_cert).await,
        "a certificate from another CA was accepted"
    );

    // Plain HTTP/2 without TLS.
    let plain = Endpoint::from_shared(format!("http://{}", gw.addr())).expect("url");
    assert!(!try_report(plain).await, "a plaintext call succeeded");

    // The gateway keeps serving real clients.
    let ok = gw
        .landlord(LANDLORD)
        .await
        .report_rent_arrears(report("k", RESIDENT))
        .await;
    assert!(ok.is_ok(), "{ok:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_the_right_ca_naming_no_silta_identity_is_unauthenticated() {
    // The certificates name spiffe://silta.local/...; this gateway expects another domain.
    let gw = TestGateway::start_with(|c| c.tls.trust_domain = "elsewhere.example".into()).await;
    let err = gw
        .landlord(LANDLORD)
        .await
        .report_rent_arrears(report("k", RESIDENT))
        .await
        .expect_err("no identity");
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(
        err.message().contains("spiffe://elsewhere.example/org/"),
        "{}",
        err.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_says_serving_over_mtls_and_names_unknown_services() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let gw = TestGateway::start().await;
    let mut health = HealthClient::new(gw.channel(LANDLORD).await);
    for service in [
        "",
        "silta.v1.Landlord",
        "silta.v1.SocialServices",
        "silta.v1.Audit",
    ] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health answers")
            .into_inner()
            .status;
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service:?}"
        );
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "silta.v1.Nope".into(),
        })
        .await
        .expect_err("unknown service");
    assert_eq!(unknown.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_client_certificate_is_refused_at_the_handshake() {
    use silta_tests::SOCIAL_B;
    let gw = TestGateway::start_with(|c| {
        let dir = c.tls.client_ca.parent().expect("pki dir").to_path_buf();
        let crl = silta_server::devpki::revoke(&dir, &[SOCIAL_B.to_owned()]).expect("CRL");
        c.tls.client_crl = Some(crl);
    })
    .await;
    let pem = |org: &str| {
        gw.pki
            .clients
            .iter()
            .find(|(c, _)| c.org.as_str() == org)
            .map(|(_, p)| p.clone())
            .expect("known org")
    };
    let revoked = pem(SOCIAL_B);
    let refused = match silta_server::client::connect(
        gw.addr(),
        &gw.pki.ca_cert,
        &revoked.cert,
        &revoked.key,
    )
    .await
    {
        Err(_) => true,
        Ok(ch) => SocialServicesClient::new(ch)
            .enrol_client(enrol(RESIDENT))
            .await
            .is_err(),
    };
    assert!(refused, "a revoked certificate was served");
    // Everyone else still gets in.
    gw.social(SOCIAL_A)
        .await
        .enrol_client(enrol(RESIDENT))
        .await
        .expect("a certificate that is not revoked works");
    assert!(
        gw.query_strings("SELECT actor_org FROM audit WHERE actor_org = 'social-b'")
            .await
            .is_empty(),
        "the revoked client reached the gateway"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_crl_refuses_the_next_handshake_and_a_broken_one_keeps_the_old() {
    use silta_tests::SOCIAL_B;
    let gw = TestGateway::start_with(|c| {
        let dir = c.tls.client_ca.parent().expect("pki dir").to_path_buf();
        let crl = silta_server::devpki::revoke(&dir, &[]).expect("an empty CRL");
        c.tls.client_crl = Some(crl);
    })
    .await;
    let dir = gw
        .config
        .tls
        .client_ca
        .parent()
        .expect("pki dir")
        .to_path_buf();
    let connects = |org: &'static str| {
        let gw = &gw;
        async move {
            let (_, pem) = gw
                .pki
                .clients
                .iter()
                .find(|(c, _)| c.org.as_str() == org)
                .expect("known org");
            match silta_server::client::connect(gw.addr(), &gw.pki.ca_cert, &pem.cert, &pem.key)
                .await
            {
                Err(_) => false,
                Ok(ch) => SocialServicesClient::new(ch)
                    .ack_alerts(proto::AckAlertsRequest {
                        up_to_sequence: 1,
                        sequences: vec![],
                    })
                    .await
                    .is_ok(),
            }
        }
    };
    assert!(connects(SOCIAL_B).await, "not revoked yet");
    silta_server::devpki::revoke(&dir, &[SOCIAL_B.to_owned()]).expect("CRL");
    gw.reload_tls().await.expect("reloaded");
    assert!(!connects(SOCIAL_B).await, "revoked after the reload");
    assert!(connects(SOCIAL_A).await);

    std::fs::write(dir.join("crl.pem"), "not a CRL").expect("break it");
    gw.reload_tls().await.expect_err("a broken CRL is refused");
    assert!(!connects(SOCIAL_B).await, "the old CRL keeps serving");
    assert!(
        connects(SOCIAL_A).await,
        "the old configuration keeps serving"
    );
    let reloads = gw
        .query_strings("SELECT outcome FROM audit WHERE action = 'ReloadTls' ORDER BY seq")
        .await;
    assert_eq!(reloads, ["allow", "deny"]);
}

/// A certificate for the landlord from the gateway's own CA, with `purposes` as its extended
/// key usage (none: no extension at all). PEM certificate and key.
fn landlord_certificate(
    gw: &TestGateway,
    purposes: Vec<rcgen::ExtendedKeyUsagePurpose>,
) -> (String, String) {
    let ca_key = rcgen::KeyPair::from_pem(&gw.pki.ca_key).expect("CA key");
    let ca = rcgen::Issuer::from_ca_cert_pem(&gw.pki.ca_cert, ca_key).expect("CA");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    let landlord = Caller {
        org: OrgId::new(LANDLORD).expect("valid"),
        role: Role::Landlord,
    };
    let uri = silta_server::identity::spiffe_uri("silta.local", &landlord);
    params.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into().expect("IA5 URI"))];
    params.extended_key_usages = purposes;
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &ca).expect("certificate");
    (cert.pem(), key.serialize_pem())
}

/// Connects with `cert` and sends a report: `Ok` if it was served, else the error's text.
async fn report_with(gw: &TestGateway, (cert, key): &(String, String)) -> Result<(), String> {
    let channel = silta_server::client::connect(gw.addr(), &gw.pki.ca_cert, cert, key)
        .await
        .map_err(|e| format!("{e:?}"))?;
    LandlordClient::new(channel)
        .report_rent_arrears(report("k", RESIDENT))
        .await
        .map(drop)
        .map_err(|e| format!("{e:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_not_for_client_authentication_is_refused_at_the_handshake() {
    use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
    let gw = TestGateway::start().await;
    // No extension at all: webpki alone would take it as good for any purpose.
    report_with(&gw, &landlord_certificate(&gw, vec![]))
        .await
        .expect_err("a certificate without extendedKeyUsage was served");
    // A server certificate (such as the gateway's own) is not a client's.
    report_with(&gw, &landlord_certificate(&gw, vec![ServerAuth]))
        .await
        .expect_err("a serverAuth certificate was served");
    // The client sees only a closed connection; the gateway's log says why.
    let logs = silta_tests::captured_logs();
    assert!(logs.contains("reason=\"it has no extendedKeyUsage extension\""));
    assert!(logs.contains(
        "does not allow extended key usage for client authentication, allows server authentication"
    ));
    assert!(
        gw.query_strings("SELECT action FROM audit WHERE actor_org = 'city-housing'")
            .await
            .is_empty(),
        "a refused certificate reached the gateway's handlers"
    );
    // The same CA and names, for client authentication: served.
    report_with(&gw, &landlord_certificate(&gw, vec![ClientAuth]))
        .await
        .expect("a clientAuth certificate is served");
}
