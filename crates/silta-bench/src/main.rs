//! `silta-bench`: silta against what it cannot beat and against what a team would otherwise
//! build, in one run on one machine, with the same client, payload and mTLS certificates:
//!
//! 1. **echo**: a bare tonic server with rustls mTLS answering `ReportRentArrears` with a fixed
//!    receipt (the ceiling);
//! 2. **nginx**: Debian's nginx terminating the same mTLS and passing gRPC to that echo server
//!    (the hand-built proxy);
//! 3. **silta**: the whole gateway, durable (SQLite WAL, `synchronous = FULL`, group commit), with
//!    an enrolled population so half the reports raise an alert, and a subscriber reading and
//!    acknowledging them.
//!
//! The servers run as child processes (this binary's hidden `echo` and `gateway` subcommands, and
//! nginx) so their CPU time and memory are read from `/proc` alone. Results go to
//! `performance.md` (between the `silta-bench` markers) and a plot beside it.

mod load;
mod procs;
mod report;
mod servers;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use load::{Load, Population, Run, Subscriber};
use procs::Group;
use servers::Proc;
use silta_core::{Caller, OrgId, Role};
use silta_server::proto::{self, audit_client::AuditClient};
use silta_server::{client, devpki};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

#[derive(Parser)]
#[command(
    name = "silta-bench",
    about = "silta against a bare tonic mTLS echo server and an nginx grpc_pass proxy, in one run"
)]
struct Cli {
    #[command(subcommand)]
    child: Option<ChildCommand>,
    /// A short run (under a minute) that checks the benchmark still works; its figures are
    /// written under target/silta-bench, not into docs/.
    #[arg(long)]
    quick: bool,
    /// Concurrent callers to sweep, e.g. 1,4,16,64,256.
    #[arg(long, value_delimiter = ',')]
    concurrency: Option<Vec<usize>>,
    /// Seconds each measured point runs.
    #[arg(long)]
    seconds: Option<f64>,
    /// Residents enrolled with consent (as many again are reported without being clients).
    #[arg(long)]
    enrolled: Option<usize>,
    /// Where performance.md and the plot are written (default: docs, or target/silta-bench with
    /// --quick).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Runs without nginx when it is not installed (the report says so); without this flag a
    /// missing nginx is an error.
    #[arg(long)]
    without_nginx: bool,
    /// Ledger sizes at which append throughput, disk use and proof time are measured.
    #[arg(long, value_delimiter = ',')]
    ledger_sizes: Option<Vec<u64>>,
}

#[derive(Subcommand)]
enum ChildCommand {
    /// The echo server (run by the benchmark itself).
    #[command(hide = true)]
    Echo {
        pki: PathBuf,
        tls: SocketAddr,
        plain: SocketAddr,
    },
    /// The gateway (run by the benchmark itself).
    #[command(hide = true)]
    Gateway {
        pki: PathBuf,
        db: PathBuf,
        listen: SocketAddr,
        admin: SocketAddr,
    },
}

