//! The gateway's request paths, each readable top to bottom:
//! identity → validate → pseudonymise → minimise → (decide + commit) → respond.
//!
//! Everything that decides is a pure function of `silta-core`; this module only orders the
//! steps and talks to the store. Reports and denial records go through the group committer
//! ([`crate::commit`]), which decides each report against the consents as stored inside the
//! very transaction that writes it, so a withdrawal can never race a disclosure.

use std::sync::Arc;

use silta_core::audit::{AuditRecord, Outcome};
use silta_core::consent::{
    ConsentInput, ConsentState, ReceiptBody, ReceiptSigner, SignedReceipt, validate_consent,
};
use silta_core::flow::{RENT_ARREARS, is_known_purpose};
use silta_core::report::{RentArrearsInput, minimise, validate_rent_arrears};
use silta_core::validate::Violations;
use silta_core::{Caller, Domain, Hetu, HetuRules, Pseudonym, Pseudonymiser, Role};
use silta_store::{NewConsentRow, Store, StoredAlert};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::commit::{Job, ReportJob};
use crate::config::TuningConfig;
use crate::delivery::Notifier;
use crate::status::ApiError;

/// Who asked, and which request this is.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// Unique per request; in logs, audit records and error details.
    pub request_id: String,
    /// The caller proven by the client certificate.
    pub caller: Caller,
    /// The RPC, e.g. `Landlord.ReportRentArrears`.
    pub action: &'static str,
}

impl RequestContext {
    /// An audit record of this request's decision, with nothing disclosed yet.
    pub fn audit_record(&self, at: OffsetDateTime, outcome: Outcome, reason: &str) -> AuditRecord {
        AuditRecord::new(
            at,
            &self.request_id,
            &self.caller,
            self.action,
            outcome,
            reason,
        )
    }
}

/// A report receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// silta's id for the report.
    pub report_id: String,
    /// When it was first accepted.
    pub received_at: OffsetDateTime,
    /// The idempotency key.
    pub idempotency_key: String,
}

/// The result of an enrolment.
#[derive(Debug, Clone)]
pub struct Enrolment {
    /// The subject's pseudonym in the caller's domain.
    pub subject_pseudonym: Pseudonym,
    /// The new consent's id.
    pub consent_id: String,
    /// The signed receipt.
    pub receipt: SignedReceipt,
    /// The receipt's fields.
    pub body: ReceiptBody,
}

/// Which consent to withdraw. No `Debug`: it may hold an identity code as text.
pub enum WithdrawTarget<'a> {
    /// By consent id.
    ConsentId(&'a str),
    /// By identity code (text, validated here) and purpose.
    Subject {
        /// The identity code text.
        hetu: &'a str,
        /// The purpose.
        purpose: &'a str,
    },
    /// Nothing was set.
    Missing,
}

/// The gateway's state, shared by all services.
pub struct Gateway {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) pseudonymiser: Pseudonymiser,
    pub(crate) signer: ReceiptSigner,
    pub(crate) hetu_rules: HetuRules,
    pub(crate) commits: mpsc::Sender<Job>,
    pub(crate) notifier: Arc<Notifier>,
    pub(crate) stop: CancellationToken,
    pub(crate) tuning: TuningConfig,
    pub(crate) checkpoint_verifier_key: String,
}

impl Gateway {
    /// Refuses (and audits) a caller whose role may not call this RPC.
    pub async fn authorize(&self, ctx: &RequestContext, role: Role) -> Result<(), ApiError> {
        if ctx.caller.role == role {
            return Ok(());
        }
        let err = ApiError::PermissionDenied(format!(
            "{} is for role {role}; your client certificate names role {}",
            ctx.action, ctx.caller.role
        ));
        self.audit_denial(ctx, &err, None).await;
        Err(err)
    }

    /// Records a denial durably. A failure to record is logged; the caller still gets the
    /// denial, since refusing is always safe.
    pub async fn audit_denial(
        &self,
        ctx: &RequestContext,
        err: &ApiError,
        subject: Option<Pseudonym>,
    ) {
        if let Err(e) = self.record(ctx, Outcome::Deny, err.reason(), subject).await {
            tracing::error!(request_id = %ctx.request_id, error = %e, "denial not recorded");
        }
    }

