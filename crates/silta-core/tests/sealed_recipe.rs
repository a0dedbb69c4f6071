//! The recipient's recipe in docs/api.md ("Sealed identity"), run as written: it opens what
//! silta seals with the `hpke` crate alone, not through silta's own `open`.

use silta_core::sealed;
use silta_core::{Hetu, HetuRules, OrgId};

// --- The recipe, as in docs/api.md. ---
use base64::Engine as _;
use hpke::{
    Deserializable, OpModeR, aead::ChaCha20Poly1305, kdf::HkdfSha256, kem::X25519HkdfSha256,
};

/// Opens `Alert.sealed_identity` (`enc`, `ciphertext`) of the alert `alert_id` on flow
/// `flow_id`, as organisation `my_org`, with the private key from `hpke-private.key`.
fn open_sealed_identity(
    private_key_b64: &str,
    enc: &[u8],
    ciphertext: &[u8],
    flow_id: &str,
    my_org: &str,
    alert_id: &str,
) -> Result<String, Box<dyn std::error::Error>> {
    let sk_bytes = base64::engine::general_purpose::STANDARD.decode(private_key_b64.trim())?;
    let sk = <X25519HkdfSha256 as hpke::Kem>::PrivateKey::from_bytes(&sk_bytes)?;
    let enc = <X25519HkdfSha256 as hpke::Kem>::EncappedKey::from_bytes(enc)?;
    let info = [
        b"silta/v1 sealed-identity".as_slice(),
        b"\0",
        flow_id.as_bytes(),
        b"\0",
        my_org.as_bytes(),
    ]
    .concat();
    let code = hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256>(
        &OpModeR::Base,
        &sk,
        &enc,
        &info,
        ciphertext,
        alert_id.as_bytes(), // the AAD: the alert's own id
    )?;
    Ok(String::from_utf8(code)?)
}
// --- End of the recipe. ---

#[test]
fn the_documented_recipe_opens_what_silta_seals() -> Result<(), Box<dyn std::error::Error>> {
    let (private, public) = sealed::generate_keypair();
    let key = sealed::RecipientKey::from_base64(&public)?;
    let hetu = Hetu::parse(
        "150385-9345",
        HetuRules {
            allow_temporary: true,
        },
    )?;
    let org = OrgId::new("helsinki-social")?;
    let alert_id = "01890000-0000-7000-8000-000000000001";
    let s = sealed::seal(&hetu, &key, "eviction-enforcement-notice", &org, alert_id)?;
    let code = open_sealed_identity(
        &private,
        &s.enc,
        &s.ciphertext,
        "eviction-enforcement-notice",
        "helsinki-social",
        alert_id,
    )?;
    assert_eq!(code, "150385-9345");
    assert!(
        open_sealed_identity(
            &private,
            &s.enc,
            &s.ciphertext,
            "eviction-enforcement-notice",
            "helsinki-social",
            "another-alert"
        )
        .is_err()
    );
    Ok(())
}
