//! Prometheus metrics, served on the admin port (`admin.listen`, plain HTTP, `/metrics`).
//!
//! Labels are fixed, small sets (RPC names, status reasons, flow ids, outcomes, roles) and, for
//! open subscriptions only, the organisation its verified client certificate names (one of the
//! programme's few organisations, issued by the city's CA): never a pseudonym, a case reference
//! or anything a request carried, so the metrics hold no personal data and their cardinality
//! stays bounded.
//!
//! Beside silta's own (`silta_*`), the standard process metrics (`process_cpu_seconds_total`,
//! `process_resident_memory_bytes`, `process_open_fds`) are read from `/proc` at each scrape.

use std::collections::HashMap;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// An RPC and how it ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    /// e.g. `Landlord.ReportRentArrears`.
    pub rpc: &'static str,
    /// `OK` or the error's stable reason, e.g. `invalid-argument`.
    pub code: &'static str,
}

/// A disclosure decision.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// The flow id.
    pub flow: String,
    /// `allow` or `deny`.
    pub outcome: &'static str,
}

/// A subscription's kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleLabels {
    /// The subscriber's role.
    pub role: &'static str,
    /// The subscriber's organisation, as its client certificate names it.
    pub org: String,
}

/// Why a connection was refused or closed: a reason silta chose, from a fixed set.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// e.g. `source-handshakes`, `idle`, `revoked`.
    pub reason: &'static str,
}

/// A ledger entry an audit read refused to serve.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MismatchLabels {
    /// `Audit.Query` or `Audit.Export`.
    pub rpc: &'static str,
    /// `decode`, `index` (a column disagrees with the entry), `leaf` (the entry's hash is not
    /// the stored leaf) or `checkpoint` (not included under the signed root).
    pub check: &'static str,
}

