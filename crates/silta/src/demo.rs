//! `silta demo`: the real gateway on loopback, a throw-away SQLite file, fresh dev
//! certificates, and a landlord and a social-services client talking mTLS gRPC to it.
//! Prints each step and whether it behaved; returns `false` if any step did not.

use std::time::Duration;

use anyhow::Context;
use silta_core::MasterSecret;
use silta_server::proto::audit_client::AuditClient;
use silta_server::proto::landlord_client::LandlordClient;
use silta_server::proto::social_services_client::SocialServicesClient;
use silta_server::proto::{self, ArrearsBand, EvictionStage};
use silta_server::{Config, client, devpki};
use tokio_stream::StreamExt;

use crate::output::{out, outln};

/// Synthetic identity codes (individual numbers 900–999: no real person has them).
const RESIDENT: &str = "150385-9345";
const NOT_A_CLIENT: &str = "020702A9514";

struct Steps {
    ok: bool,
    n: usize,
}

impl Steps {
    fn check(&mut self, what: &str, passed: bool) {
        outln!("  {} {what}", if passed { "✔" } else { "✘ UNEXPECTED:" });
        self.ok &= passed;
    }

    fn title(&mut self, text: &str) {
        self.n += 1;
        outln!("\n{}. {text}", self.n);
    }
}

fn ts(t: time::OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.unix_timestamp(),
        nanos: 0,
    }
}

fn report(key: &str, hetu: &str) -> proto::ReportRentArrearsRequest {
    proto::ReportRentArrearsRequest {
        idempotency_key: key.into(),
        hetu: hetu.into(),
        tenancy_ref: "KALLIO-12-B-34".into(),
        arrears_cents: 184_250,
        months_overdue: 3,
        eviction_stage: EvictionStage::Warning.into(),
        landlord_contact_office: "Kallio customer service".into(),
        free_text_note: "Tenant mentioned losing their job in September.".into(),
        purpose: "eviction-prevention".into(),
        legal_basis: "gdpr-6-1-a-consent".into(),
    }
}

