//! PostgreSQL roles: the owner migrates, the gateway runs as a role that can append to the
//! ledger but not switch its protection off (docs/operations.md, "PostgreSQL roles"). Needs
//! `SILTA_TEST_POSTGRES_URL` (a superuser, to create the test's roles); skips without it.

use silta_core::audit::{AuditRecord, Outcome};
use silta_core::{Caller, OrgId, Role};
use silta_store::testing::{TempDatabase, TempRoles};
use silta_store::{NewReport, PostgresStore, Store, StoreError};
use time::{Duration, OffsetDateTime};

/// SQLSTATE 42501: insufficient_privilege (also "must be owner of table").
const PERMISSION_DENIED: &str = "42501";

fn caller() -> Caller {
    Caller {
        org: OrgId::new("landlord-1").expect("valid org"),
        role: Role::Landlord,
    }
}

/// A fresh database with split roles, migrated by its owner with the runtime privileges
/// granted to a group role the gateway's login role is a member of.
async fn migrated(test: &str) -> Option<(TempDatabase, TempRoles)> {
    let db = TempDatabase::create(test).await?;
    let roles = db.split_roles().await;
    let migrated =
        PostgresStore::migrate_as_owner(&roles.url_as(&roles.owner, None), Some(&roles.group))
            .await
            .expect("the owner migrates");
    assert!(migrated.created_role, "the group role did not exist yet");
    assert_eq!(migrated.runtime_role.as_deref(), Some(roles.group.as_str()));
    // What an operator does once: the gateway's login role joins the group.
    as_admin(&format!("GRANT {} TO {}", roles.group, roles.gateway)).await;
    Some((db, roles))
}

async fn as_admin(sql: &str) {
    let url = std::env::var(silta_store::testing::POSTGRES_URL_VAR).expect("set");
    let pool = sqlx::PgPool::connect(&url).await.expect("admin");
    sqlx::raw_sql(sql).execute(&pool).await.expect(sql);
    pool.close().await;
}

async fn finish(db: TempDatabase, roles: TempRoles) {
    db.drop_now().await;
    roles.drop_now().await;
}

/// The SQLSTATE of a statement's failure, which must fail.
async fn refused(pool: &sqlx::PgPool, sql: &str) -> String {
    let err = sqlx::raw_sql(sql)
        .execute(pool)
        .await
        .expect_err(&format!("`{sql}` must be refused"));
    err.as_database_error()
        .and_then(|e| e.code().map(|c| c.into_owned()))
        .unwrap_or_else(|| panic!("`{sql}`: not a database error: {err}"))
}

#[tokio::test]
async fn runtime_role_runs_the_store_but_cannot_undo_the_ledgers_protection() {
    let Some((db, roles)) =
        migrated("runtime_role_runs_the_store_but_cannot_undo_the_ledgers_protection").await
    else {
        return;
    };
    let runtime_url = roles.url_as(&roles.gateway, None);
    let store = PostgresStore::open(&runtime_url)
        .await
        .expect("the runtime role starts on a current schema it holds privileges on");
    let now = OffsetDateTime::now_utc();
    let mut tx = store.begin().await.expect("begin");
    tx.insert_report(&NewReport {
        report_id: "r-1",
        landlord: &caller().org,
        idempotency_key: "k-1",
        fingerprint: b"fp",
        received_at: now,
    })
    .await
    .expect("a report is stored");
    let caller = caller();
    for i in 0..3 {
        tx.append_audit(&AuditRecord::new(
            now,
            &format!("req-{i}"),
            &caller,
            "Test",
            Outcome::Allow,
            "x",
        ))
        .await
        .expect("the ledger is appended");
    }
    tx.commit().await.expect("commit");
    let head = store.ledger_head().await.expect("head");
    assert_eq!(head.size, 3);
    let mut tx = store.begin().await.expect("begin");
    tx.append_checkpoint(head.size, &head.root, "note", now)
        .await
        .expect("a checkpoint is appended");
    tx.append_key_handover(head.size, "handover", now)
        .await
        .expect("a key handover is appended");
    // Retention's DELETE and the subscriber's cursor (acknowledgement) need their privileges
    // even when no row matches.
    tx.purge_alerts_before("rent-arrears", now + Duration::days(1), 100)
        .await
        .expect("retention deletes expired alerts");
    tx.ack_alerts(&caller.org, 5, &[], now)
        .await
        .expect("alerts are acknowledged");
    tx.commit().await.expect("commit");
    assert!(store.latest_checkpoint().await.expect("read").is_some());
    assert_eq!(store.key_handovers().await.expect("read").len(), 1);
    store.close().await;

    let gateway = sqlx::PgPool::connect(&runtime_url).await.expect("connect");
    for sql in [
        "ALTER TABLE audit DISABLE TRIGGER audit_no_update",
        "ALTER TABLE audit DISABLE TRIGGER ALL",
        "ALTER TABLE key_handovers DISABLE TRIGGER key_handovers_no_truncate",
        "DROP TRIGGER audit_no_update ON audit",
        "TRUNCATE audit",
        "TRUNCATE ledger_nodes",
        "TRUNCATE checkpoints",
        "TRUNCATE key_handovers",
        "TRUNCATE alerts",
        "TRUNCATE consents",
        "UPDATE audit SET reason = 'rewritten'",
        "DELETE FROM audit",
        "UPDATE ledger_nodes SET hash = hash",
        "DELETE FROM ledger_nodes",
        "DELETE FROM checkpoints",
        "DELETE FROM key_handovers",
        "UPDATE _sqlx_migrations SET success = false",
        "CREATE OR REPLACE FUNCTION silta_refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$",
    ] {
        // Refused for want of privilege, before any trigger would have to.
        assert_eq!(refused(&gateway, sql).await, PERMISSION_DENIED, "{sql}");
    }
    gateway.close().await;
    finish(db, roles).await;
}

