//! silta's tamper-evident log, as pure maths: RFC 6962 (RFC 9162 §2.1) Merkle tree hashing,
//! inclusion and consistency proofs, and checkpoints in the C2SP `tlog-checkpoint` /
//! `signed-note` text formats, signed with Ed25519.
//!
//! **Architecture invariant:** no I/O, no async, no database. Storage supplies hashes through
//! [`tree::NodeSource`]; everything here is deterministic and testable without a runtime.

#![forbid(unsafe_code)]

pub mod checkpoint;
pub mod entry;
pub mod hash;
pub mod proof;
pub mod tree;
pub mod verify;

pub use hash::{Hash, empty_root, leaf_hash, node_hash};
