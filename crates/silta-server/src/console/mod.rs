//! The data-protection officer's console: server-rendered HTML over HTTPS, on a listener of
//! its own (`console.listen`), for a DPO's browser (docs/console.md).
//!
//! **Architecture invariant:** the console decides nothing of its own. Who may read what, the
//! checkpoint's verification, the statistics' disclosure control and the ledger record of each
//! read are the functions the Audit service calls ([`crate::audit::verified_checkpoint`],
//! [`crate::audit::read_statistics`]); the console only renders their answers.
//!
//! The listener uses the gateway's TLS configuration in force (certificate, client CA and CRL,
//! so a reload applies to both) with HTTP/1.1 in place of HTTP/2: a client certificate is
//! required at the handshake, and a request is served only when it names role `dpo`. Every
//! response carries the headers of [`SECURITY_HEADERS`]; the pages load no script and no
//! inline style, only `/static/console.css` and the chart, both from here.

mod pages;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rustls_pki_types::{CertificateDer, UnixTime};
use silta_core::audit::Outcome;
use silta_core::stats::Month;
use silta_core::validate::Violations;
use silta_core::{Caller, Role};
use silta_store::AuditFilter;
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::gateway::{Gateway, RequestContext};
use crate::identity::{IdentityError, caller_from_certificate};
use crate::status::ApiError;
use crate::tls::TlsHandle;

/// Most console connections open at once: a handful of DPOs' browsers, never a crowd.
const MAX_CONNECTIONS: usize = 64;
/// How long a browser has to send a request's headers; hyper counts it from the end of the
/// previous response, so it also closes an idle keep-alive connection.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for a page in progress.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How many months the statistics chart shows, ending with the month on the page.
const CHART_MONTHS: usize = 12;

/// The Content-Security-Policy of every response: nothing but our own stylesheet and images,
/// no script at all, forms posting only here, never framed.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'self'; img-src 'self'; \
     form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The headers set on every response of the console, whatever its status.
pub const SECURITY_HEADERS: [(HeaderName, &str); 6] = [
    (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
    (header::STRICT_TRANSPORT_SECURITY, "max-age=31536000"),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::REFERRER_POLICY, "no-referrer"),
    // Pages show what the ledger holds: no browser or proxy keeps a copy.
    (header::CACHE_CONTROL, "no-store"),
    // For browsers that predate frame-ancestors.
    (header::X_FRAME_OPTIONS, "DENY"),
];

/// What the console serves with.
pub(crate) struct Console {
    /// The gateway whose ledger, statistics and policies it shows.
    pub gw: Arc<Gateway>,
    /// The gateway's TLS configuration in force.
    pub tls: Arc<TlsHandle>,
    /// The trust domain of client identities.
    pub trust_domain: String,
    /// How long a browser has to finish the TLS handshake.
    pub handshake_timeout: Duration,
}