/// Every metric the gateway keeps.
pub struct Metrics {
    registry: Registry,
    /// Requests by RPC and outcome.
    pub requests: Family<RpcLabels, Counter>,
    /// Seconds from a call's arrival to its answer (a stream: to its start), by RPC and outcome.
    pub rpc_seconds: Family<RpcLabels, Histogram, fn() -> Histogram>,
    /// Jobs waiting for the committer after it took a batch.
    pub commit_queue: Gauge,
    /// Requests refused because the committer's queue was full.
    pub overloaded: Counter,
    /// Subscriptions refused because their organisation held `limits.max_streams_per_org`.
    pub quota_refusals: Counter,
    /// Disclosure decisions by flow and outcome.
    pub decisions: Family<DecisionLabels, Counter>,
    /// Jobs per group-commit transaction.
    pub batch_size: Histogram,
    /// Seconds per group-commit transaction (apply and durable commit).
    pub commit_seconds: Histogram,
    /// Open alert and notice subscriptions.
    pub subscriptions: Family<RoleLabels, Gauge>,
    /// Entries in the ledger, as of the checkpointer's last look.
    pub ledger_entries: Gauge,
    /// Unix time of the newest signed checkpoint.
    pub last_checkpoint: Gauge,
    /// Outbox messages not yet acknowledged, read at each scrape.
    pub undelivered: Gauge,
    /// TLS handshakes in progress.
    pub pending_handshakes: Gauge,
    /// Established connections.
    pub open_connections: Gauge,
    /// Connections refused before or at the handshake, by reason.
    pub connections_refused: Family<ReasonLabels, Counter>,
    /// Connections the gateway closed, by reason.
    pub connections_closed: Family<ReasonLabels, Counter>,
    /// Calls ended because their request body did not arrive in time.
    pub request_body_timeouts: Counter,
    /// Subscriptions ended because their client stopped reading.
    pub stalled_streams: Counter,
    /// Ledger entries that failed a check when read for the DPO, by RPC and check.
    pub ledger_entry_mismatches: Family<MismatchLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut root = Registry::default();
        root.register_collector(Box::new(ProcessCollector));
        let registry = root.sub_registry_with_prefix("silta");
        registry.register(
            "build",
            "The running release",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        let requests = Family::<RpcLabels, Counter>::default();
        registry.register(
            "rpc_requests",
            "gRPC requests by RPC and outcome",
            requests.clone(),
        );
        let rpc_seconds: Family<RpcLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0005, 2.0, 16)));
        registry.register(
            "rpc_duration_seconds",
            "Seconds from a call's arrival to its answer (a stream: to its start), by RPC and outcome",
            rpc_seconds.clone(),
        );
        let quota_refusals = Counter::default();
        registry.register(
            "stream_quota_refusals",
            "Subscriptions refused RESOURCE_EXHAUSTED because the organisation held limits.max_streams_per_org",
            quota_refusals.clone(),
        );
        let overloaded = Counter::default();
        registry.register(
            "overloaded",
            "Requests refused UNAVAILABLE (with RetryInfo) because the group committer's queue was full",
            overloaded.clone(),
        );
        let commit_queue = Gauge::default();
        registry.register(
            "commit_queue_depth",
            "Jobs waiting for the group committer after it took its latest batch",
            commit_queue.clone(),
        );
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "decisions",
            "Disclosure decisions by flow and outcome",
            decisions.clone(),
        );
        let batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 11));
        registry.register(
            "commit_batch_size",
            "Jobs committed per group-commit transaction",
            batch_size.clone(),
        );
        let commit_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        registry.register(
            "commit_seconds",
            "Seconds per group-commit transaction, durable",
            commit_seconds.clone(),
        );
        let subscriptions = Family::<RoleLabels, Gauge>::default();
        registry.register(
            "open_subscriptions",
            "Open SubscribeAlerts and SubscribeNotices streams by role and organisation",
            subscriptions.clone(),
        );
        let ledger_entries = Gauge::default();
        registry.register(
            "ledger_entries",
            "Entries in the audit ledger",
            ledger_entries.clone(),
        );
        let last_checkpoint = Gauge::default();
        registry.register(
            "last_checkpoint_timestamp_seconds",
            "Unix time of the newest signed checkpoint (alert on time() minus this)",
            last_checkpoint.clone(),
        );
        let undelivered = Gauge::default();
        registry.register(
            "undelivered_messages",
            "Alerts and support notices not yet acknowledged (all recipients)",
            undelivered.clone(),
        );
        let pending_handshakes = Gauge::default();
        registry.register(
            "pending_handshakes",
            "TLS handshakes in progress",
            pending_handshakes.clone(),
        );
        let open_connections = Gauge::default();
        registry.register(
            "open_connections",
            "Established mTLS connections",
            open_connections.clone(),
        );
        let connections_refused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "connections_refused",
            "Connections refused before or at the TLS handshake, by reason",
            connections_refused.clone(),
        );
        let connections_closed = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "connections_closed",
            "Connections the gateway closed (idle, age, revoked, shutdown, ...), by reason",
            connections_closed.clone(),
        );
        let request_body_timeouts = Counter::default();
        registry.register(
            "request_body_timeouts",
            "Calls ended because the request body did not arrive in time",
            request_body_timeouts.clone(),
        );
        let stalled_streams = Counter::default();
        registry.register(
            "stalled_streams",
            "Alert and notice streams ended because the client stopped reading",
            stalled_streams.clone(),
        );
        let ledger_entry_mismatches = Family::<MismatchLabels, Counter>::default();
        registry.register(
            "ledger_entry_mismatches",
            "Ledger entries refused to the DPO because they fail a check against the signed tree \
             (any value above 0 means the database was changed outside the gateway)",
            ledger_entry_mismatches.clone(),
        );
        Metrics {
            registry: root,
            rpc_seconds,
            commit_queue,
            overloaded,
            quota_refusals,
            ledger_entry_mismatches,
            undelivered,
            pending_handshakes,
            open_connections,
            connections_refused,
            connections_closed,
            request_body_timeouts,
            stalled_streams,
            requests,
            decisions,
            batch_size,
            commit_seconds,
            subscriptions,
            ledger_entries,
            last_checkpoint,
        }
    }
}

impl Metrics {
    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The same figures in the Prometheus text format 0.0.4, for scrapers that do not ask for
    /// OpenMetrics (see [`to_prometheus_text`]).
    pub fn encode_prometheus(&self) -> String {
        to_prometheus_text(&self.encode())
    }
}

