//! The tonic services: protobuf in, core types to the gateway, protobuf out. No decisions here.

use std::sync::Arc;
use std::time::Instant;

use silta_core::Role;
use silta_core::consent::{
    ConsentInput, ConsentStanding, ConsentState, ReceiptBody, SignedReceipt,
};
use silta_core::policy::MessageKind;
use silta_core::report::{
    self, DisturbanceCategory, DisturbanceInput, EvictionStageInput, RentArrearsInput, ReportHeader,
};
use silta_core::support::{SupportNoticeInput, SupportOutcome};
use silta_core::validate::Violations;
use silta_store::StoredAlert;
use time::OffsetDateTime;
use tonic::{Request, Response, Status};

use crate::consents::{HeldConsent, ListRequest, RenewalInput};
use crate::gateway::{Gateway, Receipt, RequestContext, WithdrawTarget};
use crate::proto;
use crate::proto::landlord_server::Landlord;
use crate::proto::social_services_server::SocialServices;
use crate::status::ApiError;
use crate::tls::PeerInfo;

/// Response metadata key carrying the request id.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Reads the caller from the connection and the person acting from the bearer token (if any),
/// and mints a request id. A refused token is audited and answered like every error.
pub(crate) async fn context<T>(
    gw: &Gateway,
    req: &Request<T>,
    action: &'static str,
) -> Result<RequestContext, Status> {
    let started = Instant::now();
    let request_id = uuid::Uuid::new_v4().simple().to_string();
    let refused = match req.extensions().get::<PeerInfo>().map(|p| p.caller.clone()) {
        Some(Ok(caller)) => {
            let authorization = req
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok());
            let span = tracing::Span::current();
            span.record("request_id", request_id.as_str());
            span.record("org", caller.org.as_str());
            span.record("role", caller.role.as_str());
            let mut ctx = RequestContext {
                request_id,
                caller,
                action,
                actor: None,
                deadline: req
                    .extensions()
                    .get::<crate::connections::ClientDeadline>()
                    .map(|d| d.0),
            };
            match gw.actors.verify(&ctx.caller, action, authorization).await {
                Ok(actor) => {
                    ctx.actor = actor;
                    return Ok(ctx);
                }
                Err(e) => {
                    gw.audit_denial(&ctx, &e, None).await;
                    return Err(refusal(&gw.metrics, &ctx, started, e));
                }
            }
        }
        Some(Err(e)) => ApiError::Unauthenticated(e.to_string()),
        None => ApiError::Unauthenticated("a client certificate is required".into()),
    };
    // No caller to audit: the certificate names none. Log it, and answer like every error.
    tracing::info!(%request_id, rpc = action, code = refused.reason(), "rpc refused");
    let mut status = refused.into_status(&request_id);
    if let Ok(v) = request_id.parse() {
        status.metadata_mut().insert(REQUEST_ID_HEADER, v);
    }
    Err(status)
}

/// Logs the call's outcome (never its content) and shapes the response.
pub(crate) fn finish<T>(
    metrics: &crate::metrics::Metrics,
    ctx: &RequestContext,
    started: Instant,
    result: Result<T, ApiError>,
) -> Result<Response<T>, Status> {
    let body = result.map_err(|e| refusal(metrics, ctx, started, e))?;
    let elapsed_us = count(metrics, ctx, started, "OK");
    crate::telemetry::record_status(&tracing::Span::current(), tonic::Code::Ok);
    // A call that succeeded is in the ledger (by request id) and the metrics: its line is
    // DEBUG, like its span, which carries the request id, organisation, role, flow and code.
    tracing::debug!(rpc = ctx.action, elapsed_us, "rpc");
    let mut response = Response::new(body);
    if let Ok(v) = ctx.request_id.parse() {
        response.metadata_mut().insert(REQUEST_ID_HEADER, v);
    }
    Ok(response)
}