/// The client certificate chain of a connection (leaf first), and whom it names or why it
/// names no one.
#[derive(Clone)]
struct Peer {
    caller: Result<Caller, IdentityError>,
    chain: Arc<[CertificateDer<'static>]>,
}

/// What the DPO check needs: the gateway (to record refusals) and the TLS configuration in
/// force (to check the certificate again).
struct Guard {
    gw: Arc<Gateway>,
    tls: Arc<TlsHandle>,
}

/// A caller of role `dpo`: only [`require_dpo`] puts one into a request.
#[derive(Clone)]
struct Dpo(Caller);

/// Accepts connections on `listener` and serves the console on each until `stop` is
/// cancelled; then each connection finishes the page in progress (within a grace period).
pub(crate) async fn serve(listener: TcpListener, console: Console, stop: CancellationToken) {
    let Console {
        gw,
        tls,
        trust_domain,
        handshake_timeout,
    } = console;
    let app = router(gw, Arc::clone(&tls));
    let trust_domain: Arc<str> = trust_domain.into();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let tracker = TaskTracker::new();
    loop {
        let tcp = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    tracing::warn!(error = %e, "console: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::warn!(
                limit = MAX_CONNECTIONS,
                "console: too many connections; one refused"
            );
            continue;
        };
        let acceptor = TlsAcceptor::from(console_tls(&tls));
        let app = app.clone();
        let trust_domain = Arc::clone(&trust_domain);
        let stop = stop.clone();
        tracker.spawn(async move {
            let _slot = slot;
            let stream = match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                // No certificate, an untrusted or revoked one, or no handshake at all: there
                // is no one to answer.
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "console: TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let chain: Arc<[CertificateDer<'static>]> = stream
                .get_ref()
                .1
                .peer_certificates()
                .map(|chain| chain.iter().map(|c| c.clone().into_owned()).collect())
                .unwrap_or_default();
            let caller = chain.first().map_or_else(
                || Err(IdentityError::NoIdentity(trust_domain.to_string())),
                |leaf| caller_from_certificate(leaf, &trust_domain),
            );
            let peer = Peer { caller, chain };
            let service = TowerToHyperService::new(app.layer(Extension(peer)));
            let mut http1 = hyper::server::conn::http1::Builder::new();
            http1
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let connection = http1.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                served = connection.as_mut() => {
                    if let Err(e) = served {
                        tracing::debug!(error = %e, "console: connection ended with an error");
                    }
                }
                () = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(SHUTDOWN_GRACE, connection).await;
                }
            }
        });
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
}

/// The gateway's TLS configuration in force, speaking HTTP/1.1 (the gateway's speaks only
/// HTTP/2, which gRPC needs).
fn console_tls(tls: &TlsHandle) -> Arc<rustls::ServerConfig> {
    let mut config = (*tls.get()).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Every page, behind the DPO check, and the security headers on every response.
fn router(gw: Arc<Gateway>, tls: Arc<TlsHandle>) -> Router {
    let guard = Arc::new(Guard {
        gw: Arc::clone(&gw),
        tls,
    });
    Router::new()
        .route("/", get(overview))
        .route("/statistics", get(statistics))
        .route("/statistics/chart.svg", get(chart))
        .route("/flows", get(flows))
        .route("/static/console.css", get(stylesheet))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(guard, require_dpo))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(gw)
}

/// Sets [`SECURITY_HEADERS`] on a response.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in SECURITY_HEADERS {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// Serves the request only to a caller of role `dpo` whose certificate the client CA and CRL
/// in force still accept; anyone else gets a plain 403 page (no stylesheet to fetch, so one
/// refusal is one request), and a refused role is recorded in the ledger.
async fn require_dpo(
    State(guard): State<Arc<Guard>>,
    Extension(peer): Extension<Peer>,
    mut request: Request,
    next: Next,
) -> Response {
    // Checked again on every request: after a reload that revokes the certificate, a
    // connection opened before it is refused from its next request on.
    let accepted = match &*peer.chain {
        [leaf, intermediates @ ..] => guard
            .tls
            .verifier()
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .is_ok(),
        [] => false,
    };
    if !accepted {
        tracing::info!("console refused: the client certificate is no longer accepted");
        return forbidden(
            "Your client certificate is no longer accepted: it was revoked, or its CA is no \
             longer trusted.",
        );
    }
    match peer.caller {
        Ok(caller) if caller.role == Role::Dpo => {
            request.extensions_mut().insert(Dpo(caller));
            next.run(request).await
        }
        Ok(caller) => {
            let ctx = context(&caller, "Console");
            // Refuses and records the refusal, as the Audit service does for another role.
            let refused = guard.gw.authorize(&ctx, Role::Dpo).await.err();
            tracing::info!(
                request_id = %ctx.request_id,
                role = caller.role.as_str(),
                code = refused.as_ref().map_or("permission-denied", ApiError::reason),
                "console refused"
            );
            forbidden(&format!(
                "The console is for the data-protection officer; your client certificate \
                 names role {}.",
                caller.role
            ))
        }
        Err(e) => {
            tracing::info!(error = %e, "console refused: the certificate names no caller");
            forbidden(&e.to_string())
        }
    }
}

