//! For tests: a throw-away PostgreSQL database.
//!
//! Tests that need PostgreSQL read its server URL from `SILTA_TEST_POSTGRES_URL` (for example
//! `postgres://postgres@127.0.0.1:5432/test`). Unset, they skip with a visible message; set,
//! an unreachable server fails them, so CI cannot pass without PostgreSQL.

use sqlx::Connection;
use sqlx::postgres::PgConnection;

/// The environment variable naming the test server.
pub const POSTGRES_URL_VAR: &str = "SILTA_TEST_POSTGRES_URL";

/// A database created for one test and dropped by [`TempDatabase::drop_now`].
#[derive(Debug)]
pub struct TempDatabase {
    admin_url: String,
    name: String,
    /// The URL of the new database.
    pub url: String,
}

impl TempDatabase {
    /// Creates a fresh database on the server named by [`POSTGRES_URL_VAR`], or returns `None`
    /// (after saying so on stderr) when it is unset.
    ///
    /// # Panics
    /// When the variable is set and the server cannot be reached: a test that was asked to run
    /// against PostgreSQL must not pass without it.
    pub async fn create(test: &str) -> Option<Self> {
        let Ok(admin_url) = std::env::var(POSTGRES_URL_VAR) else {
            // Straight to stderr, past the test harness's capture, so a skip is never silent.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {test}: set {POSTGRES_URL_VAR} to run it against PostgreSQL"
            );
            return None;
        };
        let name = format!(
            "silta_test_{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        );
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("{POSTGRES_URL_VAR}: cannot connect: {e}"));
        sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
        let _ = admin.close().await;
        // Same server and options, another database: replace the path, keep any `?query`.
        let (address, query) = admin_url
            .split_once('?')
            .map_or((admin_url.as_str(), ""), |(a, q)| (a, q));
        let server = match address.find("://").map(|i| i + 3) {
            Some(start) => match address[start..].find('/') {
                Some(slash) => &address[..start + slash],
                None => address,
            },
            None => address,
        };
        let url = if query.is_empty() {
            format!("{server}/{name}")
        } else {
            format!("{server}/{name}?{query}")
        };
        Some(TempDatabase {
            admin_url,
            name,
            url,
        })
    }

    /// Ends every connection to the database, as a server restart or failover does.
    pub async fn terminate_connections(&self) {
        if let Ok(mut admin) = PgConnection::connect(&self.admin_url).await {
            let _ = sqlx::query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE datname = $1 AND pid <> pg_backend_pid()",
            )
            .bind(&self.name)
            .execute(&mut admin)
            .await;
            let _ = admin.close().await;
        }
    }

    /// Splits the database's roles as production runs them (docs/operations.md, "PostgreSQL
    /// roles"): a new login role owns the database (and so its `public` schema) and may create
    /// roles, and a second login role is for the gateway. Neither is a superuser. The names are
    /// the database's, suffixed; [`TempRoles::drop_now`] drops them (after the database).
    ///
    /// # Panics
    /// When the server refuses to create the roles.
    pub async fn split_roles(&self) -> TempRoles {
        let roles = TempRoles {
            admin_url: self.admin_url.clone(),
            owner: format!("{}_owner", self.name),
            gateway: format!("{}_gw", self.name),
            group: format!("{}_runtime", self.name),
            db_url: self.url.clone(),
        };
        let mut admin = PgConnection::connect(&self.admin_url)
            .await
            .unwrap_or_else(|e| panic!("{POSTGRES_URL_VAR}: cannot connect: {e}"));
        sqlx::raw_sql(&format!(
            "CREATE ROLE {owner} LOGIN CREATEROLE;
             CREATE ROLE {gateway} LOGIN;
             ALTER DATABASE {db} OWNER TO {owner};",
            owner = roles.owner,
            gateway = roles.gateway,
            db = self.name
        ))
        .execute(&mut admin)
        .await
        .unwrap_or_else(|e| panic!("cannot create the test's roles: {e}"));
        let _ = admin.close().await;
        roles
    }

    /// Drops the database, closing any connection still open to it.
    pub async fn drop_now(self) {
        if let Ok(mut admin) = PgConnection::connect(&self.admin_url).await {
            let _ = sqlx::raw_sql(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&mut admin)
            .await;
            let _ = admin.close().await;
        }
    }
}

/// The roles of [`TempDatabase::split_roles`].
#[derive(Debug)]
pub struct TempRoles {
    admin_url: String,
    db_url: String,
    /// The login role that owns the database and migrates it.
    pub owner: String,
    /// The gateway's login role.
    pub gateway: String,
    /// A free name for a `NOLOGIN` group role (created by whoever needs it).
    pub group: String,
}

impl TempRoles {
    /// The test database's URL, connecting as `role` (with `password` if given: the test
    /// server's trust authentication ignores it, which lets tests check errors never show it).
    pub fn url_as(&self, role: &str, password: Option<&str>) -> String {
        let userinfo = match password {
            Some(p) => format!("{role}:{p}@"),
            None => format!("{role}@"),
        };
        let (scheme, rest) = self
            .db_url
            .split_once("://")
            .unwrap_or(("postgres", &self.db_url));
        // Replace whatever user the server URL named: the host starts after the last '@'
        // before the path.
        let path_start = rest.find('/').unwrap_or(rest.len());
        let host_start = rest[..path_start].rfind('@').map_or(0, |at| at + 1);
        format!("{scheme}://{userinfo}{}", &rest[host_start..])
    }

    /// Drops the roles; call after [`TempDatabase::drop_now`], which drops what they own.
    pub async fn drop_now(self) {
        if let Ok(mut admin) = PgConnection::connect(&self.admin_url).await {
            let _ = sqlx::raw_sql(&format!(
                "DROP ROLE IF EXISTS {}; DROP ROLE IF EXISTS {}; DROP ROLE IF EXISTS {};",
                self.gateway, self.group, self.owner
            ))
            .execute(&mut admin)
            .await;
            let _ = admin.close().await;
        }
    }
}
