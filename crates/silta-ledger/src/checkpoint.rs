//! Checkpoints (C2SP `tlog-checkpoint`) inside signed notes (C2SP `signed-note`), Ed25519.
//!
//! A checkpoint body is three lines: the log's origin, the tree size in decimal, and the root
//! hash in standard base64. A signed note is the body, a blank line, and one line per
//! signature: `— <key name> <base64(key id ‖ signature)>`, where the key id is the first four
//! bytes of `SHA-256(key name ‖ "\n" ‖ 0x01 ‖ public key)`. Standard transparency-log tooling
//! (Go's `sumdb/note`, `transparency-dev/formats`) reads both.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::digest::{Context, SHA256};
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

use crate::hash::Hash;

/// The signature-type byte of Ed25519 in signed notes.
const ALG_ED25519: u8 = 0x01;
/// Signature lines start with an em dash and a space.
const SIG_PREFIX: &str = "\u{2014} ";

/// Why a note or checkpoint is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NoteError {
    /// The text does not follow the format; says where.
    #[error("malformed: {0}")]
    Malformed(&'static str),
    /// No signature by the expected key verified.
    #[error("no valid signature by key {0}")]
    Unverified(String),
    /// A key string is not `<name>+<hex id>+<base64(0x01 ‖ key)>`.
    #[error("bad key: {0}")]
    BadKey(&'static str),
}

/// A log's signed statement of its size and root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's unique name, e.g. `silta.example.fi/audit`.
    pub origin: String,
    /// Leaves in the tree.
    pub size: u64,
    /// RFC 6962 root of those leaves.
    pub root: Hash,
}

impl Checkpoint {
    /// The body text, each line ending in a newline.
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            STANDARD.encode(self.root)
        )
    }

    /// Parses a body (extension lines after the root are allowed and ignored).
    pub fn parse(body: &str) -> Result<Self, NoteError> {
        let mut lines = body.split('\n');
        let origin = lines
            .next()
            .filter(|o| !o.is_empty())
            .ok_or(NoteError::Malformed("no origin line"))?;
        let size = lines
            .next()
            .filter(|s| {
                !s.is_empty()
                    && s.bytes().all(|b| b.is_ascii_digit())
                    && (s.len() == 1 || !s.starts_with('0'))
            })
            .and_then(|s| s.parse().ok())
            .ok_or(NoteError::Malformed("tree size is not a decimal number"))?;
        let root = lines
            .next()
            .and_then(|r| STANDARD.decode(r).ok())
            .and_then(|r| Hash::try_from(r.as_slice()).ok())
            .ok_or(NoteError::Malformed("root is not the base64 of 32 bytes"))?;
        if !body.ends_with('\n') {
            return Err(NoteError::Malformed("body must end with a newline"));
        }
        Ok(Checkpoint {
            origin: origin.to_owned(),
            size,
            root,
        })
    }
}

/// The log's statement that checkpoints of sizes after `size` are signed by `new_key` and no
/// longer by `old_key`. Valid only with signatures by both keys: the old one authorises the
/// change, the new one proves it is held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyHandover {
    /// The log's origin.
    pub origin: String,
    /// The tree size at the handover: the old key vouches for sizes up to this one only.
    pub size: u64,
    /// The retiring verifier key (`<name>+<id>+<key>`).
    pub old_key: String,
    /// The verifier key taking over.
    pub new_key: String,
}

/// The second line of a handover note, which no checkpoint has (a checkpoint's is a number).
const HANDOVER_TAG: &str = "silta checkpoint key handover";

impl KeyHandover {
    /// The body text, each line ending in a newline.
    pub fn body(&self) -> String {
        format!(
            "{}\n{HANDOVER_TAG}\n{}\n{}\n{}\n",
            self.origin, self.size, self.old_key, self.new_key
        )
    }

    /// Signs the handover with the retiring key and the new one.
    pub fn sign(&self, old: &NoteSigner, new: &NoteSigner) -> Result<String, NoteError> {
        let text = self.body();
        check_text(&text)?;
        Ok(format!(
            "{text}\n{}{}",
            old.signature_line(&text),
            new.signature_line(&text)
        ))
    }

