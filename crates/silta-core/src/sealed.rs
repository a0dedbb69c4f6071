//! Sealed identity: the identity code, encrypted to the one organisation a statutory flow names,
//! with HPKE (RFC 9180) in base mode, suite DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 /
//! ChaCha20-Poly1305.
//!
//! silta holds only the recipient's *public* key, so what it stores (the encapsulated key and
//! the ciphertext) it cannot open itself: a copy of the database reveals no code. The `info`
//! binds a ciphertext to silta, the flow and the recipient; the AAD binds it to the alert id, so
//! a ciphertext moved to another alert, flow or organisation does not open.

use std::fmt;

use data_encoding::{BASE64, HEXLOWER};
use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use zeroize::Zeroizing;

use crate::{Hetu, OrgId};

/// The suite's name, as the alert carries it.
pub const SUITE: &str = "HPKE-base/X25519-HKDF-SHA256/HKDF-SHA256/ChaCha20Poly1305";

/// The prefix of every `info`: which protocol and version sealed it.
const INFO_PREFIX: &[u8] = b"silta/v1 sealed-identity";

/// A recipient organisation's HPKE public key.
#[derive(Clone)]
pub struct RecipientKey {
    public: <X25519HkdfSha256 as hpke::Kem>::PublicKey,
    key_id: String,
}

impl fmt::Debug for RecipientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RecipientKey({})", self.key_id)
    }
}

/// What cannot be sealed or opened. Never says anything about the plaintext.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    /// A key is not base64 of 32 bytes.
    #[error("not an X25519 key: expected base64 of 32 bytes")]
    BadKey,
    /// The encapsulated key is malformed, or the ciphertext does not open with this key,
    /// flow, organisation and alert id.
    #[error(
        "the sealed identity does not open with this key for this flow, organisation and alert"
    )]
    Open,
    /// HPKE refused to seal.
    #[error("sealing failed")]
    Seal,
}

impl RecipientKey {
    /// Reads a public key: base64 (standard alphabet, padded) of its 32 bytes.
    pub fn from_base64(text: &str) -> Result<Self, SealError> {
        let bytes = BASE64
            .decode(text.trim().as_bytes())
            .map_err(|_| SealError::BadKey)?;
        let public = <X25519HkdfSha256 as hpke::Kem>::PublicKey::from_bytes(&bytes)
            .map_err(|_| SealError::BadKey)?;
        Ok(RecipientKey {
            key_id: key_id(&bytes),
            public,
        })
    }

    /// The key's id: the first 8 bytes of SHA-256 of the public key, hex. Tells a recipient
    /// that rotated its key which private key opens an alert.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }
}

fn key_id(public: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, public);
    HEXLOWER.encode(&digest.as_ref()[..8])
}

/// An identity code sealed to one recipient.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedIdentity {
    /// The suite, [`SUITE`].
    pub suite: String,
    /// The id of the recipient key it is sealed to.
    pub key_id: String,
    /// HPKE's encapsulated key (32 bytes for X25519).
    pub enc: Vec<u8>,
    /// The sealed code: 11 bytes of ASCII and a 16-byte tag.
    pub ciphertext: Vec<u8>,
}

impl fmt::Debug for SealedIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealedIdentity({})", self.key_id)
    }
}

/// The `info` of a sealed identity: silta, the flow and the recipient organisation, each
/// NUL-separated (neither a flow id nor an org id can hold a NUL).
pub fn info(flow_id: &str, recipient: &str) -> Vec<u8> {
    let mut info = INFO_PREFIX.to_vec();
    for part in [flow_id, recipient] {
        info.push(0);
        info.extend_from_slice(part.as_bytes());
    }
    info
}

