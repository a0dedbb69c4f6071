//! What the process-level tests share: the binary, a free port, a client, a report.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use silta_server::proto::{self, EvictionStage};

/// The `silta` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_silta");
/// A synthetic identity code.
pub const RESIDENT: &str = "150385-9345";

pub fn silta(args: &[&str], dir: &Path) -> std::process::Output {
    let out = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run silta");
    assert!(
        out.status.success() || args[0] == "audit",
        "silta {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

pub async fn wait_listening(port: u16) {
    for _ in 0..300 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("silta serve did not listen on {port}");
}

pub fn pem(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join("pki").join(name)).expect("pem")
}

pub async fn channel(dir: &Path, port: u16, org: &str) -> tonic::transport::Channel {
    silta_server::client::connect(
        ([127, 0, 0, 1], port).into(),
        &pem(dir, "ca.pem"),
        &pem(dir, &format!("{org}.pem")),
        &pem(dir, &format!("{org}.key")),
    )
    .await
    .expect("connect")
}

pub fn report(key: &str) -> proto::ReportRentArrearsRequest {
    proto::ReportRentArrearsRequest {
        idempotency_key: key.into(),
        hetu: RESIDENT.into(),
        tenancy_ref: "T-1".into(),
        arrears_cents: 90_000,
        months_overdue: 2,
        eviction_stage: EvictionStage::Warning.into(),
        landlord_contact_office: "Kallio".into(),
        free_text_note: String::new(),
        purpose: "eviction-prevention".into(),
        legal_basis: "gdpr-6-1-a-consent".into(),
    }
}
