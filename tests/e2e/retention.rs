//! Storage limitation end to end: every kind of record a gateway stores goes when its rule
//! says (the purge run with the clock advanced), nothing of a purged case is left in the
//! database files, and the ledger still verifies and still answers a resident's access request.

use silta_server::policy_source::PolicyHandle;
use silta_server::proto;
use silta_tests::{DPO, LANDLORD, SOCIAL_A, TestGateway, enrol, report};
use time::{Duration, OffsetDateTime};
use tokio_stream::StreamExt;

const RESIDENT: &str = "150385-9345";
const TENANCY: &str = "RET-TENANCY-4711";

async fn count(gw: &TestGateway, table: &str) -> String {
    gw.query_strings(&format!("SELECT CAST(COUNT(*) AS TEXT) FROM {table}"))
        .await
        .concat()
}

/// The database files (`silta.db`, its WAL, ...) whose bytes contain `needle`.
fn files_holding(gw: &TestGateway, needle: &str) -> Vec<String> {
    std::fs::read_dir(gw.dir.path())
        .expect("list")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| {
            path.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("silta.db"))
        })
        .filter(|path| {
            let bytes = std::fs::read(path).expect("read");
            bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
        })
        .map(|path| path.display().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_record_expires_and_the_ledger_still_answers_for_it() {
    let mut gw = TestGateway::start().await;
    let mut social = gw.social(SOCIAL_A).await;
    social
        .enrol_client(enrol(RESIDENT))
        .await
        .expect("enrolled");
    gw.landlord(LANDLORD)
        .await
        .report_rent_arrears(proto::ReportRentArrearsRequest {
            tenancy_ref: TENANCY.into(),
            ..report("ret-1", RESIDENT)
        })
        .await
        .expect("accepted");
    social
        .withdraw_consent(proto::WithdrawConsentRequest {
            target: Some(proto::withdraw_consent_request::Target::Subject(
                proto::SubjectPurpose {
                    hetu: RESIDENT.into(),
                    purpose: "eviction-prevention".into(),
                },
            )),
        })
        .await
        .expect("withdrawn");
    gw.stop().await;
    for table in ["reports", "consents", "cases"] {
        assert_eq!(count(&gw, table).await, "1", "{table} before the purge");
    }
    let case_ref = gw
        .query_strings("SELECT case_ref FROM cases")
        .await
        .concat();
    assert!(
        !files_holding(&gw, TENANCY).is_empty(),
        "the case's tenancy reference is stored before the purge"
    );

    // A hundred days on: past the retry window (7 days), the ended consent's grace (30 days)
    // and every flow's retention.
    let store = silta_server::open_store(&gw.config.store)
        .await
        .expect("open store");
    let policies = PolicyHandle::open(gw.config.policy.dir.clone()).expect("policies");
    let later = OffsetDateTime::now_utc() + Duration::days(100);
    let purged = silta_server::retention::purge(&*store, &policies, &gw.config.retention, later)
        .await
        .expect("purge");
    store.close().await;
    drop(store);
    assert_eq!(
        (purged.reports, purged.consents, purged.cases),
        (1, 1, 1),
        "{purged:?}"
    );
    for table in ["reports", "consents", "cases", "alerts"] {
        assert_eq!(count(&gw, table).await, "0", "{table} after the purge");
    }
    let mut purges = gw
        .query_strings(
            "SELECT actor_role || ':' || reason FROM audit WHERE action = 'RetentionPurge'",
        )
        .await;
    purges.sort();
    assert_eq!(
        purges,
        [
            "gateway:purged-1-cases-idle-7776000s-or-without-consent-for-2592000s",
            "gateway:purged-1-consents-ended-more-than-2592000s-ago",
            "gateway:purged-1-reports-older-than-604800s",
        ]
    );
    // Nothing of the case is left in any of the database's files: deleted content is
    // overwritten, not just unlinked.
    assert_eq!(files_holding(&gw, TENANCY), Vec::<String>::new());

    // The ledger is whole, and still tells the resident who received what.
    gw.restart_after_stop().await;
    // A support notice on the purged case: not found (were the case still there, the
    // withdrawn consent would make it a policy refusal instead).
    let err = gw
        .social(SOCIAL_A)
        .await
        .send_support_notice(proto::SendSupportNoticeRequest {
            idempotency_key: "ret-notice".into(),
            case_ref,
            purpose: "eviction-prevention".into(),
            legal_basis: silta_tests::CONSENT.into(),
            outcome: proto::SupportOutcome::SupportEngaged.into(),
            ..Default::default()
        })
        .await
        .expect_err("the case has ended");
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    let mut audit = gw.audit(DPO).await;
    let export: Vec<proto::ExportItem> = audit
        .export(proto::ExportRequest::default())
        .await
        .expect("export")
        .into_inner()
        .collect::<Result<_, _>>()
        .await
        .expect("every exported entry is covered by the signed tree");
    assert!(!export.is_empty());
    let entries: Vec<proto::AuditEntry> = audit
        .query(proto::AuditQueryRequest {
            subject_hetu: RESIDENT.into(),
            ..Default::default()
        })
        .await
        .expect("query")
        .into_inner()
        .collect::<Result<_, _>>()
        .await
        .expect("entries");
    let disclosed = entries
        .iter()
        .find(|e| e.action == "Landlord.ReportRentArrears")
        .expect("the report is in the resident's record");
    assert_eq!(disclosed.recipients, [SOCIAL_A]);
    assert!(
        entries
            .iter()
            .any(|e| e.action == "SocialServices.WithdrawConsent")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dpo_sees_each_kind_of_record_its_oldest_row_and_what_is_due() {
    let gw = TestGateway::start().await;
    gw.social(SOCIAL_A)
        .await
        .enrol_client(enrol(RESIDENT))
        .await
        .expect("enrolled");
    gw.landlord(LANDLORD)
        .await
        .report_rent_arrears(report("ret-2", RESIDENT))
        .await
        .expect("accepted");
    let report = gw
        .audit(DPO)
        .await
        .get_retention(proto::GetRetentionRequest {})
        .await
        .expect("the DPO may ask")
        .into_inner();
    let as_of = report.as_of.expect("as of").seconds;
    let row = |kind: &str, flow: &str| {
        report
            .kinds
            .iter()
            .find(|k| k.kind == kind && k.flow_id == flow)
            .unwrap_or_else(|| panic!("{kind} {flow} in {:?}", report.kinds))
    };
    for (kind, flow, kept_for) in [
        ("messages", "rent-arrears", 90 * 86_400),
        ("reports", "", 7 * 86_400),
        ("consents", "", 30 * 86_400),
        ("cases", "", 90 * 86_400),
    ] {
        let k = row(kind, flow);
        assert_eq!(
            (k.rows, k.due, k.kept_for_seconds),
            (1, 0, kept_for),
            "{k:?}"
        );
        let oldest = k.oldest.as_ref().expect("oldest").seconds;
        assert!((as_of - 60..=as_of).contains(&oldest), "{k:?}");
        assert!(!k.rule.is_empty());
    }
    assert_eq!(report.kinds.len(), 4, "{:?}", report.kinds);

    let err = gw
        .audit(LANDLORD)
        .await
        .get_retention(proto::GetRetentionRequest {})
        .await
        .expect_err("the DPO's only");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
}
