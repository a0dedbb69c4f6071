//! silta's gRPC gateway: mTLS identity, the landlord and social-services services, the group
//! committer and alert delivery.
//!
//! **Architecture invariant:** this crate orders steps and moves bytes; every decision is a
//! call into `silta-core`, every write goes through a `silta-store` transaction. The request
//! path is in [`gateway`], one function per RPC, readable top to bottom.
//!
//! **API boundary:** [`start`] runs a gateway on a listener and returns a handle to stop it.

#![forbid(unsafe_code)]

pub mod actor;
pub mod audit;
mod checkpoints;
pub mod client;
pub mod codec;
mod commit;
pub mod config;
pub mod connections;
pub mod consents;
mod console;
mod delivery;
pub mod devpki;
pub mod gateway;
pub mod identity;
pub mod jwks;
pub mod keys;
mod ledger_proofs;
pub mod metrics;
pub mod policy_source;
mod proto_debug;
pub mod retention;
pub mod sealing;
pub mod services;
pub mod statistics;
pub mod stats_render;
pub mod status;
pub mod telemetry;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use silta_core::consent::ReceiptSigner;
use silta_core::{HetuRules, Keyring, Pseudonymiser};
use silta_store::{PostgresStore, SqliteOptions, SqliteStore, Store, StoreError};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::{Config, StoreConfig};

/// How long shutdown waits for open connections, and then for the last commits.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The generated protobuf types and gRPC stubs of `silta.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("silta.v1");

    /// The encoded `FileDescriptorSet` of the contract, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/silta_descriptor.bin"));

    /// The encoded descriptors of `google.rpc`'s status and error details (vendored in
    /// `proto/google/rpc/`), served by reflection so that tools such as grpcurl print an
    /// error's `BadRequest` and `ErrorInfo` rather than opaque bytes.
    pub const GOOGLE_RPC_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/google_rpc_descriptor.bin"));

    include!(concat!(env!("OUT_DIR"), "/served_methods.rs"));
}

/// The standard services served beside silta's own, by method path.
const STANDARD_METHODS: &[&str] = &[
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// The path of an RPC this gateway serves, or `None`. A path is a request value the caller
/// chose: one built from an identity code by mistake (`/silta.v1.Landlord/030303A933X`) must
/// never reach a span, a log line or an exporter, so only the exact paths silta serves are
/// recorded, never anything filtered by its shape.
pub fn served_method(path: &str) -> Option<&'static str> {
    proto::SILTA_METHODS
        .iter()
        .chain(STANDARD_METHODS)
        .find(|m| **m == path)
        .copied()
}

/// Why the gateway could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// TLS files or settings are wrong.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The store could not be opened.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The configuration names something unsupported.
    #[error("configuration: {0}")]
    Config(String),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// A part of the gateway failed while running.
    #[error("internal: {0}")]
    Internal(String),
    /// The policy set is invalid (every problem, one per line, with file and line).
    #[error("the policy set is invalid; the gateway does not start:\n{0}")]
    Policy(String),
    /// Reflection could not be built from the descriptor.
    #[error("reflection: {0}")]
    Reflection(String),
}

/// A running gateway.
pub struct RunningGateway {
    /// The address it listens on.
    pub local_addr: SocketAddr,
    /// The receipt-signing public key.
    pub receipt_public_key: Vec<u8>,
    /// The verifier key of the ledger's checkpoints (C2SP signed-note form), of the key
    /// version in use when the gateway started (a promotion while it runs moves to the next).
    pub checkpoint_verifier_key: String,
    /// Reloads the policy set (what SIGHUP does).
    pub reloader: PolicyReloader,
    /// Where `/metrics` is served, when `admin.listen` is set.
    pub admin_addr: Option<SocketAddr>,
    /// Where the DPO console is served (HTTPS), when `console.listen` is set.
    pub console_addr: Option<SocketAddr>,
    stop: CancellationToken,
    server: JoinHandle<Result<(), ServeError>>,
}

