//! `silta`: the gateway binary.

#![forbid(unsafe_code)]

mod audit_cli;
mod demo;
mod health;
mod output;
mod policy_cli;
mod sd_notify;
mod stats_cli;

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use silta_core::{Caller, Keyring, OrgId, Pseudonymiser, Role};
use silta_server::Config;
use silta_server::config::EnvVar;

use crate::output::{out, outln};

/// silta: a privacy-preserving gRPC gateway between a city's landlord and its social services.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the gateway.
    ///
    /// Every configuration key has a default (see docs/operations.md) and can be overridden by
    /// an environment variable SILTA_<SECTION>__<KEY>, e.g. SILTA_STORE__URL or SILTA_LISTEN.
    /// Other SILTA_* variables are ignored, with a warning naming them.
    /// The master secret comes from secrets.master_secret_file or SILTA_MASTER_SECRET.
    Serve {
        /// The TOML configuration file.
        #[arg(long, short, env = "SILTA_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Runs the whole exchange once against a throw-away gateway and shows what crosses.
    Demo {
        /// Then keeps the gateway and the DPO console up, on the demo's store and
        /// certificates, until Ctrl-C, so a person can open the console in a browser.
        #[arg(long)]
        keep_running: bool,
    },
    /// Mints a development CA, a loopback server certificate and client certificates;
    /// `dev-pki revoke ORG…` revokes client certificates in a CRL (`crl.pem`).
    #[command(args_conflicts_with_subcommands = true)]
    DevPki {
        #[command(subcommand)]
        action: Option<DevPkiAction>,
        /// Directory to write into (created if missing).
        #[arg(long, default_value = "dev-pki")]
        out: PathBuf,
        /// Trust domain of the client identities.
        #[arg(long, default_value = "silta.local")]
        trust_domain: String,
        /// A client to mint, as ORG:ROLE (role: landlord, social_services, dpo or analyst).
        /// Repeatable. Default: city-housing:landlord, helsinki-social:social_services,
        /// dpo-office:dpo, programme-research:analyst.
        #[arg(long = "client", value_name = "ORG:ROLE")]
        clients: Vec<String>,
    },
    /// The data-protection officer's ledger tools: export, verify offline, disclosure reports.
    Audit {
        #[command(subcommand)]
        command: audit_cli::AuditCommand,
    },
    /// Validates a policy directory, prints its flows, explains a decision.
    Policy {
        #[command(subcommand)]
        command: policy_cli::PolicyCommand,
    },
    /// The database: `db migrate` applies the schema as its owner and grants the gateway's role.
    Db {
        #[command(subcommand)]
        command: DbCommand,
    },
    /// Manages the master secret and shows derived public keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Checks a configuration as `serve` would, without starting: every key and every file it
    /// names (certificates, key, client CA and CRL, policies, recipients' keys, the master
    /// secret). Exits non-zero with the message `serve` would stop with.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Asks a running gateway's admin port whether it is ready (`GET /readyz`), as a container
    /// HEALTHCHECK can without shell tools: exits 0 on 200, 1 otherwise, printing one line.
    Health {
        /// The URL to GET (plain http://). Default: `/readyz` on `admin.listen` of --config
        /// (0.0.0.0 and :: are reached on loopback), else http://127.0.0.1:9464/readyz.
        #[arg(long, value_name = "URL")]
        url: Option<String>,
        /// A configuration whose `admin.listen` (SILTA_ADMIN__LISTEN overrides it) names the
        /// port to ask.
        #[arg(long, short, conflicts_with = "url")]
        config: Option<PathBuf>,
        /// Seconds to wait for the answer (/readyz itself waits up to 2 s for the store).
        #[arg(long, default_value_t = 3, value_name = "SECONDS")]
        timeout: u64,
    },
    /// The programme's statistics for a closed month (docs/statistics.md): counts per flow and
    /// organisation, never about a person, small counts suppressed. Calls the gateway with an
    /// `analyst` (or `dpo`) certificate.
    #[command(args_conflicts_with_subcommands = true)]
    Stats {
        #[command(subcommand)]
        command: Option<StatsCommand>,
        #[command(flatten)]
        show: stats_cli::Show,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validates the configuration and the files it names; prints what `serve` would warn about.
    Check {
        /// Configuration file.
        #[arg(long, short, env = "SILTA_CONFIG")]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum StatsCommand {
    /// Recomputes every counter the ledger implies from the stored ledger and replaces the live
    /// ones (the others count values the ledger does not hold and are kept). Safe beside
    /// running nodes: it takes the store's write lock for the last step only.
    Rebuild {
        /// Configuration file (for `store.url`).
        #[arg(long, short, env = "SILTA_CONFIG")]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum DevPkiAction {
    /// Revokes client certificates minted by `silta dev-pki`: writes OUT/crl.pem, signed by
    /// OUT/ca.key, listing them and every certificate revoked before.
    Revoke {
        /// The dev-pki directory.
        #[arg(long, default_value = "dev-pki")]
        out: PathBuf,
        /// The organisations whose client certificates (`<org>.pem`) to revoke.
        #[arg(required = true, value_name = "ORG")]
        orgs: Vec<String>,
    },
}

#[derive(Subcommand)]
enum DbCommand {
    /// Applies pending schema migrations as the schema's owner and grants the runtime role
    /// exactly the privileges the gateway needs (PostgreSQL; docs/operations.md, "PostgreSQL
    /// roles"). Idempotent: run it before starting an upgraded gateway. The gateway itself
    /// migrates only a schema its own role owns.
    Migrate {
        /// The owner's database URL, postgres://OWNER@HOST/DB (or sqlite://PATH). Prefer the
        /// environment variable: a password on the command line is visible to other users.
        #[arg(long, env = "SILTA_MIGRATE_URL", hide_env_values = true)]
        url: String,
        /// The role the gateway runs as (or a NOLOGIN group role its login role is a member
        /// of; created NOLOGIN if missing). Without it, only the migrations run.
        #[arg(long, env = "SILTA_MIGRATE_RUNTIME_ROLE")]
        runtime_role: Option<String>,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Writes a new random master secret (hex) to a file readable by its owner only.
    Generate {
        /// File to create; never overwritten.
        #[arg(long)]
        out: PathBuf,
    },
    /// For a statutory recipient organisation: makes its HPKE key pair for sealed identity.
    /// Writes the private key to DIR/hpke-private.key (mode 0600, never overwritten; keep it
    /// with the recipient, never give it to silta) and DIR/hpke-public.key, and prints the
    /// `[[statutory_recipients]]` entry for silta's configuration.
    RecipientKeypair {
        /// Folder to write the two files into (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// The recipient organisation, as its client certificate names it.
        #[arg(long)]
        org: String,
    },
    /// Shows the keyring's versions, the version in use, and the public keys.
    Show {
        /// The TOML configuration file.
        #[arg(long, short, env = "SILTA_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Adds a new random pseudonym key version to the keyring file (secrets.master_secret_file).
    /// Nothing changes until it is promoted: give every node the new file first.
    Rotate {
        /// The TOML configuration file.
        #[arg(long, short, env = "SILTA_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Makes a keyring version the one in use: moves every stored lookup and audit pseudonym
    /// to it in one transaction, while the gateway runs, and records it in the audit ledger.
    Promote {
        /// The TOML configuration file.
        #[arg(long, short, env = "SILTA_CONFIG")]
        config: Option<PathBuf>,
        /// The version to promote; the keyring's newest if unset.
        #[arg(long)]
        to: Option<u32>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => {
            let config = load_config(config.as_deref())?;
            let runtime = runtime()?;
            // The OTLP exporter's channel runs on the runtime, so it is built inside it.
            let telemetry =
                runtime.block_on(async { silta_server::telemetry::init(&config.log) })?;
            for variable in unrelated_env() {
                tracing::warn!(
                    %variable,
                    "ignoring this environment variable: not a configuration key \
                     (SILTA_<SECTION>__<KEY> or SILTA_LISTEN; docs/operations.md)"
                );
            }
            let keyring = load_keyring(&config)?;
            let served = runtime.block_on(serve(config, keyring));
            // Flush the last spans before the runtime goes.
            runtime
                .block_on(async { tokio::task::spawn_blocking(|| telemetry.shutdown()).await })?;
            served
        }
        Command::Health {
            url,
            config,
            timeout,
        } => {
            let url = match (url, config) {
                (Some(url), _) => url,
                (None, Some(path)) => {
                    let config = load_config(Some(&path))?;
                    let listen = config.admin.listen.ok_or_else(|| {
                        anyhow::anyhow!(
                            "{}: admin.listen is not set, so there is no /readyz to ask",
                            path.display()
                        )
                    })?;
                    health::url_for_admin(listen)
                }
                (None, None) => health::DEFAULT_URL.to_owned(),
            };
            let checked = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?
                .block_on(health::check(&url, std::time::Duration::from_secs(timeout)));
            match checked {
                Ok((true, line)) => {
                    outln!("ready: {line}");
                    Ok(())
                }
                Ok((false, line)) => {
                    eprintln!("not ready: {line}");
                    std::process::exit(1)
                }
                Err(line) => {
                    eprintln!("unreachable: {line}");
                    std::process::exit(1)
                }
            }
        }
        Command::Demo { keep_running } => {
            init_logging("pretty", "warn");
            let ok = runtime()?.block_on(demo::run(keep_running))?;
            if !ok {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::DevPki {
            action: Some(DevPkiAction::Revoke { out, orgs }),
            ..
        } => {
            let path = silta_server::devpki::revoke(&out, &orgs)?;
            outln!(
                "wrote {} revoking {}; set tls.client_crl to it and send the gateway SIGHUP",
                path.display(),
                orgs.join(", ")
            );
            Ok(())
        }
        Command::DevPki {
            action: None,
            out,
            trust_domain,
            clients,
        } => dev_pki(&out, &trust_domain, &clients),
        Command::Audit { command } => {
            init_logging("pretty", "warn");
            let code = runtime()?.block_on(audit_cli::run(command))?;
            if code != 0 {
                std::process::exit(code);
            }
            Ok(())
        }
        Command::Policy { command } => {
            let code = policy_cli::run(command)?;
            if code != 0 {
                std::process::exit(code);
            }
            Ok(())
        }
        Command::Db {
            command: DbCommand::Migrate { url, runtime_role },
        } => {
            init_logging("pretty", "warn");
            let done =
                runtime()?.block_on(silta_server::migrate_store(&url, runtime_role.as_deref()))?;
            outln!("{done}");
            Ok(())
        }
        Command::Config {
            command: ConfigCommand::Check { config },
        } => {
            let path = config.clone();
            let config = load_config(config.as_deref())?;
            let keyring = load_keyring(&config)?;
            let warnings = runtime()?
                .block_on(silta_server::check_config(&config, keyring))
                .map_err(anyhow::Error::from)?;
            for w in &warnings {
                eprintln!("warning: {w}");
            }
            outln!(
                "configuration OK{}: every key, the certificates, the policies and the master \
                 secret are usable",
                path.map(|p| format!(" ({})", p.display()))
                    .unwrap_or_default()
            );
            Ok(())
        }
        Command::Stats {
            command: Some(StatsCommand::Rebuild { config }),
            ..
        } => {
            init_logging("pretty", "warn");
            let config = load_config(config.as_deref())?;
            let done = runtime()?.block_on(async {
                let store = silta_server::open_existing_store(&config.store).await?;
                let done = silta_server::statistics::rebuild(&*store).await;
                store.close().await;
                anyhow::Ok(done?)
            })?;
            outln!(
                "rebuilt {} counters from {} ledger entries; the counters of values the ledger \
                 does not hold were kept",
                done.cells,
                done.entries
            );
            Ok(())
        }
        Command::Stats {
            command: None,
            show,
        } => {
            init_logging("pretty", "warn");
            let out = runtime()?.block_on(stats_cli::run(show))?;
            out!("{out}");
            Ok(())
        }
        Command::Keys { command } => match command {
            KeysCommand::Generate { out } => generate_secret(&out),
            KeysCommand::RecipientKeypair { out, org } => {
                out!("{}", recipient_keypair(&out, &org)?);
                Ok(())
            }
            KeysCommand::Show { config } => {
                let config = load_cli_config(config.as_deref())?;
                let p = Pseudonymiser::with_keyring(load_keyring(&config)?);
                let signer = silta_core::consent::ReceiptSigner::new(&p);
                let checkpoint_key = |version: u32| {
                    let seed = p
                        .checkpoint_seed_at(version)
                        .ok_or_else(|| anyhow::anyhow!("v{version} is not in the keyring"))?;
                    let signer = silta_ledger::checkpoint::NoteSigner::from_seed(
                        &config.ledger.origin,
                        &seed,
                    )
                    .map_err(|e| anyhow::anyhow!("ledger.origin: {e}"))?;
                    anyhow::Ok(signer.verifier_key())
                };
                // The store first: a command that fails prints nothing on standard output.
                let in_use = runtime()?.block_on(async {
                    let store = silta_server::open_existing_store(&config.store).await?;
                    let v = silta_server::keys::version_in_use(&*store, &p).await?;
                    store.close().await;
                    anyhow::Ok(v)
                })?;
                outln!(
                    "keyring: pseudonym key versions v{}..=v{}",
                    p.first_version(),
                    p.latest_version()
                );
                outln!("pseudonym key version in use: v{in_use}");
                // The line auditors and scripts read names the key signing checkpoints now.
                outln!(
                    "ledger checkpoint verifier key: {}",
                    checkpoint_key(in_use)?
                );
                if in_use != p.first_version() {
                    outln!(
                        "ledger checkpoint verifier key of v{} (before the first key handover): {}",
                        p.first_version(),
                        checkpoint_key(p.first_version())?
                    );
                }
                outln!(
                    "consent receipt key (Ed25519, base64): {}",
                    data_encoding::BASE64.encode(signer.public_key())
                );
                Ok(())
            }
            KeysCommand::Rotate { config } => {
                let config = load_cli_config(config.as_deref())?;
                rotate_keyring(&config)
            }
            KeysCommand::Promote { config, to } => {
                init_logging("pretty", "warn");
                let config = load_cli_config(config.as_deref())?;
                let p = Pseudonymiser::with_keyring(load_keyring(&config)?);
                let to = to.unwrap_or_else(|| p.latest_version());
                let done = runtime()?.block_on(async {
                    let store = silta_server::open_existing_store(&config.store).await?;
                    let done =
                        silta_server::keys::promote(&*store, &p, to, &config.ledger.origin).await;
                    store.close().await;
                    anyhow::Ok(done?)
                })?;
                if done.from == done.to {
                    outln!("v{to} is already in use; nothing changed");
                } else {
                    outln!(
                        "v{} is in use (was v{}); {} consent and case rows moved; recorded in the audit ledger",
                        done.to,
                        done.from,
                        done.rows
                    );
                    outln!(
                        "a node not yet restarted with the keyring holding v{} now refuses every \
                         write and its /readyz answers 503 until it is",
                        done.to
                    );
                }
                Ok(())
            }
        },
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

async fn serve(config: Config, keyring: Keyring) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listen: cannot bind {}", config.listen))?;
    let gateway = silta_server::start(&config, keyring, listener).await?;
    reload_on_sighup(gateway.reloader.clone());
    // Type=notify: systemd counts the service as started from here, when every port serves.
    tell_systemd(&format!(
        "READY=1\nSTATUS=serving gRPC on {}",
        gateway.local_addr
    ));
    let stop = gateway.stop_token();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown requested: draining streams and commits (again to exit at once)");
        tell_systemd("STOPPING=1\nSTATUS=draining streams and commits");
        stop.cancel();
        shutdown_signal().await;
        // Whatever was acknowledged is on disk; only unanswered requests are cut off.
        tracing::warn!("second signal: exiting now");
        std::process::exit(130);
    });
    gateway.wait().await?;
    Ok(())
}

/// Sends `state` to systemd when it supervises with `Type=notify`; a failure is logged, never
/// fatal (systemd then times the start out and says so).
fn tell_systemd(state: &str) {
    match sd_notify::notify(state) {
        Ok(true) => tracing::debug!(state, "told systemd"),
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, "cannot notify systemd ($NOTIFY_SOCKET)"),
    }
}

/// SIGHUP re-reads the policy set and the TLS files (server certificate and key, client CA,
/// CRLs); whatever fails validation is refused and the old one keeps serving (the gateway logs
/// why and records it in the ledger).
fn reload_on_sighup(reloader: silta_server::PolicyReloader) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::hangup()) {
            Ok(mut hup) => {
                tokio::spawn(async move {
                    while hup.recv().await.is_some() {
                        tracing::info!("SIGHUP: reloading the policy set and the TLS files");
                        // The outcomes are logged and audited by the reloader itself.
                        let _ = reloader.reload().await;
                        let _ = reloader.reload_tls().await;
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "SIGHUP handler not installed; policy reload needs a restart")
            }
        }
    }
    #[cfg(not(unix))]
    drop(reloader);
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// [`load_config`] for a command without a log: ignored variables are named on stderr.
fn load_cli_config(path: Option<&Path>) -> anyhow::Result<Config> {
    // First: an ignored variable may be why the configuration is refused.
    warn_unrelated_env();
    load_config(path)
}

/// Defaults, then the TOML file, then `SILTA_*` environment variables.
fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    let mut figment = Figment::from(Serialized::defaults(Config::default()));
    if let Some(path) = path {
        if !path.exists() {
            bail!("configuration file {} does not exist", path.display());
        }
        figment = figment.merge(Toml::file(path));
    }
    // Only the documented shapes are configuration: SILTA_<SECTION>__<KEY> and the top-level
    // keys (SILTA_LISTEN). silta's other variables (the secret, the config path, the DPO
    // tools' gateway address) are read elsewhere, and anything else with the prefix belongs
    // to someone else: `warn_unrelated_env` names it.
    figment = figment.merge(
        Env::prefixed(silta_server::config::ENV_PREFIX)
            .filter(|key| EnvVar::of(key.as_str()) == EnvVar::Config)
            .split("__"),
    );
    figment.extract().map_err(|e| {
        // figment names keys under its profile ("default.tls.cert"); silta has none.
        anyhow::anyhow!(
            "configuration: {}",
            e.to_string().replace("\"default.", "\"")
        )
    })
}

/// The `SILTA_…` environment variables that configuration loading ignored (names only: a
/// value may be a secret).
fn unrelated_env() -> Vec<String> {
    silta_server::config::unrelated_env_vars(
        std::env::vars_os().filter_map(|(name, _)| name.into_string().ok()),
    )
}

/// Warns, on standard error, of each ignored `SILTA_…` variable: for the commands that print
/// their results and have no log.
fn warn_unrelated_env() {
    for name in unrelated_env() {
        eprintln!(
            "warning: ignoring environment variable {name}: not a configuration key \
             (SILTA_<SECTION>__<KEY> or SILTA_LISTEN; docs/operations.md)"
        );
    }
}

/// The keyring: from `SILTA_MASTER_SECRET` if set, else from `secrets.master_secret_file`,
/// which must be readable by its owner only.
fn load_keyring(config: &Config) -> anyhow::Result<Keyring> {
    let bare_version = config.secrets.pseudonym_key_version.unwrap_or(1);
    if let Ok(text) = std::env::var("SILTA_MASTER_SECRET") {
        let text = zeroize::Zeroizing::new(text);
        return Keyring::parse(&text, bare_version).context("SILTA_MASTER_SECRET");
    }
    let path = keyring_path(config)?;
    #[cfg(unix)]
    if !in_systemd_credentials(path) {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .with_context(|| format!("secrets.master_secret_file {}", path.display()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            bail!(
                "secrets.master_secret_file {} is readable by group or others (mode {:o}); \
                 run `chmod 600` on it",
                path.display(),
                mode & 0o777
            );
        }
    }
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path)
            .with_context(|| format!("secrets.master_secret_file {}", path.display()))?,
    );
    Keyring::parse(&text, bare_version)
        .with_context(|| format!("secrets.master_secret_file {}", path.display()))
}

fn keyring_path(config: &Config) -> anyhow::Result<&Path> {
    config.secrets.master_secret_file.as_deref().ok_or_else(|| {
        anyhow::anyhow!(
            "no master secret: set secrets.master_secret_file to a file made by \
             `silta keys generate --out FILE`, or set SILTA_MASTER_SECRET"
        )
    })
}

/// Appends a new random version to the keyring file, rewriting a bare secret as `v<N> <hex>`
/// first. The new file replaces the old one whole (written beside it, then renamed), with
/// owner-only permissions.
fn rotate_keyring(config: &Config) -> anyhow::Result<()> {
    use std::fmt::Write as _;
    use std::io::Write;
    if std::env::var_os("SILTA_MASTER_SECRET").is_some() {
        bail!(
            "SILTA_MASTER_SECRET is set: rotate the keyring where it is kept, adding a line \
             `v<N> <64 hex digits>` (see docs/operations.md)"
        );
    }
    let path = keyring_path(config)?;
    let ring = load_keyring(config)?;
    let old = zeroize::Zeroizing::new(
        std::fs::read_to_string(path)
            .with_context(|| format!("secrets.master_secret_file {}", path.display()))?,
    );
    // Sized up front so the secret text is never left behind in a grown-out buffer.
    let mut text = zeroize::Zeroizing::new(String::with_capacity(old.len() + 128));
    let bare = !old.lines().map(str::trim).any(|l| l.starts_with('v'));
    if bare {
        // One bare secret (comments aside): it becomes `v<N> <hex>`.
        let hex = old
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .unwrap_or_default();
        writeln!(text, "v{} {hex}", ring.first())?;
    } else {
        writeln!(text, "{}", old.trim_end())?;
    }
    let next = ring.latest() + 1;
    let hex = random_secret_hex()?;
    writeln!(text, "v{next} {}", hex.as_str())?;
    // Checked before it replaces anything.
    Keyring::parse(&text, 1).context("the rotated keyring")?;
    let mut tmp = private_file_beside(path)?;
    tmp.write_all(text.as_bytes())?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .with_context(|| format!("cannot replace {}", path.display()))?;
    outln!(
        "added pseudonym key v{next} to {}; give every node this file and restart them one at a \
         time, then run `silta keys promote`",
        path.display()
    );
    Ok(())
}

/// A new file in `path`'s directory, mode 0600, to write and then `persist(path)`: a file
/// that replaces `path` whole, readable by its owner only from the start, whatever the umask
/// or the mode of the file it replaces.
pub(crate) fn private_file_beside(path: &Path) -> anyhow::Result<tempfile::NamedTempFile> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot write beside {}", path.display()))?;
    // tempfile creates it 0600 already; set here so this does not rest on that.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(tmp)
}

/// Whether `path` is one of this service's systemd credentials (`LoadCredential=`). systemd
/// makes that directory readable by the service alone, but newer versions show its files as
/// mode 0440 with an ACL, which the owner-only check would refuse.
fn in_systemd_credentials(path: &Path) -> bool {
    let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") else {
        return false;
    };
    // Only a real systemd credentials directory: a stray variable must not switch the
    // permission check off.
    match (std::fs::canonicalize(dir), std::fs::canonicalize(path)) {
        (Ok(dir), Ok(file)) => dir.starts_with("/run/credentials/") && file.starts_with(dir),
        _ => false,
    }
}

fn random_secret_hex() -> anyhow::Result<zeroize::Zeroizing<String>> {
    let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), bytes.as_mut())
        .map_err(|_| anyhow::anyhow!("the system random generator failed"))?;
    Ok(zeroize::Zeroizing::new(
        data_encoding::HEXLOWER.encode(bytes.as_ref()),
    ))
}

