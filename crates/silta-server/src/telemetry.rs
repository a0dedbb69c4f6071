//! Logs and traces: one `tracing` subscriber that writes logs to stderr (pretty or JSON) and,
//! when `log.otlp_endpoint` is set, exports every span over OTLP/gRPC with a batch exporter.
//!
//! The exported spans carry exactly the fields the logs do (RPC path, request id,
//! organisation, role, flow, decision, status code, duration): the request path never records
//! an identity code, so neither does an exporter. The privacy e2e test captures both the log
//! text and the spans a real OTLP receiver gets, and checks them.

use std::io::IsTerminal;
use std::path::Path;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::LogConfig;

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TelemetryError {
    /// The OTLP exporter could not be built (a malformed endpoint, say).
    #[error("log.otlp_endpoint: {0}")]
    Otlp(String),
    /// A global subscriber was already installed.
    #[error("logging was already initialised")]
    AlreadyInitialised,
}

/// Keeps the span exporter alive; [`Telemetry::shutdown`] flushes what is still queued.
#[must_use = "dropping it stops nothing, but call shutdown() so the last spans are exported"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    /// The log writer's thread; dropping it writes the lines still queued.
    _logs: Option<WorkerGuard>,
}

impl Telemetry {
    /// Exports the spans still queued (bounded by the exporter's timeout) and stops the
    /// exporter. Call it from a multi-threaded runtime's worker or outside any runtime.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!(error = %e, "OTLP exporter did not shut down cleanly; the last spans may be lost");
        }
    }
}

/// A tracer provider exporting spans over OTLP/gRPC to `endpoint` (e.g.
/// `http://127.0.0.1:4317`), named `service` in the exported resource. An `https` endpoint is
/// verified against the PEM certificates in `ca_file`.
///
/// Must be called inside a multi-threaded tokio runtime that outlives the provider: the
/// exporter's gRPC channel runs on it.
pub fn otlp_provider(
    endpoint: &str,
    ca_file: Option<&Path>,
    service: &str,
) -> Result<SdkTracerProvider, TelemetryError> {
    let mut builder = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint);
    if let Some(ca_file) = ca_file {
        let pem = std::fs::read(ca_file).map_err(|e| {
            TelemetryError::Otlp(format!("log.otlp_ca_file {}: {e}", ca_file.display()))
        })?;
        builder = builder.with_tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(pem)),
        );
    }
    let exporter = builder
        .build()
        .map_err(|e| TelemetryError::Otlp(e.to_string()))?;
    let resource = Resource::builder_empty()
        .with_attributes([
            KeyValue::new("service.name", service.to_owned()),
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        ])
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(Reported::new(exporter))
        .with_resource(resource)
        .build())
}

/// An exporter that says when its exports fail: a collector that is down loses spans, and the
/// operator should know, but once a minute at most, not at every batch.
#[derive(Debug)]
struct Reported<E> {
    inner: E,
    /// When a failure was last said, and the spans lost since.
    failures: std::sync::Mutex<(Option<std::time::Instant>, u64)>,
}

/// How often a failing export is said at most.
const EXPORT_FAILURE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

impl<E> Reported<E> {
    fn new(inner: E) -> Self {
        Reported {
            inner,
            failures: std::sync::Mutex::new((None, 0)),
        }
    }

    /// Counts `lost` spans of a failed export; returns how many to report now, if it is time.
    fn failed(&self, lost: u64, now: std::time::Instant) -> Option<u64> {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        f.1 += lost;
        let due =
            f.0.is_none_or(|last| now.duration_since(last) >= EXPORT_FAILURE_EVERY);
        due.then(|| {
            f.0 = Some(now);
            std::mem::take(&mut f.1)
        })
    }
}

impl<E: SpanExporter> SpanExporter for Reported<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let lost = u64::try_from(batch.len()).unwrap_or(u64::MAX);
        let result = self.inner.export(batch).await;
        if let Err(e) = &result
            && let Some(spans_lost) = self.failed(lost, std::time::Instant::now())
        {
            // Outside any span, so it is not itself exported.
            tracing::warn!(
                spans_lost,
                error = %e,
                "OTLP export failed; spans are lost until the collector answers (said at most once a minute)"
            );
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: std::time::Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The `tracing` layer that turns spans into OpenTelemetry spans of `provider`.
///
/// The transport crates' own spans are left out: the exporter itself runs on h2, hyper and
/// tonic, and exporting the spans of an export would feed itself.
pub fn otlp_layer<S>(provider: &SdkTracerProvider) -> impl tracing_subscriber::Layer<S> + use<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let own_transport = Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_targets(
            [
                "h2",
                "hyper",
                "hyper_util",
                "tower",
                "tonic::transport",
                "opentelemetry",
                "opentelemetry_sdk",
                "opentelemetry_otlp",
            ]
            .map(|t| (t, LevelFilter::OFF)),
        );
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("silta"))
        .with_filter(own_transport)
}

