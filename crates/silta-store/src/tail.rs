//! The newest outbox messages of each recipient, kept in memory by the SQLite store, so that a
//! subscriber that keeps up is answered without a query.
//!
//! Reading every committed alert back from the database cost the gateway about a tenth of its
//! CPU per report (a query through sqlx's worker thread per wake-up, every column decoded
//! again; docs/performance.md). The database stays the truth: a subscriber that is behind
//! what the tail holds, or a tail that was cleared, reads it as before.
//!
//! The invariant, per recipient: every alert with a sequence number from `covered_from` on
//! that is in the database, not acknowledged and not purged, is in `alerts`. `alerts` may
//! still hold a message acknowledged a moment ago (delivery is at least once), never one
//! that was purged. Hence the order of updates, all made while the write lock is held:
//!
//! - committed alerts are added, and acknowledgements applied, after their commit (a
//!   rolled-back transaction changes nothing), in the order the transaction made them: an
//!   acknowledgement covers only the messages that existed when it ran, as in SQL;
//! - a purge (a withdrawal, retention) that deleted anything clears the whole tail before its
//!   commit (a withdrawal also purges support notices sent to landlords), and drops what its
//!   own transaction was about to add: until the commit, readers of the database still see
//!   the purged rows too, and a purge that then rolls back only costs queries.
//!
//! It relies on this process being the database's only writer, which the serve lock on
//! `<db>.lock` ensures for SQLite. PostgreSQL, with several nodes writing, has no tail.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use crate::StoredAlert;

/// How many messages are kept per recipient. A subscriber that keeps up reads the newest few;
/// one that is further behind reads the database.
const KEEP: usize = 4096;

/// The newest committed messages of each recipient.
#[derive(Debug, Default)]
pub(crate) struct Tail {
    orgs: Mutex<HashMap<String, OrgTail>>,
}

#[derive(Debug)]
struct OrgTail {
    /// Every pending message from this sequence number on is in `alerts`.
    covered_from: u64,
    /// The number the next committed message will have, if this tail knows it; `None` after
    /// a purge cleared it, until the next message starts it again.
    next: Option<u64>,
    /// In sequence order; acknowledged ones are taken out. Shared, so that a reader copies
    /// them out after letting go of the lock the committer also takes.
    alerts: VecDeque<Arc<StoredAlert>>,
}

impl OrgTail {
    fn from(next: u64) -> Self {
        OrgTail {
            covered_from: next,
            next: Some(next),
            alerts: VecDeque::new(),
        }
    }
}

/// What a transaction did to the outbox, in order, applied to the tail after its commit.
#[derive(Debug, Default)]
pub(crate) struct TailChanges(Vec<Change>);

#[derive(Debug)]
enum Change {
    /// A new message for a recipient.
    Added(String, StoredAlert),
    /// A recipient acknowledged everything up to this number, and these numbers (sorted).
    Acked(String, u64, Vec<u64>),
}

impl TailChanges {
    /// A message the transaction stored.
    pub(crate) fn added(&mut self, org: &str, alert: StoredAlert) {
        self.0.push(Change::Added(org.to_owned(), alert));
    }

    /// An acknowledgement the transaction stored.
    pub(crate) fn acked(&mut self, org: &str, up_to: u64, seqs: &[u64]) {
        let mut seqs = seqs.to_vec();
        seqs.sort_unstable();
        self.0.push(Change::Acked(org.to_owned(), up_to, seqs));
    }

    /// The transaction purged messages: what it stored before is not to be added (it may be
    /// among them); acknowledgements still may be.
    pub(crate) fn purged(&mut self) {
        self.0.retain(|c| matches!(c, Change::Acked(..)));
    }
}

