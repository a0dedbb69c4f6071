//! Readable policy: the flows declared in `flows.toml` and the Cedar policies that decide each
//! disclosure, loaded from the files a data-protection officer signs off.
//!
//! [`Policies::load`] parses the schema, the policies and the flows, validates the policies
//! against the schema in Cedar's **strict** mode and cross-checks the three, naming the file,
//! line and reason of every problem. A loaded set is immutable; the gateway swaps a new one in
//! on reload. Deciding is pure: the same set, request and consent give the same answer.

pub mod catalogue;
mod decide;
pub mod flows;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::str::FromStr;

use crate::org::Role;
use cedar_policy::{
    Authorizer, Entities, EntityTypeName, EntityUid, PolicyId, PolicySet, Schema, SchemaFragment,
    ValidationMode, Validator,
};
use miette::Diagnostic;
use ring::digest;

pub use catalogue::{FieldSpec, FieldValue, Form, Message, MessageKind};
pub use decide::{ConsentStatus, ConsentView, DecisionInput, Disclosure, Permit, Verdict};
pub use flows::{CrossingField, Declarations, Flow, LegalBasis, Purpose};

/// The file names a policy directory holds.
pub const SCHEMA_FILE: &str = "schema.cedarschema";
/// The flows file.
pub const FLOWS_FILE: &str = "flows.toml";
/// The extension of Cedar policy files.
pub const POLICY_EXTENSION: &str = ".cedar";

/// One file of a policy set, by name (for messages) and content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    /// Name shown in messages, e.g. `policies/flows.toml`.
    pub name: String,
    /// Content.
    pub text: String,
}

impl SourceFile {
    /// A file.
    pub fn new(name: impl Into<String>, text: impl Into<String>) -> Self {
        SourceFile {
            name: name.into(),
            text: text.into(),
        }
    }

    /// An error at byte `offset` of this file.
    pub fn error_at(&self, offset: usize, message: String) -> PolicyError {
        let offset = offset.min(self.text.len());
        let before = self.text.get(..offset).unwrap_or("");
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        PolicyError {
            file: self.name.clone(),
            line: Some(line),
            column: Some(column),
            message,
        }
    }

    fn error(&self, message: String) -> PolicyError {
        PolicyError {
            file: self.name.clone(),
            line: None,
            column: None,
            message,
        }
    }

    /// An error from a Cedar diagnostic, located by its first label.
    fn diagnostic(&self, d: &dyn Diagnostic) -> PolicyError {
        let mut message = d.to_string();
        if let Some(help) = d.help() {
            message.push_str(&format!(" (help: {help})"));
        }
        match d.labels().and_then(|mut l| l.next()) {
            Some(label) => self.error_at(label.offset(), message),
            None => self.error(message),
        }
    }
}

/// A problem in a policy set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// The file.
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "{}:{l}:{c}: {}", self.file, self.message),
            (Some(l), None) => write!(f, "{}:{l}: {}", self.file, self.message),
            _ => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

/// Every problem found in a policy set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// A Cedar policy as loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyInfo {
    /// Its `@id`.
    pub id: String,
    /// The file it is in.
    pub file: String,
    /// `permit` or `forbid`.
    pub effect: &'static str,
    /// Its `@reason`, shown to a sender it refuses.
    pub reason: Option<String>,
}

/// A validated policy set: schema, Cedar policies and declared flows.
pub struct Policies {
    cedar: PolicySet,
    actions: Entities,
    authorizer: Authorizer,
    declarations: Declarations,
    info: BTreeMap<String, PolicyInfo>,
    digest: String,
    types: decide::Types,
    verdicts: decide::VerdictCache,
}

impl fmt::Debug for Policies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policies")
            .field("digest", &self.digest)
            .field("flows", &self.declarations.flows.len())
            .field("policies", &self.info.len())
            .finish_non_exhaustive()
    }
}

