//! The group committer: one task that writes reports and denial records in batches.
//!
//! Requests are validated, pseudonymised and minimised in parallel by their own tasks, then
//! queued here. The committer takes every queued job (up to `max_batch`), applies them in one
//! transaction (deciding each report against the consents as stored in that transaction) and
//! answers each caller only after the commit is durable. Under load one fsync covers many
//! reports; when idle a lone report is committed at once, with no added wait.

use std::sync::Arc;

use silta_core::audit::{AuditRecord, Outcome};
use silta_core::policy::{ConsentStatus, ConsentView, DecisionInput, Policies};
use silta_core::report::EvictionStage;
use silta_core::stats::{CellKey, Measure, Month, delay_bucket, months_bucket};
use silta_core::{Domain, Hetu, OrgId, PseudonymSet, Pseudonymiser};

use crate::sealing::RecipientKeys;
use silta_store::{Lookups, NewAlert, NewCase, NewReport, Store, StoreError, WriteTx};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::delivery::Notifier;
use crate::gateway::{Receipt, RequestContext};
use crate::metrics::DecisionLabels;
use crate::status::ApiError;

/// Work for the committer.
pub(crate) enum Job {
    /// A validated message to decide and store.
    Message(Box<MessageJob>, oneshot::Sender<Answered>),
    /// A decision that writes nothing else (a denial, a DPO's query) to record.
    Audit {
        record: Box<AuditRecord>,
        reply: oneshot::Sender<Result<(), ApiError>>,
    },
    /// A recipient's acknowledgement of its outbox messages: committed with the batch rather
    /// than in a transaction of its own, so it neither holds the write lock while reports wait
    /// nor costs an fsync of its own. Answers how many messages it acknowledged.
    Ack {
        recipient: OrgId,
        up_to: u64,
        seqs: Vec<u64>,
        reply: oneshot::Sender<Result<u64, ApiError>>,
    },
    /// A checkpoint the checkpointer signed with key `version`, stored with the batch rather
    /// than in a transaction and fsync of its own (which held the write lock while reports
    /// waited). Stored only if `version` is still the one in use inside the batch's
    /// transaction: a key handover committed since the checkpointer read it means the note
    /// names the wrong key, and the answer is `false` (sign again).
    Checkpoint {
        version: u32,
        size: u64,
        root: silta_ledger::Hash,
        note: String,
        reply: oneshot::Sender<Result<bool, ApiError>>,
    },
}

/// A message's answer, with the job handed back so that its request task frees it. The job
/// was allocated on a request thread; freeing it here took that thread's allocator arena lock,
/// and the committer, the serial section, sometimes slept on it.
pub(crate) struct Answered {
    pub result: Result<Receipt, ApiError>,
    pub job: Box<MessageJob>,
    /// How many jobs the transaction that answered it held.
    pub batch_size: usize,
}

/// Where a message goes.
pub(crate) enum Route {
    /// A landlord's report, to social services: about the resident with this identity code
    /// (kept only to derive each recipient's pseudonym) in this tenancy.
    /// For a flow that discloses identity, the code is also sealed to each recipient's key.
    ToSocialServices {
        hetu: Hetu,
        tenancy_ref: String,
        recipient_keys: Arc<RecipientKeys>,
    },
    /// A support notice, to the landlord of a case, under its own tenancy reference.
    ToLandlord {
        landlord: OrgId,
        tenancy_ref: String,
        /// silta's reference of the case it answers, to count the case's first notice.
        case_ref: String,
    },
}

/// What the statistics count about a message beyond its ledger entry: values the ledger, which
/// keeps field names and never values, does not hold.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct StatFacts {
    /// A rent-arrears report's months overdue.
    pub months_overdue: Option<u32>,
    /// A support notice's outcome code.
    pub notice_outcome: Option<&'static str>,
}

