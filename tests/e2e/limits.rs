//! The gateway keeps serving everyone else whatever one caller does with its sockets, its
//! connections and its streams (`[limits]`, docs/security.md).

use std::sync::Arc;
use std::time::Duration;

use silta_server::proto;
use silta_server::proto::landlord_client::LandlordClient;
use silta_server::proto::social_services_client::SocialServicesClient;
use silta_tests::{LANDLORD, SOCIAL_A, TestGateway, enrol, report};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::StreamExt;

/// A synthetic identity code.
const RESIDENT: &str = "150385-9345";

/// The PEM certificate and key of `org`.
fn identity(gw: &TestGateway, org: &str) -> (String, String) {
    let (_, pem) = gw
        .pki
        .clients
        .iter()
        .find(|(c, _)| c.org.as_str() == org)
        .expect("known org");
    (pem.cert.clone(), pem.key.clone())
}

/// A raw TLS connection to the gateway as `org`, handshake done, nothing sent.
async fn tls_as(
    gw: &TestGateway,
    org: &str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let (cert, key) = identity(gw, org);
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(gw.pki.ca_cert.as_bytes()) {
        roots.add(ca.expect("CA")).expect("add CA");
    }
    let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("chain");
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key");
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .expect("client auth");
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(gw.addr())
        .await
        .expect("connect");
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("handshake")
}