fn forbidden(why: &str) -> Response {
    (
        StatusCode::FORBIDDEN,
        Html(pages::refused(why).into_string()),
    )
        .into_response()
}

/// A request's context for the ledger: a fresh request id, the DPO, the page.
fn context(caller: &Caller, action: &'static str) -> RequestContext {
    RequestContext {
        request_id: uuid::Uuid::new_v4().simple().to_string(),
        caller: caller.clone(),
        action,
        actor: None,
        deadline: None,
    }
}

/// The page of an error: its status, what went wrong and the request id the operator finds in
/// the logs.
fn failure(ctx: &RequestContext, e: ApiError) -> Response {
    let status = match &e {
        ApiError::InvalidArgument(_) | ApiError::FailedPrecondition(_) => StatusCode::BAD_REQUEST,
        ApiError::Unauthenticated(_)
        | ApiError::PermissionDenied(_)
        | ApiError::PolicyDenied { .. } => StatusCode::FORBIDDEN,
        ApiError::NotFound(_) => StatusCode::NOT_FOUND,
        ApiError::Unavailable | ApiError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    tracing::info!(
        request_id = %ctx.request_id,
        page = ctx.action,
        code = e.reason(),
        "console page refused"
    );
    let message = match &e {
        // The violations name the field; say it in words a browser user reads.
        ApiError::InvalidArgument(v) => {
            v.0.iter()
                .map(|f| format!("{}: {}", f.field, f.description))
                .collect::<Vec<_>>()
                .join("; ")
        }
        e => e.to_string(),
    };
    (
        status,
        Html(pages::error(status, &message, &ctx.request_id).into_string()),
    )
        .into_response()
}

fn page(markup: maud::Markup) -> Response {
    Html(markup.into_string()).into_response()
}

/// `GET /`: the ledger, its latest checkpoint, the key version and retention.
async fn overview(
    State(gw): State<Arc<Gateway>>,
    Extension(Dpo(caller)): Extension<Dpo>,
) -> Response {
    let ctx = context(&caller, "Console.Overview");
    match read_overview(&gw, &ctx).await {
        Ok(o) => page(pages::overview(&o)),
        Err(e) => failure(&ctx, e),
    }
}

async fn read_overview(gw: &Gateway, ctx: &RequestContext) -> Result<pages::Overview, ApiError> {
    let now = OffsetDateTime::now_utc();
    let head = gw.store.ledger_head().await.map_err(ApiError::from)?;
    let checkpoint = match crate::audit::verified_checkpoint(gw, 0).await? {
        Some((_, checkpoint, verifier_key)) => {
            // The newest entry the checkpoint covers dates it: a checkpoint is published soon
            // after the entries it is the first to cover.
            let newest = gw
                .store
                .ledger_entries(&AuditFilter {
                    start_index: checkpoint.size.saturating_sub(1),
                    end_index: Some(checkpoint.size),
                    limit: 1,
                    ..AuditFilter::default()
                })
                .await
                .map_err(ApiError::from)?;
            let newest_ms = newest
                .first()
                .and_then(|e| silta_ledger::entry::Entry::decode(&e.entry).ok())
                .map(|e| e.time_ms);
            Some(pages::CheckpointView {
                size: checkpoint.size,
                root: hex(&checkpoint.root),
                verifier_key,
                newest_entry: newest_ms.and_then(|ms| {
                    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
                }),
            })
        }
        None => None,
    };
    let retention = crate::retention::status(&*gw.store, &gw.policies, &gw.retention, now)
        .await
        .map_err(ApiError::from)?;
    // Shown as `Audit.GetRetention` shows it, and recorded as it records it.
    gw.record(ctx, Outcome::Allow, "retention-status", None)
        .await?;
    Ok(pages::Overview {
        now,
        ledger_size: head.size,
        checkpoint,
        key_version_in_use: gw.pseudonymiser.observed_version(),
        keyring: (
            gw.pseudonymiser.first_version(),
            gw.pseudonymiser.latest_version(),
        ),
        retention,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The month a statistics page asks for: `?month=YYYY-MM`, or the last closed month. A value
/// that is no month is refused, naming the parameter.
async fn asked_month(gw: &Gateway, ctx: &RequestContext, uri: &Uri) -> Result<Month, ApiError> {
    let given = uri
        .query()
        .and_then(|q| q.split('&').find_map(|pair| pair.strip_prefix("month=")));
    match given {
        None | Some("") => Ok(Month::of(OffsetDateTime::now_utc()).previous()),
        Some(text) => match text.parse::<Month>() {
            Ok(month) => Ok(month),
            Err(e) => {
                let mut v = Violations::default();
                v.add("month", e.to_string());
                Err(gw.deny(ctx, ApiError::InvalidArgument(v), None).await)
            }
        },
    }
}

/// `GET /statistics?month=YYYY-MM`: the month's released tables and the chart of the year to
/// it. The read is recorded in the ledger before the page is rendered.
async fn statistics(
    State(gw): State<Arc<Gateway>>,
    Extension(Dpo(caller)): Extension<Dpo>,
    uri: Uri,
) -> Response {
    let ctx = context(&caller, "Console.Statistics");
    let read = async {
        crate::audit::may_read_statistics(&gw, &ctx).await?;
        let month = asked_month(&gw, &ctx, &uri).await?;
        let releases = crate::audit::read_statistics(&gw, &ctx, &[month]).await?;
        releases
            .into_iter()
            .next()
            .ok_or(ApiError::Integrity("a month read returned no release"))
    };
    match read.await {
        Ok(release) => {
            let closed = Month::of(OffsetDateTime::now_utc()).previous();
            page(pages::statistics(&release, closed))
        }
        Err(e) => failure(&ctx, e),
    }
}

/// `GET /statistics/chart.svg?month=YYYY-MM`: the chart of the twelve months to the month, as
/// SVG. Recorded in the ledger as one statistics read.
async fn chart(
    State(gw): State<Arc<Gateway>>,
    Extension(Dpo(caller)): Extension<Dpo>,
    uri: Uri,
) -> Response {
    let ctx = context(&caller, "Console.StatisticsChart");
    let read = async {
        crate::audit::may_read_statistics(&gw, &ctx).await?;
        let last = asked_month(&gw, &ctx, &uri).await?;
        let mut months = vec![last];
        while months.len() < CHART_MONTHS {
            let earlier = months[months.len() - 1].previous();
            months.push(earlier);
        }
        months.reverse();
        crate::audit::read_statistics(&gw, &ctx, &months).await
    };
    match read.await {
        Ok(releases) => (
            [(header::CONTENT_TYPE, "image/svg+xml")],
            crate::stats_render::svg(&crate::statistics::chart(&releases)),
        )
            .into_response(),
        Err(e) => failure(&ctx, e),
    }
}

/// `GET /flows`: every flow of the policy set in force.
async fn flows(State(gw): State<Arc<Gateway>>, Extension(Dpo(_)): Extension<Dpo>) -> Response {
    page(pages::flows(&gw.policies()))
}

/// `GET /static/console.css`: the one stylesheet, compiled in.
async fn stylesheet() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("console.css"),
    )
        .into_response()
}

/// Any other path.
async fn not_found(Extension(Dpo(_)): Extension<Dpo>) -> Response {
    (
        StatusCode::NOT_FOUND,
        Html(pages::not_found().into_string()),
    )
        .into_response()
}
