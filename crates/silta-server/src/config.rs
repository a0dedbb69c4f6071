//! The gateway's configuration: one TOML file, every key with a documented default,
//! each overridable by a `SILTA_<SECTION>__<KEY>` environment variable. `docs/operations.md`
//! lists every key.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the gRPC server listens on.
    pub listen: SocketAddr,
    /// Persistence.
    pub store: StoreConfig,
    /// Server certificate and client CA.
    pub tls: TlsConfig,
    /// Where the master secret comes from.
    pub secrets: SecretsConfig,
    /// Identity-code rules.
    pub hetu: HetuConfig,
    /// The policy set.
    pub policy: PolicyConfig,
    /// The audit ledger.
    pub ledger: LedgerConfig,
    /// How long data is kept.
    pub retention: RetentionConfig,
    /// The programme's statistics.
    pub statistics: StatisticsConfig,
    /// Group commit and delivery tuning.
    pub tuning: TuningConfig,
    /// Logging.
    pub log: LogConfig,
    /// The admin port.
    pub admin: AdminConfig,
    /// The data-protection officer's console in a browser.
    pub console: ConsoleConfig,
    /// Bearer tokens naming the person acting.
    pub jwt: JwtConfig,
    /// What one caller, connection or source address may hold of the gateway.
    pub limits: LimitsConfig,
    /// The organisations a statutory flow may tell who the resident is (`discloses_identity`
    /// in `flows.toml`), each with the public key the identity code is sealed to.
    pub statutory_recipients: Vec<StatutoryRecipient>,
}

/// One `[[statutory_recipients]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatutoryRecipient {
    /// The organisation, as its client certificate names it.
    pub org: String,
    /// Its HPKE (X25519) public key, base64 of 32 bytes, as `silta keys recipient-keypair`
    /// prints it. Only the public half: silta cannot open what it seals. Set this or
    /// `hpke_public_key_file`.
    #[serde(default)]
    pub hpke_public_key: Option<String>,
    /// A file holding the public key, base64 (`hpke-public.key` as `silta keys
    /// recipient-keypair` writes it, or `<org>.hpke-public.key` from `silta dev-pki`).
    #[serde(default)]
    pub hpke_public_key_file: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 7443)),
            store: StoreConfig::default(),
            tls: TlsConfig::default(),
            secrets: SecretsConfig::default(),
            hetu: HetuConfig::default(),
            policy: PolicyConfig::default(),
            ledger: LedgerConfig::default(),
            retention: RetentionConfig::default(),
            statistics: StatisticsConfig::default(),
            tuning: TuningConfig::default(),
            log: LogConfig::default(),
            admin: AdminConfig::default(),
            console: ConsoleConfig::default(),
            jwt: JwtConfig::default(),
            limits: LimitsConfig::default(),
            statutory_recipients: Vec::new(),
        }
    }
}