    /// Records a decision that writes nothing else (a denial, a DPO's query) through the
    /// group committer, and waits until it is durable.
    pub async fn record(
        &self,
        ctx: &RequestContext,
        outcome: Outcome,
        reason: &str,
        subject: Option<Pseudonym>,
    ) -> Result<(), ApiError> {
        let mut record = ctx.audit_record(OffsetDateTime::now_utc(), outcome, reason);
        record.subject = subject;
        let (reply, done) = oneshot::channel();
        let job = Job::Audit {
            record: Box::new(record),
            reply,
        };
        self.commits
            .send(job)
            .await
            .map_err(|_| ApiError::ShuttingDown)?;
        done.await.map_err(|_| ApiError::ShuttingDown)?
    }

    /// `Landlord.ReportRentArrears`.
    pub async fn report_rent_arrears(
        &self,
        ctx: &RequestContext,
        input: RentArrearsInput<'_>,
    ) -> Result<Receipt, ApiError> {
        // Identity: only landlords report.
        self.authorize(ctx, Role::Landlord).await?;
        // Validate: every field at once; nothing but the audited denial is kept.
        let report = match validate_rent_arrears(&input, self.hetu_rules) {
            Ok(r) => r,
            Err(v) => return Err(self.deny(ctx, ApiError::InvalidArgument(v), None).await),
        };
        // Pseudonymise: the lookup key finds consents, the audit pseudonym names the subject
        // in the audit trail, the fingerprint recognises retries. The code itself goes no further.
        let lookup_key = self.pseudonymiser.pseudonym(&report.hetu, &Domain::Lookup);
        let audit_subject = self.pseudonymiser.pseudonym(&report.hetu, &Domain::Audit);
        let fingerprint = self.pseudonymiser.fingerprint(
            &report.hetu,
            &[
                report.tenancy_ref.as_bytes(),
                &report.arrears_cents.to_be_bytes(),
                &report.months_overdue.to_be_bytes(),
                format!("{:?}", report.eviction_stage).as_bytes(),
                report.landlord_contact_office.as_bytes(),
                // Not stored, but part of the body: a different note is a different report.
                input.free_text_note.as_bytes(),
            ],
        );
        // Minimise: what would cross, the same for every recipient.
        let received_at = now_millis();
        let alert = minimise(&report, received_at);
        // Serialising a struct of strings and enums cannot fail.
        let payload = serde_json_string(&alert);
        // Decide and commit, in the group committer's transaction; respond once durable.
        let (reply, done) = oneshot::channel();
        let job = ReportJob {
            ctx: ctx.clone(),
            flow: &RENT_ARREARS,
            report,
            lookup_key,
            audit_subject,
            fingerprint,
            payload,
            received_at,
            reply,
        };
        self.commits
            .send(Job::Report(Box::new(job)))
            .await
            .map_err(|_| ApiError::ShuttingDown)?;
        done.await.map_err(|_| ApiError::ShuttingDown)?
    }

    /// `SocialServices.EnrolClient`. `v` holds violations already found while decoding.
    pub async fn enrol_client(
        &self,
        ctx: &RequestContext,
        hetu: &str,
        consent: Option<ConsentInput<'_>>,
        mut v: Violations,
    ) -> Result<Enrolment, ApiError> {
        self.authorize(ctx, Role::SocialServices).await?;
        let now = OffsetDateTime::now_utc();
        let hetu = self.parse_hetu(&mut v, "hetu", hetu);
        let consent = match &consent {
            Some(c) => validate_consent(c, "consent", now, &mut v),
            None => {
                v.add("consent", "is required");
                None
            }
        };
        let (Some(hetu), Some(consent), true) = (hetu, consent, v.0.is_empty()) else {
            return Err(self.deny(ctx, ApiError::InvalidArgument(v), None).await);
        };

        let own = Domain::Org(ctx.caller.org.clone());
        let subject_pseudonym = self.pseudonymiser.pseudonym(&hetu, &own);
        let lookup_key = self.pseudonymiser.pseudonym(&hetu, &Domain::Lookup);
        let audit_subject = self.pseudonymiser.pseudonym(&hetu, &Domain::Audit);
        drop(hetu);
        let consent_id = uuid::Uuid::now_v7().to_string();

        let mut tx = self.store.begin().await?;
        tx.insert_consent(&NewConsentRow {
            consent_id: &consent_id,
            subject_key: &lookup_key,
            audit_subject: &audit_subject,
            recipient: &ctx.caller.org,
            purpose: &consent.purpose,
            valid_from: consent.given_at,
            valid_until: consent.valid_until,
            evidence_ref: &consent.evidence_ref,
            notice_version: &consent.notice_version,
            now,
        })
        .await?;
        let mut record = ctx.audit_record(now, Outcome::Allow, "consent-recorded");
        record.subject = Some(audit_subject);
        record.flow_id = Some(RENT_ARREARS.id.to_owned());
        tx.append_audit(&record).await?;
        tx.commit().await?;

        let body = ReceiptBody::new(
            &consent_id,
            &ctx.caller.org,
            &subject_pseudonym,
            &consent,
            &RENT_ARREARS,
            now,
        );
        let receipt = self.signer.sign(&body);
        Ok(Enrolment {
            subject_pseudonym,
            consent_id,
            receipt,
            body,
        })
    }