/// What one invocation measures.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) quick: bool,
    pub(crate) concurrency: Vec<usize>,
    pub(crate) seconds: f64,
    pub(crate) enrolled: usize,
    pub(crate) ledger_sizes: Vec<u64>,
    pub(crate) subscriptions: Vec<usize>,
    pub(crate) connections: usize,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.child {
        Some(ChildCommand::Echo { pki, tls, plain }) => {
            runtime.block_on(servers::run_echo(&pki, tls, plain))
        }
        Some(ChildCommand::Gateway {
            pki,
            db,
            listen,
            admin,
        }) => {
            // As `silta serve` logs by default: one line per RPC at info, to stderr.
            let _logs = silta_server::telemetry::init(&Default::default())?;
            runtime.block_on(servers::run_gateway(&pki, &db, listen, admin))
        }
        None => {
            let settings = Settings {
                quick: cli.quick,
                concurrency: cli.concurrency.unwrap_or_else(|| {
                    if cli.quick {
                        vec![1, 16, 64]
                    } else {
                        vec![1, 4, 16, 64, 256]
                    }
                }),
                seconds: cli.seconds.unwrap_or(if cli.quick { 1.0 } else { 5.0 }),
                enrolled: cli.enrolled.unwrap_or(if cli.quick { 500 } else { 10_000 }),
                ledger_sizes: cli.ledger_sizes.unwrap_or_else(|| {
                    if cli.quick {
                        vec![]
                    } else {
                        vec![10_000, 100_000, 1_000_000]
                    }
                }),
                subscriptions: vec![10, 100, 1_000],
                connections: 4,
            };
            if settings.concurrency.is_empty() || settings.concurrency.contains(&0) {
                bail!("--concurrency: give one or more counts above zero, e.g. 1,16,64");
            }
            if settings.seconds.is_nan() || settings.seconds <= 0.0 {
                bail!("--seconds: must be above zero");
            }
            let out = cli.out.unwrap_or_else(|| {
                if cli.quick {
                    PathBuf::from("target/silta-bench")
                } else {
                    PathBuf::from("docs")
                }
            });
            let nginx = match servers::find_nginx() {
                Some(path) => Some(path),
                None if cli.without_nginx => None,
                None => bail!(
                    "nginx is not installed, so the hand-built proxy cannot be measured: \
                     `apt-get install nginx` (Debian's package), or pass --without-nginx to \
                     measure without it (the report will say so)"
                ),
            };
            let results = runtime.block_on(bench(&settings, nginx.as_deref()))?;
            std::fs::create_dir_all(&out)?;
            let written = report::write(&out, &settings, &results)?;
            for path in written {
                println!("wrote {}", path.display());
            }
            Ok(())
        }
    }
}

/// One measured point of a sweep.
#[derive(Debug, Clone)]
pub(crate) struct Point {
    pub(crate) concurrency: usize,
    pub(crate) run: Run,
    pub(crate) cpu_seconds: f64,
    /// The load generator's own CPU seconds (with the subscriber, for silta).
    pub(crate) client_cpu_seconds: f64,
    /// The share of the machine's CPU time that was busy, 0 to 1, whoever used it.
    pub(crate) machine_busy: f64,
}

impl Point {
    pub(crate) fn cpu_per_1000(&self) -> f64 {
        self.cpu_seconds / self.run.requests.max(1) as f64 * 1000.0
    }

    pub(crate) fn client_cpu_per_1000(&self) -> f64 {
        self.client_cpu_seconds / self.run.requests.max(1) as f64 * 1000.0
    }
}

/// A system's sweep.
#[derive(Debug, Clone)]
pub(crate) struct System {
    pub(crate) name: &'static str,
    pub(crate) points: Vec<Point>,
    pub(crate) peak_rss: u64,
    /// The fixed-rate run at half of silta's peak.
    pub(crate) half_load: Option<Run>,
}

impl System {
    pub(crate) fn peak(&self) -> f64 {
        self.points
            .iter()
            .map(|p| p.run.per_second())
            .fold(0.0, f64::max)
    }
}

/// Ledger growth: throughput and cost at one ledger size.
#[derive(Debug, Clone)]
pub(crate) struct Growth {
    pub(crate) entries: u64,
    pub(crate) reports_per_s: f64,
    pub(crate) db_bytes: u64,
    pub(crate) proof_ms: f64,
    pub(crate) fill: Duration,
}

/// Everything one run measured.
#[derive(Debug, Clone)]
pub(crate) struct Results {
    pub(crate) systems: Vec<System>,
    pub(crate) nginx_missing: bool,
    pub(crate) enrol: Duration,
    pub(crate) alerts: u64,
    pub(crate) delivery: Option<hdrhistogram::Histogram<u64>>,
    pub(crate) half_rate: f64,
    pub(crate) entries_per_report: f64,
    pub(crate) growth: Vec<Growth>,
    /// (open subscriptions, gateway RSS in bytes); the first is the idle gateway's.
    pub(crate) subscriptions: Vec<(usize, u64)>,
    pub(crate) started: time::OffsetDateTime,
    pub(crate) took: Duration,
}

struct Pki {
    dir: tempfile::TempDir,
    ca: String,
    landlord: (String, String),
    social: (String, String),
    dpo: (String, String),
}

