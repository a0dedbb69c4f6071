//! Organisations and their roles, as named by their client certificates.

use std::fmt;
use std::str::FromStr;

/// An organisation's identifier: 1–63 characters of `[a-z0-9-]`, starting with a letter or
/// digit, with nothing shaped like an identity code in it. It appears in certificates,
/// pseudonym domains, audit records and logs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OrgId(String);

/// An organisation id that does not follow the rules of [`OrgId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "organisation id must be 1-63 characters of a-z, 0-9 and '-', not starting with '-', and \
     not contain anything shaped like a personal identity code"
)]
pub struct InvalidOrgId;

impl OrgId {
    /// Validates `s` as an organisation id.
    pub fn new(s: &str) -> Result<Self, InvalidOrgId> {
        let ok = (1..=63).contains(&s.len())
            && !s.starts_with('-')
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            // It is logged and stored everywhere: a certificate naming a person must not work.
            && !crate::hetu::contains_hetu(s);
        if ok {
            Ok(OrgId(s.to_owned()))
        } else {
            Err(InvalidOrgId)
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OrgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What an organisation's system may do through silta.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Reports rent arrears and eviction stages; receives support notices.
    Landlord,
    /// Enrols clients with consent, receives alerts, sends support notices.
    SocialServices,
    /// Reads and verifies the audit ledger.
    Dpo,
    /// Reads the programme's statistics, and nothing else (a researcher, the steering group).
    Analyst,
    /// The gateway itself, acting on its own schedule (retention purges). No certificate can
    /// claim it: it is not accepted by `Role::from_str`.
    Gateway,
}

impl Role {
    /// The role's name as written in certificates and audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Landlord => "landlord",
            Role::SocialServices => "social_services",
            Role::Dpo => "dpo",
            Role::Analyst => "analyst",
            Role::Gateway => "gateway",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that silta does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role (expected landlord, social_services, dpo or analyst)")]
pub struct UnknownRole;

impl FromStr for Role {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "landlord" => Ok(Role::Landlord),
            "social_services" => Ok(Role::SocialServices),
            "dpo" => Ok(Role::Dpo),
            "analyst" => Ok(Role::Analyst),
            _ => Err(UnknownRole),
        }
    }
}

/// Who is calling: the organisation and role proven by the client certificate.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Caller {
    /// The calling organisation.
    pub org: OrgId,
    /// Its role.
    pub role: Role,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn org_ids_are_strict() {
        assert!(OrgId::new("city-housing").is_ok());
        assert!(OrgId::new("ss2").is_ok());
        // The last: a synthetic identity code in lower case, as a certificate could carry it.
        for bad in [
            "",
            "-x",
            "City",
            "a b",
            "a/b",
            &"a".repeat(64),
            "020464-911d",
        ] {
            assert!(OrgId::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn roles_round_trip() {
        for r in [
            Role::Landlord,
            Role::SocialServices,
            Role::Dpo,
            Role::Analyst,
        ] {
            assert_eq!(r.as_str().parse::<Role>(), Ok(r));
        }
    }

    #[test]
    fn no_certificate_can_claim_the_gateway_role() {
        assert_eq!("gateway".parse::<Role>(), Err(UnknownRole));
    }
}
