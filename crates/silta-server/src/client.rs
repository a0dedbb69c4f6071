//! A client channel over mTLS, for the demo, the tests and Rust integrators.

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
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .identity(Identity::from_pem(cert_pem, key_pem))
        .domain_name("localhost");
    Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .connect()
        .await
}
