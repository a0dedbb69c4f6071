//! A client channel over mTLS, for the demo, the tests, the CLI and Rust integrators; and a
//! minimal HTTPS client of the DPO console for the demo and the tests.

use std::net::SocketAddr;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Connects to the gateway at `addr` as the holder of `cert_pem`/`key_pem`, trusting `ca_pem`
/// for the server, which must present a certificate for `localhost`.
pub async fn connect(
    addr: SocketAddr,
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<Channel, tonic::transport::Error> {
    connect_to(
        &format!("https://{addr}"),
        "localhost",
        ca_pem,
        cert_pem,
        key_pem,
    )
    .await
}

/// Connects to the gateway at `url` (`https://host:port`), expecting its certificate to name
/// `server_name`.
pub async fn connect_to(
    url: &str,
    server_name: &str,
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<Channel, tonic::transport::Error> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .identity(Identity::from_pem(cert_pem, key_pem))
        .domain_name(server_name);
    Endpoint::from_shared(url.to_owned())?
        .tls_config(tls)?
        .connect()
        .await
}

/// A response over HTTPS/1.1.
#[derive(Debug, Clone)]
pub struct HttpsResponse {
    /// The status code.
    pub status: u16,
    /// The headers, names in lower case, in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: String,
}

impl HttpsResponse {
    fn parse(raw: &str) -> Option<Self> {
        let (head, body) = raw.split_once("\r\n\r\n")?;
        let mut lines = head.split("\r\n");
        let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Some(HttpsResponse {
            status,
            headers,
            body: body.to_owned(),
        })
    }

    /// The value of header `name` (lower case), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why an HTTPS request got no response.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpsError {
    /// A certificate or key could not be read.
    #[error("certificate: {0}")]
    Pem(String),
    /// rustls refused the configuration or the handshake failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// The connection failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The answer is not an HTTP/1.1 response.
    #[error("not an HTTP/1.1 response")]
    Malformed,
}

/// The TLS configuration of an HTTPS/1.1 client that trusts `ca_pem` and presents `identity`
/// (certificate and key PEM) when given.
pub fn https_client_config(
    ca_pem: &str,
    identity: Option<(&str, &str)>,
) -> Result<rustls::ClientConfig, HttpsError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let pem = |e: rustls_pki_types::pem::Error| HttpsError::Pem(e.to_string());
    let tls = |e: rustls::Error| HttpsError::Tls(e.to_string());
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(ca.map_err(pem)?).map_err(tls)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(tls)?
    .with_root_certificates(roots);
    let mut config = match identity {
        Some((cert_pem, key_pem)) => {
            let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(pem)?;
            let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(pem)?;
            builder.with_client_auth_cert(chain, key).map_err(tls)?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// `GET path` over HTTPS/1.1 to `addr`, whose certificate must name `localhost` and chain to
/// `ca_pem`, presenting `identity` (certificate and key PEM) when given. The connection is
/// closed after the one response. An error when the handshake or the exchange fails, as it
/// does when the server refuses the client certificate.
pub async fn https_get(
    addr: SocketAddr,
    ca_pem: &str,
    identity: Option<(&str, &str)>,
    path: &str,
) -> Result<HttpsResponse, HttpsError> {
    use rustls_pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let config = https_client_config(ca_pem, identity)?;
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").map_err(|e| HttpsError::Tls(e.to_string()))?;
    let mut stream = connector.connect(name, tcp).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    String::from_utf8(raw)
        .ok()
        .as_deref()
        .and_then(HttpsResponse::parse)
        .ok_or(HttpsError::Malformed)
}
