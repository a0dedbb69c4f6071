//! `silta policy`: the repository's set passes, each broken example fails with file, line and
//! reason, and docs/policies.md shows the table the code generates.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn silta(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_silta"))
        .args(args)
        .current_dir(repo())
        .output()
        .expect("silta runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_repository_policies_pass_the_check() {
    let (code, out, err) = silta(&["policy", "check", "policies"]);
    assert_eq!(code, 0, "{err}");
    for flow in [
        "rent-arrears",
        "eviction-stage",
        "disturbance-notice",
        "eviction-enforcement-notice",
        "support-notice",
    ] {
        assert!(out.contains(flow), "{flow} missing from:\n{out}");
    }
}

#[test]
fn each_broken_example_is_refused_with_file_line_and_reason() {
    for (dir, file, needle) in [
        ("unknown-attribute", "principles.cedar", "declared_purpose"),
        (
            "type-error",
            "landlord-to-social-services.cedar",
            "not compatible",
        ),
        (
            "undeclared-field",
            "flows.toml",
            "undeclared field \"tenant_phone\"",
        ),
        (
            "unknown-purpose",
            "flows.toml",
            "unknown purpose \"tenant-screening\"",
        ),
    ] {
        let path = format!("tests/policies/broken/{dir}");
        let (code, _, err) = silta(&["policy", "check", &path]);
        assert_eq!(code, 1, "{dir}: {err}");
        let line = err
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{dir}: no line names {needle:?}:\n{err}"));
        let located = format!("{path}/{file}:");
        assert!(line.trim_start().starts_with(&located), "{dir}: {line}");
        let position = line.trim_start()[located.len()..].split(':').next();
        assert!(
            position.is_some_and(|n| n.parse::<u32>().is_ok()),
            "{dir}: no line number in {line}"
        );
    }
}

#[test]
fn explain_names_the_deciding_policy() {
    let (code, out, _) = silta(&[
        "policy",
        "explain",
        "--flow",
        "rent-arrears",
        "--from",
        "city-housing",
        "--consent",
        "withdrawn",
    ]);
    assert_eq!(code, 3, "{out}");
    assert!(out.starts_with("DENY"), "{out}");
    assert!(out.contains("consent-withdrawn"), "{out}");
    let (code, out, _) = silta(&[
        "policy",
        "explain",
        "--flow",
        "eviction-enforcement-notice",
        "--from",
        "city-housing",
        "--consent",
        "absent",
        "--stage",
        "enforcement_scheduled",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("eviction-enforcement-notice-statutory"),
        "{out}"
    );
}

#[test]
fn docs_policies_md_holds_the_generated_table() {
    let (code, table, err) = silta(&["policy", "check", "policies", "--markdown"]);
    assert_eq!(code, 0, "{err}");
    let doc = std::fs::read_to_string(repo().join("docs/policies.md")).expect("docs/policies.md");
    assert!(
        doc.contains(table.trim()),
        "docs/policies.md is out of date: paste the output of `silta policy check policies --markdown`:\n{table}"
    );
}

#[test]
fn the_built_in_set_is_every_file_of_the_policy_directory() {
    let mut on_disk: Vec<String> = std::fs::read_dir(repo().join("policies"))
        .expect("policies/")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".cedar") || n == "flows.toml" || n == "schema.cedarschema")
        .collect();
    let mut built_in: Vec<String> = silta_core::policy::BUILTIN_FILES
        .iter()
        .map(|(n, _)| (*n).to_owned())
        .collect();
    on_disk.sort();
    built_in.sort();
    assert_eq!(on_disk, built_in, "list new policy files in BUILTIN_FILES");
}