/// A message, validated, minimised and pre-checked, ready to decide and commit.
pub(crate) struct MessageJob {
    pub ctx: RequestContext,
    /// The policy set the request started with.
    pub policies: Arc<Policies>,
    pub flow_id: String,
    pub purpose: String,
    pub legal_basis: String,
    pub eviction_stage: Option<EvictionStage>,
    pub facts: StatFacts,
    /// The span of the caller's wait for the commit: the decision's span is its child.
    pub span: tracing::Span,
    pub idempotency_key: String,
    pub route: Route,
    /// The resident in the lookup domain, under each key version: finds the consents.
    pub lookup: PseudonymSet,
    /// The resident in the audit domain, under each key version.
    pub audit: PseudonymSet,
    pub fingerprint: [u8; 32],
    /// The minimised fields, JSON.
    pub payload: String,
    /// The names of the fields `payload` carries, for the audit record: an optional field the
    /// message left empty does not cross, so it is not listed as disclosed.
    pub fields: Vec<String>,
    pub received_at: OffsetDateTime,
}

/// Who hears of a committed batch: subscribers (per organisation), the checkpointer, metrics.
pub(crate) struct AfterCommit {
    pub notifier: Arc<Notifier>,
    /// The ledger's size after the batch, for the checkpointer: it need not read it back.
    pub appended: tokio::sync::watch::Sender<u64>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// Starts the committer; the receiver resolves when it has returned (an error if it panicked
/// or could not start).
///
/// For a store whose writes run on the calling thread ([`Store::synchronous_writes`], SQLite)
/// it gets a thread of its own with a single-threaded runtime: its statements must not hold an
/// async worker, and on the shared runtime its every wake-up queued behind the request tasks
/// of a busy worker, while every report waits for it. Any other store's committer is an
/// ordinary task: its connections belong to the shared runtime, and one opened from another
/// runtime would stop working when that runtime ends.
pub(crate) fn spawn(
    store: &dyn Store,
    committer: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<oneshot::Receiver<()>> {
    let (ended, done) = oneshot::channel();
    if !store.synchronous_writes() {
        tokio::spawn(async move {
            committer.await;
            let _ = ended.send(());
        });
        return Ok(done);
    }
    // Log lines from the committer go where the caller's go (tests capture them per thread).
    let dispatch = tracing::dispatcher::get_default(Clone::clone);
    std::thread::Builder::new()
        .name("silta-committer".to_owned())
        .spawn(move || {
            // Built here, not by the caller: a runtime may not be dropped inside another.
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    tracing::error!(error = %e, "the committer's runtime could not be built");
                    return;
                }
            };
            tracing::dispatcher::with_default(&dispatch, || runtime.block_on(committer));
            let _ = ended.send(());
        })?;
    Ok(done)
}

/// Runs until `stop` is cancelled (or every sender is gone), then commits the jobs already
/// queued and returns. Jobs sent after `stop` are refused at the queue, so their callers answer
/// `UNAVAILABLE` and retry elsewhere; nothing that was acknowledged is lost.
pub(crate) async fn run(
    store: Arc<dyn Store>,
    pseudonymiser: Pseudonymiser,
    mut jobs: mpsc::Receiver<Job>,
    max_batch: usize,
    stop: CancellationToken,
    after: AfterCommit,
) {
    let AfterCommit {
        notifier,
        appended,
        metrics,
    } = after;
    let max_batch = max_batch.max(1);
    let mut batch = Vec::with_capacity(max_batch);
    loop {
        let received = tokio::select! {
            biased;
            n = jobs.recv_many(&mut batch, max_batch) => n,
            () = stop.cancelled(), if !jobs.is_closed() => {
                jobs.close();
                continue;
            }
        };
        if received == 0 {
            return;
        }
        metrics
            .commit_queue
            .set(i64::try_from(jobs.len()).unwrap_or(i64::MAX));
        let mut fx = Effects::default();
        let started = std::time::Instant::now();
        let outcome = apply_batch(&*store, &pseudonymiser, &batch, &mut fx).await;
        metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        metrics.batch_size.observe(batch.len() as f64);
        match outcome {
            Ok(answers) => {
                let batch_size = batch.len();
                for (job, answer) in batch.drain(..).zip(answers) {
                    reply(job, Some(answer), batch_size);
                }
                for (org, seq) in fx.woken {
                    notifier.notify(&org, seq);
                }
                // Counted once committed: a batch that fails is retried and decided again.
                for labels in fx.decided {
                    metrics.decisions.get_or_create(&labels).inc();
                }
                if let Some(size) = fx.ledger_size {
                    appended.send_replace(size);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, jobs = batch.len(), "group commit failed; callers may retry");
                let batch_size = batch.len();
                for job in batch.drain(..) {
                    reply(job, None, batch_size);
                }
            }
        }
    }
}

