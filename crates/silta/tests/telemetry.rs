//! What `silta serve` itself writes at `debug`, in its log and over OTLP, when callers send
//! paths that hold identity codes: none of them, in any form.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tonic::codegen::http::uri::PathAndQuery;

// Shared by the process tests; this one uses a part of it.
#[allow(dead_code)]
mod common;
use common::{BIN, channel, free_port, silta, wait_listening};

/// A local OTLP collector: keeps the debug text of every export it receives.
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<String>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let text = format!("{:?}", request.into_inner());
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(text);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// One synthetic code per century sign, from the shared fixtures.
fn one_code_per_century_sign() -> Vec<String> {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/hetu-valid.txt"),
    )
    .expect("fixtures");
    let mut codes: Vec<String> = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let code = line.split('\t').next().expect("a code").to_owned();
        if !codes.iter().any(|c| c.as_bytes()[6] == code.as_bytes()[6]) {
            codes.push(code);
        }
    }
    assert_eq!(codes.len(), 13, "+, -, U-Y and A-F");
    codes
}

/// Sends an empty unary request to `path` and returns the status it got.
async fn call(channel: tonic::transport::Channel, path: &str) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    grpc.unary::<_, (), _>(
        tonic::Request::new(()),
        PathAndQuery::try_from(path.to_owned()).expect("a valid path"),
        tonic_prost::ProstCodec::<(), ()>::default(),
    )
    .await
    .expect_err("no such RPC")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_paths_holding_identity_codes_reach_neither_the_debug_log_nor_the_otlp_export() {
    let collector = Collector::default();
    let otlp = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let otlp_addr = otlp.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(otlp)),
    );

    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    silta(&["dev-pki", "--out", "pki"], dir);
    silta(&["keys", "generate", "--out", "pki/master.key"], dir);
    std::fs::write(
        dir.join("silta.toml"),
        format!(
            "[store]\nurl = \"sqlite://silta.db\"\n[tls]\ncert = \"pki/server.pem\"\n\
             key = \"pki/server.key\"\nclient_ca = \"pki/ca.pem\"\n[secrets]\n\
             master_secret_file = \"pki/master.key\"\n[hetu]\nallow_temporary = true\n\
             [log]\nlevel = \"debug\"\n\
             otlp_endpoint = \"http://{otlp_addr}\"\n\
             [[statutory_recipients]]\norg = \"helsinki-social\"\nhpke_public_key_file = \"pki/helsinki-social.hpke-public.key\"\n"
        ),
    )
    .expect("config");
    let port = free_port();
    let log = dir.join("serve.log");
    let mut child = Command::new(BIN)
        .args(["serve", "--config", "silta.toml"])
        .current_dir(dir)
        .env("SILTA_LISTEN", format!("127.0.0.1:{port}"))
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("spawn silta serve");
    wait_listening(port).await;

    let codes = one_code_per_century_sign();
    let services = [
        "silta.v1.Landlord",
        "silta.v1.SocialServices",
        "silta.v1.Audit",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ];
    let mut refused = 0;
    for org in ["city-housing", "helsinki-social", "dpo-office"] {
        let channel = channel(dir, port, org).await;
        for code in &codes {
            let mut paths: Vec<String> = services
                .iter()
                .flat_map(|s| {
                    [
                        format!("/{s}/{code}"),
                        format!("/{s}/Report{code}"),
                        format!("/{s}.{code}/Check"),
                    ]
                })
                .collect();
            paths.push(format!("/silta.v1.Landlord/ReportRentArrears/{code}"));
            paths.push(format!("/{code}"));
            for path in paths {
                let status = call(channel.clone(), &path).await;
                assert_eq!(status.code(), tonic::Code::Unimplemented, "{path}");
                refused += 1;
            }
        }
        // A served RPC, so the span export is shown to work.
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        health
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .expect("health check");
    }
    assert_eq!(refused, 3 * 13 * 20);

    // One of silta's own RPCs, refused, inside a trace the caller started (W3C traceparent).
    let mut landlord = silta_server::proto::landlord_client::LandlordClient::new(
        channel(dir, port, "city-housing").await,
    );
    let mut request = tonic::Request::new(silta_server::proto::ReportRentArrearsRequest::default());
    request.metadata_mut().insert(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            .parse()
            .expect("a valid header"),
    );
    request.metadata_mut().insert(
        "tracestate",
        format!("silta={}", codes[0].replace(['+', '-'], "x"))
            .parse()
            .expect("a valid header"),
    );
    let status = landlord
        .report_rent_arrears(request)
        .await
        .expect_err("an empty report is invalid");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    // A report that crosses, and its delivery: the commit, the decision and the delivery are
    // child spans.
    let mut social = silta_server::proto::social_services_client::SocialServicesClient::new(
        channel(dir, port, "helsinki-social").await,
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let at = |s: u64| prost_types::Timestamp {
        seconds: i64::try_from(s).expect("a time"),
        nanos: 0,
    };
    social
        .enrol_client(silta_server::proto::EnrolClientRequest {
            hetu: common::RESIDENT.into(),
            consent: Some(silta_server::proto::Consent {
                purpose: "eviction-prevention".into(),
                given_at: Some(at(now - 60)),
                valid_until: Some(at(now + 86_400 * 30)),
                evidence_ref: "E-1".into(),
                notice_version: String::new(),
                share_outcome_with_landlord: false,
            }),
        })
        .await
        .expect("enrolled");
    landlord
        .report_rent_arrears(common::report("t-1"))
        .await
        .expect("accepted");
    let mut alerts = social
        .subscribe_alerts(silta_server::proto::SubscribeAlertsRequest { after_sequence: 0 })
        .await
        .expect("subscribed")
        .into_inner();
    tokio::time::timeout(Duration::from_secs(10), alerts.message())
        .await
        .expect("an alert in time")
        .expect("the stream is open")
        .expect("an alert");
    drop(alerts);

    // SIGTERM: the gateway stops and its exporter flushes the spans still queued.
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    for _ in 0..200 {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        child.try_wait().expect("wait").is_some(),
        "silta serve stopped"
    );

    let logged = std::fs::read_to_string(&log).expect("log");
    let exported = collector
        .0
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .join("\n");
    // The checks below are not vacuous: the debug log and the export both hold the RPC spans.
    assert!(
        logged.contains("path=unknown"),
        "the debug log holds the spans"
    );
    assert!(
        exported.contains("/grpc.health.v1.Health/Check") && exported.contains("unknown"),
        "the export holds the spans"
    );
    // OpenTelemetry's RPC conventions: a SERVER span named for the method, with its rpc.*
    // attributes and an error status, continuing the caller's trace; its steps as children.
    for expected in [
        "name: \"silta.v1.Landlord/ReportRentArrears\"",
        "name: \"grpc.health.v1.Health/Check\"",
        "name: \"validate\"",
        "name: \"policy.precheck\"",
        "name: \"commit\"",
        "key: \"batch_size\"",
        "name: \"policy.decide\"",
        "name: \"deliver\"",
        "key: \"rpc.system\"",
        "key: \"rpc.service\"",
        "key: \"rpc.method\"",
        "key: \"rpc.grpc.status_code\"",
        "kind: Server",
        // 4bf92f35… and 00f067aa…, as the caller's traceparent named them.
        "trace_id: [75, 249, 47, 53, 119, 179, 77, 166, 163, 206, 146, 157, 14, 14, 71, 54]",
        "parent_span_id: [0, 240, 103, 170, 11, 169, 2, 183]",
    ] {
        assert!(
            exported.contains(expected),
            "{expected} is not in the export:\n{exported}"
        );
    }
    assert!(
        !exported.contains("silta="),
        "the caller's tracestate is not carried"
    );
    for code in &codes {
        let without_sign = format!("{}{}", &code[..6], &code[7..]);
        for form in [code.as_str(), &without_sign] {
            assert!(
                !logged.contains(form),
                "an identity code ({}…) is in the debug log",
                &code[..2]
            );
            assert!(
                !exported.contains(form),
                "an identity code ({}…) is in the OTLP export",
                &code[..2]
            );
        }
    }
}