impl Config {
    /// Checks values that parse but cannot work, naming the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.store.allow_permissive_file_modes && self.store.url.starts_with("postgres") {
            return Err(
                "store.allow_permissive_file_modes applies to a SQLite store's files only; \
                 remove it for PostgreSQL"
                    .into(),
            );
        }
        let t = &self.tuning;
        if !(1..=10_000).contains(&t.max_batch) {
            return Err("tuning.max_batch must be between 1 and 10000".into());
        }
        if !(1..=10_000).contains(&t.delivery_page) {
            return Err("tuning.delivery_page must be between 1 and 10000".into());
        }
        if !(10..=600_000).contains(&t.delivery_poll_ms) {
            return Err("tuning.delivery_poll_ms must be between 10 and 600000".into());
        }
        if self.tls.trust_domain.is_empty() || self.tls.trust_domain.contains('/') {
            return Err("tls.trust_domain must be a non-empty name without '/'".into());
        }
        if self.ledger.origin.is_empty()
            || self
                .ledger
                .origin
                .contains(|c: char| c.is_whitespace() || c == '+')
        {
            return Err("ledger.origin must be non-empty, without spaces or '+'".into());
        }
        if !(100..=86_400_000).contains(&self.ledger.checkpoint_interval_ms) {
            return Err("ledger.checkpoint_interval_ms must be between 100 and 86400000".into());
        }
        if self.ledger.checkpoint_every == 0 {
            return Err("ledger.checkpoint_every must be at least 1".into());
        }
        if self.retention.alert_retention_s == 0
            || self.retention.alert_retention_s > 100 * 365 * 86_400
        {
            return Err("retention.alert_retention_s must be between 1 and 3153600000".into());
        }
        for (key, value) in [
            (
                "retention.report_retry_window_s",
                self.retention.report_retry_window_s,
            ),
            (
                "retention.ended_consent_grace_s",
                self.retention.ended_consent_grace_s,
            ),
        ] {
            if !(1..=100 * 365 * 86_400).contains(&value) {
                return Err(format!("{key} must be between 1 and 3153600000"));
            }
        }
        if !(100..=86_400_000).contains(&self.retention.purge_interval_ms) {
            return Err("retention.purge_interval_ms must be between 100 and 86400000".into());
        }
        if self.statistics.threshold < silta_core::disclosure::MIN_THRESHOLD
            || self.statistics.threshold > 1_000
        {
            return Err(format!(
                "statistics.threshold must be between {} and 1000: a smaller count can single a \
                 person out",
                silta_core::disclosure::MIN_THRESHOLD
            ));
        }
        self.limits.validate()?;
        if let Some(console) = self.console.listen
            && console.port() != 0
        {
            let taken = [
                ("listen", Some(self.listen)),
                ("admin.listen", self.admin.listen),
            ];
            if let Some((key, _)) = taken.iter().find(|(_, a)| *a == Some(console)) {
                return Err(format!(
                    "console.listen must differ from {key} ({console}): the console is served \
                     on a port of its own"
                ));
            }
        }
        if self.log.format != "pretty" && self.log.format != "json" {
            return Err("log.format must be \"pretty\" or \"json\"".into());
        }
        check_log_filter(&self.log.level).map_err(|e| format!("log.level: {e}"))?;
        if let Some(endpoint) = &self.log.otlp_endpoint {
            if endpoint.starts_with("https://") {
                if self.log.otlp_ca_file.is_none() {
                    return Err("log.otlp_endpoint is https: set log.otlp_ca_file to the PEM CA that signed the collector's certificate".into());
                }
            } else if !endpoint.starts_with("http://") {
                return Err(
                    "log.otlp_endpoint must be an http:// or https:// URL, e.g. http://127.0.0.1:4317"
                        .into(),
                );
            }
        }
        Ok(())
    }
}

/// `[store]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite://PATH` (created if missing, mode 0600) or `postgres://USER@HOST/DB` (several
    /// nodes sharing one database; docs/operations.md, "PostgreSQL roles").
    pub url: String,
    /// SQLite only: start on a database file (or `-wal`, `-shm`, `-journal`) that group or
    /// others may read or write. Off by default: such a file is refused, naming the
    /// `chmod 600` that fixes it.
    pub allow_permissive_file_modes: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: "sqlite://silta.db".into(),
            allow_permissive_file_modes: false,
        }
    }
}

/// `[tls]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM server certificate chain.
    pub cert: PathBuf,
    /// PEM server private key.
    pub key: PathBuf,
    /// PEM CA certificate(s) that client certificates must chain to.
    pub client_ca: PathBuf,
    /// PEM certificate revocation list(s) of the client CA: a listed client certificate is
    /// refused at the handshake. Read at start.
    pub client_crl: Option<PathBuf>,
    /// Trust domain of the client identities: `spiffe://<trust_domain>/org/<id>/role/<role>`.
    pub trust_domain: String,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert: "dev-pki/server.pem".into(),
            key: "dev-pki/server.key".into(),
            client_ca: "dev-pki/ca.pem".into(),
            client_crl: None,
            trust_domain: "silta.local".into(),
        }
    }
}

