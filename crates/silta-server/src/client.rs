//! A client channel over mTLS, for the demo, the tests, the CLI and Rust integrators.

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
