//! The master secret every pseudonym key and the receipt signing key derive from.

use ring::hkdf;
use zeroize::Zeroizing;

/// Minimum length of the master secret in bytes.
pub const MIN_SECRET_BYTES: usize = 32;

/// Why a master secret is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// The text is not hexadecimal.
    #[error("master secret must be hexadecimal (generate one with `silta keys generate`)")]
    NotHex,
    /// Fewer than 32 bytes.
    #[error("master secret is too short: need at least {MIN_SECRET_BYTES} bytes (64 hex digits)")]
    TooShort,
    /// Too few distinct byte values to be random: a placeholder, not a secret.
    #[error(
        "master secret looks weak (too few distinct bytes); generate one with `silta keys generate`"
    )]
    Weak,
}

/// Why a keyring is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyringError {
    /// A line's secret is refused.
    #[error("line {line}: {error}")]
    Secret {
        /// 1-based line number.
        line: usize,
        /// Why.
        error: SecretError,
    },
    /// A line is not `v<N> <hex>`.
    #[error("line {0}: expected `v<version> <hex secret>` (or a single bare hex secret)")]
    Malformed(usize),
    /// Versions must run 1, 2, 3, … (or N, N+1, …) without gaps or repeats, oldest first.
    #[error("line {0}: versions must follow each other without gaps, oldest first")]
    NotContiguous(usize),
    /// A version repeats an earlier version's secret: rotating to it would change nothing.
    #[error("line {0}: the same secret as an earlier version; each version needs its own")]
    Duplicate(usize),
    /// The file holds no secret.
    #[error("holds no secret")]
    Empty,
}

/// Every version of the master secret, oldest first, versions without gaps.
///
/// Pseudonym keys of version `v` derive from secret `v`. A version is never removed once it
/// is in use: a pseudonym of version `v` is computed through every version before it (see
/// [`crate::pseudonym`]).
pub struct Keyring {
    first: u32,
    secrets: Vec<MasterSecret>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keyring(v{}..=v{})", self.first, self.latest())
    }
}

impl Keyring {
    /// A keyring of one secret, as version `version`.
    pub fn single(secret: MasterSecret, version: u32) -> Self {
        Keyring {
            first: version,
            secrets: vec![secret],
        }
    }

    /// Reads a keyring file: one `v<N> <hex>` line per version, oldest first (blank lines and
    /// `#` comments ignored). A file of one bare hex secret (what `silta keys generate`
    /// writes) is version `bare_version`.
    pub fn parse(text: &str, bare_version: u32) -> Result<Self, KeyringError> {
        let lines: Vec<(usize, &str)> = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim()))
            .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
            .collect();
        if let [(line, only)] = lines.as_slice()
            && !only.starts_with('v')
        {
            let secret = MasterSecret::from_hex(only)
                .map_err(|error| KeyringError::Secret { line: *line, error })?;
            return Ok(Keyring::single(secret, bare_version));
        }
        let mut ring: Option<Keyring> = None;
        for (line, text) in lines {
            let (version, hex) = text
                .strip_prefix('v')
                .and_then(|t| t.split_once(char::is_whitespace))
                .and_then(|(v, hex)| Some((v.parse::<u32>().ok()?, hex)))
                .ok_or(KeyringError::Malformed(line))?;
            let secret = MasterSecret::from_hex(hex)
                .map_err(|error| KeyringError::Secret { line, error })?;
            if ring
                .as_ref()
                .is_some_and(|r| r.secrets.iter().any(|s| s.bytes == secret.bytes))
            {
                return Err(KeyringError::Duplicate(line));
            }
            match &mut ring {
                None => ring = Some(Keyring::single(secret, version)),
                Some(r) if r.latest().checked_add(1) == Some(version) => r.secrets.push(secret),
                Some(_) => return Err(KeyringError::NotContiguous(line)),
            }
        }
        ring.ok_or(KeyringError::Empty)
    }

    /// The oldest version.
    pub fn first(&self) -> u32 {
        self.first
    }

    /// The newest version.
    pub fn latest(&self) -> u32 {
        // At most u32::MAX versions fit: parse only ever adds one past a u32.
        self.first + u32::try_from(self.secrets.len() - 1).unwrap_or(u32::MAX)
    }

    /// Whether `version` is in the keyring.
    pub fn has(&self, version: u32) -> bool {
        (self.first..=self.latest()).contains(&version)
    }

    /// The secret of `version`.
    pub(crate) fn secret(&self, version: u32) -> Option<&MasterSecret> {
        let i = usize::try_from(version.checked_sub(self.first)?).ok()?;
        self.secrets.get(i)
    }

    /// The oldest secret: the stable root of the signing keys, which do not rotate with the
    /// pseudonym keys.
    pub(crate) fn root(&self) -> &MasterSecret {
        &self.secrets[0] // never empty: every constructor adds one
    }
}

