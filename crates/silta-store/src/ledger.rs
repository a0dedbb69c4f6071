//! From audit records to ledger entries.

use silta_core::OrgId;
use silta_core::audit::AuditRecord;
use silta_core::pseudonym::Pseudonym;
use silta_ledger::entry::Entry;

use crate::time_conv::to_ms;

/// The ledger entry of an audit record: the same facts, as the canonical entry type.
pub fn ledger_entry(r: &AuditRecord) -> Entry {
    Entry {
        time_ms: to_ms(r.at),
        request_id: r.request_id.clone(),
        actor_org: r.actor.org.to_string(),
        actor_role: r.actor.role.as_str().to_owned(),
        actor_person: r.actor_person.clone(),
        action: r.action.clone(),
        flow_id: r.flow_id.clone(),
        outcome: r.outcome.as_str().to_owned(),
        reason: r.reason.clone(),
        policy_ids: r.policy_ids.clone(),
        subject: r.subject.as_ref().map(Pseudonym::to_string),
        fields: r.fields.clone(),
        recipients: r.recipients.iter().map(OrgId::to_string).collect(),
    }
}
