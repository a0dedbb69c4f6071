//! Connections: accepting TCP, the TLS handshake, and serving HTTP/2 on each connection, with
//! the limits that keep one caller from taking what the others need (`[limits]`).
//!
//! silta serves its connections itself (hyper's HTTP/2 server under tonic's routes) rather
//! than through `tonic::transport::Server`, because it must act on one connection at a time:
//! close it with GOAWAY when its certificate is revoked, when it has been idle, or when it
//! reaches its maximum age, and count every connection against its source address.
//!
//! Per connection, in order:
//! 1. Admission, before any byte is read: the source's connection and handshake counts and the
//!    global handshake budget. Past any of them the socket is closed at once: that source
//!    retries, everyone else is served.
//! 2. The TLS handshake, bounded by `limits.handshake_timeout_ms`.
//! 3. HTTP/2, until the peer closes or silta closes it: no first request in time, idle,
//!    maximum age, a revoked certificate, or shutdown. Each close but the first is a GOAWAY,
//!    then `limits.max_connection_age_grace_s` for calls in progress.
//!
//! Per request: the RPC span (only a path silta serves is recorded), the caller's identity,
//! the client's deadline (`grpc-timeout`), and a deadline for the request body.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::{CertificateDer, UnixTime};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::codegen::http::{HeaderMap, Request, Response};
use tracing::Instrument as _;

use crate::config::LimitsConfig;
use crate::identity::{IdentityError, caller_from_certificate};
use crate::metrics::{GaugeGuard, Metrics, ReasonLabels};
use crate::tls::{PeerInfo, TlsHandle};

/// The limits in the units the code uses.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    handshake_timeout: Duration,
    max_pending_handshakes: usize,
    max_pending_handshakes_per_source: usize,
    max_connections_per_source: usize,
    first_request_timeout: Duration,
    idle_timeout: Duration,
    request_body_timeout: Duration,
    max_connection_age: Duration,
    grace: Duration,
    max_concurrent_streams: u32,
    stream_send_buffer: usize,
    /// How long shutdown waits for calls in progress.
    shutdown_grace: Duration,
}

impl Limits {
    pub(crate) fn new(c: &LimitsConfig, shutdown_grace: Duration) -> Self {
        Limits {
            handshake_timeout: Duration::from_millis(c.handshake_timeout_ms),
            max_pending_handshakes: c.max_pending_handshakes,
            max_pending_handshakes_per_source: c.max_pending_handshakes_per_source,
            max_connections_per_source: c.max_connections_per_source,
            first_request_timeout: Duration::from_millis(c.first_request_timeout_ms),
            idle_timeout: Duration::from_secs(c.idle_timeout_s),
            request_body_timeout: Duration::from_millis(c.request_body_timeout_ms),
            max_connection_age: Duration::from_secs(c.max_connection_age_s),
            grace: Duration::from_secs(c.max_connection_age_grace_s),
            max_concurrent_streams: c.max_concurrent_streams,
            stream_send_buffer: c.stream_send_buffer_bytes,
            shutdown_grace,
        }
    }
}

/// What a connection task needs, shared by all of them.
struct Shared {
    tls: Arc<TlsHandle>,
    trust_domain: Arc<str>,
    routes: tonic::service::Routes,
    limits: Limits,
    metrics: Arc<Metrics>,
    sources: Arc<Sources>,
    registry: Arc<Registry>,
    pending: Arc<Semaphore>,
    refusals: Throttle,
    stop: CancellationToken,
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
}

/// What the gateway serves on its listener.
pub(crate) struct Endpoint {
    /// The TLS configuration in force.
    pub tls: Arc<TlsHandle>,
    /// The trust domain of client identities.
    pub trust_domain: String,
    /// tonic's routes of every service.
    pub routes: tonic::service::Routes,
    /// The limits.
    pub limits: Limits,
    /// Where connections are counted.
    pub metrics: Arc<Metrics>,
    /// The open connections, for revocation.
    pub registry: Arc<Registry>,
}