/// The status of a refused call, logged and counted (also for calls refused before their
/// handler ran, e.g. for a bad bearer token).
fn refusal(
    metrics: &crate::metrics::Metrics,
    ctx: &RequestContext,
    started: Instant,
    e: ApiError,
) -> Status {
    let code = e.reason();
    let elapsed_us = count(metrics, ctx, started, code);
    // Whole on its own: at INFO there is no span around it.
    tracing::info!(
        request_id = %ctx.request_id,
        org = %ctx.caller.org,
        role = ctx.caller.role.as_str(),
        rpc = ctx.action,
        code,
        elapsed_us,
        "rpc refused"
    );
    let mut status = e.into_status(&ctx.request_id);
    crate::telemetry::record_status(&tracing::Span::current(), status.code());
    if let Ok(v) = ctx.request_id.parse() {
        status.metadata_mut().insert(REQUEST_ID_HEADER, v);
    }
    status
}

/// Counts the call by RPC and outcome, records the outcome in its span; returns its duration.
fn count(
    metrics: &crate::metrics::Metrics,
    ctx: &RequestContext,
    started: Instant,
    code: &'static str,
) -> u64 {
    tracing::Span::current().record("code", code);
    let labels = crate::metrics::RpcLabels {
        rpc: ctx.action,
        code,
    };
    metrics.requests.get_or_create(&labels).inc();
    let elapsed = started.elapsed();
    metrics
        .rpc_seconds
        .get_or_create(&labels)
        .observe(elapsed.as_secs_f64());
    u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX)
}

pub(crate) fn timestamp(t: OffsetDateTime) -> prost_types::Timestamp {
    let nanos = t.unix_timestamp_nanos();
    prost_types::Timestamp {
        seconds: i64::try_from(nanos.div_euclid(1_000_000_000)).unwrap_or(i64::MAX),
        nanos: i32::try_from(nanos.rem_euclid(1_000_000_000)).unwrap_or(0),
    }
}

pub(crate) fn from_timestamp(
    v: &mut Violations,
    field: &str,
    ts: Option<&prost_types::Timestamp>,
) -> Option<OffsetDateTime> {
    let ts = ts?;
    let t = (0..1_000_000_000)
        .contains(&ts.nanos)
        .then(|| {
            OffsetDateTime::from_unix_timestamp_nanos(
                i128::from(ts.seconds) * 1_000_000_000 + i128::from(ts.nanos),
            )
            .ok()
        })
        .flatten();
    if t.is_none() {
        v.add(field, "is not a valid timestamp");
    }
    t
}

fn stage_from_proto(value: i32) -> Option<report::EvictionStage> {
    use proto::EvictionStage as P;
    use report::EvictionStage as C;
    match P::try_from(value).ok()? {
        P::Unspecified => None,
        P::None => Some(C::None),
        P::Warning => Some(C::Warning),
        P::CourtApplication => Some(C::CourtApplication),
        P::CourtDecision => Some(C::CourtDecision),
        P::EnforcementScheduled => Some(C::EnforcementScheduled),
    }
}

fn stage_to_proto(stage: report::EvictionStage) -> proto::EvictionStage {
    use proto::EvictionStage as P;
    use report::EvictionStage as C;
    match stage {
        C::None => P::None,
        C::Warning => P::Warning,
        C::CourtApplication => P::CourtApplication,
        C::CourtDecision => P::CourtDecision,
        C::EnforcementScheduled => P::EnforcementScheduled,
    }
}

fn band_to_proto(band: report::ArrearsBand) -> proto::ArrearsBand {
    use proto::ArrearsBand as P;
    use report::ArrearsBand as C;
    match band {
        C::Under500 => P::Under500,
        C::From500To1500 => P::ArrearsBand500To1500,
        C::From1500To5000 => P::ArrearsBand1500To5000,
        C::From5000 => P::ArrearsBand5000OrMore,
    }
}

fn category_from_proto(value: i32) -> Option<DisturbanceCategory> {
    use proto::DisturbanceCategory as P;
    match P::try_from(value).ok()? {
        P::Unspecified => None,
        P::Noise => Some(DisturbanceCategory::Noise),
        P::Damage => Some(DisturbanceCategory::Damage),
        P::ThreatToSafety => Some(DisturbanceCategory::ThreatToSafety),
        P::Other => Some(DisturbanceCategory::Other),
    }
}

