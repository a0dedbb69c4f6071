//! `silta policy`: validate a policy directory, print its flows, and explain a decision.

use std::path::PathBuf;

use clap::Subcommand;
use silta_core::policy::{ConsentStatus, ConsentView, DecisionInput, Form, Policies, PolicyErrors};
use silta_core::report::EvictionStage;
use silta_core::{Caller, OrgId, Role};
use silta_server::policy_source;

use crate::output::{out, outln};

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Validates a policy directory (schema, flows.toml, *.cedar; Cedar strict mode) and prints
    /// the table of flows. Exits 1, naming each file, line and reason, when it is invalid.
    Check {
        /// The policy directory. Default: the built-in set (the repository's policies/).
        dir: Option<PathBuf>,
        /// Print the table as Markdown (the form docs/policies.md embeds).
        #[arg(long)]
        markdown: bool,
    },
    /// Answers whether a disclosure on a flow is allowed, and which policies decide.
    Explain {
        /// The flow id, e.g. rent-arrears.
        #[arg(long)]
        flow: String,
        /// The sending organisation.
        #[arg(long)]
        from: String,
        /// The sender's role. Default: the role the flow declares.
        #[arg(long)]
        role: Option<String>,
        /// The resident's consent: valid, withdrawn, expired or absent.
        #[arg(long, default_value = "valid")]
        consent: String,
        /// Whether that consent lets the landlord be told the outcome.
        #[arg(long)]
        covers_landlord: bool,
        /// The purpose the sender names. Default: the flow's.
        #[arg(long)]
        purpose: Option<String>,
        /// The eviction stage the message reports (none, warning, court_application,
        /// court_decision, enforcement_scheduled).
        #[arg(long)]
        stage: Option<String>,
        /// The policy directory. Default: the built-in set.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// Runs a `silta policy` command; returns the exit code.
pub fn run(command: PolicyCommand) -> anyhow::Result<i32> {
    match command {
        PolicyCommand::Check { dir, markdown } => match policy_source::load(dir.as_deref()) {
            Ok(p) => {
                if markdown {
                    out!("{}", markdown_table(&p));
                } else {
                    out!("{}", text_table(&p));
                    outln!(
                        "\nOK: {} flows, {} policies, set {}",
                        p.flows().len(),
                        p.policies().len(),
                        &p.digest()[..16]
                    );
                }
                Ok(0)
            }
            Err(e) => Ok(report_errors(&e)),
        },
        PolicyCommand::Explain {
            flow,
            from,
            role,
            consent,
            covers_landlord,
            purpose,
            stage,
            dir,
        } => {
            let p = match policy_source::load(dir.as_deref()) {
                Ok(p) => p,
                Err(e) => return Ok(report_errors(&e)),
            };
            let Some(f) = p.flow(&flow) else {
                let known: Vec<&str> = p.flows().iter().map(|f| f.id.as_str()).collect();
                anyhow::bail!("--flow: no flow {flow:?} (declared: {})", known.join(", "));
            };
            let sender = Caller {
                org: OrgId::new(&from).map_err(|e| anyhow::anyhow!("--from: {e}"))?,
                role: match role {
                    Some(r) => r
                        .parse::<Role>()
                        .map_err(|e| anyhow::anyhow!("--role: {e}"))?,
                    None => f.sender,
                },
            };
            let status = ConsentStatus::parse(&consent).ok_or_else(|| {
                anyhow::anyhow!("--consent: expected valid, withdrawn, expired or absent")
            })?;
            let eviction_stage = match stage {
                Some(s) => Some(EvictionStage::parse(&s).ok_or_else(|| {
                    anyhow::anyhow!("--stage: expected none, warning, court_application, court_decision or enforcement_scheduled")
                })?),
                None => None,
            };
            let purpose = purpose.unwrap_or_else(|| f.purpose.clone());
            if !p.is_known_purpose(&purpose) {
                anyhow::bail!(
                    "--purpose: {purpose:?} is not declared (declared: {})",
                    p.purpose_list()
                );
            }
            let input = DecisionInput {
                flow: f,
                sender: &sender,
                purpose: &purpose,
                legal_basis: &f.legal_basis,
                eviction_stage,
            };
            let view = ConsentView {
                status,
                consent_id: None,
                covers_landlord,
            };
            let verdict = p.evaluate(&input, &view);
            outln!(
                "{}: flow {} from {} ({}) for {purpose}, consent {consent}{}",
                if verdict.allowed { "ALLOW" } else { "DENY" },
                f.id,
                sender.org,
                sender.role,
                if covers_landlord {
                    " (covers the landlord)"
                } else {
                    ""
                },
            );
            outln!("deciding policies: {}", verdict.policy_ids.join(", "));
            if !verdict.allowed {
                outln!("reason: {}", p.reasons(&verdict.policy_ids));
            }
            Ok(if verdict.allowed { 0 } else { 3 })
        }
    }
}

fn report_errors(e: &PolicyErrors) -> i32 {
    eprintln!("the policy set is invalid:");
    for err in &e.0 {
        eprintln!("  {err}");
    }
    1
}

fn fields(f: &silta_core::policy::Flow) -> Vec<String> {
    f.fields
        .iter()
        .map(|c| match c.form {
            Form::Pass if c.source == c.output => c.output.to_owned(),
            // Named otherwise on the recipient's side: say so, as flows.toml names the source.
            Form::Pass => format!("{} → {}", c.source, c.output),
            Form::Band | Form::Month => {
                format!("{} → {} ({})", c.source, c.output, c.form.as_str())
            }
        })
        .collect()
}

fn basis(f: &silta_core::policy::Flow) -> String {
    if f.requires_consent {
        format!("{} (needs consent)", f.legal_basis)
    } else {
        format!(
            "{} (no consent; to {}{})",
            f.legal_basis,
            join_orgs(&f.recipients),
            // The reader must see that this flow tells the recipient who the resident is.
            if f.discloses_identity {
                "; identity sealed to the recipient"
            } else {
                ""
            }
        )
    }
}

fn join_orgs(orgs: &[OrgId]) -> String {
    orgs.iter()
        .map(OrgId::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The flows as a plain-text table for a terminal.
pub fn text_table(p: &Policies) -> String {
    let mut out = String::new();
    for f in p.flows() {
        out.push_str(&format!(
            "{}\n  {} → {}, via {}\n  purpose:     {}\n  legal basis: {}\n  fields:      {}\n  retention:   {} days\n",
            f.id,
            f.sender,
            f.recipient,
            f.message.rpc(),
            f.purpose,
            basis(f),
            fields(f).join(", "),
            f.retention_days,
        ));
    }
    out
}

/// The flows as a Markdown table, as docs/policies.md embeds it.
pub fn markdown_table(p: &Policies) -> String {
    let mut out = String::from(
        "| flow | sender → recipient | RPC | purpose | legal basis | fields that cross (and how) | retention |\n\
         | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for f in p.flows() {
        out.push_str(&format!(
            "| `{}` | {} → {} | `{}` | `{}` | {} | {} | {} days |\n",
            f.id,
            f.sender,
            f.recipient,
            f.message.rpc(),
            f.purpose,
            {
                let b = basis(f);
                let (id, rest) = b.split_once(' ').unwrap_or((&b, ""));
                format!("`{id}` {rest}")
            },
            fields(f)
                .iter()
                .map(|s| format!("`{s}`"))
                .collect::<Vec<_>>()
                .join(", "),
            f.retention_days,
        ));
    }
    out
}
