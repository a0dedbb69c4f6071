//! The systems under test, each run as a child process of the benchmark (`silta-bench echo`,
//! `silta-bench gateway`, and nginx) so that their CPU time and memory are measured alone.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use silta_core::MasterSecret;
use silta_server::proto::landlord_server::{Landlord, LandlordServer};
use silta_server::proto::{self};
use tokio_stream::Stream;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

/// The ceiling: the same `Landlord` service, generated from the same `.proto`, answering every
/// report with a fixed receipt and doing nothing else.
struct Echo;

type NoticeStream = Pin<Box<dyn Stream<Item = Result<proto::SupportNotice, Status>> + Send>>;

#[tonic::async_trait]
impl Landlord for Echo {
    async fn report_rent_arrears(
        &self,
        request: Request<proto::ReportRentArrearsRequest>,
    ) -> Result<Response<proto::ReportReceipt>, Status> {
        Ok(Response::new(proto::ReportReceipt {
            report_id: "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b".into(),
            received_at: Some(prost_types::Timestamp {
                seconds: 1_790_000_000,
                nanos: 0,
            }),
            idempotency_key: request.into_inner().idempotency_key,
        }))
    }

    async fn report_eviction_stage(
        &self,
        _: Request<proto::ReportEvictionStageRequest>,
    ) -> Result<Response<proto::ReportReceipt>, Status> {
        Err(Status::unimplemented(
            "the echo server answers ReportRentArrears only",
        ))
    }

    async fn report_disturbance(
        &self,
        _: Request<proto::ReportDisturbanceRequest>,
    ) -> Result<Response<proto::ReportReceipt>, Status> {
        Err(Status::unimplemented(
            "the echo server answers ReportRentArrears only",
        ))
    }

    type SubscribeNoticesStream = NoticeStream;

    async fn subscribe_notices(
        &self,
        _: Request<proto::SubscribeNoticesRequest>,
    ) -> Result<Response<NoticeStream>, Status> {
        Err(Status::unimplemented(
            "the echo server answers ReportRentArrears only",
        ))
    }

    async fn ack_notices(
        &self,
        _: Request<proto::AckNoticesRequest>,
    ) -> Result<Response<proto::AckNoticesResponse>, Status> {
        Err(Status::unimplemented(
            "the echo server answers ReportRentArrears only",
        ))
    }
}

/// `silta-bench echo`: serves the echo on `tls` (mTLS, the dev PKI in `pki`) and, for nginx
/// to proxy to, on `plain` (cleartext HTTP/2 on loopback, the cheapest upstream nginx can have).
pub(crate) async fn run_echo(pki: &Path, tls: SocketAddr, plain: SocketAddr) -> anyhow::Result<()> {
    let read = |name: &str| {
        std::fs::read_to_string(pki.join(name)).with_context(|| format!("reading {name}"))
    };
    let tls_config = ServerTlsConfig::new()
        .identity(Identity::from_pem(read("server.pem")?, read("server.key")?))
        .client_ca_root(Certificate::from_pem(read("ca.pem")?));
    let secure = Server::builder()
        .tls_config(tls_config)?
        .add_service(LandlordServer::new(Echo))
        .serve(tls);
    let cleartext = Server::builder()
        .add_service(LandlordServer::new(Echo))
        .serve(plain);
    tokio::try_join!(secure, cleartext)?;
    Ok(())
}

/// `silta-bench gateway`: the gateway as `silta serve` runs it (the same `silta_server::start`,
/// default configuration, durable SQLite in WAL mode with `synchronous = FULL`, per-RPC log
/// lines at `info`), on the dev PKI in `pki`, with `/metrics` on `admin`.
pub(crate) async fn run_gateway(
    pki: &Path,
    db: &Path,
    listen: SocketAddr,
    admin: SocketAddr,
) -> anyhow::Result<()> {
    let mut config = silta_server::Config {
        listen,
        ..Default::default()
    };
    config.store.url = format!("sqlite://{}", db.display());
    config.tls.cert = pki.join("server.pem");
    config.tls.key = pki.join("server.key");
    config.tls.client_ca = pki.join("ca.pem");
    config.hetu.allow_temporary = true; // the benchmark's codes are synthetic (900–999)
    config.admin.listen = Some(admin);
    // The memory-per-stream measurement opens thousands of streams as one organisation: past
    // the default cap, which is what keeps a leaking client from doing that in production.
    config.limits.max_streams_per_org = 100_000;
    // The statutory flow must be able to seal the identity to its recipient.
    config
        .statutory_recipients
        .push(silta_server::config::StatutoryRecipient {
            org: "helsinki-social".to_owned(),
            hpke_public_key: None,
            hpke_public_key_file: Some(pki.join("helsinki-social.hpke-public.key")),
        });
    let mut secret = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
        .map_err(|_| anyhow::anyhow!("system random generator failed"))?;
    let secret = MasterSecret::from_bytes(&secret)?;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let gateway = silta_server::start(&config, secret, listener).await?;
    gateway.wait().await?;
    Ok(())
}

/// A child process that is stopped when dropped.
pub(crate) struct Proc {
    pub(crate) name: &'static str,
    child: Child,
}

impl Proc {
    pub(crate) fn spawn(name: &'static str, mut cmd: Command, log: &Path) -> anyhow::Result<Proc> {
        let out = std::fs::File::create(log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Proc { name, child })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the process has already exited (it crashed or could not start).
    pub(crate) fn check_alive(&mut self, log: &Path) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(15).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!("{} exited ({status}):\n{}", self.name, tail.join("\n"));
        }
        Ok(())
    }
}

impl Drop for Proc {
    /// SIGTERM, then SIGKILL after 5 s. nginx needs the polite signal: killing its master
    /// outright leaves the workers running.
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until something accepts TCP connections on `addr`.
pub(crate) async fn wait_for_port(
    addr: SocketAddr,
    proc: &mut Proc,
    log: &Path,
    within: Duration,
) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        proc.check_alive(log)?;
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if start.elapsed() > within {
            bail!("{} did not listen on {addr} within {within:?}", proc.name);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A free loopback port (bound, read and released; the child binds it a moment later).
pub(crate) fn free_port() -> anyhow::Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

/// Where nginx lives, if it is installed.
pub(crate) fn find_nginx() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// The hand-built proxy: nginx terminating the same mTLS (TLS 1.3, client certificates from the
/// same CA) and passing gRPC to the echo server over cleartext HTTP/2 with pooled upstream
/// connections. The two `keepalive_requests` lines lift nginx's default of closing a client
/// connection after 1,000 requests, which would otherwise cost it a handshake every 1,000 calls.
pub(crate) fn nginx_config(
    dir: &Path,
    pki: &Path,
    listen: SocketAddr,
    upstream: SocketAddr,
) -> String {
    let d = dir.display();
    let p = pki.display();
    let user = if crate::procs::is_root() {
        "user root;\n"
    } else {
        ""
    };
    format!(
        "{user}worker_processes auto;
daemon off;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log {d}/nginx-access.log;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    upstream echo {{
        server {upstream};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen {listen} ssl http2;
        ssl_protocols TLSv1.3;
        ssl_certificate {p}/server.pem;
        ssl_certificate_key {p}/server.key;
        ssl_client_certificate {p}/ca.pem;
        ssl_verify_client on;
        location / {{
            grpc_pass grpc://echo;
        }}
    }}
}}
"
    )
}
