//! mTLS: the rustls server configuration and the stream of authenticated connections.
//!
//! Client certificates are required and verified against the configured client CA. The
//! caller's identity is read once per connection, at handshake, and travels with every request
//! on that connection as [`PeerInfo`].

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use silta_core::Caller;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;

use crate::identity::{IdentityError, caller_from_certificate};

/// How long a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Most handshakes in progress at once. Past it, new connections are closed at once (the
/// client retries) rather than queued behind a flood of idle ones.
const MAX_PENDING_HANDSHAKES: usize = 512;

/// A TLS set-up problem, named with the file it concerns.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// Names the setting a file came from in its error: the operator edits the key, not the path.
fn setting(name: &'static str) -> impl Fn(TlsError) -> TlsError {
    move |e| match e {
        TlsError::File { path, reason } => TlsError::File {
            path: format!("{name} {path}"),
            reason,
        },
        other => other,
    }
}

fn file_error(path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// Reads every certificate in a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "holds no PEM certificate"));
    }
    Ok(certs)
}

/// Reads every CRL in a PEM file.
pub fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let crls = CertificateRevocationListDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if crls.is_empty() {
        return Err(file_error(path, "holds no PEM X509 CRL"));
    }
    warn_if_stale(path, &crls);
    Ok(crls)
}

/// Logs a warning for each CRL past its `nextUpdate`. Such a list is still applied (what it
/// revokes stays revoked), but a certificate revoked since it was issued would not be refused:
/// the operator has to publish a fresh CRL and send SIGHUP.
fn warn_if_stale(path: &Path, crls: &[CertificateRevocationListDer<'_>]) {
    use x509_parser::prelude::FromDer;
    use x509_parser::revocation_list::CertificateRevocationList;
    let now = x509_parser::time::ASN1Time::now();
    for der in crls {
        let Ok((_, crl)) = CertificateRevocationList::from_der(der) else {
            continue; // rustls reports a malformed list when it builds the verifier
        };
        if let Some(next) = crl.next_update()
            && next < now
        {
            tracing::warn!(
                file = %path.display(),
                next_update = %next,
                "client CRL is past its nextUpdate: publish a fresh one and send SIGHUP"
            );
        }
    }
}

/// Reads the private key in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_error(path, e))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server's TLS configuration: its certificate chain and key, client certificates required
/// and verified against `client_ca`, HTTP/2 only.
/// `client_crl`, when given, is a PEM file of certificate revocation lists: a client whose
/// certificate it lists is refused at the handshake.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: &Path,
    client_crl: Option<&Path>,
) -> Result<rustls::ServerConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in load_certs(client_ca).map_err(setting("tls.client_ca"))? {
        roots
            .add(ca)
            .map_err(|e| setting("tls.client_ca")(file_error(client_ca, e)))?;
    }
    let mut builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
    if let Some(crl) = client_crl {
        builder = builder.with_crls(load_crls(crl).map_err(setting("tls.client_crl"))?);
    }
    let verifier = builder
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(crate::identity::ClientAuthOnly::wrap(verifier))
        .with_single_cert(
            load_certs(cert).map_err(setting("tls.cert"))?,
            load_key(key).map_err(setting("tls.key"))?,
        )
        .map_err(|e| TlsError::Config(format!("{}: {e}", cert.display())))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// What silta knows about the peer of a connection; in every request's extensions.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The caller named by the client certificate, or why it names none.
    pub caller: Result<Caller, IdentityError>,
    /// The peer's address.
    pub remote: Option<SocketAddr>,
}

/// A TLS connection whose client certificate was verified and read.
pub struct AuthenticatedStream {
    inner: TlsStream<TcpStream>,
    peer: PeerInfo,
}

impl Connected for AuthenticatedStream {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.peer.clone()
    }
}

impl AsyncRead for AuthenticatedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for AuthenticatedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The TLS configuration in force, re-read from its files on reload: a new server certificate
/// or CRL takes effect for the next handshake; connections already open keep theirs.
#[derive(Debug)]
pub struct TlsHandle {
    files: TlsFiles,
    current: std::sync::RwLock<Arc<rustls::ServerConfig>>,
}

/// The files a [`TlsHandle`] reads.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Server certificate chain.
    pub cert: PathBuf,
    /// Server key.
    pub key: PathBuf,
    /// Client CA.
    pub client_ca: PathBuf,
    /// Client CRLs.
    pub client_crl: Option<PathBuf>,
}

impl TlsHandle {
    /// Reads the files once.
    pub fn open(files: TlsFiles) -> Result<Self, TlsError> {
        let config = Self::read(&files)?;
        Ok(TlsHandle {
            files,
            current: std::sync::RwLock::new(Arc::new(config)),
        })
    }

    fn read(f: &TlsFiles) -> Result<rustls::ServerConfig, TlsError> {
        server_config(&f.cert, &f.key, &f.client_ca, f.client_crl.as_deref())
    }

    /// The configuration for the next handshake.
    pub fn get(&self) -> Arc<rustls::ServerConfig> {
        // A poisoned lock still holds a whole configuration.
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Re-reads the files; keeps the current configuration if any of them is wrong.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = Arc::new(Self::read(&self.files)?);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }
}

/// Accepts TCP connections on `listener` and completes TLS handshakes concurrently, yielding
/// only connections whose handshake succeeded. Failed handshakes (no client certificate, an
/// unknown CA, a timeout) are logged and dropped. Stops when `stop` is cancelled.
pub fn incoming(
    listener: TcpListener,
    config: Arc<TlsHandle>,
    trust_domain: String,
    stop: CancellationToken,
) -> ReceiverStream<Result<AuthenticatedStream, io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    let trust_domain: Arc<str> = trust_domain.into();
    let pending = Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = tokio::select! {
                () = stop.cancelled() => return,
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
            let Ok(permit) = Arc::clone(&pending).try_acquire_owned() else {
                tracing::warn!(%remote, "too many TLS handshakes in progress; connection closed");
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = TlsAcceptor::from(config.get());
            let (tx, trust_domain) = (tx.clone(), trust_domain.clone());
            tokio::spawn(async move {
                let _permit = permit;
                let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::info!(%remote, error = %e, "TLS handshake refused");
                        return;
                    }
                    Err(_) => {
                        tracing::info!(%remote, "TLS handshake timed out");
                        return;
                    }
                };
                let caller = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map_or(Err(IdentityError::Unparsable), |leaf| {
                        caller_from_certificate(leaf, &trust_domain)
                    });
                if let Err(e) = &caller {
                    tracing::warn!(%remote, error = %e, "client certificate names no silta caller");
                }
                let peer = PeerInfo {
                    caller,
                    remote: Some(remote),
                };
                let _ = tx.send(Ok(AuthenticatedStream { inner: tls, peer })).await;
            });
        }
    });
    ReceiverStream::new(rx)
}