/// Seals `hetu` to `key` for the alert `alert_id` of flow `flow_id` to `recipient`.
///
/// Draws the ephemeral key from the operating system's generator; like every key silta makes,
/// it panics if the system has none.
pub fn seal(
    hetu: &Hetu,
    key: &RecipientKey,
    flow_id: &str,
    recipient: &OrgId,
    alert_id: &str,
) -> Result<SealedIdentity, SealError> {
    let (enc, ciphertext) =
        hpke::single_shot_seal::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256>(
            &OpModeS::Base,
            &key.public,
            &info(flow_id, recipient.as_str()),
            hetu.clear_bytes(),
            alert_id.as_bytes(),
        )
        .map_err(|_| SealError::Seal)?;
    Ok(SealedIdentity {
        suite: SUITE.to_owned(),
        key_id: key.key_id.clone(),
        enc: enc.to_bytes().to_vec(),
        ciphertext,
    })
}

/// Opens a sealed identity as the recipient: `private_key` is the 32-byte X25519 private key
/// (as `silta keys recipient-keypair` writes it, base64). Returns the code, as written.
pub fn open(
    private_key_base64: &str,
    sealed: &SealedIdentity,
    flow_id: &str,
    recipient: &str,
    alert_id: &str,
) -> Result<Zeroizing<String>, SealError> {
    let private = Zeroizing::new(
        BASE64
            .decode(private_key_base64.trim().as_bytes())
            .map_err(|_| SealError::BadKey)?,
    );
    let private = <X25519HkdfSha256 as hpke::Kem>::PrivateKey::from_bytes(&private)
        .map_err(|_| SealError::BadKey)?;
    let enc = <X25519HkdfSha256 as hpke::Kem>::EncappedKey::from_bytes(&sealed.enc)
        .map_err(|_| SealError::Open)?;
    let plain = hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256>(
        &OpModeR::Base,
        &private,
        &enc,
        &info(flow_id, recipient),
        &sealed.ciphertext,
        alert_id.as_bytes(),
    )
    .map_err(|_| SealError::Open)?;
    let plain = Zeroizing::new(plain);
    String::from_utf8(plain.to_vec())
        .map(Zeroizing::new)
        .map_err(|_| SealError::Open)
}

/// A fresh recipient key pair, base64: (private, public). For `silta keys recipient-keypair`.
pub fn generate_keypair() -> (Zeroizing<String>, String) {
    let (private, public) = X25519HkdfSha256::gen_keypair();
    let private = Zeroizing::new(BASE64.encode(&private.to_bytes()));
    (private, BASE64.encode(&public.to_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HetuRules;

    fn hetu() -> Hetu {
        let rules = HetuRules {
            allow_temporary: true,
        };
        // Cannot fail: a synthetic code with the right check character.
        #[allow(clippy::unwrap_used)]
        Hetu::parse("150385-9345", rules).unwrap()
    }

    #[test]
    fn the_recipient_opens_it_and_nothing_else_does() -> Result<(), SealError> {
        let (private, public) = generate_keypair();
        let (other_private, _) = generate_keypair();
        let key = RecipientKey::from_base64(&public)?;
        let org = OrgId::new("helsinki-social").map_err(|_| SealError::BadKey)?;
        let sealed = seal(&hetu(), &key, "flow-a", &org, "alert-1")?;
        assert_eq!(sealed.suite, SUITE);
        assert_eq!(sealed.enc.len(), 32);
        assert_eq!(
            open(&private, &sealed, "flow-a", "helsinki-social", "alert-1")?.as_str(),
            "150385-9345"
        );
        // Another key, alert, flow or organisation: it does not open.
        for (sk, flow, org, alert) in [
            (
                other_private.as_str(),
                "flow-a",
                "helsinki-social",
                "alert-1",
            ),
            (private.as_str(), "flow-a", "helsinki-social", "alert-2"),
            (private.as_str(), "flow-b", "helsinki-social", "alert-1"),
            (private.as_str(), "flow-a", "espoo-social", "alert-1"),
        ] {
            assert_eq!(open(sk, &sealed, flow, org, alert), Err(SealError::Open));
        }
        Ok(())
    }

    #[test]
    fn a_malformed_public_key_is_refused() {
        assert!(RecipientKey::from_base64("not base64!").is_err());
        assert!(RecipientKey::from_base64(&BASE64.encode(&[1u8; 31])).is_err());
    }
}
