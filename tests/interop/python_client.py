#!/usr/bin/env python3
"""Cross-language check of the contract, as an outside integrator would do it.

Generates a Python client from proto/silta/v1/*.proto with grpcio-tools, mints dev
certificates with `silta dev-pki`, runs `silta serve`, and exercises every Landlord and
SocialServices RPC, and the DPO's Audit/GetRetention and the analyst's Audit/Statistics, over mTLS: reports of each kind on their declared flows, alerts read through
the `details` oneof, a support notice round trip back to the landlord, policy refusals and bad
input, decoding google.rpc error details with the standard library.

Usage: python_client.py PATH/TO/silta
(needs: grpcio grpcio-tools grpcio-status grpcio-reflection cryptography)
Exits non-zero on the first unexpected behaviour. Loopback only; stops its server.
"""

import os
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone

import grpc
from grpc_status import rpc_status
from grpc_tools import protoc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hpke_open import open_sealed_identity  # noqa: E402  (beside this file)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Synthetic codes: individual numbers 900-999, which no real person has (tests/fixtures).
RESIDENT = "150385-9345"
UNENROLLED = "020464-911D"  # a resident nobody enrolled: only a statutory flow reaches them

# The organisations this run mints certificates for. helsinki-social is also the municipal
# social services that the statutory flow in policies/flows.toml names.
LANDLORD = "city-housing"
SOCIAL = "helsinki-social"
OTHER_SOCIAL = "espoo-social"
DPO = "dpo-office"
ANALYST = "programme-research"

PURPOSE = "eviction-prevention"
CONSENT_BASIS = "gdpr-6-1-a-consent"
STATUTORY_BASIS = "fi-shl-35-notification"


def check(what, ok):
    print(("  ok   " if ok else "  FAIL ") + what)
    if not ok:
        raise SystemExit(1)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def details_of(err, kind):
    """The google.rpc details of type `kind` in a failed call's status."""
    status = rpc_status.from_call(err)
    found = []
    for detail in status.details if status else []:
        if detail.Is(kind.DESCRIPTOR):
            msg = kind()
            detail.Unpack(msg)
            found.append(msg)
    return found


def bad_request_fields(err):
    from google.rpc import error_details_pb2

    return [v.field for br in details_of(err, error_details_pb2.BadRequest) for v in br.field_violations]


def error_info(err):
    """(reason, domain, metadata) of the call's google.rpc.ErrorInfo, or None."""
    from google.rpc import error_details_pb2

    infos = details_of(err, error_details_pb2.ErrorInfo)
    return (infos[0].reason, infos[0].domain, dict(infos[0].metadata)) if infos else None


def refused(call, *args, **kwargs):
    """Runs a call that must fail; returns its RpcError."""
    try:
        call(*args, timeout=10, **kwargs)
    except grpc.RpcError as err:
        return err
    return None


def is_policy_denied(err, policy_id):
    """PERMISSION_DENIED with ErrorInfo POLICY_DENIED whose policy_ids name `policy_id`."""
    if err is None or err.code() != grpc.StatusCode.PERMISSION_DENIED:
        return False
    info = error_info(err)
    return (info is not None and info[0] == "POLICY_DENIED" and info[1] == "silta"
            and policy_id in info[2].get("policy_ids", "").split(","))


