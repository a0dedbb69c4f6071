//! `silta audit`: the DPO's command line. `export` and `subject` call the gateway over mTLS
//! with the DPO's certificate; `verify` works offline, on an export file, with no server.
//!
//! Export file format (`silta-ledger-export/1`), JSON Lines:
//!
//! ```text
//! {"format":"silta-ledger-export/1","origin":"silta.local/audit","entries":19}
//! {"index":0,"entry":"<base64 of the canonical entry bytes>"}
//! ...
//! {"checkpoint":"<the C2SP signed note, verbatim>"}
//! {"key_handover":"<a checkpoint key handover, C2SP signed note, verbatim>"}
//! ```
//!
//! Key handover lines appear once a key version was promoted; `verify` follows them from the
//! key it is given.

use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use silta_ledger::checkpoint::NoteVerifier;
use silta_ledger::entry::Entry;
use silta_ledger::verify::verify_export_with_handovers;
use silta_server::proto;
use silta_server::proto::audit_client::AuditClient;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use crate::output::outln;

const FORMAT: &str = "silta-ledger-export/1";

/// The DPO's commands.
#[derive(Subcommand)]
pub enum AuditCommand {
    /// Downloads the whole ledger and its checkpoints into an export file.
    Export {
        /// File to write (JSON Lines, format silta-ledger-export/1).
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        conn: Connection,
    },
    /// Verifies an export offline: every checkpoint signature, every entry, every root.
    Verify {
        /// The export file.
        export: PathBuf,
        /// The gateway's checkpoint verifier key (`<name>+<id>+<key>`, from `silta keys show`),
        /// or a file holding it. Never take it from the export itself.
        #[arg(long)]
        key: String,
        /// The log's origin, as configured in `ledger.origin`.
        #[arg(long, default_value = "silta.local/audit")]
        origin: String,
        /// A checkpoint you kept earlier (a file holding the signed note), checked against the
        /// export too: this is what catches a history rewritten and re-signed after you saw it.
        /// Repeatable.
        #[arg(long = "checkpoint", value_name = "FILE")]
        checkpoints: Vec<PathBuf>,
    },
    /// Shows the retention state of every kind of record the gateway stores: rows, the oldest,
    /// and how many the next purge deletes (docs/audit.md, "Retention").
    Retention {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Connection,
    },
    /// Prints a resident's disclosure report: who received which of their data, when and why.
    Subject {
        /// The resident's personal identity code. Better left out: you are then asked for it on
        /// standard input, and it never reaches the shell history or the process list.
        #[arg(long)]
        hetu: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Connection,
    },
}

/// How to reach the gateway as the DPO.
#[derive(Args)]
pub struct Connection {
    /// The gateway's URL.
    #[arg(long, default_value = "https://127.0.0.1:7443", env = "SILTA_URL")]
    url: String,
    /// The name the server certificate must carry.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// CA certificate that issued the server certificate.
    #[arg(long, default_value = "dev-pki/ca.pem")]
    ca: PathBuf,
    /// The DPO's client certificate.
    #[arg(long, default_value = "dev-pki/dpo-office.pem")]
    cert: PathBuf,
    /// The DPO's client key.
    #[arg(long, default_value = "dev-pki/dpo-office.key")]
    cert_key: PathBuf,
}

impl Connection {
    async fn audit(&self) -> anyhow::Result<AuditClient<Channel>> {
        audit_client(
            &self.url,
            &self.server_name,
            &self.ca,
            &self.cert,
            &self.cert_key,
        )
        .await
    }
}

/// An Audit client over mTLS to `url`, with the certificate and key in these files.
pub(crate) async fn audit_client(
    url: &str,
    server_name: &str,
    ca: &Path,
    cert: &Path,
    cert_key: &Path,
) -> anyhow::Result<AuditClient<Channel>> {
    let read =
        |p: &Path| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()));
    let channel = silta_server::client::connect_to(
        url,
        server_name,
        &read(ca)?,
        &read(cert)?,
        &read(cert_key)?,
    )
    .await
    .with_context(|| format!("connecting to {url}"))?;
    Ok(AuditClient::new(channel))
}

