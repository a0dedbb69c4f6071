//! No identity code in clear reaches the database file or the logs.

use silta_server::proto;
use silta_tests::{
    DPO, LANDLORD, SOCIAL_A, SOCIAL_B, TestGateway, captured_logs, enrol, exported_spans,
    invalid_hetus, report, valid_hetus,
};
use tokio_stream::StreamExt;

/// The forms a leaked code could take: as sent, and without its century marker.
fn forms(code: &str) -> Vec<String> {
    let mut forms = vec![code.to_owned()];
    if code.is_ascii() && code.len() == 11 {
        forms.push(format!("{}{}", &code[..6], &code[7..]));
    }
    forms
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_fixture_identity_code_reaches_the_database_file_or_the_logs() {
    let mut gw = TestGateway::start().await;
    let mut social_a = gw.social(SOCIAL_A).await;
    let mut social_b = gw.social(SOCIAL_B).await;
    let mut landlord = gw.landlord(LANDLORD).await;
    let valid = valid_hetus();
    for (i, code) in valid.iter().enumerate() {
        social_a.enrol_client(enrol(code)).await.expect("enrolled");
        if i % 2 == 0 {
            social_b.enrol_client(enrol(code)).await.expect("enrolled");
        }
        landlord
            .report_rent_arrears(report(&format!("p-{i}"), code))
            .await
            .expect("accepted");
        // A code smuggled into free text and into a field that would cross.
        let mut smuggled = report(&format!("s-{i}"), code);
        smuggled.free_text_note = format!("tenant {code}");
        landlord
            .report_rent_arrears(smuggled)
            .await
            .expect("free text is dropped, not stored");
        let mut crossing = report(&format!("c-{i}"), code);
        crossing.landlord_contact_office = format!("desk {code}");
        landlord
            .report_rent_arrears(crossing)
            .await
            .expect_err("a code in a crossing field is refused");
        if i % 3 == 0 {
            social_a
                .withdraw_consent(proto::WithdrawConsentRequest {
                    target: Some(proto::withdraw_consent_request::Target::Subject(
                        proto::SubjectPurpose {
                            hetu: code.clone(),
                            purpose: "eviction-prevention".into(),
                        },
                    )),
                })
                .await
                .expect("withdrawn");
        }
    }
    for (i, (code, _)) in invalid_hetus().iter().enumerate() {
        let _ = landlord
            .report_rent_arrears(report(&format!("i-{i}"), code))
            .await;
    }
    // The DPO looks every resident up, by code and (wrongly) by code as a pseudonym, and exports.
    let mut audit = gw.audit(DPO).await;
    for code in valid.iter().chain(invalid_hetus().iter().map(|(c, _)| c)) {
        if let Ok(stream) = audit
            .query(proto::AuditQueryRequest {
                subject_hetu: code.clone(),
                ..Default::default()
            })
            .await
        {
            let _: Vec<_> = stream.into_inner().collect().await;
        }
        let _ = audit
            .query(proto::AuditQueryRequest {
                subject_pseudonym: code.clone(),
                ..Default::default()
            })
            .await;
    }
    if let Ok(stream) = audit.export(proto::ExportRequest::default()).await {
        let _: Vec<_> = stream.into_inner().collect().await;
    }
    gw.stop().await;

    let mut files = Vec::new();
    for entry in std::fs::read_dir(gw.dir.path()).expect("read dir") {
        let path = entry.expect("entry").path();
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("silta.db"))
        {
            // Codes are ASCII, so a lossy view of the bytes keeps any copy of one intact.
            let bytes = match std::fs::read(&path) {
                Ok(bytes) => bytes,
                // SQLite removes `-wal` and `-shm` when its last connection closes, which can
                // happen between listing and reading; a file that is gone holds nothing.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => panic!("read {}: {e}", path.display()),
            };
            let text = String::from_utf8_lossy(&bytes).into_owned();
            files.push((path.display().to_string(), text));
        }
    }
    assert!(
        files.iter().any(|(_, text)| text.len() > 4096),
        "the database was written"
    );
    let logs = captured_logs();
    assert!(logs.contains("ReportRentArrears"), "logs were captured");
    // The RPC spans are captured too, closed with every field they recorded.
    assert!(
        logs.contains("rpc{otel.name=\"silta.v1.Landlord/ReportRentArrears\"")
            && logs.contains("path=/silta.v1.Landlord/ReportRentArrears")
            && logs.contains("flow=\"rent-arrears\"")
            && logs.contains("close"),
        "RPC spans were not captured"
    );
    let spans = exported_spans();
    assert!(
        spans.contains("/silta.v1.Landlord/ReportRentArrears") && spans.contains("rent-arrears"),
        "RPC spans were not exported over OTLP"
    );

    let mut codes: Vec<String> = valid.clone();
    codes.extend(
        invalid_hetus()
            .into_iter()
            .map(|(c, _)| c)
            .filter(|c| c.trim().len() >= 10),
    );
    for code in &codes {
        for form in forms(code.trim()) {
            for (name, text) in &files {
                assert!(
                    !text.contains(&form),
                    "an identity code is in {name} in clear"
                );
            }
            assert!(
                !logs.contains(&form),
                "an identity code is in the logs in clear"
            );
            assert!(
                !spans.contains(&form),
                "an identity code is in the exported spans in clear"
            );
        }
    }
}