impl From<MasterSecret> for Keyring {
    /// One secret, as version 1.
    fn from(secret: MasterSecret) -> Self {
        Keyring::single(secret, 1)
    }
}

/// The gateway's master secret. Its bytes are zeroed on drop (`zeroize`); never printed.
///
/// It keeps the secret itself rather than ring's HKDF state, which ring does not zero: each
/// derivation extracts afresh, and derivations are rare (each key is derived once and cached
/// by its user).
pub struct MasterSecret {
    bytes: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for MasterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterSecret(..)")
    }
}

impl MasterSecret {
    /// Reads a secret written as hexadecimal (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> Result<Self, SecretError> {
        let text = text.trim();
        let bytes = Zeroizing::new(
            data_encoding::HEXLOWER_PERMISSIVE
                .decode(text.as_bytes())
                .map_err(|_| SecretError::NotHex)?,
        );
        Self::from_bytes(&bytes)
    }

    /// Accepts at least 32 bytes that do not look like a placeholder.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SecretError> {
        if bytes.len() < MIN_SECRET_BYTES {
            return Err(SecretError::TooShort);
        }
        let mut seen = [false; 256];
        bytes.iter().for_each(|&b| seen[usize::from(b)] = true);
        // 32 random bytes have ~30 distinct values; fewer than 16 is a pattern, not randomness.
        if seen.iter().filter(|&&s| s).count() < 16 {
            return Err(SecretError::Weak);
        }
        Ok(MasterSecret {
            bytes: Zeroizing::new(bytes.to_vec()),
        })
    }

    /// Derives 32 bytes for `purpose` (distinct purposes give independent keys).
    pub(crate) fn derive(&self, purpose: &[u8]) -> Zeroizing<[u8; 32]> {
        let mut out = Zeroizing::new([0u8; 32]);
        let info = [purpose];
        let prk =
            hkdf::Salt::new(hkdf::HKDF_SHA256, b"silta master secret v1").extract(&self.bytes);
        // Both calls fail only when the output is longer than 255 hash blocks; 32 bytes is one.
        let okm = prk
            .expand(&info, Len32)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        okm.fill(out.as_mut())
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        out
    }
}

struct Len32;
impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_weak_and_non_hex_secrets_are_refused() {
        assert_eq!(
            MasterSecret::from_hex("abcd").unwrap_err(),
            SecretError::TooShort
        );
        assert_eq!(
            MasterSecret::from_hex(&"00".repeat(32)).unwrap_err(),
            SecretError::Weak
        );
        assert_eq!(
            MasterSecret::from_hex("zz").unwrap_err(),
            SecretError::NotHex
        );
        let good: String = (0u8..32).map(|b| format!("{:02x}", b * 7 + 3)).collect();
        assert!(MasterSecret::from_hex(&good).is_ok());
    }

    fn hex(seed: u8) -> String {
        (0u8..32)
            .map(|b| format!("{:02x}", b.wrapping_mul(7).wrapping_add(seed)))
            .collect()
    }

    #[test]
    fn keyrings_list_versions_oldest_first_without_gaps() {
        let bare = Keyring::parse(&format!("{}\n", hex(1)), 3).expect("bare secret");
        assert_eq!((bare.first(), bare.latest()), (3, 3));
        let text = format!(
            "# rotated 2026-11\nv1 {}\n\nv2 {}\nv3 {}\n",
            hex(1),
            hex(2),
            hex(3)
        );
        let ring = Keyring::parse(&text, 1).expect("keyring");
        assert_eq!((ring.first(), ring.latest()), (1, 3));
        assert!(ring.has(2) && !ring.has(4) && !ring.has(0));
        assert_eq!(
            Keyring::parse(&format!("v1 {}\nv3 {}", hex(1), hex(3)), 1).unwrap_err(),
            KeyringError::NotContiguous(2)
        );
        assert_eq!(
            Keyring::parse(&format!("v2 {}\nv1 {}", hex(2), hex(1)), 1).unwrap_err(),
            KeyringError::NotContiguous(2)
        );
        assert_eq!(
            Keyring::parse(&format!("{}\n{}", hex(1), hex(2)), 1).unwrap_err(),
            KeyringError::Malformed(1)
        );
        assert!(matches!(
            Keyring::parse("v1 abcd", 1).unwrap_err(),
            KeyringError::Secret { line: 1, .. }
        ));
        assert_eq!(
            Keyring::parse("# nothing\n", 1).unwrap_err(),
            KeyringError::Empty
        );
        assert_eq!(
            Keyring::parse(&format!("v1 {}\nv2 {}", hex(1), hex(1)), 1).unwrap_err(),
            KeyringError::Duplicate(2)
        );
    }
}