/// `[secrets]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecretsConfig {
    /// File holding the master secret as hex (at least 64 hex digits), readable by the owner
    /// only. The `SILTA_MASTER_SECRET` environment variable, when set, is used instead.
    pub master_secret_file: Option<PathBuf>,
    /// Version of the pseudonym keys; written into every pseudonym.
    pub pseudonym_key_version: Option<u32>,
}

/// `[hetu]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HetuConfig {
    /// Accept temporary identity codes (individual number 900–999), which test data uses.
    /// Keep `false` in production.
    pub allow_temporary: bool,
}

/// `[jwt]`: who acted. Each organisation's identity provider issues tokens that name a person;
/// silta checks them and writes the person into the audit ledger.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtConfig {
    /// One identity provider per organisation.
    pub issuers: Vec<JwtIssuer>,
    /// Roles whose every call must carry a token (e.g. `["dpo"]`).
    pub required_roles: Vec<String>,
    /// RPCs that must carry a token whatever the role (e.g.
    /// `["SocialServices.WithdrawConsent"]`).
    pub required_actions: Vec<String>,
    /// The claim naming the organisation; must equal the client certificate's.
    pub org_claim: String,
    /// A claim with the person's display name, added to the ledger's actor (optional).
    pub display_claim: Option<String>,
    /// Clock skew allowed for `exp` and `nbf`, seconds.
    pub leeway_s: u64,
    /// How often keys from a `jwks_url` are fetched again, seconds. A token whose key id is
    /// unknown also triggers a fetch, at most once per 30 seconds per issuer.
    pub jwks_refresh_s: u64,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            issuers: Vec::new(),
            required_roles: Vec::new(),
            required_actions: Vec::new(),
            org_claim: "org".into(),
            display_claim: None,
            leeway_s: 30,
            jwks_refresh_s: 300,
        }
    }
}

/// `[[jwt.issuers]]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtIssuer {
    /// The organisation (as its client certificate names it).
    pub org: String,
    /// The expected `iss`.
    pub issuer: String,
    /// The expected `aud`.
    pub audience: String,
    /// A JWKS file with the issuer's public keys (RS256, ES256 or EdDSA), read at start and
    /// every `jwt.jwks_refresh_s`. Set this or `jwks_url`.
    pub jwks_file: Option<PathBuf>,
    /// The issuer's JWKS endpoint (`https://`; `http://` only on loopback), fetched at start,
    /// every `jwt.jwks_refresh_s` and when a token names an unknown key.
    pub jwks_url: Option<String>,
    /// PEM CA certificates that verify `jwks_url`. Unset: the system's trusted roots.
    pub jwks_ca_file: Option<PathBuf>,
}

/// `[admin]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin port (plain HTTP, `GET /metrics` in OpenMetrics or the Prometheus
    /// text format, as the scraper's `Accept` asks).
    /// Unset: no admin port. Keep it on loopback or a private network: it needs no
    /// certificate.
    pub listen: Option<std::net::SocketAddr>,
}

/// `[console]`: the data-protection officer's console, HTML over HTTPS (docs/console.md).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Address of the console's HTTPS listener. Unset (the default): no console. It is served
    /// with the gateway's certificate (`tls.cert`, `tls.key`) and requires a client
    /// certificate from `tls.client_ca` (checked against `tls.client_crl`) of role `dpo`.
    pub listen: Option<SocketAddr>,
}

/// `[policy]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// Directory holding `schema.cedarschema`, `flows.toml` and the `*.cedar` policies. Unset:
    /// the built-in copy of the repository's `policies/`. Re-read on SIGHUP.
    pub dir: Option<PathBuf>,
}