/// Accepts connections on `listener` and serves each until it closes. Returns once `stop` is
/// cancelled and every connection has closed (each gets the shutdown grace at most).
pub(crate) async fn serve(listener: TcpListener, endpoint: Endpoint, stop: CancellationToken) {
    let Endpoint {
        tls,
        trust_domain,
        routes,
        limits,
        metrics,
        registry,
    } = endpoint;
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_send_buf_size(limits.stream_send_buffer);
    let shared = Arc::new(Shared {
        tls,
        trust_domain: trust_domain.into(),
        routes,
        pending: Arc::new(Semaphore::new(limits.max_pending_handshakes)),
        limits,
        metrics,
        sources: Arc::new(Sources::default()),
        registry,
        refusals: Throttle::default(),
        stop: stop.clone(),
        http2,
    });
    let tracker = TaskTracker::new();
    loop {
        let (tcp, remote) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let slot = match Sources::admit(&shared.sources, remote.ip(), &shared.limits) {
            Ok(slot) => slot,
            Err(reason) => {
                shared.refuse(reason);
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&shared.pending).try_acquire_owned() else {
            shared.refuse("pending-handshakes");
            continue;
        };
        let shared = Arc::clone(&shared);
        tracker.spawn(async move {
            // The source's count is held until the connection closes.
            let mut slot = slot;
            let Some((tls, peer, chain)) = handshake(&shared, tcp, remote, &mut slot, permit).await
            else {
                return;
            };
            serve_connection(&shared, tls, peer, chain).await;
            drop(slot);
        });
    }
    // No new connections: the listening socket closes here, not after the drain.
    drop(listener);
    tracker.close();
    tracker.wait().await;
}

impl Shared {
    /// Counts a refused connection, and says so in the log at most every ten seconds.
    fn refuse(&self, reason: &'static str) {
        self.metrics
            .connections_refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
        if let Some(suppressed) = self.refusals.allow() {
            tracing::warn!(
                reason,
                refused_since_last_line = suppressed,
                "new connection refused: a connection limit was reached (see \
                 silta_connections_refused_total and [limits] in docs/operations.md)"
            );
        }
    }
}

/// The TLS handshake of an admitted connection: its result, or `None` when it failed (logged
/// and counted).
async fn handshake(
    shared: &Shared,
    tcp: TcpStream,
    remote: SocketAddr,
    slot: &mut SourceSlot,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Option<(
    tokio_rustls::server::TlsStream<TcpStream>,
    PeerInfo,
    Vec<CertificateDer<'static>>,
)> {
    let _pending = GaugeGuard::new(&shared.metrics.pending_handshakes);
    let _ = tcp.set_nodelay(true);
    let acceptor = TlsAcceptor::from(shared.tls.get());
    let accepted = tokio::select! {
        accepted = tokio::time::timeout(shared.limits.handshake_timeout, acceptor.accept(tcp)) => accepted,
        () = shared.stop.cancelled() => return None,
    };
    drop(permit);
    slot.handshake_done();
    let tls = match accepted {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            shared.count_refused("handshake-failed");
            tracing::info!(%remote, error = %e, "TLS handshake refused");
            return None;
        }
        Err(_) => {
            shared.count_refused("handshake-timeout");
            tracing::info!(%remote, "TLS handshake timed out");
            return None;
        }
    };
    let chain: Vec<CertificateDer<'static>> = tls
        .get_ref()
        .1
        .peer_certificates()
        .map(<[_]>::to_vec)
        .unwrap_or_default();
    let caller = chain
        .first()
        .map_or(Err(IdentityError::Unparsable), |leaf| {
            caller_from_certificate(leaf, &shared.trust_domain)
        });
    if let Err(e) = &caller {
        tracing::warn!(%remote, error = %e, "client certificate names no silta caller");
    }
    let peer = PeerInfo {
        caller,
        remote: Some(remote),
    };
    Some((tls, peer, chain))
}

impl Shared {
    fn count_refused(&self, reason: &'static str) {
        self.metrics
            .connections_refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    fn count_closed(&self, reason: &'static str) {
        self.metrics
            .connections_closed
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }
}

/// Serves HTTP/2 on an established connection until it closes.
async fn serve_connection(
    shared: &Arc<Shared>,
    tls: tokio_rustls::server::TlsStream<TcpStream>,
    peer: PeerInfo,
    chain: Vec<CertificateDer<'static>>,
) {
    let _open = GaugeGuard::new(&shared.metrics.open_connections);
    let revoked = CancellationToken::new();
    let _registered = shared.registry.register(chain, revoked.clone());
    let state = Arc::new(ConnState::default());
    let service = ConnService {
        routes: shared.routes.clone(),
        peer,
        state: Arc::clone(&state),
        body_timeout: shared.limits.request_body_timeout,
        metrics: Arc::clone(&shared.metrics),
    };
    let io = Watched {
        inner: tls,
        state: Arc::clone(&state),
    };
    let conn = shared.http2.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let limits = &shared.limits;
    let born = tokio::time::Instant::now();
    let mut idle_since = born;
    // Once silta has decided to close: when to stop waiting for calls in progress.
    let mut closing: Option<tokio::time::Instant> = None;
    loop {
        let idle_deadline =
            (closing.is_none() && state.active.load(Ordering::Acquire) == 0).then(|| {
                idle_since
                    + if state.spoke() {
                        limits.idle_timeout
                    } else {
                        limits.first_request_timeout
                    }
            });
        let (reason, grace) = tokio::select! {
            served = &mut conn => {
                if let Err(e) = served {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            () = state.changed.notified() => {
                if state.active.load(Ordering::Acquire) == 0 {
                    idle_since = tokio::time::Instant::now();
                }
                continue;
            }
            () = sleep_until(idle_deadline) => {
                if !state.spoke() {
                    // Not a byte since the handshake, not even the HTTP/2 preface: nothing to
                    // let finish, and no GOAWAY it could read.
                    ("first-request-timeout", Duration::ZERO)
                } else if tokio::time::Instant::now() >= idle_since + limits.idle_timeout {
                    ("idle", limits.grace)
                } else {
                    // The client spoke after the deadline was set (a client that connects
                    // ahead of its first call): it is idle, with the idle timeout.
                    continue;
                }
            }
            () = tokio::time::sleep_until(born + limits.max_connection_age), if closing.is_none() => {
                ("max-age", limits.grace)
            }
            () = revoked.cancelled(), if closing.is_none() => {
                // The caller is no longer trusted: its calls in progress get no grace.
                ("revoked", Duration::ZERO)
            }
            () = shared.stop.cancelled(), if closing.is_none() => {
                ("shutdown", limits.shutdown_grace)
            }
            () = sleep_until(closing) => {
                tracing::debug!("calls still in progress after the grace period; connection closed");
                return;
            }
        };
        shared.count_closed(reason);
        tracing::debug!(reason, "closing the connection");
        conn.as_mut().graceful_shutdown();
        if grace.is_zero() {
            // Give the GOAWAY a moment to be written, then close whatever is left.
            closing = Some(tokio::time::Instant::now() + Duration::from_millis(100));
        } else {
            closing = Some(tokio::time::Instant::now() + grace);
        }
    }
}

/// Sleeps until `deadline`, or for ever without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Calls in progress on one connection, for its idle timer.
#[derive(Default)]
struct ConnState {
    active: AtomicUsize,
    served_any: AtomicBool,
    /// Whether the client has sent anything since the handshake.
    read_any: AtomicBool,
    changed: Notify,
}

impl ConnState {
    /// Whether the client has sent a byte (the HTTP/2 preface) or a call.
    fn spoke(&self) -> bool {
        self.read_any.load(Ordering::Acquire) || self.served_any.load(Ordering::Acquire)
    }
}

/// A TLS stream that notes whether the client has sent anything, so that a connection that
/// never sends the HTTP/2 preface is told from one that connected ahead of its first call.
struct Watched {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    state: Arc<ConnState>,
}

impl tokio::io::AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before && !self.state.read_any.load(Ordering::Relaxed) {
            self.state.read_any.store(true, Ordering::Release);
        }
        polled
    }
}

impl tokio::io::AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Holds one call's place in its connection's count until the call's response ends (or the
/// call is dropped).
struct Active(Arc<ConnState>);

impl Active {
    fn new(state: &Arc<ConnState>) -> Self {
        state.served_any.store(true, Ordering::Release);
        // Only a change between idle and busy concerns the connection's task: a busy
        // connection's calls do not wake it.
        if state.active.fetch_add(1, Ordering::AcqRel) == 0 {
            state.changed.notify_one();
        }
        Active(Arc::clone(state))
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.changed.notify_one();
        }
    }
}

/// The service of one connection: tonic's routes with the caller's identity, the RPC span and
/// the deadlines.
#[derive(Clone)]
struct ConnService {
    routes: tonic::service::Routes,
    peer: PeerInfo,
    state: Arc<ConnState>,
    body_timeout: Duration,
    metrics: Arc<Metrics>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let active = Active::new(&self.state);
        let method = crate::served_method(request.uri().path());
        // One span per RPC: its path, then who called, the flow and the outcome as they become
        // known. Never a request value: identity codes and free text stay out by construction.
        // At DEBUG: INFO logs carry what they need on their own lines (`services::refusal`),
        // and the OTLP exporter takes the span at any level (`telemetry::RPC_SPAN_TARGET`).
        // Named and attributed as OpenTelemetry's RPC conventions say (a SERVER span named
        // `package.Service/Method`), from the served method's own name, never the raw path.
        let name = method.map_or("unknown", |m| m.trim_start_matches('/'));
        let (service, rpc_method) = name.split_once('/').unwrap_or(("unknown", "unknown"));
        let span = tracing::debug_span!(
            target: crate::telemetry::RPC_SPAN_TARGET,
            "rpc",
            otel.name = name,
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            rpc.system = "grpc",
            rpc.service = service,
            rpc.method = rpc_method,
            rpc.grpc.status_code = tracing::field::Empty,
            path = %method.unwrap_or("unknown"),
            request_id = tracing::field::Empty,
            org = tracing::field::Empty,
            role = tracing::field::Empty,
            flow = tracing::field::Empty,
            code = tracing::field::Empty,
        );
        crate::telemetry::continue_trace(&span, request.headers());
        let deadline = client_deadline(request.headers());
        let (mut parts, body) = request.into_parts();
        parts.extensions.insert(self.peer.clone());
        if let Some(deadline) = deadline {
            parts
                .extensions
                .insert(ClientDeadline(std::time::Instant::now() + deadline));
        }
        // Reflection is the one bidirectional stream: its body stays open between questions.
        let body = if method.is_some_and(|m| m.starts_with("/grpc.reflection.")) {
            tonic::body::Body::new(body)
        } else {
            tonic::body::Body::new(TimedBody::new(
                body,
                self.body_timeout,
                Arc::clone(&self.metrics),
            ))
        };
        let mut routes = self.routes.clone();
        Box::pin(
            async move {
                // axum's router is always ready (its `poll_ready` returns at once), so it is
                // called without waiting for readiness, as tonic's own server does.
                let call =
                    tower_service::Service::call(&mut routes, Request::from_parts(parts, body));
                let response = match deadline {
                    Some(deadline) => match tokio::time::timeout(deadline, call).await {
                        Ok(response) => response,
                        Err(_) => {
                            crate::telemetry::record_status(
                                &tracing::Span::current(),
                                tonic::Code::DeadlineExceeded,
                            );
                            Ok(tonic::Status::deadline_exceeded(
                                "the call's deadline (grpc-timeout) passed before it completed",
                            )
                            .into_http())
                        }
                    },
                    None => call.await,
                };
                // A trailers-only answer (an error, an unknown method) carries its status in
                // the headers; the services record theirs themselves.
                if let Ok(r) = &response
                    && let Some(code) = r
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<i32>().ok())
                {
                    crate::telemetry::record_status(
                        &tracing::Span::current(),
                        tonic::Code::from_i32(code),
                    );
                }
                response.map(|r| {
                    r.map(|body| {
                        tonic::body::Body::new(Counted {
                            body,
                            _active: active,
                        })
                    })
                })
            }
            .instrument(span),
        )
    }
}