#[derive(Serialize, Deserialize, Default)]
struct Line {
    #[serde(skip_serializing_if = "Option::is_none")]
    format: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    origin: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    entries: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    entry: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    checkpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_handover: Option<String>,
}

/// Runs an audit command; returns the process exit code.
pub async fn run(command: AuditCommand) -> anyhow::Result<i32> {
    match command {
        AuditCommand::Export { out, conn } => export(&out, &conn).await.map(|()| 0),
        AuditCommand::Verify {
            export,
            key,
            origin,
            checkpoints,
        } => {
            let held = checkpoints
                .iter()
                .map(|p| {
                    std::fs::read_to_string(p)
                        .with_context(|| format!("--checkpoint {}", p.display()))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            verify(&export, &key, &origin, &held)
        }
        AuditCommand::Retention { json, conn } => retention(json, &conn).await.map(|()| 0),
        AuditCommand::Subject { hetu, json, conn } => {
            let hetu = match hetu {
                Some(h) => zeroize::Zeroizing::new(h),
                None => {
                    eprint!("resident's identity code: ");
                    let mut line = zeroize::Zeroizing::new(String::new());
                    std::io::stdin().read_line(&mut line)?;
                    zeroize::Zeroizing::new(line.trim().to_owned())
                }
            };
            subject(&hetu, json, &conn).await.map(|()| 0)
        }
    }
}

async fn export(out: &Path, conn: &Connection) -> anyhow::Result<()> {
    let mut audit = conn.audit().await?;
    let latest = audit
        .get_checkpoint(proto::GetCheckpointRequest { size: 0 })
        .await?
        .into_inner();
    let mut stream = audit
        .export(proto::ExportRequest {
            from_index: 0,
            to_index: latest.size,
        })
        .await?
        .into_inner();
    // The export lists every subject's pseudonyms: written 0600 beside `out`, renamed over it
    // once complete, so no one else can read it and no half-written export is left under its
    // name.
    let tmp = crate::private_file_beside(out)?;
    let mut w = BufWriter::new(tmp);
    let header = Line {
        format: Some(FORMAT.into()),
        origin: Some(latest.origin.clone()),
        entries: Some(latest.size),
        ..Line::default()
    };
    writeln!(w, "{}", serde_json::to_string(&header)?)?;
    let (mut entries, mut checkpoints) = (0u64, 0usize);
    while let Some(item) = stream.next().await {
        let line = match item?.item {
            Some(proto::export_item::Item::Entry(e)) => {
                entries += 1;
                Line {
                    index: Some(e.index),
                    entry: Some(STANDARD.encode(&e.entry)),
                    ..Line::default()
                }
            }
            Some(proto::export_item::Item::CheckpointNote(note)) => {
                checkpoints += 1;
                Line {
                    checkpoint: Some(note),
                    ..Line::default()
                }
            }
            Some(proto::export_item::Item::KeyHandoverNote(note)) => Line {
                key_handover: Some(note),
                ..Line::default()
            },
            None => continue,
        };
        writeln!(w, "{}", serde_json::to_string(&line)?)?;
    }
    let tmp = w.into_inner().map_err(|e| e.into_error())?;
    tmp.as_file().sync_all()?;
    tmp.persist(out)
        .with_context(|| format!("cannot write {}", out.display()))?;
    outln!(
        "wrote {entries} entries and {checkpoints} checkpoints of {} to {}",
        latest.origin,
        out.display()
    );
    outln!(
        "verify it offline with: silta audit verify {} --key '{}' --origin '{}'",
        out.display(),
        latest.verifier_key,
        latest.origin
    );
    outln!("(check that key against the one the operator publishes before trusting the result)");
    Ok(())
}

fn verify(path: &Path, key: &str, origin: &str, held: &[String]) -> anyhow::Result<i32> {
    let key = match std::fs::read_to_string(key) {
        Ok(text) => text.trim().to_owned(),
        Err(_) => key.to_owned(),
    };
    let verifier = NoteVerifier::parse(&key).map_err(|e| anyhow::anyhow!("--key: {e}"))?;
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let (mut entries, mut notes, mut handovers) = (Vec::new(), Vec::new(), Vec::new());
    let mut header: Option<(Option<String>, Option<u64>)> = None;
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line?;
        let at = || format!("{} line {}", path.display(), n + 1);
        let parsed: Line = match serde_json::from_str(&line) {
            Ok(parsed) => parsed,
            Err(e) => {
                outln!(
                    "FAILED: {}: not an export line ({e}): the file was cut off or edited",
                    at()
                );
                return Ok(1);
            }
        };
        if let Some(format) = parsed.format {
            if format != FORMAT {
                bail!(
                    "{}: unsupported export format {format} (expected {FORMAT})",
                    at()
                );
            }
            header = Some((parsed.origin, parsed.entries));
        } else if let (Some(index), Some(entry)) = (parsed.index, parsed.entry) {
            if index != entries.len() as u64 {
                outln!(
                    "FAILED: {} holds entry {index} where entry {} belongs: entries are missing or reordered",
                    at(),
                    entries.len()
                );
                return Ok(1);
            }
            match STANDARD.decode(entry) {
                Ok(bytes) => entries.push(bytes),
                Err(e) => {
                    outln!(
                        "FAILED: {}: the entry is not base64 ({e}): it was edited",
                        at()
                    );
                    return Ok(1);
                }
            }
        } else if let Some(note) = parsed.checkpoint {
            notes.push(note);
        } else if let Some(note) = parsed.key_handover {
            handovers.push(note);
        } else {
            bail!("{}: not an export line", at());
        }
    }
    if let Some((Some(exported), _)) = &header
        && exported != origin
    {
        outln!(
            "FAILED: the export is of log {exported:?}, not {origin:?}: pass --origin '{exported}' \
             if that is the log you mean to verify (and its key with --key)"
        );
        return Ok(1);
    }
    if let Some((_, Some(count))) = header
        && count != entries.len() as u64
    {
        outln!(
            "FAILED: the export's first line says it holds {count} entries but the file holds {}: \
             it was cut short or edited",
            entries.len()
        );
        return Ok(1);
    }
    let notes: Vec<&str> = notes.iter().chain(held).map(String::as_str).collect();
    let handovers: Vec<&str> = handovers.iter().map(String::as_str).collect();
    match verify_export_with_handovers(
        entries.iter().map(Vec::as_slice),
        &notes,
        &handovers,
        &verifier,
        origin,
    ) {
        // An export runs up to a checkpoint of exactly the size its first line names; that
        // checkpoint missing means the file lost its end at a line boundary.
        Ok(v) if header.is_some_and(|(_, count)| count.is_some_and(|c| v.anchored < c)) => {
            outln!(
                "FAILED: no checkpoint in the file vouches for all {} entries, as the export's \
                 last one did: its end was cut off or edited (the latest checkpoint found covers {})",
                v.entries,
                v.anchored
            );
            Ok(1)
        }
        Ok(v) => {
            outln!(
                "OK: {} entries and {} checkpoints of {origin} verify.",
                v.entries,
                v.checkpoints
            );
            outln!("    Root of all {} entries: {}.", v.entries, hex(&v.root));
            outln!(
                "    The latest checkpoint vouches for the first {} of them.",
                v.anchored
            );
            if v.entries > v.anchored {
                outln!(
                    "    Entries with index {} to {} came after it and are not vouched for yet: \
                     a later export, or a checkpoint kept from the gateway (--checkpoint), covers them.",
                    v.anchored,
                    v.entries - 1
                );
            }
            Ok(0)
        }
        Err(e) => {
            outln!("FAILED: {e}");
            Ok(1)
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn utc(t: Option<&prost_types::Timestamp>) -> String {
    t.and_then(|t| time::OffsetDateTime::from_unix_timestamp(t.seconds).ok())
        .map(|t| {
            format!(
                "{:04}-{:02}-{:02} {:02}:{:02}",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute()
            )
        })
        .unwrap_or_else(|| "—".to_owned())
}

async fn retention(json: bool, conn: &Connection) -> anyhow::Result<()> {
    let report = conn
        .audit()
        .await?
        .get_retention(proto::GetRetentionRequest {})
        .await?
        .into_inner();
    if json {
        let kinds: Vec<serde_json::Value> = report
            .kinds
            .iter()
            .map(|k| {
                serde_json::json!({
                    "kind": k.kind, "flow": (!k.flow_id.is_empty()).then_some(&k.flow_id),
                    "rule": k.rule, "kept_for_seconds": k.kept_for_seconds, "rows": k.rows,
                    "oldest": k.oldest.as_ref().map(|t| t.seconds), "due": k.due,
                })
            })
            .collect();
        outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "as_of": report.as_of.as_ref().map(|t| t.seconds),
                "kinds": kinds,
            }))?
        );
        return Ok(());
    }
    outln!("Retention as of {} UTC", utc(report.as_of.as_ref()));
    outln!(
        "{:<10} {:<28} {:>10} {:<18} {:>8}  rule",
        "kind",
        "flow",
        "rows",
        "oldest (UTC)",
        "due"
    );
    for k in &report.kinds {
        let flow = if k.flow_id.is_empty() {
            "—"
        } else {
            &k.flow_id
        };
        outln!(
            "{:<10} {:<28} {:>10} {:<18} {:>8}  {}",
            k.kind,
            flow,
            k.rows,
            utc(k.oldest.as_ref()),
            k.due,
            k.rule
        );
    }
    Ok(())
}

