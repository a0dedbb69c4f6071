//! A database written by schema v1 opens under the current schema with nothing lost: pending
//! alerts stay deliverable, consents keep opening what they opened, a retried report still
//! finds its first receipt.

use silta_core::OrgId;
use silta_core::pseudonym::Pseudonym;
use silta_store::{SqliteStore, Store};

#[tokio::test]
async fn a_v1_database_is_upgraded_in_place() {
    let dir = tempfile::tempdir().expect("temp dir");
    let v1 = dir.path().join("v1");
    std::fs::create_dir(&v1).expect("dir");
    std::fs::write(
        v1.join("0001_initial.sql"),
        include_str!("../migrations/sqlite/0001_initial.sql"),
    )
    .expect("copy v1 migration");
    let db = dir.path().join("silta.db");
    let url = format!("sqlite://{}?mode=rwc", db.display());
    let pool = sqlx::SqlitePool::connect(&url).await.expect("open");
    sqlx::migrate::Migrator::new(v1.as_path())
        .await
        .expect("v1 migrator")
        .run(&pool)
        .await
        .expect("v1 schema");
    sqlx::raw_sql(
        "INSERT INTO consents VALUES ('c1', 'ps1.subject', 'ps1.audit', 'social-a',
             'eviction-prevention', 0, 9999999999999, 'E-1', 'v1', 'active', 0, 0);
         INSERT INTO alert_sequences VALUES ('social-a', 1);
         INSERT INTO alerts (alert_id, recipient_org, seq, flow_id, consent_id, report_id,
                             subject_pseudonym, case_ref, payload, created_at)
         VALUES ('a1', 'social-a', 1, 'rent-arrears', 'c1', 'r1', 'ps1.x', 'case-1',
                 '{\"report_month\":\"2026-11\",\"arrears_band\":\"from500_to1500\",\"months_overdue\":2,\"eviction_stage\":\"warning\",\"landlord_contact_office\":\"Kallio\"}', 0);
         INSERT INTO cases VALUES ('case-1', 'city-housing', 'T-1', 'social-a', 0);
         INSERT INTO reports VALUES ('r1', 'city-housing', 'key-1', x'0102', 1764288000000);",
    )
    .execute(&pool)
    .await
    .expect("v1 rows");
    pool.close().await;
    // Created by an older release under umask 022: the upgrade step the release notes give
    // (docs/operations.md, "Upgrades and migrations"), without which the store refuses it.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }

    let store = SqliteStore::open(&db).await.expect("upgraded");
    let pending = store
        .pending_alerts(&OrgId::new("social-a").expect("valid"), 0, 10)
        .await
        .expect("pending");
    assert_eq!(pending.len(), 1);
    let a = &pending[0];
    assert_eq!(
        (a.purpose.as_str(), a.legal_basis.as_str()),
        ("eviction-prevention", "gdpr-6-1-a-consent")
    );
    let payload: serde_json::Value = serde_json::from_str(&a.payload).expect("JSON");
    assert_eq!(payload["message"], "rent-arrears");
    assert_eq!(payload["fields"]["arrears_band"], "from_500_to_1500");
    assert_eq!(payload["fields"]["months_overdue"], 2);

    // The consent takes its holder's pseudonym of the client from the alert delivered under it.
    let held = store
        .consent(&OrgId::new("social-a").expect("valid"), "c1")
        .await
        .expect("read")
        .expect("kept");
    assert_eq!(held.subject_pseudonym, "ps1.x");
    assert!(held.renews.is_none());

    let mut tx = store.begin().await.expect("begin");
    let consents = tx
        .consents_for(
            &Pseudonym::from_stored("ps1.subject".into()),
            "eviction-prevention",
        )
        .await
        .expect("consents");
    assert_eq!(consents.len(), 1);
    assert!(consents[0].covers_flow("rent-arrears"));
    assert!(!consents[0].covers_flow("eviction-stage"));
    assert!(!consents[0].covers_landlord);
    let report = tx
        .find_report(&OrgId::new("city-housing").expect("valid"), "key-1")
        .await
        .expect("find report")
        .expect("kept");
    assert_eq!(
        (report.report_id.as_str(), report.fingerprint.as_slice()),
        ("r1", [1u8, 2].as_slice())
    );
    drop(tx);
    // A v1 case has no resident: it is kept, but no consent can be found for it.
    let case = store
        .find_case(&OrgId::new("social-a").expect("valid"), "case-1")
        .await
        .expect("find")
        .expect("kept");
    assert_eq!(case.subject_key.as_str(), "");
    store.close().await;
}
