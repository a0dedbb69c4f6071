//! Audit records: one per decision, allow or deny. They hold pseudonyms in the audit domain
//! and field *names*, never identity codes or field values.

use time::OffsetDateTime;

use crate::org::{Caller, OrgId};
use crate::pseudonym::Pseudonym;

/// Allowed or denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The request did what it asked.
    Allow,
    /// The request was refused, or nothing was disclosed.
    Deny,
}

impl Outcome {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allow => "allow",
            Outcome::Deny => "deny",
        }
    }
}

/// One audit record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// When the decision was made.
    pub at: OffsetDateTime,
    /// The request's id (also in the logs).
    pub request_id: String,
    /// The calling organisation and role.
    pub actor: Caller,
    /// The person acting, when the call carried one (a later issue adds JWTs).
    pub actor_person: Option<String>,
    /// What was asked: the RPC name, e.g. `Landlord.ReportRentArrears`.
    pub action: String,
    /// The flow, when the action is an exchange under one.
    pub flow_id: Option<String>,
    /// Allow or deny.
    pub outcome: Outcome,
    /// A stable reason code, e.g. `consent`, `no-valid-consent`, `invalid-argument`.
    pub reason: String,
    /// The rules that decided.
    pub policy_ids: Vec<String>,
    /// The subject, pseudonymised in the audit domain.
    pub subject: Option<Pseudonym>,
    /// Names of the fields disclosed (never their values).
    pub fields: Vec<String>,
    /// Organisations that received data.
    pub recipients: Vec<OrgId>,
}

impl AuditRecord {
    /// A record of `action` by `actor` with nothing disclosed yet.
    pub fn new(
        at: OffsetDateTime,
        request_id: &str,
        actor: &Caller,
        action: &str,
        outcome: Outcome,
        reason: &str,
    ) -> Self {
        AuditRecord {
            at,
            request_id: request_id.to_owned(),
            actor: actor.clone(),
            actor_person: None,
            action: action.to_owned(),
            flow_id: None,
            outcome,
            reason: reason.to_owned(),
            policy_ids: Vec::new(),
            subject: None,
            fields: Vec::new(),
            recipients: Vec::new(),
        }
    }
}