    /// `SocialServices.WithdrawConsent`.
    pub async fn withdraw_consent(
        &self,
        ctx: &RequestContext,
        target: WithdrawTarget<'_>,
    ) -> Result<silta_store::Withdrawal, ApiError> {
        self.authorize(ctx, Role::SocialServices).await?;
        const UNKNOWN: &str =
            "no consent of yours matches; check the consent id, or the identity code and purpose";
        let now = OffsetDateTime::now_utc();
        let mut tx = self.store.begin().await?;
        let (subject_key, audit_subject, purpose) = match target {
            WithdrawTarget::Missing => {
                drop(tx);
                let err = ApiError::field("target", "set either consent_id or subject");
                return Err(self.deny(ctx, err, None).await);
            }
            WithdrawTarget::ConsentId(id) => {
                if uuid::Uuid::try_parse(id).is_err() {
                    drop(tx);
                    let err = ApiError::field(
                        "consent_id",
                        "must be a consent id as returned by EnrolClient (a UUID)",
                    );
                    return Err(self.deny(ctx, err, None).await);
                }
                match tx.consent_subject(&ctx.caller.org, id).await? {
                    Some(s) if s.state == ConsentState::Active => {
                        (s.subject_key, s.audit_subject, s.purpose)
                    }
                    Some(s) => {
                        // Already withdrawn or superseded: nothing to do. Above all, a retried
                        // withdrawal must not touch a newer consent the client gave since.
                        let mut record =
                            ctx.audit_record(now, Outcome::Allow, "consent-already-inactive");
                        record.subject = Some(s.audit_subject);
                        tx.append_audit(&record).await?;
                        tx.commit().await?;
                        return Ok(silta_store::Withdrawal::default());
                    }
                    None => {
                        drop(tx);
                        return Err(self.deny(ctx, ApiError::NotFound(UNKNOWN), None).await);
                    }
                }
            }
            WithdrawTarget::Subject { hetu, purpose } => {
                let mut v = Violations::default();
                let hetu = self.parse_hetu(&mut v, "subject.hetu", hetu);
                if !is_known_purpose(purpose) {
                    v.add(
                        "subject.purpose",
                        "is not a known purpose (known purposes: eviction-prevention)",
                    );
                }
                let Some(hetu) = hetu.filter(|_| v.0.is_empty()) else {
                    drop(tx);
                    return Err(self.deny(ctx, ApiError::InvalidArgument(v), None).await);
                };
                let key = self.pseudonymiser.pseudonym(&hetu, &Domain::Lookup);
                let audit = self.pseudonymiser.pseudonym(&hetu, &Domain::Audit);
                let known = tx.consents_for(&key, purpose).await?;
                if !known.iter().any(|c| c.recipient == ctx.caller.org) {
                    drop(tx);
                    return Err(self
                        .deny(ctx, ApiError::NotFound(UNKNOWN), Some(audit))
                        .await);
                }
                (key, audit, purpose.to_owned())
            }
        };
        let done = tx
            .withdraw(&ctx.caller.org, &subject_key, &purpose, now)
            .await?;
        let mut record = ctx.audit_record(now, Outcome::Allow, "consent-withdrawn");
        record.subject = Some(audit_subject);
        record.flow_id = Some(RENT_ARREARS.id.to_owned());
        tx.append_audit(&record).await?;
        if done.purged_alerts > 0 {
            let mut purge = record.clone();
            purge.action = "PurgeUndeliveredAlerts".to_owned();
            purge.reason = format!("purged-{}-unacknowledged-alerts", done.purged_alerts);
            tx.append_audit(&purge).await?;
        }
        tx.commit().await?;
        Ok(done)
    }