#[tokio::test]
async fn key_handovers_cannot_be_truncated_even_by_the_owner() {
    let Some(db) =
        TempDatabase::create("key_handovers_cannot_be_truncated_even_by_the_owner").await
    else {
        return;
    };
    // One role that owns everything, as tests and `silta demo` run: it migrates at start-up.
    let store = PostgresStore::open(&db.url).await.expect("open");
    let mut tx = store.begin().await.expect("begin");
    tx.append_key_handover(0, "handover", OffsetDateTime::now_utc())
        .await
        .expect("append");
    tx.commit().await.expect("commit");
    store.close().await;
    let owner = sqlx::PgPool::connect(&db.url).await.expect("connect");
    let err = sqlx::raw_sql("TRUNCATE key_handovers")
        .execute(&owner)
        .await
        .expect_err("TRUNCATE key_handovers must be refused");
    assert!(err.to_string().contains("append-only"), "{err}");
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM key_handovers")
        .fetch_one(&owner)
        .await
        .expect("count");
    assert_eq!(left, 1);
    owner.close().await;
    db.drop_now().await;
}

#[tokio::test]
async fn a_runtime_role_does_not_migrate_a_schema_behind_and_names_silta_db_migrate() {
    let Some((db, roles)) =
        migrated("a_runtime_role_does_not_migrate_a_schema_behind_and_names_silta_db_migrate")
            .await
    else {
        return;
    };
    // The schema as the previous release left it: migration 0005 not applied.
    let owner = sqlx::PgPool::connect(&roles.url_as(&roles.owner, None))
        .await
        .expect("connect");
    sqlx::raw_sql(
        "DROP TRIGGER key_handovers_no_truncate ON key_handovers;
         DELETE FROM _sqlx_migrations WHERE version = 5;",
    )
    .execute(&owner)
    .await
    .expect("roll back 0005");
    owner.close().await;
    // Trust authentication ignores the password, which lets this check it never shows.
    let runtime_url = roles.url_as(&roles.gateway, Some("s3cret-pw"));
    let err = PostgresStore::open(&runtime_url)
        .await
        .expect_err("a runtime role cannot migrate");
    let message = err.to_string();
    assert!(matches!(err, StoreError::Setup(_)), "{message}");
    assert!(message.contains("silta db migrate"), "{message}");
    assert!(message.contains("migrations 5 not applied"), "{message}");
    assert!(!message.contains("s3cret-pw"), "{message}");
    // The owner migrates; the runtime role, already granted, starts.
    PostgresStore::migrate_as_owner(&roles.url_as(&roles.owner, None), Some(&roles.group))
        .await
        .expect("the owner migrates");
    PostgresStore::open(&runtime_url)
        .await
        .expect("starts on the migrated schema")
        .close()
        .await;
    finish(db, roles).await;
}

#[tokio::test]
async fn a_role_without_the_runtime_grants_is_refused_with_what_it_lacks() {
    let Some(db) =
        TempDatabase::create("a_role_without_the_runtime_grants_is_refused_with_what_it_lacks")
            .await
    else {
        return;
    };
    let roles = db.split_roles().await;
    PostgresStore::migrate_as_owner(&roles.url_as(&roles.owner, None), None)
        .await
        .expect("the owner migrates, granting nobody");
    // SELECT on the migrations table only: the gateway gets as far as the privilege check.
    let owner = sqlx::PgPool::connect(&roles.url_as(&roles.owner, None))
        .await
        .expect("connect");
    sqlx::raw_sql(&format!(
        "GRANT SELECT ON _sqlx_migrations TO {}",
        roles.gateway
    ))
    .execute(&owner)
    .await
    .expect("grant");
    owner.close().await;
    let err = PostgresStore::open(&roles.url_as(&roles.gateway, None))
        .await
        .expect_err("no privileges, no start");
    let message = err.to_string();
    assert!(message.contains("INSERT on audit"), "{message}");
    assert!(message.contains("USAGE on alerts_id_seq"), "{message}");
    assert!(message.contains("silta db migrate"), "{message}");
    assert!(!message.contains("UPDATE on audit"), "{message}");
    finish(db, roles).await;
}

