//! `silta config check`: a whole configuration checked as `serve` would, without starting.

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_silta");

fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("SILTA_CONFIG")
        .env_remove("SILTA_MASTER_SECRET")
        .output()
        .expect("run silta")
}

/// A working configuration in `dir` (dev PKI, a master secret), with `extra` appended.
fn setup(dir: &Path, extra: &str) {
    assert!(run(dir, &["dev-pki"]).status.success());
    assert!(
        run(dir, &["keys", "generate", "--out", "dev-pki/master.key"])
            .status
            .success()
    );
    std::fs::write(
        dir.join("silta.toml"),
        format!(
            "[secrets]\nmaster_secret_file = \"dev-pki/master.key\"\n\
             [[statutory_recipients]]\norg = \"helsinki-social\"\n\
             hpke_public_key_file = \"dev-pki/helsinki-social.hpke-public.key\"\n{extra}"
        ),
    )
    .expect("write config");
}

fn check(dir: &Path) -> (bool, String, String) {
    let out = run(dir, &["config", "check", "--config", "silta.toml"]);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_working_configuration_passes_and_warns_of_a_placeholder_origin() {
    let dir = tempfile::tempdir().expect("temp dir");
    setup(dir.path(), "");
    let (ok, out, err) = check(dir.path());
    assert!(ok, "{out}{err}");
    assert!(out.contains("configuration OK"), "{out}");
    assert!(
        err.contains("ledger.origin is still the placeholder"),
        "{err}"
    );
    // Nothing was started or created: no database.
    assert!(!dir.path().join("silta.db").exists());

    let named = tempfile::tempdir().expect("temp dir");
    setup(
        named.path(),
        "[ledger]\norigin = \"helsinki.fi/silta/audit\"\n",
    );
    let (ok, _, err) = check(named.path());
    assert!(ok && !err.contains("placeholder"), "{err}");
}

#[test]
fn each_broken_part_is_named_as_serve_would_name_it() {
    for (extra, remove, names) in [
        ("[log]\nlevel = \"debgu\"\n", None, "log.level"),
        ("", Some("dev-pki/server.pem"), "server.pem"),
        ("", Some("dev-pki/ca.pem"), "ca.pem"),
        (
            "[policy]\ndir = \"no-such-policies\"\n",
            None,
            "no-such-policies",
        ),
        ("", Some("dev-pki/master.key"), "master_secret_file"),
        (
            "[statistics]\nthreshold = 2\n",
            None,
            "statistics.threshold",
        ),
    ] {
        let dir = tempfile::tempdir().expect("temp dir");
        setup(dir.path(), extra);
        if let Some(file) = remove {
            std::fs::remove_file(dir.path().join(file)).expect("remove");
        }
        let (ok, out, err) = check(dir.path());
        assert!(!ok, "{names}: {out}");
        assert!(err.contains(names), "{names} not named: {err}");
    }
}
