//! Test support: a real gateway on an ephemeral loopback port, with real certificates and a
//! real SQLite file, plus the fixtures and a log capture.

use std::path::PathBuf;
use std::sync::{Mutex, Once};

use silta_core::{Caller, Keyring, OrgId, Role};
use silta_server::devpki::{self, DevPki};
use silta_server::proto::landlord_client::LandlordClient;
use silta_server::proto::social_services_client::SocialServicesClient;
use silta_server::proto::{self, EvictionStage};
use silta_server::{Config, RunningGateway, client};
use tempfile::TempDir;
use tonic::transport::Channel;

/// The landlord organisation of the tests.
pub const LANDLORD: &str = "city-housing";
/// A second landlord organisation, for alerts from several landlords.
pub const LANDLORD_B: &str = "kodit-landlord";
/// Two social-services organisations.
pub const SOCIAL_A: &str = "social-a";
/// The second social-services organisation.
pub const SOCIAL_B: &str = "social-b";
/// The DPO's organisation.
pub const DPO: &str = "dpo-office";
/// The programme's researchers: role `analyst`, statistics only.
pub const ANALYST: &str = "programme-research";
/// The municipal social services the statutory flow names in `policies/flows.toml`.
pub const MUNICIPAL: &str = "helsinki-social";

/// A gateway under test.
pub struct TestGateway {
    /// Holds the database and certificates; removed on drop.
    pub dir: TempDir,
    /// The minted certificates.
    pub pki: DevPki,
    /// The gateway's configuration.
    pub config: Config,
    /// The verifier key of the ledger's checkpoints.
    pub checkpoint_key: String,
    /// MUNICIPAL's HPKE private key (base64): the statutory recipient's, which opens the
    /// identity sealed to it. silta is given only the public half.
    pub municipal_private_key: String,
    /// The keyring's secrets, version 1 first.
    secrets: Vec<[u8; 32]>,
    running: Option<RunningGateway>,
}

fn callers() -> Vec<Caller> {
    [
        (LANDLORD, Role::Landlord),
        (LANDLORD_B, Role::Landlord),
        (SOCIAL_A, Role::SocialServices),
        (SOCIAL_B, Role::SocialServices),
        (MUNICIPAL, Role::SocialServices),
        (DPO, Role::Dpo),
        (ANALYST, Role::Analyst),
    ]
    .into_iter()
    .map(|(org, role)| Caller {
        org: OrgId::new(org).expect("valid test org"),
        role,
    })
    .collect()
}

