//! Keyed pseudonyms: HMAC-SHA256 of the identity code, one key per domain.
//!
//! Each recipient organisation has a domain of its own, so two organisations never share a
//! pseudonym for the same person and cannot link their records through silta. The gateway
//! has internal domains too: `lookup` (how consents are found), `audit` (the ledger's subject
//! column) and `fingerprint` (idempotency checks over report bodies). Keys derive from the
//! master secret with HKDF; the key version is written into every pseudonym so keys can rotate.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use ring::hmac;

use crate::hetu::Hetu;
use crate::org::OrgId;
use crate::secret::MasterSecret;

/// Bytes of the HMAC output kept in a pseudonym: 160 bits, far beyond any collision risk for
/// a population of millions, and short enough to read.
const PSEUDONYM_BYTES: usize = 20;

/// A pseudonym domain: whose pseudonyms these are.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Domain {
    /// A recipient organisation's own domain.
    Org(OrgId),
    /// silta's index for finding a person's consents.
    Lookup,
    /// The audit ledger's subject domain.
    Audit,
}

impl Domain {
    fn label(&self) -> String {
        match self {
            Domain::Org(org) => format!("org/{org}"),
            Domain::Lookup => "lookup".into(),
            Domain::Audit => "audit".into(),
        }
    }
}

/// A pseudonym: `ps<version>.<32 base32 characters>`. Holds no recoverable personal data
/// without the key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pseudonym(String);

impl Pseudonym {
    /// The pseudonym as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Parses a pseudonym given by a caller: `ps<version>.<32 characters of a-z, 2-7>`.
    /// Anything else (an identity code pasted into the wrong field, say) is refused.
    pub fn parse(s: &str) -> Option<Self> {
        let (version, tag) = s.strip_prefix("ps")?.split_once('.')?;
        let ok = !version.is_empty()
            && version.len() <= 9
            && version.bytes().all(|b| b.is_ascii_digit())
            && tag.len() == 32
            && tag
                .bytes()
                .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b));
        ok.then(|| Pseudonym(s.to_owned()))
    }

    /// Re-reads a stored pseudonym (the store trusts what it wrote).
    pub fn from_stored(s: String) -> Self {
        Pseudonym(s)
    }
}

impl fmt::Display for Pseudonym {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Computes pseudonyms and keyed fingerprints. Cheap to clone; keys are derived once per domain
/// and cached.
#[derive(Clone)]
pub struct Pseudonymiser {
    inner: Arc<Inner>,
}

struct Inner {
    secret: MasterSecret,
    version: u32,
    keys: RwLock<HashMap<Domain, hmac::Key>>,
    fingerprint: hmac::Key,
}

impl fmt::Debug for Pseudonymiser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pseudonymiser(v{})", self.inner.version)
    }
}

impl Pseudonymiser {
    /// A pseudonymiser for key version `version` of `secret`.
    pub fn new(secret: MasterSecret, version: u32) -> Self {
        let fp = secret.derive(format!("silta/fingerprint/v{version}").as_bytes());
        Pseudonymiser {
            inner: Arc::new(Inner {
                fingerprint: hmac::Key::new(hmac::HMAC_SHA256, fp.as_ref()),
                secret,
                version,
                keys: RwLock::new(HashMap::new()),
            }),
        }
    }

    /// The current key version.
    pub fn version(&self) -> u32 {
        self.inner.version
    }

    /// The pseudonym of `hetu` in `domain`.
    pub fn pseudonym(&self, hetu: &Hetu, domain: &Domain) -> Pseudonym {
        let tag = self.with_key(domain, |key| hmac::sign(key, hetu.clear_bytes()));
        let mut s = format!("ps{}.", self.inner.version);
        data_encoding::BASE32_NOPAD.encode_append(&tag.as_ref()[..PSEUDONYM_BYTES], &mut s);
        s.make_ascii_lowercase();
        Pseudonym(s)
    }