/// `silta_<name>{reason="<reason>"}` from the admin port, 0 when absent.
async fn counter(gw: &TestGateway, name: &str, reason: &str) -> u64 {
    let text = silta_tests::admin_get(gw.admin_addr().expect("admin port"), "/metrics").await;
    let prefix = format!("silta_{name}_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse().expect("a count"))
}

fn with_admin(c: &mut silta_server::Config) {
    c.admin.listen = Some("127.0.0.1:0".parse().expect("address"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_holding_600_silent_sockets_does_not_lock_out_another() {
    let gw = TestGateway::start_with(with_admin).await;
    let addr = gw.addr();
    // The attacker: another loopback address, 600 sockets that never send a ClientHello,
    // each re-opened as soon as the gateway closes it.
    let stop = tokio_util::sync::CancellationToken::new();
    let mut attackers = Vec::new();
    for _ in 0..600 {
        let stop = stop.clone();
        attackers.push(tokio::spawn(async move {
            let mut opened = 0u32;
            while !stop.is_cancelled() {
                let socket = tokio::net::TcpSocket::new_v4().expect("socket");
                socket
                    .bind("127.0.0.2:0".parse().expect("address"))
                    .expect("bind 127.0.0.2");
                let Ok(mut tcp) = socket.connect(addr).await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                opened += 1;
                let mut byte = [0u8; 1];
                tokio::select! {
                    _ = tcp.read(&mut byte) => {}
                    () = stop.cancelled() => {}
                }
                // Closed by the gateway: open another a moment later, as a flood would.
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            opened
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Meanwhile, a landlord system from 127.0.0.1 opens 20 fresh mTLS connections.
    let (cert, key) = identity(&gw, LANDLORD);
    let mut served = 0;
    for i in 0..20 {
        let attempt = async {
            let channel = silta_server::client::connect(addr, &gw.pki.ca_cert, &cert, &key)
                .await
                .ok()?;
            LandlordClient::new(channel)
                .report_rent_arrears(report(&format!("flood-{i}"), RESIDENT))
                .await
                .ok()
        };
        if tokio::time::timeout(Duration::from_secs(5), attempt)
            .await
            .ok()
            .flatten()
            .is_some()
        {
            served += 1;
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    stop.cancel();
    let mut opened = 0;
    for a in attackers {
        opened += a.await.expect("attacker");
    }
    assert!(opened >= 600, "the attack ran ({opened} sockets opened)");
    assert!(served >= 19, "only {served} of 20 connections were served");
    assert!(
        counter(&gw, "connections_refused", "source-handshakes").await > 0,
        "the attacker's sockets past its share were refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_sends_the_http2_preface_is_closed() {
    let gw = TestGateway::start_with(|c| {
        with_admin(c);
        c.limits.first_request_timeout_ms = 300;
    })
    .await;
    let mut tls = tls_as(&gw, LANDLORD).await;
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            // The server's SETTINGS and GOAWAY may come first; then the end of the stream.
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "a silent authenticated connection is held");
    assert_eq!(
        counter(&gw, "connections_closed", "first-request-timeout").await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_connects_ahead_of_its_first_call_is_kept() {
    let gw = TestGateway::start_with(|c| {
        with_admin(c);
        c.limits.first_request_timeout_ms = 300;
    })
    .await;
    let mut landlord = gw.landlord(LANDLORD).await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    landlord
        .report_rent_arrears(report("late-first-call", RESIDENT))
        .await
        .expect("served");
    assert_eq!(
        counter(&gw, "connections_closed", "first-request-timeout").await,
        0,
        "a connection that sent its preface is idle, not silent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_with_goaway_and_the_client_reconnects() {
    let gw = TestGateway::start_with(|c| {
        with_admin(c);
        c.limits.idle_timeout_s = 1;
    })
    .await;
    let mut landlord = gw.landlord(LANDLORD).await;
    landlord
        .report_rent_arrears(report("idle-1", RESIDENT))
        .await
        .expect("served");
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(counter(&gw, "connections_closed", "idle").await, 1);
    landlord
        .report_rent_arrears(report("idle-2", RESIDENT))
        .await
        .expect("the client reconnects after GOAWAY");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_past_its_maximum_age_is_closed_and_the_client_reconnects() {
    let gw = TestGateway::start_with(|c| {
        with_admin(c);
        c.limits.max_connection_age_s = 1;
        c.limits.max_connection_age_grace_s = 1;
    })
    .await;
    let mut landlord = gw.landlord(LANDLORD).await;
    landlord
        .report_rent_arrears(report("age-1", RESIDENT))
        .await
        .expect("served");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(counter(&gw, "connections_closed", "max-age").await >= 1);
    landlord
        .report_rent_arrears(report("age-2", RESIDENT))
        .await
        .expect("the client reconnects");
}

/// A request body that sends the start of a message declaring 4 MB, then nothing.
struct Stalled {
    sent: bool,
}

impl http_body::Body for Stalled {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, tonic::Status>>> {
        if self.sent {
            return std::task::Poll::Pending;
        }
        self.sent = true;
        let mut frame = vec![0u8];
        frame.extend_from_slice(&(4u32 * 1024 * 1024).to_be_bytes());
        frame.extend_from_slice(b"\x0a\x03abc");
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(frame.into()))))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_stalled_halfway_ends_with_deadline_exceeded() {
    use tonic::codegen::Service;
    let gw = TestGateway::start_with(|c| {
        with_admin(c);
        c.limits.request_body_timeout_ms = 500;
    })
    .await;
    let mut channel = gw.channel(LANDLORD).await;
    let request = tonic::codegen::http::Request::builder()
        .method("POST")
        .uri(format!(
            "https://localhost:{}/silta.v1.Landlord/ReportRentArrears",
            gw.addr().port()
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::new(Stalled { sent: false }))
        .expect("request");
    std::future::poll_fn(|cx| channel.poll_ready(cx))
        .await
        .expect("ready");
    let response = tokio::time::timeout(Duration::from_secs(10), async {
        let response = channel.call(request).await.expect("a response");
        let (parts, mut body) = response.into_parts();
        let mut status = parts.headers.get("grpc-status").cloned();
        while let Some(frame) = std::future::poll_fn(|cx| {
            http_body::Body::poll_frame(std::pin::Pin::new(&mut body), cx)
        })
        .await
        {
            if let Ok(trailers) = frame.expect("frame").into_trailers() {
                status = trailers.get("grpc-status").cloned();
            }
        }
        status
    })
    .await
    .expect("the gateway answers a stalled body instead of holding it");
    assert_eq!(
        response.as_ref().and_then(|s| s.to_str().ok()),
        Some("4"),
        "DEADLINE_EXCEEDED"
    );
    let text = silta_tests::admin_get(gw.admin_addr().expect("admin"), "/metrics").await;
    assert!(
        text.contains("silta_request_body_timeouts_total 1"),
        "{text}"
    );
    // The gateway keeps serving.
    gw.landlord(LANDLORD)
        .await
        .report_rent_arrears(report("after-stall", RESIDENT))
        .await
        .expect("served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stops_reading_gets_resource_exhausted_and_loses_nothing() {
    let gw = TestGateway::start_with(|c| {
        with_admin(c);
        c.limits.stream_stall_timeout_ms = 500;
        c.limits.stream_send_buffer_bytes = 16 * 1024;
    })
    .await;
    gw.social(SOCIAL_A)
        .await
        .enrol_client(enrol(RESIDENT))
        .await
        .expect("enrolled");
    let reports = 1_000;
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let mut landlord = gw.landlord(LANDLORD).await;
        tasks.push(tokio::spawn(async move {
            for i in (worker..reports).step_by(8) {
                landlord
                    .report_rent_arrears(report(&format!("slow-{i}"), RESIDENT))
                    .await
                    .expect("accepted");
            }
        }));
    }
    for t in tasks {
        t.await.expect("reporter");
    }
    // A client with small HTTP/2 windows that subscribes and then reads nothing.
    let (cert, key) = identity(&gw, SOCIAL_A);
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&gw.pki.ca_cert))
        .identity(tonic::transport::Identity::from_pem(cert, key))
        .domain_name("localhost");
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{}", gw.addr()))
        .expect("endpoint")
        .tls_config(tls)
        .expect("tls")
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .expect("connect");
    let mut stream = SocialServicesClient::new(channel)
        .subscribe_alerts(proto::SubscribeAlertsRequest { after_sequence: 0 })
        .await
        .expect("subscribed")
        .into_inner();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        let mut read = 0;
        loop {
            match stream.next().await {
                Some(Ok(_)) => read += 1,
                Some(Err(status)) => return (read, Some(status)),
                None => return (read, None),
            }
        }
    })
    .await
    .expect("the stream ends instead of feeding a backlog");
    let status = ended.1.expect("an error status");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("after_sequence"), "{status:?}");
    assert!(
        ended.0 < reports,
        "the stream ended early ({} read)",
        ended.0
    );
    let text = silta_tests::admin_get(gw.admin_addr().expect("admin"), "/metrics").await;
    assert!(text.contains("silta_stalled_streams_total 1"), "{text}");
    // Nothing is lost: a fresh subscription from the start gets every alert.
    let mut again = gw
        .social(SOCIAL_A)
        .await
        .subscribe_alerts(proto::SubscribeAlertsRequest { after_sequence: 0 })
        .await
        .expect("subscribed")
        .into_inner();
    let mut got = 0;
    while got < reports {
        tokio::time::timeout(Duration::from_secs(10), again.next())
            .await
            .expect("an alert")
            .expect("open")
            .expect("an alert");
        got += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_connection_whose_certificate_is_revoked_is_closed_on_reload() {
    let gw = TestGateway::start_with(|c| {
        with_admin(c);
        let dir = c.tls.client_ca.parent().expect("pki dir").to_path_buf();
        let crl = silta_server::devpki::revoke(&dir, &[]).expect("an empty CRL");
        c.tls.client_crl = Some(crl);
    })
    .await;
    let dir = gw
        .config
        .tls
        .client_ca
        .parent()
        .expect("pki dir")
        .to_path_buf();
    let mut revoked = gw.landlord(LANDLORD).await;
    let mut kept = gw.social(SOCIAL_A).await;
    revoked
        .report_rent_arrears(report("before-revocation", RESIDENT))
        .await
        .expect("served before the revocation");
    kept.enrol_client(enrol(RESIDENT)).await.expect("served");
    // A raw connection of the revoked organisation, to see the close itself.
    let mut raw = tls_as(&gw, LANDLORD).await;
    raw.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .expect("preface");
    // The server's SETTINGS frame: the connection is registered and served. (The client's
    // side of a TLS 1.3 handshake can end before the server has taken the connection on.)
    let mut settings = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(5), raw.read_exact(&mut settings))
        .await
        .expect("the server answers the preface in time")
        .expect("the server's SETTINGS frame");
    assert_eq!(settings[3], 0x4, "a SETTINGS frame");

    silta_server::devpki::revoke(&dir, &[LANDLORD.to_owned()]).expect("CRL");
    let closed = gw.reload_tls().await.expect("reloaded");
    assert_eq!(closed, 2, "both of the landlord's connections");
    let mut buf = [0u8; 256];
    let eof = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match raw.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(eof.is_ok(), "the revoked connection is closed");
    revoked
        .report_rent_arrears(report("after-revocation", RESIDENT))
        .await
        .expect_err("the revoked client is no longer served");
    kept.enrol_client(enrol(RESIDENT))
        .await
        .expect("another organisation's open connection keeps working");
    assert_eq!(counter(&gw, "connections_closed", "revoked").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_commit_queue_refuses_at_once_with_retry_info_and_loses_nothing() {
    use sqlx::Connection as _;
    // One job per commit and room for four waiting: twelve callers overflow it.
    let gw = TestGateway::start_with(|c| c.tuning.max_batch = 1).await;
    let hetu = silta_tests::valid_hetus().remove(0);
    // Hold the database's write lock, as a stalled disk would: the committer waits in its batch.
    let url = format!("sqlite://{}", gw.db_path().display());
    let mut blocker = sqlx::SqliteConnection::connect(&url)
        .await
        .expect("connect");
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut blocker)
        .await
        .expect("the write lock");
    let mut calls = Vec::new();
    for i in 0..12 {
        let mut client = gw.landlord(LANDLORD).await;
        let hetu = hetu.clone();
        calls.push(tokio::spawn(async move {
            client
                .report_rent_arrears(report(&format!("q-{i}"), &hetu))
                .await
        }));
    }
    // Those refused are answered while the lock is still held: at once, not after a wait.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while calls.iter().filter(|c| c.is_finished()).count() < 7 {
        assert!(
            std::time::Instant::now() < deadline,
            "overflowing callers were not refused at once"
        );
        tokio::task::yield_now().await;
    }
    sqlx::query("ROLLBACK")
        .execute(&mut blocker)
        .await
        .expect("release");
    let (mut accepted, mut refused) = (0, 0);
    for call in calls {
        match call.await.expect("call task") {
            Ok(_) => accepted += 1,
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                let details = tonic_types::StatusExt::get_error_details(&status);
                assert_eq!(
                    details.error_info().map(|i| i.reason.as_str()),
                    Some("OVERLOADED")
                );
                let retry = details.retry_info().expect("RetryInfo");
                assert_eq!(
                    retry.retry_delay,
                    Some(std::time::Duration::from_millis(200))
                );
                refused += 1;
            }
        }
    }
    assert!(
        accepted >= 1 && refused >= 7,
        "{accepted} accepted, {refused} refused"
    );
    assert_eq!(accepted + refused, 12);
    // Every acknowledged report is stored once; the gateway keeps serving.
    let stored = gw
        .query_strings("SELECT idempotency_key FROM reports")
        .await;
    assert_eq!(stored.len(), accepted, "{stored:?}");
    gw.landlord(LANDLORD)
        .await
        .report_rent_arrears(report("after", &hetu))
        .await
        .expect("served again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_report_whose_deadline_passed_before_its_commit_is_not_committed() {
    use sqlx::Connection as _;
    let gw = TestGateway::start().await;
    let hetu = silta_tests::valid_hetus().remove(0);
    // The store stalls: the report waits in the committer past its caller's deadline.
    let url = format!("sqlite://{}", gw.db_path().display());
    let mut blocker = sqlx::SqliteConnection::connect(&url)
        .await
        .expect("connect");
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut blocker)
        .await
        .expect("the write lock");
    let mut request = tonic::Request::new(report("late", &hetu));
    request.set_timeout(Duration::from_millis(300));
    let status = gw
        .landlord(LANDLORD)
        .await
        .report_rent_arrears(request)
        .await
        .expect_err("the deadline passes while the store stalls");
    // tonic's client keeps the deadline too: whichever side notices first ends the call.
    assert!(
        matches!(
            status.code(),
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
        ),
        "{status:?}"
    );
    sqlx::query("ROLLBACK")
        .execute(&mut blocker)
        .await
        .expect("release");
    // A later report goes through the same committer: once it is acknowledged, the late one
    // has been taken and refused before it.
    gw.landlord(LANDLORD)
        .await
        .report_rent_arrears(report("after", &hetu))
        .await
        .expect("served again");
    let stored = gw
        .query_strings("SELECT idempotency_key FROM reports")
        .await;
    assert_eq!(stored, ["after"], "the late report was committed");
    // Sent again with the same key, it is a new report, stored once.
    gw.landlord(LANDLORD)
        .await
        .report_rent_arrears(report("late", &hetu))
        .await
        .expect("retried in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_organisation_past_its_stream_cap_is_refused_and_others_are_not() {
    let gw = TestGateway::start_with(|c| c.limits.max_streams_per_org = 2).await;
    let open = || async {
        gw.social(SOCIAL_A)
            .await
            .subscribe_alerts(proto::SubscribeAlertsRequest { after_sequence: 0 })
            .await
    };
    let first = open().await.expect("first stream");
    let _second = open().await.expect("second stream");
    let status = open().await.expect_err("a third stream is past the cap");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    let details = tonic_types::StatusExt::get_error_details(&status);
    assert_eq!(
        details.error_info().map(|i| i.reason.as_str()),
        Some("QUOTA_EXCEEDED")
    );
    let quota = details.quota_failure().expect("QuotaFailure");
    assert_eq!(quota.violations[0].subject, "limits.max_streams_per_org");
    // Another organisation is not held back by this one.
    gw.social(silta_tests::SOCIAL_B)
        .await
        .subscribe_alerts(proto::SubscribeAlertsRequest { after_sequence: 0 })
        .await
        .expect("another organisation's stream");
    // A stream that ends gives its place back.
    drop(first);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match open().await {
            Ok(_third) => break,
            Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the closed stream's place was not given back"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(s) => panic!("{s:?}"),
        }
    }
}
