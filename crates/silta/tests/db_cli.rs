//! `silta db migrate` as an operator runs it: as the schema's owner, granting the gateway's
//! runtime role (docs/operations.md, "PostgreSQL roles"). The PostgreSQL test skips without
//! `SILTA_TEST_POSTGRES_URL`.

use std::process::Command;

use silta_store::testing::TempDatabase;
use silta_store::{PostgresStore, Store};

const BIN: &str = env!("CARGO_BIN_EXE_silta");

#[tokio::test]
async fn db_migrate_as_the_owner_lets_the_gateway_start_as_its_runtime_role() {
    let Some(db) =
        TempDatabase::create("db_migrate_as_the_owner_lets_the_gateway_start_as_its_runtime_role")
            .await
    else {
        return;
    };
    let roles = db.split_roles().await;
    let out = Command::new(BIN)
        .args(["db", "migrate", "--runtime-role", &roles.gateway])
        .env("SILTA_MIGRATE_URL", roles.url_as(&roles.owner, None))
        .output()
        .expect("run silta db migrate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("runtime privileges granted to {}", roles.gateway)),
        "{stdout}"
    );
    PostgresStore::open(&roles.url_as(&roles.gateway, None))
        .await
        .expect("the gateway's role starts on the schema the owner migrated")
        .close()
        .await;
    db.drop_now().await;
    roles.drop_now().await;
}

#[test]
fn db_migrate_never_shows_the_urls_password() {
    // Nothing listens on port 1: the connection fails, and its error is printed.
    let out = Command::new(BIN)
        .args(["db", "migrate", "--runtime-role", "silta_runtime"])
        .env(
            "SILTA_MIGRATE_URL",
            "postgres://owner:pw-never-shown@127.0.0.1:1/silta",
        )
        .output()
        .expect("run silta db migrate");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stderr.is_empty());
    assert!(!stderr.contains("pw-never-shown"), "{stderr}");
    assert!(!stdout.contains("pw-never-shown"), "{stdout}");
}
