//! End-to-end tests: the real gateway, real gRPC over real mTLS on an ephemeral loopback port,
//! a real SQLite file. One test binary, so it links once.

mod actor;
mod consents;
mod console;
mod delivery;
mod flows;
mod identity;
mod keys;
mod ledger;
mod limits;
mod privacy;
mod reports;
mod retention;
mod sealed;
mod statistics;
