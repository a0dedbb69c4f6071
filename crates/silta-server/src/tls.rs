//! mTLS: the rustls server configuration, its files and their reload.
//!
//! Client certificates are required and verified against the configured client CA. The
//! caller's identity is read once per connection, at handshake (`connections`), and travels
//! with every request on that connection as [`PeerInfo`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use silta_core::Caller;

use crate::identity::IdentityError;

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

/// The verifier of client certificates: they must chain to `client_ca`, be meant for client
/// authentication (the clientAuth extended key usage) and, when `client_crl` is given (a PEM
/// file of certificate revocation lists), not be listed in it. The same verifier checks the
/// open connections again after a reload.
pub fn client_verifier(
    client_ca: &Path,
    client_crl: Option<&Path>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
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
    let webpki = builder
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(crate::identity::ClientAuthOnly::wrap(webpki))
}

/// The server's TLS configuration: its certificate chain and key, client certificates required
/// and verified by `verifier`, HTTP/2 only.
pub fn server_config_with(
    verifier: Arc<dyn ClientCertVerifier>,
    cert: &Path,
    key: &Path,
) -> Result<rustls::ServerConfig, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            load_certs(cert).map_err(setting("tls.cert"))?,
            load_key(key).map_err(setting("tls.key"))?,
        )
        .map_err(|e| TlsError::Config(format!("{}: {e}", cert.display())))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
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
    server_config_with(client_verifier(client_ca, client_crl)?, cert, key)
}

/// What silta knows about the peer of a connection; in every request's extensions.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The caller named by the client certificate, or why it names none.
    pub caller: Result<Caller, IdentityError>,
    /// The peer's address.
    pub remote: Option<SocketAddr>,
}

/// The TLS configuration in force, re-read from its files on reload: a new server certificate
/// or CRL takes effect for the next handshake, and the connections already open are checked
/// again against the new client verifier (`connections::Registry::recheck`).
#[derive(Debug)]
pub struct TlsHandle {
    files: TlsFiles,
    current: std::sync::RwLock<Current>,
}

/// A server configuration and the client verifier inside it (rustls does not hand it back).
#[derive(Debug, Clone)]
struct Current {
    config: Arc<rustls::ServerConfig>,
    verifier: Arc<dyn ClientCertVerifier>,
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
        let current = Self::read(&files)?;
        Ok(TlsHandle {
            files,
            current: std::sync::RwLock::new(current),
        })
    }

    fn read(f: &TlsFiles) -> Result<Current, TlsError> {
        let verifier = client_verifier(&f.client_ca, f.client_crl.as_deref())?;
        let config = server_config_with(Arc::clone(&verifier), &f.cert, &f.key)?;
        Ok(Current {
            config: Arc::new(config),
            verifier,
        })
    }

    fn current(&self) -> Current {
        // A poisoned lock still holds a whole configuration.
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The configuration for the next handshake.
    pub fn get(&self) -> Arc<rustls::ServerConfig> {
        self.current().config
    }

    /// The client verifier in force.
    pub fn verifier(&self) -> Arc<dyn ClientCertVerifier> {
        self.current().verifier
    }

    /// Re-reads the files; keeps the current configuration if any of them is wrong.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = Self::read(&self.files)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }
}