/// Reloads a running gateway's policy set.
#[derive(Clone)]
pub struct PolicyReloader {
    gw: Arc<gateway::Gateway>,
    tls: Arc<tls::TlsHandle>,
    connections: Arc<connections::Registry>,
}

impl PolicyReloader {
    /// Re-reads and validates the policy set; swaps it in only if valid (the old set keeps
    /// serving otherwise). Both outcomes are recorded in the ledger. Returns the new digest.
    pub async fn reload(&self) -> Result<String, silta_core::policy::PolicyErrors> {
        self.gw.reload_policies().await
    }

    /// Re-reads the server certificate and key, the client CA and the CRLs; the next
    /// handshake uses them, and every open connection whose client certificate they no longer
    /// accept (revoked, or from a CA no longer trusted) is closed. If any file is wrong the old
    /// configuration keeps serving. Both outcomes are logged and recorded in the ledger.
    /// Returns how many connections were closed.
    pub async fn reload_tls(&self) -> Result<usize, tls::TlsError> {
        let result = self
            .tls
            .reload()
            .map(|()| self.connections.recheck(&*self.tls.verifier()));
        let (outcome, reason) = match &result {
            Ok(_) => (silta_core::audit::Outcome::Allow, "tls-files-reloaded"),
            Err(_) => (
                silta_core::audit::Outcome::Deny,
                "tls-files-invalid-old-kept",
            ),
        };
        self.gw
            .record_gateway_event("ReloadTls", outcome, reason)
            .await;
        match &result {
            // Each closed connection is counted by its own task, as
            // `silta_connections_closed_total{reason="revoked"}`.
            Ok(closed) => {
                tracing::info!(
                    closed_connections = closed,
                    "TLS certificate, client CA and CRLs reloaded; open connections whose client \
                     certificate is no longer accepted were closed"
                )
            }
            Err(e) => {
                tracing::error!(error = %e, "TLS reload refused; the previous files keep serving")
            }
        }
        result
    }
}

impl RunningGateway {
    /// Stops accepting, ends subscriptions, finishes in-flight commits and closes the store.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        self.stop.cancel();
        self.wait().await
    }

    /// Waits until the gateway stops (after [`RunningGateway::stop_token`] is cancelled).
    pub async fn wait(self) -> Result<(), ServeError> {
        match self.server.await {
            Ok(r) => r,
            Err(e) => Err(ServeError::Internal(format!("server task failed: {e}"))),
        }
    }

    /// The token that stops the gateway when cancelled.
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }
}

/// Opens the store that `[store]` names: `url` is `sqlite://PATH` (one node) or
/// `postgres://…` (several nodes sharing one database).
pub async fn open_store(store: &StoreConfig) -> Result<Arc<dyn Store>, ServeError> {
    let url = store.url.as_str();
    if sqlite_file(url).is_some() {
        let options =
            SqliteOptions::default().allow_permissive_file_modes(store.allow_permissive_file_modes);
        Ok(Arc::new(SqliteStore::open_url_with(url, options).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PostgresStore::open(url).await?))
    } else {
        Err(ServeError::Config(format!(
            "store.url: unsupported scheme (expected sqlite://PATH or postgres://USER@HOST/DB); got {}",
            url.split("://").next().unwrap_or_default()
        )))
    }
}

/// Opens the store that `[store]` names for a command that works on an existing one (`silta
/// keys show` reads it, `silta keys promote` moves its rows): a store that is not there is an
/// error naming `store.url`, never created and migrated, so a mistyped URL is caught rather
/// than answered from a new, empty store.
pub async fn open_existing_store(store: &StoreConfig) -> Result<Arc<dyn Store>, ServeError> {
    let url = store.url.as_str();
    if let Some(path) = sqlite_file(url) {
        let missing = |why: &str| {
            ServeError::Config(format!(
                "store.url: {why}; this command only works on an existing store and creates \
                 none: check store.url (a relative path is resolved against the working \
                 directory), or create the store with `silta db migrate` or by starting \
                 `silta serve`"
            ))
        };
        if path.is_empty() || path == ":memory:" {
            return Err(missing("names no database file"));
        }
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_file() && meta.len() > 0 => {}
            Ok(meta) if meta.is_file() => {
                return Err(missing(&format!(
                    "the file {path} is empty, not a silta store"
                )));
            }
            Ok(_) => return Err(missing(&format!("{path} is not a file"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(missing(&format!("there is no database file {path}")));
            }
            Err(e) => return Err(missing(&format!("cannot read {path}: {e}"))),
        }
        return open_store(store).await;
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Arc::new(
            PostgresStore::open_existing(url)
                .await
                .map_err(|e| ServeError::Config(format!("store.url: {e}")))?,
        ));
    }
    open_store(store).await
}