    /// Parses and verifies a handover note of `origin`: signed by both keys it names.
    pub fn open(note: &str, origin: &str) -> Result<(Self, NoteVerifier, NoteVerifier), NoteError> {
        let text = note
            .split_once("\n\n")
            .map(|(text, _)| text)
            .ok_or(NoteError::Malformed("no blank line before the signatures"))?;
        let lines: Vec<&str> = text.split('\n').collect();
        let [o, HANDOVER_TAG, size, old_key, new_key] = lines.as_slice() else {
            return Err(NoteError::Malformed("not a checkpoint key handover"));
        };
        if *o != origin {
            return Err(NoteError::Malformed(
                "handover is for another log (origin differs)",
            ));
        }
        let size = Some(size)
            .filter(|s| {
                !s.is_empty()
                    && s.bytes().all(|b| b.is_ascii_digit())
                    && (s.len() == 1 || !s.starts_with('0'))
            })
            .and_then(|s| s.parse().ok())
            .ok_or(NoteError::Malformed(
                "handover size is not a decimal number",
            ))?;
        let (old, new) = (NoteVerifier::parse(old_key)?, NoteVerifier::parse(new_key)?);
        old.open(note)?;
        new.open(note)?;
        let handover = KeyHandover {
            origin: origin.to_owned(),
            size,
            old_key: (*old_key).to_owned(),
            new_key: (*new_key).to_owned(),
        };
        Ok((handover, old, new))
    }
}

fn key_id(name: &str, public_key: &[u8]) -> [u8; 4] {
    let mut c = Context::new(&SHA256);
    c.update(name.as_bytes());
    c.update(b"\n");
    c.update(&[ALG_ED25519]);
    c.update(public_key);
    let mut id = [0u8; 4];
    id.copy_from_slice(&c.finish().as_ref()[..4]);
    id
}

fn check_name(name: &str) -> Result<(), NoteError> {
    if name.is_empty() || name.contains(|c: char| c.is_whitespace() || c == '+') {
        return Err(NoteError::BadKey(
            "key name must be non-empty, without spaces or '+'",
        ));
    }
    Ok(())
}

/// Signs notes with an Ed25519 key under a name (by convention the log's origin).
pub struct NoteSigner {
    name: String,
    key: Ed25519KeyPair,
    id: [u8; 4],
}

impl std::fmt::Debug for NoteSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NoteSigner({})", self.verifier_key())
    }
}

impl NoteSigner {
    /// A signer from a 32-byte Ed25519 seed.
    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Result<Self, NoteError> {
        check_name(name)?;
        let key =
            Ed25519KeyPair::from_seed_unchecked(seed).map_err(|_| NoteError::BadKey("seed"))?;
        let id = key_id(name, key.public_key().as_ref());
        Ok(NoteSigner {
            name: name.to_owned(),
            key,
            id,
        })
    }

    /// The verifier key string to publish: `<name>+<hex id>+<base64(0x01 ‖ public key)>`.
    pub fn verifier_key(&self) -> String {
        let mut material = vec![ALG_ED25519];
        material.extend_from_slice(self.key.public_key().as_ref());
        format!(
            "{}+{}+{}",
            self.name,
            hex(&self.id),
            STANDARD.encode(material)
        )
    }

    /// The signed note of `text` (which must be non-empty lines, each ending in a newline).
    pub fn sign(&self, text: &str) -> Result<String, NoteError> {
        check_text(text)?;
        Ok(format!("{text}\n{}", self.signature_line(text)))
    }