/// What a batch did besides answering its callers, acted on once it is committed.
#[derive(Default)]
struct Effects {
    /// (recipient, sequence number) of each alert written: whom to wake.
    woken: Vec<(OrgId, u64)>,
    decided: Vec<DecisionLabels>,
    /// The ledger's size after the batch's last audit entry, if it appended any.
    ledger_size: Option<u64>,
}

impl Effects {
    /// Appends `record` to the ledger in `tx` and remembers the size it leaves.
    async fn audit(
        &mut self,
        tx: &mut dyn WriteTx,
        record: &AuditRecord,
    ) -> Result<(), StoreError> {
        let seq = tx.append_audit(record).await?;
        self.ledger_size = Some(seq + 1);
        Ok(())
    }
}

/// What one job's caller gets once the batch is committed.
enum Answer {
    Receipt(Result<Receipt, ApiError>),
    Recorded,
    Acked(u64),
    Checkpointed(bool),
}

/// Answers a job's caller; `None` means the batch did not commit.
fn reply(job: Job, answer: Option<Answer>, batch_size: usize) {
    // A caller that gave up has dropped its receiver; its work is committed all the same.
    match (job, answer) {
        (Job::Message(job, reply), Some(Answer::Receipt(result))) => {
            let _ = reply.send(Answered {
                result,
                job,
                batch_size,
            });
        }
        (Job::Message(job, reply), _) => {
            let _ = reply.send(Answered {
                result: Err(ApiError::Unavailable),
                job,
                batch_size,
            });
        }
        (Job::Audit { reply, .. }, Some(Answer::Recorded)) => {
            let _ = reply.send(Ok(()));
        }
        (Job::Audit { reply, .. }, _) => {
            let _ = reply.send(Err(ApiError::Unavailable));
        }
        (Job::Ack { reply, .. }, Some(Answer::Acked(n))) => {
            let _ = reply.send(Ok(n));
        }
        (Job::Ack { reply, .. }, _) => {
            let _ = reply.send(Err(ApiError::Unavailable));
        }
        (Job::Checkpoint { reply, .. }, Some(Answer::Checkpointed(stored))) => {
            let _ = reply.send(Ok(stored));
        }
        (Job::Checkpoint { reply, .. }, _) => {
            let _ = reply.send(Err(ApiError::Unavailable));
        }
    }
}

async fn apply_batch(
    store: &dyn Store,
    p: &Pseudonymiser,
    batch: &[Job],
    fx: &mut Effects,
) -> Result<Vec<Answer>, StoreError> {
    let mut tx = store.begin().await?;
    let version = version_in_use(&mut *tx, p).await?;
    // Every idempotency key and resident the batch will look up, read in one go.
    let messages = || {
        batch.iter().filter_map(|job| match job {
            Job::Message(j, _) => Some(j),
            Job::Audit { .. } | Job::Ack { .. } | Job::Checkpoint { .. } => None,
        })
    };
    let lookups = Lookups {
        reports: messages()
            .map(|j| (&j.ctx.caller.org, j.idempotency_key.as_str()))
            .collect(),
        consents: messages()
            .filter_map(|j| {
                let key = j.lookup.at(version)?;
                Some((key, j.policies.flow(&j.flow_id)?.purpose.as_str()))
            })
            .collect(),
    };
    tx.prefetch(&lookups).await?;
    let mut results = Vec::with_capacity(batch.len());
    for job in batch {
        results.push(match job {
            Job::Message(j, _) => {
                Answer::Receipt(apply_message(&mut *tx, p, version, j, fx).await?)
            }
            Job::Audit { record, .. } => {
                fx.audit(&mut *tx, record).await?;
                Answer::Recorded
            }
            Job::Ack {
                recipient,
                up_to,
                seqs,
                ..
            } => Answer::Acked(
                tx.ack_alerts(recipient, *up_to, seqs, OffsetDateTime::now_utc())
                    .await?,
            ),
            Job::Checkpoint {
                version: signed_with,
                size,
                root,
                note,
                ..
            } => {
                let current = *signed_with == version;
                if current {
                    tx.append_checkpoint(*size, root, note, OffsetDateTime::now_utc())
                        .await?;
                }
                Answer::Checkpointed(current)
            }
        });
    }
    tx.commit().await?;
    Ok(results)
}