def main():
    silta = os.path.abspath(sys.argv[1])
    work = tempfile.mkdtemp(prefix="silta-interop-")
    gen = os.path.join(work, "gen")
    os.makedirs(gen)
    proto_dir = os.path.join(ROOT, "proto")
    files = [os.path.join("silta/v1", f) for f in ("common.proto", "landlord.proto", "social_services.proto", "audit.proto")]
    wkt = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    rc = protoc.main(["protoc", f"-I{proto_dir}", f"-I{wkt}", f"--python_out={gen}", f"--grpc_python_out={gen}", *files])
    check("client generated from the .proto with grpcio-tools", rc == 0)
    sys.path.insert(0, gen)
    from silta.v1 import common_pb2, landlord_pb2, landlord_pb2_grpc, social_services_pb2 as ss, social_services_pb2_grpc
    from silta.v1 import audit_pb2, audit_pb2_grpc

    pki = os.path.join(work, "pki")
    clients = [f"{LANDLORD}:landlord", f"{SOCIAL}:social_services", f"{OTHER_SOCIAL}:social_services", f"{DPO}:dpo",
               f"{ANALYST}:analyst"]
    subprocess.run([silta, "dev-pki", "--out", pki, *(a for c in clients for a in ("--client", c))],
                   check=True, stdout=subprocess.DEVNULL)
    subprocess.run([silta, "keys", "generate", "--out", os.path.join(pki, "master.key")], check=True, stdout=subprocess.DEVNULL)
    port = free_port()
    admin_port = free_port()
    config = os.path.join(work, "silta.toml")
    with open(config, "w") as f:
        f.write(f"""listen = "127.0.0.1:{port}"
[admin]
listen = "127.0.0.1:{admin_port}"
[store]
url = "sqlite://{work}/silta.db"
[tls]
cert = "{pki}/server.pem"
key = "{pki}/server.key"
client_ca = "{pki}/ca.pem"
[secrets]
master_secret_file = "{pki}/master.key"
[hetu]
allow_temporary = true
# The statutory flow discloses identity to helsinki-social: dev-pki made its key pair.
[[statutory_recipients]]
org = "{SOCIAL}"
hpke_public_key_file = "{pki}/{SOCIAL}.hpke-public.key"
""")
    log = open(os.path.join(work, "serve.log"), "w")
    server = subprocess.Popen([silta, "serve", "--config", config], stderr=log, stdout=log)
    try:
        run(port, pki, common_pb2, landlord_pb2, landlord_pb2_grpc, ss, social_services_pb2_grpc)
        dpo(port, pki, audit_pb2, audit_pb2_grpc)
        scrape(admin_port)
    finally:
        server.terminate()
        try:
            code = server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            code = None
        log.close()
    check("silta serve stopped cleanly on SIGTERM", code == 0)
    with open(os.path.join(work, "serve.log")) as f:
        logs = f.read()
    check("the server log holds no identity code",
          all(c not in logs and c.replace("-", "") not in logs for c in (RESIDENT, UNENROLLED)))
    print("interop passed")


def channel(port, pki, org):
    read = lambda name: open(os.path.join(pki, name), "rb").read()
    creds = grpc.ssl_channel_credentials(read("ca.pem"), read(f"{org}.key"), read(f"{org}.pem"))
    ch = grpc.secure_channel(f"localhost:{port}", creds)
    grpc.channel_ready_future(ch).result(timeout=15)
    return ch


def first(subscribe, request):
    """The first message of a server stream (a subscription), then cancels the stream."""
    stream = subscribe(request, timeout=10)
    try:
        return next(stream)
    finally:
        stream.cancel()


def nothing_pending(subscribe, request):
    """True when a subscription delivers nothing within a short deadline."""
    stream = subscribe(request, timeout=1.5)
    try:
        next(stream)
        return False
    except grpc.RpcError as err:
        return err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        stream.cancel()


