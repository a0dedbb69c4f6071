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
use silta_core::policy::{
    DecisionInput, FieldValue, Flow, Message, MessageKind, Policies, Verdict, minimise,
};
use silta_core::report::{
    DisturbanceInput, EvictionStageInput, Header, RentArrearsInput, validate_disturbance,
    validate_eviction_stage, validate_rent_arrears,
};
use silta_core::support::{SupportNoticeInput, validate_support_notice};
use silta_core::validate::Violations;
use silta_core::{Caller, Domain, Hetu, HetuRules, OrgId, Pseudonym, Pseudonymiser, Role};
use silta_store::{NewConsentRow, Store, StoredAlert};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::commit::{Answered, Job, MessageJob, Route, StatFacts};
use crate::config::TuningConfig;
use crate::delivery::Notifier;
use crate::policy_source::PolicyHandle;
use crate::status::ApiError;
use tracing::Instrument;

/// Who asked, and which request this is.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// Unique per request; in logs, audit records and error details.
    pub request_id: String,
    /// The caller proven by the client certificate.
    pub caller: Caller,
    /// The RPC, e.g. `Landlord.ReportRentArrears`.
    pub action: &'static str,
    /// The person acting, from a verified bearer token.
    pub actor: Option<String>,
    /// When the caller stops waiting (its `grpc-timeout`): work not yet committed by then is
    /// not committed at all.
    pub deadline: Option<std::time::Instant>,
}

impl RequestContext {
    /// An audit record of this request's decision, with nothing disclosed yet.
    pub fn audit_record(&self, at: OffsetDateTime, outcome: Outcome, reason: &str) -> AuditRecord {
        let mut record = AuditRecord::new(
            at,
            &self.request_id,
            &self.caller,
            self.action,
            outcome,
            reason,
        );
        record.actor_person.clone_from(&self.actor);
        record
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

/// An open subscription: the caller's messages in sequence order, and the signal that it
/// ended because the caller stopped reading.
pub struct Subscription {
    /// The messages, or the error that ended the subscription.
    pub messages: mpsc::Receiver<Result<StoredAlert, ApiError>>,
    /// Cancelled when the subscription ended because its client read nothing for
    /// `limits.stream_stall_timeout_ms`.
    pub stalled: CancellationToken,
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
    /// How long a subscription waits for its client to read before ending the stream.
    pub(crate) stall_timeout: std::time::Duration,
    /// Open subscriptions per organisation, within `limits.max_streams_per_org`.
    pub(crate) streams: Arc<OrgQuota>,
    /// The retention rules, for the DPO's view of them (the purge has its own copy).
    pub(crate) retention: crate::config::RetentionConfig,
    /// The disclosure-control threshold of released statistics.
    pub(crate) statistics: crate::config::StatisticsConfig,
    pub(crate) policies: Arc<PolicyHandle>,
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
    pub(crate) actors: crate::actor::ActorVerifier,
    /// The keys identity codes are sealed to, for flows that disclose identity.
    pub(crate) recipient_keys: Arc<crate::sealing::RecipientKeys>,
}

/// How many of something each organisation holds, within a cap.
#[derive(Debug)]
pub(crate) struct OrgQuota {
    max: usize,
    held: std::sync::Mutex<std::collections::HashMap<OrgId, usize>>,
}

/// One unit of an organisation's quota, given back when dropped.
#[derive(Debug)]
pub(crate) struct QuotaGuard {
    quota: Arc<OrgQuota>,
    org: OrgId,
}

impl OrgQuota {
    pub(crate) fn new(max: usize) -> Self {
        OrgQuota {
            max,
            held: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Takes one unit for `org`, or `None` when it holds the cap already.
    pub(crate) fn try_take(self: &Arc<Self>, org: &OrgId) -> Option<QuotaGuard> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let n = held.entry(org.clone()).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(QuotaGuard {
            quota: Arc::clone(self),
            org: org.clone(),
        })
    }
}

impl Drop for QuotaGuard {
    fn drop(&mut self) {
        let mut held = self.quota.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = held.get_mut(&self.org) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&self.org);
            }
        }
    }
}

