//! The disclosure decision: Cedar evaluates one request per recipient, with the resident's
//! consent for that recipient as the resource's state.
//!
//! A [`Permit`] can only be made here; the store's write path for outgoing messages takes one,
//! so nothing is written for a recipient the policies did not allow.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::str::FromStr;

use cedar_policy::{
    Context, Decision, Entities, Entity, EntityId, EntityTypeName, EntityUid, Request,
    RestrictedExpression,
};
use time::OffsetDateTime;

use super::{Flow, Policies};
use crate::consent::{ConsentRecord, ConsentState};
use crate::org::{Caller, OrgId};
use crate::report::EvictionStage;

/// The policy id recorded when no policy permitted and none forbade.
pub const DEFAULT_DENY: &str = "default-deny";

/// The state of the resident's consent for one disclosure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConsentStatus {
    /// Given, in force, not withdrawn.
    Valid,
    /// Withdrawn by the resident.
    Withdrawn,
    /// Its validity ended.
    Expired,
    /// Never given, or not yet in force.
    Absent,
}

impl ConsentStatus {
    /// The schema's `ConsentState` id.
    pub fn as_str(self) -> &'static str {
        match self {
            ConsentStatus::Valid => "valid",
            ConsentStatus::Withdrawn => "withdrawn",
            ConsentStatus::Expired => "expired",
            ConsentStatus::Absent => "absent",
        }
    }

    /// Parses the schema's id.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Valid, Self::Withdrawn, Self::Expired, Self::Absent]
            .into_iter()
            .find(|c| c.as_str() == s)
    }
}

/// The consent that governs one disclosure, as the policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentView {
    /// Its state.
    pub status: ConsentStatus,
    /// The consent, when one is valid.
    pub consent_id: Option<String>,
    /// Whether it lets the outcome be told to the landlord.
    pub covers_landlord: bool,
}

impl ConsentView {
    /// No consent at all.
    pub const ABSENT: ConsentView = ConsentView {
        status: ConsentStatus::Absent,
        consent_id: None,
        covers_landlord: false,
    };

    /// The view of one organisation's consents for one subject and purpose: its valid
    /// consent that lasts longest; otherwise the state of its latest one. A withdrawn or
    /// expired consent keeps its `covers_landlord`, so that a refusal names what changed (the
    /// withdrawal) and not also a landlord clause the resident had agreed to.
    pub fn of<'a>(
        records: impl IntoIterator<Item = &'a ConsentRecord>,
        now: OffsetDateTime,
    ) -> Self {
        let mut valid: Option<&ConsentRecord> = None;
        let mut latest: Option<&ConsentRecord> = None;
        for c in records {
            if c.is_valid_at(now) {
                if valid.is_none_or(|v| c.valid_until > v.valid_until) {
                    valid = Some(c);
                }
            } else if c.state != ConsentState::Superseded
                && latest.is_none_or(|l| c.valid_from > l.valid_from)
            {
                latest = Some(c);
            }
        }
        if let Some(c) = valid {
            return ConsentView {
                status: ConsentStatus::Valid,
                consent_id: Some(c.consent_id.clone()),
                covers_landlord: c.covers_landlord,
            };
        }
        let (status, covers_landlord) = match latest {
            Some(c) if c.state == ConsentState::Withdrawn => {
                (ConsentStatus::Withdrawn, c.covers_landlord)
            }
            Some(c) if c.valid_until <= now => (ConsentStatus::Expired, c.covers_landlord),
            _ => (ConsentStatus::Absent, false),
        };
        ConsentView {
            status,
            consent_id: None,
            covers_landlord,
        }
    }

    /// One view per recipient organisation among `records`.
    pub fn by_recipient(records: &[ConsentRecord], now: OffsetDateTime) -> Vec<(OrgId, Self)> {
        let mut by_org: BTreeMap<&OrgId, Vec<&ConsentRecord>> = BTreeMap::new();
        for c in records {
            by_org.entry(&c.recipient).or_default().push(c);
        }
        by_org
            .into_iter()
            .map(|(org, cs)| (org.clone(), ConsentView::of(cs, now)))
            .collect()
    }
}

