//! `silta audit subject` without an identity code: refused before anything is asked of the
//! gateway (an empty code would ask for every resident's entries).

use std::io::Write;
use std::process::{Command, Stdio};

#[test]
fn a_disclosure_report_without_an_identity_code_is_refused() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_silta"))
        // No gateway listens there: the refusal must come first.
        .args(["audit", "subject", "--url", "https://127.0.0.1:9"])
        .env_remove("SILTA_URL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("silta runs");
    // Just Enter at the prompt.
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"\n")
        .expect("write");
    let out = child.wait_with_output().expect("silta ends");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no identity code given"), "{stderr}");
}
