//! What a write transaction read ahead for its batch ([`crate::WriteTx::prefetch`]), kept
//! true to the transaction's own writes. The PostgreSQL store uses it, where a lookup is a
//! round trip; SQLite, in process with a statement cache, looks each one up instead.

use std::collections::{HashMap, HashSet};

use silta_core::consent::ConsentRecord;

use crate::{Lookups, StoredReport};

type Pair = (String, String);

/// Reports and consents read ahead for a batch.
#[derive(Default)]
pub(crate) struct ReadAhead {
    /// (landlord, idempotency key) pairs read or stored; those that exist are in `reports`.
    report_keys: HashSet<Pair>,
    reports: HashMap<Pair, StoredReport>,
    /// (subject key, purpose) → every consent stored for it; cleared when consents change.
    consents: HashMap<Pair, Vec<ConsentRecord>>,
}

impl ReadAhead {
    /// The idempotency keys of `lookups` not read yet, by landlord; from now on they count as
    /// read, so the caller must report each one it finds ([`ReadAhead::found_report`]).
    pub(crate) fn unread_reports<'a>(
        &mut self,
        lookups: &Lookups<'a>,
    ) -> HashMap<&'a str, Vec<&'a str>> {
        let mut by_landlord: HashMap<&str, Vec<&str>> = HashMap::new();
        for &(landlord, key) in &lookups.reports {
            if self
                .report_keys
                .insert((landlord.as_str().to_owned(), key.to_owned()))
            {
                by_landlord.entry(landlord.as_str()).or_default().push(key);
            }
        }
        by_landlord
    }

    /// The residents of `lookups` not read yet, by purpose; from now on they count as read,
    /// with no consent until [`ReadAhead::found_consent`] adds one.
    pub(crate) fn unread_consents<'a>(
        &mut self,
        lookups: &Lookups<'a>,
    ) -> HashMap<&'a str, Vec<&'a str>> {
        let mut by_purpose: HashMap<&str, Vec<&str>> = HashMap::new();
        for &(subject, purpose) in &lookups.consents {
            let key = (subject.as_str().to_owned(), purpose.to_owned());
            if let std::collections::hash_map::Entry::Vacant(slot) = self.consents.entry(key) {
                slot.insert(Vec::new());
                by_purpose
                    .entry(purpose)
                    .or_default()
                    .push(subject.as_str());
            }
        }
        by_purpose
    }

    /// A report found by a read-ahead query, or stored by this transaction: findable from now
    /// on without a read.
    pub(crate) fn found_report(&mut self, landlord: &str, key: String, report: StoredReport) {
        let pair = (landlord.to_owned(), key);
        self.report_keys.insert(pair.clone());
        self.reports.insert(pair, report);
    }

    /// A consent found by a read-ahead query.
    pub(crate) fn found_consent(&mut self, subject: String, purpose: &str, consent: ConsentRecord) {
        self.consents
            .entry((subject, purpose.to_owned()))
            .or_default()
            .push(consent);
    }

    /// `Some` if the key was read ahead: the report, or `None` if there is none.
    pub(crate) fn report(&self, landlord: &str, key: &str) -> Option<Option<StoredReport>> {
        let pair = (landlord.to_owned(), key.to_owned());
        self.report_keys
            .contains(&pair)
            .then(|| self.reports.get(&pair).cloned())
    }

    /// `Some` if the resident's consents for `purpose` were read ahead.
    pub(crate) fn consents(&self, subject: &str, purpose: &str) -> Option<Vec<ConsentRecord>> {
        self.consents
            .get(&(subject.to_owned(), purpose.to_owned()))
            .cloned()
    }

    /// Consents changed in this transaction: read them again when asked.
    pub(crate) fn forget_consents(&mut self) {
        self.consents.clear();
    }
}
