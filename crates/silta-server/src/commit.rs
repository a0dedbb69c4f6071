//! The group committer: one task that writes reports and denial records in batches.
//!
//! Requests are validated, pseudonymised and minimised in parallel by their own tasks, then
//! queued here. The committer takes every queued job (up to `max_batch`), applies them in one
//! transaction (deciding each report against the consents as stored in that transaction) and
//! answers each caller only after the commit is durable. Under load one fsync covers many
//! reports; when idle a lone report is committed at once, with no added wait.

use std::sync::Arc;

use silta_core::audit::{AuditRecord, Outcome};
use silta_core::decision::decide;
use silta_core::flow::Flow;
use silta_core::report::RentArrearsReport;
use silta_core::{Domain, OrgId, Pseudonym, Pseudonymiser};
use silta_store::{NewAlert, NewReport, Store, StoreError, WriteTx};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::delivery::Notifier;
use crate::gateway::{Receipt, RequestContext};
use crate::status::ApiError;

/// Work for the committer.
pub(crate) enum Job {
    /// A validated report to decide and store.
    Report(Box<ReportJob>),
    /// A denial to record.
    Audit {
        record: Box<AuditRecord>,
        reply: oneshot::Sender<Result<(), ApiError>>,
    },
}

/// A report, ready to decide and commit.
pub(crate) struct ReportJob {
    pub ctx: RequestContext,
    pub flow: &'static Flow,
    pub report: RentArrearsReport,
    pub lookup_key: Pseudonym,
    pub audit_subject: Pseudonym,
    pub fingerprint: [u8; 32],
    /// The minimised fields, JSON.
    pub payload: String,
    pub received_at: OffsetDateTime,
    pub reply: oneshot::Sender<Result<Receipt, ApiError>>,
}

/// Runs until `stop` is cancelled (or every sender is gone), then commits the jobs already
/// queued and returns. Jobs sent after `stop` are refused at the queue, so their callers answer
/// `UNAVAILABLE` and retry elsewhere; nothing that was acknowledged is lost.
pub(crate) async fn run(
    store: Arc<dyn Store>,
    pseudonymiser: Pseudonymiser,
    notifier: Arc<Notifier>,
    mut jobs: mpsc::Receiver<Job>,
    max_batch: usize,
    stop: CancellationToken,
    appended: Arc<tokio::sync::Notify>,
) {
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
        let mut woken: Vec<(OrgId, u64)> = Vec::new();
        let outcome = apply_batch(&*store, &pseudonymiser, &batch, &mut woken).await;
        match outcome {
            Ok(answers) => {
                for (job, answer) in batch.drain(..).zip(answers) {
                    reply(job, Some(answer));
                }
                for (org, seq) in woken {
                    notifier.notify(&org, seq);
                }
                appended.notify_one();
            }
            Err(e) => {
                tracing::error!(error = %e, jobs = batch.len(), "group commit failed; callers may retry");
                for job in batch.drain(..) {
                    reply(job, None);
                }
            }
        }
    }
}

/// What one job's caller gets once the batch is committed.
enum Answer {
    Receipt(Result<Receipt, ApiError>),
    Recorded,
}

/// Answers a job's caller; `None` means the batch did not commit.
fn reply(job: Job, answer: Option<Answer>) {
    // A caller that gave up has dropped its receiver; its work is committed all the same.
    match (job, answer) {
        (Job::Report(j), Some(Answer::Receipt(r))) => {
            let _ = j.reply.send(r);
        }
        (Job::Report(j), _) => {
            let _ = j.reply.send(Err(ApiError::Unavailable));
        }
        (Job::Audit { reply, .. }, Some(Answer::Recorded)) => {
            let _ = reply.send(Ok(()));
        }
        (Job::Audit { reply, .. }, _) => {
            let _ = reply.send(Err(ApiError::Unavailable));
        }
    }
}

