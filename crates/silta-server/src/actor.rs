//! The person acting: a JWT from the calling organisation's identity provider, checked against
//! that organisation's issuer, audience and keys, and tied to the organisation the client
//! certificate proves. The actor goes into the audit ledger; the token itself is never logged
//! or stored.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use silta_core::validate::{Violations, check_text};
use silta_core::{Caller, OrgId};

use crate::config::JwtConfig;
use crate::jwks::Jwks;
use crate::status::ApiError;

/// Every RPC, as `jwt.required_actions` names them (a test keeps the list complete).
pub const RPCS: &[&str] = &[
    "Landlord.ReportRentArrears",
    "Landlord.ReportEvictionStage",
    "Landlord.ReportDisturbance",
    "Landlord.SubscribeNotices",
    "Landlord.AckNotices",
    "SocialServices.EnrolClient",
    "SocialServices.WithdrawConsent",
    "SocialServices.ListConsents",
    "SocialServices.GetConsent",
    "SocialServices.RenewConsent",
    "SocialServices.SubscribeAlerts",
    "SocialServices.AckAlerts",
    "SocialServices.SendSupportNotice",
    "Audit.Query",
    "Audit.GetCheckpoint",
    "Audit.GetInclusionProof",
    "Audit.GetConsistencyProof",
    "Audit.Export",
    "Audit.GetRetention",
    "Audit.Statistics",
];

/// The only algorithms accepted: asymmetric, so a public key can never be used as an HMAC
/// secret, and never `none`.
const ALLOWED: [Algorithm; 3] = [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];

struct Issuer {
    issuer: String,
    audience: String,
    keys: Arc<Jwks>,
}

/// The most characters silta accepts in a claim it reads (`sub`, the organisation claim, the
/// display claim); more is refused, not cut.
pub const MAX_CLAIM_CHARS: usize = 256;

/// Checks bearer tokens.
pub struct ActorVerifier {
    issuers: HashMap<OrgId, Issuer>,
    required_roles: HashSet<String>,
    required_actions: HashSet<String>,
    org_claim: String,
    display_claim: Option<String>,
    leeway_s: u64,
}

impl std::fmt::Debug for ActorVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActorVerifier")
            .field("organisations", &self.issuers.len())
            .finish_non_exhaustive()
    }
}

impl ActorVerifier {
    /// Loads each issuer's keys (see [`Jwks::load`]) and starts refreshing them.
    pub async fn new(config: &JwtConfig) -> Result<Self, String> {
        // A typo must not switch a requirement off silently.
        for role in &config.required_roles {
            role.parse::<silta_core::Role>()
                .map_err(|e| format!("jwt.required_roles {role:?}: {e}"))?;
        }
        for action in &config.required_actions {
            if !RPCS.contains(&action.as_str()) {
                return Err(format!(
                    "jwt.required_actions {action:?}: not an RPC (e.g. \"SocialServices.WithdrawConsent\")"
                ));
            }
        }
        if config.leeway_s > 300 {
            return Err("jwt.leeway_s must be at most 300 (seconds of clock skew)".into());
        }
        if config.jwks_refresh_s < 30 {
            return Err("jwt.jwks_refresh_s must be at least 30 (seconds)".into());
        }
        let refresh = Duration::from_secs(config.jwks_refresh_s);
        let mut issuers = HashMap::new();
        for i in &config.issuers {
            let org =
                OrgId::new(&i.org).map_err(|e| format!("jwt.issuers.org {:?}: {e}", i.org))?;
            if issuers.contains_key(&org) {
                return Err(format!("jwt.issuers: organisation {org} is listed twice"));
            }
            let keys = Jwks::load(i, refresh).await?;
            issuers.insert(
                org,
                Issuer {
                    issuer: i.issuer.clone(),
                    audience: i.audience.clone(),
                    keys,
                },
            );
        }
        Ok(ActorVerifier {
            issuers,
            required_roles: config.required_roles.iter().cloned().collect(),
            required_actions: config.required_actions.iter().cloned().collect(),
            org_claim: config.org_claim.clone(),
            display_claim: config.display_claim.clone(),
            leeway_s: config.leeway_s,
        })
    }