/// `silta db migrate`: applies the store's pending migrations as the schema's owner and, on
/// PostgreSQL, grants `runtime_role` the gateway's runtime privileges (docs/operations.md,
/// "PostgreSQL roles"). Returns what to tell the operator. A SQLite store has no roles: it is
/// migrated (the gateway would do it at start-up too) and a runtime role is refused.
pub async fn migrate_store(url: &str, runtime_role: Option<&str>) -> Result<String, ServeError> {
    if sqlite_file(url).is_some() {
        if runtime_role.is_some() {
            return Err(ServeError::Config(
                "--runtime-role: a SQLite store has no roles; its file's mode (0600) is its \
                 access control"
                    .into(),
            ));
        }
        let store = StoreConfig {
            url: url.to_owned(),
            ..StoreConfig::default()
        };
        open_store(&store).await?.close().await;
        return Ok("SQLite store migrated".into());
    }
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(ServeError::Config(
            "--url: expected postgres://OWNER@HOST/DB or sqlite://PATH".into(),
        ));
    }
    let done = PostgresStore::migrate_as_owner(url, runtime_role).await?;
    Ok(match (&done.runtime_role, done.created_role) {
        (None, _) => format!(
            "schema at version {}; no runtime role granted (--runtime-role ROLE to grant one)",
            done.schema_version
        ),
        (Some(role), false) => format!(
            "schema at version {}; runtime privileges granted to {role}",
            done.schema_version
        ),
        (Some(role), true) => format!(
            "schema at version {}; created the NOLOGIN role {role} and granted it the runtime \
             privileges; make the gateway's login role a member: GRANT {role} TO <login role>",
            done.schema_version
        ),
    })
}

/// The file of a SQLite store URL (`sqlite://PATH` or a bare path), `None` for another store.
fn sqlite_file(url: &str) -> Option<&str> {
    if !url.starts_with("sqlite:") && url.contains("://") {
        return None;
    }
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    Some(path.split('?').next().unwrap_or(path))
}

