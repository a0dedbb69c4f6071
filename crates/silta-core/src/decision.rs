//! The disclosure decision: who may receive a report under a flow.
//!
//! A [`Permit`] can only be made here, by [`decide`]; the store's write path for alerts takes
//! one, so nothing is written for a recipient the decision did not allow.

use std::collections::BTreeMap;

use time::OffsetDateTime;

use crate::consent::ConsentRecord;
use crate::flow::{Flow, LEGAL_BASIS_CONSENT};
use crate::org::OrgId;

/// Permission for one recipient to receive one report under one consent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permit {
    recipient: OrgId,
    consent_id: String,
}

impl Permit {
    /// The organisation allowed to receive.
    pub fn recipient(&self) -> &OrgId {
        &self.recipient
    }

    /// The consent that allows it.
    pub fn consent_id(&self) -> &str {
        &self.consent_id
    }
}

/// The outcome of deciding a disclosure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disclosure {
    /// One permit per recipient organisation, ordered by organisation.
    pub permits: Vec<Permit>,
    /// The rules that decided (recorded in the audit trail).
    pub policy_ids: Vec<String>,
    /// Why, as a stable code: `consent` or `no-valid-consent`.
    pub reason: &'static str,
}

/// Decides who receives a report under `flow`, given the subject's consents as stored.
/// For a consent-based flow, each organisation holding a valid consent for the flow's purpose
/// gets one permit (under its latest-ending valid consent); nobody else does.
pub fn decide(flow: &Flow, consents: &[ConsentRecord], now: OffsetDateTime) -> Disclosure {
    debug_assert_eq!(
        flow.legal_basis, LEGAL_BASIS_CONSENT,
        "only consent flows exist yet"
    );
    let mut best: BTreeMap<&OrgId, &ConsentRecord> = BTreeMap::new();
    for c in consents
        .iter()
        .filter(|c| c.purpose == flow.purpose && c.is_valid_at(now))
    {
        let slot = best.entry(&c.recipient).or_insert(c);
        if c.valid_until > slot.valid_until {
            *slot = c;
        }
    }
    let permits: Vec<Permit> = best
        .into_values()
        .map(|c| Permit {
            recipient: c.recipient.clone(),
            consent_id: c.consent_id.clone(),
        })
        .collect();
    Disclosure {
        reason: if permits.is_empty() {
            "no-valid-consent"
        } else {
            "consent"
        },
        permits,
        policy_ids: vec![flow.policy_id.to_owned()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consent::ConsentState;
    use crate::flow::RENT_ARREARS;
    use time::Duration;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-11-23 12:00 UTC);

    fn consent(
        id: &str,
        org: &str,
        purpose: &str,
        state: ConsentState,
        days: i64,
    ) -> ConsentRecord {
        ConsentRecord {
            consent_id: id.into(),
            recipient: OrgId::new(org).expect("valid"),
            purpose: purpose.into(),
            valid_from: NOW - Duration::days(10),
            valid_until: NOW + Duration::days(days),
            state,
        }
    }

    fn check(consents: &[ConsentRecord], expect: &[(&str, &str)], reason: &str) {
        let d = decide(&RENT_ARREARS, consents, NOW);
        let got: Vec<(&str, &str)> = d
            .permits
            .iter()
            .map(|p| (p.recipient().as_str(), p.consent_id()))
            .collect();
        assert_eq!(got, expect);
        assert_eq!(d.reason, reason);
        assert_eq!(d.policy_ids, [RENT_ARREARS.policy_id]);
    }

    #[test]
    fn no_consent_means_no_recipient() {
        check(&[], &[], "no-valid-consent");
    }

    #[test]
    fn withdrawn_expired_and_other_purpose_consents_allow_nothing() {
        use ConsentState::*;
        check(
            &[
                consent("a", "ss-a", "eviction-prevention", Withdrawn, 10),
                consent("b", "ss-b", "eviction-prevention", Active, -1),
                consent("c", "ss-c", "research", Active, 10),
                consent("d", "ss-d", "eviction-prevention", Superseded, 10),
            ],
            &[],
            "no-valid-consent",
        );
    }

    #[test]
    fn one_permit_per_organisation_under_its_longest_consent() {
        use ConsentState::*;
        check(
            &[
                consent("a1", "ss-a", "eviction-prevention", Active, 10),
                consent("a2", "ss-a", "eviction-prevention", Active, 20),
                consent("b1", "ss-b", "eviction-prevention", Active, 5),
            ],
            &[("ss-a", "a2"), ("ss-b", "b1")],
            "consent",
        );
    }
}
