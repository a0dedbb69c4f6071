//! The SQLite store's files hold the ledger and the pseudonymised case data: only the
//! gateway's user may read them (mode 0600), and a database that others may read is refused
//! until the operator fixes it or says so (`store.allow_permissive_file_modes`).

#![cfg(unix)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use silta_core::audit::{AuditRecord, Outcome};
use silta_core::{Caller, OrgId, Role};
use silta_store::{SqliteOptions, SqliteStore, Store};
use time::OffsetDateTime;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn beside(path: &Path, suffix: &str) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    name.into()
}

async fn append_one(store: &SqliteStore) {
    let caller = Caller {
        org: OrgId::new("landlord-1").expect("valid org"),
        role: Role::Landlord,
    };
    let mut tx = store.begin().await.expect("begin");
    tx.append_audit(&AuditRecord::new(
        OffsetDateTime::now_utc(),
        "req",
        &caller,
        "Test",
        Outcome::Allow,
        "x",
    ))
    .await
    .expect("append");
    tx.commit().await.expect("commit");
}

#[tokio::test]
async fn sqlite_files_are_created_readable_by_their_owner_only() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("silta.db");
    let store = SqliteStore::open(&path).await.expect("open");
    append_one(&store).await;
    // While the store is open: the write-ahead log and its index exist.
    for file in [path.clone(), beside(&path, "-wal"), beside(&path, "-shm")] {
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
    store.close().await;
}

#[tokio::test]
async fn an_existing_world_readable_database_is_refused_unless_allowed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("silta.db");
    let store = SqliteStore::open(&path).await.expect("open");
    append_one(&store).await;
    store.close().await;
    // As a release before this one left it (created under umask 022).
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let err = SqliteStore::open(&path)
        .await
        .expect_err("a database others may read is refused");
    let message = err.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(
        message.contains(&format!("chmod 600 {}", path.display())),
        "{message}"
    );
    assert!(
        message.contains("store.allow_permissive_file_modes"),
        "{message}"
    );
    let store = SqliteStore::open_with(
        &path,
        SqliteOptions::default().allow_permissive_file_modes(true),
    )
    .await
    .expect("accepted when the operator allows it");
    assert_eq!(store.ledger_head().await.expect("head").size, 1);
    store.close().await;
    // After the fix the default opens it again.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    SqliteStore::open(&path).await.expect("open").close().await;
}