/// One SQLite database serves one gateway: a second `silta serve` on the same file is refused
/// (several nodes share PostgreSQL instead; `silta keys promote` and other tools that open the
/// database do not take this lock). The lock is an advisory `flock` on `<database>.lock`, not
/// on the database itself: closing another descriptor of the database would drop SQLite's own
/// locks. Also checks the database's directory exists, which SQLite's error does not name.
fn lock_sqlite(url: &str) -> Result<Option<std::fs::File>, ServeError> {
    let Some(path) = sqlite_file(url).filter(|p| !p.is_empty() && *p != ":memory:") else {
        return Ok(None);
    };
    let path = std::path::Path::new(path);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.is_dir()
    {
        return Err(ServeError::Config(format!(
            "store.url: the directory {} does not exist; silta creates the database file, not \
             its directory",
            dir.display()
        )));
    }
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let name = std::path::PathBuf::from(name);
    let mut options = std::fs::OpenOptions::new();
    options.create(true).truncate(false).write(true);
    // Private like the database beside it: another user who could open it could hold the lock
    // and keep the gateway from starting.
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options
        .open(&name)
        .map_err(|e| ServeError::Config(format!("store.url: lock file {}: {e}", name.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Err(ServeError::Config(format!(
            "store.url: another silta serve is using {}; one SQLite database serves one gateway \
             (for several nodes, use PostgreSQL)",
            path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(ServeError::Config(format!(
            "store.url: lock file {}: {e}",
            name.display()
        ))),
    }
}

/// The default `ledger.origin`: fine for a demo, not for a deployment, whose checkpoints are
/// named by it for good.
pub const PLACEHOLDER_ORIGIN: &str = "silta.local/audit";

/// What a configuration's files give, checked: everything `start` reads before the store.
struct Prepared {
    tls: Arc<tls::TlsHandle>,
    policies: Arc<policy_source::PolicyHandle>,
    recipient_keys: Arc<sealing::RecipientKeys>,
    actors: actor::ActorVerifier,
}

/// Validates `config` and reads every file it names (certificates, key, client CA and CRL,
/// policies, recipients' keys, JWKS), as `start` does and with the same errors.
async fn prepare(config: &Config) -> Result<Prepared, ServeError> {
    config.validate().map_err(ServeError::Config)?;
    let tls = Arc::new(tls::TlsHandle::open(tls::TlsFiles {
        cert: config.tls.cert.clone(),
        key: config.tls.key.clone(),
        client_ca: config.tls.client_ca.clone(),
        client_crl: config.tls.client_crl.clone(),
    })?);
    let policies = Arc::new(
        policy_source::PolicyHandle::open(config.policy.dir.clone())
            .map_err(|e| ServeError::Policy(e.to_string()))?,
    );
    // A statutory flow that must say whom it concerns cannot run without its recipient's key.
    let recipient_keys = Arc::new(
        sealing::RecipientKeys::from_config(&config.statutory_recipients)
            .map_err(ServeError::Config)?,
    );
    recipient_keys
        .check(&policies.get())
        .map_err(ServeError::Config)?;
    let actors = actor::ActorVerifier::new(&config.jwt)
        .await
        .map_err(ServeError::Config)?;
    Ok(Prepared {
        tls,
        policies,
        recipient_keys,
        actors,
    })
}

/// Checks a whole configuration without starting anything (`silta config check`): every key,
/// every file it names, and the master secret's keyring against `ledger.origin`. Returns the
/// warnings `serve` would log; an error is the one `serve` would stop with.
pub async fn check_config(config: &Config, keyring: Keyring) -> Result<Vec<String>, ServeError> {
    let prepared = prepare(config).await?;
    let pseudonymiser = Pseudonymiser::with_keyring(keyring);
    silta_ledger::checkpoint::NoteSigner::from_seed(
        &config.ledger.origin,
        &pseudonymiser.checkpoint_seed(),
    )
    .map_err(|e| ServeError::Config(format!("ledger.origin: {e}")))?;
    drop(prepared);
    let mut warnings = Vec::new();
    if config.ledger.origin == PLACEHOLDER_ORIGIN {
        warnings.push(format!(
            "ledger.origin is still the placeholder {PLACEHOLDER_ORIGIN:?}: name this \
             deployment's ledger before the first checkpoint, it cannot change afterwards"
        ));
    }
    Ok(warnings)
}

/// Starts the gateway on `listener` with `config` and the master secret's keyring (a single
/// [`MasterSecret`] converts into one).
pub async fn start(
    config: &Config,
    keyring: impl Into<Keyring>,
    listener: TcpListener,
) -> Result<RunningGateway, ServeError> {
    let Prepared {
        tls,
        policies,
        recipient_keys,
        actors,
    } = prepare(config).await?;
    if config.ledger.origin == PLACEHOLDER_ORIGIN {
        tracing::warn!(
            origin = PLACEHOLDER_ORIGIN,
            "ledger.origin is still the placeholder; name this deployment's ledger (e.g. \
             helsinki.fi/silta/audit) before the first checkpoint: it cannot change afterwards"
        );
    }
    // The admin port (plain HTTP, `/metrics` only; keep it on a private interface) is bound
    // before anything is spawned, so a port in use stops the start cleanly.
    let admin = match config.admin.listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|e| ServeError::Config(format!("admin.listen {addr}: {e}")))?,
        ),
        None => None,
    };
    // The console's port likewise.
    let console = match config.console.listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|e| ServeError::Config(format!("console.listen {addr}: {e}")))?,
        ),
        None => None,
    };
    let lock = lock_sqlite(&config.store.url)?;
    let store = open_store(&config.store).await?;
    let pseudonymiser = Pseudonymiser::with_keyring(keyring.into());
    // A node without the key version the store has in use could write nothing correct.
    {
        let mut tx = store.begin().await?;
        commit::version_in_use(&mut *tx, &pseudonymiser)
            .await
            .map_err(|e| match e {
                StoreError::Corrupt(_) => ServeError::Config(format!(
                    "the store uses a pseudonym key version this keyring lacks (it holds v{}..=v{}); give this node the rotated keyring",
                    pseudonymiser.first_version(),
                    pseudonymiser.latest_version()
                )),
                e => ServeError::Store(e),
            })?;
    }
    let signer = ReceiptSigner::new(&pseudonymiser);
    let receipt_public_key = signer.public_key().to_vec();
    // Checks the origin, which every checkpoint signer is named by.
    silta_ledger::checkpoint::NoteSigner::from_seed(
        &config.ledger.origin,
        &pseudonymiser.checkpoint_seed(),
    )
    .map_err(|e| ServeError::Config(format!("ledger.origin: {e}")))?;
    let checkpoint_verifier_key = checkpoints::signer_for(
        &pseudonymiser,
        &config.ledger.origin,
        pseudonymiser.observed_version(),
    )?
    .verifier_key();
    let (appended, appended_size) = tokio::sync::watch::channel(0);
    let (commits, jobs) = mpsc::channel(config.tuning.max_batch.max(1) * 4);
    let metrics = Arc::new(metrics::Metrics::default());
    let checkpointer = Arc::new(checkpoints::Checkpointer {
        store: Arc::clone(&store),
        pseudonymiser: pseudonymiser.clone(),
        config: config.ledger.clone(),
        appended: appended_size,
        commits: commits.clone(),
        last: tokio::sync::Mutex::new(None),
        metrics: Arc::clone(&metrics),
    });
    checkpointer.load().await?;
    let notifier = Arc::new(delivery::Notifier::default());
    // Messages committed by other nodes wake this node's subscribers too.
    let wake = Arc::clone(&notifier);
    store
        .listen(Box::new(move |org, seq| wake.notify(org, seq)))
        .await?;
    let stop = CancellationToken::new();
    let checkpoint_task = tokio::spawn(Arc::clone(&checkpointer).run(stop.clone()));
    let retention_task = tokio::spawn(retention::run(
        Arc::clone(&store),
        Arc::clone(&policies),
        config.retention.clone(),
        stop.clone(),
    ));

    let committer = commit::spawn(
        &*store,
        commit::run(
            Arc::clone(&store),
            pseudonymiser.clone(),
            jobs,
            config.tuning.max_batch,
            stop.clone(),
            commit::AfterCommit {
                notifier: Arc::clone(&notifier),
                appended,
                metrics: Arc::clone(&metrics),
            },
        ),
    )
    .map_err(|e| ServeError::Internal(format!("cannot start the committer's thread: {e}")))?;
    // Without its committer the gateway can store nothing: stop it so a supervisor restarts it,
    // rather than keep accepting connections that can only fail.
    let watch_stop = stop.clone();
    let committer = tokio::spawn(async move {
        let ended = committer.await;
        let unexpected = !watch_stop.is_cancelled();
        if unexpected {
            tracing::error!(
                ?ended,
                "the committer stopped unexpectedly; stopping the gateway"
            );
            watch_stop.cancel();
        }
        unexpected
    });
    let gw = Arc::new(gateway::Gateway {
        store: Arc::clone(&store),
        pseudonymiser,
        signer,
        hetu_rules: HetuRules {
            allow_temporary: config.hetu.allow_temporary,
        },
        commits,
        notifier,
        stop: stop.clone(),
        tuning: config.tuning.clone(),
        stall_timeout: Duration::from_millis(config.limits.stream_stall_timeout_ms),
        streams: Arc::new(gateway::OrgQuota::new(config.limits.max_streams_per_org)),
        retention: config.retention.clone(),
        statistics: config.statistics.clone(),
        policies: Arc::clone(&policies),
        metrics: Arc::clone(&metrics),
        actors,
        recipient_keys,
    });
    // Which policy set decides from now on, in the ledger: an auditor can match decisions to
    // the exact files the DPO signed off.
    let loaded = policies.get();
    gw.record_gateway_event(
        "LoadPolicies",
        silta_core::audit::Outcome::Allow,
        &format!("policy-set-{}", loaded.digest()),
    )
    .await;
    tracing::info!(source = %policies.describe(), digest = loaded.digest(), flows = loaded.flows().len(), "policy set loaded");
    drop(loaded);
    let connections = Arc::new(connections::Registry::default());
    let reloader = PolicyReloader {
        gw: Arc::clone(&gw),
        tls: Arc::clone(&tls),
        connections: Arc::clone(&connections),
    };

    // Reflection in both versions: grpcurl and other tools older than 2023 speak only v1alpha.
    // It lists the health service too, which answers on the same port.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(proto::GOOGLE_RPC_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    let local_addr = listener
        .local_addr()
        .map_err(|e| ServeError::Config(format!("listener: {e}")))?;
    // gRPC health: SERVING once the store is open, migrated and the policy set loaded (all
    // above); NOT_SERVING as soon as shutdown begins, so a load balancer drains this node.
    let (health, health_service) = tonic_health::server::health_reporter();
    for service in [
        "",
        "silta.v1.Landlord",
        "silta.v1.SocialServices",
        "silta.v1.Audit",
    ] {
        health
            .set_service_status(service, tonic_health::ServingStatus::Serving)
            .await;
    }
    let health_stop = stop.clone();
    tokio::spawn(async move {
        health_stop.cancelled().await;
        for service in [
            "",
            "silta.v1.Landlord",
            "silta.v1.SocialServices",
            "silta.v1.Audit",
        ] {
            health
                .set_service_status(service, tonic_health::ServingStatus::NotServing)
                .await;
        }
    });
    // The admin port (bound first, above), serving from now on.
    let admin_addr = match admin {
        Some(admin) => {
            let bound = admin.local_addr().ok();
            tokio::spawn(metrics::serve(
                admin,
                Arc::clone(&metrics),
                Arc::clone(&store),
                gw.pseudonymiser.clone(),
                stop.clone(),
            ));
            tracing::info!(addr = ?bound, "admin port: /metrics, /healthz, /readyz");
            bound
        }
        None => None,
    };
    // The DPO console (bound first, above), on the gateway's TLS files, stopping with it.
    let (console_addr, console_task) = match console {
        Some(listener) => {
            let bound = listener.local_addr().ok();
            let task = tokio::spawn(console::serve(
                listener,
                console::Console {
                    gw: Arc::clone(&gw),
                    tls: Arc::clone(&tls),
                    trust_domain: config.tls.trust_domain.clone(),
                    handshake_timeout: Duration::from_millis(config.limits.handshake_timeout_ms),
                },
                stop.clone(),
            ));
            tracing::info!(addr = ?bound, "DPO console listening (HTTPS, client certificate of role dpo)");
            (bound, Some(task))
        }
        None => (None, None),
    };
    let mut routes = tonic::service::Routes::builder();
    routes
        .add_service(proto::landlord_server::LandlordServer::new(
            services::LandlordService::new(Arc::clone(&gw)),
        ))
        .add_service(proto::social_services_server::SocialServicesServer::new(
            services::SocialServicesService::new(Arc::clone(&gw)),
        ))
        .add_service(proto::audit_server::AuditServer::new(
            audit::AuditService::new(Arc::clone(&gw)),
        ))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    let routes = tonic::service::Routes::from(
        routes
            .routes()
            .into_axum_router()
            .fallback(unknown_rpc)
            .layer(axum::middleware::map_response(name_unimplemented)),
    )
    .prepare();
    let serve = connections::serve(
        listener,
        connections::Endpoint {
            tls: Arc::clone(&tls),
            trust_domain: config.tls.trust_domain.clone(),
            routes,
            limits: connections::Limits::new(&config.limits, SHUTDOWN_GRACE),
            metrics: Arc::clone(&metrics),
            registry: Arc::clone(&connections),
        },
        stop.clone(),
    );
    drop(gw);

    let server_stop = stop.clone();
    let server = tokio::spawn(async move {
        // Held while the server runs; released at its end, or by the kernel at the process's.
        let _lock = lock;
        // Each connection gets SHUTDOWN_GRACE after `stop` for its calls in progress (then it
        // is closed); this bound only covers a connection task that failed to stop.
        tokio::pin!(serve);
        tokio::select! {
            () = &mut serve => {}
            () = async {
                server_stop.cancelled().await;
                tokio::time::sleep(SHUTDOWN_GRACE + Duration::from_secs(1)).await;
            } => {
                tracing::warn!("connections still open {SHUTDOWN_GRACE:?} after shutdown began; leaving them");
            }
        }
        // The console's pages in progress finish (each within its grace) before the store
        // closes; their ledger records go through the committer, which is still running.
        if let Some(task) = console_task
            && tokio::time::timeout(SHUTDOWN_GRACE, task).await.is_err()
        {
            tracing::error!("the console did not stop in time");
        }
        // The committer closed its queue at `stop` and finishes the jobs it holds.
        let committer_failed = match tokio::time::timeout(SHUTDOWN_GRACE, committer).await {
            Ok(Ok(unexpected)) => unexpected,
            _ => {
                tracing::error!("the committer did not finish in time");
                true
            }
        };
        // Each waits for the committer at most; bounded all the same, so a committer stuck in a
        // batch cannot keep the process from exiting.
        for (task, name) in [
            (checkpoint_task, "checkpointer"),
            (retention_task, "retention purge"),
        ] {
            let abort = task.abort_handle();
            if tokio::time::timeout(SHUTDOWN_GRACE, task).await.is_err() {
                tracing::error!("the {name} did not finish in time");
                abort.abort();
            }
        }
        // The last checkpoint covers everything committed, so an auditor can verify up to the
        // final entry.
        if let Err(e) = checkpointer.publish(1, None).await {
            tracing::error!(error = %e, "final checkpoint not published");
        }
        drop(checkpointer);
        store.close().await;
        tracing::info!("gateway stopped");
        if committer_failed {
            return Err(ServeError::Internal(
                "the committer stopped unexpectedly".into(),
            ));
        }
        Ok(())
    });
    tracing::info!(%local_addr, "gateway listening (mTLS, gRPC)");
    Ok(RunningGateway {
        local_addr,
        receipt_public_key,
        checkpoint_verifier_key,
        reloader,
        admin_addr,
        console_addr,
        stop,
        server,
    })
}

