//! PostgreSQL roles: who migrates the schema, and what the gateway may do with it at run time.
//!
//! The ledger's append-only triggers stop only a role that cannot switch them off, and a
//! table's owner can (`ALTER TABLE audit DISABLE TRIGGER …`, or `TRUNCATE` after that). So a
//! production database has two roles: an **owner** that holds the schema and runs the
//! migrations (`silta db migrate --url OWNER_URL --runtime-role ROLE`, [`migrate`]), and a
//! **runtime** role for the gateway holding only the row privileges of
//! [`RUNTIME_PRIVILEGES`]. At start-up the gateway migrates only a schema it owns (one role
//! owning everything, as tests and `silta demo` run); otherwise it checks that the schema is
//! current and that it holds those privileges, and refuses to start if not.

use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::PgPool;

use crate::{Result, StoreError};

/// Every table the gateway's queries touch, with the privileges those queries need and no
/// more: no TRUNCATE, REFERENCES or TRIGGER anywhere, and the ledger's tables (`audit`,
/// `ledger_nodes`, `checkpoints`, `key_handovers`) are read and appended, never changed.
pub const RUNTIME_PRIVILEGES: &[(&str, &[&str])] = &[
    // New consents supersede the active one; withdrawal; `silta keys promote` re-keys rows;
    // retention deletes consents that ended.
    ("consents", &["SELECT", "INSERT", "UPDATE", "DELETE"]),
    // Retention deletes report rows once no retry can arrive.
    ("reports", &["SELECT", "INSERT", "DELETE"]),
    // `silta keys promote` re-keys the cases' pseudonyms; a case's last message moves its
    // `last_message_at`; retention deletes cases that ended.
    ("cases", &["SELECT", "INSERT", "UPDATE", "DELETE"]),
    // Each recipient's last alert sequence number, counted up by an upsert.
    ("alert_sequences", &["SELECT", "INSERT", "UPDATE"]),
    // Acknowledgement (UPDATE); withdrawal's purge and retention's purge (DELETE).
    ("alerts", &["SELECT", "INSERT", "UPDATE", "DELETE"]),
    ("audit", &["SELECT", "INSERT"]),
    ("ledger_nodes", &["SELECT", "INSERT"]),
    ("checkpoints", &["SELECT", "INSERT"]),
    // The pseudonym key version in use, set by an upsert on promotion.
    ("key_state", &["SELECT", "INSERT", "UPDATE"]),
    ("key_handovers", &["SELECT", "INSERT"]),
    // Statistics counters: upserted with each event; `silta stats rebuild` replaces the ones
    // the ledger implies (DELETE).
    ("stat_cells", &["SELECT", "INSERT", "UPDATE", "DELETE"]),
    // Start-up compares the schema's applied migrations with the ones it knows.
    ("_sqlx_migrations", &["SELECT"]),
];

/// Sequences the gateway draws from (`alerts.id` is a `BIGSERIAL`): `nextval` needs USAGE.
pub const RUNTIME_SEQUENCES: &[&str] = &["alerts_id_seq"];

/// The advisory lock key that serialises `silta db migrate`'s grants (ASCII "silta-gr").
const GRANT_LOCK: i64 = 0x7369_6c74_612d_6772;

/// The command an operator runs to migrate as the owner, as errors name it.
const MIGRATE_COMMAND: &str = "silta db migrate --url OWNER_URL --runtime-role ROLE";

/// The schema's migrations, as this release knows them.
pub(crate) fn migrator() -> Migrator {
    let mut migrator = sqlx::migrate!("./migrations/postgres");
    // Migrations keep the previous version's queries working (they add tables, columns and
    // indexes, or drop only indexes no query names), so a node of the previous version may
    // restart after a newer node migrated the shared database (a rolling upgrade or a
    // rollback): it ignores the migrations it does not know instead of refusing to start.
    migrator.set_ignore_missing(true);
    migrator
}