    /// `SocialServices.AckAlerts`.
    pub async fn ack_alerts(
        &self,
        ctx: &RequestContext,
        up_to: u64,
        seqs: &[u64],
    ) -> Result<u64, ApiError> {
        self.authorize(ctx, Role::SocialServices).await?;
        if up_to == 0 && seqs.is_empty() {
            let err = ApiError::field(
                "up_to_sequence",
                "set up_to_sequence or sequences (both are empty)",
            );
            return Err(self.deny(ctx, err, None).await);
        }
        if seqs.len() > 1000 {
            let err = ApiError::field(
                "sequences",
                "must list at most 1000 sequences; use up_to_sequence for more",
            );
            return Err(self.deny(ctx, err, None).await);
        }
        let mut tx = self.store.begin().await?;
        let n = tx
            .ack_alerts(&ctx.caller.org, up_to, seqs, OffsetDateTime::now_utc())
            .await?;
        tx.commit().await?;
        Ok(n)
    }

    /// `SocialServices.SubscribeAlerts`: starts the subscription task; alerts arrive on the
    /// returned channel in sequence order.
    pub async fn subscribe_alerts(
        self: &Arc<Self>,
        ctx: &RequestContext,
        after: u64,
    ) -> Result<mpsc::Receiver<Result<StoredAlert, ApiError>>, ApiError> {
        self.authorize(ctx, Role::SocialServices).await?;
        let (tx, rx) = mpsc::channel(64);
        let gw = Arc::clone(self);
        let org = ctx.caller.org.clone();
        let request_id = ctx.request_id.clone();
        tokio::spawn(async move {
            let mut wake = gw.notifier.subscribe(&org);
            let poll = std::time::Duration::from_millis(gw.tuning.delivery_poll_ms);
            let page_size = usize::try_from(gw.tuning.delivery_page).unwrap_or(usize::MAX);
            let stop = gw.stop.clone();
            let mut last = after;
            'stream: loop {
                // Mark the current wake-up as seen *before* reading, so a commit landing
                // between the read and the wait still wakes us.
                wake.borrow_and_update();
                let page = tokio::select! {
                    () = stop.cancelled() => break 'stream,
                    page = gw.store.pending_alerts(&org, last, gw.tuning.delivery_page) => page,
                };
                let page = match page {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = tx.try_send(Err(ApiError::from(e)));
                        return;
                    }
                };
                let full = page.len() >= page_size;
                for alert in page {
                    last = alert.seq;
                    // A subscriber that stopped reading must not hold up shutdown.
                    tokio::select! {
                        sent = tx.send(Ok(alert)) => if sent.is_err() { return },
                        () = stop.cancelled() => break 'stream,
                    }
                }
                if full {
                    continue;
                }
                tokio::select! {
                    _ = wake.changed() => {}
                    () = tokio::time::sleep(poll) => {}
                    () = tx.closed() => return,
                    () = stop.cancelled() => break 'stream,
                }
            }
            // Tell the subscriber to reconnect, without waiting on one that stopped reading.
            let _ = tx.try_send(Err(ApiError::ShuttingDown));
            tracing::debug!(%request_id, "subscription closed for shutdown");
        });
        Ok(rx)
    }

    fn parse_hetu(&self, v: &mut Violations, field: &str, text: &str) -> Option<Hetu> {
        Hetu::parse(text, self.hetu_rules)
            .map_err(|e| v.add(field, format!("personal identity code {e}")))
            .ok()
    }

    pub(crate) async fn deny(
        &self,
        ctx: &RequestContext,
        err: ApiError,
        subject: Option<Pseudonym>,
    ) -> ApiError {
        self.audit_denial(ctx, &err, subject).await;
        err
    }

    /// The public key that verifies consent receipts.
    pub fn receipt_public_key(&self) -> &[u8] {
        self.signer.public_key()
    }
}

/// Now, to the millisecond: the precision the store keeps, so a retry's receipt is identical.
fn now_millis() -> OffsetDateTime {
    let t = OffsetDateTime::now_utc();
    t.replace_nanosecond(t.nanosecond() / 1_000_000 * 1_000_000)
        .unwrap_or(t)
}

fn serde_json_string<T: serde::Serialize>(value: &T) -> String {
    // Only called with plain structs of strings, numbers and enums, which always serialise.
    serde_json::to_string(value).expect("plain data serialises")
}
