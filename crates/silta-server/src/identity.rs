//! Who is calling: the organisation and role named in the client certificate.
//!
//! A silta client certificate carries exactly one URI subject alternative name of the form
//! `spiffe://<trust-domain>/org/<org-id>/role/<role>`, where `<role>` is `landlord`,
//! `social_services` or `dpo`. The certificate's subject O/OU repeat the organisation and role
//! for people reading it; silta reads only the URI.
//!
//! The certificate must also be meant for client authentication: its extended key usage lists
//! `clientAuth`, checked at the handshake by [`ClientAuthOnly`].

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, ExtendedKeyPurpose};
use silta_core::{Caller, OrgId, Role};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// Why a verified certificate does not name a silta caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The certificate could not be parsed.
    #[error("client certificate could not be parsed")]
    Unparsable,
    /// No `spiffe://` URI for the trust domain, or more than one.
    #[error(
        "client certificate must carry exactly one URI SAN spiffe://{0}/org/<org-id>/role/<role>"
    )]
    NoIdentity(String),
    /// The URI does not follow the form.
    #[error(
        "client certificate URI SAN is not of the form spiffe://{0}/org/<org-id>/role/<role> with a valid org id and role"
    )]
    Malformed(String),
}

/// Reads the caller from a DER certificate already verified against the client CA.
pub fn caller_from_certificate(der: &[u8], trust_domain: &str) -> Result<Caller, IdentityError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| IdentityError::Unparsable)?;
    let prefix = format!("spiffe://{trust_domain}/");
    let uris: Vec<&str> = cert
        .subject_alternative_name()
        .map_err(|_| IdentityError::Unparsable)?
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) if u.starts_with(&prefix) => Some(*u),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let [uri] = uris.as_slice() else {
        return Err(IdentityError::NoIdentity(trust_domain.to_owned()));
    };
    parse_spiffe_path(&uri[prefix.len()..])
        .ok_or_else(|| IdentityError::Malformed(trust_domain.to_owned()))
}

fn parse_spiffe_path(path: &str) -> Option<Caller> {
    let mut parts = path.split('/');
    match (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) {
        (Some("org"), Some(org), Some("role"), Some(role), None) => Some(Caller {
            org: OrgId::new(org).ok()?,
            role: role.parse::<Role>().ok()?,
        }),
        _ => None,
    }
}

/// A client certificate verifier that accepts only what the wrapped one accepts (chain,
/// validity, revocation) and whose leaf lists `clientAuth` in its extended key usage.
///
/// webpki refuses a certificate whose extension lacks `clientAuth`, but takes one with no
/// extension at all as good for any purpose (RFC 5280 allows it). A server certificate or a
/// signing certificate the same CA issued without the extension would then log in as a
/// client; silta requires the extension.
#[derive(Debug)]
pub struct ClientAuthOnly(Arc<dyn ClientCertVerifier>);

impl ClientAuthOnly {
    /// Wraps `inner`.
    pub fn wrap(inner: Arc<dyn ClientCertVerifier>) -> Arc<dyn ClientCertVerifier> {
        Arc::new(ClientAuthOnly(inner))
    }
}

impl ClientCertVerifier for ClientAuthOnly {
    fn offer_client_auth(&self) -> bool {
        self.0.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.0.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.0.verify_client_cert(end_entity, intermediates, now)?;
        client_auth_purpose(end_entity)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.0.requires_raw_public_keys()
    }
}

/// `Ok` when `der`'s extended key usage lists `clientAuth`. Otherwise logs why (with the
/// serial number, for the CA's operator to find the certificate; nothing else of it) and
/// returns the error rustls answers with the `unsupported_certificate` alert, as webpki's own
/// refusal of a certificate for the wrong purpose does.
fn client_auth_purpose(der: &[u8]) -> Result<(), rustls::Error> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
    let eku = cert
        .extended_key_usage()
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
    let (reason, presented) = match eku {
        Some(eku) if eku.value.client_auth => return Ok(()),
        Some(eku) => (
            "its extendedKeyUsage does not list clientAuth",
            if eku.value.server_auth {
                vec![ExtendedKeyPurpose::ServerAuth]
            } else {
                Vec::new()
            },
        ),
        None => ("it has no extendedKeyUsage extension", Vec::new()),
    };
    tracing::warn!(
        serial = %cert.raw_serial_as_string(),
        reason,
        "client certificate refused at the handshake: silta requires an extendedKeyUsage \
         listing clientAuth (1.3.6.1.5.5.7.3.2); reissue it as a client certificate"
    );
    Err(rustls::Error::InvalidCertificate(
        CertificateError::InvalidPurposeContext {
            required: ExtendedKeyPurpose::ClientAuth,
            presented,
        },
    ))
}

/// The SPIFFE URI naming `caller` in `trust_domain`.
pub fn spiffe_uri(trust_domain: &str, caller: &Caller) -> String {
    format!(
        "spiffe://{trust_domain}/org/{}/role/{}",
        caller.org, caller.role
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_paths_are_strict() {
        let ok = parse_spiffe_path("org/city-housing/role/landlord").expect("valid");
        assert_eq!(ok.org.as_str(), "city-housing");
        assert_eq!(ok.role, Role::Landlord);
        for bad in [
            "org/city-housing/role/admin",
            "org/City/role/landlord",
            "org/a/role/landlord/extra",
            "role/landlord/org/a",
            "org//role/dpo",
        ] {
            assert!(parse_spiffe_path(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn only_a_certificate_listing_client_auth_is_for_a_client() {
        use rcgen::{CertificateParams, ExtendedKeyUsagePurpose as P, KeyPair};
        let der = |ekus: Vec<P>| {
            let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
            params.extended_key_usages = ekus;
            let key = KeyPair::generate().expect("key");
            params
                .self_signed(&key)
                .expect("certificate")
                .der()
                .to_vec()
        };
        assert!(client_auth_purpose(&der(vec![P::ClientAuth])).is_ok());
        assert!(client_auth_purpose(&der(vec![P::ServerAuth, P::ClientAuth])).is_ok());
        for refused in [
            vec![],
            vec![P::ServerAuth],
            vec![P::Any],
            vec![P::CodeSigning],
        ] {
            let err = client_auth_purpose(&der(refused.clone())).expect_err("refused");
            assert!(
                matches!(
                    err,
                    rustls::Error::InvalidCertificate(CertificateError::InvalidPurposeContext {
                        required: ExtendedKeyPurpose::ClientAuth,
                        ..
                    })
                ),
                "{refused:?}: {err:?}"
            );
        }
        assert_eq!(
            client_auth_purpose(b"not a certificate"),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::BadEncoding
            ))
        );
    }
}