/// `[ledger]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LedgerConfig {
    /// The log's name in its checkpoints (C2SP origin) and signing key name, e.g.
    /// `silta.example.fi/audit`. Must be unique per deployment.
    pub origin: String,
    /// Publish a checkpoint at least this often (milliseconds) while the ledger grows.
    pub checkpoint_interval_ms: u64,
    /// …and as soon as this many entries were appended since the last one.
    pub checkpoint_every: u64,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            origin: "silta.local/audit".into(),
            checkpoint_interval_ms: 10_000,
            checkpoint_every: 1_000,
        }
    }
}

/// `[retention]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// The longest any alert or support notice is kept, in seconds (default 90 days): each is
    /// deleted after its flow's `retention_days` or this, whichever is shorter, delivered or
    /// not. Ledger entries stay: they hold no payload.
    pub alert_retention_s: u64,
    /// How long a report's idempotency row (its key and a keyed fingerprint of its body) is
    /// kept, in seconds (default 7 days): a retry with the same key within it gets the first
    /// receipt again; after it, the key is free and the same body is a new report.
    pub report_retry_window_s: u64,
    /// How long a consent that was withdrawn, superseded or expired is kept after it ended, in
    /// seconds (default 30 days); a case whose resident holds no consent for its recipient
    /// ends this long after its last message. The ledger keeps the proof that the consent
    /// stood.
    pub ended_consent_grace_s: u64,
    /// How often the purge runs, in milliseconds.
    pub purge_interval_ms: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            alert_retention_s: 90 * 86_400,
            report_retry_window_s: 7 * 86_400,
            ended_consent_grace_s: 30 * 86_400,
            purge_interval_ms: 3_600_000,
        }
    }
}

/// The levels a log filter directive may name.
const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// Checks a log filter (`log.level` or `RUST_LOG`) as tracing reads it, and more strictly: a
/// bare word that is no level is, to tracing, a target with every level on and everything else
/// off. Written by mistake (`debgu`), it silently turns logging off, so it is refused; a
/// target is written with its level (`silta_server=debug`).
pub fn check_log_filter(spec: &str) -> Result<(), String> {
    let hint = "write a level (trace, debug, info, warn, error, off) or target=level, \
                comma-separated, e.g. \"info\" or \"silta_server=debug,info\"";
    if spec.trim().is_empty() {
        return Err(format!("is empty; {hint}"));
    }
    tracing_subscriber::EnvFilter::try_new(spec).map_err(|e| format!("{e}; {hint}"))?;
    for directive in spec.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        if !directive.contains(['=', '['])
            && !LEVELS.contains(&directive.to_ascii_lowercase().as_str())
        {
            return Err(format!(
                "{directive:?} is neither a level nor target=level (as a bare target it would \
                 turn every other log line off); {hint}"
            ));
        }
    }
    Ok(())
}

/// `[statistics]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StatisticsConfig {
    /// A released count from 1 to under this is suppressed, with as many others as it takes so
    /// that none can be recomputed from the totals (docs/statistics.md). Default 5; never
    /// below 3, the smallest Statistics Finland and THL publish.
    pub threshold: u64,
}

impl Default for StatisticsConfig {
    fn default() -> Self {
        StatisticsConfig {
            threshold: silta_core::disclosure::DEFAULT_THRESHOLD,
        }
    }
}

/// `[tuning]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TuningConfig {
    /// Most reports committed in one transaction.
    pub max_batch: usize,
    /// Alerts fetched per read of a subscriber's outbox.
    pub delivery_page: u32,
    /// How often an idle subscription re-reads its outbox, in milliseconds, in case a wake-up
    /// was missed.
    pub delivery_poll_ms: u64,
}

impl Default for TuningConfig {
    fn default() -> Self {
        TuningConfig {
            max_batch: 512,
            delivery_page: 256,
            delivery_poll_ms: 2_000,
        }
    }
}