fn category_to_proto(c: DisturbanceCategory) -> proto::DisturbanceCategory {
    use proto::DisturbanceCategory as P;
    match c {
        DisturbanceCategory::Noise => P::Noise,
        DisturbanceCategory::Damage => P::Damage,
        DisturbanceCategory::ThreatToSafety => P::ThreatToSafety,
        DisturbanceCategory::Other => P::Other,
    }
}

fn outcome_from_proto(value: i32) -> Option<SupportOutcome> {
    use proto::SupportOutcome as P;
    match P::try_from(value).ok()? {
        P::Unspecified => None,
        P::SupportEngaged => Some(SupportOutcome::SupportEngaged),
        P::PaymentCommitment => Some(SupportOutcome::PaymentCommitment),
        P::ClientNotReached => Some(SupportOutcome::ClientNotReached),
        P::CaseClosed => Some(SupportOutcome::CaseClosed),
    }
}

fn outcome_to_proto(o: SupportOutcome) -> proto::SupportOutcome {
    use proto::SupportOutcome as P;
    match o {
        SupportOutcome::SupportEngaged => P::SupportEngaged,
        SupportOutcome::PaymentCommitment => P::PaymentCommitment,
        SupportOutcome::ClientNotReached => P::ClientNotReached,
        SupportOutcome::CaseClosed => P::CaseClosed,
    }
}

/// An outbox message's stored payload: its kind and its minimised fields.
struct Payload {
    kind: MessageKind,
    fields: serde_json::Map<String, serde_json::Value>,
    /// The identity sealed to the recipient, on a flow that discloses it.
    sealed: Option<proto::SealedIdentity>,
}

impl Payload {
    fn parse(a: &StoredAlert) -> Result<Self, ApiError> {
        let unreadable = |why: &str| {
            tracing::error!(seq = a.seq, why, "stored outbox payload unreadable");
            ApiError::Unavailable
        };
        let mut v: serde_json::Value =
            serde_json::from_str(&a.payload).map_err(|_| unreadable("not JSON"))?;
        let kind = v
            .get("message")
            .and_then(|k| k.as_str())
            .and_then(MessageKind::parse)
            .ok_or_else(|| unreadable("no message kind"))?;
        let fields = match v.get_mut("fields").map(serde_json::Value::take) {
            Some(serde_json::Value::Object(m)) => m,
            _ => return Err(unreadable("no fields")),
        };
        let sealed = match v.get("sealed_identity") {
            None => None,
            Some(s) => {
                use base64::Engine as _;
                let b64 = base64::engine::general_purpose::STANDARD;
                let text = |k: &str| s.get(k).and_then(|x| x.as_str());
                let bytes = |k: &str| text(k).and_then(|x| b64.decode(x).ok());
                Some(proto::SealedIdentity {
                    suite: text("suite")
                        .ok_or_else(|| unreadable("sealed suite"))?
                        .to_owned(),
                    key_id: text("key_id")
                        .ok_or_else(|| unreadable("sealed key id"))?
                        .to_owned(),
                    enc: bytes("enc").ok_or_else(|| unreadable("sealed enc"))?,
                    ciphertext: bytes("ciphertext")
                        .ok_or_else(|| unreadable("sealed ciphertext"))?,
                })
            }
        };
        Ok(Payload {
            kind,
            fields,
            sealed,
        })
    }

    fn text(&self, key: &str) -> Option<String> {
        self.fields.get(key)?.as_str().map(str::to_owned)
    }

    fn count(&self, key: &str) -> Option<u32> {
        u32::try_from(self.fields.get(key)?.as_u64()?).ok()
    }

    fn parsed<T>(&self, key: &str, parse: impl Fn(&str) -> Option<T>) -> Option<T> {
        parse(self.fields.get(key)?.as_str()?)
    }
}

