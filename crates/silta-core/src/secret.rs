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

/// The gateway's master secret. Zeroed on drop; never printed.
pub struct MasterSecret {
    prk: hkdf::Prk,
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
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, b"silta master secret v1");
        Ok(MasterSecret {
            prk: salt.extract(bytes),
        })
    }

    /// Derives 32 bytes for `purpose` (distinct purposes give independent keys).
    pub(crate) fn derive(&self, purpose: &[u8]) -> Zeroizing<[u8; 32]> {
        let mut out = Zeroizing::new([0u8; 32]);
        let info = [purpose];
        // Both calls fail only when the output is longer than 255 hash blocks; 32 bytes is one.
        let okm = self
            .prk
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
}