impl Policies {
    /// Loads a policy set from its files: exactly one [`SCHEMA_FILE`], one [`FLOWS_FILE`] and
    /// any number of `*.cedar` files (others are ignored). Reports every problem found.
    pub fn load(files: &[SourceFile]) -> Result<Self, PolicyErrors> {
        let base = |f: &SourceFile| f.name.rsplit(['/', '\\']).next().unwrap_or("").to_owned();
        let mut errors = Vec::new();
        let schema_file = files.iter().find(|f| base(f) == SCHEMA_FILE);
        let flows_file = files.iter().find(|f| base(f) == FLOWS_FILE);
        let cedar_files: Vec<&SourceFile> = files
            .iter()
            .filter(|f| base(f).ends_with(POLICY_EXTENSION))
            .collect();
        let missing = |what: &str| PolicyError {
            file: what.to_owned(),
            line: None,
            column: None,
            message: "is missing from the policy directory".to_owned(),
        };
        let (Some(schema_file), Some(flows_file)) = (schema_file, flows_file) else {
            if schema_file.is_none() {
                errors.push(missing(SCHEMA_FILE));
            }
            if flows_file.is_none() {
                errors.push(missing(FLOWS_FILE));
            }
            return Err(PolicyErrors(errors));
        };
        if cedar_files.is_empty() {
            errors.push(flows_file.error(format!(
                "the policy directory holds no {POLICY_EXTENSION} file: nothing would be permitted"
            )));
        }

        // Schema.
        let fragment = match SchemaFragment::from_cedarschema_str(&schema_file.text) {
            Ok((f, _warnings)) => Some(f),
            Err(e) => {
                errors.push(schema_file.diagnostic(&e));
                None
            }
        };
        let enums = fragment
            .as_ref()
            .and_then(|f| f.clone().to_json_value().ok())
            .map(|json| schema_enums(&json))
            .unwrap_or_default();
        let schema = fragment.and_then(|f| match Schema::from_schema_fragments([f]) {
            Ok(s) => Some(s),
            Err(e) => {
                errors.push(schema_file.diagnostic(&e));
                None
            }
        });

        // Policies, each under its @id, remembering its file.
        let mut cedar = PolicySet::new();
        let mut info = BTreeMap::new();
        let mut file_of: HashMap<String, &SourceFile> = HashMap::new();
        for file in &cedar_files {
            let parsed = match PolicySet::from_str(&file.text) {
                Ok(p) => p,
                Err(e) => {
                    errors.push(file.diagnostic(&e));
                    continue;
                }
            };
            for policy in parsed.policies() {
                let Some(id) = policy.annotation("id").map(str::to_owned) else {
                    let at = policy_offset(&file.text, policy.to_string().as_str());
                    errors.push(file.error_at(
                        at,
                        "every policy needs an @id(\"...\") annotation, so decisions can name it"
                            .to_owned(),
                    ));
                    continue;
                };
                if let Some(first) = info.get(&id).map(|i: &PolicyInfo| i.file.clone()) {
                    errors.push(
                        file.error(format!("policy id {id:?} is used twice (also in {first})")),
                    );
                    continue;
                }
                let effect = match policy.effect() {
                    cedar_policy::Effect::Permit => "permit",
                    cedar_policy::Effect::Forbid => "forbid",
                };
                info.insert(
                    id.clone(),
                    PolicyInfo {
                        id: id.clone(),
                        file: file.name.clone(),
                        effect,
                        reason: policy.annotation("reason").map(str::to_owned),
                    },
                );
                file_of.insert(id.clone(), file);
                if let Err(e) = cedar.add(policy.new_id(PolicyId::new(&id))) {
                    errors.push(file.error(e.to_string()));
                }
            }
        }

        // Strict validation against the schema.
        if let Some(schema) = &schema {
            let result = Validator::new(schema.clone()).validate(&cedar, ValidationMode::Strict);
            for e in result.validation_errors() {
                let pid = e.policy_id().to_string();
                let file = file_of.get(&pid).copied();
                let mut err = match file {
                    Some(f) => f.diagnostic(e),
                    None => schema_file.error(e.to_string()),
                };
                err.message = format!("policy {pid:?}: {}", err.message);
                errors.push(err);
            }
        }

        // Flows, and how they meet the schema.
        let declarations = match flows::parse(flows_file) {
            Ok(d) => Some(d),
            Err(e) => {
                errors.extend(e);
                None
            }
        };
        let actions = schema.as_ref().and_then(|s| s.action_entities().ok());
        if let (Some(decl), Some(schema), Some(actions)) = (&declarations, &schema, &actions) {
            cross_check(
                decl,
                schema,
                actions,
                &enums,
                flows_file,
                schema_file,
                &mut errors,
            );
        }

        match (errors.is_empty(), declarations, actions) {
            (true, Some(declarations), Some(actions)) => Ok(Policies {
                cedar,
                actions,
                authorizer: Authorizer::new(),
                declarations,
                info,
                digest: digest_of(files),
                types: decide::Types::new(),
                verdicts: decide::VerdictCache::default(),
            }),
            _ => Err(PolicyErrors(errors)),
        }
    }

