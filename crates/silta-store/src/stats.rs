//! Programme statistics as the store keeps them: counters updated in the transaction of the
//! event they count (see `silta_core::stats`).
//!
//! The counters that follow from the ledger alone are derived here, from the very ledger entry
//! an audit append writes ([`count_entry`]); `silta stats rebuild` runs the same function over
//! every stored entry, so a rebuild and the live counters agree by construction. The others
//! count values the ledger never holds and are counted where the store sees them (an
//! acknowledgement, a consent's validity) or by the committer ([`crate::WriteTx::count`]).

use std::collections::HashMap;

use silta_core::stats::{Cell, CellKey, Measure, Month, ReportFate};
use silta_ledger::entry::Entry;
use time::OffsetDateTime;

use crate::{Result, StoreError};

/// The actions whose entries are reports from a landlord.
const REPORT_ACTIONS: [&str; 3] = [
    "Landlord.ReportRentArrears",
    "Landlord.ReportEvictionStage",
    "Landlord.ReportDisturbance",
];

/// A transaction's counter increments, summed in memory and written once at commit: a batch
/// of a thousand reports touches a handful of cells, not a thousand rows.
#[derive(Debug, Default)]
pub(crate) struct Tally(HashMap<CellKey, i64>);

impl Tally {
    pub(crate) fn add(&mut self, key: CellKey, n: i64) {
        *self.0.entry(key).or_insert(0) += n;
    }

    /// The increments, in key order (a stable order for the upserts), zeros left out.
    pub(crate) fn drain(&mut self) -> Vec<Cell> {
        let mut cells: Vec<Cell> = self
            .0
            .drain()
            .filter(|(_, n)| *n != 0)
            .map(|(key, n)| Cell { key, n })
            .collect();
        cells.sort_by(|a, b| a.key.cmp(&b.key));
        cells
    }
}

fn key(
    month: Month,
    measure: Measure,
    flow: &str,
    landlord: &str,
    recipient: &str,
    category: &str,
) -> CellKey {
    CellKey {
        month,
        measure,
        flow: flow.to_owned(),
        landlord: landlord.to_owned(),
        recipient: recipient.to_owned(),
        category: category.to_owned(),
    }
}

/// Counts what a ledger entry says: a report and its fate, the alerts and statutory notices it
/// led to, a support notice, a consent recorded or withdrawn. Entries of other actions count
/// nothing. Used for the live counters and for the rebuild alike.
pub fn count_entry(e: &Entry, mut add: impl FnMut(CellKey, i64)) {
    let Ok(at) = OffsetDateTime::from_unix_timestamp_nanos(i128::from(e.time_ms) * 1_000_000)
    else {
        return;
    };
    let month = Month::of(at);
    let flow = e.flow_id.as_deref().unwrap_or("");
    let allowed = e.outcome == "allow";
    let action = e.action.as_str();
    if REPORT_ACTIONS.contains(&action) {
        let landlord = e.actor_org.as_str();
        let fate = match (allowed, e.reason.as_str()) {
            (true, _) => ReportFate::Forwarded,
            (false, "not-disclosed") => ReportFate::NotForwarded,
            (false, reason) => ReportFate::of_refusal(reason, &e.policy_ids),
        };
        add(
            key(month, Measure::Reports, flow, landlord, "", fate.as_str()),
            1,
        );
        if !allowed {
            for policy in &e.policy_ids {
                add(
                    key(month, Measure::ReportPolicies, flow, landlord, "", policy),
                    1,
                );
            }
        }
        // Alerts and statutory notices are counted apart, so that no count appears in two
        // tables with different cells hidden.
        let measure = if e.reason == "disclosed-statutory" {
            Measure::StatutoryNotices
        } else {
            Measure::AlertsSent
        };
        for recipient in &e.recipients {
            add(key(month, measure, flow, landlord, recipient, ""), 1);
        }
        return;
    }
    match (action, allowed) {
        ("SocialServices.SendSupportNotice", _) => {
            let fate = if allowed {
                ReportFate::Forwarded
            } else {
                ReportFate::of_refusal(&e.reason, &e.policy_ids)
            };
            let landlord = e.recipients.first().map_or("", String::as_str);
            add(
                key(
                    month,
                    Measure::Notices,
                    flow,
                    landlord,
                    &e.actor_org,
                    fate.as_str(),
                ),
                1,
            );
        }
        ("SocialServices.EnrolClient" | "SocialServices.RenewConsent", true) => add(
            key(month, Measure::ConsentsRecorded, "", "", &e.actor_org, ""),
            1,
        ),
        ("SocialServices.WithdrawConsent", true) => add(
            key(month, Measure::ConsentsWithdrawn, "", "", &e.actor_org, ""),
            1,
        ),
        _ => {}
    }
}

