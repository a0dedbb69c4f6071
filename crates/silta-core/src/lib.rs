//! silta's pure domain: personal identity codes, pseudonyms, consent, declared flows,
//! minimisation and the disclosure decision.
//!
//! **Architecture invariant:** nothing here does I/O or depends on an async runtime, gRPC or a
//! database; every function is a plain, testable transformation of data. An identity code is
//! a [`hetu::Hetu`] from the moment it is parsed, and only [`pseudonym`] sees it in clear.

#![forbid(unsafe_code)]

pub mod audit;
pub mod consent;
pub mod disclosure;
pub mod hetu;
pub mod org;
pub mod policy;
pub mod pseudonym;
pub mod report;
pub mod sealed;
pub mod secret;
pub mod stats;
pub mod support;
pub mod validate;

pub use hetu::{Hetu, HetuError, HetuRules};
pub use org::{Caller, OrgId, Role};
pub use pseudonym::{Domain, Pseudonym, PseudonymSet, Pseudonymiser};
pub use secret::{Keyring, MasterSecret};
