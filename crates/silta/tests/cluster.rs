//! Two `silta serve` processes on one PostgreSQL database, as behind a load balancer: reports
//! sent to either node reach a subscriber on either node, exactly once per acknowledged cursor;
//! one ledger, no duplicate sequences; one node killed mid-load, the other keeps serving and
//! nothing acknowledged is lost; the exported ledger verifies offline.
//!
//! Needs `SILTA_TEST_POSTGRES_URL` (CI sets it); skips with a message otherwise.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use silta_server::proto;
use silta_server::proto::landlord_client::LandlordClient;
use silta_server::proto::social_services_client::SocialServicesClient;
use silta_store::testing::TempDatabase;
use tokio_stream::StreamExt;

mod common;
use common::{BIN, RESIDENT, channel, free_port, report, silta, wait_listening};

struct Node {
    child: Child,
    port: u16,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn node(dir: &Path) -> Node {
    let port = free_port();
    let child = Command::new(BIN)
        .args(["serve", "--config", "silta.toml"])
        .current_dir(dir)
        .env("SILTA_LISTEN", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("node-{port}.log"))).expect("log file"))
        .spawn()
        .expect("spawn silta serve");
    Node { child, port }
}

fn setup(db_url: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().to_path_buf();
    silta(&["dev-pki", "--out", "pki"], &dir);
    silta(&["keys", "generate", "--out", "pki/master.key"], &dir);
    std::fs::write(
        dir.join("silta.toml"),
        format!(
            "[store]\nurl = \"{db_url}\"\n[tls]\ncert = \"pki/server.pem\"\nkey = \"pki/server.key\"\n\
             client_ca = \"pki/ca.pem\"\n[secrets]\nmaster_secret_file = \"pki/master.key\"\n[hetu]\n\
             allow_temporary = true\n[ledger]\ncheckpoint_every = 50\ncheckpoint_interval_ms = 500\n\
             [tuning]\ndelivery_poll_ms = 60000\n\
             [[statutory_recipients]]\norg = \"helsinki-social\"\nhpke_public_key_file = \"pki/helsinki-social.hpke-public.key\"\n"
        ),
    )
    .expect("config");
    (tmp, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_one_postgres_share_delivery_and_one_ledger_and_survive_a_kill() {
    let Some(db) = TempDatabase::create("two_nodes_on_one_postgres").await else {
        return;
    };
    let (_tmp, dir) = setup(&db.url);
    let a = node(&dir);
    wait_listening(a.port).await;
    // The second node starts once the first has migrated (it would wait on sqlx's lock anyway).
    let mut b = node(&dir);
    wait_listening(b.port).await;

    // Enrol on node A; subscribe on node B.
    let now = prost_types::Timestamp {
        seconds: time::OffsetDateTime::now_utc().unix_timestamp() - 60,
        nanos: 0,
    };
    SocialServicesClient::new(channel(&dir, a.port, "helsinki-social").await)
        .enrol_client(proto::EnrolClientRequest {
            hetu: RESIDENT.into(),
            consent: Some(proto::Consent {
                purpose: "eviction-prevention".into(),
                given_at: Some(now),
                valid_until: Some(prost_types::Timestamp {
                    seconds: now.seconds + 86_400 * 30,
                    nanos: 0,
                }),
                evidence_ref: "E-1".into(),
                notice_version: String::new(),
                share_outcome_with_landlord: false,
            }),
        })
        .await
        .expect("enrolled on node A");
    let mut social_b = SocialServicesClient::new(channel(&dir, b.port, "helsinki-social").await);
    let mut alerts = social_b
        .subscribe_alerts(proto::SubscribeAlertsRequest { after_sequence: 0 })
        .await
        .expect("subscribed on node B")
        .into_inner();

    // A report on node A wakes the subscriber on node B at once (NOTIFY), not at the 60 s
    // re-poll the config sets.
    let mut landlord_a = LandlordClient::new(channel(&dir, a.port, "city-housing").await);
    let sent = Instant::now();
    landlord_a
        .report_rent_arrears(report("first"))
        .await
        .expect("accepted on A");
    let first = tokio::time::timeout(Duration::from_secs(5), alerts.next())
        .await
        .expect("woken across nodes")
        .expect("stream open")
        .expect("alert");
    let cross_node = sent.elapsed();
    assert!(
        cross_node < Duration::from_secs(2),
        "cross-node delivery took {cross_node:?}"
    );

    // Writers round-robin over both nodes; node A is killed under them.
    let landlord_b = LandlordClient::new(channel(&dir, b.port, "city-housing").await);
    let mut writers = Vec::new();
    for w in 0..6 {
        let mut client = if w % 2 == 0 {
            landlord_a.clone()
        } else {
            landlord_b.clone()
        };
        writers.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for i in 0..400 {
                let key = format!("w{w}-{i}");
                match client.report_rent_arrears(report(&key)).await {
                    Ok(receipt) => acknowledged.push((key, receipt.into_inner())),
                    Err(_) => break,
                }
            }
            acknowledged
        }));
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut a = a;
    a.child.kill().expect("SIGKILL node A");
    a.child.wait().expect("reaped");
    let mut acknowledged = Vec::new();
    for w in writers {
        acknowledged.extend(w.await.expect("writer"));
    }
    let on_a = acknowledged
        .iter()
        .filter(|(k, _)| k[1..].starts_with(['0', '2', '4']))
        .count();
    assert!(on_a > 0, "node A acknowledged nothing before it died");

    // Node B still serves, and every report acknowledged by either node is there: a retry on B
    // returns its first receipt.
    let mut landlord_b = landlord_b;
    for (key, receipt) in &acknowledged {
        let again = landlord_b
            .report_rent_arrears(report(key))
            .await
            .expect("node B serves the retry")
            .into_inner();
        assert_eq!(
            &again, receipt,
            "acknowledged report {key} was lost or changed"
        );
    }

    // The subscriber on B receives an alert for every acknowledged report, in order, each
    // sequence once. A report node A committed but could not answer before it died is
    // delivered too (its sender will retry and get that receipt), so there may be more.
    let expected = acknowledged.len() + 1;
    let mut seen = BTreeSet::from([first.sequence]);
    let mut last = first.sequence;
    loop {
        let wait = if seen.len() < expected { 10_000 } else { 1_000 };
        let Ok(next) = tokio::time::timeout(Duration::from_millis(wait), alerts.next()).await
        else {
            break;
        };
        let alert = next.expect("stream open").expect("alert");
        assert!(
            alert.sequence > last,
            "out of order or repeated: {}",
            alert.sequence
        );
        last = alert.sequence;
        assert!(
            seen.insert(alert.sequence),
            "sequence {} twice",
            alert.sequence
        );
    }
    assert!(
        seen.len() >= expected,
        "{} alerts for {expected} acknowledged reports",
        seen.len()
    );
    let acked = social_b
        .ack_alerts(proto::AckAlertsRequest {
            up_to_sequence: last,
            sequences: vec![],
        })
        .await
        .expect("acked")
        .into_inner();
    assert_eq!(acked.acknowledged, u64::try_from(seen.len()).expect("fits"));

    // The one ledger, exported from node B, verifies offline against its checkpoints.
    let url = format!("https://127.0.0.1:{}", b.port);
    silta(
        &[
            "audit",
            "export",
            "--out",
            "ledger.jsonl",
            "--url",
            &url,
            "--ca",
            "pki/ca.pem",
            "--cert",
            "pki/dpo-office.pem",
            "--cert-key",
            "pki/dpo-office.key",
        ],
        &dir,
    );
    b.child.kill().expect("stop B");
    let _ = b.child.wait();
    let keys = String::from_utf8(silta(&["keys", "show", "--config", "silta.toml"], &dir).stdout)
        .expect("utf-8");
    let key = keys
        .lines()
        .find_map(|l| l.strip_prefix("ledger checkpoint verifier key: "))
        .expect("keys show prints the checkpoint key")
        .to_owned();
    let verified = silta(&["audit", "verify", "ledger.jsonl", "--key", &key], &dir);
    let said = String::from_utf8_lossy(&verified.stdout);
    assert!(said.starts_with("OK:"), "{said}");
    drop((a, b));
    db.drop_now().await;
}

