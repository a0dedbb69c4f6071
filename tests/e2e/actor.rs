//! Who acted: bearer tokens from each organisation's identity provider, checked and written to
//! the ledger; every way a token can be wrong is refused with its own reason, and audited.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::signature::{Ed25519KeyPair, KeyPair};
use silta_server::proto;
use silta_server::proto::audit_client::AuditClient;
use silta_tests::{DPO, LANDLORD, SOCIAL_A, TestGateway, report};
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic_types::StatusExt;

const RESIDENT: &str = "150385-9345";
const ISSUER: &str = "https://idp.city-housing.example";

struct Idp {
    pkcs8: Vec<u8>,
    public: Vec<u8>,
    kid: &'static str,
}

impl Idp {
    fn new() -> Self {
        Self::with_kid("k1")
    }

    fn with_kid(kid: &'static str) -> Self {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
            .expect("key")
            .as_ref()
            .to_vec();
        let public = Ed25519KeyPair::from_pkcs8(&pkcs8)
            .expect("key")
            .public_key()
            .as_ref()
            .to_vec();
        Idp { pkcs8, public, kid }
    }

    fn jwks(&self) -> String {
        serde_json::json!({"keys": [{
            "kty": "OKP", "crv": "Ed25519", "kid": self.kid, "alg": "EdDSA", "use": "sig",
            "x": URL_SAFE_NO_PAD.encode(&self.public),
        }]})
        .to_string()
    }

    fn token(&self, claims: serde_json::Value) -> String {
        self.token_with(claims, |_| {})
    }

    /// A token whose header `adjust` changed before signing.
    fn token_with(&self, claims: serde_json::Value, adjust: impl FnOnce(&mut Header)) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.into());
        adjust(&mut header);
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ed_der(&self.pkcs8))
            .expect("signed")
    }
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn claims(org: &str) -> serde_json::Value {
    serde_json::json!({
        "iss": ISSUER, "aud": "silta", "sub": "worker-17", "name": "Aino Virtanen",
        "org": org, "exp": now() + 300, "nbf": now() - 10,
    })
}

async fn start(idp: &Idp) -> TestGateway {
    let jwks = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(jwks.path(), idp.jwks()).expect("write JWKS");
    let (_file, path) = jwks.keep().expect("keep");
    TestGateway::start_with(|c| {
        for org in [LANDLORD, DPO] {
            c.jwt.issuers.push(silta_server::config::JwtIssuer {
                org: org.into(),
                issuer: ISSUER.into(),
                audience: "silta".into(),
                jwks_file: Some(path.clone()),
                jwks_url: None,
                jwks_ca_file: None,
            });
        }
        c.jwt.required_roles = vec!["dpo".into()];
        c.jwt.display_claim = Some("name".into());
    })
    .await
}

fn with_token<T>(body: T, token: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(body);
    req.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {token}")).expect("ascii"),
    );
    req
}

