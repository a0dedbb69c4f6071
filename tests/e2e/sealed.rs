//! Sealed identity: a statutory notice tells the organisation the law names who the resident
//! is, sealed (HPKE) to that organisation's own key; no one else can open it, silta stores only
//! the ciphertext, and the ledger records the disclosure.

use std::time::Duration;

use silta_server::proto::{self, EvictionStage};
use silta_tests::{
    CONSENT, DPO, LANDLORD, MUNICIPAL, SOCIAL_A, STATUTORY, TestGateway, enrol, eviction,
    open_sealed, report,
};
use tokio_stream::StreamExt;

/// Synthetic (individual number 900–999); no real person has it. Nobody enrols it.
const RESIDENT: &str = "150385-9345";

async fn first_alert(gw: &TestGateway, org: &str) -> proto::Alert {
    let mut stream = gw
        .social(org)
        .await
        .subscribe_alerts(proto::SubscribeAlertsRequest { after_sequence: 0 })
        .await
        .expect("subscribed to alerts")
        .into_inner();
    tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("an alert in time")
        .expect("an alert")
        .expect("not an error")
}

async fn access_report(gw: &TestGateway) -> Vec<proto::AuditEntry> {
    gw.audit(DPO)
        .await
        .query(proto::AuditQueryRequest {
            subject_hetu: RESIDENT.into(),
            ..Default::default()
        })
        .await
        .expect("query")
        .into_inner()
        .collect::<Result<_, _>>()
        .await
        .expect("entries")
}

