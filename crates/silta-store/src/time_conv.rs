//! Times are stored as integer Unix milliseconds (UTC), the same on every backend.

use time::OffsetDateTime;

use crate::StoreError;

/// A time as stored: Unix milliseconds, UTC.
pub fn to_ms(t: OffsetDateTime) -> i64 {
    // Milliseconds since 1970 fit in i64 for ±292 million years; saturate beyond.
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

pub(crate) fn from_ms(ms: i64) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map_err(|e| StoreError::Corrupt(format!("time out of range: {e}")))
}

pub(crate) fn seq_to_i64(seq: u64) -> i64 {
    // Sequences come from the database as non-negative i64; larger inputs match nothing.
    i64::try_from(seq).unwrap_or(i64::MAX)
}

pub(crate) fn seq_from_i64(seq: i64) -> Result<u64, StoreError> {
    u64::try_from(seq).map_err(|_| StoreError::Corrupt("negative sequence".into()))
}
