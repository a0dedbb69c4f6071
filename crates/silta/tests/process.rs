//! The real binary as an operator and an auditor use it: `silta serve` killed with SIGKILL in
//! the middle of a load, restarted, and its ledger exported and verified offline by the CLI.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use silta_server::proto;
use silta_server::proto::landlord_client::LandlordClient;
use silta_server::proto::social_services_client::SocialServicesClient;

mod common;
use common::{BIN, RESIDENT, channel, free_port, report, silta, wait_listening};

struct Server {
    child: Child,
}

fn serve(dir: &Path, port: u16) -> Server {
    let child = Command::new(BIN)
        .args(["serve", "--config", "silta.toml"])
        .current_dir(dir)
        .env("SILTA_LISTEN", format!("127.0.0.1:{port}"))
        // Another tool's variable of the same prefix: ignored, with a warning naming it.
        .env("SILTA_OTHER_TOOL_HOME", "/opt/other-tool")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("serve-{port}.log"))).expect("log file"))
        .spawn()
        .expect("spawn silta serve");
    Server { child }
}

fn setup() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().to_path_buf();
    silta(&["dev-pki", "--out", "pki"], &dir);
    silta(&["keys", "generate", "--out", "pki/master.key"], &dir);
    std::fs::write(
        dir.join("silta.toml"),
        "[store]\nurl = \"sqlite://silta.db\"\n[tls]\ncert = \"pki/server.pem\"\nkey = \"pki/server.key\"\n\
         client_ca = \"pki/ca.pem\"\n[secrets]\nmaster_secret_file = \"pki/master.key\"\n[hetu]\n\
         allow_temporary = true\n[ledger]\ncheckpoint_every = 10\ncheckpoint_interval_ms = 500\n\
         [[statutory_recipients]]\norg = \"helsinki-social\"\nhpke_public_key_file = \"pki/helsinki-social.hpke-public.key\"\n",
    )
    .expect("config");
    (tmp, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_load_loses_no_acknowledged_report_and_the_ledger_verifies_offline() {
    let (_tmp, dir) = setup();
    let port = free_port();
    let mut server = serve(&dir, port);
    wait_listening(port).await;
    let mut social = SocialServicesClient::new(channel(&dir, port, "helsinki-social").await);
    let now = prost_types::Timestamp {
        seconds: time::OffsetDateTime::now_utc().unix_timestamp() - 60,
        nanos: 0,
    };
    let until = prost_types::Timestamp {
        seconds: now.seconds + 86_400 * 30,
        nanos: 0,
    };
    social
        .enrol_client(proto::EnrolClientRequest {
            hetu: RESIDENT.into(),
            consent: Some(proto::Consent {
                purpose: "eviction-prevention".into(),
                given_at: Some(now),
                valid_until: Some(until),
                evidence_ref: "E-1".into(),
                notice_version: String::new(),
                share_outcome_with_landlord: false,
            }),
        })
        .await
        .expect("enrolled");

    // Eight writers report as fast as they can; the server is killed under them.
    let landlord = LandlordClient::new(channel(&dir, port, "city-housing").await);
    let mut writers = Vec::new();
    for w in 0..8 {
        let mut client = landlord.clone();
        writers.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for i in 0..10_000 {
                let key = format!("w{w}-{i}");
                match client.report_rent_arrears(report(&key)).await {
                    Ok(receipt) => acknowledged.push((key, receipt.into_inner())),
                    Err(_) => break,
                }
            }
            acknowledged
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    server.child.kill().expect("SIGKILL"); // kill -9: no shutdown, no final checkpoint
    server.child.wait().expect("reaped");
    let mut acknowledged = Vec::new();
    for w in writers {
        acknowledged.extend(w.await.expect("writer"));
    }
    assert!(
        acknowledged.len() > 10,
        "the load ran: {} reports acknowledged",
        acknowledged.len()
    );

    // After a restart every acknowledged report is there: a retry returns its first receipt.
    let port = free_port();
    let server = serve(&dir, port);
    wait_listening(port).await;
    let mut landlord = LandlordClient::new(channel(&dir, port, "city-housing").await);
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
    // Stop cleanly (SIGTERM) so the final checkpoint covers everything.
    let status = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let mut child = server.child;
    assert!(
        child.wait().expect("exit").success(),
        "graceful shutdown exits 0"
    );

    // The auditor: export over mTLS as the DPO, verify offline with the published key.
    let port = free_port();
    let mut server = serve(&dir, port);
    wait_listening(port).await;
    let url = format!("https://127.0.0.1:{port}");
    let pki = |f: &str| format!("pki/{f}");
    let export = silta(
        &[
            "audit",
            "export",
            "--out",
            "ledger.jsonl",
            "--url",
            &url,
            "--ca",
            &pki("ca.pem"),
            "--cert",
            &pki("dpo-office.pem"),
            "--cert-key",
            &pki("dpo-office.key"),
        ],
        &dir,
    );
    assert!(
        export.status.success(),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    server.child.kill().expect("stop");
    let _ = server.child.wait();
    let keys = String::from_utf8(silta(&["keys", "show", "--config", "silta.toml"], &dir).stdout)
        .expect("utf-8");
    let key = keys
        .lines()
        .find_map(|l| l.strip_prefix("ledger checkpoint verifier key: "))
        .expect("keys show prints the checkpoint key")
        .to_owned();
    let verified = silta(&["audit", "verify", "ledger.jsonl", "--key", &key], &dir);
    let said = String::from_utf8_lossy(&verified.stdout);
    assert!(
        verified.status.success() && said.starts_with("OK:"),
        "{said}"
    );
    let exported = std::fs::read_to_string(dir.join("ledger.jsonl")).expect("export");
    assert!(
        !exported.contains(RESIDENT) && !exported.contains("1503859345"),
        "the export holds an identity code"
    );

    // One changed byte in the export is caught, with the entry named.
    let tampered: String = exported
        .lines()
        .map(|l| {
            if l.starts_with("{\"index\":3,") {
                l.replacen("\"entry\":\"A", "\"entry\":\"B", 1)
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(dir.join("tampered.jsonl"), tampered).expect("write");
    let refused = silta(&["audit", "verify", "tampered.jsonl", "--key", &key], &dir);
    let said = String::from_utf8_lossy(&refused.stdout);
    assert!(
        !refused.status.success() && said.starts_with("FAILED:"),
        "{said}"
    );

    // A file that lost its end at a line boundary (its last checkpoint) is caught too, though
    // what is left is consistent.
    let mut lines: Vec<&str> = exported.lines().collect();
    let last_checkpoint = lines
        .iter()
        .rposition(|l| l.starts_with("{\"checkpoint\""))
        .expect("the export ends with a checkpoint");
    lines.remove(last_checkpoint);
    std::fs::write(dir.join("cut.jsonl"), lines.join("\n")).expect("write");
    let refused = silta(&["audit", "verify", "cut.jsonl", "--key", &key], &dir);
    let said = String::from_utf8_lossy(&refused.stdout);
    assert!(
        !refused.status.success() && said.starts_with("FAILED:"),
        "{said}"
    );
}

/// SIGHUP re-reads `policy.dir`: a valid change decides the next request, a broken file is
/// refused with its file and line in the log and the old set keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_policy_directory_and_a_broken_set_keeps_the_old_one() {
    let (_tmp, dir) = setup();
    let policies = dir.join("policies");
    std::fs::create_dir(&policies).expect("policy dir");
    for (name, text) in silta_core::policy::BUILTIN_FILES {
        std::fs::write(policies.join(name), text).expect("policy file");
    }
    let mut config = std::fs::read_to_string(dir.join("silta.toml")).expect("config");
    config.push_str("[policy]\ndir = \"policies\"\n");
    std::fs::write(dir.join("silta.toml"), config).expect("config");
    let port = free_port();
    let mut server = serve(&dir, port);
    wait_listening(port).await;
    let hup = |server: &Server| {
        let status = Command::new("kill")
            .args(["-HUP", &server.child.id().to_string()])
            .status()
            .expect("kill -HUP");
        assert!(status.success());
    };
    let mut landlord = LandlordClient::new(channel(&dir, port, "city-housing").await);
    let mut debt = report("k-1");
    debt.purpose = "debt-collection".into();
    let refused = landlord.report_rent_arrears(debt.clone()).await;
    assert_eq!(
        refused.expect_err("purpose limitation").code(),
        tonic::Code::PermissionDenied
    );

    // The DPO lifts purpose limitation for rent arrears to debt collection (a bad idea, but a
    // visible one): the principle is rewritten to allow that one purpose, and reloaded.
    let principles = policies.join("principles.cedar");
    let text = std::fs::read_to_string(&principles).expect("read");
    let lifted = text.replacen(
        "unless { resource.purpose == resource.flow_purpose };",
        "unless { resource.purpose == resource.flow_purpose || resource.purpose == Purpose::\"debt-collection\" };",
        1,
    );
    std::fs::write(&principles, &lifted).expect("write");
    let landlord_rules = policies.join("landlord-to-social-services.cedar");
    let rules = std::fs::read_to_string(&landlord_rules).expect("read");
    std::fs::write(
        &landlord_rules,
        rules.replacen(
            "  resource.purpose == Purpose::\"eviction-prevention\" &&\n  resource.consent == ConsentState::\"valid\"\n};",
            "  resource.consent == ConsentState::\"valid\"\n};",
            1,
        ),
    )
    .expect("write");
    hup(&server);
    let mut accepted = false;
    for _ in 0..100 {
        debt.idempotency_key = format!("k-{}", uuid_like());
        if landlord.report_rent_arrears(debt.clone()).await.is_ok() {
            accepted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(accepted, "the reloaded set did not decide the next request");

    // A broken file: refused, named in the log, and the lifted set keeps serving.
    std::fs::write(
        &principles,
        format!("{lifted}\n@id(\"broken\")\nforbid (principal, action, resource) when {{ resource.no_such_attribute }};\n"),
    )
    .expect("write");
    hup(&server);
    let log = dir.join(format!("serve-{port}.log"));
    let mut logged = String::new();
    for _ in 0..100 {
        logged = std::fs::read_to_string(&log).unwrap_or_default();
        if logged.contains("policy reload refused") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(logged.contains("policy reload refused"), "{logged}");
    assert!(
        logged.contains("principles.cedar:"),
        "the file is not named: {logged}"
    );
    assert!(logged.contains("no_such_attribute"), "{logged}");
    assert!(
        logged.contains("SILTA_OTHER_TOOL_HOME") && !logged.contains("/opt/other-tool"),
        "the unrelated variable is not named, or its value is: {logged}"
    );
    debt.idempotency_key = "k-after-broken".into();
    landlord
        .report_rent_arrears(debt)
        .await
        .expect("the previous set still serves");
    server.child.kill().expect("stop");
    let _ = server.child.wait();
}

fn uuid_like() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// The gateway's SQLite files and the DPO's ledger export are readable by their owner only
/// (0600, whatever the umask), and a database that others may read stops `silta serve` with
/// the fix, until `store.allow_permissive_file_modes` accepts it.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_and_the_ledger_export_are_private_and_a_readable_database_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let (_tmp, dir) = setup();
    let mode = |name: &str| {
        std::fs::metadata(dir.join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .permissions()
            .mode()
            & 0o777
    };
    let port = free_port();
    let mut server = serve(&dir, port);
    wait_listening(port).await;
    let url = format!("https://127.0.0.1:{port}");
    // A fresh ledger has no checkpoint until the first interval (500 ms here) has passed.
    let mut exported = false;
    for _ in 0..40 {
        let out = silta(
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
        if out.status.success() {
            exported = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(exported, "the export never succeeded");
    for name in [
        "ledger.jsonl",
        "silta.db",
        "silta.db-wal",
        "silta.db-shm",
        "silta.db.lock",
    ] {
        assert_eq!(mode(name), 0o600, "{name}");
    }
    server.child.kill().expect("stop");
    let _ = server.child.wait();

    // As an older release left it.
    std::fs::set_permissions(dir.join("silta.db"), std::fs::Permissions::from_mode(0o644))
        .expect("chmod");
    let mut refused = serve(&dir, port);
    let status = (0..600)
        .find_map(|_| {
            std::thread::sleep(Duration::from_millis(50));
            refused.child.try_wait().expect("wait")
        })
        .expect("silta serve exits on a readable database");
    assert!(!status.success());
    let log = std::fs::read_to_string(dir.join(format!("serve-{port}.log"))).expect("log");
    assert!(
        log.contains("chmod 600") && log.contains("silta.db"),
        "{log}"
    );

    let accepted = Command::new(BIN)
        .args(["serve", "--config", "silta.toml"])
        .current_dir(&dir)
        .env("SILTA_LISTEN", format!("127.0.0.1:{port}"))
        .env("SILTA_STORE__ALLOW_PERMISSIVE_FILE_MODES", "true")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn silta serve");
    let mut accepted = Server { child: accepted };
    wait_listening(port).await;
    accepted.child.kill().expect("stop");
    let _ = accepted.child.wait();
}
