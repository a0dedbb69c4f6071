//! Consents: what a client agreed to, validation of a new consent, and the signed receipt.

use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::Serialize;
use time::{Duration, OffsetDateTime};

use crate::org::OrgId;
use crate::policy::Policies;
use crate::pseudonym::{Pseudonym, Pseudonymiser};
use crate::validate::{Violations, check_text};

/// Clock skew tolerated for `given_at` in the future.
pub const CLOCK_SKEW: Duration = Duration::minutes(5);
/// Longest validity of one consent.
pub const MAX_VALIDITY: Duration = Duration::days(5 * 365 + 1);

/// Lifecycle state of a stored consent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsentState {
    /// In force between its validity bounds.
    Active,
    /// Withdrawn by the client.
    Withdrawn,
    /// Replaced by a newer consent for the same person, recipient and purpose.
    Superseded,
}

impl ConsentState {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            ConsentState::Active => "active",
            ConsentState::Withdrawn => "withdrawn",
            ConsentState::Superseded => "superseded",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(ConsentState::Active),
            "withdrawn" => Some(ConsentState::Withdrawn),
            "superseded" => Some(ConsentState::Superseded),
            _ => None,
        }
    }
}

/// How a consent stands for its holder at a moment: its stored state, and for one still active,
/// whether it is in force, ends soon, or has ended. `ListConsents` filters and reports by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsentStanding {
    /// Active and in force beyond the "expiring" window.
    Active,
    /// Active and in force, but ending within the window: time to renew it.
    Expiring,
    /// Active, but its validity has ended: nothing crosses under it.
    Expired,
    /// Withdrawn by the client.
    Withdrawn,
    /// Replaced by a newer consent (a renewal or a new enrolment).
    Superseded,
}

/// How far ahead a consent counts as expiring when the caller does not say.
pub const DEFAULT_EXPIRING_WITHIN_DAYS: u32 = 30;
/// The longest "expiring" window a caller may ask for.
pub const MAX_EXPIRING_WITHIN_DAYS: u32 = 366;

impl ConsentStanding {
    /// The status at `now` of a consent in `state` valid until `valid_until` (exclusive), where
    /// one ending before `expiring_before` counts as expiring.
    pub fn of(
        state: ConsentState,
        valid_until: OffsetDateTime,
        now: OffsetDateTime,
        expiring_before: OffsetDateTime,
    ) -> Self {
        match state {
            ConsentState::Withdrawn => ConsentStanding::Withdrawn,
            ConsentState::Superseded => ConsentStanding::Superseded,
            ConsentState::Active if valid_until <= now => ConsentStanding::Expired,
            ConsentState::Active if valid_until <= expiring_before => ConsentStanding::Expiring,
            ConsentState::Active => ConsentStanding::Active,
        }
    }

    /// A stable name (the store's query filter uses it).
    pub fn as_str(self) -> &'static str {
        match self {
            ConsentStanding::Active => "active",
            ConsentStanding::Expiring => "expiring",
            ConsentStanding::Expired => "expired",
            ConsentStanding::Withdrawn => "withdrawn",
            ConsentStanding::Superseded => "superseded",
        }
    }
}

/// A consent as the store keeps it: under a lookup pseudonym, never the identity code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentRecord {
    /// silta's id for the consent.
    pub consent_id: String,
    /// The organisation the consent lets receive data.
    pub recipient: OrgId,
    /// The purpose consented to.
    pub purpose: String,
    /// Start of validity (when it was given).
    pub valid_from: OffsetDateTime,
    /// End of validity, exclusive.
    pub valid_until: OffsetDateTime,
    /// Lifecycle state.
    pub state: ConsentState,
    /// Whether the client agreed that the landlord may be told the outcome (support notices).
    pub covers_landlord: bool,
    /// The flows the consent opens, as its receipt lists them.
    pub flows: Vec<String>,
}

impl ConsentRecord {
    /// Whether the consent was given for flow `flow_id` (its receipt lists it).
    pub fn covers_flow(&self, flow_id: &str) -> bool {
        self.flows.iter().any(|f| f == flow_id)
    }