/// The content type of an OpenMetrics scrape.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of a Prometheus text-format scrape.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Rewrites an OpenMetrics exposition as the Prometheus text format 0.0.4. The two differ in
/// the metadata only: a counter's family is named with its `_total` suffix (OpenMetrics names
/// the family without it), an info metric is a gauge named `_info`, an unknown one `untyped`;
/// `# UNIT` lines and the closing `# EOF` do not exist in the older format. Samples are the
/// same lines.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut types: HashMap<&str, &str> = HashMap::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some((name, kind)) = rest.split_once(' ')
        {
            types.insert(name, kind);
        }
    }
    let renamed = |name: &str| -> (String, &'static str) {
        match types.get(name).copied() {
            Some("counter") => (format!("{name}_total"), "counter"),
            Some("info") => (format!("{name}_info"), "gauge"),
            Some("gauge") => (name.to_owned(), "gauge"),
            Some("histogram") => (name.to_owned(), "histogram"),
            Some("summary") => (name.to_owned(), "summary"),
            _ => (name.to_owned(), "untyped"),
        }
    };
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some((name, _)) = rest.split_once(' ')
        {
            let (name, kind) = renamed(name);
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ")
            && let Some((name, help)) = rest.split_once(' ')
        {
            out.push_str(&format!("# HELP {} {help}\n", renamed(name).0));
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Counts one in a gauge for as long as it lives: a task cancelled at any await still
/// gives its count back.
pub(crate) struct GaugeGuard(Gauge);

impl GaugeGuard {
    pub(crate) fn new(gauge: &Gauge) -> Self {
        gauge.inc();
        GaugeGuard(gauge.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The standard process metrics, read from `/proc/self` at each scrape (Linux; elsewhere none).
#[derive(Debug)]
struct ProcessCollector;

/// Clock ticks per second of `/proc/<pid>/stat` times: `USER_HZ`, 100 in Linux's user ABI.
const USER_HZ: f64 = 100.0;

impl ProcessCollector {
    /// User plus system CPU seconds.
    fn cpu_seconds() -> Option<f64> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // The command name (field 2) is in parentheses and may hold spaces: count from after it.
        let after = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = after.split(' ').collect();
        // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
        let ticks: u64 =
            fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        Some(ticks as f64 / USER_HZ)
    }

    /// Resident set size in bytes (`VmRSS`, in kB).
    fn resident_bytes() -> Option<i64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let kb: i64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kb * 1024)
    }

    fn open_fds() -> Option<i64> {
        let n = std::fs::read_dir("/proc/self/fd").ok()?.count();
        i64::try_from(n).ok()
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(cpu) = Self::cpu_seconds() {
            let c = ConstCounter::new(cpu);
            let m = encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                c.metric_type(),
            )?;
            c.encode(m)?;
        }
        if let Some(rss) = Self::resident_bytes() {
            let g = ConstGauge::new(rss);
            let m = encoder.encode_descriptor(
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                None,
                g.metric_type(),
            )?;
            g.encode(m)?;
        }
        if let Some(fds) = Self::open_fds() {
            let g = ConstGauge::new(fds);
            let m = encoder.encode_descriptor(
                "process_open_fds",
                "Number of open file descriptors",
                None,
                g.metric_type(),
            )?;
            g.encode(m)?;
        }
        Ok(())
    }
}

/// Counts an open subscription for as long as it lives.
pub(crate) struct SubscriptionGuard {
    gauge: Gauge,
}

impl SubscriptionGuard {
    pub(crate) fn new(metrics: &Metrics, role: &'static str, org: &silta_core::OrgId) -> Self {
        let gauge = metrics
            .subscriptions
            .get_or_create(&RoleLabels {
                role,
                org: org.to_string(),
            })
            .clone();
        gauge.inc();
        SubscriptionGuard { gauge }
    }
}

impl Drop for SubscriptionGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until `stop`.
///
/// The two probes exist for orchestrators whose health checks cannot present a client
/// certificate (the kubelet's): `/healthz` answers 200 while the process serves HTTP at all;
/// `/readyz` answers 200 only while the store answers a read within two seconds, the store's
/// pseudonym key version is in this node's keyring (a node that missed a rotation can write
/// nothing) and shutdown has not begun, 503 otherwise. Neither says anything about any
/// organisation or person.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    store: Arc<dyn silta_store::Store>,
    pseudonymiser: silta_core::Pseudonymiser,
    stop: CancellationToken,
) {
    let ready_store = Arc::clone(&store);
    let ready_stop = stop.clone();
    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .route(
            "/readyz",
            axum::routing::get(move || {
                let store = Arc::clone(&ready_store);
                let stop = ready_stop.clone();
                let pseudonymiser = pseudonymiser.clone();
                async move {
                    use axum::http::StatusCode;
                    if stop.is_cancelled() {
                        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
                    }
                    if pseudonymiser.missing_version().is_some() {
                        return (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "the store uses a pseudonym key version this node's keyring lacks: \
                             install the rotated keyring and restart\n",
                        );
                    }
                    let probe = tokio::time::timeout(
                        std::time::Duration::from_secs(2),
                        store.ledger_head(),
                    )
                    .await;
                    match probe {
                        Ok(Ok(_)) => (StatusCode::OK, "ready\n"),
                        _ => (StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n"),
                    }
                }
            }),
        )
        .route(
            "/metrics",
            axum::routing::get(move |headers: axum::http::HeaderMap| {
                let metrics = Arc::clone(&metrics);
                let store = Arc::clone(&store);
                async move {
                    // A failed count leaves the last value; the store's own error is logged there.
                    if let Ok(n) = store.undelivered().await {
                        metrics
                            .undelivered
                            .set(i64::try_from(n).unwrap_or(i64::MAX));
                    }
                    // OpenMetrics to a scraper that asks for it (Prometheus does, first in its
                    // Accept list); the classic text format to anyone else.
                    let openmetrics = headers
                        .get_all(axum::http::header::ACCEPT)
                        .iter()
                        .filter_map(|v| v.to_str().ok())
                        .any(|v| v.contains("application/openmetrics-text"));
                    if openmetrics {
                        (
                            [(axum::http::header::CONTENT_TYPE, OPENMETRICS)],
                            metrics.encode(),
                        )
                    } else {
                        (
                            [(axum::http::header::CONTENT_TYPE, PROMETHEUS_TEXT)],
                            metrics.encode_prometheus(),
                        )
                    }
                }
            }),
        );
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "admin port stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_classic_text_names_each_family_as_its_samples_are_named() {
        let metrics = Metrics::default();
        metrics
            .decisions
            .get_or_create(&DecisionLabels {
                flow: "rent-arrears".into(),
                outcome: "allow",
            })
            .inc();
        metrics
            .rpc_seconds
            .get_or_create(&RpcLabels {
                rpc: "Landlord.ReportRentArrears",
                code: "OK",
            })
            .observe(0.004);
        let open = metrics.encode();
        assert!(open.ends_with("# EOF\n"), "{open}");
        let classic = metrics.encode_prometheus();
        assert!(!classic.contains("# EOF") && !classic.contains("# UNIT"));
        // Every sample belongs to the family its TYPE line names, as the 0.0.4 parser reads
        // it: a counter's samples end in _total, and so does its family.
        let mut family = String::new();
        let mut kind = String::new();
        for line in classic.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, k) = rest.split_once(' ').expect("name and type");
                family = name.to_owned();
                kind = k.to_owned();
                continue;
            }
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let name = line.split(['{', ' ']).next().expect("a sample name");
            let ok = match kind.as_str() {
                "histogram" => [
                    format!("{family}_bucket"),
                    format!("{family}_sum"),
                    format!("{family}_count"),
                ]
                .contains(&name.to_owned()),
                _ => name == family,
            };
            assert!(ok, "sample {name} under family {family} ({kind})");
        }
        assert!(
            classic.contains("# TYPE silta_decisions_total counter"),
            "{classic}"
        );
        for family in [
            "# TYPE silta_build_info gauge",
            "# TYPE silta_rpc_duration_seconds histogram",
            "# TYPE silta_commit_queue_depth gauge",
            "# TYPE process_cpu_seconds_total counter",
            "# TYPE process_resident_memory_bytes gauge",
            "# TYPE process_open_fds gauge",
        ] {
            assert!(classic.contains(family), "{family} missing:\n{classic}");
        }
        assert!(open.contains("# TYPE silta_build info"), "{open}");
    }
}
