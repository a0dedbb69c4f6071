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
    /// The CA's private key, PEM: kept (owner-only) so `silta dev-pki revoke` can sign CRLs.
    pub ca_key: String,
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
    let ca_key = KeyPair::generate()?;
    let ca_key_pem = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key)?;

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
        ca_key: ca_key_pem,
        server: Pem {
            cert: server_cert.pem(),
            key: server_key.serialize_pem(),
        },
        clients,
    })
}

/// Revokes the client certificates `<org>.pem` in `dir` (minted by [`mint`]): writes
/// `crl.pem`, a CRL signed by `ca.key` listing them and every certificate an earlier `crl.pem`
/// listed, with the next CRL number. Point `tls.client_crl` at it. Returns its path.
pub fn revoke(dir: &Path, orgs: &[String]) -> Result<PathBuf, PkiError> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    use x509_parser::revocation_list::CertificateRevocationList;

    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .map_err(|e| PkiError(format!("{}: {e}", dir.join(name).display())))
    };
    let der_of = |pem_text: &str, what: &str| {
        rustls_pki_types::pem::PemObject::from_pem_slice(pem_text.as_bytes())
            .map(|d: rustls_pki_types::CertificateDer<'static>| d.to_vec())
            .map_err(|e| PkiError(format!("{what}: {e}")))
    };
    let mut serials: Vec<Vec<u8>> = Vec::new();
    let mut crl_number: u64 = 1;
    let crl_path = dir.join("crl.pem");
    if crl_path.exists() {
        let text = read("crl.pem")?;
        let der: rustls_pki_types::CertificateRevocationListDer<'static> =
            rustls_pki_types::pem::PemObject::from_pem_slice(text.as_bytes())
                .map_err(|e| PkiError(format!("crl.pem: {e}")))?;
        let (_, crl) = CertificateRevocationList::from_der(&der)
            .map_err(|e| PkiError(format!("crl.pem: {e}")))?;
        for revoked in crl.iter_revoked_certificates() {
            serials.push(revoked.raw_serial().to_vec());
        }
        if let Some(n) = crl.crl_number() {
            crl_number = u64::try_from(n).unwrap_or(u64::MAX - 1) + 1;
        }
    }
    for org in orgs {
        let org = silta_core::OrgId::new(org).map_err(|e| PkiError(format!("{org}: {e}")))?;
        let org = org.as_str();
        let der = der_of(&read(&format!("{org}.pem"))?, org)?;
        let (_, cert) =
            X509Certificate::from_der(&der).map_err(|e| PkiError(format!("{org}.pem: {e}")))?;
        let serial = cert.raw_serial().to_vec();
        if !serials.contains(&serial) {
            serials.push(serial);
        }
    }
    let key = KeyPair::from_pem(&read("ca.key")?)?;
    let issuer = rcgen::Issuer::from_ca_cert_pem(&read("ca.pem")?, key)?;
    let now = time::OffsetDateTime::now_utc();
    let params = rcgen::CertificateRevocationListParams {
        this_update: now,
        next_update: now + time::Duration::days(30),
        crl_number: rcgen::SerialNumber::from(crl_number.to_be_bytes().to_vec()),
        issuing_distribution_point: None,
        revoked_certs: serials
            .into_iter()
            .map(|serial| rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from(serial),
                revocation_time: now,
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    };
    let crl = params.signed_by(&issuer)?;
    std::fs::write(&crl_path, crl.pem()?)
        .map_err(|e| PkiError(format!("{}: {e}", crl_path.display())))?;
    Ok(crl_path)
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
        // A CRL of an earlier CA in this directory would refuse every client of the new one.
        match std::fs::remove_file(dir.join("crl.pem")) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        put("ca.pem".into(), &self.ca_cert, false)?;
        put("ca.key".into(), &self.ca_key, true)?;
        put("server.pem".into(), &self.server.cert, false)?;
        put("server.key".into(), &self.server.key, true)?;
        for (caller, pem) in &self.clients {
            put(format!("{}.pem", caller.org), &pem.cert, false)?;
            put(format!("{}.key", caller.org), &pem.key, true)?;
            // A social-services organisation may be a statutory recipient: its key pair for
            // sealed identity, the public half for silta's [[statutory_recipients]].
            if caller.role == silta_core::Role::SocialServices {
                let (private, public) = silta_core::sealed::generate_keypair();
                put(format!("{}.hpke-private.key", caller.org), &private, true)?;
                put(format!("{}.hpke-public.key", caller.org), &public, false)?;
            }
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

#[cfg(test)]
mod tests {
    use silta_core::{Caller, OrgId, Role};
    use x509_parser::prelude::{FromDer, X509Certificate};

    /// (clientAuth, serverAuth) of a PEM certificate's extended key usage.
    fn purposes(pem: &str) -> (bool, bool) {
        let der: rustls_pki_types::CertificateDer<'static> =
            rustls_pki_types::pem::PemObject::from_pem_slice(pem.as_bytes()).expect("PEM");
        let (_, cert) = X509Certificate::from_der(&der).expect("certificate");
        let eku = cert
            .extended_key_usage()
            .expect("well-formed")
            .expect("an extendedKeyUsage extension")
            .value;
        assert!(!eku.any && eku.other.is_empty(), "{eku:?}");
        (eku.client_auth, eku.server_auth)
    }

    #[test]
    fn client_certificates_are_for_clients_and_the_server_certificate_for_the_server() {
        let caller = Caller {
            org: OrgId::new("city-housing").expect("valid"),
            role: Role::Landlord,
        };
        let pki = super::mint("test CA", "silta.local", &[caller]).expect("PKI");
        assert_eq!(purposes(&pki.clients[0].1.cert), (true, false));
        assert_eq!(purposes(&pki.server.cert), (false, true));
    }
}