    fn signature_line(&self, text: &str) -> String {
        let mut blob = self.id.to_vec();
        blob.extend_from_slice(self.key.sign(text.as_bytes()).as_ref());
        format!("{SIG_PREFIX}{} {}\n", self.name, STANDARD.encode(blob))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn check_text(text: &str) -> Result<(), NoteError> {
    if !text.ends_with('\n') || text.contains("\n\n") || text.starts_with('\n') {
        return Err(NoteError::Malformed(
            "note text must be non-empty lines, each ending in a newline",
        ));
    }
    Ok(())
}

/// Verifies notes signed by one Ed25519 key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    id: [u8; 4],
    public_key: [u8; 32],
}

impl NoteVerifier {
    /// Parses a verifier key string `<name>+<hex id>+<base64(0x01 ‖ public key)>`, checking
    /// that the id matches the key.
    pub fn parse(vkey: &str) -> Result<Self, NoteError> {
        let mut parts = vkey.trim().splitn(3, '+');
        let (Some(name), Some(id_hex), Some(material)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(NoteError::BadKey(
                "expected <name>+<hex key id>+<base64 key>",
            ));
        };
        check_name(name)?;
        let material = STANDARD
            .decode(material)
            .map_err(|_| NoteError::BadKey("key is not base64"))?;
        let [ALG_ED25519, key @ ..] = material.as_slice() else {
            return Err(NoteError::BadKey(
                "only Ed25519 keys (type 0x01) are supported",
            ));
        };
        let public_key: [u8; 32] = key
            .try_into()
            .map_err(|_| NoteError::BadKey("an Ed25519 key is 32 bytes"))?;
        let id = key_id(name, &public_key);
        if !id_hex.eq_ignore_ascii_case(&hex(&id)) {
            return Err(NoteError::BadKey("key id does not match the key"));
        }
        Ok(NoteVerifier {
            name: name.to_owned(),
            id,
            public_key,
        })
    }

    /// Verifies `note` and returns its text. At least one signature line must be by this key
    /// and verify; signatures by other keys are ignored.
    pub fn open<'a>(&self, note: &'a str) -> Result<&'a str, NoteError> {
        let split = note
            .rfind("\n\n")
            .ok_or(NoteError::Malformed("no blank line before the signatures"))?;
        let (text, sigs) = (&note[..=split], &note[split + 2..]);
        check_text(text)?;
        if sigs.is_empty() || !sigs.ends_with('\n') {
            return Err(NoteError::Malformed(
                "signature lines must end with a newline",
            ));
        }
        if note.contains('\r') {
            return Err(NoteError::Malformed(
                "carriage returns are not allowed in a note",
            ));
        }
        // Every signature line must be well-formed, whatever key made it, so the verdict never
        // depends on the order of the lines; signatures by other keys are then ignored.
        let mut parsed = Vec::new();
        for line in sigs.lines() {
            let rest = line
                .strip_prefix(SIG_PREFIX)
                .ok_or(NoteError::Malformed("signature line must start with '— '"))?;
            let (name, b64) = rest.split_once(' ').ok_or(NoteError::Malformed(
                "signature line needs a name and a signature",
            ))?;
            let blob = STANDARD
                .decode(b64)
                .map_err(|_| NoteError::Malformed("signature is not base64"))?;
            if blob.len() < 5 {
                return Err(NoteError::Malformed("signature is too short"));
            }
            parsed.push((name, blob));
        }
        let key = UnparsedPublicKey::new(&ED25519, &self.public_key);
        let ours = parsed.iter().any(|(name, blob)| {
            *name == self.name
                && blob.len() == 4 + 64
                && blob[..4] == self.id
                && key.verify(text.as_bytes(), &blob[4..]).is_ok()
        });
        if ours {
            return Ok(text);
        }
        Err(NoteError::Unverified(self.name.clone()))
    }

    /// Verifies a signed checkpoint and parses it; its origin must be `origin`.
    pub fn open_checkpoint(&self, note: &str, origin: &str) -> Result<Checkpoint, NoteError> {
        let checkpoint = Checkpoint::parse(self.open(note)?)?;
        if checkpoint.origin != origin {
            return Err(NoteError::Malformed(
                "checkpoint is for another log (origin differs)",
            ));
        }
        Ok(checkpoint)
    }
}