    /// Whether the consent lets data cross at `now`.
    pub fn is_valid_at(&self, now: OffsetDateTime) -> bool {
        self.state == ConsentState::Active && self.valid_from <= now && now < self.valid_until
    }
}

/// A new consent as it arrives, before validation.
#[derive(Debug, Clone, Default)]
pub struct ConsentInput<'a> {
    /// Purpose.
    pub purpose: &'a str,
    /// When it was given; `None` when missing.
    pub given_at: Option<OffsetDateTime>,
    /// End of validity; `None` when missing.
    pub valid_until: Option<OffsetDateTime>,
    /// Where the evidence is kept.
    pub evidence_ref: &'a str,
    /// Privacy-notice version.
    pub notice_version: &'a str,
    /// Whether the landlord may be told the outcome.
    pub share_outcome_with_landlord: bool,
}

/// A validated new consent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewConsent {
    /// Purpose (a known one).
    pub purpose: String,
    /// When it was given.
    pub given_at: OffsetDateTime,
    /// End of validity.
    pub valid_until: OffsetDateTime,
    /// Evidence reference.
    pub evidence_ref: String,
    /// Notice version, possibly empty.
    pub notice_version: String,
    /// Whether the landlord may be told the outcome.
    pub covers_landlord: bool,
}

/// Validates a consent under field prefix `prefix` (e.g. `consent`); its purpose must be
/// declared in `policies`.
pub fn validate_consent(
    input: &ConsentInput<'_>,
    prefix: &str,
    now: OffsetDateTime,
    policies: &Policies,
    v: &mut Violations,
) -> Option<NewConsent> {
    let field = |f: &str| format!("{prefix}.{f}");
    if input.purpose.is_empty() {
        v.add(
            &field("purpose"),
            format!(
                "is required (purposes: {})",
                policies.consent_purposes().join(", ")
            ),
        );
    } else if !policies
        .consent_purposes()
        .iter()
        .any(|p| p == input.purpose)
    {
        v.add(
            &field("purpose"),
            format!(
                "is not a purpose any consent-based flow serves (purposes: {})",
                policies.consent_purposes().join(", ")
            ),
        );
    }
    // A time the caller sent but that is no valid timestamp is already reported as such.
    match input.given_at {
        None if v.names(&field("given_at")) => {}
        None => v.add(&field("given_at"), "is required"),
        Some(t) if t > now + CLOCK_SKEW => v.add(&field("given_at"), "must not be in the future"),
        Some(_) => {}
    }
    match (input.given_at, input.valid_until) {
        (_, None) if v.names(&field("valid_until")) => {}
        (_, None) => v.add(&field("valid_until"), "is required"),
        (_, Some(u)) if u <= now => v.add(&field("valid_until"), "must be in the future"),
        (Some(g), Some(u)) if u <= g => v.add(&field("valid_until"), "must be after given_at"),
        (Some(g), Some(u)) if u - g > MAX_VALIDITY => v.add(
            &field("valid_until"),
            "must be at most 5 years after given_at",
        ),
        _ => {}
    }
    check_text(v, &field("evidence_ref"), input.evidence_ref, 1, 128);
    check_text(v, &field("notice_version"), input.notice_version, 0, 32);
    match (input.given_at, input.valid_until) {
        (Some(given_at), Some(valid_until)) if v.0.is_empty() => Some(NewConsent {
            purpose: input.purpose.to_owned(),
            given_at,
            valid_until,
            evidence_ref: input.evidence_ref.to_owned(),
            notice_version: input.notice_version.to_owned(),
            covers_landlord: input.share_outcome_with_landlord,
        }),
        _ => None,
    }
}