    /// The actor named by `authorization` (the request's header value, if any), for `caller`
    /// calling `action`. `Ok(None)`: no token, and none is required.
    pub async fn verify(
        &self,
        caller: &Caller,
        action: &str,
        authorization: Option<&str>,
    ) -> Result<Option<String>, ApiError> {
        let required = self.required_roles.contains(caller.role.as_str())
            || self.required_actions.contains(action);
        let Some(header) = authorization else {
            return if required {
                Err(jwt(
                    "jwt-required",
                    "this call needs `authorization: Bearer <JWT>` naming the person acting",
                ))
            } else {
                Ok(None)
            };
        };
        let token = header.strip_prefix("Bearer ").ok_or_else(|| {
            jwt(
                "jwt-invalid",
                "the authorization header must be `Bearer <JWT>`",
            )
        })?;
        let Some(issuer) = self.issuers.get(&caller.org) else {
            return Err(jwt(
                "jwt-no-issuer",
                "no identity provider is configured for your organisation; send no token, or ask the operator to add one",
            ));
        };
        let head = decode_header(token)
            .map_err(|_| jwt("jwt-invalid", "the token is not a well-formed JWT"))?;
        // RFC 7515 §4.1.11: a recipient refuses a token whose `crit` names an extension it does
        // not understand, and silta understands none. jsonwebtoken parses `crit` but does not
        // act on it. An empty list is refused too: the RFC forbids producing one.
        if head.crit.is_some() {
            return Err(jwt(
                "jwt-invalid",
                "the token's header lists critical extensions (crit); silta supports none, so the identity provider must not mark any as critical",
            ));
        }
        if !ALLOWED.contains(&head.alg) {
            return Err(jwt(
                "jwt-algorithm-not-allowed",
                "the token's algorithm is not allowed (allowed: RS256, ES256, EdDSA)",
            ));
        }
        let mut keys = issuer.keys.current();
        if head
            .kid
            .as_ref()
            .is_some_and(|kid| keys.find(kid).is_none())
        {
            // The provider may have rotated its keys since they were last loaded.
            keys = issuer.keys.refresh_for_unknown_key().await;
        }
        let jwk = match &head.kid {
            Some(kid) => keys.find(kid),
            None if keys.keys.len() == 1 => keys.keys.first(),
            None => None,
        }
        .ok_or_else(|| {
            jwt(
                "jwt-unknown-key",
                "the token's key id (kid) is not among the issuer's keys (if they were just rotated, retry in a minute)",
            )
        })?;
        // A key published for one algorithm verifies only that one.
        if let Some(alg) = jwk.common.key_algorithm
            && alg.to_string() != format!("{:?}", head.alg)
        {
            return Err(jwt(
                "jwt-algorithm-not-allowed",
                "the token's algorithm does not match its key's",
            ));
        }
        let key = DecodingKey::from_jwk(jwk)
            .map_err(|_| jwt("jwt-unknown-key", "the issuer's key cannot be used"))?;
        let mut validation = Validation::new(head.alg);
        validation.set_issuer(&[&issuer.issuer]);
        validation.set_audience(&[&issuer.audience]);
        validation.leeway = self.leeway_s;
        validation.validate_nbf = true;
        validation.required_spec_claims = ["exp", "iss", "aud", "sub"]
            .into_iter()
            .map(str::to_owned)
            .collect();
        let claims = decode::<serde_json::Map<String, serde_json::Value>>(token, &key, &validation)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind as K;
                match e.kind() {
                    K::ExpiredSignature => jwt("jwt-expired", "the token has expired"),
                    K::ImmatureSignature => {
                        jwt("jwt-not-yet-valid", "the token is not valid yet (nbf)")
                    }
                    K::InvalidIssuer => jwt(
                        "jwt-wrong-issuer",
                        "the token's issuer is not your organisation's",
                    ),
                    K::InvalidAudience => {
                        jwt("jwt-wrong-audience", "the token is not for silta (aud)")
                    }
                    K::InvalidSignature => {
                        jwt("jwt-bad-signature", "the token's signature does not verify")
                    }
                    K::MissingRequiredClaim(_) => {
                        jwt("jwt-invalid", "the token lacks exp, iss, aud or sub")
                    }
                    _ => jwt("jwt-invalid", "the token is not valid"),
                }
            })?
            .claims;
        let org = claim_text(&claims, &self.org_claim)?;
        if org != Some(caller.org.as_str()) {
            return Err(ApiError::Jwt {
                reason: "jwt-organisation-mismatch",
                message: format!(
                    "the token's {:?} claim does not name the organisation of your client certificate",
                    self.org_claim
                ),
                permission: true,
            });
        }
        let sub =
            claim_text(&claims, "sub")?.ok_or_else(|| jwt("jwt-invalid", "the token lacks sub"))?;
        let display = match &self.display_claim {
            Some(name) => claim_text(&claims, name)?,
            None => None,
        };
        Ok(Some(match display {
            Some(d) => format!("{sub} ({d})"),
            None => sub.to_owned(),
        }))
    }
}

/// Claim `name` as text silta may record: absent is `None`; present, it must be a string of
/// 1 to [`MAX_CLAIM_CHARS`] printable characters (no control, invisible or bidirectional
/// characters) holding no identity code. The refusal names the claim, never its value.
fn claim_text<'a>(
    claims: &'a serde_json::Map<String, serde_json::Value>,
    name: &str,
) -> Result<Option<&'a str>, ApiError> {
    let Some(value) = claims.get(name) else {
        return Ok(None);
    };
    let bad = |problem: &str| ApiError::Jwt {
        reason: "jwt-invalid",
        message: format!("the token's {name:?} claim {problem}"),
        permission: false,
    };
    let text = value.as_str().ok_or_else(|| bad("must be a string"))?;
    if text.is_empty() {
        return Err(bad("must not be empty"));
    }
    // The checks of text fields that are stored or cross, so a claim cannot smuggle in what a
    // request field may not.
    let mut problems = Violations::default();
    if !check_text(&mut problems, name, text, 1, MAX_CLAIM_CHARS) {
        let problem = problems
            .0
            .first()
            .map_or("is not valid", |p| p.description.as_str());
        return Err(bad(problem));
    }
    Ok(Some(text))
}

fn jwt(reason: &'static str, message: &str) -> ApiError {
    ApiError::Jwt {
        reason,
        message: message.to_owned(),
        permission: false,
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    /// `RPCS` names exactly the RPCs of the contract.
    #[test]
    fn the_rpc_list_is_the_contract() {
        let set = prost_types::FileDescriptorSet::decode(crate::proto::FILE_DESCRIPTOR_SET)
            .expect("descriptor");
        let mut contract: Vec<String> = set
            .file
            .iter()
            .filter(|f| f.package() == "silta.v1")
            .flat_map(|f| f.service.iter())
            .flat_map(|s| {
                s.method
                    .iter()
                    .map(move |m| format!("{}.{}", s.name(), m.name()))
            })
            .collect();
        let mut listed: Vec<String> = super::RPCS.iter().map(|s| (*s).to_owned()).collect();
        contract.sort();
        listed.sort();
        assert_eq!(listed, contract);
    }
}