/// PostgreSQL drops every connection of the gateway for a few seconds: each report is either
/// acknowledged (and then durable) or refused with UNAVAILABLE, never a wrong success; the
/// node recovers by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_gives_unavailable_and_the_node_recovers_by_itself() {
    let Some(db) = TempDatabase::create("a_database_outage").await else {
        return;
    };
    let (_tmp, dir) = setup(&db.url);
    let n = node(&dir);
    wait_listening(n.port).await;
    let mut landlord = LandlordClient::new(channel(&dir, n.port, "city-housing").await);
    landlord
        .report_rent_arrears(report("before"))
        .await
        .expect("serving");

    let db = std::sync::Arc::new(db);
    let outage = tokio::spawn({
        let db = std::sync::Arc::clone(&db);
        async move {
            let end = Instant::now() + Duration::from_secs(3);
            while Instant::now() < end {
                db.terminate_connections().await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    let mut acknowledged = Vec::new();
    let mut unavailable = 0;
    let mut i = 0;
    while !outage.is_finished() {
        i += 1;
        let key = format!("during-{i}");
        match landlord.report_rent_arrears(report(&key)).await {
            Ok(r) => acknowledged.push((key, r.into_inner())),
            Err(e) => {
                assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
                unavailable += 1;
            }
        }
    }
    outage.await.expect("outage task");
    assert!(unavailable > 0, "the outage was not felt");

    // Recovered by itself: new reports succeed, and every acknowledged one is durable.
    let mut recovered = false;
    for _ in 0..100 {
        if landlord.report_rent_arrears(report("after")).await.is_ok() {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "the node did not recover");
    for (key, receipt) in &acknowledged {
        let again = landlord
            .report_rent_arrears(report(key))
            .await
            .expect("retry")
            .into_inner();
        assert_eq!(
            &again, receipt,
            "acknowledged report {key} was lost or changed"
        );
    }
    drop(n);
    if let Ok(db) = std::sync::Arc::try_unwrap(db) {
        db.drop_now().await;
    }
}