/// `[limits]`: what one source address, connection or stream may hold, so that one
/// misbehaving or hostile caller cannot take what the others need. A source is an IPv4
/// address or an IPv6 /64. docs/security.md says which threat each limit answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// How long a client has to finish the TLS handshake, in milliseconds.
    pub handshake_timeout_ms: u64,
    /// Most TLS handshakes in progress at once, all sources together. Past it, a new
    /// connection is closed at once (the client retries) rather than queued.
    pub max_pending_handshakes: usize,
    /// Most TLS handshakes in progress from one source: sockets that never send a ClientHello
    /// from one address cannot take the shared budget above.
    pub max_pending_handshakes_per_source: usize,
    /// Most connections (handshaking or established) from one source.
    pub max_connections_per_source: usize,
    /// How long a new connection may go without its first request (the HTTP/2 preface and
    /// a call), in milliseconds, before it is closed.
    pub first_request_timeout_ms: u64,
    /// How long a connection with no call in progress is kept, in seconds, before it is closed
    /// with GOAWAY (clients reconnect transparently).
    pub idle_timeout_s: u64,
    /// How long a request's body (its one message) may take to arrive, in milliseconds;
    /// past it the call ends with `DEADLINE_EXCEEDED` and its buffer is freed.
    pub request_body_timeout_ms: u64,
    /// Connections are closed with GOAWAY after this many seconds, so that none outlives its
    /// certificate's expiry or an operator's change by long; clients reconnect transparently.
    pub max_connection_age_s: u64,
    /// After GOAWAY (age, idle, revocation, shutdown) calls in progress get this many seconds to
    /// finish before the connection is closed.
    pub max_connection_age_grace_s: u64,
    /// Most concurrent calls (HTTP/2 streams) on one connection.
    pub max_concurrent_streams: u32,
    /// Bytes an HTTP/2 stream may buffer for a client that reads slowly.
    pub stream_send_buffer_bytes: usize,
    /// A `SubscribeAlerts`/`SubscribeNotices` stream whose client reads nothing for this many
    /// milliseconds while messages wait ends with `RESOURCE_EXHAUSTED`; nothing is lost
    /// (unacknowledged messages stay in the outbox), the client resumes from its cursor.
    pub stream_stall_timeout_ms: u64,
    /// Open `SubscribeAlerts` and `SubscribeNotices` streams one organisation may hold on
    /// this node, over all its connections: a client that leaks streams is refused
    /// `RESOURCE_EXHAUSTED` (`QuotaFailure` naming this key) instead of exhausting the
    /// gateway's memory for every other organisation.
    pub max_streams_per_org: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            handshake_timeout_ms: 5_000,
            max_pending_handshakes: 512,
            max_pending_handshakes_per_source: 64,
            max_connections_per_source: 512,
            first_request_timeout_ms: 10_000,
            idle_timeout_s: 300,
            request_body_timeout_ms: 30_000,
            max_connection_age_s: 3_600,
            max_connection_age_grace_s: 60,
            max_concurrent_streams: 1_024,
            stream_send_buffer_bytes: 64 * 1024,
            stream_stall_timeout_ms: 30_000,
            max_streams_per_org: 64,
        }
    }
}