/// Runs the demo; `Ok(true)` when every step behaved as expected. With `keep_running`, then
/// serves the gateway and the DPO console on the demo's store until Ctrl-C.
pub async fn run(keep_running: bool) -> anyhow::Result<bool> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let callers = crate::default_callers();
    let pki = devpki::mint("silta demo CA", "silta.local", &callers)?;
    pki.write_to(dir.path())?;
    let mut config = Config::default();
    config.store.url = format!("sqlite://{}", dir.path().join("silta.db").display());
    config.tls.cert = dir.path().join("server.pem");
    config.tls.key = dir.path().join("server.key");
    config.tls.client_ca = dir.path().join("ca.pem");
    config.hetu.allow_temporary = true; // the demo's codes are synthetic, from the 900–999 range
    config.tuning.delivery_poll_ms = 200;
    config.ledger.checkpoint_every = 1; // so the DPO step below has a fresh checkpoint at once
    // The DPO's console in a browser (docs/console.md), on a free loopback port.
    config.console.listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    // helsinki-social is the statutory recipient of eviction-enforcement-notice, which tells it
    // who the resident is: it makes its key pair, and silta is configured with the public half.
    let recipient_keys = dir.path().join("helsinki-social-hpke");
    let recipient_entry = crate::recipient_keypair(&recipient_keys, "helsinki-social")?;
    config
        .statutory_recipients
        .push(silta_server::config::StatutoryRecipient {
            org: "helsinki-social".to_owned(),
            hpke_public_key: None,
            hpke_public_key_file: Some(recipient_keys.join("hpke-public.key")),
        });
    let mut secret = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
        .map_err(|_| anyhow::anyhow!("system random generator failed"))?;
    let secret_bytes = secret;
    let secret = MasterSecret::from_bytes(&secret_bytes)?;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let gateway = silta_server::start(&config, secret, listener).await?;
    let addr = gateway.local_addr;
    outln!(
        "silta demo: gateway on https://{addr} (mTLS), store {}",
        config.store.url
    );
    if let Some(console) = gateway.console_addr {
        outln!(
            "  the DPO console on https://localhost:{}/ (client certificate of role dpo)",
            console.port()
        );
    }
    outln!("  certificates minted in {} for:", dir.path().display());
    for (c, _) in &pki.clients {
        outln!("    {} ({})", c.org, c.role);
    }

    let pem = |org: &str| {
        pki.clients
            .iter()
            .find(|(c, _)| c.org.as_str() == org)
            .map(|(_, p)| p.clone())
            .context("minted above")
    };
    let (ll, ss) = (pem("city-housing")?, pem("helsinki-social")?);
    let mut landlord =
        LandlordClient::new(client::connect(addr, &pki.ca_cert, &ll.cert, &ll.key).await?);
    let mut social =
        SocialServicesClient::new(client::connect(addr, &pki.ca_cert, &ss.cert, &ss.key).await?);
    let mut s = Steps { ok: true, n: 0 };

    s.title("helsinki-social enrols a client who consented (purpose eviction-prevention)");
    let now = time::OffsetDateTime::now_utc();
    let enrolled = social
        .enrol_client(proto::EnrolClientRequest {
            hetu: RESIDENT.into(),
            consent: Some(proto::Consent {
                purpose: "eviction-prevention".into(),
                given_at: Some(ts(now - time::Duration::minutes(10))),
                valid_until: Some(ts(now + time::Duration::days(365))),
                evidence_ref: "SOS-2026-000123".into(),
                notice_version: "2026-01".into(),
                share_outcome_with_landlord: true,
            }),
        })
        .await?
        .into_inner();
    let receipt = enrolled.receipt.clone().unwrap_or_default();
    outln!(
        "  client pseudonym (helsinki-social's own domain): {}",
        enrolled.subject_pseudonym
    );
    outln!("  consent id: {}", enrolled.consent_id);
    let verified = ring::signature::UnparsedPublicKey::new(
        &ring::signature::ED25519,
        &receipt.signing_public_key,
    )
    .verify(&receipt.payload, &receipt.signature)
    .is_ok();
    s.check(
        "consent receipt is signed by the gateway and verifies (Ed25519)",
        verified,
    );
    s.check(
        "the pseudonym is not the identity code",
        !enrolled.subject_pseudonym.contains(&RESIDENT[..6]),
    );

    let mut alerts = social
        .subscribe_alerts(proto::SubscribeAlertsRequest { after_sequence: 0 })
        .await?
        .into_inner();

    s.title("city-housing reports rent arrears for that resident");
    let sent = report("demo-report-1", RESIDENT);
    let receipt1 = landlord
        .report_rent_arrears(sent.clone())
        .await?
        .into_inner();
    outln!("  receipt: report {} (durably stored)", receipt1.report_id);
    let alert = tokio::time::timeout(Duration::from_secs(5), alerts.next())
        .await
        .ok()
        .flatten()
        .transpose()?;
    s.check(
        "the decision: forwarded, the resident's consent covers this flow",
        alert.is_some(),
    );
    let Some(alert) = alert else {
        gateway.shutdown().await?;
        return Ok(false);
    };

    s.title("what the landlord sent, and what crossed to social services");
    let details = match &alert.details {
        Some(proto::alert::Details::RentArrears(d)) => *d,
        _ => proto::RentArrearsDetails::default(),
    };
    let band = ArrearsBand::try_from(details.arrears_band.unwrap_or_default()).unwrap_or_default();
    let unset = || "— (not declared)".to_owned();
    let stage = |v: i32| {
        EvictionStage::try_from(v)
            .unwrap_or_default()
            .as_str_name()
            .to_owned()
    };
    let rows = [
        (
            "identity code",
            format!("{RESIDENT} (synthetic)"),
            format!("{} (own pseudonym)", alert.subject_pseudonym),
        ),
        (
            "tenancy reference",
            sent.tenancy_ref.clone(),
            format!("{} (opaque case ref)", alert.case_ref),
        ),
        (
            "arrears",
            format!("{:.2} €", sent.arrears_cents as f64 / 100.0),
            band.as_str_name().to_owned(),
        ),
        (
            "months overdue",
            sent.months_overdue.to_string(),
            details.months_overdue.map_or_else(unset, |m| m.to_string()),
        ),
        (
            "eviction stage",
            stage(sent.eviction_stage),
            stage(details.eviction_stage.unwrap_or_default()),
        ),
        (
            "contact office",
            sent.landlord_contact_office.clone(),
            alert.landlord_contact_office.clone().unwrap_or_else(unset),
        ),
        (
            "free-text note",
            sent.free_text_note.clone(),
            "— (never crosses)".to_owned(),
        ),
        (
            "report month",
            "—".to_owned(),
            alert.report_month.clone().unwrap_or_else(unset),
        ),
    ];
    let (f, a, b) = ("field", "landlord sent", "social services received");
    outln!("  {f:<18} {a:<50} {b}");
    for (f, a, b) in &rows {
        outln!("  {f:<18} {a:<50} {b}");
    }
    s.check(
        "the alert carries the pseudonym returned at enrolment",
        alert.subject_pseudonym == enrolled.subject_pseudonym,
    );
    s.check(
        "the exact sum became a band (1,500–5,000 €)",
        band == ArrearsBand::ArrearsBand1500To5000,
    );
    let crossed = format!("{alert:?}");
    s.check(
        "no identity code, tenancy reference, exact sum or free text crossed",
        !crossed.contains(&RESIDENT[..6])
            && !crossed.contains(&sent.tenancy_ref)
            && !crossed.contains("184250")
            && !crossed.contains("job"),
    );

    s.title("helsinki-social acknowledges the alert, then reconnects with its cursor");
    let acked = social
        .ack_alerts(proto::AckAlertsRequest {
            up_to_sequence: alert.sequence,
            sequences: vec![],
        })
        .await?
        .into_inner();
    s.check("acknowledged one alert", acked.acknowledged == 1);
    drop(alerts);
    let mut again = social
        .subscribe_alerts(proto::SubscribeAlertsRequest {
            after_sequence: alert.sequence,
        })
        .await?
        .into_inner();
    let nothing = tokio::time::timeout(Duration::from_millis(500), again.next())
        .await
        .is_err();
    s.check("nothing is redelivered after the acknowledgement", nothing);

    s.title("a retry of the same report (same idempotency key) returns the same receipt");
    let retry = landlord
        .report_rent_arrears(sent.clone())
        .await?
        .into_inner();
    s.check("same receipt, no duplicate alert", retry == receipt1);

    s.title("a report about someone who is not a social-services client");
    let other = landlord
        .report_rent_arrears(report("demo-report-2", NOT_A_CLIENT))
        .await?
        .into_inner();
    s.check(
        "accepted with a receipt of the same shape: client status is not revealed",
        !other.report_id.is_empty() && other.received_at.is_some(),
    );

    s.title("the client withdraws consent");
    let withdrawn = social
        .withdraw_consent(proto::WithdrawConsentRequest {
            target: Some(proto::withdraw_consent_request::Target::ConsentId(
                enrolled.consent_id.clone(),
            )),
        })
        .await?
        .into_inner();
    s.check(
        "the consent is withdrawn at once",
        withdrawn.withdrawn_consent_ids == [enrolled.consent_id.clone()],
    );

    s.title("city-housing reports again for the same resident");
    let after = landlord
        .report_rent_arrears(report("demo-report-3", RESIDENT))
        .await?
        .into_inner();
    s.check(
        "accepted, with the same receipt shape",
        !after.report_id.is_empty(),
    );
    let silent = tokio::time::timeout(Duration::from_millis(700), again.next())
        .await
        .is_err();
    s.check("not forwarded: no valid consent", silent);
    drop(again);

    s.title(
        "a statutory notice (SHL 35 §, no consent): an eviction's enforcement is set for someone who never enrolled",
    );
    outln!(
        "  helsinki-social made its key pair; silta's configuration holds only the public half:"
    );
    for line in recipient_entry.lines() {
        outln!("    {line}");
    }
    let enforcement_date = (time::OffsetDateTime::now_utc() + time::Duration::days(40)).date();
    landlord
        .report_eviction_stage(proto::ReportEvictionStageRequest {
            idempotency_key: "demo-statutory-1".into(),
            hetu: NOT_A_CLIENT.into(),
            tenancy_ref: "VALLILA-3-A-7".into(),
            purpose: "eviction-prevention".into(),
            legal_basis: "fi-shl-35-notification".into(),
            eviction_stage: EvictionStage::EnforcementScheduled.into(),
            stage_date: enforcement_date.to_string(),
            landlord_contact_office: "Kallio customer service".into(),
        })
        .await?;
    let mut statutory = social
        .subscribe_alerts(proto::SubscribeAlertsRequest {
            after_sequence: alert.sequence,
        })
        .await?
        .into_inner();
    let notice = tokio::time::timeout(Duration::from_secs(5), statutory.next())
        .await
        .ok()
        .flatten()
        .transpose()?;
    drop(statutory);
    let opened = notice.as_ref().and_then(|n| {
        let sealed = n.sealed_identity.as_ref()?;
        outln!(
            "  alert {} ({}): subject {}, sealed identity: {} bytes, key {}, {}",
            n.alert_id,
            n.flow_id,
            n.subject_pseudonym,
            sealed.ciphertext.len(),
            sealed.key_id,
            sealed.suite
        );
        let private = std::fs::read_to_string(recipient_keys.join("hpke-private.key")).ok()?;
        let sealed = silta_core::sealed::SealedIdentity {
            suite: sealed.suite.clone(),
            key_id: sealed.key_id.clone(),
            enc: sealed.enc.clone(),
            ciphertext: sealed.ciphertext.clone(),
        };
        silta_core::sealed::open(
            &private,
            &sealed,
            &n.flow_id,
            "helsinki-social",
            &n.alert_id,
        )
        .ok()
    });
    // The demo's code is synthetic; a real recipient would not print it.
    if let Some(code) = &opened {
        outln!(
            "  helsinki-social opens it with its private key: {}",
            code.as_str()
        );
    }
    s.check(
        "the statutory notice reached helsinki-social without consent",
        notice
            .as_ref()
            .is_some_and(|n| n.flow_id == "eviction-enforcement-notice"),
    );
    s.check(
        "the recipient opened the sealed identity: it is the resident's code",
        opened.as_ref().is_some_and(|c| c.as_str() == NOT_A_CLIENT),
    );
    if let Some(n) = &notice {
        let acked = social
            .ack_alerts(proto::AckAlertsRequest {
                up_to_sequence: n.sequence,
                sequences: vec![],
            })
            .await?
            .into_inner();
        s.check("acknowledged", acked.acknowledged == 1);
    }

    s.title("the DPO answers the resident's access request from the audit ledger");
    let dpo = pem("dpo-office")?;
    let mut audit =
        AuditClient::new(client::connect(addr, &pki.ca_cert, &dpo.cert, &dpo.key).await?);
    let mut checkpoint = None;
    for _ in 0..100 {
        if let Ok(c) = audit
            .get_checkpoint(proto::GetCheckpointRequest { size: 0 })
            .await
        {
            checkpoint = Some(c.into_inner());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let query = proto::AuditQueryRequest {
        subject_hetu: RESIDENT.into(),
        ..Default::default()
    };
    let entries: Vec<proto::AuditEntry> = audit
        .query(query)
        .await?
        .into_inner()
        .collect::<Result<_, _>>()
        .await?;
    outln!(
        "  {:<5} {:<32} {:<7} {:<18} received by",
        "entry",
        "action",
        "result",
        "reason"
    );
    for e in &entries {
        let to = if e.recipients.is_empty() {
            "—".to_owned()
        } else {
            format!("{} ({} fields)", e.recipients.join(", "), e.fields.len())
        };
        outln!(
            "  {:<5} {:<32} {:<7} {:<18} {to}",
            e.index,
            e.action,
            e.outcome,
            e.reason
        );
    }
    let reasons: Vec<&str> = entries.iter().map(|e| e.reason.as_str()).collect();
    s.check(
        "the ledger shows the enrolment, the disclosure, the withdrawal and the report not forwarded",
        ["consent-recorded", "disclosed", "consent-withdrawn", "not-disclosed"].iter().all(|r| reasons.contains(r)),
    );
    s.check(
        "no ledger entry holds the identity code",
        !format!("{entries:?}").contains(&RESIDENT[..6]),
    );
    let disclosed: Vec<proto::AuditEntry> = audit
        .query(proto::AuditQueryRequest {
            subject_hetu: NOT_A_CLIENT.into(),
            flow_id: "eviction-enforcement-notice".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .collect::<Result<_, _>>()
        .await?;
    for e in &disclosed {
        outln!(
            "  the other resident's report: entry {} {} {} to {} on {}, fields: {}",
            e.index,
            e.action,
            e.reason,
            e.recipients.join(", "),
            e.flow_id,
            e.fields.join(", ")
        );
    }
    s.check(
        "that resident's access report shows their identity disclosed, to whom, on the statutory basis",
        disclosed.iter().any(|e| {
            e.reason == "disclosed-statutory"
                && e.recipients == ["helsinki-social"]
                && e.fields.iter().any(|f| f == "identity_sealed")
        }),
    );
    let verified = match checkpoint {
        Some(c) => {
            let mut items = audit
                .export(proto::ExportRequest {
                    from_index: 0,
                    to_index: c.size,
                })
                .await?
                .into_inner();
            let (mut leaves, mut notes) = (Vec::new(), Vec::new());
            while let Some(item) = items.next().await {
                match item?.item {
                    Some(proto::export_item::Item::Entry(e)) => leaves.push(e.entry),
                    Some(proto::export_item::Item::CheckpointNote(n)) => notes.push(n),
                    // The demo's fresh keyring has one version: no handovers.
                    Some(proto::export_item::Item::KeyHandoverNote(_)) | None => {}
                }
            }
            let verifier =
                silta_ledger::checkpoint::NoteVerifier::parse(&gateway.checkpoint_verifier_key)?;
            let notes: Vec<&str> = notes.iter().map(String::as_str).collect();
            silta_ledger::verify::verify_export(leaves.iter().map(Vec::as_slice), &notes, &verifier, &config.ledger.origin)
                .map(|v| {
                    outln!("  exported {} entries; every one hashes into the root the signed checkpoint vouches for", v.entries);
                    true
                })
                .unwrap_or(false)
        }
        None => false,
    };
    s.check("the exported ledger verifies against the gateway's signed checkpoint (as `silta audit verify` does offline)", verified);

    s.title("the DPO's console in a browser (docs/console.md)");
    if let Some(console) = gateway.console_addr {
        let (dpo, landlord) = (pem("dpo-office")?, pem("city-housing")?);
        let mut answers = Vec::new();
        for who in [&dpo, &landlord] {
            let identity = Some((who.cert.as_str(), who.key.as_str()));
            answers
                .push(silta_server::client::https_get(console, &pki.ca_cert, identity, "/").await);
        }
        let refused = answers.pop().context("two answers")?;
        let shown = answers.pop().context("two answers")?;
        outln!(
            "  GET https://localhost:{}/ as dpo-office: {}; as city-housing: {}",
            console.port(),
            shown
                .as_ref()
                .map_or_else(ToString::to_string, |r| r.status.to_string()),
            refused
                .as_ref()
                .map_or_else(ToString::to_string, |r| r.status.to_string()),
        );
        s.check(
            "the console shows the DPO the ledger and refuses a landlord's certificate (403)",
            shown.is_ok_and(|r| r.status == 200 && r.body.contains("Entries in the ledger"))
                && refused.is_ok_and(|r| r.status == 403),
        );
    }

    gateway.shutdown().await?;

    s.title("storage limitation: the demo's store as it will be 100 days from now");
    let store = silta_server::open_store(&config.store).await?;
    let policies = silta_server::policy_source::PolicyHandle::open(config.policy.dir.clone())
        .map_err(|e| anyhow::anyhow!("policies: {e}"))?;
    let later = time::OffsetDateTime::now_utc() + time::Duration::days(100);
    let before =
        silta_server::retention::status(&*store, &policies, &config.retention, later).await?;
    let purged =
        silta_server::retention::purge(&*store, &policies, &config.retention, later).await?;
    let after =
        silta_server::retention::status(&*store, &policies, &config.retention, later).await?;
    outln!(
        "  {:<10} {:<22} {:>6} {:>7}  rule",
        "kind",
        "flow",
        "rows",
        "after"
    );
    for b in &before {
        // A flow whose messages all went is no longer listed afterwards.
        let left = after
            .iter()
            .find(|a| a.kind == b.kind && a.flow_id == b.flow_id)
            .map_or(0, |a| a.count.rows);
        outln!(
            "  {:<10} {:<22} {:>6} {:>7}  {}",
            b.kind,
            b.flow_id.as_deref().unwrap_or("—"),
            b.count.rows,
            left,
            b.rule
        );
    }
    outln!(
        "  purged {} messages, {} report rows, {} consents, {} cases; each chunk is a RetentionPurge ledger entry",
        purged.messages,
        purged.reports,
        purged.consents,
        purged.cases
    );
    s.check(
        "a purge of each record kind: messages, report rows, consents and cases all went",
        purged.messages > 0 && purged.reports > 0 && purged.consents > 0 && purged.cases > 0,
    );
    s.check(
        "nothing is left that a rule says must go (a consent still valid stays)",
        after.iter().all(|k| k.count.due == 0),
    );

    s.title("programme statistics of this run (docs/statistics.md)");
    // Released only once a month has closed; the demo shows its own month as it would be.
    let month = silta_core::stats::Month::of(time::OffsetDateTime::now_utc());
    let cells = store.stat_cells(month).await?;
    let counted: i64 = cells
        .iter()
        .filter(|c| c.key.month == month && c.key.measure == silta_core::stats::Measure::Reports)
        .map(|c| c.n)
        .sum();
    let release =
        silta_server::statistics::release_month(&cells, month, config.statistics.threshold);
    let reports = release.tables.iter().find(|t| t.id == "reports");
    if let Some(t) = reports {
        out!(
            "{}",
            silta_server::stats_render::text(&month.to_string(), std::slice::from_ref(t))
        );
    }
    outln!(
        "  {counted} reports counted; the purge above deleted their rows, the counters stay. The demo \
         is small: every count under {} is suppressed (..), with enough others that none can be \
         recomputed from the totals. `silta stats --month YYYY-MM` releases a closed month.",
        release.threshold
    );
    s.check(
        "the counters outlive the purged records, and a small run's counts are suppressed",
        counted > 0
            && reports.is_some_and(|t| {
                t.cells
                    .iter()
                    .flatten()
                    .any(|v| *v == silta_core::disclosure::Shown::Suppressed)
            }),
    );
    store.close().await;

    outln!(
        "\n{}",
        if s.ok {
            "demo passed: every step behaved as expected."
        } else {
            "demo FAILED: see the steps marked ✘ above."
        }
    );
    if keep_running {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let gateway =
            silta_server::start(&config, MasterSecret::from_bytes(&secret_bytes)?, listener)
                .await?;
        let d = dir.path().display();
        outln!(
            "\nthe gateway is up again on https://{}, on the demo's store",
            gateway.local_addr
        );
        if let Some(console) = gateway.console_addr {
            outln!(
                "the DPO console: https://localhost:{}/\n  import the DPO's certificate into the \
                 browser: openssl pkcs12 -export -in {d}/dpo-office.pem -inkey {d}/dpo-office.key \
                 -out dpo.p12 -passout pass:\n  and trust the demo CA {d}/ca.pem for websites",
                console.port()
            );
        }
        outln!("Ctrl-C stops it and removes the demo's files.");
        tokio::signal::ctrl_c().await?;
        gateway.shutdown().await?;
    }

    Ok(s.ok)
}