impl Tail {
    /// A tail that knows, for each recipient, the last sequence number already committed
    /// (`alert_sequences`): everything after it will pass through `apply`. A recipient not
    /// named has had no message, so its tail covers everything from 1.
    pub(crate) fn new(last_committed: impl IntoIterator<Item = (String, u64)>) -> Self {
        let orgs = last_committed
            .into_iter()
            .map(|(org, last)| (org, OrgTail::from(last.saturating_add(1))))
            .collect();
        Tail {
            orgs: Mutex::new(orgs),
        }
    }

    /// The recipient's pending messages after `after`, at most `limit`, if the tail covers
    /// them all; `None` means: read the database.
    pub(crate) fn pending(&self, org: &str, after: u64, limit: usize) -> Option<Vec<StoredAlert>> {
        let page: Vec<Arc<StoredAlert>> = {
            let orgs = self.lock();
            let Some(tail) = orgs.get(org) else {
                // No message before this store opened, nor since.
                return Some(Vec::new());
            };
            if tail.next.is_none() || after.saturating_add(1) < tail.covered_from {
                return None;
            }
            let start = tail.alerts.partition_point(|a| a.seq <= after);
            tail.alerts.range(start..).take(limit).cloned().collect()
        };
        Some(page.iter().map(|a| StoredAlert::clone(a)).collect())
    }

    /// Applies a committed transaction's changes.
    pub(crate) fn apply(&self, changes: TailChanges) {
        if changes.0.is_empty() {
            return;
        }
        let mut orgs = self.lock();
        for change in changes.0 {
            match change {
                Change::Added(org, alert) => {
                    let tail = orgs.entry(org).or_insert_with(|| OrgTail::from(1));
                    if tail.next != Some(alert.seq) {
                        // After a purge cleared it (or, were this process not the only
                        // writer, after numbers it never saw): it covers from here on.
                        tail.alerts.clear();
                        tail.covered_from = alert.seq;
                    }
                    tail.next = Some(alert.seq.saturating_add(1));
                    tail.alerts.push_back(Arc::new(alert));
                    if tail.alerts.len() > KEEP
                        && let Some(old) = tail.alerts.pop_front()
                    {
                        tail.covered_from = old.seq.saturating_add(1);
                    }
                }
                Change::Acked(org, up_to, seqs) => {
                    if let Some(tail) = orgs.get_mut(&org) {
                        tail.alerts
                            .retain(|a| a.seq > up_to && seqs.binary_search(&a.seq).is_err());
                    }
                }
            }
        }
    }