impl LimitsConfig {
    fn validate(&self) -> Result<(), String> {
        let ranges: [(&str, u64, u64, u64); 13] = [
            (
                "max_streams_per_org",
                self.max_streams_per_org as u64,
                1,
                1_000_000,
            ),
            (
                "handshake_timeout_ms",
                self.handshake_timeout_ms,
                100,
                600_000,
            ),
            (
                "max_pending_handshakes",
                self.max_pending_handshakes as u64,
                1,
                1_000_000,
            ),
            (
                "max_pending_handshakes_per_source",
                self.max_pending_handshakes_per_source as u64,
                1,
                1_000_000,
            ),
            (
                "max_connections_per_source",
                self.max_connections_per_source as u64,
                1,
                1_000_000,
            ),
            (
                "first_request_timeout_ms",
                self.first_request_timeout_ms,
                100,
                3_600_000,
            ),
            ("idle_timeout_s", self.idle_timeout_s, 1, 86_400 * 7),
            (
                "request_body_timeout_ms",
                self.request_body_timeout_ms,
                100,
                3_600_000,
            ),
            (
                "max_connection_age_s",
                self.max_connection_age_s,
                1,
                86_400 * 365,
            ),
            (
                "max_connection_age_grace_s",
                self.max_connection_age_grace_s,
                0,
                86_400,
            ),
            (
                "max_concurrent_streams",
                u64::from(self.max_concurrent_streams),
                1,
                1_000_000,
            ),
            (
                "stream_send_buffer_bytes",
                self.stream_send_buffer_bytes as u64,
                16 * 1024,
                64 * 1024 * 1024,
            ),
            (
                "stream_stall_timeout_ms",
                self.stream_stall_timeout_ms,
                100,
                3_600_000,
            ),
        ];
        for (key, value, min, max) in ranges {
            if !(min..=max).contains(&value) {
                return Err(format!("limits.{key} must be between {min} and {max}"));
            }
        }
        Ok(())
    }
}

/// `[log]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `pretty` or `json`.
    pub format: String,
    /// A tracing filter, e.g. `info` or `silta_server=debug,info`. `RUST_LOG` overrides it.
    pub level: String,
    /// Export spans over OTLP/gRPC to this collector, e.g. `http://127.0.0.1:4317`. Unset: no
    /// export. Spans carry the same fields as the logs, never an identity code.
    pub otlp_endpoint: Option<String>,
    /// PEM CA certificates that verify an `https://` collector. Required for `https`.
    pub otlp_ca_file: Option<PathBuf>,
    /// `service.name` of the exported spans.
    pub otlp_service_name: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: "pretty".into(),
            level: "info".into(),
            otlp_endpoint: None,
            otlp_ca_file: None,
            otlp_service_name: "silta".into(),
        }
    }
}

/// The prefix of the environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "SILTA_";

/// Variables of the `SILTA_` prefix that silta reads itself and that are not configuration
/// keys (the part after the prefix, lower case): the master secret, the configuration file,
/// the DPO tools' gateway address, `silta db migrate`'s settings and the tests' database.
pub const ENV_NOT_CONFIG: &[&str] = &[
    "master_secret",
    "config",
    "url",
    "migrate_url",
    "migrate_runtime_role",
    "test_postgres_url",
];

/// What a `SILTA_…` environment variable is to the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvVar {
    /// A configuration key, `SILTA_<SECTION>__<KEY>` or a top-level key such as
    /// `SILTA_LISTEN`: read, and an unknown key is an error, as in the file.
    Config,
    /// One of [`ENV_NOT_CONFIG`]: read elsewhere, skipped here.
    Other,
    /// Anything else (`SILTA_DEBUG`, another tool's `SILTA_HOME`): not silta's, ignored with
    /// a warning that names it.
    Unrelated,
}

impl EnvVar {
    /// Classifies the variable whose name, after the `SILTA_` prefix, is `key` (any case).
    pub fn of(key: &str) -> EnvVar {
        let key = key.to_ascii_lowercase();
        if ENV_NOT_CONFIG.contains(&key.as_str()) {
            return EnvVar::Other;
        }
        match key.split_once("__") {
            Some((section, rest)) if !section.is_empty() && !rest.is_empty() => EnvVar::Config,
            Some(_) => EnvVar::Unrelated,
            None if top_level_keys().contains(&key) => EnvVar::Config,
            None => EnvVar::Unrelated,
        }
    }
}

/// The top-level keys that are not sections (`listen`, `statutory_recipients`), read from the
/// configuration's own shape so that a key added later is covered.
fn top_level_keys() -> Vec<String> {
    match serde_json::to_value(Config::default()) {
        Ok(serde_json::Value::Object(map)) => map
            .into_iter()
            .filter(|(_, v)| !v.is_object())
            .map(|(k, _)| k)
            .collect(),
        _ => Vec::new(),
    }
}