fn reason(err: &tonic::Status) -> String {
    err.get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_token_names_the_person_in_the_ledger() {
    let idp = Idp::new();
    let gw = start(&idp).await;
    let mut landlord = gw.landlord(LANDLORD).await;
    let token = idp.token(claims(LANDLORD));
    landlord
        .report_rent_arrears(with_token(report("j-1", RESIDENT), &token))
        .await
        .expect("accepted");
    // Without a token, where none is required: accepted, no person recorded.
    landlord
        .report_rent_arrears(report("j-2", RESIDENT))
        .await
        .expect("accepted without a token");
    let actors = gw
        .query_strings(
            "SELECT COALESCE(actor_person, '-') FROM audit
             WHERE action = 'Landlord.ReportRentArrears' ORDER BY seq",
        )
        .await;
    assert_eq!(actors, ["worker-17 (Aino Virtanen)", "-"]);
    // The token itself is kept nowhere: not in the logs, not in the database.
    let signature = token.rsplit('.').next().expect("signature");
    assert!(!silta_tests::captured_logs().contains(signature));
    let db = std::fs::read(gw.db_path()).expect("database file");
    assert!(!String::from_utf8_lossy(&db).contains(signature));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_token_is_refused_with_its_reason_and_audited() {
    let idp = Idp::new();
    let gw = start(&idp).await;
    let mut landlord = gw.landlord(LANDLORD).await;
    let c = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v = claims(LANDLORD);
        f(&mut v);
        idp.token(v)
    };
    let other = Idp::new();
    let hs256 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(LANDLORD),
        &EncodingKey::from_secret(&idp.public),
    )
    .expect("HS256 with the public key as secret");
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims(LANDLORD).to_string())
    );
    let cases: Vec<(String, Code, &str)> = vec![
        (
            c(&|v| v["exp"] = (now() - 600).into()),
            Code::Unauthenticated,
            "JWT_EXPIRED",
        ),
        (
            c(&|v| v["nbf"] = (now() + 600).into()),
            Code::Unauthenticated,
            "JWT_NOT_YET_VALID",
        ),
        (
            c(&|v| v["iss"] = "https://evil.example".into()),
            Code::Unauthenticated,
            "JWT_WRONG_ISSUER",
        ),
        (
            c(&|v| v["aud"] = "another-service".into()),
            Code::Unauthenticated,
            "JWT_WRONG_AUDIENCE",
        ),
        (
            other.token(claims(LANDLORD)),
            Code::Unauthenticated,
            "JWT_BAD_SIGNATURE",
        ),
        (hs256, Code::Unauthenticated, "JWT_ALGORITHM_NOT_ALLOWED"),
        (none, Code::Unauthenticated, "JWT_INVALID"),
        ("not.a.jwt".to_owned(), Code::Unauthenticated, "JWT_INVALID"),
        (
            c(&|v| v["org"] = SOCIAL_A.into()),
            Code::PermissionDenied,
            "JWT_ORGANISATION_MISMATCH",
        ),
        (
            c(&|v| v["sub"] = RESIDENT.into()),
            Code::Unauthenticated,
            "JWT_INVALID",
        ),
    ];
    let count = cases.len();
    for (i, (token, code, why)) in cases.into_iter().enumerate() {
        let err = landlord
            .report_rent_arrears(with_token(report(&format!("b-{i}"), RESIDENT), &token))
            .await
            .expect_err(why);
        assert_eq!(
            (err.code(), reason(&err).as_str()),
            (code, why),
            "{}",
            err.message()
        );
        assert!(!err.message().contains(RESIDENT));
    }
    let denials = gw
        .query_strings("SELECT reason FROM audit WHERE outcome = 'deny' AND reason LIKE 'jwt-%'")
        .await;
    assert_eq!(denials.len(), count, "{denials:?}");
    assert!(
        gw.query_strings("SELECT report_id FROM reports")
            .await
            .is_empty(),
        "a report with a bad token was stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn critical_extensions_and_claims_that_are_not_printable_or_too_long_are_refused() {
    let idp = Idp::new();
    let gw = start(&idp).await;
    let mut landlord = gw.landlord(LANDLORD).await;
    let with = |claim: &str, value: &str| {
        let mut v = claims(LANDLORD);
        v[claim] = value.into();
        idp.token(v)
    };
    let long = "w".repeat(257);
    // (token, what the message must say, a value it must not echo)
    let cases: Vec<(String, &str, &str)> = vec![
        (
            idp.token_with(claims(LANDLORD), |h| {
                h.crit = Some(vec!["silta-ext".into()]);
                h.extras.insert("silta-ext", true);
            }),
            "critical extensions (crit)",
            "silta-ext",
        ),
        // The RFC forbids an empty list; it is no reason to accept the token.
        (
            idp.token_with(claims(LANDLORD), |h| h.crit = Some(vec![])),
            "critical extensions (crit)",
            "",
        ),
        (
            with("sub", "worker-\u{202E}71"),
            "\"sub\" claim must not contain invisible or layout characters",
            "worker-",
        ),
        (
            with("sub", "worker-17\nforged log line"),
            "\"sub\" claim must not contain control characters",
            "forged",
        ),
        (
            with("sub", &long),
            "\"sub\" claim must be at most 256 characters",
            "wwwwwwww",
        ),
        (
            with("sub", RESIDENT),
            "\"sub\" claim must not contain a personal identity code",
            RESIDENT,
        ),
        (with("sub", ""), "\"sub\" claim must not be empty", ""),
        (
            with("name", "Aino\u{7}Virtanen"),
            "\"name\" claim must not contain control characters",
            "Aino",
        ),
        (
            with("name", &long),
            "\"name\" claim must be at most 256 characters",
            "wwwwwwww",
        ),
        (
            with("org", "city-housing\u{200B}"),
            "\"org\" claim must not contain invisible or layout characters",
            "city-housing\u{200B}",
        ),
    ];
    let count = cases.len();
    for (i, (token, says, secret)) in cases.into_iter().enumerate() {
        let err = landlord
            .report_rent_arrears(with_token(report(&format!("c-{i}"), RESIDENT), &token))
            .await
            .expect_err(says);
        assert_eq!(
            (err.code(), reason(&err).as_str()),
            (Code::Unauthenticated, "JWT_INVALID"),
            "{says}: {}",
            err.message()
        );
        assert!(err.message().contains(says), "{says}: {}", err.message());
        if !secret.is_empty() {
            assert!(!format!("{err:?}").contains(secret), "{says}: echoed");
        }
    }
    let denials = gw
        .query_strings("SELECT reason FROM audit WHERE outcome = 'deny' AND reason = 'jwt-invalid'")
        .await;
    assert_eq!(denials.len(), count, "{denials:?}");

    // The bound counts characters, not bytes: 256 of them is accepted, in any script.
    let mut v = claims(LANDLORD);
    v["sub"] = "ä".repeat(256).into();
    v["name"] = "Åsa Öhman-Virtanen".into();
    landlord
        .report_rent_arrears(with_token(report("c-ok", RESIDENT), &idp.token(v)))
        .await
        .expect("printable claims of 256 characters are accepted");
    let actors = gw
        .query_strings("SELECT actor_person FROM audit WHERE actor_person IS NOT NULL")
        .await;
    assert_eq!(
        actors,
        [format!("{} (Åsa Öhman-Virtanen)", "ä".repeat(256))]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_that_requires_a_token_is_refused_without_one() {
    let idp = Idp::new();
    let gw = start(&idp).await;
    let mut dpo = AuditClient::new(gw.channel(DPO).await);
    let err = dpo
        .get_checkpoint(proto::GetCheckpointRequest::default())
        .await
        .expect_err("token required");
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::Unauthenticated, "JWT_REQUIRED")
    );
    let with = dpo
        .get_checkpoint(with_token(
            proto::GetCheckpointRequest::default(),
            &idp.token(claims(DPO)),
        ))
        .await;
    // Authenticated now: whatever the answer, it is not about the token.
    if let Err(e) = with {
        assert!(!reason(&e).starts_with("JWT"), "{e:?}");
    }
}