/// What is being decided, apart from the recipient and consent.
#[derive(Debug, Clone, Copy)]
pub struct DecisionInput<'a> {
    /// The flow the message travels on.
    pub flow: &'a Flow,
    /// The sender.
    pub sender: &'a Caller,
    /// The purpose the sender named (a declared one).
    pub purpose: &'a str,
    /// The legal basis the sender named (a declared one).
    pub legal_basis: &'a str,
    /// The eviction stage the message reports, if it carries one.
    pub eviction_stage: Option<EvictionStage>,
}

/// One Cedar decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Allowed?
    pub allowed: bool,
    /// The policies that decided (for a denial with none, [`DEFAULT_DENY`]).
    pub policy_ids: Vec<String>,
}

/// Permission for one recipient to receive one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permit {
    recipient: OrgId,
    consent_id: Option<String>,
}

impl Permit {
    /// The organisation allowed to receive.
    pub fn recipient(&self) -> &OrgId {
        &self.recipient
    }

    /// The consent that allows it; `None` on a flow that needs none.
    pub fn consent_id(&self) -> Option<&str> {
        self.consent_id.as_deref()
    }
}

/// The outcome of deciding a disclosure to every candidate recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disclosure {
    /// One permit per allowed recipient, ordered by organisation.
    pub permits: Vec<Permit>,
    /// Every policy that decided, for any recipient, sorted.
    pub policy_ids: Vec<String>,
    /// `disclosed` or `not-disclosed`.
    pub reason: &'static str,
}

/// Entity type names, parsed once.
pub(super) struct Types {
    organisation: EntityTypeName,
    disclosure: EntityTypeName,
    action: EntityTypeName,
    role: EntityTypeName,
    purpose: EntityTypeName,
    legal_basis: EntityTypeName,
    consent_state: EntityTypeName,
    eviction_stage: EntityTypeName,
    statistics: EntityTypeName,
}

impl Types {
    pub(super) fn new() -> Self {
        // Literal identifiers, always valid Cedar type names.
        let t = |s: &str| EntityTypeName::from_str(s).expect("valid type name");
        Types {
            organisation: t("Organisation"),
            disclosure: t("Disclosure"),
            action: t("Action"),
            role: t("Role"),
            purpose: t("Purpose"),
            legal_basis: t("LegalBasis"),
            consent_state: t("ConsentState"),
            eviction_stage: t("EvictionStage"),
            statistics: t("Statistics"),
        }
    }

    fn uid(ty: &EntityTypeName, id: &str) -> EntityUid {
        EntityUid::from_type_name_and_id(ty.clone(), EntityId::new(id))
    }

    fn value(ty: &EntityTypeName, id: &str) -> RestrictedExpression {
        RestrictedExpression::new_entity_uid(Self::uid(ty, id))
    }
}

/// Everything a decision depends on. The entities Cedar sees are built from exactly these
/// values, so equal keys always get equal verdicts from one policy set.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct DecisionKey {
    org: OrgId,
    role: crate::org::Role,
    flow: String,
    purpose: String,
    legal_basis: String,
    consent: ConsentStatus,
    covers_landlord: bool,
    eviction_stage: Option<EvictionStage>,
}

/// Verdicts already computed by one policy set. Bounded: cleared when full, so a flood of
/// distinct senders costs evaluations, never memory.
#[derive(Debug, Default)]
pub(super) struct VerdictCache(std::sync::RwLock<HashMap<DecisionKey, Verdict>>);

const CACHE_LIMIT: usize = 16_384;

impl VerdictCache {
    fn get(&self, key: &DecisionKey) -> Option<Verdict> {
        // A poisoned lock only means a panic between two whole map operations.
        let map = self.0.read().unwrap_or_else(|e| e.into_inner());
        map.get(key).cloned()
    }

