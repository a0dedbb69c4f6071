//! `silta health`: one plain HTTP GET of the admin port's `/readyz`, for a container's
//! HEALTHCHECK (the runtime image has no curl or shell tools to do it).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The URL probed when neither `--url` nor `--config` says otherwise.
pub(crate) const DEFAULT_URL: &str = "http://127.0.0.1:9464/readyz";

/// The most of a response read: the status line and a short body are all it needs.
const MAX_RESPONSE: u64 = 16 * 1024;

/// The `/readyz` URL of the admin port `admin.listen` binds: an unspecified address
/// (`0.0.0.0`, `::`) is reached on loopback.
pub(crate) fn url_for_admin(listen: SocketAddr) -> String {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}/readyz", SocketAddr::new(ip, listen.port()))
}

/// GETs `url` (plain `http://` only) within `timeout`. `Ok` holds the one line to print and
/// whether the answer was 200; `Err` the line when no answer came.
pub(crate) async fn check(url: &str, timeout: Duration) -> Result<(bool, String), String> {
    let (authority, path) = split_url(url)?;
    let exchange = async {
        let mut stream = TcpStream::connect(&authority)
            .await
            .map_err(|e| format!("{url}: cannot connect: {e}"))?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: silta-health\r\n\
             Accept: */*\r\nConnection: close\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("{url}: cannot send the request: {e}"))?;
        let mut response = Vec::new();
        stream
            .take(MAX_RESPONSE)
            .read_to_end(&mut response)
            .await
            .map_err(|e| format!("{url}: cannot read the answer: {e}"))?;
        Ok::<_, String>(response)
    };
    let response = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("{url}: no answer within {} ms", timeout.as_millis()))??;
    let (status, body) = parse_response(&response).ok_or_else(|| {
        format!(
            "{url}: not an HTTP answer ({} bytes received)",
            response.len()
        )
    })?;
    let line = if body.is_empty() {
        format!("{url}: {status}")
    } else {
        format!("{url}: {status} {body}")
    };
    Ok((status == 200, line))
}

/// `http://host:port/path` as (`host:port`, `/path`); the port defaults to 80, the path to `/`.
fn split_url(url: &str) -> Result<(String, String), String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        format!("{url}: only http:// URLs can be checked (the admin port is plain HTTP)")
    })?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(format!("{url}: expected http://HOST:PORT/PATH"));
    }
    // A port is present if a colon follows the host (after an IPv6 literal's bracket).
    let host_end = authority.rfind(']').map_or(0, |i| i + 1);
    let authority = if authority[host_end..].contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    Ok((authority, path.to_owned()))
}

/// The status code and the body's first line (trimmed, at most 200 characters).
fn parse_response(response: &[u8]) -> Option<(u16, String)> {
    let text = String::from_utf8_lossy(response);
    let status_line = text.lines().next()?;
    let mut parts = status_line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let status = parts.next()?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .unwrap_or_default();
    let first = body.lines().next().unwrap_or_default().trim();
    Some((status, first.chars().take(200).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_authority_and_path() {
        assert_eq!(
            split_url("http://127.0.0.1:9464/readyz"),
            Ok(("127.0.0.1:9464".into(), "/readyz".into()))
        );
        assert_eq!(
            split_url("http://[::1]:9464/healthz"),
            Ok(("[::1]:9464".into(), "/healthz".into()))
        );
        assert_eq!(
            split_url("http://localhost"),
            Ok(("localhost:80".into(), "/".into()))
        );
        assert_eq!(
            split_url("http://[::1]/x"),
            Ok(("[::1]:80".into(), "/x".into()))
        );
        assert!(split_url("https://127.0.0.1:9464/readyz").is_err());
        assert!(split_url("http:///readyz").is_err());
    }

    #[test]
    fn an_unspecified_admin_address_is_probed_on_loopback() {
        let any4: SocketAddr = "0.0.0.0:9464".parse().expect("literal");
        let any6: SocketAddr = "[::]:9000".parse().expect("literal");
        let own: SocketAddr = "10.0.0.5:9464".parse().expect("literal");
        assert_eq!(url_for_admin(any4), "http://127.0.0.1:9464/readyz");
        assert_eq!(url_for_admin(any6), "http://[::1]:9000/readyz");
        assert_eq!(url_for_admin(own), "http://10.0.0.5:9464/readyz");
    }

    #[test]
    fn responses_give_status_and_first_body_line() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nready\n";
        assert_eq!(parse_response(ok), Some((200, "ready".into())));
        let down = b"HTTP/1.1 503 Service Unavailable\r\n\r\nstore unavailable\n";
        assert_eq!(
            parse_response(down),
            Some((503, "store unavailable".into()))
        );
        assert_eq!(parse_response(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_response(b""), None);
    }
}