impl Pki {
    fn path(&self) -> &Path {
        self.dir.path()
    }

    async fn channels(&self, addr: SocketAddr, n: usize) -> anyhow::Result<Vec<Channel>> {
        let mut channels = Vec::with_capacity(n);
        for _ in 0..n {
            channels
                .push(client::connect(addr, &self.ca, &self.landlord.0, &self.landlord.1).await?);
        }
        Ok(channels)
    }
}

fn mint_pki() -> anyhow::Result<Pki> {
    let caller = |org: &str, role| -> anyhow::Result<Caller> {
        Ok(Caller {
            org: OrgId::new(org).map_err(|e| anyhow::anyhow!("{org}: {e}"))?,
            role,
        })
    };
    let callers = [
        caller("city-housing", Role::Landlord)?,
        caller("helsinki-social", Role::SocialServices)?,
        caller("dpo-office", Role::Dpo)?,
    ];
    let pki = devpki::mint("silta bench CA", "silta.local", &callers)?;
    let dir = tempfile::tempdir()?;
    pki.write_to(dir.path())?;
    let pem = |org: &str| -> anyhow::Result<(String, String)> {
        let (_, pem) = pki
            .clients
            .iter()
            .find(|(c, _)| c.org.as_str() == org)
            .context("minted client")?;
        Ok((pem.cert.clone(), pem.key.clone()))
    };
    Ok(Pki {
        ca: pki.ca_cert.clone(),
        landlord: pem("city-housing")?,
        social: pem("helsinki-social")?,
        dpo: pem("dpo-office")?,
        dir,
    })
}

async fn sweep(
    name: &'static str,
    load: &Load,
    group: &Group,
    settings: &Settings,
    ticks: f64,
) -> anyhow::Result<System> {
    // Warm up: connections, TLS session state, allocator, SQLite page cache.
    let warm = load
        .closed(16, Duration::from_secs_f64(settings.seconds.min(1.0)))
        .await;
    check(name, "warm-up", &warm)?;
    let mut points = Vec::new();
    for &c in &settings.concurrency {
        let cpu = group.cpu_seconds(ticks);
        let client_cpu = procs::own_cpu_seconds(ticks);
        let machine = procs::machine_ticks();
        let run = load
            .closed(c, Duration::from_secs_f64(settings.seconds))
            .await;
        let cpu_seconds = group.cpu_seconds(ticks) - cpu;
        let client_cpu_seconds = procs::own_cpu_seconds(ticks) - client_cpu;
        let machine_busy = {
            let (busy, total) = procs::machine_ticks();
            busy.saturating_sub(machine.0) as f64 / total.saturating_sub(machine.1).max(1) as f64
        };
        check(name, &format!("{c} callers"), &run)?;
        println!(
            "  {name:>5} c={c:<4} {:>8.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  p99.9 {:>6.2} ms  {:.3} CPU s/1k  machine {:.0} % busy",
            run.per_second(),
            run.ms(0.5),
            run.ms(0.99),
            run.ms(0.999),
            cpu_seconds / run.requests.max(1) as f64 * 1000.0,
            machine_busy * 100.0,
        );
        points.push(Point {
            concurrency: c,
            run,
            cpu_seconds,
            client_cpu_seconds,
            machine_busy,
        });
    }
    Ok(System {
        name,
        points,
        peak_rss: group.peak_rss_bytes(),
        half_load: None,
    })
}

fn check(name: &str, what: &str, run: &Run) -> anyhow::Result<()> {
    if run.errors > 0 {
        bail!(
            "{name}, {what}: {} of {} requests failed; first: {}",
            run.errors,
            run.requests,
            run.first_error.as_deref().unwrap_or("?")
        );
    }
    if run.requests == 0 {
        bail!("{name}, {what}: no request completed");
    }
    Ok(())
}