/// Every way the code could be written down: with each century marker or separator in the
/// middle, or with none.
fn forms(code: &str) -> Vec<String> {
    let (date, rest) = (&code[..6], &code[7..]);
    let mut forms: Vec<String> = "+-YXWVUABCDEF ./_"
        .chars()
        .map(|sep| format!("{date}{sep}{rest}"))
        .collect();
    forms.push(format!("{date}{rest}"));
    forms.push(code.to_lowercase());
    forms
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_municipality_opens_the_identity_of_an_unenrolled_resident_and_no_one_else_can() {
    let mut gw = TestGateway::start().await;
    gw.landlord(LANDLORD)
        .await
        .report_eviction_stage(eviction(
            "s-1",
            RESIDENT,
            EvictionStage::EnforcementScheduled,
            STATUTORY,
        ))
        .await
        .expect("accepted");
    let alert = first_alert(&gw, MUNICIPAL).await;
    assert_eq!(alert.flow_id, "eviction-enforcement-notice");
    let sealed = alert
        .sealed_identity
        .as_ref()
        .expect("the statutory notice says whom it concerns");
    assert_eq!(sealed.suite, silta_core::sealed::SUITE);
    assert_eq!(sealed.enc.len(), 32);
    assert_eq!(sealed.key_id.len(), 16);

    // The recipient, with its own private key, learns the code.
    assert_eq!(
        open_sealed(&alert, MUNICIPAL, &gw.municipal_private_key).expect("opens"),
        RESIDENT
    );
    // Another organisation's key does not open it, nor does the right key for another
    // organisation or for the same ciphertext moved to another alert.
    let (other_private, _) = silta_core::sealed::generate_keypair();
    assert!(open_sealed(&alert, MUNICIPAL, &other_private).is_err());
    assert!(open_sealed(&alert, SOCIAL_A, &gw.municipal_private_key).is_err());
    let mut moved = alert.clone();
    moved.alert_id = "01890000-0000-7000-8000-000000000000".to_owned();
    assert!(open_sealed(&moved, MUNICIPAL, &gw.municipal_private_key).is_err());

    // The resident's access report says that their identity was disclosed, to whom and why.
    let entries = access_report(&gw).await;
    let disclosure = entries
        .iter()
        .find(|e| e.action == "Landlord.ReportEvictionStage")
        .expect("the report's entry");
    assert_eq!(disclosure.outcome, "allow");
    assert_eq!(disclosure.reason, "disclosed-statutory");
    assert_eq!(disclosure.flow_id, "eviction-enforcement-notice");
    assert_eq!(disclosure.recipients, [MUNICIPAL]);
    assert!(
        disclosure.fields.iter().any(|f| f == "identity_sealed"),
        "{:?}",
        disclosure.fields
    );

    // The ciphertext lives in the alert's own row (its payload), so the retention purge and a
    // withdrawal's purge, which delete the row, delete it too.
    assert_eq!(
        gw.query_strings("SELECT alert_id FROM alerts WHERE payload LIKE '%\"sealed_identity\"%'")
            .await,
        std::slice::from_ref(&alert.alert_id)
    );

    // At rest: the ciphertext, never the code, in any form, in any of the database's files.
    gw.stop().await;
    let mut read = 0;
    for entry in std::fs::read_dir(gw.dir.path()).expect("read dir") {
        let path = entry.expect("entry").path();
        if !path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("silta.db"))
        {
            continue;
        }
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            // SQLite removes `-wal` and `-shm` with its last connection; gone holds nothing.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("read {}: {e}", path.display()),
        };
        read += bytes.len();
        for form in forms(RESIDENT) {
            assert!(
                !bytes.windows(form.len()).any(|w| w == form.as_bytes()),
                "{} holds the code in clear",
                path.display()
            );
        }
    }
    assert!(read > 4096, "the database was written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consent_based_alert_carries_no_sealed_identity() {
    let gw = TestGateway::start().await;
    gw.social(SOCIAL_A)
        .await
        .enrol_client(enrol(RESIDENT))
        .await
        .expect("enrolled");
    let mut arrears = report("r-1", RESIDENT);
    arrears.legal_basis = CONSENT.into();
    gw.landlord(LANDLORD)
        .await
        .report_rent_arrears(arrears)
        .await
        .expect("accepted");
    let alert = first_alert(&gw, SOCIAL_A).await;
    assert_eq!(alert.flow_id, "rent-arrears");
    assert_eq!(
        alert.sealed_identity, None,
        "a consent covers a pseudonym only"
    );
    let entries = access_report(&gw).await;
    let disclosure = entries
        .iter()
        .find(|e| e.action == "Landlord.ReportRentArrears")
        .expect("the report's entry");
    assert_eq!(disclosure.reason, "disclosed");
    assert!(!disclosure.fields.iter().any(|f| f == "identity_sealed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_refuses_to_start_when_a_statutory_recipient_has_no_key() {
    let mut gw = TestGateway::start().await;
    gw.stop().await;
    let mut config = gw.config.clone();
    config.statutory_recipients.clear();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let err = match silta_server::start(&config, gw.keyring(), listener).await {
        Ok(_) => panic!("started without the municipality's key"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains(MUNICIPAL), "{err}");
    assert!(err.contains("statutory_recipients"), "{err}");
    assert!(err.contains("hpke_public_key"), "{err}");
    assert!(err.contains("eviction-enforcement-notice"), "{err}");

    // A key that is not one is refused too, naming the entry.
    config
        .statutory_recipients
        .push(silta_server::config::StatutoryRecipient {
            org: MUNICIPAL.to_owned(),
            hpke_public_key: Some("bm90IGEga2V5".to_owned()),
            hpke_public_key_file: None,
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let err = match silta_server::start(&config, gw.keyring(), listener).await {
        Ok(_) => panic!("started with a malformed key"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("statutory_recipients[0].hpke_public_key (org helsinki-social)"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_discloses_identity_to_an_organisation_without_a_key_is_refused() {
    // A set whose statutory flow does not disclose identity runs without any recipient key.
    let root = tempfile::tempdir().expect("temp dir");
    let dir = TestGateway::copy_policies(root.path());
    let flows = dir.join("flows.toml");
    let declared = std::fs::read_to_string(&flows).expect("read flows.toml");
    assert!(declared.contains("discloses_identity = true\n"));
    std::fs::write(&flows, declared.replace("discloses_identity = true\n", ""))
        .expect("write flows.toml");
    let gw = TestGateway::start_with(|c| {
        c.policy.dir = Some(dir.clone());
        c.statutory_recipients.clear();
    })
    .await;

    // Declaring the disclosure again, with no key for its recipient, is refused; the old set
    // keeps serving.
    std::fs::write(&flows, &declared).expect("write flows.toml");
    let err = gw
        .reload_policies()
        .await
        .expect_err("no key for the recipient")
        .to_string();
    assert!(err.contains(MUNICIPAL), "{err}");
    assert!(err.contains("statutory_recipients"), "{err}");
    // The old set serves: the notice crosses, pseudonymous as that set declares.
    gw.landlord(LANDLORD)
        .await
        .report_eviction_stage(eviction(
            "s-1",
            RESIDENT,
            EvictionStage::EnforcementScheduled,
            STATUTORY,
        ))
        .await
        .expect("accepted");
    let alert = first_alert(&gw, MUNICIPAL).await;
    assert_eq!(alert.flow_id, "eviction-enforcement-notice");
    assert_eq!(alert.sealed_identity, None);
}