/// The pseudonym key version records are written under, as the store says in `tx`.
pub(crate) async fn version_in_use(
    tx: &mut dyn WriteTx,
    p: &Pseudonymiser,
) -> Result<u32, StoreError> {
    let version = tx
        .pseudonym_version()
        .await?
        .unwrap_or_else(|| p.first_version());
    if !p.has_version(version) {
        p.observe_missing(version);
        return Err(lacks_version(p, version));
    }
    p.observe(version);
    Ok(version)
}

fn lacks_version(p: &Pseudonymiser, version: u32) -> StoreError {
    tracing::error!(
        version,
        keyring_latest = p.latest_version(),
        "the store uses a pseudonym key version this node's keyring lacks: install the rotated keyring on this node and restart it"
    );
    StoreError::Corrupt(format!(
        "pseudonym key v{version} is not in this node's keyring"
    ))
}

/// Decides one message against the consents as stored in this transaction and writes the
/// report, its outbox rows and its audit record. Returns the caller's answer;
/// `Err(StoreError)` aborts the whole batch.
async fn apply_message(
    tx: &mut dyn WriteTx,
    p: &Pseudonymiser,
    version: u32,
    job: &MessageJob,
    fx: &mut Effects,
) -> Result<Result<Receipt, ApiError>, StoreError> {
    let ctx = &job.ctx;
    // A caller that stopped waiting has been told DEADLINE_EXCEEDED: what it sent must not be
    // committed behind its back (it retries with the same key and gets one receipt).
    if ctx.deadline.is_some_and(|d| std::time::Instant::now() >= d) {
        return Ok(Err(ApiError::DeadlineExceeded));
    }
    let sender = &ctx.caller.org;
    // Only a case read before a promotion and newer than it could lack the version; the
    // promotion moved it meanwhile, so a retry finds it.
    let (Some(lookup_key), Some(audit_subject)) = (job.lookup.at(version), job.audit.at(version))
    else {
        return Ok(Err(ApiError::Unavailable));
    };
    let mut record = ctx.audit_record(job.received_at, Outcome::Deny, "");
    record.flow_id = Some(job.flow_id.clone());
    record.subject = Some(audit_subject.clone());

    if let Some(prior) = tx.find_report(sender, &job.idempotency_key).await? {
        if prior.fingerprint == job.fingerprint {
            // A retry: the first receipt, unchanged; nothing new crosses.
            return Ok(Ok(Receipt {
                report_id: prior.report_id,
                received_at: prior.received_at,
                idempotency_key: job.idempotency_key.clone(),
            }));
        }
        let err = ApiError::AlreadyExists(
            "this idempotency key was already used with a different message; use a new key for a new message",
        );
        record.reason = err.reason().to_owned();
        fx.audit(tx, &record).await?;
        return Ok(Err(err));
    }

    // The flow was resolved from this very policy set, which is immutable.
    let Some(flow) = job.policies.flow(&job.flow_id) else {
        tracing::error!(flow = %job.flow_id, "flow vanished from its own policy set");
        return Ok(Err(ApiError::Unavailable));
    };
    // Only consents given for this flow count: a consent opens the flows its receipt lists.
    // The others are kept aside to name the right rule when a support notice is refused.
    let (consents, not_for_flow): (Vec<_>, Vec<_>) = tx
        .consents_for(lookup_key, &flow.purpose)
        .await?
        .into_iter()
        .partition(|c| c.covers_flow(&flow.id));
    let now = job.received_at;
    let candidates: Vec<(OrgId, ConsentView)> = match &job.route {
        // Consent-based: whoever holds a consent record, each with its own consent's state.
        Route::ToSocialServices { .. } if flow.requires_consent => {
            ConsentView::by_recipient(&consents, now)
        }
        // Statutory: the organisations the flow names (their consent is recorded, not needed).
        Route::ToSocialServices { .. } => flow
            .recipients
            .iter()
            .map(|org| {
                let own = consents.iter().filter(|c| &c.recipient == org);
                (org.clone(), ConsentView::of(own, now))
            })
            .collect(),
        // Back to the landlord: under the sender's own consent for the resident.
        Route::ToLandlord { landlord, .. } => {
            let own = consents.iter().filter(|c| &c.recipient == sender);
            let mut view = ConsentView::of(own, now);
            // A consent that leaves the landlord out does not list this flow. It is still the
            // resident's consent: with none that lists it, the policies see the sender's
            // consent as it is (valid, say) and not covering the landlord, so the refusal
            // names the rule that decided and what to change, not a consent that is absent.
            if view.status == ConsentStatus::Absent {
                let held =
                    (consents.iter().chain(&not_for_flow)).filter(|c| &c.recipient == sender);
                view = ConsentView {
                    covers_landlord: false,
                    ..ConsentView::of(held, now)
                };
            }
            vec![(landlord.clone(), view)]
        }
    };
    let input = DecisionInput {
        flow,
        sender: &ctx.caller,
        purpose: &job.purpose,
        legal_basis: &job.legal_basis,
        eviction_stage: job.eviction_stage,
    };
    let disclosure = tracing::debug_span!(
        target: crate::telemetry::RPC_SPAN_TARGET,
        parent: &job.span,
        "step",
        otel.name = "policy.decide",
    )
    .in_scope(|| job.policies.decide(&input, &candidates));
    fx.decided.push(DecisionLabels {
        flow: flow.id.clone(),
        outcome: if disclosure.permits.is_empty() {
            "deny"
        } else {
            "allow"
        },
    });
    record.policy_ids.clone_from(&disclosure.policy_ids);
    record.reason = match (disclosure.permits.is_empty(), flow.requires_consent) {
        (true, _) => disclosure.reason.to_owned(),
        (false, true) => "disclosed".to_owned(),
        // A disclosure without consent is an override of the resident's choice: say so.
        (false, false) => "disclosed-statutory".to_owned(),
    };

    if disclosure.permits.is_empty() && matches!(job.route, Route::ToLandlord { .. }) {
        // Social services knows its client: tell it why, and keep nothing to retry.
        let err = ApiError::PolicyDenied {
            message: job.policies.reasons(&disclosure.policy_ids),
            policy_ids: disclosure.policy_ids,
        };
        record.reason = err.reason().to_owned();
        fx.audit(tx, &record).await?;
        return Ok(Err(err));
    }

    let report_id = uuid::Uuid::now_v7().to_string();
    // A support notice has one recipient: its receipt and the delivered notice carry the
    // same id, so the sender can match them.
    let alert_ids: Vec<String> = disclosure
        .permits
        .iter()
        .map(|_| match job.route {
            Route::ToLandlord { .. } => report_id.clone(),
            Route::ToSocialServices { .. } => uuid::Uuid::now_v7().to_string(),
        })
        .collect();
    // For a flow that discloses identity, the code sealed in memory to each recipient's public
    // key and bound to its alert, before anything is written: only the ciphertext is stored,
    // and it goes with the alert when that is purged. Start-up and every reload refuse a set
    // with a recipient lacking a key, so a failure here is a bug, not the client's.
    let mut sealed_payloads: Vec<Option<String>> = vec![None; alert_ids.len()];
    if let Route::ToSocialServices {
        hetu,
        recipient_keys,
        ..
    } = &job.route
        && flow.discloses_identity
    {
        for ((permit, alert_id), slot) in disclosure
            .permits
            .iter()
            .zip(&alert_ids)
            .zip(&mut sealed_payloads)
        {
            let recipient = permit.recipient();
            let payload = recipient_keys
                .get(recipient)
                .and_then(|key| {
                    silta_core::sealed::seal(hetu, key, &flow.id, recipient, alert_id).ok()
                })
                .and_then(|sealed| crate::sealing::with_sealed(&job.payload, &sealed));
            let Some(payload) = payload else {
                tracing::error!(flow = %flow.id, %recipient, "the identity could not be sealed to this recipient");
                return Ok(Err(ApiError::Unavailable));
            };
            *slot = Some(payload);
        }
    }
    let sealed_any = sealed_payloads.iter().any(Option::is_some);
    tx.insert_report(&NewReport {
        report_id: &report_id,
        landlord: sender,
        idempotency_key: &job.idempotency_key,
        fingerprint: &job.fingerprint,
        received_at: now,
    })
    .await?;
    for ((permit, alert_id), sealed_payload) in disclosure
        .permits
        .iter()
        .zip(&alert_ids)
        .zip(&sealed_payloads)
    {
        let recipient = permit.recipient();
        let (pseudonym, case_ref) = match &job.route {
            Route::ToSocialServices {
                hetu, tenancy_ref, ..
            } => {
                let pseudonym = p
                    .pseudonym_at(hetu, &Domain::Org(recipient.clone()), version)
                    .ok_or_else(|| lacks_version(p, version))?;
                let new_ref = mint_case_ref();
                let case_ref = tx
                    .case_ref(&NewCase {
                        landlord: sender,
                        tenancy_ref,
                        recipient,
                        subject_key: lookup_key,
                        audit_subject,
                        new_ref: &new_ref,
                        now,
                    })
                    .await?;
                if case_ref == new_ref {
                    count_first_alert(tx, job, sender, recipient);
                }
                (pseudonym.to_string(), case_ref)
            }
            // The landlord learns no pseudonym, and the case under its own reference.
            Route::ToLandlord {
                tenancy_ref,
                case_ref,
                ..
            } => {
                count_notice(tx, job, sender, recipient, case_ref).await?;
                (String::new(), tenancy_ref.clone())
            }
        };

        let seq = tx
            .insert_alert(
                permit,
                &NewAlert {
                    alert_id,
                    flow_id: &flow.id,
                    purpose: &flow.purpose,
                    legal_basis: &flow.legal_basis,
                    report_id: &report_id,
                    sender,
                    subject_pseudonym: &pseudonym,
                    case_ref: &case_ref,
                    payload: sealed_payload.as_deref().unwrap_or(&job.payload),
                    now,
                },
            )
            .await?;
        fx.woken.push((recipient.clone(), seq));
    }

    record.outcome = if disclosure.permits.is_empty() {
        Outcome::Deny
    } else {
        Outcome::Allow
    };
    record.recipients = disclosure
        .permits
        .iter()
        .map(|p| p.recipient().clone())
        .collect();
    if !record.recipients.is_empty() {
        record.fields.clone_from(&job.fields);
        // The access report must show that the resident's identity was disclosed, not only
        // the fields: the recipient can name the person.
        if sealed_any {
            record.fields.push(IDENTITY_SEALED.to_owned());
        }
    }
    fx.audit(tx, &record).await?;
    Ok(Ok(Receipt {
        report_id,
        received_at: now,
        idempotency_key: job.idempotency_key.clone(),
    }))
}