impl TestGateway {
    /// Starts a gateway with fresh certificates, a fresh database and a random secret.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts a gateway as [`TestGateway::start`] does, after `adjust` changes its configuration.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Self {
        capture_logs();
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = devpki::mint("silta test CA", "silta.local", &callers()).expect("dev PKI");
        pki.write_to(dir.path()).expect("write PKI");
        let mut config = Config {
            listen: "127.0.0.1:0".parse().expect("address"),
            ..Config::default()
        };
        config.store.url = format!("sqlite://{}", dir.path().join("silta.db").display());
        config.tls.cert = dir.path().join("server.pem");
        config.tls.key = dir.path().join("server.key");
        config.tls.client_ca = dir.path().join("ca.pem");
        config.hetu.allow_temporary = true;
        config.tuning.delivery_poll_ms = 200;
        // The statutory flow discloses identity to MUNICIPAL: without its key no gateway starts.
        let (municipal_private_key, municipal_public) = silta_core::sealed::generate_keypair();
        config
            .statutory_recipients
            .push(silta_server::config::StatutoryRecipient {
                org: MUNICIPAL.to_owned(),
                hpke_public_key: Some(municipal_public),
                hpke_public_key_file: None,
            });
        adjust(&mut config);
        let mut secret = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
            .expect("random");
        let mut gw = TestGateway {
            dir,
            pki,
            config,
            secrets: vec![secret],
            municipal_private_key: municipal_private_key.to_string(),
            checkpoint_key: String::new(),
            running: None,
        };
        gw.boot().await;
        gw
    }

    async fn boot(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.config.listen)
            .await
            .expect("bind");
        let running = silta_server::start(&self.config, self.keyring(), listener)
            .await
            .expect("gateway starts");
        self.checkpoint_key = running.checkpoint_verifier_key.clone();
        self.running = Some(running);
    }

    /// The keyring: every version added so far.
    pub fn keyring(&self) -> Keyring {
        self.keyring_of(self.secrets.len())
    }

    /// The keyring of versions 1 to `versions`.
    pub fn keyring_of(&self, versions: usize) -> Keyring {
        let text: String = self.secrets[..versions]
            .iter()
            .enumerate()
            .map(|(i, s)| format!("v{} {}\n", i + 1, hex(s)))
            .collect();
        Keyring::parse(&text, 1).expect("a valid keyring")
    }

    /// Adds a random pseudonym key version, as `silta keys rotate` does; the running gateway
    /// learns of it at its next restart.
    pub fn rotate_keys(&mut self) {
        let mut secret = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
            .expect("random");
        self.secrets.push(secret);
    }

    /// Promotes the keyring's newest version from a second process's view of the database,
    /// as `silta keys promote` does while the gateway runs.
    pub async fn promote_keys(&self) -> silta_server::keys::Promotion {
        let store = silta_server::open_store(&self.config.store)
            .await
            .expect("open store");
        let p = silta_core::Pseudonymiser::with_keyring(self.keyring());
        let done = silta_server::keys::promote(
            &*store,
            &p,
            p.latest_version(),
            &self.config.ledger.origin,
        )
        .await
        .expect("promote");
        store.close().await;
        done
    }

    /// Where the gateway listens.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.running.as_ref().expect("running").local_addr
    }

    /// Stops the gateway gracefully and starts it again on the same database and secret.
    pub async fn restart(&mut self) {
        let running = self.running.take().expect("running");
        running.shutdown().await.expect("clean shutdown");
        self.boot().await;
    }

    /// Starts the gateway again after [`TestGateway::stop`], on the same database and secret.
    pub async fn restart_after_stop(&mut self) {
        assert!(self.running.is_none(), "stop it first");
        self.boot().await;
    }

    /// Stops the gateway gracefully.
    pub async fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await.expect("clean shutdown");
        }
    }

    /// Reloads the TLS files, as SIGHUP does.
    pub async fn reload_tls(&self) -> Result<usize, silta_server::tls::TlsError> {
        let running = self.running.as_ref().expect("running");
        running.reloader.reload_tls().await
    }

    /// Where `/metrics` is served, when `admin.listen` is set.
    pub fn admin_addr(&self) -> Option<std::net::SocketAddr> {
        self.running.as_ref().expect("running").admin_addr
    }

    /// Where the DPO console is served, when `console.listen` is set.
    pub fn console_addr(&self) -> Option<std::net::SocketAddr> {
        self.running.as_ref().expect("running").console_addr
    }

    /// `GET path` on the DPO console over HTTPS/1.1, presenting `org`'s client certificate
    /// (`None`: no certificate). An error when the TLS handshake or the exchange fails.
    pub async fn console_get(
        &self,
        org: Option<&str>,
        path: &str,
    ) -> Result<client::HttpsResponse, client::HttpsError> {
        let addr = self.console_addr().expect("console.listen is set");
        let identity = org.map(|org| {
            let (_, pem) = self
                .pki
                .clients
                .iter()
                .find(|(c, _)| c.org.as_str() == org)
                .expect("known org");
            (pem.cert.as_str(), pem.key.as_str())
        });
        client::https_get(addr, &self.pki.ca_cert, identity, path).await
    }

    /// Reloads the policy set, as SIGHUP does.
    pub async fn reload_policies(&self) -> Result<String, silta_core::policy::PolicyErrors> {
        let running = self.running.as_ref().expect("running");
        running.reloader.reload().await
    }

    /// The repository's `policies/` copied into a fresh directory of this gateway's, for a
    /// test to edit and point `policy.dir` at.
    pub fn copy_policies(dir: &std::path::Path) -> PathBuf {
        let target = dir.join("policies");
        std::fs::create_dir_all(&target).expect("create policy dir");
        for (name, text) in silta_core::policy::BUILTIN_FILES {
            std::fs::write(target.join(name), text).expect("write policy file");
        }
        target
    }

    /// The SQLite database file.
    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("silta.db")
    }

    /// A channel authenticated as `org`.
    pub async fn channel(&self, org: &str) -> Channel {
        let (_, pem) = self
            .pki
            .clients
            .iter()
            .find(|(c, _)| c.org.as_str() == org)
            .expect("known org");
        client::connect(self.addr(), &self.pki.ca_cert, &pem.cert, &pem.key)
            .await
            .expect("mTLS connection")
    }

    /// A landlord client as `org`.
    pub async fn landlord(&self, org: &str) -> LandlordClient<Channel> {
        LandlordClient::new(self.channel(org).await)
    }

    /// An audit client as `org`.
    pub async fn audit(
        &self,
        org: &str,
    ) -> silta_server::proto::audit_client::AuditClient<Channel> {
        silta_server::proto::audit_client::AuditClient::new(self.channel(org).await)
    }

    /// A social-services client as `org`.
    pub async fn social(&self, org: &str) -> SocialServicesClient<Channel> {
        SocialServicesClient::new(self.channel(org).await)
    }

    /// Runs `sql` on the database with write access, as an attacker with database access
    /// could (the gateway should be stopped).
    pub async fn tamper(&self, sql: &str) {
        let url = format!("sqlite://{}", self.db_path().display());
        let pool = sqlx::SqlitePool::connect(&url)
            .await
            .expect("open database");
        sqlx::raw_sql(sql).execute(&pool).await.expect("tamper");
        pool.close().await;
    }

    /// Rows of `sql` (one blob column) from the database, read-only.
    pub async fn query_blobs(&self, sql: &str) -> Vec<Vec<u8>> {
        let url = format!("sqlite://{}?mode=ro", self.db_path().display());
        let pool = sqlx::SqlitePool::connect(&url)
            .await
            .expect("open database read-only");
        let rows: Vec<Vec<u8>> = sqlx::query_scalar(sql)
            .fetch_all(&pool)
            .await
            .expect("query");
        pool.close().await;
        rows
    }

    /// Rows of `sql` (one text column) from the database, read-only.
    pub async fn query_strings(&self, sql: &str) -> Vec<String> {
        let url = format!("sqlite://{}?mode=ro", self.db_path().display());
        let pool = sqlx::SqlitePool::connect(&url)
            .await
            .expect("open database read-only");
        let rows: Vec<String> = sqlx::query_scalar(sql)
            .fetch_all(&pool)
            .await
            .expect("query");
        pool.close().await;
        rows
    }
}