async fn apply_batch(
    store: &dyn Store,
    p: &Pseudonymiser,
    batch: &[Job],
    woken: &mut Vec<(OrgId, u64)>,
) -> Result<Vec<Answer>, StoreError> {
    let mut tx = store.begin().await?;
    let mut results = Vec::with_capacity(batch.len());
    for job in batch {
        results.push(match job {
            Job::Report(j) => Answer::Receipt(apply_report(&mut *tx, p, j, woken).await?),
            Job::Audit { record, .. } => {
                tx.append_audit(record).await?;
                Answer::Recorded
            }
        });
    }
    tx.commit().await?;
    Ok(results)
}

/// Decides one report against the stored consents and writes the report, its alerts and its
/// audit record. Returns the caller's answer; `Err(StoreError)` aborts the whole batch.
async fn apply_report(
    tx: &mut dyn WriteTx,
    p: &Pseudonymiser,
    job: &ReportJob,
    woken: &mut Vec<(OrgId, u64)>,
) -> Result<Result<Receipt, ApiError>, StoreError> {
    let ReportJob {
        ctx, flow, report, ..
    } = job;
    let landlord = &ctx.caller.org;
    let mut record = ctx.audit_record(job.received_at, Outcome::Deny, "");
    record.flow_id = Some(flow.id.to_owned());
    record.subject = Some(job.audit_subject.clone());

    if let Some(prior) = tx.find_report(landlord, &report.idempotency_key).await? {
        if prior.fingerprint == job.fingerprint {
            // A retry: the first receipt, unchanged; nothing new crosses.
            return Ok(Ok(Receipt {
                report_id: prior.report_id,
                received_at: prior.received_at,
                idempotency_key: report.idempotency_key.clone(),
            }));
        }
        let err = ApiError::AlreadyExists(
            "this idempotency key was already used with a different report; use a new key for a new report",
        );
        record.reason = err.reason().to_owned();
        tx.append_audit(&record).await?;
        return Ok(Err(err));
    }

    let consents = tx.consents_for(&job.lookup_key, flow.purpose).await?;
    let disclosure = decide(flow, &consents, job.received_at);

    let report_id = uuid::Uuid::now_v7().to_string();
    tx.insert_report(&NewReport {
        report_id: &report_id,
        landlord,
        idempotency_key: &report.idempotency_key,
        fingerprint: &job.fingerprint,
        received_at: job.received_at,
    })
    .await?;
    for permit in &disclosure.permits {
        let recipient = permit.recipient();
        let pseudonym = p.pseudonym(&report.hetu, &Domain::Org(recipient.clone()));
        let new_case = format!("case-{}", uuid::Uuid::new_v4().simple());
        let case_ref = tx
            .case_ref(
                landlord,
                &report.tenancy_ref,
                recipient,
                &new_case,
                job.received_at,
            )
            .await?;
        let alert_id = uuid::Uuid::now_v7().to_string();
        let seq = tx
            .insert_alert(
                permit,
                &NewAlert {
                    alert_id: &alert_id,
                    flow_id: flow.id,
                    report_id: &report_id,
                    subject_pseudonym: &pseudonym,
                    case_ref: &case_ref,
                    payload: &job.payload,
                    now: job.received_at,
                },
            )
            .await?;
        woken.push((recipient.clone(), seq));
    }

    record.outcome = if disclosure.permits.is_empty() {
        Outcome::Deny
    } else {
        Outcome::Allow
    };
    record.reason = disclosure.reason.to_owned();
    record.policy_ids = disclosure.policy_ids;
    record.recipients = disclosure
        .permits
        .iter()
        .map(|p| p.recipient().clone())
        .collect();
    if !record.recipients.is_empty() {
        record.fields = flow.field_names();
    }
    tx.append_audit(&record).await?;
    Ok(Ok(Receipt {
        report_id,
        received_at: job.received_at,
        idempotency_key: report.idempotency_key.clone(),
    }))
}