/// A stored alert as the social-services subscriber sees it. Fields the flow did not declare
/// are absent from the payload and stay unset.
pub fn alert_to_proto(a: StoredAlert) -> Result<proto::Alert, ApiError> {
    use proto::alert::Details;
    let p = Payload::parse(&a)?;
    let stage = |key| {
        p.parsed(key, report::EvictionStage::parse)
            .map(|s| stage_to_proto(s).into())
    };
    let details = match p.kind {
        MessageKind::RentArrears => Some(Details::RentArrears(proto::RentArrearsDetails {
            arrears_band: p
                .parsed("arrears_band", report::ArrearsBand::parse)
                .map(|b| band_to_proto(b).into()),
            months_overdue: p.count("months_overdue"),
            eviction_stage: stage("eviction_stage"),
        })),
        MessageKind::EvictionStage => {
            Some(Details::EvictionStageChange(proto::EvictionStageDetails {
                eviction_stage: stage("eviction_stage"),
                stage_month: p.text("stage_month"),
            }))
        }
        MessageKind::Disturbance => Some(Details::Disturbance(proto::DisturbanceDetails {
            category: p
                .parsed("category", DisturbanceCategory::parse)
                .map(|c| category_to_proto(c).into()),
            count_in_period: p.count("count_in_period"),
            period_month: p.text("period_month"),
        })),
        MessageKind::SupportNotice => None,
    };
    Ok(proto::Alert {
        sequence: a.seq,
        alert_id: a.alert_id,
        flow_id: a.flow_id,
        purpose: a.purpose,
        legal_basis: a.legal_basis,
        consent_id: a.consent_id,
        subject_pseudonym: a.subject_pseudonym,
        case_ref: a.case_ref,
        report_month: p.text("report_month"),
        landlord_contact_office: p.text("landlord_contact_office"),
        reporting_organisation: p.text("reporting_organisation"),
        sealed_identity: p.sealed.clone(),
        details,
    })
}

/// A stored support notice as the landlord sees it.
pub fn notice_to_proto(a: StoredAlert) -> Result<proto::SupportNotice, ApiError> {
    let p = Payload::parse(&a)?;
    Ok(proto::SupportNotice {
        sequence: a.seq,
        notice_id: a.alert_id,
        flow_id: a.flow_id,
        purpose: a.purpose,
        legal_basis: a.legal_basis,
        // For a landlord, the outbox keeps its own tenancy reference as the case reference.
        tenancy_ref: a.case_ref,
        notice_month: p.text("notice_month"),
        outcome: p
            .parsed("outcome", SupportOutcome::parse)
            .map(|o| outcome_to_proto(o).into()),
        commitment_band: p
            .parsed("commitment_band", report::ArrearsBand::parse)
            .map(|b| band_to_proto(b).into()),
        commitment_month: p.text("commitment_month"),
    })
}

/// A signed consent receipt and its fields, as EnrolClient, GetConsent and RenewConsent
/// return it.
fn consent_receipt_to_proto(receipt: SignedReceipt, body: ReceiptBody) -> proto::ConsentReceipt {
    proto::ConsentReceipt {
        payload: receipt.payload,
        signature: receipt.signature,
        signing_public_key: receipt.public_key,
        receipt_id: body.receipt_id,
        controller: body.controller,
        recipient: body.recipient,
        subject_pseudonym: body.subject_pseudonym,
        purpose: body.purpose,
        legal_basis: body.legal_basis,
        data_categories: body.data_categories,
        share_outcome_with_landlord: body.share_outcome_with_landlord,
        valid_from: Some(timestamp(body.valid_from)),
        valid_until: Some(timestamp(body.valid_until)),
        notice_version: body.notice_version,
    }
}

/// The filter a `ConsentState` asks for: `Some(None)` for every state, `None` for a value the
/// contract does not define.
fn consent_state_from_proto(value: i32) -> Option<Option<ConsentStanding>> {
    use proto::ConsentState as P;
    Some(match P::try_from(value).ok()? {
        P::Unspecified => None,
        P::Active => Some(ConsentStanding::Active),
        P::Expiring => Some(ConsentStanding::Expiring),
        P::Expired => Some(ConsentStanding::Expired),
        P::Withdrawn => Some(ConsentStanding::Withdrawn),
        P::Superseded => Some(ConsentStanding::Superseded),
    })
}