/// Runs `f` in a child span of the current RPC span (exported with it; see
/// `telemetry::RPC_SPAN_TARGET`).
fn in_span<T>(name: &'static str, f: impl FnOnce() -> T) -> T {
    tracing::debug_span!(target: crate::telemetry::RPC_SPAN_TARGET, "step", otel.name = name)
        .in_scope(f)
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
        self.queue(job)?;
        done.await.map_err(|_| ApiError::ShuttingDown)?
    }

    /// Hands a job to the group committer at once, or refuses it: a full queue means the store
    /// is behind the callers, and waiting for room would only pile up more (the caller retries
    /// after `RetryInfo`, here or on another node). Never an unbounded wait.
    fn queue(&self, job: Job) -> Result<(), ApiError> {
        match self.commits.try_send(job) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.metrics.overloaded.inc();
                Err(ApiError::Overloaded)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(ApiError::ShuttingDown),
        }
    }

    /// `Landlord.ReportRentArrears`.
    pub async fn report_rent_arrears(
        &self,
        ctx: &RequestContext,
        input: RentArrearsInput<'_>,
    ) -> Result<Receipt, ApiError> {
        let report = match in_span("validate", || {
            validate_rent_arrears(&input, self.hetu_rules)
        }) {
            Ok(r) => r,
            Err(v) => return Err(self.deny(ctx, ApiError::InvalidArgument(v), None).await),
        };
        let body = [
            &report.arrears_cents.to_be_bytes()[..],
            &report.months_overdue.to_be_bytes(),
            report.eviction_stage.as_str().as_bytes(),
            // Not stored, but part of the body: a different note is a different report.
            input.free_text_note.as_bytes(),
        ];
        let header = report.header.clone();
        self.report(ctx, header, Arc::new(report), &body).await
    }

    /// `Landlord.ReportEvictionStage`.
    pub async fn report_eviction_stage(
        &self,
        ctx: &RequestContext,
        input: EvictionStageInput<'_>,
    ) -> Result<Receipt, ApiError> {
        let report = match in_span("validate", || {
            validate_eviction_stage(&input, self.hetu_rules)
        }) {
            Ok(r) => r,
            Err(v) => return Err(self.deny(ctx, ApiError::InvalidArgument(v), None).await),
        };
        let date = report.stage_date.to_string();
        let body = [report.eviction_stage.as_str().as_bytes(), date.as_bytes()];
        let header = report.header.clone();
        self.report(ctx, header, Arc::new(report), &body).await
    }

    /// `Landlord.ReportDisturbance`.
    pub async fn report_disturbance(
        &self,
        ctx: &RequestContext,
        input: DisturbanceInput<'_>,
    ) -> Result<Receipt, ApiError> {
        let report = match in_span("validate", || {
            validate_disturbance(&input, self.hetu_rules, OffsetDateTime::now_utc())
        }) {
            Ok(r) => r,
            Err(v) => return Err(self.deny(ctx, ApiError::InvalidArgument(v), None).await),
        };
        let count = report.count_in_period.to_be_bytes();
        let month = report.period_month.clone();
        let body = [
            report.category.as_str().as_bytes(),
            &count,
            month.as_bytes(),
        ];
        let header = report.header.clone();
        self.report(ctx, header, Arc::new(report), &body).await
    }

    /// A landlord's report, validated: find its flow, ask the policy, pseudonymise, minimise,
    /// and hand it to the committer, which decides each recipient against the consents as
    /// stored in its transaction.
    async fn report(
        &self,
        ctx: &RequestContext,
        header: Header,
        message: Arc<dyn Message + Send + Sync>,
        body: &[&[u8]],
    ) -> Result<Receipt, ApiError> {
        let policies = self.policies.get();
        let kind = message.kind();
        let flow = self
            .resolve(ctx, &policies, kind, &header.purpose, &header.legal_basis)
            .await?;
        tracing::Span::current().record("flow", flow.id.as_str());
        let input = DecisionInput {
            flow,
            sender: &ctx.caller,
            purpose: &header.purpose,
            legal_basis: &header.legal_basis,
            eviction_stage: message.eviction_stage(),
        };
        // The audit pseudonym names the subject in the audit trail, refusals included, so a
        // resident's access report shows attempts too.
        let audit = self.pseudonymiser.pseudonyms(&header.hetu, &Domain::Audit);
        if let Err(verdict) = in_span("policy.precheck", || policies.precheck(&input)) {
            // Refused whatever the resident's consent: saying so reveals nothing about them.
            let subject = audit.at(self.pseudonymiser.observed_version()).cloned();
            return Err(self.refuse(ctx, &policies, flow, verdict, subject).await);
        }
        // Pseudonymise: the lookup key finds consents, the fingerprint recognises retries. The
        // code itself stays in the job only to derive each recipient's pseudonym.
        // Under every key version: the committer picks the one the store has in use.
        let lookup = self.pseudonymiser.pseudonyms(&header.hetu, &Domain::Lookup);
        let mut parts: Vec<&[u8]> = vec![kind.as_str().as_bytes()];
        parts.extend(header.fingerprint_parts());
        parts.extend_from_slice(body);
        let fingerprint = self.pseudonymiser.fingerprint(Some(&header.hetu), &parts);
        let received_at = now_millis();
        let (payload, fields) = outbox_payload(
            kind,
            minimise(flow, &*message, received_at, &ctx.caller.org),
        );
        let flow_id = flow.id.clone();
        let eviction_stage = message.eviction_stage();
        let facts = StatFacts {
            months_overdue: match message.value("months_overdue", received_at) {
                Some(FieldValue::Count(n)) => Some(n),
                _ => None,
            },
            notice_outcome: None,
        };
        drop(message);
        let job = MessageJob {
            ctx: ctx.clone(),
            policies: Arc::clone(&policies),
            flow_id,
            purpose: header.purpose,
            legal_basis: header.legal_basis,
            eviction_stage,
            facts,
            span: tracing::Span::none(),
            idempotency_key: header.idempotency_key,
            route: Route::ToSocialServices {
                hetu: header.hetu,
                tenancy_ref: header.tenancy_ref,
                recipient_keys: Arc::clone(&self.recipient_keys),
            },
            lookup,
            audit,
            fingerprint,
            payload,
            fields,
            received_at,
        };
        self.submit(job).await
    }

    /// `SocialServices.SendSupportNotice`.
    pub async fn send_support_notice(
        &self,
        ctx: &RequestContext,
        input: SupportNoticeInput<'_>,
    ) -> Result<Receipt, ApiError> {
        // Cases are looked up by the caller's organisation, so the role is checked first.
        self.authorize(ctx, Role::SocialServices).await?;
        let notice = match in_span("validate", || validate_support_notice(&input)) {
            Ok(n) => n,
            Err(v) => return Err(self.deny(ctx, ApiError::InvalidArgument(v), None).await),
        };
        // Only a case the caller received an alert on exists for it; a made-up reference and
        // another organisation's look the same.
        let Some(case) = self
            .store
            .find_case(&ctx.caller.org, &notice.case_ref)
            .await?
        else {
            let err = ApiError::NotFound(
                "no case of yours has this case_ref: use the case_ref of an alert you received; \
                 a case ends when its retention has passed since its last alert, or 30 days \
                 (retention.ended_consent_grace_s) after the resident's consent ended",
            );
            return Err(self.deny(ctx, err, None).await);
        };
        let policies = self.policies.get();
        let flow = self
            .resolve(
                ctx,
                &policies,
                MessageKind::SupportNotice,
                &notice.purpose,
                &notice.legal_basis,
            )
            .await?;
        let input = DecisionInput {
            flow,
            sender: &ctx.caller,
            purpose: &notice.purpose,
            legal_basis: &notice.legal_basis,
            eviction_stage: None,
        };
        if let Err(verdict) = in_span("policy.precheck", || policies.precheck(&input)) {
            let subject = Some(case.audit_subject.clone());
            return Err(self.refuse(ctx, &policies, flow, verdict, subject).await);
        }
        let commitment = notice
            .commitment
            .as_ref()
            .map(|(c, m)| format!("{c}/{m}"))
            .unwrap_or_default();
        let fingerprint = self.pseudonymiser.fingerprint(
            None,
            &[
                MessageKind::SupportNotice.as_str().as_bytes(),
                notice.case_ref.as_bytes(),
                notice.purpose.as_bytes(),
                notice.legal_basis.as_bytes(),
                notice.outcome.as_str().as_bytes(),
                commitment.as_bytes(),
            ],
        );
        let received_at = now_millis();
        let (payload, fields) = outbox_payload(
            MessageKind::SupportNotice,
            minimise(flow, &notice, received_at, &ctx.caller.org),
        );
        let job = MessageJob {
            ctx: ctx.clone(),
            policies: Arc::clone(&policies),
            flow_id: flow.id.clone(),
            purpose: notice.purpose,
            legal_basis: notice.legal_basis,
            eviction_stage: None,
            facts: StatFacts {
                months_overdue: None,
                notice_outcome: Some(notice.outcome.as_str()),
            },
            span: tracing::Span::none(),
            idempotency_key: notice.idempotency_key,
            route: Route::ToLandlord {
                landlord: case.landlord,
                tenancy_ref: case.tenancy_ref,
                case_ref: notice.case_ref.clone(),
            },
            // Read outside the commit's transaction: a key promotion may come between.
            lookup: self
                .pseudonymiser
                .forward(&case.subject_key, &Domain::Lookup),
            audit: self
                .pseudonymiser
                .forward(&case.audit_subject, &Domain::Audit),
            fingerprint,
            payload,
            fields,
            received_at,
        };
        self.submit(job).await
    }

    /// Queues a message for the committer and waits until it is durable.
    async fn submit(&self, job: MessageJob) -> Result<Receipt, ApiError> {
        // The wait for the group committer, as a child of the RPC's span: the decision against
        // the stored consents and the durable commit, with how many jobs shared the commit.
        let span = tracing::debug_span!(
            target: crate::telemetry::RPC_SPAN_TARGET,
            "commit",
            batch_size = tracing::field::Empty,
        );
        async {
            let mut job = job;
            job.span = tracing::Span::current();
            let (reply, done) = oneshot::channel();
            self.queue(Job::Message(Box::new(job), reply))?;
            let Answered {
                result,
                job,
                batch_size,
            } = done.await.map_err(|_| ApiError::ShuttingDown)?;
            tracing::Span::current().record("batch_size", batch_size);
            drop(job); // here, on a request thread: see `Answered`
            result
        }
        .instrument(span)
        .await
    }

    /// The declared flow for `kind` on `legal_basis`, or the audited refusal.
    async fn resolve<'p>(
        &self,
        ctx: &RequestContext,
        policies: &'p Policies,
        kind: MessageKind,
        purpose: &str,
        legal_basis: &str,
    ) -> Result<&'p Flow, ApiError> {
        let mut v = Violations::default();
        // Offered are only the values of flows this caller may send this message on: a
        // purpose declared so that it is refused (debt-collection) is not an invitation.
        let role = ctx.caller.role;
        let offered = |list: String| {
            if list.is_empty() {
                "no flow for this message is declared for your role".to_owned()
            } else {
                format!("for this message from your role: {list}")
            }
        };
        if !policies.is_known_purpose(purpose) {
            v.add(
                "purpose",
                format!(
                    "is not a declared purpose ({})",
                    offered(policies.purposes_for(role, kind))
                ),
            );
        }
        if !policies
            .declarations()
            .legal_bases
            .contains_key(legal_basis)
        {
            v.add(
                "legal_basis",
                format!(
                    "is not a declared legal basis ({})",
                    offered(policies.legal_bases_for(role, kind))
                ),
            );
        }
        if !v.0.is_empty() {
            return Err(self.deny(ctx, ApiError::InvalidArgument(v), None).await);
        }
        match policies.route(kind, legal_basis) {
            Some(flow) => Ok(flow),
            None => {
                let err = ApiError::UndeclaredFlow(format!(
                    "no flow is declared for {} on legal basis {legal_basis:?}; declared bases for it: {}",
                    kind.rpc(),
                    policies.bases_for(kind)
                ));
                let mut record =
                    ctx.audit_record(OffsetDateTime::now_utc(), Outcome::Deny, err.reason());
                record.policy_ids = vec![silta_core::policy::FLOWS_FILE.to_owned()];
                self.record_full(record).await;
                Err(err)
            }
        }
    }

    /// Records and returns a policy refusal that does not depend on the resident.
    async fn refuse(
        &self,
        ctx: &RequestContext,
        policies: &Policies,
        flow: &Flow,
        verdict: Verdict,
        subject: Option<Pseudonym>,
    ) -> ApiError {
        let err = ApiError::PolicyDenied {
            message: policies.reasons(&verdict.policy_ids),
            policy_ids: verdict.policy_ids,
        };
        let mut record = ctx.audit_record(OffsetDateTime::now_utc(), Outcome::Deny, err.reason());
        record.flow_id = Some(flow.id.clone());
        record.subject = subject;
        if let ApiError::PolicyDenied { policy_ids, .. } = &err {
            record.policy_ids.clone_from(policy_ids);
        }
        self.record_full(record).await;
        err
    }

    /// Records a complete audit record through the committer; a failure is logged (refusing is
    /// always safe).
    async fn record_full(&self, record: AuditRecord) {
        let request_id = record.request_id.clone();
        let (reply, done) = oneshot::channel();
        let job = Job::Audit {
            record: Box::new(record),
            reply,
        };
        let recorded = match self.queue(job) {
            Ok(()) => done
                .await
                .map_err(|_| ApiError::ShuttingDown)
                .and_then(|r| r),
            Err(e) => Err(e),
        };
        if let Err(e) = recorded {
            tracing::error!(%request_id, error = %e, "denial not recorded");
        }
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
        let now = now_millis();
        let policies = self.policies.get();
        let hetu = self.parse_hetu(&mut v, "hetu", hetu);
        let consent = match &consent {
            Some(c) => validate_consent(c, "consent", now, &policies, &mut v),
            None => {
                v.add("consent", "is required");
                None
            }
        };
        let (Some(hetu), Some(mut consent), true) = (hetu, consent, v.0.is_empty()) else {
            return Err(self.deny(ctx, ApiError::InvalidArgument(v), None).await);
        };
        // Kept as the store keeps them, so GetConsent issues this very receipt again.
        consent.given_at = to_millis(consent.given_at);
        consent.valid_until = to_millis(consent.valid_until);

        // The consent opens exactly the flows its receipt lists; a flow declared later needs a
        // new consent.
        let flows = policies.consent_categories(&consent.purpose, consent.covers_landlord);
        let own = Domain::Org(ctx.caller.org.clone());
        let own = self.pseudonymiser.pseudonyms(&hetu, &own);
        let lookup = self.pseudonymiser.pseudonyms(&hetu, &Domain::Lookup);
        let audit = self.pseudonymiser.pseudonyms(&hetu, &Domain::Audit);
        drop(hetu);
        let consent_id = uuid::Uuid::now_v7().to_string();

        let mut tx = self.store.begin().await?;
        let version = crate::commit::version_in_use(&mut *tx, &self.pseudonymiser).await?;
        // version_in_use checked the keyring holds it, and each set spans the keyring.
        let (Some(subject_pseudonym), Some(lookup_key), Some(audit_subject)) = (
            own.at(version).cloned(),
            lookup.at(version).cloned(),
            audit.at(version).cloned(),
        ) else {
            return Err(ApiError::Unavailable);
        };
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
            covers_landlord: consent.covers_landlord,
            flows: &flows,
            subject_pseudonym: &subject_pseudonym,
            renews: None,
            now,
        })
        .await?;
        let mut record = ctx.audit_record(now, Outcome::Allow, "consent-recorded");
        record.subject = Some(audit_subject);
        tx.append_audit(&record).await?;
        tx.commit().await?;

        let body = ReceiptBody::new(
            &consent_id,
            &ctx.caller.org,
            &subject_pseudonym,
            &consent,
            &policies,
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
                let err = ApiError::field("target", "is empty: set either consent_id or subject");
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
                let purposes = self.policies.get().consent_purposes();
                if !purposes.iter().any(|p| p == purpose) {
                    v.add(
                        "subject.purpose",
                        format!(
                            "is not a purpose consents are given for (purposes: {})",
                            purposes.join(", ")
                        ),
                    );
                }
                let Some(hetu) = hetu.filter(|_| v.0.is_empty()) else {
                    drop(tx);
                    return Err(self.deny(ctx, ApiError::InvalidArgument(v), None).await);
                };
                let version = crate::commit::version_in_use(&mut *tx, &self.pseudonymiser).await?;
                let p = &self.pseudonymiser;
                let (Some(key), Some(audit)) = (
                    p.pseudonym_at(&hetu, &Domain::Lookup, version),
                    p.pseudonym_at(&hetu, &Domain::Audit, version),
                ) else {
                    return Err(ApiError::Unavailable);
                };
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

    /// `SocialServices.AckAlerts` and `Landlord.AckNotices`: acknowledges the caller's
    /// outbox messages; `role` is the role the RPC is for.
    pub async fn ack_alerts(
        &self,
        ctx: &RequestContext,
        role: Role,
        up_to: u64,
        seqs: &[u64],
    ) -> Result<u64, ApiError> {
        self.authorize(ctx, role).await?;
        if up_to == 0 && seqs.is_empty() {
            let err = ApiError::field(
                "up_to_sequence",
                "is 0 and sequences is empty: set one of them",
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
        let (reply, done) = oneshot::channel();
        self.queue(Job::Ack {
            recipient: ctx.caller.org.clone(),
            up_to,
            seqs: seqs.to_vec(),
            reply,
        })?;
        done.await.map_err(|_| ApiError::ShuttingDown)?
    }

    /// `SocialServices.SubscribeAlerts` and `Landlord.SubscribeNotices`: starts the
    /// subscription task; the caller's outbox messages arrive on the returned channel in
    /// sequence order. `role` is the role the RPC is for.
    ///
    /// A client that stops reading holds at most the channel's few messages and its HTTP/2
    /// stream's send buffer (`limits.stream_send_buffer_bytes`); after
    /// `limits.stream_stall_timeout_ms` the subscription ends and `stalled` is cancelled, so
    /// the stream answers `RESOURCE_EXHAUSTED` (the messages stay in the outbox).
    pub async fn subscribe_alerts(
        self: &Arc<Self>,
        ctx: &RequestContext,
        role: Role,
        after: u64,
    ) -> Result<Subscription, ApiError> {
        self.authorize(ctx, role).await?;
        // Held by the subscription's task: given back when the stream ends, however it ends.
        let Some(quota) = self.streams.try_take(&ctx.caller.org) else {
            self.metrics.quota_refusals.inc();
            let err = ApiError::Quota {
                limit: "limits.max_streams_per_org",
                what: "open streams",
            };
            return Err(self.deny(ctx, err, None).await);
        };
        let (tx, rx) = mpsc::channel(16);
        let stalled = CancellationToken::new();
        let subscription = Subscription {
            messages: rx,
            stalled: stalled.clone(),
        };
        let gw = Arc::clone(self);
        let org = ctx.caller.org.clone();
        let request_id = ctx.request_id.clone();
        let open = crate::metrics::SubscriptionGuard::new(&self.metrics, role.as_str(), &org);
        // Each page delivered is a child of the subscription's RPC span.
        let rpc_span = tracing::Span::current();
        tokio::spawn(async move {
            let _open = open;
            let _quota = quota;
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
                // Lives while the page is handed to the stream: its duration is the delivery's.
                let deliver = (!page.is_empty()).then(|| {
                    tracing::debug_span!(
                        target: crate::telemetry::RPC_SPAN_TARGET,
                        parent: &rpc_span,
                        "step",
                        otel.name = "deliver",
                        messages = page.len(),
                    )
                });
                for alert in page {
                    last = alert.seq;
                    // A subscriber that stopped reading must not hold up shutdown.
                    tokio::select! {
                        sent = tokio::time::timeout(gw.stall_timeout, tx.send(Ok(alert))) => match sent {
                            Ok(Ok(())) => {}
                            Ok(Err(_)) => return,
                            Err(_) => {
                                gw.metrics.stalled_streams.inc();
                                tracing::info!(%request_id, code = "RESOURCE_EXHAUSTED", "subscription ended: its client read nothing while messages waited");
                                stalled.cancel();
                                return;
                            }
                        },
                        () = stop.cancelled() => break 'stream,
                    }
                }
                drop(deliver);
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
        Ok(subscription)
    }

    fn parse_hetu(&self, v: &mut Violations, field: &str, text: &str) -> Option<Hetu> {
        Hetu::parse(text, self.hetu_rules)
            .map_err(|e| v.add(field, e.to_string()))
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

    /// The policy set in force.
    pub fn policies(&self) -> Arc<Policies> {
        self.policies.get()
    }

    /// Re-reads the policy set; swaps it in only if valid, and records the outcome in the
    /// ledger either way. Returns the new set's digest.
    pub async fn reload_policies(&self) -> Result<String, silta_core::policy::PolicyErrors> {
        let result = self.policies.reload(|p| self.recipient_keys.check(p));
        let (outcome, reason) = match &result {
            Ok(p) => (Outcome::Allow, format!("policy-set-{}", p.digest())),
            Err(_) => (Outcome::Deny, "policy-set-invalid-old-set-kept".to_owned()),
        };
        self.record_gateway_event("ReloadPolicies", outcome, &reason)
            .await;
        match result {
            Ok(p) => {
                tracing::info!(source = %self.policies.describe(), digest = p.digest(), flows = p.flows().len(), "policy set reloaded");
                Ok(p.digest().to_owned())
            }
            Err(e) => {
                tracing::error!(source = %self.policies.describe(), errors = %e, "policy reload refused; the previous set keeps serving");
                Err(e)
            }
        }
    }

    /// Records something the gateway did on its own (loading policies, …) in the ledger.
    pub(crate) async fn record_gateway_event(&self, action: &str, outcome: Outcome, reason: &str) {
        let gateway = gateway_caller();
        let request_id = uuid::Uuid::new_v4().simple().to_string();
        let record = AuditRecord::new(
            OffsetDateTime::now_utc(),
            &request_id,
            &gateway,
            action,
            outcome,
            reason,
        );
        self.record_full(record).await;
    }

    /// The public key that verifies consent receipts.
    pub fn receipt_public_key(&self) -> &[u8] {
        self.signer.public_key()
    }
}

/// The gateway itself, as the actor of what it does on its own (reloads, key promotions).
pub(crate) fn gateway_caller() -> Caller {
    Caller {
        // A literal that follows the organisation id rules.
        org: silta_core::OrgId::new("silta-gateway").expect("valid literal org id"),
        role: Role::Gateway,
    }
}

/// The stored form of an outbox message (its kind and its minimised fields, JSON), and the
/// names of the fields it carries.
fn outbox_payload(
    kind: MessageKind,
    fields: serde_json::Map<String, serde_json::Value>,
) -> (String, Vec<String>) {
    // Serialised as borrowed, not through `json!`, which copied the fields into a new value.
    #[derive(serde::Serialize)]
    struct Payload<'a> {
        message: &'a str,
        fields: &'a serde_json::Map<String, serde_json::Value>,
    }
    let payload = Payload {
        message: kind.as_str(),
        fields: &fields,
    };
    // Cannot fail: a JSON value's keys are strings, and these fields are borrowed as they are.
    let json = serde_json::to_string(&payload).expect("a JSON map always serialises");
    (json, fields.keys().cloned().collect())
}

/// Now, to the millisecond: the precision the store keeps, so a retry's receipt is identical.
fn now_millis() -> OffsetDateTime {
    to_millis(OffsetDateTime::now_utc())
}

/// `t` to the millisecond: the precision the store keeps, so what is answered from a stored
/// row (a receipt issued again) is what was answered when it was written.
pub(crate) fn to_millis(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(t.nanosecond() / 1_000_000 * 1_000_000)
        .unwrap_or(t)
}