    /// Forgets every recipient's messages, before a purge across recipients.
    pub(crate) fn clear_all(&self) {
        for tail in self.lock().values_mut() {
            tail.next = None;
            tail.alerts.clear();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, OrgTail>> {
        // Every update leaves the map consistent before it could panic.
        self.orgs.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(seq: u64) -> StoredAlert {
        StoredAlert {
            seq,
            alert_id: format!("a{seq}"),
            flow_id: "rent-arrears".into(),
            purpose: "eviction-prevention".into(),
            legal_basis: "gdpr-6-1-a-consent".into(),
            consent_id: "c".into(),
            subject_pseudonym: "p".into(),
            case_ref: "k".into(),
            payload: "{}".into(),
        }
    }

    fn add(tail: &Tail, org: &str, seqs: impl IntoIterator<Item = u64>) {
        let mut changes = TailChanges::default();
        for s in seqs {
            changes.added(org, alert(s));
        }
        tail.apply(changes);
    }

    fn seqs(page: Option<Vec<StoredAlert>>) -> Option<Vec<u64>> {
        page.map(|p| p.iter().map(|a| a.seq).collect())
    }

    #[test]
    fn covers_only_what_passed_through_it() {
        let tail = Tail::new([("social".to_owned(), 10)]);
        // Messages up to 10 were committed before: only the database knows them.
        assert_eq!(seqs(tail.pending("social", 5, 100)), None);
        assert_eq!(seqs(tail.pending("social", 10, 100)), Some(vec![]));
        // A recipient that never had a message has nothing pending.
        assert_eq!(seqs(tail.pending("other", 0, 100)), Some(vec![]));
        add(&tail, "social", [11, 12, 13]);
        assert_eq!(
            seqs(tail.pending("social", 10, 100)),
            Some(vec![11, 12, 13])
        );
        assert_eq!(seqs(tail.pending("social", 11, 1)), Some(vec![12]));
        assert_eq!(seqs(tail.pending("social", 9, 100)), None);
        add(&tail, "other", [1]);
        assert_eq!(seqs(tail.pending("other", 0, 100)), Some(vec![1]));
    }

    #[test]
    fn acknowledged_messages_leave() {
        let tail = Tail::new([]);
        add(&tail, "social", 1..=5);
        let mut changes = TailChanges::default();
        changes.acked("social", 2, &[4]);
        tail.apply(changes);
        assert_eq!(seqs(tail.pending("social", 0, 100)), Some(vec![3, 5]));
        // The next number still follows on.
        add(&tail, "social", [6]);
        assert_eq!(seqs(tail.pending("social", 0, 100)), Some(vec![3, 5, 6]));
    }

    #[test]
    fn an_acknowledgement_covers_only_what_existed_when_it_ran() {
        let tail = Tail::new([]);
        add(&tail, "social", 1..=2);
        // A client acknowledging ahead of what it was sent, then a new message, in one
        // transaction: as in SQL, the new one stays pending.
        let mut changes = TailChanges::default();
        changes.acked("social", 100, &[3]);
        changes.added("social", alert(3));
        tail.apply(changes);
        assert_eq!(seqs(tail.pending("social", 0, 100)), Some(vec![3]));
    }

    #[test]
    fn a_purge_drops_what_its_transaction_was_about_to_add() {
        let tail = Tail::new([]);
        let mut changes = TailChanges::default();
        changes.added("social", alert(1));
        changes.acked("social", 0, &[]);
        tail.clear_all();
        changes.purged();
        changes.added("social", alert(2));
        tail.apply(changes);
        // Number 1 may have been purged: the tail does not claim it.
        assert_eq!(seqs(tail.pending("social", 1, 100)), Some(vec![2]));
        assert_eq!(seqs(tail.pending("social", 0, 100)), None);
    }

    #[test]
    fn a_purge_sends_readers_to_the_database_until_the_next_message() {
        let tail = Tail::new([]);
        add(&tail, "social", 1..=3);
        tail.clear_all();
        assert_eq!(seqs(tail.pending("social", 0, 100)), None);
        assert_eq!(seqs(tail.pending("social", 3, 100)), None);
        add(&tail, "social", [4]);
        assert_eq!(seqs(tail.pending("social", 3, 100)), Some(vec![4]));
        // What was pending before the purge is the database's to say.
        assert_eq!(seqs(tail.pending("social", 2, 100)), None);
    }

    #[test]
    fn numbers_it_did_not_see_are_not_claimed() {
        let tail = Tail::new([]);
        add(&tail, "social", [1, 2]);
        add(&tail, "social", [5]);
        assert_eq!(seqs(tail.pending("social", 4, 100)), Some(vec![5]));
        assert_eq!(seqs(tail.pending("social", 2, 100)), None);
    }

    #[test]
    fn keeps_the_newest() {
        let tail = Tail::new([]);
        let last = u64::try_from(KEEP).expect("small") + 10;
        add(&tail, "social", 1..=last);
        assert_eq!(seqs(tail.pending("social", 0, 100)), None);
        assert_eq!(
            seqs(tail.pending("social", last - 1, 100)),
            Some(vec![last])
        );
        let oldest = last - u64::try_from(KEEP).expect("small");
        assert_eq!(
            seqs(tail.pending("social", oldest, 1)),
            Some(vec![oldest + 1])
        );
        assert_eq!(seqs(tail.pending("social", oldest - 1, 1)), None);
    }
}