/// Brings the schema up to date for the gateway, or says why it cannot start on it.
///
/// A role that owns the schema (or may create it, on an empty database) migrates it, as
/// before roles were split. Any other role starts only on a current schema and only with every
/// privilege of [`RUNTIME_PRIVILEGES`]; otherwise the error names `silta db migrate`.
pub(crate) async fn prepare_for_gateway(pool: &PgPool) -> Result<()> {
    let migrator = migrator();
    let role: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(pool)
        .await?;
    let owner = owns_schema(pool).await?;
    if !owner && !schema_exists(pool).await? {
        return Err(StoreError::Setup(format!(
            "the database has no silta schema and the role {role} may not create one: run \
             `{MIGRATE_COMMAND}` as the schema's owner first (docs/operations.md, \
             \"PostgreSQL roles\")"
        )));
    }
    if !owner && !migrations_readable(pool).await? {
        return Err(missing_privileges_error(
            &role,
            &["SELECT on _sqlx_migrations".to_owned()],
        ));
    }
    if let Some(behind) = pending(pool, &migrator).await? {
        if !owner {
            return Err(StoreError::Setup(format!(
                "the database schema is behind this release ({behind}) and the role {role} does \
                 not own it, so it cannot migrate it: run `{MIGRATE_COMMAND}` as the schema's \
                 owner first (docs/operations.md, \"PostgreSQL roles\")"
            )));
        }
        // sqlx serialises concurrent migrators with its own lock, so nodes may start together.
        migrator.run(pool).await?;
    }
    if owner {
        tracing::warn!(
            %role,
            "the gateway's database role owns the schema, so it could disable the ledger's \
             append-only triggers; run it as a runtime role (docs/operations.md, \"PostgreSQL roles\")"
        );
        return Ok(());
    }
    let missing = missing_privileges(pool).await?;
    if missing.is_empty() {
        Ok(())
    } else {
        Err(missing_privileges_error(&role, &missing))
    }
}

/// What [`migrate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Migrated {
    /// The newest migration this release applied or found applied.
    pub schema_version: i64,
    /// The runtime role granted, if one was named.
    pub runtime_role: Option<String>,
    /// Whether that role did not exist and was created (`NOLOGIN`: a group role that the
    /// gateway's login role must be made a member of).
    pub created_role: bool,
}