async fn bench(settings: &Settings, nginx: Option<&Path>) -> anyhow::Result<Results> {
    let started = time::OffsetDateTime::now_utc();
    let t0 = Instant::now();
    let ticks = procs::clock_ticks();
    let exe = std::env::current_exe()?;
    let pki = mint_pki()?;
    let work = pki.path().to_owned();
    let population = Population::new(settings.enrolled);
    let mut systems = Vec::new();

    // 1. The ceiling.
    println!("echo: bare tonic + rustls mTLS, fixed receipt");
    let (echo_tls, echo_plain) = (servers::free_port()?, servers::free_port()?);
    let echo_log = work.join("echo.log");
    let mut echo_cmd = Command::new(&exe);
    echo_cmd
        .arg("echo")
        .arg(&work)
        .arg(echo_tls.to_string())
        .arg(echo_plain.to_string());
    let mut echo = Proc::spawn("echo server", echo_cmd, &echo_log)?;
    servers::wait_for_port(echo_tls, &mut echo, &echo_log, Duration::from_secs(10)).await?;
    let echo_load = Load::new(
        pki.channels(echo_tls, settings.connections).await?,
        population.clone(),
    );
    let echo_group = Group::new(vec![echo.pid()]);
    systems.push(sweep("echo", &echo_load, &echo_group, settings, ticks).await?);

    // 2. The hand-built proxy.
    let mut nginx_proc = None;
    let mut nginx_load = None;
    if let Some(nginx) = nginx {
        println!("nginx: grpc_pass to the echo server, same mTLS");
        let listen = servers::free_port()?;
        for sub in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
            std::fs::create_dir_all(work.join(sub))?;
        }
        let conf = work.join("nginx.conf");
        std::fs::write(
            &conf,
            servers::nginx_config(&work, &work, listen, echo_plain),
        )?;
        let log = work.join("nginx.log");
        let mut cmd = Command::new(nginx);
        cmd.arg("-p").arg(&work).arg("-c").arg(&conf);
        let mut proc = Proc::spawn("nginx", cmd, &log)?;
        servers::wait_for_port(listen, &mut proc, &log, Duration::from_secs(10)).await?;
        let load = Load::new(
            pki.channels(listen, settings.connections).await?,
            population.clone(),
        );
        let mut pids = vec![proc.pid(), echo.pid()];
        pids.extend(procs::children(proc.pid()));
        let group = Group::new(pids);
        systems.push(sweep("nginx", &load, &group, settings, ticks).await?);
        nginx_proc = Some(proc);
        nginx_load = Some(load);
    } else {
        println!("nginx: not installed; the hand-built proxy is NOT measured in this run");
    }

    // 3. silta.
    println!(
        "silta: full pipeline, durable SQLite, {} enrolled",
        settings.enrolled
    );
    let gateway = Gateway::start(&exe, &pki, "silta").await?;
    let social = client::connect(gateway.listen, &pki.ca, &pki.social.0, &pki.social.1).await?;
    let enrol = load::enrol(&social, &population, 64).await?;
    println!(
        "  enrolled {} residents in {:.1} s",
        settings.enrolled,
        enrol.as_secs_f64()
    );
    let subscriber = Subscriber::start(social.clone(), population.clone()).await?;
    let silta_load = Load::new(
        pki.channels(gateway.listen, settings.connections).await?,
        population.clone(),
    );
    let group = Group::new(vec![gateway.proc.pid()]);
    let mut silta = sweep("silta", &silta_load, &group, settings, ticks).await?;

    // Latency at half of silta's peak, the same fixed rate for all three.
    let half_rate = (silta.peak() / 2.0).max(10.0);
    let half = Duration::from_secs_f64(settings.seconds.max(2.0));
    println!(
        "half load: {half_rate:.0} reports/s for {:.0} s each",
        half.as_secs_f64()
    );
    let run = echo_load.open(half_rate, half).await;
    check("echo", "half load", &run)?;
    systems[0].half_load = Some(run);
    if let Some(load) = &nginx_load {
        let run = load.open(half_rate, half).await;
        check("nginx", "half load", &run)?;
        systems[1].half_load = Some(run);
    }
    tokio::time::sleep(Duration::from_millis(500)).await; // earlier alerts drain
    let _ = subscriber.take_delivery();
    let entries_before = gateway.ledger_entries().await?;
    let run = silta_load.open(half_rate, half).await;
    check("silta", "half load", &run)?;
    tokio::time::sleep(Duration::from_millis(500)).await; // the last alerts arrive
    // Reports, decisions, alerts and the subscriber's acknowledgements, per report.
    let entries_per_report = gateway
        .ledger_entries()
        .await?
        .saturating_sub(entries_before) as f64
        / run.requests.max(1) as f64;
    let delivery = subscriber.take_delivery();
    silta.half_load = Some(run);
    for s in systems.iter().chain(std::iter::once(&silta)) {
        if let Some(r) = &s.half_load {
            println!(
                "  {:>5} p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms",
                s.name,
                r.ms(0.5),
                r.ms(0.99),
                r.ms(0.999)
            );
        }
    }
    println!(
        "  report → subscriber: p50 {:.2} ms  p99 {:.2} ms ({} alerts)",
        delivery.value_at_quantile(0.5) as f64 / 1000.0,
        delivery.value_at_quantile(0.99) as f64 / 1000.0,
        delivery.len()
    );
    if let Some(failure) = subscriber.failure() {
        bail!("the subscriber failed: {failure}");
    }
    silta.peak_rss = group.peak_rss_bytes();
    systems.push(silta);
    drop(nginx_proc);
    drop(echo);

    let alerts = subscriber.alerts();
    drop(subscriber);
    drop(gateway);

    // How cost grows with the ledger: a fresh gateway with the same population, filled by the
    // same reports (and a subscriber draining the alerts), measured at each size.
    let mut growth = Vec::new();
    if !settings.ledger_sizes.is_empty() {
        println!(
            "ledger growth: a fresh gateway, {} enrolled",
            settings.enrolled
        );
        let gateway = Gateway::start(&exe, &pki, "silta-growth").await?;
        let population = Population::new(settings.enrolled);
        let social = client::connect(gateway.listen, &pki.ca, &pki.social.0, &pki.social.1).await?;
        load::enrol(&social, &population, 64).await?;
        let subscriber = Subscriber::start(social, population.clone()).await?;
        let load = Load::new(
            pki.channels(gateway.listen, settings.connections).await?,
            population,
        );
        for &target in &settings.ledger_sizes {
            let fill = Instant::now();
            while gateway.ledger_entries().await? < target {
                let run = load.closed(64, Duration::from_secs(2)).await;
                check("silta", "filling the ledger", &run)?;
            }
            let fill = fill.elapsed();
            let run = load
                .closed(64, Duration::from_secs_f64(settings.seconds))
                .await;
            check("silta", "at ledger size", &run)?;
            let entries = gateway.ledger_entries().await?;
            let proof_ms = gateway.proof_time(&pki, entries, 200).await?;
            let g = Growth {
                entries,
                reports_per_s: run.per_second(),
                db_bytes: procs::sqlite_size(&gateway.db),
                proof_ms,
                fill,
            };
            println!(
                "  ledger {:>9} entries: {:>6.0} reports/s, {:>7.1} MB on disk, inclusion proof {:.2} ms",
                g.entries,
                g.reports_per_s,
                g.db_bytes as f64 / 1e6,
                g.proof_ms
            );
            growth.push(g);
        }
        if let Some(failure) = subscriber.failure() {
            bail!("the subscriber failed: {failure}");
        }
    }

    // Memory per open subscription, on a fresh gateway.
    println!("subscriptions: memory of a fresh gateway with open alert streams");
    let fresh = Gateway::start(&exe, &pki, "silta-subs").await?;
    let subscriptions = fresh
        .subscription_memory(&pki, &settings.subscriptions)
        .await?;
    for (n, rss) in &subscriptions {
        println!("  {n:>5} open: RSS {:.1} MB", *rss as f64 / 1e6);
    }
    drop(fresh);

    Ok(Results {
        systems,
        nginx_missing: nginx.is_none(),
        enrol,
        alerts,
        delivery: Some(delivery),
        half_rate,
        entries_per_report,
        growth,
        subscriptions,
        started,
        took: t0.elapsed(),
    })
}