/// The signed document of a consent receipt (ISO/IEC TS 27560, Kantara Consent Receipt).
/// Field order is the canonical order of the signed JSON.
#[derive(Debug, Clone, Serialize)]
pub struct ReceiptBody {
    /// Format version.
    pub version: &'static str,
    /// Equals the consent id.
    pub receipt_id: String,
    /// RFC 3339.
    #[serde(with = "time::serde::rfc3339")]
    pub issued_at: OffsetDateTime,
    /// Always "FI".
    pub jurisdiction: &'static str,
    /// Controller of the received data.
    pub controller: String,
    /// Recipient of alerts.
    pub recipient: String,
    /// Subject pseudonym in the recipient's domain.
    pub subject_pseudonym: String,
    /// Purpose.
    pub purpose: String,
    /// Legal basis id.
    pub legal_basis: String,
    /// Data categories that may cross: the ids of the flows the consent opens.
    pub data_categories: Vec<String>,
    /// Whether the landlord may be told the outcome (support notices).
    pub share_outcome_with_landlord: bool,
    /// Validity start.
    #[serde(with = "time::serde::rfc3339")]
    pub valid_from: OffsetDateTime,
    /// Validity end (exclusive).
    #[serde(with = "time::serde::rfc3339")]
    pub valid_until: OffsetDateTime,
    /// Notice version.
    pub notice_version: String,
    /// Evidence reference in the controller's records.
    pub evidence_ref: String,
}

impl ReceiptBody {
    /// The receipt of `consent` given to `org`, under the flows of `policies` it opens.
    pub fn new(
        consent_id: &str,
        org: &OrgId,
        subject: &Pseudonym,
        consent: &NewConsent,
        policies: &Policies,
        issued_at: OffsetDateTime,
    ) -> Self {
        let categories = policies.consent_categories(&consent.purpose, consent.covers_landlord);
        Self::with_categories(
            consent_id,
            org,
            subject.as_str(),
            consent,
            categories,
            policies,
            issued_at,
        )
    }

    /// The receipt of a stored consent, issued again: `categories` are the flows it was given
    /// for (as stored), `issued_at` when it was recorded. Signed with the same key, the same
    /// body gives the very bytes the first receipt carried.
    pub fn with_categories(
        consent_id: &str,
        org: &OrgId,
        subject: &str,
        consent: &NewConsent,
        categories: Vec<String>,
        policies: &Policies,
        issued_at: OffsetDateTime,
    ) -> Self {
        let flows: Vec<_> = policies
            .flows()
            .iter()
            .filter(|f| f.requires_consent && f.purpose == consent.purpose)
            .collect();
        let legal_basis = flows
            .first()
            .map_or_else(String::new, |f| f.legal_basis.clone());
        ReceiptBody {
            version: "silta-consent-receipt/1",
            receipt_id: consent_id.to_owned(),
            issued_at,
            jurisdiction: "FI",
            controller: org.to_string(),
            recipient: org.to_string(),
            subject_pseudonym: subject.to_owned(),
            purpose: consent.purpose.clone(),
            legal_basis,
            data_categories: categories,
            share_outcome_with_landlord: consent.covers_landlord,
            valid_from: consent.given_at,
            valid_until: consent.valid_until,
            notice_version: consent.notice_version.clone(),
            evidence_ref: consent.evidence_ref.clone(),
        }
    }
}

/// A receipt with its Ed25519 signature.
#[derive(Debug, Clone)]
pub struct SignedReceipt {
    /// The canonical JSON that was signed.
    pub payload: Vec<u8>,
    /// Ed25519 signature over `payload`.
    pub signature: Vec<u8>,
    /// The verifying public key.
    pub public_key: Vec<u8>,
}

/// Signs consent receipts with a key derived from the master secret.
pub struct ReceiptSigner {
    key: Ed25519KeyPair,
}

impl std::fmt::Debug for ReceiptSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReceiptSigner(..)")
    }
}

impl ReceiptSigner {
    /// The signer derived from the pseudonymiser's master secret.
    pub fn new(p: &Pseudonymiser) -> Self {
        let seed = p.receipt_seed();
        // Any 32 bytes are a valid Ed25519 seed.
        let key = Ed25519KeyPair::from_seed_unchecked(seed.as_ref())
            .expect("32 bytes are a valid Ed25519 seed");
        ReceiptSigner { key }
    }