fn consent_state_to_proto(s: ConsentStanding) -> proto::ConsentState {
    use proto::ConsentState as P;
    match s {
        ConsentStanding::Active => P::Active,
        ConsentStanding::Expiring => P::Expiring,
        ConsentStanding::Expired => P::Expired,
        ConsentStanding::Withdrawn => P::Withdrawn,
        ConsentStanding::Superseded => P::Superseded,
    }
}

fn consent_to_proto(c: HeldConsent) -> proto::ConsentSummary {
    let s = c.stored;
    let withdrawn = s.record.state == ConsentState::Withdrawn;
    proto::ConsentSummary {
        consent_id: s.record.consent_id,
        state: consent_state_to_proto(c.status).into(),
        subject_pseudonym: s.subject_pseudonym,
        purpose: s.record.purpose,
        flows: s.record.flows,
        valid_from: Some(timestamp(s.record.valid_from)),
        valid_until: Some(timestamp(s.record.valid_until)),
        recorded_at: Some(timestamp(s.created_at)),
        // A withdrawn consent's state changes no more: its last change is the withdrawal.
        withdrawn_at: withdrawn.then(|| timestamp(s.changed_at)),
        share_outcome_with_landlord: s.record.covers_landlord,
        renews_consent_id: s.renews.unwrap_or_default(),
        evidence_ref: s.evidence_ref,
        notice_version: s.notice_version,
    }
}

fn receipt_to_proto(receipt: Receipt) -> proto::ReportReceipt {
    proto::ReportReceipt {
        report_id: receipt.report_id,
        received_at: Some(timestamp(receipt.received_at)),
        idempotency_key: receipt.idempotency_key,
    }
}

type Outbox<T> = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

/// Subscribes the caller to its outbox and maps each stored message with `to_proto`.
async fn subscribe<T: Send + 'static>(
    gw: &Arc<Gateway>,
    ctx: &RequestContext,
    role: Role,
    after: u64,
    to_proto: fn(StoredAlert) -> Result<T, ApiError>,
) -> Result<Outbox<T>, ApiError> {
    let subscription = gw.subscribe_alerts(ctx, role, after).await?;
    let stall_ms = u64::try_from(gw.stall_timeout.as_millis()).unwrap_or(u64::MAX);
    Ok(Box::pin(OutboxStream {
        messages: subscription.messages,
        stalled: subscription.stalled,
        stall_ms,
        ended: false,
        request_id: ctx.request_id.clone(),
        to_proto,
    }))
}

/// A subscription as a response stream. Once the subscription has stalled, the stream ends
/// with `RESOURCE_EXHAUSTED` at its next read, dropping what it still buffered: a client that
/// stopped reading must reconnect from its cursor, not be fed a backlog.
struct OutboxStream<T> {
    messages: tokio::sync::mpsc::Receiver<Result<StoredAlert, ApiError>>,
    stalled: tokio_util::sync::CancellationToken,
    stall_ms: u64,
    ended: bool,
    request_id: String,
    to_proto: fn(StoredAlert) -> Result<T, ApiError>,
}

impl<T> tokio_stream::Stream for OutboxStream<T> {
    type Item = Result<T, Status>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        if self.ended {
            return Poll::Ready(None);
        }
        if self.stalled.is_cancelled() {
            self.ended = true;
            self.messages.close();
            let status = ApiError::Stalled(self.stall_ms).into_status(&self.request_id);
            return Poll::Ready(Some(Err(status)));
        }
        match self.messages.poll_recv(cx) {
            Poll::Ready(Some(item)) => {
                let to_proto = self.to_proto;
                let request_id = &self.request_id;
                Poll::Ready(Some(
                    item.and_then(to_proto)
                        .map_err(|e| e.into_status(request_id)),
                ))
            }
            Poll::Ready(None) if self.stalled.is_cancelled() => {
                self.ended = true;
                let status = ApiError::Stalled(self.stall_ms).into_status(&self.request_id);
                Poll::Ready(Some(Err(status)))
            }
            other => other.map(|_| None),
        }
    }
}