    /// The declared flows, in file order.
    pub fn flows(&self) -> &[Flow] {
        &self.declarations.flows
    }

    /// The flow with this id.
    pub fn flow(&self, id: &str) -> Option<&Flow> {
        self.declarations.flows.iter().find(|f| f.id == id)
    }

    /// The declarations of `flows.toml`.
    pub fn declarations(&self) -> &Declarations {
        &self.declarations
    }

    /// The Cedar policies, by id.
    pub fn policies(&self) -> &BTreeMap<String, PolicyInfo> {
        &self.info
    }

    /// SHA-256 over the files the set was loaded from (names and contents), hex: recorded in
    /// the ledger so an auditor knows which policy set decided.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Whether `purpose` is declared.
    pub fn is_known_purpose(&self, purpose: &str) -> bool {
        self.declarations.purposes.contains_key(purpose)
    }

    /// The purposes a consent can be given for: those of the consent-based flows.
    pub fn consent_purposes(&self) -> Vec<String> {
        let set: BTreeSet<&String> = self
            .declarations
            .flows
            .iter()
            .filter(|f| f.requires_consent)
            .map(|f| &f.purpose)
            .collect();
        set.into_iter().cloned().collect()
    }

    /// The declared purposes, comma-separated, for messages.
    pub fn purpose_list(&self) -> String {
        join(self.declarations.purposes.keys())
    }

    /// The purposes of the flows on which `sender` may send `kind`, comma-separated, sorted,
    /// for messages. A purpose declared only so that it is refused (one no flow serves, or only
    /// another role's flows) is not offered.
    pub fn purposes_for(&self, sender: Role, kind: MessageKind) -> String {
        let set: BTreeSet<&String> = self
            .declarations
            .flows
            .iter()
            .filter(|f| f.sender == sender && f.message == kind)
            .map(|f| &f.purpose)
            .collect();
        join(set.into_iter())
    }

    /// The legal bases of the flows on which `sender` may send `kind`, comma-separated,
    /// sorted, for messages.
    pub fn legal_bases_for(&self, sender: Role, kind: MessageKind) -> String {
        let set: BTreeSet<&String> = self
            .declarations
            .flows
            .iter()
            .filter(|f| f.sender == sender && f.message == kind)
            .map(|f| &f.legal_basis)
            .collect();
        join(set.into_iter())
    }

    /// The flow that carries `kind` on `legal_basis`, if one is declared.
    pub fn route(&self, kind: MessageKind, legal_basis: &str) -> Option<&Flow> {
        self.declarations
            .flows
            .iter()
            .find(|f| f.message == kind && f.legal_basis == legal_basis)
    }

    /// The legal bases on which `kind` is declared, for messages.
    pub fn bases_for(&self, kind: MessageKind) -> String {
        join(
            self.declarations
                .flows
                .iter()
                .filter(|f| f.message == kind)
                .map(|f| &f.legal_basis),
        )
    }

