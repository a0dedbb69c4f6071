//! The DPO console over real HTTPS with client certificates: the DPO reads every page, with the
//! security headers on each; other roles are refused; no page shows an identity code.

use silta_core::stats::Month;
use silta_server::client::HttpsResponse;
use silta_tests::*;

/// A gateway with the console on an ephemeral loopback port.
async fn gateway() -> TestGateway {
    TestGateway::start_with(|c| c.console.listen = Some("127.0.0.1:0".parse().expect("address")))
        .await
}

/// Every header the console sets on every response, with its exact value.
const SECURITY_HEADERS: [(&str, &str); 6] = [
    (
        "content-security-policy",
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
         frame-ancestors 'none'; base-uri 'none'",
    ),
    ("strict-transport-security", "max-age=31536000"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-store"),
    ("x-frame-options", "DENY"),
];

fn assert_security_headers(r: &HttpsResponse, what: &str) {
    for (name, value) in SECURITY_HEADERS {
        assert_eq!(r.header(name), Some(value), "{what}: {name}");
    }
}

async fn get(gw: &TestGateway, org: &str, path: &str) -> HttpsResponse {
    gw.console_get(Some(org), path)
        .await
        .unwrap_or_else(|e| panic!("GET {path} as {org}: {e}"))
}

#[tokio::test]
async fn the_dpo_reads_every_page_with_every_security_header() {
    let gw = TestGateway::start_with(|c| {
        c.console.listen = Some("127.0.0.1:0".parse().expect("address"));
        c.ledger.checkpoint_interval_ms = 100;
    })
    .await;
    // The overview shows the latest checkpoint, its signature verified, once one is published.
    let mut overview = get(&gw, DPO, "/").await;
    for _ in 0..50 {
        if overview.body.contains("verified with this gateway") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        overview = get(&gw, DPO, "/").await;
    }
    assert!(
        overview.body.contains("verified with this gateway's key"),
        "{}",
        overview.body
    );
    assert!(overview.body.contains("Newest entry it covers"));
    let pages = [
        ("/", "text/html; charset=utf-8", "Entries in the ledger"),
        ("/statistics", "text/html; charset=utf-8", "<caption>"),
        ("/flows", "text/html; charset=utf-8", "rent-arrears"),
        ("/static/console.css", "text/css; charset=utf-8", "--ink"),
        ("/statistics/chart.svg", "image/svg+xml", "<svg"),
    ];
    for (path, content_type, holds) in pages {
        let r = get(&gw, DPO, path).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        assert_security_headers(&r, path);
        assert_eq!(r.header("content-type"), Some(content_type), "{path}");
        assert!(r.body.contains(holds), "{path} lacks {holds}");
        if content_type.starts_with("text/html") {
            for part in [
                "<html lang=\"en\">",
                "href=\"#main\"",
                "<nav aria-label=",
                "<h1>",
            ] {
                assert!(r.body.contains(part), "{path} lacks {part}");
            }
            // No script and no inline style: the CSP would block them anyway.
            for banned in ["<script", "style=", "<style"] {
                assert!(!r.body.contains(banned), "{path} holds {banned}");
            }
        }
    }
    // Each statistics read (the page and its chart) is in the ledger, as Audit.Statistics's is.
    let reads = gw
        .query_strings(
            "SELECT action FROM audit WHERE reason = 'statistics-read' AND actor_role = 'dpo'",
        )
        .await;
    assert_eq!(
        reads,
        ["Console.Statistics", "Console.StatisticsChart"],
        "one ledger entry per statistics read"
    );
}

#[tokio::test]
async fn a_landlord_certificate_is_refused_and_no_certificate_fails_the_handshake() {
    let gw = gateway().await;
    for path in ["/", "/statistics", "/flows", "/no-such-page"] {
        let r = get(&gw, LANDLORD, path).await;
        assert_eq!(r.status, 403, "{path}");
        assert_security_headers(&r, path);
        assert!(r.body.contains("role landlord"), "{}", r.body);
        assert!(!r.body.contains("console.css"), "a plain page: {}", r.body);
    }
    let refusals = gw
        .query_strings(
            "SELECT action FROM audit WHERE outcome = 'deny' AND actor_role = 'landlord'",
        )
        .await;
    assert_eq!(refusals.len(), 4, "each refusal is in the ledger");
    // Without a client certificate the TLS handshake fails: nothing is answered.
    let anonymous = gw.console_get(None, "/").await;
    assert!(anonymous.is_err(), "{anonymous:?}");
}

#[tokio::test]
async fn the_statistics_page_of_a_month_holds_no_identity_code() {
    let gw = gateway().await;
    let now = time::OffsetDateTime::now_utc();
    let last = Month::of(now).previous();
    // A report naming a resident, this month; last month's counters, one of them small.
    let hetu = valid_hetus()[0].clone();
    gw.landlord(LANDLORD)
        .await
        .report_rent_arrears(report("console-1", &hetu))
        .await
        .expect("report accepted");
    gw.tamper(&format!(
        "INSERT INTO stat_cells VALUES
           ('{last}', 'reports', 'rent-arrears', 'landlord-a', '', 'forwarded', 40),
           ('{last}', 'reports', 'rent-arrears', 'landlord-a', '', 'not_forwarded', 12),
           ('{last}', 'reports', 'rent-arrears', 'landlord-b', '', 'forwarded', 2),
           ('{last}', 'reports', 'rent-arrears', 'landlord-b', '', 'not_forwarded', 9)"
    ))
    .await;
    let r = get(&gw, DPO, &format!("/statistics?month={last}")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("landlord-a"), "{}", r.body);
    assert!(
        r.body.contains("<abbr title=\"suppressed"),
        "the small count is suppressed"
    );
    assert!(r.body.contains(&format!("chart.svg?month={last}")));
    for page in [r.body, get(&gw, DPO, "/").await.body] {
        assert!(!page.contains(&hetu));
        assert!(
            !silta_core::hetu::contains_hetu(&page),
            "an identity code on a page"
        );
    }
    // The month still running is not released, and a malformed month is refused.
    let this = Month::of(now);
    for month in [this.to_string(), "2026-13".to_owned()] {
        let r = get(&gw, DPO, &format!("/statistics?month={month}")).await;
        assert_eq!(r.status, 400, "{month}: {}", r.body);
        assert_security_headers(&r, &month);
    }
}

#[tokio::test]
async fn an_unknown_path_is_not_found() {
    let gw = gateway().await;
    let r = get(&gw, DPO, "/no-such-page").await;
    assert_eq!(r.status, 404);
    assert_security_headers(&r, "404");
    assert!(r.body.contains("<h1>Not found</h1>"), "{}", r.body);
}

/// Sends `GET path` on an open keep-alive connection and reads one response: its status.
async fn status_on(
    stream: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    path: &str,
) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .expect("request");
    let mut raw = Vec::new();
    loop {
        let text = String::from_utf8_lossy(&raw).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_owned())
                })
                .and_then(|v| v.parse().ok())
                .expect("a content-length");
            if body.len() >= length {
                return head
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .expect("a status");
            }
        }
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await.expect("response");
        assert!(n > 0, "the connection closed before the response ended");
        raw.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn a_dpo_certificate_revoked_by_a_reloaded_crl_is_refused_even_on_an_open_connection() {
    let gw = TestGateway::start_with(|c| {
        c.console.listen = Some("127.0.0.1:0".parse().expect("address"));
        let dir = c.tls.client_ca.parent().expect("pki dir").to_path_buf();
        let crl = silta_server::devpki::revoke(&dir, &[]).expect("an empty CRL");
        c.tls.client_crl = Some(crl);
    })
    .await;
    // A browser's keep-alive connection, opened before the revocation.
    let (_, dpo) = gw
        .pki
        .clients
        .iter()
        .find(|(c, _)| c.org.as_str() == DPO)
        .expect("the DPO");
    let config = silta_server::client::https_client_config(
        &gw.pki.ca_cert,
        Some((dpo.cert.as_str(), dpo.key.as_str())),
    )
    .expect("client TLS");
    let tcp = tokio::net::TcpStream::connect(gw.console_addr().expect("console"))
        .await
        .expect("connect");
    let mut open = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(
            rustls_pki_types::ServerName::try_from("localhost").expect("name"),
            tcp,
        )
        .await
        .expect("handshake");
    assert_eq!(status_on(&mut open, "/flows").await, 200, "not revoked yet");

    let dir = gw.config.tls.client_ca.parent().expect("pki dir");
    silta_server::devpki::revoke(dir, &[DPO.to_owned()]).expect("CRL");
    gw.reload_tls().await.expect("reload");
    assert_eq!(
        status_on(&mut open, "/flows").await,
        403,
        "the open connection's next request is refused"
    );
    let revoked = gw.console_get(Some(DPO), "/").await;
    assert!(revoked.is_err(), "a new handshake fails: {revoked:?}");
}

#[tokio::test]
async fn the_console_stops_with_the_gateway() {
    let mut gw = gateway().await;
    let addr = gw.console_addr().expect("console.listen is set");
    assert_eq!(get(&gw, DPO, "/flows").await.status, 200);
    gw.stop().await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the console's port is closed once the gateway has stopped"
    );
}