def run(port, pki, common_pb2, landlord_pb2, landlord_pb2_grpc, ss, ss_grpc):
    deadline = time.time() + 20
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if time.time() > deadline:
                check("silta serve is listening", False)
            time.sleep(0.1)

    social = ss_grpc.SocialServicesStub(channel(port, pki, SOCIAL))
    other_social = ss_grpc.SocialServicesStub(channel(port, pki, OTHER_SOCIAL))
    landlord = landlord_pb2_grpc.LandlordStub(channel(port, pki, LANDLORD))
    now = datetime.now(timezone.utc)

    def consent(share):
        c = ss.Consent(purpose=PURPOSE, evidence_ref="SOS-1", notice_version="v1", share_outcome_with_landlord=share)
        c.given_at.FromDatetime(now - timedelta(minutes=5))
        c.valid_until.FromDatetime(now + timedelta(days=365))
        return c

    # --- Consent: one organisation lets the landlord be told the outcome, the other does not.
    enrolled = social.EnrolClient(ss.EnrolClientRequest(hetu=RESIDENT, consent=consent(True)), timeout=10)
    check("EnrolClient returns a pseudonym and a consent id", enrolled.subject_pseudonym.startswith("ps") and enrolled.consent_id)
    check("the consent receipt carries a 64-byte signature", len(enrolled.receipt.signature) == 64)
    check("the receipt says the landlord may be told the outcome",
          enrolled.receipt.share_outcome_with_landlord and "support-notice" in enrolled.receipt.data_categories)
    check("the receipt's legal basis is consent", enrolled.receipt.legal_basis == CONSENT_BASIS)
    other = other_social.EnrolClient(ss.EnrolClientRequest(hetu=RESIDENT, consent=consent(False)), timeout=10)
    check("another organisation gets another pseudonym for the same person",
          other.subject_pseudonym.startswith("ps") and other.subject_pseudonym != enrolled.subject_pseudonym)
    check("a consent without share_outcome_with_landlord does not open support notices",
          not other.receipt.share_outcome_with_landlord and "support-notice" not in other.receipt.data_categories)

    # --- Rent arrears, flow rent-arrears.
    report = landlord_pb2.ReportRentArrearsRequest(
        idempotency_key="py-1", hetu=RESIDENT, tenancy_ref="T-9", arrears_cents=620_00, months_overdue=2,
        eviction_stage=common_pb2.EVICTION_STAGE_COURT_APPLICATION, landlord_contact_office="Itäkeskus office",
        free_text_note="never crosses", purpose=PURPOSE, legal_basis=CONSENT_BASIS)
    receipt, call = landlord.ReportRentArrears.with_call(report, timeout=10)
    check("ReportRentArrears returns a receipt", receipt.report_id and receipt.received_at.seconds > 0)
    check("the response carries x-request-id", any(k == "x-request-id" for k, _ in call.initial_metadata()))
    again = landlord.ReportRentArrears(report, timeout=10)
    check("a retry with the same key returns the same receipt", again == receipt)

    alert = first(social.SubscribeAlerts, ss.SubscribeAlertsRequest(after_sequence=0))
    check("the alert names the landlord organisation that reported",
          alert.HasField("reporting_organisation") and alert.reporting_organisation == LANDLORD)
    check("the alert carries the enrolment pseudonym and consent",
          alert.subject_pseudonym == enrolled.subject_pseudonym and alert.consent_id == enrolled.consent_id)
    check("the alert names its flow, purpose and legal basis",
          (alert.flow_id, alert.purpose, alert.legal_basis) == ("rent-arrears", PURPOSE, CONSENT_BASIS))
    check("the alert's details are rent arrears", alert.WhichOneof("details") == "rent_arrears"
          and alert.HasField("rent_arrears") and not alert.HasField("eviction_stage_change"))
    arrears = alert.rent_arrears
    check("the exact sum crossed as a band",
          arrears.HasField("arrears_band") and arrears.arrears_band == common_pb2.ARREARS_BAND_500_TO_1500)
    check("months overdue and eviction stage crossed as sent",
          arrears.HasField("months_overdue") and arrears.months_overdue == 2
          and arrears.eviction_stage == common_pb2.EVICTION_STAGE_COURT_APPLICATION)
    check("report month and contact office are set",
          alert.HasField("report_month") and len(alert.report_month) == 7
          and alert.HasField("landlord_contact_office") and alert.landlord_contact_office == "Itäkeskus office")
    check("no tenancy ref, no free text", "T-9" not in str(alert) and "never crosses" not in str(alert))
    check("the alert carries a case reference", alert.case_ref != "")
    acked = social.AckAlerts(ss.AckAlertsRequest(up_to_sequence=alert.sequence), timeout=10)
    check("AckAlerts acknowledges one alert", acked.acknowledged == 1)
    other_alert = first(other_social.SubscribeAlerts, ss.SubscribeAlertsRequest(after_sequence=0))
    check("the other consenting organisation gets its own alert, pseudonym and case",
          other_alert.subject_pseudonym == other.subject_pseudonym and other_alert.case_ref != alert.case_ref)

    # --- A support notice back to the landlord, flow support-notice.
    notice_req = ss.SendSupportNoticeRequest(
        idempotency_key="py-notice-1", case_ref=alert.case_ref, purpose=PURPOSE, legal_basis=CONSENT_BASIS,
        outcome=common_pb2.SUPPORT_OUTCOME_SUPPORT_ENGAGED)
    notice_receipt = social.SendSupportNotice(notice_req, timeout=10)
    check("SendSupportNotice returns a receipt", notice_receipt.notice_id and notice_receipt.received_at.seconds > 0)
    check("a retried support notice returns the same receipt",
          social.SendSupportNotice(notice_req, timeout=10) == notice_receipt)
    notice = first(landlord.SubscribeNotices, landlord_pb2.SubscribeNoticesRequest(after_sequence=0))
    check("the landlord receives the notice under its own tenancy ref", notice.tenancy_ref == "T-9")
    check("the notice has an id and a sequence", notice.notice_id != "" and notice.sequence >= 1)
    check("the notice names its flow, purpose and legal basis",
          (notice.flow_id, notice.purpose, notice.legal_basis) == ("support-notice", PURPOSE, CONSENT_BASIS))
    check("the notice carries the outcome and its month",
          notice.HasField("outcome") and notice.outcome == common_pb2.SUPPORT_OUTCOME_SUPPORT_ENGAGED
          and notice.HasField("notice_month") and len(notice.notice_month) == 7)
    check("no commitment on a SUPPORT_ENGAGED notice",
          not notice.HasField("commitment_band") and not notice.HasField("commitment_month"))
    check("the notice carries neither pseudonym nor case reference",
          enrolled.subject_pseudonym not in str(notice) and alert.case_ref not in str(notice))
    acked = landlord.AckNotices(landlord_pb2.AckNoticesRequest(up_to_sequence=notice.sequence), timeout=10)
    check("AckNotices acknowledges one notice", acked.acknowledged == 1)
    check("an acknowledged notice is not sent again",
          nothing_pending(landlord.SubscribeNotices, landlord_pb2.SubscribeNoticesRequest(after_sequence=0)))

    err = refused(other_social.SendSupportNotice, ss.SendSupportNoticeRequest(
        idempotency_key="py-notice-2", case_ref=other_alert.case_ref, purpose=PURPOSE, legal_basis=CONSENT_BASIS,
        outcome=common_pb2.SUPPORT_OUTCOME_CLIENT_NOT_REACHED))
    check("a notice under a consent that does not cover the landlord: POLICY_DENIED",
          is_policy_denied(err, "support-notice-needs-consent-to-tell-landlord"))
    check("... naming only that rule, and saying what to change",
          error_info(err)[2].get("policy_ids") == "support-notice-needs-consent-to-tell-landlord"
          and "share_outcome_with_landlord = true" in (err.details() or ""))
    for what, case_ref in (("another organisation's case_ref", alert.case_ref), ("a made-up case_ref", "case-0")):
        err = refused(other_social.SendSupportNotice, ss.SendSupportNoticeRequest(
            idempotency_key="py-notice-3", case_ref=case_ref, purpose=PURPOSE, legal_basis=CONSENT_BASIS,
            outcome=common_pb2.SUPPORT_OUTCOME_CASE_CLOSED))
        check(f"SendSupportNotice on {what}: NOT_FOUND", err is not None and err.code() == grpc.StatusCode.NOT_FOUND)

    # --- An eviction step on consent (flow eviction-stage) and a disturbance (disturbance-notice).
    stage = landlord.ReportEvictionStage(landlord_pb2.ReportEvictionStageRequest(
        idempotency_key="py-stage-1", hetu=RESIDENT, tenancy_ref="T-9", purpose=PURPOSE, legal_basis=CONSENT_BASIS,
        eviction_stage=common_pb2.EVICTION_STAGE_WARNING, stage_date="2026-10-15",
        landlord_contact_office="Itäkeskus office"), timeout=10)
    check("ReportEvictionStage returns a receipt", stage.report_id and stage.report_id != receipt.report_id)
    step = first(social.SubscribeAlerts, ss.SubscribeAlertsRequest(after_sequence=alert.sequence))
    check("the eviction-stage alert crossed on flow eviction-stage",
          step.flow_id == "eviction-stage" and step.WhichOneof("details") == "eviction_stage_change")
    check("the stage crossed as sent, its date only as a month",
          step.eviction_stage_change.eviction_stage == common_pb2.EVICTION_STAGE_WARNING
          and step.eviction_stage_change.stage_month == "2026-10" and "2026-10-15" not in str(step))
    check("the same tenancy keeps its case_ref", step.case_ref == alert.case_ref)

    landlord.ReportDisturbance(landlord_pb2.ReportDisturbanceRequest(
        idempotency_key="py-dist-1", hetu=RESIDENT, tenancy_ref="T-9", purpose=PURPOSE, legal_basis=CONSENT_BASIS,
        category=common_pb2.DISTURBANCE_CATEGORY_NOISE, count_in_period=3, period_month="2026-10",
        landlord_contact_office="Itäkeskus office"), timeout=10)
    dist = first(social.SubscribeAlerts, ss.SubscribeAlertsRequest(after_sequence=step.sequence))
    check("the disturbance alert crossed on flow disturbance-notice",
          dist.flow_id == "disturbance-notice" and dist.WhichOneof("details") == "disturbance")
    check("category, count and month crossed",
          (dist.disturbance.category, dist.disturbance.count_in_period, dist.disturbance.period_month)
          == (common_pb2.DISTURBANCE_CATEGORY_NOISE, 3, "2026-10"))

    # --- The statutory notice: no consent needed, only for an enforcement date.
    statutory = landlord_pb2.ReportEvictionStageRequest(
        idempotency_key="py-stat-1", hetu=UNENROLLED, tenancy_ref="T-10", purpose=PURPOSE,
        legal_basis=STATUTORY_BASIS, eviction_stage=common_pb2.EVICTION_STAGE_ENFORCEMENT_SCHEDULED,
        stage_date="2026-12-01", landlord_contact_office="Itäkeskus office")
    landlord.ReportEvictionStage(statutory, timeout=10)
    notified = first(social.SubscribeAlerts, ss.SubscribeAlertsRequest(after_sequence=dist.sequence))
    check("the statutory notice reaches the municipal social services without consent",
          notified.flow_id == "eviction-enforcement-notice" and notified.legal_basis == STATUTORY_BASIS
          and notified.consent_id == "" and notified.eviction_stage_change.stage_month == "2026-12")
    # It says whom it concerns: the code, sealed (HPKE) to helsinki-social's own key.
    check("the statutory notice carries a sealed identity; the consent-based alerts do not",
          notified.HasField("sealed_identity") and not alert.HasField("sealed_identity")
          and not step.HasField("sealed_identity"))
    with open(os.path.join(pki, f"{SOCIAL}.hpke-private.key")) as f:
        private_key = f.read()
    check("the recipient opens the sealed identity with its private key: the resident's code",
          open_sealed_identity(private_key, notified, SOCIAL) == UNENROLLED)
    try:
        open_sealed_identity(private_key, notified, OTHER_SOCIAL)
        bound = False
    except Exception:
        bound = True
    check("opened as another organisation, it does not open (info binds the recipient)", bound)
    with open(os.path.join(pki, f"{OTHER_SOCIAL}.hpke-private.key")) as f:
        other_key = f.read()
    try:
        open_sealed_identity(other_key, notified, SOCIAL)
        sealed_to_one = False
    except Exception:
        sealed_to_one = True
    check("another organisation's private key does not open it", sealed_to_one)
    moved = ss.Alert()
    moved.CopyFrom(notified)
    moved.alert_id = alert.alert_id
    try:
        open_sealed_identity(private_key, moved, SOCIAL)
        aad_bound = False
    except Exception:
        aad_bound = True
    check("moved to another alert, it does not open (the AAD binds the alert id)", aad_bound)
    social.AckAlerts(ss.AckAlertsRequest(up_to_sequence=notified.sequence), timeout=10)

    # --- Policy refusals: independent of the resident, so the landlord is told.
    debt = landlord_pb2.ReportRentArrearsRequest()
    debt.CopyFrom(report)
    debt.idempotency_key, debt.purpose = "py-debt", "debt-collection"
    err = refused(landlord.ReportRentArrears, debt)
    check("purpose debt-collection: PERMISSION_DENIED, ErrorInfo POLICY_DENIED naming purpose-limitation",
          is_policy_denied(err, "purpose-limitation"))
    check("the refusal does not echo the identity code",
          RESIDENT not in (err.details() or "") + str(rpc_status.from_call(err)))
    # An error is a trailers-only response: grpcio shows its headers as trailing metadata.
    from google.rpc import error_details_pb2
    trailer_id = dict(err.trailing_metadata() or ()).get("x-request-id")
    info_ids = [i.request_id for i in details_of(err, error_details_pb2.RequestInfo)]
    check("an error's x-request-id is in trailing_metadata() and equals RequestInfo.request_id",
          trailer_id is not None and info_ids == [trailer_id])
    undeclared = landlord_pb2.ReportRentArrearsRequest()
    undeclared.CopyFrom(report)
    undeclared.idempotency_key, undeclared.legal_basis = "py-undeclared", STATUTORY_BASIS
    err = refused(landlord.ReportRentArrears, undeclared)
    check("rent arrears on the statutory basis: PERMISSION_DENIED, ErrorInfo UNDECLARED_FLOW",
          err is not None and err.code() == grpc.StatusCode.PERMISSION_DENIED
          and (error_info(err) or ("",))[0] == "UNDECLARED_FLOW")
    early = landlord_pb2.ReportEvictionStageRequest()
    early.CopyFrom(statutory)
    early.idempotency_key, early.eviction_stage = "py-stat-2", common_pb2.EVICTION_STAGE_COURT_DECISION
    err = refused(landlord.ReportEvictionStage, early)
    check("a statutory notice before enforcement: POLICY_DENIED naming statutory-notice-only-at-enforcement",
          is_policy_denied(err, "statutory-notice-only-at-enforcement"))
    err = refused(social.SendSupportNotice, ss.SendSupportNoticeRequest(
        idempotency_key="py-notice-4", case_ref=alert.case_ref, purpose="debt-collection",
        legal_basis=CONSENT_BASIS, outcome=common_pb2.SUPPORT_OUTCOME_CASE_CLOSED))
    check("a support notice for debt collection: POLICY_DENIED naming purpose-limitation",
          is_policy_denied(err, "purpose-limitation"))

    hostile = [
        ("hetu", dict(hetu="150385-9346")),
        ("hetu", dict(hetu="150385-9345\u0000")),
        ("hetu", dict(hetu="1" * 10_000)),
        ("hetu", dict(hetu="ＡＢＣ")),
        ("landlord_contact_office", dict(landlord_contact_office=f"ask for {RESIDENT}")),
        ("eviction_stage", dict(eviction_stage=42)),
        ("arrears_cents", dict(arrears_cents=-1)),
        ("idempotency_key", dict(idempotency_key="ä" * 3)),
        ("purpose", dict(purpose="")),
        ("purpose", dict(purpose="marketing")),
        ("legal_basis", dict(legal_basis="")),
        ("legal_basis", dict(legal_basis="gdpr-6-1-f-legitimate-interest")),
    ]
    for field, change in hostile:
        bad = landlord_pb2.ReportRentArrearsRequest()
        bad.CopyFrom(report)
        bad.idempotency_key = "py-bad"
        for k, v in change.items():
            setattr(bad, k, v)
        err = refused(landlord.ReportRentArrears, bad)
        if err is None:
            check(f"hostile {field} refused", False)
        fields = bad_request_fields(err)
        text = (err.details() or "") + str(rpc_status.from_call(err))
        check(f"hostile {field}: INVALID_ARGUMENT naming {field}, no echo",
              err.code() == grpc.StatusCode.INVALID_ARGUMENT and field in fields and RESIDENT not in text)

    err = refused(social.EnrolClient, ss.EnrolClientRequest(hetu=RESIDENT))
    check("enrol without consent: BadRequest names consent", err is not None and bad_request_fields(err) == ["consent"])
    as_landlord = ss_grpc.SocialServicesStub(channel(port, pki, LANDLORD))
    err = refused(as_landlord.EnrolClient, ss.EnrolClientRequest(hetu=RESIDENT, consent=consent(True)))
    check("landlord calling EnrolClient: PERMISSION_DENIED", err is not None and err.code() == grpc.StatusCode.PERMISSION_DENIED)
    as_social = landlord_pb2_grpc.LandlordStub(channel(port, pki, SOCIAL))
    err = refused(as_social.AckNotices, landlord_pb2.AckNoticesRequest(up_to_sequence=1))
    check("social services calling AckNotices: PERMISSION_DENIED, ROLE_NOT_ALLOWED",
          err is not None and err.code() == grpc.StatusCode.PERMISSION_DENIED
          and (error_info(err) or ("",))[0] == "ROLE_NOT_ALLOWED")
    err = refused(as_social.ReportRentArrears, report)
    check("social services sending a landlord report: POLICY_DENIED naming sender-role",
          is_policy_denied(err, "sender-role"))

    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    services = set(ProtoReflectionDescriptorDatabase(channel(port, pki, SOCIAL)).get_services())
    check("server reflection lists both services",
          {"silta.v1.Landlord", "silta.v1.SocialServices"} <= services)

    # --- The consents a social worker holds: list, read with the receipt, renew.
    held = social.ListConsents(ss.ListConsentsRequest(subject_pseudonym=enrolled.subject_pseudonym), timeout=10)
    check("ListConsents finds the consent by the client's pseudonym",
          [c.consent_id for c in held.consents] == [enrolled.consent_id]
          and held.consents[0].state == ss.CONSENT_STATE_ACTIVE and not held.next_page_token)
    mine = social.ListConsents(ss.ListConsentsRequest(state=ss.CONSENT_STATE_UNSPECIFIED), timeout=10)
    check("ListConsents never lists another organisation's consent",
          other.consent_id not in [c.consent_id for c in mine.consents])
    err = refused(social.ListConsents, ss.ListConsentsRequest(state=99))
    check("ListConsents with an unknown state: INVALID_ARGUMENT naming state",
          err is not None and err.code() == grpc.StatusCode.INVALID_ARGUMENT and bad_request_fields(err) == ["state"])
    err = refused(social.ListConsents, ss.ListConsentsRequest(page_token="not-a-token", page_size=501))
    check("ListConsents with a bad page token and page size: both named",
          err is not None and bad_request_fields(err) == ["page_size", "page_token"])
    got = social.GetConsent(ss.GetConsentRequest(consent_id=enrolled.consent_id), timeout=10)
    check("GetConsent returns the receipt EnrolClient returned",
          got.receipt == enrolled.receipt and got.consent.consent_id == enrolled.consent_id)
    err = refused(other_social.GetConsent, ss.GetConsentRequest(consent_id=enrolled.consent_id))
    check("GetConsent of another organisation's consent: NOT_FOUND",
          err is not None and err.code() == grpc.StatusCode.NOT_FOUND)
    renewal = ss.ConsentRenewal(evidence_ref="SOS-2", notice_version="v2")
    renewal.given_at.FromDatetime(now - timedelta(minutes=1))
    renewal.valid_until.FromDatetime(now + timedelta(days=730))
    renewed = other_social.RenewConsent(ss.RenewConsentRequest(consent_id=other.consent_id, renewal=renewal), timeout=10)
    check("RenewConsent records a new consent that renews the old one",
          renewed.consent_id != other.consent_id and renewed.renewed_consent_id == other.consent_id
          and renewed.subject_pseudonym == other.subject_pseudonym and len(renewed.receipt.signature) == 64)
    err = refused(other_social.RenewConsent, ss.RenewConsentRequest(consent_id=other.consent_id, renewal=renewal))
    check("renewing a superseded consent: FAILED_PRECONDITION",
          err is not None and err.code() == grpc.StatusCode.FAILED_PRECONDITION)

    withdrawn = social.WithdrawConsent(ss.WithdrawConsentRequest(consent_id=enrolled.consent_id), timeout=10)
    check("WithdrawConsent withdraws the consent", list(withdrawn.withdrawn_consent_ids) == [enrolled.consent_id])
    err = refused(social.SendSupportNotice, ss.SendSupportNoticeRequest(
        idempotency_key="py-notice-5", case_ref=alert.case_ref, purpose=PURPOSE, legal_basis=CONSENT_BASIS,
        outcome=common_pb2.SUPPORT_OUTCOME_CASE_CLOSED))
    check("a support notice after the withdrawal: POLICY_DENIED naming consent-withdrawn",
          is_policy_denied(err, "consent-withdrawn"))
    check("... alone: the withdrawn consent did let the landlord be told",
          error_info(err)[2].get("policy_ids") == "consent-withdrawn")


