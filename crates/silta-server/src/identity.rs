//! Who is calling: the organisation and role named in the client certificate.
//!
//! A silta client certificate carries exactly one URI subject alternative name of the form
//! `spiffe://<trust-domain>/org/<org-id>/role/<role>`, where `<role>` is `landlord`,
//! `social_services` or `dpo`. The certificate's subject O/OU repeat the organisation and role
//! for people reading it; silta reads only the URI.

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
}
