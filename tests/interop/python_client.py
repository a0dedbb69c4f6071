#!/usr/bin/env python3
"""Cross-language check of the contract, as an outside integrator would do it.

Generates a Python client from proto/silta/v1/*.proto with grpcio-tools, mints dev
certificates with `silta dev-pki`, runs `silta serve`, and exercises every RPC over mTLS,
including bad input, decoding google.rpc error details with the standard library.

Usage: python_client.py PATH/TO/silta   (needs: grpcio grpcio-tools grpcio-status)
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

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESIDENT = "150385-9345"  # synthetic: individual number 900-999


def check(what, ok):
    print(("  ok   " if ok else "  FAIL ") + what)
    if not ok:
        raise SystemExit(1)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bad_request_fields(err):
    from google.rpc import error_details_pb2

    status = rpc_status.from_call(err)
    fields = []
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            br = error_details_pb2.BadRequest()
            detail.Unpack(br)
            fields += [v.field for v in br.field_violations]
    return fields


def main():
    silta = os.path.abspath(sys.argv[1])
    work = tempfile.mkdtemp(prefix="silta-interop-")
    gen = os.path.join(work, "gen")
    os.makedirs(gen)
    proto_dir = os.path.join(ROOT, "proto")
    files = [os.path.join("silta/v1", f) for f in ("common.proto", "landlord.proto", "social_services.proto")]
    wkt = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    rc = protoc.main(["protoc", f"-I{proto_dir}", f"-I{wkt}", f"--python_out={gen}", f"--grpc_python_out={gen}", *files])
    check("client generated from the .proto with grpcio-tools", rc == 0)
    sys.path.insert(0, gen)
    from silta.v1 import common_pb2, landlord_pb2, landlord_pb2_grpc, social_services_pb2 as ss, social_services_pb2_grpc

    pki = os.path.join(work, "pki")
    subprocess.run([silta, "dev-pki", "--out", pki], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([silta, "keys", "generate", "--out", os.path.join(pki, "master.key")], check=True, stdout=subprocess.DEVNULL)
    port = free_port()
    config = os.path.join(work, "silta.toml")
    with open(config, "w") as f:
        f.write(f"""listen = "127.0.0.1:{port}"
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
""")
    log = open(os.path.join(work, "serve.log"), "w")
    server = subprocess.Popen([silta, "serve", "--config", config], stderr=log, stdout=log)
    try:
        run(port, pki, common_pb2, landlord_pb2, landlord_pb2_grpc, ss, social_services_pb2_grpc)
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
    check("the server log holds no identity code", RESIDENT not in logs and "1503859345" not in logs)
    print("interop passed")


def channel(port, pki, org):
    read = lambda name: open(os.path.join(pki, name), "rb").read()
    creds = grpc.ssl_channel_credentials(read("ca.pem"), read(f"{org}.key"), read(f"{org}.pem"))
    ch = grpc.secure_channel(f"localhost:{port}", creds)
    grpc.channel_ready_future(ch).result(timeout=15)
    return ch


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

    social = ss_grpc.SocialServicesStub(channel(port, pki, "helsinki-social"))
    landlord = landlord_pb2_grpc.LandlordStub(channel(port, pki, "city-housing"))
    now = datetime.now(timezone.utc)
    consent = ss.Consent(purpose="eviction-prevention", evidence_ref="SOS-1", notice_version="v1")
    consent.given_at.FromDatetime(now - timedelta(minutes=5))
    consent.valid_until.FromDatetime(now + timedelta(days=365))

    enrolled = social.EnrolClient(ss.EnrolClientRequest(hetu=RESIDENT, consent=consent), timeout=10)
    check("EnrolClient returns a pseudonym and a consent id", enrolled.subject_pseudonym.startswith("ps") and enrolled.consent_id)
    check("the consent receipt carries a 64-byte signature", len(enrolled.receipt.signature) == 64)

    report = landlord_pb2.ReportRentArrearsRequest(
        idempotency_key="py-1", hetu=RESIDENT, tenancy_ref="T-9", arrears_cents=620_00, months_overdue=2,
        eviction_stage=common_pb2.EVICTION_STAGE_COURT_APPLICATION, landlord_contact_office="Itäkeskus office",
        free_text_note="never crosses")
    receipt, call = landlord.ReportRentArrears.with_call(report, timeout=10)
    check("ReportRentArrears returns a receipt", receipt.report_id and receipt.received_at.seconds > 0)
    check("the response carries x-request-id", any(k == "x-request-id" for k, _ in call.initial_metadata()))
    again = landlord.ReportRentArrears(report, timeout=10)
    check("a retry with the same key returns the same receipt", again == receipt)

    stream = social.SubscribeAlerts(ss.SubscribeAlertsRequest(after_sequence=0), timeout=10)
    alert = next(iter(stream))
    check("the alert carries the enrolment pseudonym", alert.subject_pseudonym == enrolled.subject_pseudonym)
    check("the exact sum crossed as a band", alert.arrears_band == common_pb2.ARREARS_BAND_500_TO_1500)
    check("no tenancy ref, no free text", "T-9" not in str(alert) and "never crosses" not in str(alert))
    stream.cancel()
    acked = social.AckAlerts(ss.AckAlertsRequest(up_to_sequence=alert.sequence), timeout=10)
    check("AckAlerts acknowledges one alert", acked.acknowledged == 1)

    hostile = [
        ("hetu", dict(hetu="150385-9346")),
        ("hetu", dict(hetu="150385-9345\u0000")),
        ("hetu", dict(hetu="1" * 10_000)),
        ("hetu", dict(hetu="ＡＢＣ")),
        ("landlord_contact_office", dict(landlord_contact_office=f"ask for {RESIDENT}")),
        ("eviction_stage", dict(eviction_stage=42)),
        ("arrears_cents", dict(arrears_cents=-1)),
        ("idempotency_key", dict(idempotency_key="ä" * 3)),
    ]
    for field, change in hostile:
        bad = landlord_pb2.ReportRentArrearsRequest()
        bad.CopyFrom(report)
        bad.idempotency_key = "py-bad"
        for k, v in change.items():
            setattr(bad, k, v)
        try:
            landlord.ReportRentArrears(bad, timeout=10)
            check(f"hostile {field} refused", False)
        except grpc.RpcError as err:
            fields = bad_request_fields(err)
            text = (err.details() or "") + str(rpc_status.from_call(err))
            check(f"hostile {field}: INVALID_ARGUMENT naming {field}, no echo",
                  err.code() == grpc.StatusCode.INVALID_ARGUMENT and field in fields and RESIDENT not in text)

    try:
        social.EnrolClient(ss.EnrolClientRequest(hetu=RESIDENT), timeout=10)
        check("enrol without consent refused", False)
    except grpc.RpcError as err:
        check("enrol without consent: BadRequest names consent", bad_request_fields(err) == ["consent"])
    try:
        ss_grpc.SocialServicesStub(channel(port, pki, "city-housing")).EnrolClient(
            ss.EnrolClientRequest(hetu=RESIDENT, consent=consent), timeout=10)
        check("landlord calling EnrolClient refused", False)
    except grpc.RpcError as err:
        check("landlord calling EnrolClient: PERMISSION_DENIED", err.code() == grpc.StatusCode.PERMISSION_DENIED)

    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    services = set(ProtoReflectionDescriptorDatabase(channel(port, pki, "helsinki-social")).get_services())
    check("server reflection lists both services",
          {"silta.v1.Landlord", "silta.v1.SocialServices"} <= services)

    withdrawn = social.WithdrawConsent(ss.WithdrawConsentRequest(consent_id=enrolled.consent_id), timeout=10)
    check("WithdrawConsent withdraws the consent", list(withdrawn.withdrawn_consent_ids) == [enrolled.consent_id])


if __name__ == "__main__":
    main()
