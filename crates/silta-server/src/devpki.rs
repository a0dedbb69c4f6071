//! A development PKI: a throw-away CA, a server certificate for loopback, and one client
//! certificate per caller, each naming its organisation and role in a SPIFFE URI SAN
//! (`spiffe://<trust-domain>/org/<org>/role/<role>`, see [`crate::identity`]). Never for
//! production: keys are written unencrypted.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use silta_core::Caller;

use crate::identity::spiffe_uri;

/// A certificate and its key, PEM.
#[derive(Debug, Clone)]
pub struct Pem {
    /// Certificate, PEM.
    pub cert: String,
    /// Private key, PEM (PKCS#8).
    pub key: String,
}

/// A minted development PKI, in memory.
#[derive(Debug, Clone)]
pub struct DevPki {
    /// The CA certificate (clients and server trust it).
    pub ca_cert: String,
    /// The server's certificate, valid for `localhost` and 127.0.0.1.
    pub server: Pem,
    /// One certificate per caller, in the order given.
    pub clients: Vec<(Caller, Pem)>,
}

/// A PKI problem.
#[derive(Debug, thiserror::Error)]
#[error("dev PKI: {0}")]
pub struct PkiError(String);

impl From<rcgen::Error> for PkiError {
    fn from(e: rcgen::Error) -> Self {
        PkiError(e.to_string())
    }
}

/// Mints a CA named `ca_name`, a loopback server certificate and a client certificate per caller.
pub fn mint(ca_name: &str, trust_domain: &str, callers: &[Caller]) -> Result<DevPki, PkiError> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, ca_name);
    ca_params
        .distinguished_name
        .push(DnType::OrganizationName, "silta development");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

    let mut server_params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    server_params
        .distinguished_name
        .push(DnType::CommonName, "silta gateway (dev)");
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_key = KeyPair::generate()?;
    let server_cert = server_params.signed_by(&server_key, &ca)?;

    let mut clients = Vec::with_capacity(callers.len());
    for caller in callers {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(
            DnType::CommonName,
            format!("{} ({})", caller.org, caller.role),
        );
        params
            .distinguished_name
            .push(DnType::OrganizationName, caller.org.as_str());
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, caller.role.as_str());
        params.subject_alt_names = vec![SanType::URI(spiffe_uri(trust_domain, caller).try_into()?)];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca)?;
        clients.push((
            caller.clone(),
            Pem {
                cert: cert.pem(),
                key: key.serialize_pem(),
            },
        ));
    }
    Ok(DevPki {
        ca_cert: ca.pem(),
        server: Pem {
            cert: server_cert.pem(),
            key: server_key.serialize_pem(),
        },
        clients,
    })
}

impl DevPki {
    /// Writes `ca.pem`, `server.pem`/`server.key` and `<org>.pem`/`<org>.key` per client into
    /// `dir`, keys readable by the owner only. Returns the files written.
    pub fn write_to(&self, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir)?;
        let mut written = Vec::new();
        let mut put = |name: String, text: &str, secret: bool| -> std::io::Result<()> {
            let path = dir.join(name);
            std::fs::write(&path, text)?;
            if secret {
                restrict_to_owner(&path)?;
            }
            written.push(path);
            Ok(())
        };
        put("ca.pem".into(), &self.ca_cert, false)?;
        put("server.pem".into(), &self.server.cert, false)?;
        put("server.key".into(), &self.server.key, true)?;
        for (caller, pem) in &self.clients {
            put(format!("{}.pem", caller.org), &pem.cert, false)?;
            put(format!("{}.key", caller.org), &pem.key, true)?;
        }
        Ok(written)
    }
}

/// Makes a file readable and writable by its owner only.
pub fn restrict_to_owner(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}
