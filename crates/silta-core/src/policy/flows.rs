//! `flows.toml`: the declared flows, parsed and checked against the message catalogue.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use toml::Spanned;

use super::catalogue::{Form, MessageKind};
use super::{PolicyError, SourceFile};
use crate::org::{OrgId, Role};

/// A purpose, as `flows.toml` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purpose {
    /// Its id, e.g. `eviction-prevention`.
    pub id: String,
    /// What it is for, in words.
    pub description: String,
}

/// A legal basis, as `flows.toml` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegalBasis {
    /// Its id, recorded in alerts and the ledger.
    pub id: String,
    /// Whether a flow on this basis needs the resident's valid consent.
    pub requires_consent: bool,
    /// What it is, in words.
    pub description: String,
    /// Where the law says so.
    pub citation: String,
}

/// One field a flow lets cross.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrossingField {
    /// Its name in the request.
    pub source: &'static str,
    /// Its name on the recipient's side.
    pub output: &'static str,
    /// Its form.
    pub form: Form,
}

/// A declared flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    /// Stable id; also the Cedar action's id.
    pub id: String,
    /// The kind of message it carries.
    pub message: MessageKind,
    /// What it is, in words.
    pub description: String,
    /// Who sends.
    pub sender: Role,
    /// Who receives.
    pub recipient: Role,
    /// Why.
    pub purpose: String,
    /// On what ground.
    pub legal_basis: String,
    /// Whether the basis needs the resident's consent.
    pub requires_consent: bool,
    /// For a flow without consent: the organisations it goes to.
    pub recipients: Vec<OrgId>,
    /// Whether the flow's basis lets it tell the recipient who the resident is: the alert then
    /// carries the identity code sealed to the recipient's key. Only on a basis without
    /// consent, where the law names the recipient and expects it to identify the person.
    pub discloses_identity: bool,
    /// Days delivered data is kept before it is deleted.
    pub retention_days: u32,
    /// The fields that cross, in the catalogue's order.
    pub fields: Vec<CrossingField>,
}

impl Flow {
    /// Names of the fields that cross, as the recipient sees them.
    pub fn field_names(&self) -> Vec<String> {
        self.fields.iter().map(|f| f.output.to_owned()).collect()
    }
}