/// Counts a case's first alert: how many months overdue and at which eviction stage the
/// warning came.
fn count_first_alert(tx: &mut dyn WriteTx, job: &MessageJob, landlord: &OrgId, recipient: &OrgId) {
    let month = Month::of(job.received_at);
    let cell = |measure, category: &str| CellKey {
        month,
        measure,
        flow: job.flow_id.clone(),
        landlord: landlord.to_string(),
        recipient: recipient.to_string(),
        category: category.to_owned(),
    };
    if let Some(months) = job.facts.months_overdue {
        tx.count(
            cell(Measure::FirstAlertMonthsOverdue, months_bucket(months)),
            1,
        );
    }
    if let Some(stage) = job.eviction_stage {
        tx.count(cell(Measure::FirstAlertStage, stage.as_str()), 1);
    }
}

/// Counts a support notice's outcome and, on the case's first notice, the time since the case's
/// first alert.
async fn count_notice(
    tx: &mut dyn WriteTx,
    job: &MessageJob,
    social_services: &OrgId,
    landlord: &OrgId,
    case_ref: &str,
) -> Result<(), StoreError> {
    let now = job.received_at;
    let cell = |measure, category: &str| CellKey {
        month: Month::of(now),
        measure,
        flow: job.flow_id.clone(),
        landlord: landlord.to_string(),
        recipient: social_services.to_string(),
        category: category.to_owned(),
    };
    if let Some(outcome) = job.facts.notice_outcome {
        tx.count(cell(Measure::NoticeOutcomes, outcome), 1);
    }
    if let Some(opened) = tx.first_notice(social_services, case_ref, now).await? {
        tx.count(
            cell(Measure::FirstNoticeDelay, delay_bucket(now - opened)),
            1,
        );
    }
    Ok(())
}

