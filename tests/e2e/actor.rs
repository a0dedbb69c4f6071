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
}

impl Idp {
    fn new() -> Self {
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
        Idp { pkcs8, public }
    }

    fn jwks(&self) -> String {
        serde_json::json!({"keys": [{
            "kty": "OKP", "crv": "Ed25519", "kid": "k1", "alg": "EdDSA", "use": "sig",
            "x": URL_SAFE_NO_PAD.encode(&self.public),
        }]})
        .to_string()
    }

    fn token(&self, claims: serde_json::Value) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some("k1".into());
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
                jwks_file: path.clone(),
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