/// A JWKS endpoint on loopback: serves whatever `keys` holds and counts the fetches.
struct JwksServer {
    url: String,
    keys: std::sync::Arc<std::sync::Mutex<String>>,
    fetches: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl JwksServer {
    async fn start(initial: String) -> Self {
        use std::sync::atomic::Ordering;
        let keys = std::sync::Arc::new(std::sync::Mutex::new(initial));
        let fetches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (k, f) = (keys.clone(), fetches.clone());
        let app = axum::Router::new().route(
            "/jwks",
            axum::routing::get(move || {
                let (k, f) = (k.clone(), f.clone());
                async move {
                    f.fetch_add(1, Ordering::SeqCst);
                    k.lock().expect("keys").clone()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/jwks", listener.local_addr().expect("address"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        JwksServer { url, keys, fetches }
    }

    fn serve(&self, jwks: String) {
        *self.keys.lock().expect("keys") = jwks;
    }

    fn fetches(&self) -> usize {
        self.fetches.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_from_a_jwks_url_follow_the_providers_rotation() {
    let old = Idp::with_kid("2026-10");
    let new = Idp::with_kid("2026-11");
    let idp = JwksServer::start(old.jwks()).await;
    let url = idp.url.clone();
    let gw = TestGateway::start_with(|c| {
        c.jwt.issuers.push(silta_server::config::JwtIssuer {
            org: LANDLORD.into(),
            issuer: ISSUER.into(),
            audience: "silta".into(),
            jwks_file: None,
            jwks_url: Some(url),
            jwks_ca_file: None,
        });
    })
    .await;
    assert_eq!(idp.fetches(), 1, "fetched once at start");
    let mut landlord = gw.landlord(LANDLORD).await;
    landlord
        .report_rent_arrears(with_token(
            report("u-1", RESIDENT),
            &old.token(claims(LANDLORD)),
        ))
        .await
        .expect("the current key is accepted");
    assert_eq!(idp.fetches(), 1, "a known key needs no fetch");

    // The provider rotates: the first token with the new key id prompts a fetch.
    idp.serve(new.jwks());
    landlord
        .report_rent_arrears(with_token(
            report("u-2", RESIDENT),
            &new.token(claims(LANDLORD)),
        ))
        .await
        .expect("the rotated key is accepted");
    assert_eq!(idp.fetches(), 2);
    // The retired key is gone from the set, and made-up key ids do not prompt more fetches.
    let err = landlord
        .report_rent_arrears(with_token(
            report("u-3", RESIDENT),
            &old.token(claims(LANDLORD)),
        ))
        .await
        .expect_err("the retired key is refused");
    assert_eq!(reason(&err), "JWT_UNKNOWN_KEY");
    for i in 0..5 {
        let forged = Idp::with_kid("made-up");
        let err = landlord
            .report_rent_arrears(with_token(
                report(&format!("u-f{i}"), RESIDENT),
                &forged.token(claims(LANDLORD)),
            ))
            .await
            .expect_err("an unknown key is refused");
        assert_eq!(reason(&err), "JWT_UNKNOWN_KEY");
    }
    assert_eq!(idp.fetches(), 2, "at most one prompted fetch per 30 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_url_must_be_https_off_loopback() {
    let mut config = silta_server::Config::default();
    config.jwt.issuers.push(silta_server::config::JwtIssuer {
        org: LANDLORD.into(),
        issuer: ISSUER.into(),
        audience: "silta".into(),
        jwks_file: None,
        jwks_url: Some("http://idp.example/jwks".into()),
        jwks_ca_file: None,
    });
    let err = silta_server::actor::ActorVerifier::new(&config.jwt)
        .await
        .expect_err("refused");
    assert!(err.contains("must be https://"), "{err}");
    config.jwt.issuers[0].jwks_url = None;
    let err = silta_server::actor::ActorVerifier::new(&config.jwt)
        .await
        .expect_err("refused");
    assert!(
        err.contains("exactly one of jwks_file and jwks_url"),
        "{err}"
    );
}