/// The field name the ledger lists when a disclosure carried the identity code sealed to its
/// recipients.
pub const IDENTITY_SEALED: &str = "identity_sealed";

/// A new case reference: `case-` and 32 letters a–p carrying 128 random bits. It holds no
/// digit, so it can never look like an identity code: the scan every `case_ref` sent back goes
/// through (a random hex reference sometimes did).
fn mint_case_ref() -> String {
    let bytes = *uuid::Uuid::new_v4().as_bytes();
    let mut out = String::with_capacity(5 + 32);
    out.push_str("case-");
    for b in bytes {
        for nibble in [b >> 4, b & 0x0f] {
            out.push(char::from(b'a' + nibble));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use silta_core::Pseudonymiser;
    use silta_core::secret::MasterSecret;
    use silta_store::{SqliteStore, Store};
    use tokio::sync::{mpsc, oneshot};

    use super::{AfterCommit, Job};

    /// The checkpointer signs outside the committer's transaction; a key handover committed
    /// in between must not get a note of the retired key stored.
    #[tokio::test]
    async fn a_checkpoint_signed_with_a_key_no_longer_in_use_is_not_stored() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::open(&dir.path().join("silta.db"))
                .await
                .expect("store"),
        );
        let bytes: Vec<u8> = (0u8..32).map(|i| i.wrapping_mul(37)).collect();
        let secret = MasterSecret::from_bytes(&bytes).expect("32 distinct bytes");
        let (jobs_tx, jobs) = mpsc::channel(4);
        let stop = tokio_util::sync::CancellationToken::new();
        let committer = tokio::spawn(super::run(
            Arc::clone(&store),
            Pseudonymiser::new(secret, 1),
            jobs,
            8,
            stop.clone(),
            AfterCommit {
                notifier: Arc::default(),
                appended: tokio::sync::watch::channel(0).0,
                metrics: Arc::default(),
            },
        ));
        let checkpoint = |version| {
            let (reply, answer) = oneshot::channel();
            let job = Job::Checkpoint {
                version,
                size: 0,
                root: [0; 32],
                note: format!("signed with v{version}"),
                reply,
            };
            (job, answer)
        };

        let (job, answer) = checkpoint(2);
        jobs_tx.send(job).await.expect("queued");
        assert!(!answer.await.expect("answered").expect("committed"));
        assert!(store.latest_checkpoint().await.expect("read").is_none());

        let (job, answer) = checkpoint(1);
        jobs_tx.send(job).await.expect("queued");
        assert!(answer.await.expect("answered").expect("committed"));
        let stored = store.latest_checkpoint().await.expect("read");
        assert_eq!(stored.map(|c| c.note), Some("signed with v1".to_owned()));

        stop.cancel();
        committer.await.expect("the committer returns");
    }

    #[test]
    fn minted_case_refs_never_look_like_an_identity_code() {
        for _ in 0..10_000 {
            let r = super::mint_case_ref();
            assert_eq!(r.len(), "case-".len() + 32);
            assert!(!silta_core::hetu::contains_hetu(&r), "{r}");
            assert!(!r.bytes().any(|b| b.is_ascii_digit()), "{r}");
        }
    }
}