/// The names of the `SILTA_…` variables in `vars` that configuration loading ignores, for
/// the warning (names only: a value may be a secret).
pub fn unrelated_env_vars(vars: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut names: Vec<String> = vars
        .into_iter()
        .filter(|name| {
            name.get(..ENV_PREFIX.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(ENV_PREFIX))
                && EnvVar::of(&name[ENV_PREFIX.len()..]) == EnvVar::Unrelated
        })
        .collect();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_documented_env_shapes_are_configuration() {
        for key in [
            "STORE__URL",
            "store__url",
            "LOG__LEVEL",
            "LISTEN",
            "NOSUCH__KEY",
        ] {
            assert_eq!(EnvVar::of(key), EnvVar::Config, "{key}");
        }
        for key in [
            "MASTER_SECRET",
            "CONFIG",
            "URL",
            "MIGRATE_URL",
            "TEST_POSTGRES_URL",
        ] {
            assert_eq!(EnvVar::of(key), EnvVar::Other, "{key}");
        }
        for key in ["DEBUG", "HOME", "STORE_URL", "__URL", "STORE__", ""] {
            assert_eq!(EnvVar::of(key), EnvVar::Unrelated, "{key}");
        }
        assert_eq!(
            unrelated_env_vars(
                [
                    "SILTA_HOME",
                    "SILTA_STORE__URL",
                    "PATH",
                    "SILTA_CONFIG",
                    "SILTA_DEBUG"
                ]
                .map(String::from)
            ),
            ["SILTA_DEBUG", "SILTA_HOME"]
        );
    }

    #[test]
    fn log_filters_are_levels_or_targets_with_a_level() {
        for ok in [
            "info",
            "WARN",
            "debug,h2=trace",
            "silta_server=debug,info",
            "silta_server::commit=trace",
            "off",
        ] {
            assert_eq!(check_log_filter(ok), Ok(()), "{ok}");
        }
        for bad in ["debgu", "info,silta_serve", "silta_server=loud", "", " , "] {
            assert!(check_log_filter(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults_are_valid_and_unworkable_values_name_their_key() {
        assert_eq!(Config::default().validate(), Ok(()));
        type Breaker = fn(&mut Config);
        let cases: [(&str, Breaker); 14] = [
            ("console.listen", |c| c.console.listen = Some(c.listen)),
            ("console.listen", |c| {
                c.admin.listen = Some("127.0.0.1:9090".parse().expect("address"));
                c.console.listen = c.admin.listen;
            }),
            ("store.allow_permissive_file_modes", |c| {
                c.store.url = "postgres://silta@db/silta".into();
                c.store.allow_permissive_file_modes = true;
            }),
            ("limits.max_pending_handshakes_per_source", |c| {
                c.limits.max_pending_handshakes_per_source = 0
            }),
            ("limits.idle_timeout_s", |c| c.limits.idle_timeout_s = 0),
            ("tuning.delivery_page", |c| c.tuning.delivery_page = 0),
            ("tuning.delivery_poll_ms", |c| c.tuning.delivery_poll_ms = 0),
            ("tuning.max_batch", |c| c.tuning.max_batch = 0),
            ("log.format", |c| c.log.format = "xml".into()),
            ("log.level", |c| c.log.level = "debgu".into()),
            ("log.level", |c| {
                c.log.level = "info,silta_server=loud".into()
            }),
            ("log.level", |c| c.log.level = " ".into()),
            ("log.otlp_endpoint", |c| {
                c.log.otlp_endpoint = Some("collector:4317".into())
            }),
            ("log.otlp_endpoint", |c| {
                c.log.otlp_endpoint = Some("https://collector:4317".into())
            }),
        ];
        for (key, break_it) in cases {
            let mut c = Config::default();
            break_it(&mut c);
            let err = c.validate().expect_err(key);
            assert!(err.starts_with(key), "{err}");
        }
    }
}