/// A gateway child process, its database and its admin port.
struct Gateway {
    proc: Proc,
    listen: SocketAddr,
    admin: SocketAddr,
    db: PathBuf,
}

impl Gateway {
    async fn start(exe: &Path, pki: &Pki, name: &str) -> anyhow::Result<Gateway> {
        let (listen, admin) = (servers::free_port()?, servers::free_port()?);
        let db = pki.path().join(format!("{name}.db"));
        let log = pki.path().join(format!("{name}.log"));
        let mut cmd = Command::new(exe);
        cmd.arg("gateway")
            .arg(pki.path())
            .arg(&db)
            .arg(listen.to_string())
            .arg(admin.to_string());
        let mut proc = Proc::spawn("silta gateway", cmd, &log)?;
        servers::wait_for_port(listen, &mut proc, &log, Duration::from_secs(30)).await?;
        Ok(Gateway {
            proc,
            listen,
            admin,
            db,
        })
    }

    /// The ledger size, from `/metrics`.
    async fn ledger_entries(&self) -> anyhow::Result<u64> {
        let metrics = http_get(self.admin, "/metrics").await?;
        metrics
            .lines()
            .find(|l| l.starts_with("silta_ledger_entries "))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .context("/metrics has no silta_ledger_entries")
    }

    /// Mean time of `n` inclusion proofs for entries spread over the ledger, asked by the DPO.
    async fn proof_time(&self, pki: &Pki, entries: u64, n: u64) -> anyhow::Result<f64> {
        let channel = client::connect(self.listen, &pki.ca, &pki.dpo.0, &pki.dpo.1).await?;
        let mut audit = AuditClient::new(channel);
        let checkpoint = audit
            .get_checkpoint(proto::GetCheckpointRequest { size: 0 })
            .await?
            .into_inner();
        let size = checkpoint.size.min(entries).max(1);
        let start = Instant::now();
        for k in 0..n {
            let index = (k * 7_919 + 13) % size;
            audit
                .get_inclusion_proof(proto::GetInclusionProofRequest {
                    index,
                    tree_size: size,
                })
                .await
                .with_context(|| format!("inclusion proof of {index} in {size}"))?;
        }
        Ok(start.elapsed().as_secs_f64() * 1000.0 / n.max(1) as f64)
    }