/// The common header of a landlord report: every report request names these fields alike.
macro_rules! report_header {
    ($r:expr) => {
        ReportHeader {
            idempotency_key: &$r.idempotency_key,
            hetu: &$r.hetu,
            tenancy_ref: &$r.tenancy_ref,
            purpose: &$r.purpose,
            legal_basis: &$r.legal_basis,
            landlord_contact_office: &$r.landlord_contact_office,
        }
    };
}

/// `silta.v1.Landlord`.
#[derive(Clone)]
pub struct LandlordService {
    gw: Arc<Gateway>,
}

impl LandlordService {
    /// The service over `gw`.
    pub fn new(gw: Arc<Gateway>) -> Self {
        LandlordService { gw }
    }
}

#[tonic::async_trait]
impl Landlord for LandlordService {
    async fn report_rent_arrears(
        &self,
        req: Request<proto::ReportRentArrearsRequest>,
    ) -> Result<Response<proto::ReportReceipt>, Status> {
        let started = Instant::now();
        let ctx = context(&self.gw, &req, "Landlord.ReportRentArrears").await?;
        let r = req.get_ref();
        let input = RentArrearsInput {
            header: report_header!(r),
            arrears_cents: r.arrears_cents,
            months_overdue: r.months_overdue,
            eviction_stage: stage_from_proto(r.eviction_stage),
            free_text_note: &r.free_text_note,
        };
        let result = self.gw.report_rent_arrears(&ctx, input).await;
        finish(
            &self.gw.metrics,
            &ctx,
            started,
            result.map(receipt_to_proto),
        )
    }

    async fn report_eviction_stage(
        &self,
        req: Request<proto::ReportEvictionStageRequest>,
    ) -> Result<Response<proto::ReportReceipt>, Status> {
        let started = Instant::now();
        let ctx = context(&self.gw, &req, "Landlord.ReportEvictionStage").await?;
        let r = req.get_ref();
        let input = EvictionStageInput {
            header: report_header!(r),
            eviction_stage: stage_from_proto(r.eviction_stage),
            stage_date: &r.stage_date,
        };
        let result = self.gw.report_eviction_stage(&ctx, input).await;
        finish(
            &self.gw.metrics,
            &ctx,
            started,
            result.map(receipt_to_proto),
        )
    }

    async fn report_disturbance(
        &self,
        req: Request<proto::ReportDisturbanceRequest>,
    ) -> Result<Response<proto::ReportReceipt>, Status> {
        let started = Instant::now();
        let ctx = context(&self.gw, &req, "Landlord.ReportDisturbance").await?;
        let r = req.get_ref();
        let input = DisturbanceInput {
            header: report_header!(r),
            category: category_from_proto(r.category),
            count_in_period: r.count_in_period,
            period_month: &r.period_month,
        };
        let result = self.gw.report_disturbance(&ctx, input).await;
        finish(
            &self.gw.metrics,
            &ctx,
            started,
            result.map(receipt_to_proto),
        )
    }

    type SubscribeNoticesStream = Outbox<proto::SupportNotice>;

    async fn subscribe_notices(
        &self,
        req: Request<proto::SubscribeNoticesRequest>,
    ) -> Result<Response<Self::SubscribeNoticesStream>, Status> {
        let started = Instant::now();
        let ctx = context(&self.gw, &req, "Landlord.SubscribeNotices").await?;
        let after = req.get_ref().after_sequence;
        let result = subscribe(&self.gw, &ctx, Role::Landlord, after, notice_to_proto).await;
        finish(&self.gw.metrics, &ctx, started, result)
    }

    async fn ack_notices(
        &self,
        req: Request<proto::AckNoticesRequest>,
    ) -> Result<Response<proto::AckNoticesResponse>, Status> {
        let started = Instant::now();
        let ctx = context(&self.gw, &req, "Landlord.AckNotices").await?;
        let r = req.get_ref();
        let result = self
            .gw
            .ack_alerts(&ctx, Role::Landlord, r.up_to_sequence, &r.sequences)
            .await
            .map(|acknowledged| proto::AckNoticesResponse { acknowledged });
        finish(&self.gw.metrics, &ctx, started, result)
    }
}