/// The target of the span each RPC runs in. The span is at DEBUG: logs at INFO leave it out
/// (with the line of every call, up to a tenth of the gateway's CPU per report at the
/// benchmark's rates; docs/performance.md), and the OTLP exporter always takes it
/// (`rpc_span_directive`).
pub(crate) const RPC_SPAN_TARGET: &str = "silta::rpc";

/// Enables the RPC span for a layer whatever its level.
fn rpc_span_directive() -> tracing_subscriber::filter::Directive {
    // A constant that parses (unit-tested below).
    format!("{RPC_SPAN_TARGET}=debug")
        .parse()
        .expect("the RPC span directive is valid")
}

/// Installs the process-wide subscriber for a server: logs to stderr in `log.format` at
/// `log.level` (`RUST_LOG` overrides the level), plus OTLP export when `log.otlp_endpoint` is
/// set.
///
/// Lines are formatted by the thread that logs and written by a thread of their own, several
/// per write: an RPC never waits for stderr (a pipe to journald, a slow terminal), and a busy
/// gateway makes one syscall per batch of lines rather than one per line. None is dropped: when
/// the queue is full, loggers wait. Keep the returned [`Telemetry`] until the end: dropping it
/// writes what is queued (waiting a second at most). A process that exits at once
/// (`std::process::exit`, as on a second shutdown signal) may lose the last lines.
///
/// With an OTLP endpoint it must run inside a multi-threaded tokio runtime.
pub fn init(log: &LogConfig) -> Result<Telemetry, TelemetryError> {
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("silta-log")
        .finish(std::io::BufWriter::new(std::io::stderr()));
    install(log, BoxMakeWriter::new(writer), Some(guard))
}

/// As [`init`], for a command-line tool: each line is written to stderr as it is logged, so
/// nothing is queued when the tool exits.
pub fn init_direct(log: &LogConfig) -> Result<Telemetry, TelemetryError> {
    install(log, BoxMakeWriter::new(std::io::stderr), None)
}

fn install(
    log: &LogConfig,
    writer: BoxMakeWriter,
    guard: Option<WorkerGuard>,
) -> Result<Telemetry, TelemetryError> {
    // RUST_LOG, when set and valid, replaces `log.level` (as its documentation says); an
    // invalid one is ignored, and said so once logging is up.
    let env = std::env::var(EnvFilter::DEFAULT_ENV).ok();
    let env_refused = env
        .as_deref()
        .and_then(|s| crate::config::check_log_filter(s).err());
    let spec = env
        .filter(|_| env_refused.is_none())
        .unwrap_or_else(|| log.level.clone());
    let filter = || log_filter(&spec);
    let provider = match log.otlp_endpoint.as_deref() {
        Some(endpoint) => Some(otlp_provider(
            endpoint,
            log.otlp_ca_file.as_deref(),
            &log.otlp_service_name,
        )?),
        None => None,
    };
    // Colours only for a person at a terminal, not in files and journals.
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(std::io::stderr().is_terminal());
    let mut layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> = Vec::new();
    // Each layer has its own filter, so that the RPC span (DEBUG, see `RPC_SPAN_TARGET`) costs
    // nothing when only the logs are on at INFO, and is still exported when traces are.
    if log.format == "json" {
        // At DEBUG, each line carries the RPC's span (path, request id, organisation, role,
        // flow, code).
        layers.push(
            fmt.json()
                .with_current_span(true)
                .with_span_list(false)
                .with_filter(filter())
                .boxed(),
        );
    } else {
        layers.push(fmt.with_filter(filter()).boxed());
    }
    if let Some(provider) = &provider {
        let traced = filter().add_directive(rpc_span_directive());
        layers.push(otlp_layer(provider).with_filter(traced).boxed());
    }
    tracing_subscriber::registry()
        .with(layers)
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInitialised)?;
    if let Some(endpoint) = log.otlp_endpoint.as_deref() {
        tracing::info!(endpoint, "exporting spans over OTLP/gRPC");
    }
    if let Some(reason) = env_refused {
        tracing::warn!(%reason, "RUST_LOG is not a valid filter and is ignored; log.level applies");
    }
    Ok(Telemetry {
        provider,
        _logs: guard,
    })
}

/// Continues the caller's W3C trace: the RPC span becomes a child of the `traceparent` the
/// request carries, if any and valid. Only `traceparent` is read: its ids and flags are hex by
/// grammar, while `tracestate` may carry any text a caller chose, and spans carry none.
pub(crate) fn continue_trace(span: &tracing::Span, headers: &hyper::HeaderMap) {
    use opentelemetry::propagation::{Extractor, TextMapPropagator};
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    struct TraceParentOnly<'a>(&'a hyper::HeaderMap);
    impl Extractor for TraceParentOnly<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            if key != "traceparent" {
                return None;
            }
            self.0.get(key)?.to_str().ok()
        }
        fn keys(&self) -> Vec<&str> {
            vec!["traceparent"]
        }
    }
    if !headers.contains_key("traceparent") {
        return;
    }
    let cx = opentelemetry_sdk::propagation::TraceContextPropagator::new()
        .extract(&TraceParentOnly(headers));
    if cx.span().span_context().is_valid() {
        // Fails only when the span is disabled (no exporter): nothing to continue then.
        let _ = span.set_parent(cx);
    }
}

