//! Declared flows: what may cross from whom to whom, why, and in what form.
//!
//! Until the policy issue moves flows into `policies/flows.toml` and Cedar, the one flow the
//! gateway carries is declared here, in the same shape the file will have.

use crate::org::Role;

/// Purpose of consents and flows for preventing evictions.
pub const PURPOSE_EVICTION_PREVENTION: &str = "eviction-prevention";

/// The legal basis id recorded for consent-based flows (GDPR art. 6(1)(a)).
pub const LEGAL_BASIS_CONSENT: &str = "gdpr-6-1-a-consent";

/// How a field is transformed before it crosses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generalisation {
    /// Crosses unchanged (enums, counts, office names checked for identity codes).
    Pass,
    /// An exact amount becomes a band.
    Band,
    /// A time becomes its month.
    Month,
}

/// A declared flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    /// Stable id, recorded in every audit record and alert.
    pub id: &'static str,
    /// Who sends.
    pub sender: Role,
    /// Who receives.
    pub recipient: Role,
    /// Why.
    pub purpose: &'static str,
    /// On what basis; `LEGAL_BASIS_CONSENT` requires a valid consent per recipient.
    pub legal_basis: &'static str,
    /// The only fields that cross, by the name they carry in the alert, and their form.
    pub fields: &'static [(&'static str, Generalisation)],
    /// The id of the rule that decides it (becomes the Cedar policy id).
    pub policy_id: &'static str,
    /// Categories of data named in consent receipts.
    pub data_categories: &'static [&'static str],
}

/// Rent arrears, landlord → social services, on the resident's consent.
pub const RENT_ARREARS: Flow = Flow {
    id: "rent-arrears",
    sender: Role::Landlord,
    recipient: Role::SocialServices,
    purpose: PURPOSE_EVICTION_PREVENTION,
    legal_basis: LEGAL_BASIS_CONSENT,
    fields: &[
        ("report_month", Generalisation::Month),
        ("arrears_band", Generalisation::Band),
        ("months_overdue", Generalisation::Pass),
        ("eviction_stage", Generalisation::Pass),
        ("landlord_contact_office", Generalisation::Pass),
    ],
    policy_id: "builtin/rent-arrears-requires-valid-consent",
    data_categories: &[
        "rent-arrears-band",
        "months-overdue",
        "eviction-stage",
        "landlord-contact-office",
        "report-month",
    ],
};

/// Purposes a consent may name today.
pub fn is_known_purpose(purpose: &str) -> bool {
    purpose == PURPOSE_EVICTION_PREVENTION
}

impl Flow {
    /// The names of the fields that cross, in declaration order.
    pub fn field_names(&self) -> Vec<String> {
        self.fields.iter().map(|(n, _)| (*n).to_owned()).collect()
    }
}