fn fixture(name: &str) -> Vec<(String, String)> {
    let path = format!(
        // The shared synthetic fixtures, vendored; CI checks they match ../shared/fixtures.
        "{}/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("fixture {path}: {e}"))
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (code, rest) = l.split_once('\t').expect("tab-separated fixture");
            (code.to_owned(), rest.to_owned())
        })
        .collect()
}

/// Every valid synthetic identity code in the shared fixtures.
pub fn valid_hetus() -> Vec<String> {
    fixture("hetu-valid.txt")
        .into_iter()
        .map(|(c, _)| c)
        .collect()
}

/// Every invalid identity-code string in the shared fixtures, with its reason.
pub fn invalid_hetus() -> Vec<(String, String)> {
    fixture("hetu-invalid.txt")
}

fn ts(t: time::OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.unix_timestamp(),
        nanos: 0,
    }
}

/// A consent given an hour ago, valid for a year.
pub fn consent() -> proto::Consent {
    let now = time::OffsetDateTime::now_utc();
    proto::Consent {
        purpose: "eviction-prevention".into(),
        given_at: Some(ts(now - time::Duration::hours(1))),
        valid_until: Some(ts(now + time::Duration::days(365))),
        evidence_ref: "DOC-1".into(),
        notice_version: "v1".into(),
        share_outcome_with_landlord: true,
    }
}

/// An enrolment request for `hetu`.
pub fn enrol(hetu: &str) -> proto::EnrolClientRequest {
    proto::EnrolClientRequest {
        hetu: hetu.into(),
        consent: Some(consent()),
    }
}

/// A rent-arrears report for `hetu` under idempotency key `key`.
pub fn report(key: &str, hetu: &str) -> proto::ReportRentArrearsRequest {
    proto::ReportRentArrearsRequest {
        idempotency_key: key.into(),
        hetu: hetu.into(),
        tenancy_ref: "T-1/A".into(),
        arrears_cents: 73_000,
        months_overdue: 2,
        eviction_stage: EvictionStage::Warning.into(),
        landlord_contact_office: "Kallio office".into(),
        free_text_note: "private note that must never cross".into(),
        purpose: "eviction-prevention".into(),
        legal_basis: CONSENT.into(),
    }
}

/// The legal basis id of the consent-based flows.
pub const CONSENT: &str = "gdpr-6-1-a-consent";
/// The legal basis id of the statutory flow.
pub const STATUTORY: &str = "fi-shl-35-notification";