    /// The ids of the consent-based flows for `purpose`: the data categories a consent for it
    /// lets cross (support notices only when `covers_landlord`).
    pub fn consent_categories(&self, purpose: &str, covers_landlord: bool) -> Vec<String> {
        self.declarations
            .flows
            .iter()
            .filter(|f| f.requires_consent && f.purpose == purpose)
            .filter(|f| covers_landlord || f.message != MessageKind::SupportNotice)
            .map(|f| f.id.clone())
            .collect()
    }
}

fn join<'a>(items: impl Iterator<Item = &'a String>) -> String {
    items.map(String::as_str).collect::<Vec<_>>().join(", ")
}

/// The values of every enumerated entity type in a schema's JSON form.
fn schema_enums(json: &serde_json::Value) -> BTreeMap<String, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    let Some(namespaces) = json.as_object() else {
        return out;
    };
    for ns in namespaces.values() {
        let Some(types) = ns.get("entityTypes").and_then(|t| t.as_object()) else {
            continue;
        };
        for (name, ty) in types {
            if let Some(values) = ty.get("enum").and_then(|e| e.as_array()) {
                out.insert(
                    name.clone(),
                    values
                        .iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect(),
                );
            }
        }
    }
    out
}

/// flows.toml and the schema must name the same flows, purposes and legal bases, and a flow
/// on a basis that needs consent must be in the `consent-based` action group, or the consent
/// policies would not apply to it.
#[allow(clippy::too_many_arguments)]
fn cross_check(
    decl: &Declarations,
    schema: &Schema,
    actions: &Entities,
    enums: &BTreeMap<String, BTreeSet<String>>,
    flows_file: &SourceFile,
    schema_file: &SourceFile,
    errors: &mut Vec<PolicyError>,
) {
    let find = |needle: &str| flows_file.text.find(needle).unwrap_or(0);
    let empty = BTreeSet::new();
    for (ty, declared, what) in [
        (
            "Purpose",
            decl.purposes.keys().cloned().collect::<BTreeSet<_>>(),
            "purpose",
        ),
        (
            "LegalBasis",
            decl.legal_bases.keys().cloned().collect(),
            "legal basis",
        ),
    ] {
        let in_schema = enums.get(ty).unwrap_or(&empty);
        for p in declared.difference(in_schema) {
            errors.push(flows_file.error_at(
                find(&format!("{p}]")),
                format!(
                    "unknown {what} {p:?}: the schema's {ty} enum does not list it (it lists: {})",
                    join(in_schema.iter())
                ),
            ));
        }
        for p in in_schema.difference(&declared) {
            errors.push(schema_file.error_at(
                schema_file.text.find(&format!("\"{p}\"")).unwrap_or(0),
                format!("{what} {p:?} is in the schema but not described in {FLOWS_FILE}"),
            ));
        }
    }
    let group = consent_group();
    let leaf_actions: BTreeSet<String> = schema
        .actions()
        .filter(|a| !schema.action_groups().any(|g| g == *a))
        .map(|a| a.id().unescaped().to_owned())
        .collect();
    for flow in &decl.flows {
        if !leaf_actions.contains(&flow.id) {
            errors.push(flows_file.error_at(
                find(&format!("\"{}\"", flow.id)),
                format!(
                    "flow {:?} has no action in the schema; add `action \"{}\"` to {SCHEMA_FILE}",
                    flow.id, flow.id
                ),
            ));
            continue;
        }
        let uid = action_uid(&flow.id);
        let in_group = actions.is_ancestor_of(&group, &uid);
        if flow.requires_consent != in_group {
            errors.push(schema_file.error_at(
                schema_file.text.find(&format!("\"{}\"", flow.id)).unwrap_or(0),
                if flow.requires_consent {
                    format!(
                        "action {:?}: its flow's legal basis needs consent, so it must be `in [\"consent-based\"]`",
                        flow.id
                    )
                } else {
                    format!(
                        "action {:?}: its flow's legal basis needs no consent, so it must not be in \"consent-based\"",
                        flow.id
                    )
                },
            ));
        }
    }
    let declared: BTreeSet<&str> = decl.flows.iter().map(|f| f.id.as_str()).collect();
    for a in &leaf_actions {
        if !declared.contains(a.as_str()) && !READ_ACTIONS.contains(&a.as_str()) {
            errors.push(schema_file.error_at(
                schema_file.text.find(&format!("\"{a}\"")).unwrap_or(0),
                format!("action {a:?} has no flow in {FLOWS_FILE}; declare it or remove it"),
            ));
        }
    }
}