/// The counts of a consent's standing (not ledger-derived: the ledger holds no validity).
/// A new consent will expire in the month its validity ends.
pub(crate) fn consent_recorded(tally: &mut Tally, recipient: &str, valid_until: OffsetDateTime) {
    tally.add(
        key(
            Month::of(valid_until),
            Measure::ConsentsExpiring,
            "",
            "",
            recipient,
            "",
        ),
        1,
    );
}

/// A consent that ends at `now` (withdrawn or superseded): if its validity had not run out, it
/// ended early and will not expire.
pub(crate) fn consent_ended(
    tally: &mut Tally,
    recipient: &str,
    valid_until: OffsetDateTime,
    now: OffsetDateTime,
) {
    if valid_until <= now {
        return;
    }
    tally.add(
        key(
            Month::of(valid_until),
            Measure::ConsentsExpiring,
            "",
            "",
            recipient,
            "",
        ),
        -1,
    );
    tally.add(
        key(
            Month::of(now),
            Measure::ConsentsEndedEarly,
            "",
            "",
            recipient,
            "",
        ),
        1,
    );
}

/// An alert acknowledged at `now`, created at `created`: the delay from the report (the alert
/// is written in the report's own transaction) to the acknowledgement.
pub(crate) fn alert_acked(
    tally: &mut Tally,
    flow: &str,
    landlord: &str,
    recipient: &str,
    created: OffsetDateTime,
    now: OffsetDateTime,
) {
    tally.add(
        key(
            Month::of(now),
            Measure::AckDelay,
            flow,
            landlord,
            recipient,
            silta_core::stats::delay_bucket(now - created),
        ),
        1,
    );
}

/// A stored cell from its columns, checked.
pub(crate) fn stored_cell(
    month: &str,
    measure: &str,
    flow: String,
    landlord: String,
    recipient: String,
    category: String,
    n: i64,
) -> Result<Cell> {
    let month = month
        .parse()
        .map_err(|_| StoreError::Corrupt("stat_cells.month".into()))?;
    let measure = Measure::parse(measure).ok_or_else(|| {
        StoreError::Corrupt("stat_cells.measure is one this release does not know".into())
    })?;
    Ok(Cell {
        key: CellKey {
            month,
            measure,
            flow,
            landlord,
            recipient,
            category,
        },
        n,
    })
}

/// The measures a rebuild replaces, as stored names.
pub(crate) fn ledger_measures() -> Vec<&'static str> {
    Measure::ALL
        .iter()
        .filter(|m| m.from_ledger())
        .map(|m| m.as_str())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(action: &str, outcome: &str, reason: &str, recipients: &[&str]) -> Entry {
        Entry {
            // 2026-11-15 12:00 UTC
            time_ms: 1_794_744_000_000,
            actor_org: "landlord-a".into(),
            action: action.into(),
            flow_id: Some("rent-arrears".into()),
            outcome: outcome.into(),
            reason: reason.into(),
            policy_ids: vec!["consent-absent".into()],
            recipients: recipients.iter().map(|s| (*s).to_owned()).collect(),
            ..Entry::default()
        }
    }

    fn counted(e: &Entry) -> Vec<(String, String, String, i64)> {
        let mut tally = Tally::default();
        count_entry(e, |k, n| tally.add(k, n));
        tally
            .drain()
            .into_iter()
            .map(|c| {
                assert_eq!(c.key.month.to_string(), "2026-11");
                (
                    c.key.measure.as_str().to_owned(),
                    c.key.recipient,
                    c.key.category,
                    c.n,
                )
            })
            .collect()
    }

    #[test]
    fn a_report_counts_its_fate_and_each_alert() {
        let sent = counted(&entry(
            "Landlord.ReportRentArrears",
            "allow",
            "disclosed-statutory",
            &["social-a", "social-b"],
        ));
        assert_eq!(
            sent,
            [
                ("reports", "", "forwarded", 1),
                ("statutory_notices", "social-a", "", 1),
                ("statutory_notices", "social-b", "", 1),
            ]
            .map(|(m, r, c, n)| (m.to_owned(), r.to_owned(), c.to_owned(), n))
        );
        let kept = counted(&entry(
            "Landlord.ReportRentArrears",
            "deny",
            "not-disclosed",
            &[],
        ));
        assert_eq!(
            kept,
            [
                ("reports", "", "not_forwarded", 1),
                ("report_policies", "", "consent-absent", 1),
            ]
            .map(|(m, r, c, n)| (m.to_owned(), r.to_owned(), c.to_owned(), n))
        );
        let refused = counted(&entry(
            "Landlord.ReportEvictionStage",
            "deny",
            "undeclared-flow",
            &[],
        ));
        assert_eq!(refused[0].2, "refused_purpose");
        assert!(counted(&entry("Audit.Query", "allow", "", &[])).is_empty());
    }
}