/// `silta.v1.SocialServices`.
#[derive(Clone)]
pub struct SocialServicesService {
    gw: Arc<Gateway>,
}

impl SocialServicesService {
    /// The service over `gw`.
    pub fn new(gw: Arc<Gateway>) -> Self {
        SocialServicesService { gw }
    }
}

#[tonic::async_trait]
impl SocialServices for SocialServicesService {
    async fn enrol_client(
        &self,
        req: Request<proto::EnrolClientRequest>,
    ) -> Result<Response<proto::EnrolClientResponse>, Status> {
        let started = Instant::now();
        let ctx = context(&self.gw, &req, "SocialServices.EnrolClient").await?;
        let r = req.get_ref();
        let mut times = Violations::default();
        let consent = r.consent.as_ref().map(|c| ConsentInput {
            purpose: &c.purpose,
            given_at: from_timestamp(&mut times, "consent.given_at", c.given_at.as_ref()),
            valid_until: from_timestamp(&mut times, "consent.valid_until", c.valid_until.as_ref()),
            evidence_ref: &c.evidence_ref,
            notice_version: &c.notice_version,
            share_outcome_with_landlord: c.share_outcome_with_landlord,
        });
        let result = self
            .gw
            .enrol_client(&ctx, &r.hetu, consent, times)
            .await
            .map(|e| proto::EnrolClientResponse {
                subject_pseudonym: e.subject_pseudonym.to_string(),
                consent_id: e.consent_id,
                receipt: Some(consent_receipt_to_proto(e.receipt, e.body)),
            });
        finish(&self.gw.metrics, &ctx, started, result)
    }

    async fn list_consents(
        &self,
        req: Request<proto::ListConsentsRequest>,
    ) -> Result<Response<proto::ListConsentsResponse>, Status> {
        let started = Instant::now();
        let ctx = context(&self.gw, &req, "SocialServices.ListConsents").await?;
        let r = req.get_ref();
        let mut v = Violations::default();
        let status = consent_state_from_proto(r.state).unwrap_or_else(|| {
            v.add(
                "state",
                "is not a ConsentState value (UNSPECIFIED lists every state)",
            );
            None
        });
        let input = ListRequest {
            status,
            expiring_within_days: r.expiring_within_days,
            subject_pseudonym: &r.subject_pseudonym,
            page_size: r.page_size,
            page_token: &r.page_token,
        };
        let result =
            self.gw
                .list_consents(&ctx, input, v)
                .await
                .map(|page| proto::ListConsentsResponse {
                    consents: page.consents.into_iter().map(consent_to_proto).collect(),
                    next_page_token: page.next_page_token,
                });
        finish(&self.gw.metrics, &ctx, started, result)
    }

    async fn get_consent(
        &self,
        req: Request<proto::GetConsentRequest>,
    ) -> Result<Response<proto::GetConsentResponse>, Status> {
        let started = Instant::now();
        let ctx = context(&self.gw, &req, "SocialServices.GetConsent").await?;
        let result = self
            .gw
            .get_consent(&ctx, &req.get_ref().consent_id)
            .await
            .map(|c| proto::GetConsentResponse {
                consent: Some(consent_to_proto(c.consent)),
                receipt: Some(consent_receipt_to_proto(c.receipt, c.body)),
            });
        finish(&self.gw.metrics, &ctx, started, result)
    }

