//! Keyed pseudonyms: HMAC-SHA256 of the identity code, one key per domain.
//!
//! Each recipient organisation has a domain of its own, so two organisations never share a
//! pseudonym for the same person and cannot link their records through silta. The gateway
//! has internal domains too: `lookup` (how consents are found), `audit` (the ledger's subject
//! column) and `fingerprint` (idempotency checks over report bodies). Keys derive from the
//! master secret with HKDF; the key version is written into every pseudonym so keys can rotate.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};

use ring::hmac;

use crate::hetu::Hetu;
use crate::org::OrgId;
use crate::secret::{Keyring, MasterSecret};

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

    /// The key version it was made under.
    pub fn version(&self) -> Option<u32> {
        self.0.strip_prefix("ps")?.split_once('.')?.0.parse().ok()
    }

    fn render(version: u32, tag: &[u8; PSEUDONYM_BYTES]) -> Self {
        let mut s = format!("ps{version}.");
        data_encoding::BASE32_NOPAD.encode_append(tag, &mut s);
        s.make_ascii_lowercase();
        Pseudonym(s)
    }

    fn version_and_tag(&self) -> Option<(u32, [u8; PSEUDONYM_BYTES])> {
        let (version, tag) = self.0.strip_prefix("ps")?.split_once('.')?;
        let bytes = data_encoding::BASE32_NOPAD
            .decode(tag.to_ascii_uppercase().as_bytes())
            .ok()?;
        Some((version.parse().ok()?, bytes.try_into().ok()?))
    }
}

impl fmt::Display for Pseudonym {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A subject's pseudonyms in one domain under every version of the keyring, oldest first.
///
/// Which one a record uses is decided where it is written: by the version the store says is in
/// use, read in the same transaction (see `silta keys promote`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PseudonymSet {
    first: u32,
    all: Vec<Pseudonym>,
}

impl PseudonymSet {
    /// The pseudonym under key `version`, if the keyring holds it.
    pub fn at(&self, version: u32) -> Option<&Pseudonym> {
        self.all
            .get(usize::try_from(version.checked_sub(self.first)?).ok()?)
    }

    /// Every version's pseudonym, oldest first.
    pub fn all(&self) -> &[Pseudonym] {
        &self.all
    }

    /// The newest version's pseudonym.
    pub fn latest(&self) -> &Pseudonym {
        // Never empty: a keyring holds at least one version.
        &self.all[self.all.len() - 1]
    }
}

/// Computes pseudonyms and keyed fingerprints. Cheap to clone; keys are derived once per
/// version and domain, and cached.
///
/// A pseudonym of the keyring's first version is `HMAC(key, identity code)`; one of each later
/// version `v` is `HMAC(key_v, pseudonym_{v-1})`. So a stored pseudonym moves to a newer
/// version without the identity code ([`Pseudonymiser::translate`]), and once it has, reading
/// it back takes every key up to that version: a leaked old key alone reveals nothing.
#[derive(Clone)]
pub struct Pseudonymiser {
    inner: Arc<Inner>,
}

struct Inner {
    keyring: Keyring,
    keys: RwLock<HashMap<(u32, Domain), hmac::Key>>,
    fingerprint: hmac::Key,
    /// The version the store said was in use when last asked (see [`Pseudonymiser::observe`]).
    observed: AtomicU32,
    /// A version the store uses that this keyring lacks, 0 for none (see
    /// [`Pseudonymiser::observe_missing`]).
    missing: AtomicU32,
}

impl fmt::Debug for Pseudonymiser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pseudonymiser({:?})", self.inner.keyring)
    }
}

impl Pseudonymiser {
    /// A pseudonymiser of one secret, as key version `version`.
    pub fn new(secret: MasterSecret, version: u32) -> Self {
        Self::with_keyring(Keyring::single(secret, version))
    }

    /// A pseudonymiser for every version of `keyring`.
    pub fn with_keyring(keyring: Keyring) -> Self {
        // Fingerprints recognise retried reports; they do not rotate, so a retry that spans a
        // key promotion is still recognised.
        let fp = keyring
            .root()
            .derive(format!("silta/fingerprint/v{}", keyring.first()).as_bytes());
        Pseudonymiser {
            inner: Arc::new(Inner {
                fingerprint: hmac::Key::new(hmac::HMAC_SHA256, fp.as_ref()),
                observed: AtomicU32::new(keyring.first()),
                missing: AtomicU32::new(0),
                keyring,
                keys: RwLock::new(HashMap::new()),
            }),
        }
    }