#[tokio::test]
async fn the_schemas_owner_cannot_be_the_runtime_role() {
    let Some(db) = TempDatabase::create("the_schemas_owner_cannot_be_the_runtime_role").await
    else {
        return;
    };
    let roles = db.split_roles().await;
    let owner_url = roles.url_as(&roles.owner, None);
    let err = PostgresStore::migrate_as_owner(&owner_url, Some(&roles.owner))
        .await
        .expect_err("the owner as runtime role defeats the split");
    assert!(err.to_string().contains("owns the schema"), "{err}");
    finish(db, roles).await;
}

/// docs/operations.md, "Moving an existing deployment": the gateway's role owned everything;
/// after `REASSIGN OWNED` and `silta db migrate --runtime-role`, it runs with row privileges
/// only and the ledger it wrote before is intact.
#[tokio::test]
async fn an_existing_single_role_deployment_moves_to_two_roles() {
    let Some(db) =
        TempDatabase::create("an_existing_single_role_deployment_moves_to_two_roles").await
    else {
        return;
    };
    let roles = db.split_roles().await;
    // As the documentation had it before: the gateway's role owns the database.
    as_admin(&format!(
        "ALTER DATABASE {} OWNER TO {}",
        db_name(&db),
        roles.gateway
    ))
    .await;
    let gateway_url = roles.url_as(&roles.gateway, None);
    let store = PostgresStore::open(&gateway_url)
        .await
        .expect("the owning role migrates at start-up");
    let mut tx = store.begin().await.expect("begin");
    tx.append_audit(&AuditRecord::new(
        OffsetDateTime::now_utc(),
        "before",
        &caller(),
        "Test",
        Outcome::Allow,
        "x",
    ))
    .await
    .expect("append");
    tx.commit().await.expect("commit");
    store.close().await;

    // The move, as a superuser in the database.
    let admin = sqlx::PgPool::connect(&db.url).await.expect("admin");
    sqlx::raw_sql(&format!(
        "REASSIGN OWNED BY {gw} TO {owner}",
        gw = roles.gateway,
        owner = roles.owner
    ))
    .execute(&admin)
    .await
    .expect("reassign");
    admin.close().await;
    PostgresStore::migrate_as_owner(&roles.url_as(&roles.owner, None), Some(&roles.group))
        .await
        .expect("the new owner grants the runtime role");
    as_admin(&format!("GRANT {} TO {}", roles.group, roles.gateway)).await;

    let store = PostgresStore::open(&gateway_url)
        .await
        .expect("the gateway starts as a runtime role");
    let mut tx = store.begin().await.expect("begin");
    tx.append_audit(&AuditRecord::new(
        OffsetDateTime::now_utc(),
        "after",
        &caller(),
        "Test",
        Outcome::Allow,
        "x",
    ))
    .await
    .expect("append");
    tx.commit().await.expect("commit");
    assert_eq!(store.ledger_head().await.expect("head").size, 2);
    store.close().await;
    let gateway = sqlx::PgPool::connect(&gateway_url).await.expect("connect");
    for sql in [
        "ALTER TABLE audit DISABLE TRIGGER audit_no_update",
        "TRUNCATE key_handovers",
        "DELETE FROM audit",
    ] {
        assert_eq!(refused(&gateway, sql).await, PERMISSION_DENIED, "{sql}");
    }
    gateway.close().await;
    finish(db, roles).await;
}

fn db_name(db: &TempDatabase) -> &str {
    db.url
        .rsplit('/')
        .next()
        .and_then(|tail| tail.split('?').next())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_runtime_role_does_not_create_the_schema_of_an_empty_database() {
    let Some(db) =
        TempDatabase::create("a_runtime_role_does_not_create_the_schema_of_an_empty_database")
            .await
    else {
        return;
    };
    let roles = db.split_roles().await;
    // PostgreSQL 15's default; older servers let everyone create in `public`.
    let admin = sqlx::PgPool::connect(&db.url).await.expect("admin");
    sqlx::raw_sql("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        .execute(&admin)
        .await
        .expect("revoke");
    admin.close().await;
    let err = PostgresStore::open(&roles.url_as(&roles.gateway, None))
        .await
        .expect_err("nothing to run on, nothing it may create");
    let message = err.to_string();
    assert!(message.contains("no silta schema"), "{message}");
    assert!(message.contains("silta db migrate"), "{message}");
    finish(db, roles).await;
}