fn generate_secret(out: &Path) -> anyhow::Result<()> {
    use std::io::Write;
    let hex = random_secret_hex()?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(out)
        .with_context(|| format!("cannot create {} (it is never overwritten)", out.display()))?;
    writeln!(file, "{}", hex.as_str())?;
    outln!("wrote a new master secret to {}", out.display());
    Ok(())
}

/// Writes a recipient's HPKE key pair into `dir` and returns the configuration entry naming
/// its public key.
pub(crate) fn recipient_keypair(dir: &Path, org: &str) -> anyhow::Result<String> {
    use std::io::Write;
    let org = OrgId::new(org).map_err(|e| anyhow::anyhow!("--org {org:?}: {e}"))?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let (private, public) = silta_core::sealed::generate_keypair();
    let write = |name: &str, text: &str, mode: u32| -> anyhow::Result<PathBuf> {
        let path = dir.join(name);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(mode);
        }
        let mut file = options.open(&path).with_context(|| {
            format!("cannot create {} (it is never overwritten)", path.display())
        })?;
        writeln!(file, "{text}")?;
        Ok(path)
    };
    // The private key first and owner-only: if anything fails after, no public key exists
    // for a private key that was not kept.
    let private_path = write("hpke-private.key", private.as_str(), 0o600)?;
    write("hpke-public.key", &public, 0o644)?;
    Ok(format!(
        "# private key: {} (keep it with {org}; silta never needs it)\n\
         [[statutory_recipients]]\norg = \"{org}\"\nhpke_public_key = \"{public}\"\n",
        private_path.display()
    ))
}