    /// The public key that verifies receipts (32 bytes).
    pub fn public_key(&self) -> &[u8] {
        self.key.public_key().as_ref()
    }

    /// Signs `body`.
    pub fn sign(&self, body: &ReceiptBody) -> SignedReceipt {
        // A struct of strings and times always serialises.
        let payload = serde_json::to_vec(body).expect("receipt body serialises");
        let signature = self.key.sign(&payload).as_ref().to_vec();
        SignedReceipt {
            payload,
            signature,
            public_key: self.public_key().to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-11-23 12:00 UTC);

    fn input() -> ConsentInput<'static> {
        ConsentInput {
            purpose: "eviction-prevention",
            given_at: Some(NOW - Duration::hours(1)),
            valid_until: Some(NOW + Duration::days(365)),
            evidence_ref: "DOC-2026-1",
            notice_version: "v3",
            share_outcome_with_landlord: false,
        }
    }

    #[test]
    fn a_good_consent_passes() {
        let mut v = Violations::default();
        assert!(validate_consent(&input(), "consent", NOW, &Policies::builtin(), &mut v).is_some());
        assert!(v.0.is_empty());
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases: [(&str, ConsentInput<'static>); 6] = [
            (
                "consent.purpose",
                ConsentInput {
                    purpose: "marketing",
                    ..input()
                },
            ),
            (
                "consent.given_at",
                ConsentInput {
                    given_at: Some(NOW + Duration::hours(1)),
                    ..input()
                },
            ),
            (
                "consent.valid_until",
                ConsentInput {
                    valid_until: Some(NOW - Duration::hours(1)),
                    ..input()
                },
            ),
            (
                "consent.valid_until",
                ConsentInput {
                    valid_until: Some(NOW + Duration::days(3000)),
                    ..input()
                },
            ),
            (
                "consent.evidence_ref",
                ConsentInput {
                    evidence_ref: "",
                    ..input()
                },
            ),
            (
                "consent.evidence_ref",
                ConsentInput {
                    evidence_ref: "hetu 010594Y9032",
                    ..input()
                },
            ),
        ];
        for (field, case) in cases {
            let mut v = Violations::default();
            assert!(
                validate_consent(&case, "consent", NOW, &Policies::builtin(), &mut v).is_none()
            );
            assert!(v.names(field), "{field}: {v:?}");
        }
    }

    #[test]
    fn status_follows_state_then_validity_at_the_given_time() {
        let until = NOW + Duration::days(10);
        let window = |days| NOW + Duration::days(days);
        let of = |state, now, before| ConsentStanding::of(state, until, now, before);
        assert_eq!(
            of(ConsentState::Active, NOW, window(5)),
            ConsentStanding::Active
        );
        assert_eq!(
            of(ConsentState::Active, NOW, window(10)),
            ConsentStanding::Expiring
        );
        assert_eq!(
            of(ConsentState::Active, until, until + Duration::days(30)),
            ConsentStanding::Expired
        );
        // A withdrawn or replaced consent says so, whatever its validity.
        assert_eq!(
            of(ConsentState::Withdrawn, until, until),
            ConsentStanding::Withdrawn
        );
        assert_eq!(
            of(ConsentState::Superseded, NOW, window(30)),
            ConsentStanding::Superseded
        );
    }

    #[test]
    fn validity_is_active_state_within_bounds() {
        let rec = ConsentRecord {
            consent_id: "c".into(),
            recipient: OrgId::new("ss").expect("valid"),
            purpose: "eviction-prevention".into(),
            valid_from: NOW,
            valid_until: NOW + Duration::days(1),
            state: ConsentState::Active,
            covers_landlord: false,
            flows: vec!["rent-arrears".into()],
        };
        assert!(rec.is_valid_at(NOW));
        assert!(!rec.is_valid_at(NOW + Duration::days(1)));
        assert!(!rec.is_valid_at(NOW - Duration::seconds(1)));
        let withdrawn = ConsentRecord {
            state: ConsentState::Withdrawn,
            ..rec
        };
        assert!(!withdrawn.is_valid_at(NOW));
    }
}