    fn put(&self, key: DecisionKey, verdict: Verdict) {
        let mut map = self.0.write().unwrap_or_else(|e| e.into_inner());
        if map.len() >= CACHE_LIMIT {
            map.clear();
        }
        map.insert(key, verdict);
    }
}

impl Policies {
    /// Evaluates the policies for one recipient whose consent is `consent`. A decision is a
    /// pure function of its inputs and this immutable set, so each distinct one is evaluated
    /// by Cedar once and then remembered (a reload builds a new set with an empty memory).
    pub fn evaluate(&self, input: &DecisionInput<'_>, consent: &ConsentView) -> Verdict {
        let key = DecisionKey {
            org: input.sender.org.clone(),
            role: input.sender.role,
            flow: input.flow.id.clone(),
            purpose: input.purpose.to_owned(),
            legal_basis: input.legal_basis.to_owned(),
            consent: consent.status,
            covers_landlord: consent.covers_landlord,
            eviction_stage: input.eviction_stage,
        };
        if let Some(v) = self.verdicts.get(&key) {
            return v;
        }
        let v = self.evaluate_uncached(input, consent);
        self.verdicts.put(key, v.clone());
        v
    }

    /// Evaluates the policies with Cedar, without the memory [`Policies::evaluate`] keeps:
    /// builds the principal and resource entities and asks the authorizer.
    pub fn evaluate_uncached(&self, input: &DecisionInput<'_>, consent: &ConsentView) -> Verdict {
        let t = &self.types;
        let flow = input.flow;
        let principal = Types::uid(&t.organisation, input.sender.org.as_str());
        let resource = Types::uid(&t.disclosure, &flow.id);
        let action = Types::uid(&t.action, &flow.id);
        let mut attrs = HashMap::from([
            (
                "flow_purpose".to_owned(),
                Types::value(&t.purpose, &flow.purpose),
            ),
            (
                "flow_legal_basis".to_owned(),
                Types::value(&t.legal_basis, &flow.legal_basis),
            ),
            (
                "flow_sender_role".to_owned(),
                Types::value(&t.role, flow.sender.as_str()),
            ),
            (
                "recipient_role".to_owned(),
                Types::value(&t.role, flow.recipient.as_str()),
            ),
            (
                "purpose".to_owned(),
                Types::value(&t.purpose, input.purpose),
            ),
            (
                "legal_basis".to_owned(),
                Types::value(&t.legal_basis, input.legal_basis),
            ),
            (
                "consent".to_owned(),
                Types::value(&t.consent_state, consent.status.as_str()),
            ),
            (
                "consent_covers_landlord".to_owned(),
                RestrictedExpression::new_bool(consent.covers_landlord),
            ),
        ]);
        if let Some(stage) = input.eviction_stage {
            attrs.insert(
                "eviction_stage".to_owned(),
                Types::value(&t.eviction_stage, stage.as_str()),
            );
        }
        let role = HashMap::from([(
            "role".to_owned(),
            Types::value(&t.role, input.sender.role.as_str()),
        )]);
        let built = (|| {
            let entities = self.actions.clone().add_entities(
                [
                    Entity::new(principal.clone(), role, HashSet::new()).ok()?,
                    Entity::new(resource.clone(), attrs, HashSet::new()).ok()?,
                ],
                None,
            );
            let request = Request::new(principal, action, resource, Context::empty(), None);
            Some((entities.ok()?, request.ok()?))
        })();
        // Entity values are uids and booleans only, so building cannot fail; if it ever did,
        // refusing is the safe answer.
        let Some((entities, request)) = built else {
            return Verdict {
                allowed: false,
                policy_ids: vec![DEFAULT_DENY.to_owned()],
            };
        };
        self.verdict_of(&request, &entities)
    }