/// When a call's client stops waiting, from its `grpc-timeout`: the committer does not commit a
/// job whose caller has gone.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientDeadline(pub std::time::Instant);

/// The client's deadline from `grpc-timeout` (at most 8 digits and a unit); a header that does
/// not parse is ignored, as tonic does.
fn client_deadline(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at_checked(value.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3_600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A response body that holds its call's place in the connection's count until it ends.
struct Counted {
    body: tonic::body::Body,
    _active: Active,
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A request body that must arrive whole within a deadline: a body stalled halfway (4 MB
/// declared, a few bytes sent) is not held with its buffer for as long as the client likes.
struct TimedBody {
    body: Incoming,
    started: tokio::time::Instant,
    /// Armed only when the body has to be waited for: most requests arrive in the frame that
    /// opened the call, and a timer per call would cost the report path for nothing.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    timeout: Duration,
    metrics: Arc<Metrics>,
}

impl TimedBody {
    fn new(body: Incoming, timeout: Duration, metrics: Arc<Metrics>) -> Self {
        TimedBody {
            body,
            started: tokio::time::Instant::now(),
            deadline: None,
            timeout,
            metrics,
        }
    }
}

impl http_body::Body for TimedBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.body).poll_frame(cx) {
            return Poll::Ready(
                frame.map(|f| f.map_err(|e| tonic::Status::from_error(Box::new(e)))),
            );
        }
        let deadline = self.started + self.timeout;
        let sleep = self
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.as_mut().poll(cx).is_ready() {
            self.metrics.request_body_timeouts.inc();
            tracing::info!(
                code = "DEADLINE_EXCEEDED",
                "a request body did not arrive in time"
            );
            let secs = self.timeout.as_secs_f64();
            return Poll::Ready(Some(Err(tonic::Status::deadline_exceeded(format!(
                "the request message did not arrive within {secs} s \
                 (limits.request_body_timeout_ms); send each request whole"
            )))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Connections and handshakes per source address. A source is an IPv4 address or an IPv6
/// /64 (one host's usual share; a host with a /64 could otherwise open a connection from each
/// of its addresses).
#[derive(Default)]
struct Sources(Mutex<HashMap<IpAddr, SourceCount>>);

#[derive(Default)]
struct SourceCount {
    open: usize,
    pending: usize,
}

fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl Sources {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, SourceCount>> {
        // Counts stay whole even if a holder panicked: each update is a single statement.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a new connection from `ip`, or says which limit it would pass.
    fn admit(this: &Arc<Self>, ip: IpAddr, limits: &Limits) -> Result<SourceSlot, &'static str> {
        let source = source_of(ip);
        let mut map = this.lock();
        let count = map.entry(source).or_default();
        if count.open >= limits.max_connections_per_source {
            return Err("source-connections");
        }
        if count.pending >= limits.max_pending_handshakes_per_source {
            return Err("source-handshakes");
        }
        count.open += 1;
        count.pending += 1;
        Ok(SourceSlot {
            sources: Arc::clone(this),
            source,
            pending: true,
        })
    }

    fn release(&self, source: IpAddr, pending: bool) {
        let mut map = self.lock();
        if let Some(count) = map.get_mut(&source) {
            count.open = count.open.saturating_sub(1);
            if pending {
                count.pending = count.pending.saturating_sub(1);
            }
            if count.open == 0 && count.pending == 0 {
                map.remove(&source);
            }
        }
    }
}

/// A connection's place in its source's counts, given back when dropped.
struct SourceSlot {
    sources: Arc<Sources>,
    source: IpAddr,
    pending: bool,
}

impl SourceSlot {
    fn handshake_done(&mut self) {
        if std::mem::take(&mut self.pending) {
            let mut map = self.sources.lock();
            if let Some(count) = map.get_mut(&self.source) {
                count.pending = count.pending.saturating_sub(1);
            }
        }
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        self.sources.release(self.source, self.pending);
    }
}

/// At most one log line per interval, with how many were held back since the last.
#[derive(Default)]
struct Throttle {
    last: Mutex<Option<Instant>>,
    held_back: AtomicU64,
}

impl Throttle {
    const INTERVAL: Duration = Duration::from_secs(10);

    /// `Some(held back since the last line)` when a line may be written now.
    fn allow(&self) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < Self::INTERVAL) {
            self.held_back.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(now);
        Some(self.held_back.swap(0, Ordering::Relaxed))
    }
}

/// The open connections and their client certificate chains, so that a reload of the client
/// CA or CRLs can close those no longer trusted.
#[derive(Default)]
pub struct Registry {
    next: AtomicU64,
    open: Mutex<HashMap<u64, (Vec<CertificateDer<'static>>, CancellationToken)>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

impl Registry {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<u64, (Vec<CertificateDer<'static>>, CancellationToken)>>
    {
        // Entries are inserted and removed whole.
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn register(
        &self,
        chain: Vec<CertificateDer<'static>>,
        close: CancellationToken,
    ) -> Registered<'_> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, (chain, close));
        Registered { registry: self, id }
    }

    /// Verifies every open connection's client certificate again with `verifier` (after a
    /// reload: a new CRL, a new client CA) and closes those it refuses. Returns how many.
    pub fn recheck(&self, verifier: &dyn ClientCertVerifier) -> usize {
        let now = UnixTime::now();
        let open: Vec<_> = self
            .lock()
            .values()
            .map(|(chain, close)| (chain.clone(), close.clone()))
            .collect();
        let mut closed = 0;
        for (chain, close) in open {
            let trusted = chain.split_first().is_some_and(|(leaf, intermediates)| {
                verifier
                    .verify_client_cert(leaf, intermediates, now)
                    .is_ok()
            });
            if !trusted {
                close.cancel();
                closed += 1;
            }
        }
        closed
    }
}

/// A connection's entry in the registry, removed when dropped.
struct Registered<'a> {
    registry: &'a Registry,
    id: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_is_an_ipv4_address_or_an_ipv6_slash_64() {
        let v4: IpAddr = "192.0.2.7".parse().expect("ip");
        assert_eq!(source_of(v4), v4);
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().expect("ip");
        assert_eq!(source_of(mapped), v4);
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().expect("ip");
        let other: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(source_of(a), source_of(b));
        assert_ne!(source_of(a), source_of(other));
    }

    #[test]
    fn a_source_past_its_limits_is_refused_and_its_slots_come_back() {
        let config = LimitsConfig {
            max_pending_handshakes_per_source: 2,
            max_connections_per_source: 3,
            ..Default::default()
        };
        let limits = Limits::new(&config, Duration::from_secs(1));
        let sources = Arc::new(Sources::default());
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        let other: IpAddr = "192.0.2.2".parse().expect("ip");
        let mut a = Sources::admit(&sources, ip, &limits).expect("first");
        let _b = Sources::admit(&sources, ip, &limits).expect("second");
        assert_eq!(
            Sources::admit(&sources, ip, &limits).err(),
            Some("source-handshakes")
        );
        assert!(
            Sources::admit(&sources, other, &limits).is_ok(),
            "another source is served"
        );
        a.handshake_done();
        let mut c = Sources::admit(&sources, ip, &limits).expect("a handshake finished");
        assert_eq!(
            Sources::admit(&sources, ip, &limits).err(),
            Some("source-connections")
        );
        c.handshake_done();
        drop(a);
        assert!(
            Sources::admit(&sources, ip, &limits).is_ok(),
            "a connection closed"
        );
        drop((_b, c));
        assert!(sources.lock().get(&ip).is_none(), "every count came back");
    }

    #[test]
    fn grpc_timeout_parses_as_the_spec_says() {
        let deadline = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert("grpc-timeout", v.parse().expect("header"));
            client_deadline(&h)
        };
        assert_eq!(deadline("5S"), Some(Duration::from_secs(5)));
        assert_eq!(deadline("250m"), Some(Duration::from_millis(250)));
        assert_eq!(
            deadline("99999999H"),
            Some(Duration::from_secs(99_999_999 * 3_600))
        );
        assert_eq!(deadline("123456789S"), None);
        assert_eq!(deadline("S"), None);
        assert_eq!(deadline("-1S"), None);
        assert_eq!(deadline("5s"), None);
        assert_eq!(client_deadline(&HeaderMap::new()), None);
    }

    #[test]
    fn refusals_are_logged_at_most_once_per_interval() {
        let t = Throttle::default();
        assert_eq!(t.allow(), Some(0));
        assert_eq!(t.allow(), None);
        assert_eq!(t.allow(), None);
        assert_eq!(t.held_back.load(Ordering::Relaxed), 2);
    }
}