def dpo(port, pki, audit_pb2, audit_pb2_grpc):
    """The DPO's view of retention: every kind of record, with counts only."""
    audit = audit_pb2_grpc.AuditStub(channel(port, pki, DPO))
    report = audit.GetRetention(audit_pb2.GetRetentionRequest(), timeout=10)
    kinds = {(k.kind, k.flow_id): k for k in report.kinds}
    check("GetRetention lists reports, consents and cases, and the messages of each flow",
          {("reports", ""), ("consents", ""), ("cases", "")} <= set(kinds)
          and any(kind == "messages" and flow for kind, flow in kinds))
    check("GetRetention counts the rows this run stored, none due yet",
          kinds[("reports", "")].rows > 0 and all(k.due == 0 for k in report.kinds)
          and kinds[("reports", "")].kept_for_seconds == 7 * 86400)
    err = refused(audit_pb2_grpc.AuditStub(channel(port, pki, LANDLORD)).GetRetention, audit_pb2.GetRetentionRequest())
    check("GetRetention is the DPO's only: PERMISSION_DENIED for a landlord",
          err is not None and err.code() == grpc.StatusCode.PERMISSION_DENIED)

    # The programme statistics: an analyst reads a closed month; the month still running, a
    # malformed month and other roles are refused, each with a status saying what to fix.
    analyst = audit_pb2_grpc.AuditStub(channel(port, pki, ANALYST))
    now = time.gmtime()
    last = f"{now.tm_year - 1}-12" if now.tm_mon == 1 else f"{now.tm_year}-{now.tm_mon - 1:02d}"
    release = analyst.Statistics(audit_pb2.StatisticsRequest(month=last), timeout=10)
    check("Statistics releases a closed month to an analyst: fixed tables, threshold 5",
          release.month == last and release.threshold == 5 and len(release.tables) == 12
          and release.tables[0].id == "reports"
          and all(len(r.values) == len(t.columns) for t in release.tables for r in t.rows))
    # Two months ahead is never closed, whatever the Helsinki hour.
    ahead = f"{now.tm_year + 1}-01"
    err = refused(analyst.Statistics, audit_pb2.StatisticsRequest(month=ahead))
    check("Statistics of a month not yet ended: FAILED_PRECONDITION",
          err is not None and err.code() == grpc.StatusCode.FAILED_PRECONDITION)
    err = refused(analyst.Statistics, audit_pb2.StatisticsRequest(month="2026/11"))
    check("Statistics of a malformed month: INVALID_ARGUMENT naming month",
          err is not None and err.code() == grpc.StatusCode.INVALID_ARGUMENT
          and bad_request_fields(err) == ["month"])
    err = refused(audit_pb2_grpc.AuditStub(channel(port, pki, LANDLORD)).Statistics,
                  audit_pb2.StatisticsRequest(month=last))
    check("Statistics is not for a landlord: POLICY_DENIED (default-deny)", is_policy_denied(err, "default-deny"))
    err = refused(analyst.GetRetention, audit_pb2.GetRetentionRequest())
    check("an analyst reads nothing but statistics: GetRetention PERMISSION_DENIED",
          err is not None and err.code() == grpc.StatusCode.PERMISSION_DENIED)


def scrape(admin_port):
    """The admin port's metrics, as Prometheus and OpenMetrics scrapers parse them."""
    import urllib.request
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
    from prometheus_client.parser import text_string_to_metric_families as parse_classic

    def get(accept):
        req = urllib.request.Request(f"http://127.0.0.1:{admin_port}/metrics")
        if accept:
            req.add_header("Accept", accept)
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.headers.get("Content-Type", ""), r.read().decode()

    kind, body = get("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5")
    families = {f.name: f for f in parse_openmetrics(body)}
    check("metrics: OpenMetrics when asked for, parsed by prometheus_client's OpenMetrics parser",
          kind.startswith("application/openmetrics-text") and families["silta_decisions"].type == "counter")
    kind, body_classic = get(None)
    classic = {f.name: f for f in parse_classic(body_classic)}
    check("metrics: the Prometheus text format otherwise, counters still typed as counters",
          kind.startswith("text/plain; version=0.0.4") and classic["silta_decisions"].type == "counter"
          and "# EOF" not in body_classic)
    check("metrics: no identity code in any label or value",
          all(c not in text and c.replace("-", "") not in text
              for text in (body, body_classic) for c in (RESIDENT, UNENROLLED)))


if __name__ == "__main__":
    main()