    /// Asks Cedar, and names the policies that decided.
    fn verdict_of(&self, request: &Request, entities: &Entities) -> Verdict {
        let response = self
            .authorizer
            .is_authorized(request, &self.cedar, entities);
        let allowed = response.decision() == Decision::Allow;
        let mut policy_ids: Vec<String> = response
            .diagnostics()
            .reason()
            .map(|id| id.to_string())
            .collect();
        policy_ids.sort();
        if policy_ids.is_empty() {
            policy_ids.push(DEFAULT_DENY.to_owned());
        }
        Verdict {
            allowed,
            policy_ids,
        }
    }

    /// Whether `caller` may read the programme statistics, as the policies decide (action
    /// `read-statistics` on the one `Statistics` resource). A policy set that does not declare
    /// the action permits no one.
    pub fn may_read_statistics(&self, caller: &Caller) -> Verdict {
        let t = &self.types;
        let principal = Types::uid(&t.organisation, caller.org.as_str());
        let resource = Types::uid(&t.statistics, "programme");
        let action = Types::uid(&t.action, "read-statistics");
        let role = HashMap::from([(
            "role".to_owned(),
            Types::value(&t.role, caller.role.as_str()),
        )]);
        let built = (|| {
            let entities = self.actions.clone().add_entities(
                [
                    Entity::new(principal.clone(), role, HashSet::new()).ok()?,
                    Entity::new_no_attrs(resource.clone(), HashSet::new()),
                ],
                None,
            );
            let request = Request::new(principal, action, resource, Context::empty(), None);
            Some((entities.ok()?, request.ok()?))
        })();
        let Some((entities, request)) = built else {
            return Verdict {
                allowed: false,
                policy_ids: vec![DEFAULT_DENY.to_owned()],
            };
        };
        self.verdict_of(&request, &entities)
    }

    /// Would the policies refuse this request even for a resident whose consent is valid and
    /// covers the landlord? Such a refusal says nothing about the resident, so the sender is
    /// told; any other refusal depends on the consent and is not.
    pub fn precheck(&self, input: &DecisionInput<'_>) -> Result<(), Verdict> {
        let best = ConsentView {
            status: ConsentStatus::Valid,
            consent_id: None,
            covers_landlord: true,
        };
        let v = self.evaluate(input, &best);
        if v.allowed { Ok(()) } else { Err(v) }
    }

    /// The `@reason` texts of the given policies, joined, for a refused sender.
    pub fn reasons(&self, policy_ids: &[String]) -> String {
        let texts: Vec<&str> = policy_ids
            .iter()
            .filter_map(|id| self.info.get(id).and_then(|i| i.reason.as_deref()))
            .collect();
        if texts.is_empty() {
            "no policy permits this disclosure".to_owned()
        } else {
            texts.join("; ")
        }
    }

    /// Decides a disclosure to each candidate recipient, each with the consent that governs
    /// it. With no candidate at all the policies are still asked (with consent `absent`), so
    /// the audit trail names the rule that left the message undelivered.
    pub fn decide(
        &self,
        input: &DecisionInput<'_>,
        candidates: &[(OrgId, ConsentView)],
    ) -> Disclosure {
        let mut permits = Vec::new();
        let mut ids = BTreeSet::new();
        if candidates.is_empty() {
            ids.extend(self.evaluate(input, &ConsentView::ABSENT).policy_ids);
        }
        for (org, consent) in candidates {
            let v = self.evaluate(input, consent);
            ids.extend(v.policy_ids);
            if v.allowed {
                permits.push(Permit {
                    recipient: org.clone(),
                    // A disclosure on a basis without consent does not rest on one, and a
                    // withdrawal must not purge it.
                    consent_id: consent
                        .consent_id
                        .clone()
                        .filter(|_| input.flow.requires_consent),
                });
            }
        }
        permits.sort_by(|a, b| a.recipient.cmp(&b.recipient));
        Disclosure {
            reason: if permits.is_empty() {
                "not-disclosed"
            } else {
                "disclosed"
            },
            permits,
            policy_ids: ids.into_iter().collect(),
        }
    }
}