/// The development callers the README and the demo use.
pub(crate) fn default_callers() -> Vec<Caller> {
    [
        ("city-housing", Role::Landlord),
        ("helsinki-social", Role::SocialServices),
        ("dpo-office", Role::Dpo),
        ("programme-research", Role::Analyst),
    ]
    .into_iter()
    .map(|(org, role)| Caller {
        // These literals follow the org id rules.
        org: OrgId::new(org).expect("valid literal org id"),
        role,
    })
    .collect()
}

fn dev_pki(out: &Path, trust_domain: &str, clients: &[String]) -> anyhow::Result<()> {
    let callers = if clients.is_empty() {
        default_callers()
    } else {
        clients
            .iter()
            .map(|c| {
                let (org, role) = c
                    .split_once(':')
                    .with_context(|| format!("--client {c}: expected ORG:ROLE"))?;
                Ok(Caller {
                    org: OrgId::new(org).with_context(|| format!("--client {c}"))?,
                    role: role.parse().with_context(|| format!("--client {c}"))?,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    let pki = silta_server::devpki::mint("silta dev CA", trust_domain, &callers)?;
    for path in pki.write_to(out)? {
        outln!("wrote {}", path.display());
    }
    for c in &callers {
        outln!(
            "  {}.pem names {}",
            c.org,
            silta_server::identity::spiffe_uri(trust_domain, c)
        );
    }
    Ok(())
}

fn init_logging(format: &str, level: &str) {
    let log = silta_server::config::LogConfig {
        format: format.into(),
        level: level.into(),
        ..Default::default()
    };
    // Only `serve` installs a subscriber otherwise, and nothing installs two.
    let _ = silta_server::telemetry::init_direct(&log);
}