/// What `flows.toml` declares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Declarations {
    /// Purposes, by id.
    pub purposes: BTreeMap<String, Purpose>,
    /// Legal bases, by id.
    pub legal_bases: BTreeMap<String, LegalBasis>,
    /// Flows, in file order.
    pub flows: Vec<Flow>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    purposes: BTreeMap<String, RawPurpose>,
    #[serde(default)]
    legal_bases: BTreeMap<String, RawBasis>,
    #[serde(default)]
    flows: Vec<RawFlow>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPurpose {
    description: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBasis {
    requires_consent: bool,
    description: String,
    citation: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFlow {
    id: Spanned<String>,
    message: Spanned<String>,
    description: String,
    sender: Spanned<String>,
    recipient: Spanned<String>,
    purpose: Spanned<String>,
    legal_basis: Spanned<String>,
    recipients: Option<Spanned<Vec<String>>>,
    discloses_identity: Option<Spanned<bool>>,
    retention_days: Spanned<u32>,
    fields: Spanned<BTreeMap<Spanned<String>, Spanned<String>>>,
}

/// Parses and checks `flows.toml`, collecting every problem.
pub fn parse(file: &SourceFile) -> Result<Declarations, Vec<PolicyError>> {
    let raw: RawFile = toml::from_str(&file.text).map_err(|e| {
        let at = e.span().map_or(0, |s| s.start);
        vec![file.error_at(at, e.message().to_owned())]
    })?;
    let mut errors = Vec::new();
    let mut out = Declarations::default();
    for (id, p) in raw.purposes {
        if p.description.trim().is_empty() {
            errors.push(file.error_at(0, format!("purpose {id:?} needs a description")));
        }
        out.purposes.insert(
            id.clone(),
            Purpose {
                id,
                description: p.description,
            },
        );
    }
    for (id, b) in raw.legal_bases {
        if b.description.trim().is_empty() || b.citation.trim().is_empty() {
            errors.push(file.error_at(
                0,
                format!("legal basis {id:?} needs a description and a citation"),
            ));
        }
        out.legal_bases.insert(
            id.clone(),
            LegalBasis {
                id,
                requires_consent: b.requires_consent,
                description: b.description,
                citation: b.citation,
            },
        );
    }
    let mut ids = BTreeSet::new();
    let mut routes = BTreeSet::new();
    for raw in raw.flows {
        if let Some(flow) = check_flow(file, raw, &out, &mut errors) {
            if !ids.insert(flow.id.clone()) {
                errors.push(file.error_at(0, format!("flow {:?} is declared twice", flow.id)));
            }
            if !routes.insert((flow.message, flow.legal_basis.clone())) {
                errors.push(file.error_at(
                    0,
                    format!(
                        "two flows carry {} messages on legal basis {:?}; a sender could not say which it means",
                        flow.message.as_str(),
                        flow.legal_basis
                    ),
                ));
            }
            out.flows.push(flow);
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn check_flow(
    file: &SourceFile,
    raw: RawFlow,
    decl: &Declarations,
    errors: &mut Vec<PolicyError>,
) -> Option<Flow> {
    let mut problems: Vec<(usize, String)> = Vec::new();
    let id = raw.id.get_ref().clone();
    if id.is_empty()
        || !id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        push(
            &mut problems,
            raw.id.span().start,
            format!("flow id {id:?} must be lowercase letters, digits and '-'"),
        );
    }
    let message = MessageKind::parse(raw.message.get_ref());
    if message.is_none() {
        push(
            &mut problems,
            raw.message.span().start,
            format!(
                "flow {id:?}: unknown message {:?} (known: {})",
                raw.message.get_ref(),
                MessageKind::ALL.map(MessageKind::as_str).join(", ")
            ),
        );
    }
    let role = |s: &Spanned<String>, what: &str, problems: &mut Vec<(usize, String)>| {
        let r = s.get_ref().parse::<Role>().ok();
        if r.is_none() {
            push(
                problems,
                s.span().start,
                format!("flow {id:?}: unknown {what} role {:?}", s.get_ref()),
            );
        }
        r
    };
    let sender = role(&raw.sender, "sender", &mut problems);
    let recipient = role(&raw.recipient, "recipient", &mut problems);
    if let (Some(kind), Some(s), Some(r)) = (message, sender, recipient) {
        let (want_s, want_r) = match kind {
            MessageKind::SupportNotice => (Role::SocialServices, Role::Landlord),
            _ => (Role::Landlord, Role::SocialServices),
        };
        if (s, r) != (want_s, want_r) {
            push(
                &mut problems,
                raw.sender.span().start,
                format!(
                    "flow {id:?}: {} messages go from {want_s} to {want_r}",
                    kind.as_str()
                ),
            );
        }
    }
    if !decl.purposes.contains_key(raw.purpose.get_ref()) {
        push(
            &mut problems,
            raw.purpose.span().start,
            format!(
                "flow {id:?}: unknown purpose {:?}; declare it under [purposes] (known: {})",
                raw.purpose.get_ref(),
                keys(&decl.purposes)
            ),
        );
    }
    let basis = decl.legal_bases.get(raw.legal_basis.get_ref());
    if basis.is_none() {
        push(
            &mut problems,
            raw.legal_basis.span().start,
            format!(
                "flow {id:?}: unknown legal basis {:?}; declare it under [legal_bases] (known: {})",
                raw.legal_basis.get_ref(),
                keys(&decl.legal_bases)
            ),
        );
    }
    let requires_consent = basis.is_none_or(|b| b.requires_consent);
    let recipients_at = raw
        .recipients
        .as_ref()
        .map_or(raw.id.span().start, |r| r.span().start);
    let listed: Vec<String> = raw.recipients.map(Spanned::into_inner).unwrap_or_default();
    let mut recipients = Vec::new();
    for org in &listed {
        match OrgId::new(org) {
            Ok(o) => recipients.push(o),
            Err(e) => push(
                &mut problems,
                recipients_at,
                format!("flow {id:?}: recipient {org:?}: {e}"),
            ),
        }
    }
    if message == Some(MessageKind::SupportNotice) && !requires_consent {
        push(
            &mut problems,
            raw.legal_basis.span().start,
            format!(
                "flow {id:?}: support notices tell the landlord about a social-services client; they may only cross on a basis that needs the client's consent"
            ),
        );
    }
    if requires_consent && !listed.is_empty() {
        push(
            &mut problems,
            recipients_at,
            format!(
                "flow {id:?}: a consent-based flow goes to whoever holds the resident's consent; remove `recipients`"
            ),
        );
    }
    let discloses_identity = raw
        .discloses_identity
        .as_ref()
        .is_some_and(|d| *d.get_ref());
    if discloses_identity && requires_consent {
        // A consent covers a pseudonymous alert: the identity crosses only where the law
        // names the recipient and expects it to find the person.
        push(
            &mut problems,
            raw.discloses_identity
                .as_ref()
                .map_or(raw.id.span().start, |d| d.span().start),
            format!(
                "flow {id:?}: `discloses_identity` is only allowed on a legal basis without consent; {:?} requires consent",
                raw.legal_basis.get_ref()
            ),
        );
    }
    if !requires_consent && listed.is_empty() {
        push(
            &mut problems,
            raw.id.span().start,
            format!("flow {id:?}: a flow without consent must name its `recipients`"),
        );
    }
    let retention_days = *raw.retention_days.get_ref();
    if !(1..=3650).contains(&retention_days) {
        push(
            &mut problems,
            raw.retention_days.span().start,
            format!("flow {id:?}: retention_days must be between 1 and 3650"),
        );
    }
    let mut fields = Vec::new();
    if let Some(kind) = message {
        for (name, form) in raw.fields.get_ref() {
            let Some(spec) = kind.field(name.get_ref()) else {
                push(
                    &mut problems,
                    name.span().start,
                    format!(
                        "flow {id:?}: undeclared field {:?}: {} messages have no such field (fields: {})",
                        name.get_ref(),
                        kind.as_str(),
                        kind.fields()
                            .iter()
                            .filter(|f| f.crosses.is_ok())
                            .map(|f| f.source)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
                continue;
            };
            let Some(form_parsed) = Form::parse(form.get_ref()) else {
                push(
                    &mut problems,
                    form.span().start,
                    format!(
                        "flow {id:?}: field {:?}: unknown form {:?} (forms: pass, band, month)",
                        spec.source,
                        form.get_ref()
                    ),
                );
                continue;
            };
            match spec.crosses {
                Err(why) => push(
                    &mut problems,
                    name.span().start,
                    format!(
                        "flow {id:?}: field {:?} may never cross: {why}",
                        spec.source
                    ),
                ),
                Ok(allowed) if allowed != form_parsed => push(
                    &mut problems,
                    form.span().start,
                    format!(
                        "flow {id:?}: field {:?} may cross only {} ({:?}), not {:?}",
                        spec.source,
                        allowed.describe(),
                        allowed.as_str(),
                        form.get_ref()
                    ),
                ),
                Ok(form) => fields.push(CrossingField {
                    source: spec.source,
                    output: spec.output,
                    form,
                }),
            }
        }
        if fields.is_empty() && problems.is_empty() {
            push(
                &mut problems,
                raw.fields.span().start,
                format!("flow {id:?}: declares no field; a flow must carry something"),
            );
        }
        let order = |f: &CrossingField| kind.fields().iter().position(|s| s.source == f.source);
        fields.sort_by_key(order);
    }
    if !problems.is_empty() {
        errors.extend(problems.into_iter().map(|(at, msg)| file.error_at(at, msg)));
        return None;
    }
    Some(Flow {
        id,
        message: message?,
        description: raw.description,
        sender: sender?,
        recipient: recipient?,
        purpose: raw.purpose.into_inner(),
        legal_basis: raw.legal_basis.into_inner(),
        requires_consent,
        recipients,
        discloses_identity,
        retention_days,
        fields,
    })
}

fn push(problems: &mut Vec<(usize, String)>, at: usize, msg: String) {
    problems.push((at, msg));
}

fn keys<V>(m: &BTreeMap<String, V>) -> String {
    m.keys().cloned().collect::<Vec<_>>().join(", ")
}