/// `silta db migrate`: applies pending migrations as the schema's owner (the role of `pool`)
/// and, if `runtime_role` is given, grants it exactly [`RUNTIME_PRIVILEGES`] and
/// [`RUNTIME_SEQUENCES`] (revoking anything else it held on those objects). Idempotent: run
/// after every upgrade, it also grants what new migrations added.
///
/// A runtime role that does not exist is created `NOLOGIN` (which needs `CREATEROLE`). A
/// runtime role that owns the schema, or is a member of its owner, or a superuser, is
/// refused: such a role could disable the ledger's triggers, which is what the split prevents.
pub(crate) async fn migrate(pool: &PgPool, runtime_role: Option<&str>) -> Result<Migrated> {
    let migrator = migrator();
    migrator.run(pool).await?;
    let schema_version = migrator.iter().map(|m| m.version).max().unwrap_or(0);
    let Some(role) = runtime_role else {
        return Ok(Migrated {
            schema_version,
            runtime_role: None,
            created_role: false,
        });
    };
    if role.is_empty() {
        return Err(StoreError::Setup("--runtime-role: empty role name".into()));
    }
    let mut tx = pool.begin().await?;
    // Two migrators at once (an init container in every starting pod) would otherwise collide
    // on the same grants ("tuple concurrently updated"): the second waits for the first.
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(GRANT_LOCK)
        .execute(&mut *tx)
        .await?;
    // The name goes into GRANT statements, which take no bind parameters: quoted by the server.
    let quoted: String = sqlx::query_scalar("SELECT quote_ident($1)")
        .bind(role)
        .fetch_one(&mut *tx)
        .await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
            .bind(role)
            .fetch_one(&mut *tx)
            .await?;
    if !exists {
        sqlx::raw_sql(&format!("CREATE ROLE {quoted} NOLOGIN"))
            .execute(&mut *tx)
            .await
            .map_err(|e| {
                StoreError::Setup(format!(
                    "the runtime role {role} does not exist and could not be created ({e}); \
                     create it first (CREATE ROLE {quoted} NOLOGIN) and make the gateway's login \
                     role a member of it"
                ))
            })?;
    }
    let owns: bool = sqlx::query_scalar(
        "SELECT pg_has_role($1, c.relowner, 'USAGE') FROM pg_class c WHERE c.oid = 'audit'::regclass",
    )
    .bind(role)
    .fetch_one(&mut *tx)
    .await?;
    if owns {
        return Err(StoreError::Setup(format!(
            "the runtime role {role} owns the schema (or is a member of its owner, or a \
             superuser), so the gateway could disable the ledger's append-only triggers: give the \
             schema to another role (docs/operations.md, \"PostgreSQL roles\")"
        )));
    }
    let schema: String = sqlx::query_scalar("SELECT quote_ident(current_schema())")
        .fetch_one(&mut *tx)
        .await?;
    let mut grants = vec![format!("GRANT USAGE ON SCHEMA {schema} TO {quoted}")];
    for (table, privileges) in RUNTIME_PRIVILEGES {
        grants.push(format!("REVOKE ALL ON TABLE {table} FROM {quoted}"));
        grants.push(format!(
            "GRANT {} ON TABLE {table} TO {quoted}",
            privileges.join(", ")
        ));
    }
    for sequence in RUNTIME_SEQUENCES {
        grants.push(format!("REVOKE ALL ON SEQUENCE {sequence} FROM {quoted}"));
        grants.push(format!("GRANT USAGE ON SEQUENCE {sequence} TO {quoted}"));
    }
    for grant in grants {
        sqlx::raw_sql(&grant).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(Migrated {
        schema_version,
        runtime_role: Some(role.to_owned()),
        created_role: !exists,
    })
}

/// Whether the connected role may migrate: it owns the migrations table (or is a member of
/// its owner, or a superuser), or, on an empty database, may create tables.
async fn owns_schema(pool: &PgPool) -> Result<bool> {
    Ok(sqlx::query_scalar(
        "SELECT CASE WHEN to_regclass('_sqlx_migrations') IS NULL
                     THEN has_schema_privilege(current_schema(), 'CREATE')
                     ELSE (SELECT pg_has_role(current_user, c.relowner, 'USAGE') FROM pg_class c
                           WHERE c.oid = to_regclass('_sqlx_migrations'))
                END",
    )
    .fetch_one(pool)
    .await?)
}

/// Whether any migration was ever applied (the migrations table exists).
pub(crate) async fn schema_exists(pool: &PgPool) -> Result<bool> {
    Ok(
        sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
            .fetch_one(pool)
            .await?,
    )
}

/// Whether the connected role can read which migrations were applied (the table exists).
async fn migrations_readable(pool: &PgPool) -> Result<bool> {
    Ok(
        sqlx::query_scalar(
            "SELECT has_table_privilege(current_user, '_sqlx_migrations', 'SELECT')",
        )
        .fetch_one(pool)
        .await?,
    )
}

/// `None` if every migration this release knows is applied, unchanged; otherwise what is
/// behind, for the error. A changed or failed migration is an error, as `Migrator::run` has it.
async fn pending(pool: &PgPool, migrator: &Migrator) -> Result<Option<String>> {
    if !schema_exists(pool).await? {
        return Ok(Some("no migration applied".into()));
    }
    let applied: Vec<(i64, Vec<u8>, bool)> =
        sqlx::query_as("SELECT version, checksum, success FROM _sqlx_migrations")
            .fetch_all(pool)
            .await?;
    let mut missing = Vec::new();
    for m in migrator.iter() {
        match applied.iter().find(|(v, _, _)| *v == m.version) {
            None => missing.push(m.version.to_string()),
            Some((_, _, false)) => return Err(MigrateError::Dirty(m.version).into()),
            Some((_, checksum, _)) if *checksum != *m.checksum => {
                return Err(MigrateError::VersionMismatch(m.version).into());
            }
            Some(_) => {}
        }
    }
    Ok((!missing.is_empty()).then(|| format!("migrations {} not applied", missing.join(", "))))
}

/// The privileges of [`RUNTIME_PRIVILEGES`] and [`RUNTIME_SEQUENCES`] the connected role lacks,
/// as "PRIVILEGE on OBJECT".
pub(crate) async fn missing_privileges(pool: &PgPool) -> Result<Vec<String>> {
    let mut missing = Vec::new();
    let schema_usage: bool =
        sqlx::query_scalar("SELECT has_schema_privilege(current_schema(), 'USAGE')")
            .fetch_one(pool)
            .await?;
    if !schema_usage {
        missing.push("USAGE on the schema".to_owned());
    }
    for (table, privileges) in RUNTIME_PRIVILEGES {
        for privilege in *privileges {
            let held: bool = sqlx::query_scalar("SELECT has_table_privilege(current_user, $1, $2)")
                .bind(table)
                .bind(privilege)
                .fetch_one(pool)
                .await?;
            if !held {
                missing.push(format!("{privilege} on {table}"));
            }
        }
    }
    for sequence in RUNTIME_SEQUENCES {
        let held: bool =
            sqlx::query_scalar("SELECT has_sequence_privilege(current_user, $1, 'USAGE')")
                .bind(sequence)
                .fetch_one(pool)
                .await?;
        if !held {
            missing.push(format!("USAGE on {sequence}"));
        }
    }
    Ok(missing)
}

fn missing_privileges_error(role: &str, missing: &[String]) -> StoreError {
    StoreError::Setup(format!(
        "the database role {role} lacks privileges the gateway needs ({}): grant them with \
         `silta db migrate --url OWNER_URL --runtime-role {role}` (or a group role {role} is a \
         member of), run as the schema's owner (docs/operations.md, \"PostgreSQL roles\")",
        missing.join(", ")
    ))
}