/// Records a call's gRPC status on its RPC span: `rpc.grpc.status_code`, and for any code but
/// OK the span's error status, so that a trace view shows refusals and failures alike.
pub(crate) fn record_status(span: &tracing::Span, code: tonic::Code) {
    span.record("rpc.grpc.status_code", code as i64);
    if code != tonic::Code::Ok {
        span.record("otel.status_code", "error");
    }
}

/// The transport crates whose debug and trace output prints request headers (the method path
/// among them), frames or handshake details: requests values a caller chose.
const THIRD_PARTY: &[&str] = &[
    "h2",
    "hyper",
    "hyper_util",
    "rustls",
    "tokio_rustls",
    "tonic",
    "tower",
    "tower_http",
    "axum",
];

/// The filter for `spec` (`log.level` or `RUST_LOG`), with each transport crate held at INFO
/// unless `spec` names it: `debug` turns on silta's own detail, never the transport's.
/// An operator who needs the transport's frames names the crate (`debug,h2=trace`), knowing
/// that such output holds request values.
fn log_filter(spec: &str) -> EnvFilter {
    let mut filter = EnvFilter::new(spec);
    for directive in third_party_caps(spec) {
        // Built from a constant target and level (unit-tested below).
        if let Ok(directive) = directive.parse() {
            filter = filter.add_directive(directive);
        }
    }
    filter
}

/// `target=info` for each transport crate that `spec` does not name.
fn third_party_caps(spec: &str) -> Vec<String> {
    let named: Vec<&str> = spec
        .split(',')
        .map(|d| d.split(['=', '[']).next().unwrap_or_default().trim())
        .collect();
    THIRD_PARTY
        .iter()
        .filter(|target| {
            !named.iter().any(|n| {
                n == *target || n.strip_prefix(*target).is_some_and(|r| r.starts_with("::"))
            })
        })
        .map(|target| format!("{target}=info"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_export_is_said_once_a_minute_with_every_span_lost_since() {
        let reported = Reported::new(());
        let t0 = std::time::Instant::now();
        assert_eq!(reported.failed(10, t0), Some(10));
        assert_eq!(
            reported.failed(5, t0 + std::time::Duration::from_secs(5)),
            None
        );
        assert_eq!(
            reported.failed(7, t0 + std::time::Duration::from_secs(30)),
            None
        );
        assert_eq!(
            reported.failed(1, t0 + std::time::Duration::from_secs(61)),
            Some(13),
            "the spans lost while silent are counted in the next report"
        );
    }

    #[test]
    fn the_rpc_span_directive_parses() {
        assert_eq!(super::rpc_span_directive().to_string(), "silta::rpc=debug");
    }

    #[test]
    fn transport_crates_stay_at_info_unless_named() {
        let caps = third_party_caps("debug");
        assert_eq!(caps.len(), THIRD_PARTY.len());
        for cap in &caps {
            cap.parse::<tracing_subscriber::filter::Directive>()
                .expect("a valid directive");
        }
        let caps = third_party_caps("trace,h2=trace, tonic::transport=debug,hyperx=debug");
        assert!(!caps.contains(&"h2=info".to_owned()));
        assert!(!caps.contains(&"tonic=info".to_owned()));
        assert!(caps.contains(&"hyper=info".to_owned()));
        assert!(caps.contains(&"rustls=info".to_owned()));
    }

    #[test]
    fn a_debug_filter_does_not_enable_transport_debug() {
        use tracing::Level;
        use tracing_subscriber::layer::SubscriberExt;
        // The filter decides per callsite; a subscriber with it answers `enabled`.
        let subscriber = tracing_subscriber::registry().with(log_filter("debug"));
        tracing::subscriber::with_default(subscriber, || {
            assert!(!tracing::event_enabled!(target: "h2::codec", Level::DEBUG));
            assert!(!tracing::event_enabled!(target: "rustls::server", Level::DEBUG));
            assert!(tracing::event_enabled!(target: "h2::codec", Level::INFO));
            assert!(tracing::event_enabled!(target: "silta_server::gateway", Level::DEBUG));
        });
        let subscriber = tracing_subscriber::registry().with(log_filter("info,h2=debug"));
        tracing::subscriber::with_default(subscriber, || {
            assert!(tracing::event_enabled!(target: "h2::codec", Level::DEBUG));
            assert!(!tracing::event_enabled!(target: "hyper::proto", Level::DEBUG));
        });
    }
}