/// An eviction-stage report for `hetu` under `key`, on `legal_basis`.
pub fn eviction(
    key: &str,
    hetu: &str,
    stage: EvictionStage,
    legal_basis: &str,
) -> proto::ReportEvictionStageRequest {
    proto::ReportEvictionStageRequest {
        idempotency_key: key.into(),
        hetu: hetu.into(),
        tenancy_ref: "T-1/A".into(),
        purpose: "eviction-prevention".into(),
        legal_basis: legal_basis.into(),
        eviction_stage: stage.into(),
        stage_date: "2026-12-15".into(),
        landlord_contact_office: "Kallio office".into(),
    }
}

/// Opens the identity sealed in `alert` as `org` with its `private_key` (base64).
pub fn open_sealed(
    alert: &proto::Alert,
    org: &str,
    private_key: &str,
) -> Result<String, silta_core::sealed::SealError> {
    let s = alert
        .sealed_identity
        .as_ref()
        .ok_or(silta_core::sealed::SealError::Open)?;
    let sealed = silta_core::sealed::SealedIdentity {
        suite: s.suite.clone(),
        key_id: s.key_id.clone(),
        enc: s.enc.clone(),
        ciphertext: s.ciphertext.clone(),
    };
    silta_core::sealed::open(private_key, &sealed, &alert.flow_id, org, &alert.alert_id)
        .map(|code| code.to_string())
}

/// A disturbance notice for `hetu` under `key`.
pub fn disturbance(key: &str, hetu: &str) -> proto::ReportDisturbanceRequest {
    proto::ReportDisturbanceRequest {
        idempotency_key: key.into(),
        hetu: hetu.into(),
        tenancy_ref: "T-1/A".into(),
        purpose: "eviction-prevention".into(),
        legal_basis: CONSENT.into(),
        category: proto::DisturbanceCategory::Noise.into(),
        count_in_period: 3,
        period_month: "2026-10".into(),
        landlord_contact_office: "Kallio office".into(),
    }
}

static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Captures every log line of this test process, at TRACE level, in memory, and exports every
/// span over OTLP/gRPC (the gateway's own exporter) to a receiver in this process.
pub fn capture_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        let logs = tracing_subscriber::fmt::layer()
            // Span closings too, with every field recorded.
            .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
            .with_writer(|| LogWriter)
            .with_ansi(false);
        tracing_subscriber::registry()
            .with(logs)
            .with(silta_server::telemetry::otlp_layer(&otlp().provider))
            .with(tracing_subscriber::filter::LevelFilter::TRACE)
            .init();
    });
}

/// An OTLP receiver on loopback and the span exporter that sends to it, both on a runtime of
/// their own: the exporter's channel must outlive every test's runtime.
struct Otlp {
    provider: opentelemetry_sdk::trace::SdkTracerProvider,
    received: std::sync::Arc<Mutex<Vec<String>>>,
}

fn otlp() -> &'static Otlp {
    static OTLP: std::sync::OnceLock<Otlp> = std::sync::OnceLock::new();
    OTLP.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("OTLP runtime");
            runtime.block_on(async move {
                let received = std::sync::Arc::new(Mutex::new(Vec::new()));
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind OTLP receiver");
                let addr = listener.local_addr().expect("OTLP address");
                let service = TraceServiceServer::new(Receiver(received.clone()));
                tokio::spawn(
                    tonic::transport::Server::builder()
                        .add_service(service)
                        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(
                            listener,
                        )),
                );
                let provider = silta_server::telemetry::otlp_provider(
                    &format!("http://{addr}"),
                    None,
                    "silta-test",
                )
                .expect("OTLP exporter");
                tx.send(Otlp { provider, received }).expect("send OTLP");
                std::future::pending::<()>().await
            })
        });
        rx.recv().expect("OTLP receiver started")
    })
}

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};

struct Receiver(std::sync::Arc<Mutex<Vec<String>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        // The debug form shows every span name, attribute and event as sent.
        let text = format!("{:?}", request.into_inner());
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(text);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// Every span exported over OTLP so far, after flushing the exporter's queue.
pub fn exported_spans() -> String {
    let otlp = otlp();
    // The flush blocks until the receiver answered; off the test's runtime thread.
    std::thread::scope(|s| {
        s.spawn(|| otlp.provider.force_flush().expect("flush OTLP exporter"))
            .join()
            .expect("flush thread")
    });
    otlp.received
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .join("\n")
}

/// Everything logged so far.
pub fn captured_logs() -> String {
    String::from_utf8_lossy(&LOGS.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `GET path` on the admin port, over plain HTTP/1.1: the whole response.
pub async fn admin_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("admin port");
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: silta\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("request");
    let mut body = String::new();
    stream.read_to_string(&mut body).await.expect("response");
    body
}