    async fn renew_consent(
        &self,
        req: Request<proto::RenewConsentRequest>,
    ) -> Result<Response<proto::RenewConsentResponse>, Status> {
        let started = Instant::now();
        let ctx = context(&self.gw, &req, "SocialServices.RenewConsent").await?;
        let r = req.get_ref();
        let mut times = Violations::default();
        let renewal = r.renewal.as_ref().map(|n| RenewalInput {
            given_at: from_timestamp(&mut times, "renewal.given_at", n.given_at.as_ref()),
            valid_until: from_timestamp(&mut times, "renewal.valid_until", n.valid_until.as_ref()),
            evidence_ref: &n.evidence_ref,
            notice_version: &n.notice_version,
        });
        let result = self
            .gw
            .renew_consent(&ctx, &r.consent_id, renewal, times)
            .await
            .map(|n| proto::RenewConsentResponse {
                consent_id: n.enrolment.consent_id,
                renewed_consent_id: n.renewed,
                subject_pseudonym: n.enrolment.subject_pseudonym.to_string(),
                receipt: Some(consent_receipt_to_proto(
                    n.enrolment.receipt,
                    n.enrolment.body,
                )),
            });
        finish(&self.gw.metrics, &ctx, started, result)
    }

    async fn withdraw_consent(
        &self,
        req: Request<proto::WithdrawConsentRequest>,
    ) -> Result<Response<proto::WithdrawConsentResponse>, Status> {
        use proto::withdraw_consent_request::Target;
        let started = Instant::now();
        let ctx = context(&self.gw, &req, "SocialServices.WithdrawConsent").await?;
        let target = match &req.get_ref().target {
            Some(Target::ConsentId(id)) => WithdrawTarget::ConsentId(id),
            Some(Target::Subject(s)) => WithdrawTarget::Subject {
                hetu: &s.hetu,
                purpose: &s.purpose,
            },
            None => WithdrawTarget::Missing,
        };
        let result =
            self.gw
                .withdraw_consent(&ctx, target)
                .await
                .map(|w| proto::WithdrawConsentResponse {
                    withdrawn_consent_ids: w.withdrawn,
                    purged_alerts: w.purged_alerts,
                });
        finish(&self.gw.metrics, &ctx, started, result)
    }

    type SubscribeAlertsStream = Outbox<proto::Alert>;

    async fn subscribe_alerts(
        &self,
        req: Request<proto::SubscribeAlertsRequest>,
    ) -> Result<Response<Self::SubscribeAlertsStream>, Status> {
        let started = Instant::now();
        let ctx = context(&self.gw, &req, "SocialServices.SubscribeAlerts").await?;
        let after = req.get_ref().after_sequence;
        let result = subscribe(&self.gw, &ctx, Role::SocialServices, after, alert_to_proto).await;
        finish(&self.gw.metrics, &ctx, started, result)
    }

    async fn ack_alerts(
        &self,
        req: Request<proto::AckAlertsRequest>,
    ) -> Result<Response<proto::AckAlertsResponse>, Status> {
        let started = Instant::now();
        let ctx = context(&self.gw, &req, "SocialServices.AckAlerts").await?;
        let r = req.get_ref();
        let result = self
            .gw
            .ack_alerts(&ctx, Role::SocialServices, r.up_to_sequence, &r.sequences)
            .await
            .map(|acknowledged| proto::AckAlertsResponse { acknowledged });
        finish(&self.gw.metrics, &ctx, started, result)
    }

    async fn send_support_notice(
        &self,
        req: Request<proto::SendSupportNoticeRequest>,
    ) -> Result<Response<proto::SupportNoticeReceipt>, Status> {
        let started = Instant::now();
        let ctx = context(&self.gw, &req, "SocialServices.SendSupportNotice").await?;
        let r = req.get_ref();
        let input = SupportNoticeInput {
            idempotency_key: &r.idempotency_key,
            case_ref: &r.case_ref,
            purpose: &r.purpose,
            legal_basis: &r.legal_basis,
            outcome: outcome_from_proto(r.outcome),
            commitment_cents: r.commitment_cents,
            commitment_month: &r.commitment_month,
        };
        let result = self
            .gw
            .send_support_notice(&ctx, input)
            .await
            .map(|receipt| proto::SupportNoticeReceipt {
                notice_id: receipt.report_id,
                received_at: Some(timestamp(receipt.received_at)),
                idempotency_key: receipt.idempotency_key,
            });
        finish(&self.gw.metrics, &ctx, started, result)
    }
}
