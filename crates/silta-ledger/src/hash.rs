//! RFC 6962 hashing: SHA-256 with domain separation between leaves (0x00) and nodes (0x01),
//! so that a leaf can never be passed off as an interior node.

use ring::digest::{Context, SHA256, digest};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

fn to_hash(d: ring::digest::Digest) -> Hash {
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The root of the empty tree: SHA-256 of the empty string.
pub fn empty_root() -> Hash {
    to_hash(digest(&SHA256, b""))
}

/// `SHA-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut c = Context::new(&SHA256);
    c.update(&[0x00]);
    c.update(data);
    to_hash(c.finish())
}

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut c = Context::new(&SHA256);
    c.update(&[0x01]);
    c.update(left);
    c.update(right);
    to_hash(c.finish())
}