fn action_uid(id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(
        // "Action" is always a valid type name.
        EntityTypeName::from_str("Action").expect("valid type name"),
        cedar_policy::EntityId::new(id),
    )
}

fn consent_group() -> EntityUid {
    action_uid("consent-based")
}

/// Where a policy without an @id starts in its file: the start of its text, if found.
fn policy_offset(file: &str, policy: &str) -> usize {
    let head: String = policy.chars().take(20).collect();
    file.find(&head).unwrap_or(0)
}

fn digest_of(files: &[SourceFile]) -> String {
    let mut sorted: Vec<&SourceFile> = files.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut ctx = digest::Context::new(&digest::SHA256);
    for f in sorted {
        let base = f.name.rsplit(['/', '\\']).next().unwrap_or("");
        for part in [base.as_bytes(), f.text.as_bytes()] {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part);
        }
    }
    data_encoding::HEXLOWER.encode(ctx.finish().as_ref())
}

/// The policy set in the repository's `policies/` folder, compiled into the binary: what the
/// gateway enforces when no policy directory is configured.
pub const BUILTIN_FILES: &[(&str, &str)] = &[
    (
        SCHEMA_FILE,
        include_str!("../../../../policies/schema.cedarschema"),
    ),
    (FLOWS_FILE, include_str!("../../../../policies/flows.toml")),
    (
        "principles.cedar",
        include_str!("../../../../policies/principles.cedar"),
    ),
    (
        "landlord-to-social-services.cedar",
        include_str!("../../../../policies/landlord-to-social-services.cedar"),
    ),
    (
        "support-notices.cedar",
        include_str!("../../../../policies/support-notices.cedar"),
    ),
    (
        "access.cedar",
        include_str!("../../../../policies/access.cedar"),
    ),
];

/// Actions that read what silta keeps rather than carry data on a flow: they have no flow in
/// [`FLOWS_FILE`], and a policy set may leave them out (the reads are then refused).
pub const READ_ACTIONS: &[&str] = &["read-statistics"];

impl Policies {
    /// The built-in policy set ([`BUILTIN_FILES`]).
    pub fn builtin() -> Self {
        let files: Vec<SourceFile> = BUILTIN_FILES
            .iter()
            .map(|(name, text)| SourceFile::new(format!("(built-in)/{name}"), *text))
            .collect();
        // The repository's own policies; a test loads them, so they always validate.
        Self::load(&files).expect("the built-in policies validate")
    }
}

/// What crosses to a recipient of `message` on `flow`: exactly the fields the flow declares,
/// each in its declared form, under the name the recipient sees. A field the message does not
/// carry (an optional one left empty) is left out. `sender` is the organisation that sent the
/// message, as its certificate proves: the value of the `sender_org` field.
pub fn minimise(
    flow: &Flow,
    message: &dyn Message,
    received_at: time::OffsetDateTime,
    sender: &crate::OrgId,
) -> serde_json::Map<String, serde_json::Value> {
    flow.fields
        .iter()
        .filter_map(|f| {
            let value = if f.source == catalogue::SENDER_ORG {
                FieldValue::Text(sender.to_string())
            } else {
                message.value(f.source, received_at)?
            };
            let value = value.generalise(f.form)?;
            Some((f.output.to_owned(), value))
        })
        .collect()
}