    /// The keyring's oldest version.
    pub fn first_version(&self) -> u32 {
        self.inner.keyring.first()
    }

    /// The keyring's newest version.
    pub fn latest_version(&self) -> u32 {
        self.inner.keyring.latest()
    }

    /// Whether the keyring holds `version`.
    pub fn has_version(&self, version: u32) -> bool {
        self.inner.keyring.has(version)
    }

    /// Remembers that the store said `version` is in use (each write transaction reads it).
    pub fn observe(&self, version: u32) {
        // Release/Acquire: a reader that sees a version the store moved to reads the store after
        // it (the checkpointer reads this before the ledger's head).
        self.inner.observed.store(version, Ordering::Release);
        self.inner.missing.store(0, Ordering::Relaxed);
    }

    /// Records that the store uses `version`, which this keyring lacks (a promotion made by
    /// another node or `silta keys promote` before this node got the rotated keyring): this node
    /// can write nothing until it is restarted with it.
    pub fn observe_missing(&self, version: u32) {
        self.inner.missing.store(version, Ordering::Relaxed);
    }

    /// The version the store was last seen to use that this keyring lacks, if any.
    pub fn missing_version(&self) -> Option<u32> {
        match self.inner.missing.load(Ordering::Relaxed) {
            0 => None,
            v => Some(v),
        }
    }

    /// The version the store said was in use when last asked, if the keyring holds it; else
    /// the keyring's newest. For records written outside a transaction that reads it (refusals):
    /// the audit ledger holds any version, and queries search them all.
    pub fn observed_version(&self) -> u32 {
        let v = self.inner.observed.load(Ordering::Acquire);
        if self.has_version(v) {
            v
        } else {
            self.latest_version()
        }
    }

    /// The pseudonyms of `hetu` in `domain` under every version of the keyring.
    pub fn pseudonyms(&self, hetu: &Hetu, domain: &Domain) -> PseudonymSet {
        self.chain(hetu, domain, self.inner.keyring.latest())
    }

    /// The pseudonym of `hetu` in `domain` under `version`, if the keyring holds it.
    pub fn pseudonym_at(&self, hetu: &Hetu, domain: &Domain, version: u32) -> Option<Pseudonym> {
        self.has_version(version)
            .then(|| self.chain(hetu, domain, version).latest().clone())
    }

    /// The pseudonym of `hetu` in `domain` under [`Pseudonymiser::observed_version`].
    pub fn pseudonym(&self, hetu: &Hetu, domain: &Domain) -> Pseudonym {
        self.chain(hetu, domain, self.observed_version())
            .latest()
            .clone()
    }

    /// A stored pseudonym and its translations to every newer version of the keyring. A
    /// pseudonym of a version the keyring lacks is returned alone.
    pub fn forward(&self, stored: &Pseudonym, domain: &Domain) -> PseudonymSet {
        let Some(first) = stored.version().filter(|&v| self.has_version(v)) else {
            return PseudonymSet {
                first: stored.version().unwrap_or(0),
                all: vec![stored.clone()],
            };
        };
        let all = (first..=self.latest_version())
            .map_while(|v| self.translate(stored, domain, v))
            .collect();
        PseudonymSet { first, all }
    }

    /// Versions first..=`last` of `hetu`'s pseudonym; `last` is in the keyring.
    fn chain(&self, hetu: &Hetu, domain: &Domain, last: u32) -> PseudonymSet {
        let first = self.inner.keyring.first();
        let mut tag = self.with_key(first, domain, |key| tag_of(key, hetu.clear_bytes()));
        let mut all = vec![Pseudonym::render(first, &tag)];
        for version in first + 1..=last {
            tag = self.with_key(version, domain, |key| tag_of(key, &tag));
            all.push(Pseudonym::render(version, &tag));
        }
        PseudonymSet { first, all }
    }