/// `GET /metrics` on the admin port, over plain HTTP/1.1.
async fn scrape(addr: std::net::SocketAddr) -> String {
    silta_tests::admin_get(addr, "/metrics").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_and_decisions_and_name_no_one() {
    let gw =
        TestGateway::start_with(|c| c.admin.listen = Some("127.0.0.1:0".parse().expect("addr")))
            .await;
    let codes = valid_hetus();
    let mut social = gw.social(SOCIAL_A).await;
    social
        .enrol_client(enrol(&codes[0]))
        .await
        .expect("enrolled");
    let mut landlord = gw.landlord(LANDLORD).await;
    landlord
        .report_rent_arrears(report("m-1", &codes[0]))
        .await
        .expect("accepted");
    let _ = landlord
        .report_rent_arrears(report("m-2", "not-a-code"))
        .await;
    let text = scrape(gw.admin_addr().expect("admin port")).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    for expected in [
        "silta_rpc_requests_total{rpc=\"Landlord.ReportRentArrears\",code=\"OK\"} 1",
        "silta_rpc_requests_total{rpc=\"Landlord.ReportRentArrears\",code=\"invalid-argument\"} 1",
        "silta_rpc_requests_total{rpc=\"SocialServices.EnrolClient\",code=\"OK\"} 1",
        "silta_decisions_total{flow=\"rent-arrears\",outcome=\"allow\"} 1",
        "silta_commit_batch_size_count",
        "silta_commit_seconds_bucket",
        "silta_ledger_entries",
        "silta_last_checkpoint_timestamp_seconds",
        "silta_undelivered_messages 1",
        "silta_rpc_duration_seconds_bucket{",
        "silta_build_info{version=",
        "process_resident_memory_bytes ",
    ] {
        assert!(text.contains(expected), "{expected} missing from:\n{text}");
    }
    for code in &codes {
        assert!(
            !text.contains(code.as_str()),
            "an identity code in the metrics"
        );
    }
    for org in [LANDLORD, SOCIAL_A] {
        assert!(!text.contains(org), "{org} named in the metrics");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_port_answers_liveness_and_readiness_probes_without_a_certificate() {
    let gw =
        TestGateway::start_with(|c| c.admin.listen = Some("127.0.0.1:0".parse().expect("addr")))
            .await;
    let admin = gw.admin_addr().expect("admin port");
    let live = silta_tests::admin_get(admin, "/healthz").await;
    assert!(live.starts_with("HTTP/1.1 200"), "{live}");
    let ready = silta_tests::admin_get(admin, "/readyz").await;
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    assert!(ready.ends_with("ready\n"), "{ready}");
    let unknown = silta_tests::admin_get(admin, "/anything-else").await;
    assert!(unknown.starts_with("HTTP/1.1 404"), "{unknown}");
}
