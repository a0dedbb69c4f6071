//! Delivery of alerts to subscribers: the outbox table is the truth; wake-ups are hints.
//!
//! After each commit the committer wakes the subscribers of the organisations that got new
//! alerts. A woken subscription reads its organisation's unacknowledged alerts past what it
//! has sent. Idle subscriptions also re-read now and then, so a missed wake-up delays an alert
//! but never loses it.

use std::collections::HashMap;
use std::sync::Mutex;

use silta_core::OrgId;
use tokio::sync::watch;

/// Wakes subscriptions per organisation.
#[derive(Debug, Default)]
pub struct Notifier {
    orgs: Mutex<HashMap<OrgId, watch::Sender<u64>>>,
}

impl Notifier {
    /// A receiver that changes whenever `org` gets new alerts.
    pub fn subscribe(&self, org: &OrgId) -> watch::Receiver<u64> {
        self.lock()
            .entry(org.clone())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// Tells `org`'s subscriptions that alerts up to `seq` exist.
    pub fn notify(&self, org: &OrgId, seq: u64) {
        if let Some(tx) = self.lock().get(org) {
            tx.send_replace(seq);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<OrgId, watch::Sender<u64>>> {
        // The map stays consistent even if a holder panicked: entries are whole senders.
        self.orgs.lock().unwrap_or_else(|e| e.into_inner())
    }
}