    /// RSS of the idle gateway, then with each count of open alert streams (100 per
    /// connection, as a subscriber fleet would spread them).
    async fn subscription_memory(
        &self,
        pki: &Pki,
        counts: &[usize],
    ) -> anyhow::Result<Vec<(usize, u64)>> {
        let group = Group::new(vec![self.proc.pid()]);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut out = vec![(0, group.rss_bytes())];
        let mut channels: Vec<Channel> = Vec::new();
        let mut streams = Vec::new();
        for &count in counts {
            while streams.len() < count {
                if streams.len() % 100 == 0 {
                    channels.push(
                        client::connect(self.listen, &pki.ca, &pki.social.0, &pki.social.1).await?,
                    );
                }
                let channel = channels
                    .last()
                    .context("a channel was just opened")?
                    .clone();
                let mut client = proto::social_services_client::SocialServicesClient::new(channel);
                let stream = client
                    .subscribe_alerts(proto::SubscribeAlertsRequest { after_sequence: 0 })
                    .await?
                    .into_inner();
                streams.push(stream);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            out.push((count, group.rss_bytes()));
        }
        // Every stream is still open and healthy (none ended with an error).
        for s in &mut streams {
            if let Ok(Some(Err(status))) =
                tokio::time::timeout(Duration::from_millis(1), s.next()).await
            {
                bail!(
                    "a subscription ended: {:?} {}",
                    status.code(),
                    status.message()
                );
            }
        }
        Ok(out)
    }
}

/// A plain HTTP/1.0 GET on loopback (the admin port), body only.
async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await?;
    let (head, body) = body
        .split_once("\r\n\r\n")
        .context("HTTP response without a body")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!("GET {path}: {}", head.lines().next().unwrap_or(""));
    }
    Ok(body.to_owned())
}