    /// Moves a stored pseudonym of `domain` to key `version` without the identity code.
    /// `None` if it is not a pseudonym, is of a version newer than `version`, or names a version
    /// the keyring lacks.
    pub fn translate(
        &self,
        pseudonym: &Pseudonym,
        domain: &Domain,
        version: u32,
    ) -> Option<Pseudonym> {
        let (from, mut tag) = pseudonym.version_and_tag()?;
        if from > version || !self.has_version(from) || !self.has_version(version) {
            return None;
        }
        for v in from + 1..=version {
            tag = self.with_key(v, domain, |key| tag_of(key, &tag));
        }
        Some(Pseudonym::render(version, &tag))
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

    /// Derives the Ed25519 seed that signs the audit ledger's checkpoints under the keyring's
    /// first version.
    pub fn checkpoint_seed(&self) -> zeroize::Zeroizing<[u8; 32]> {
        self.inner
            .keyring
            .root()
            .derive(b"silta/checkpoint-signing/ed25519/v1")
    }

    /// The checkpoint signing seed of key `version` (which changes with the pseudonym key when
    /// a version is promoted), if the keyring holds it.
    pub fn checkpoint_seed_at(&self, version: u32) -> Option<zeroize::Zeroizing<[u8; 32]>> {
        Some(
            self.inner
                .keyring
                .secret(version)?
                .derive(b"silta/checkpoint-signing/ed25519/v1"),
        )
    }

    /// Derives the Ed25519 seed that signs consent receipts.
    pub(crate) fn receipt_seed(&self) -> zeroize::Zeroizing<[u8; 32]> {
        self.inner
            .keyring
            .root()
            .derive(b"silta/receipt-signing/ed25519/v1")
    }

    fn with_key<R>(&self, version: u32, domain: &Domain, f: impl FnOnce(&hmac::Key) -> R) -> R {
        let id = (version, domain.clone());
        // A poisoned lock only means another thread panicked mid-insert of a derived key;
        // the map is still consistent, so keep using it.
        if let Some(key) = self
            .inner
            .keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
        {
            return f(key);
        }
        let label = format!("silta/pseudonym/v{version}/{}", domain.label());
        // Callers pass versions of the keyring only (pseudonyms() and translate() check).
        let secret = self
            .inner
            .keyring
            .secret(version)
            .expect("a version of the keyring");
        let raw = secret.derive(label.as_bytes());
        let key = hmac::Key::new(hmac::HMAC_SHA256, raw.as_ref());
        let r = f(&key);
        self.inner
            .keys
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, key);
        r
    }
}

fn tag_of(key: &hmac::Key, input: &[u8]) -> [u8; PSEUDONYM_BYTES] {
    let mut tag = [0u8; PSEUDONYM_BYTES];
    tag.copy_from_slice(&hmac::sign(key, input).as_ref()[..PSEUDONYM_BYTES]);
    tag
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

    fn ring(versions: std::ops::RangeInclusive<u8>) -> Keyring {
        let text: String = versions
            .map(|v| {
                let hex: String = (0u8..32)
                    .map(|i| format!("{:02x}", i.wrapping_mul(37).wrapping_add(v)))
                    .collect();
                format!("v{v} {hex}\n")
            })
            .collect();
        Keyring::parse(&text, 1).expect("a test keyring")
    }

    #[test]
    fn a_rotation_keeps_old_pseudonyms_and_translates_them_without_the_code() {
        let h = hetu("010594Y9032");
        let before = Pseudonymiser::with_keyring(ring(1..=1));
        let after = Pseudonymiser::with_keyring(ring(1..=3));
        let stored = before.pseudonym(&h, &Domain::Lookup);
        let set = after.pseudonyms(&h, &Domain::Lookup);
        // Adding versions does not change the old ones: a rotated keyring still finds them.
        assert_eq!(set.at(1), Some(&stored));
        assert_eq!(set.all().len(), 3);
        assert_eq!(set.latest().version(), Some(3));
        assert_eq!(set.at(4), None);
        for v in 1..=3 {
            assert_eq!(
                after.translate(&stored, &Domain::Lookup, v).as_ref(),
                set.at(v)
            );
        }
        // Never backwards, never to a version the keyring lacks, never across domains.
        let v3 = set.at(3).expect("v3");
        assert_eq!(after.translate(v3, &Domain::Lookup, 2), None);
        assert_eq!(after.translate(&stored, &Domain::Lookup, 4), None);
        assert_ne!(
            after.translate(&stored, &Domain::Audit, 2).as_ref(),
            set.at(2)
        );
        // A stored pseudonym and its newer versions, as a support notice's case gives them.
        assert_eq!(after.forward(&stored, &Domain::Lookup), set);
        assert_eq!(
            after.pseudonym_at(&h, &Domain::Lookup, 2).as_ref(),
            set.at(2)
        );
        // Until the store says otherwise, the first version is the one in use.
        assert_eq!(after.pseudonym(&h, &Domain::Lookup), stored);
        after.observe(3);
        assert_eq!(&after.pseudonym(&h, &Domain::Lookup), set.latest());
        // Signing keys and fingerprints stay those of the first version.
        assert_eq!(before.checkpoint_seed(), after.checkpoint_seed());
        assert_eq!(
            before.fingerprint(Some(&h), &[b"x"]),
            after.fingerprint(Some(&h), &[b"x"])
        );
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