    /// A keyed fingerprint of `parts` (length-prefixed, so boundaries count). Used to compare
    /// request bodies that hold an identity code without storing anything guessable: a plain
    /// hash of a code could be reversed by trying every code.
    /// `hetu` is `None` for a body that holds none (a support notice).
    pub fn fingerprint(&self, hetu: Option<&Hetu>, parts: &[&[u8]]) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.inner.fingerprint);
        if let Some(hetu) = hetu {
            ctx.update(hetu.clear_bytes());
        }
        for p in parts {
            ctx.update(&(p.len() as u64).to_be_bytes());
            ctx.update(p);
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    /// Derives the Ed25519 seed that signs the audit ledger's checkpoints.
    pub fn checkpoint_seed(&self) -> zeroize::Zeroizing<[u8; 32]> {
        self.inner
            .secret
            .derive(b"silta/checkpoint-signing/ed25519/v1")
    }

    /// Derives the Ed25519 seed that signs consent receipts.
    pub(crate) fn receipt_seed(&self) -> zeroize::Zeroizing<[u8; 32]> {
        self.inner
            .secret
            .derive(b"silta/receipt-signing/ed25519/v1")
    }

    fn with_key<R>(&self, domain: &Domain, f: impl FnOnce(&hmac::Key) -> R) -> R {
        // A poisoned lock only means another thread panicked mid-insert of a derived key;
        // the map is still consistent, so keep using it.
        if let Some(key) = self
            .inner
            .keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(domain)
        {
            return f(key);
        }
        let label = format!("silta/pseudonym/v{}/{}", self.inner.version, domain.label());
        let raw = self.inner.secret.derive(label.as_bytes());
        let key = hmac::Key::new(hmac::HMAC_SHA256, raw.as_ref());
        let r = f(&key);
        self.inner
            .keys
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(domain.clone(), key);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hetu::HetuRules;
    use proptest::prelude::*;

    fn secret(seed: u8) -> MasterSecret {
        let bytes: Vec<u8> = (0u8..32)
            .map(|i| i.wrapping_mul(37).wrapping_add(seed))
            .collect();
        MasterSecret::from_bytes(&bytes).expect("a strong test secret")
    }

    fn hetu(s: &str) -> Hetu {
        Hetu::parse(
            s,
            HetuRules {
                allow_temporary: true,
            },
        )
        .expect("valid test code")
    }

    fn org(s: &str) -> Domain {
        Domain::Org(OrgId::new(s).expect("valid org"))
    }

    #[test]
    fn pseudonyms_differ_per_domain_and_are_stable() {
        let p = Pseudonymiser::new(secret(1), 1);
        let h = hetu("010594Y9032");
        let a = p.pseudonym(&h, &org("social-a"));
        let b = p.pseudonym(&h, &org("social-b"));
        assert_ne!(a, b);
        assert_ne!(a, p.pseudonym(&h, &Domain::Audit));
        assert_eq!(
            a,
            Pseudonymiser::new(secret(1), 1).pseudonym(&h, &org("social-a"))
        );
        assert_ne!(
            a,
            Pseudonymiser::new(secret(2), 1).pseudonym(&h, &org("social-a"))
        );
        assert!(a.as_str().starts_with("ps1."));
        assert_eq!(Pseudonym::parse(a.as_str()), Some(a.clone()));
        for bad in [
            "",
            "ps1.",
            "150385-9345",
            "ps.aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "ps1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            assert_eq!(Pseudonym::parse(bad), None, "{bad}");
        }
        assert_eq!(a.as_str().len(), 4 + 32);
    }

    #[test]
    fn key_version_is_inside_the_pseudonym_and_changes_it() {
        let h = hetu("010594Y9032");
        let v1 = Pseudonymiser::new(secret(1), 1).pseudonym(&h, &Domain::Lookup);
        let v2 = Pseudonymiser::new(secret(1), 2).pseudonym(&h, &Domain::Lookup);
        assert!(v2.as_str().starts_with("ps2."));
        assert_ne!(v1.as_str()[4..], v2.as_str()[4..]);
    }

    proptest! {
        #[test]
        fn distinct_codes_get_distinct_pseudonyms(a in 2u32..900, b in 2u32..900) {
            prop_assume!(a != b);
            let make = |n: u32| {
                let v = 10594u32 * 1000 + n;
                let c = char::from(b"0123456789ABCDEFHJKLMNPRSTUVWXY"[(v % 31) as usize]);
                hetu(&format!("010594-{n:03}{c}"))
            };
            let p = Pseudonymiser::new(secret(3), 1);
            let d = org("social-a");
            prop_assert_ne!(p.pseudonym(&make(a), &d), p.pseudonym(&make(b), &d));
            let ha = make(a);
            prop_assert_eq!(p.pseudonym(&ha, &d), p.pseudonym(&ha, &d));
        }
    }
}