/// What an `UNIMPLEMENTED` answer says: which RPCs are served instead.
const UNKNOWN_RPC: &str = "this gateway serves no such RPC; it serves silta.v1.Landlord, \
    silta.v1.SocialServices, silta.v1.Audit and grpc.health.v1.Health (see docs/api.md, or list \
    them by reflection)";

/// The answer to a service silta does not serve.
async fn unknown_rpc() -> axum::response::Response {
    tracing::info!(
        code = "UNIMPLEMENTED",
        "refused a call to a service this gateway does not serve"
    );
    let (parts, ()) = tonic::Status::unimplemented(UNKNOWN_RPC)
        .into_http::<()>()
        .into_parts();
    axum::response::Response::from_parts(parts, axum::body::Body::empty())
}

/// A method a served service lacks gets the generated code's bare `UNIMPLEMENTED`; this adds
/// the message that says what is served.
async fn name_unimplemented(mut response: axum::response::Response) -> axum::response::Response {
    let headers = response.headers_mut();
    if headers.get("grpc-status").is_some_and(|s| s == "12")
        && headers.get("grpc-message").is_none_or(|m| m.is_empty())
    {
        tracing::info!(
            code = "UNIMPLEMENTED",
            "refused a call to a method this gateway does not serve"
        );
        headers.insert(
            "grpc-message",
            axum::http::HeaderValue::from_static(UNKNOWN_RPC),
        );
    }
    response
}