async fn subject(hetu: &str, json: bool, conn: &Connection) -> anyhow::Result<()> {
    // An empty code would ask the gateway for every entry: a report about everyone.
    if hetu.trim().is_empty() {
        anyhow::bail!("no identity code given: a disclosure report is about one resident");
    }
    let mut audit = conn.audit().await?;
    let mut rows = Vec::new();
    let mut start_index = 0;
    loop {
        let page = proto::AuditQueryRequest {
            subject_hetu: hetu.to_owned(),
            start_index,
            limit: 10_000,
            ..Default::default()
        };
        let mut stream = audit.query(page).await?.into_inner();
        let before = rows.len();
        while let Some(entry) = stream.next().await {
            let e = entry?;
            // Decode the canonical bytes ourselves: the report shows what the ledger holds.
            let decoded = Entry::decode(&e.entry)
                .map_err(|err| anyhow::anyhow!("entry {}: {err}", e.index))?;
            start_index = e.index + 1;
            rows.push((e.index, decoded));
        }
        if rows.len() - before < 10_000 {
            break;
        }
    }
    if json {
        let list: Vec<serde_json::Value> = rows
            .iter()
            .map(|(index, e)| {
                serde_json::json!({
                    "index": index, "time_ms": e.time_ms, "actor": e.actor_org, "role": e.actor_role,
                    "action": e.action, "flow": e.flow_id, "outcome": e.outcome, "reason": e.reason,
                    "policies": e.policy_ids, "fields": e.fields, "recipients": e.recipients,
                })
            })
            .collect();
        outln!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    outln!(
        "Disclosure report: {} ledger {} about this resident (identity code not shown).",
        rows.len(),
        if rows.len() == 1 { "entry" } else { "entries" }
    );
    outln!(
        "{:<6} {:<24} {:<16} {:<30} {:<6} {:<20} {:<18} fields",
        "entry",
        "time (UTC)",
        "by",
        "action",
        "",
        "reason",
        "received by"
    );
    for (index, e) in rows {
        let time =
            time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(e.time_ms) * 1_000_000)
                .map(|t| {
                    format!(
                        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
                        t.year(),
                        u8::from(t.month()),
                        t.day(),
                        t.hour(),
                        t.minute(),
                        t.second()
                    )
                })
                .unwrap_or_default();
        let recipients = if e.recipients.is_empty() {
            "—".to_owned()
        } else {
            e.recipients.join(", ")
        };
        let fields = if e.fields.is_empty() {
            "—".to_owned()
        } else {
            e.fields.join(", ")
        };
        outln!(
            "{index:<6} {time:<24} {:<16} {:<30} {:<6} {:<20} {recipients:<18} {fields}",
            e.actor_org,
            e.action,
            e.outcome,
            e.reason
        );
    }
    Ok(())
}
