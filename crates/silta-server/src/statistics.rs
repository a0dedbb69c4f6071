//! The programme's statistics, as released: the month's counters in fixed tables, with
//! disclosure control applied (docs/statistics.md).
//!
//! A table's rows are every flow and organisation seen in any month up to the one released,
//! and its columns fixed or likewise cumulative: a closed month's release has the same shape
//! whenever it is made, so two releases of it are identical and cannot be subtracted.

use std::collections::{BTreeMap, BTreeSet};

use silta_core::disclosure::{Released, Shown, Table, release};
use silta_core::report::EvictionStage;
use silta_core::stats::{Cell, DELAY_BUCKETS, MONTHS_BUCKETS, Measure, Month, ReportFate};
use silta_core::support::SupportOutcome;
use silta_ledger::entry::Entry;
use silta_store::{AuditFilter, Store, StoreError};

use crate::stats_render::{Chart, Panel, Series};

/// A month's statistics as released.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonthRelease {
    /// The month.
    pub month: Month,
    /// The disclosure-control threshold applied.
    pub threshold: u64,
    /// The tables, always the same ones in the same order.
    pub tables: Vec<Released>,
    /// Median and 90th percentile of the delay tables' rows, where they may be published.
    pub quantiles: Vec<DelayQuantiles>,
}

/// The median and 90th percentile of one row of a delay table, as the delay bucket they fall
/// in: published only where the row's count is at least the threshold and itself published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DelayQuantiles {
    /// The delay table's id.
    pub table: String,
    /// The row.
    pub row: String,
    /// The bucket holding the median, e.g. `4h_1d`; `None`: suppressed.
    pub median: Option<String>,
    /// The bucket holding the 90th percentile; `None`: suppressed.
    pub p90: Option<String>,
}

/// Joins the parts of a row label; an empty part (a report refused before its flow was known)
/// is shown as a dash.
fn label(parts: &[&str]) -> String {
    parts
        .iter()
        .map(|p| if p.is_empty() { "—" } else { p })
        .collect::<Vec<_>>()
        .join(" · ")
}

/// One table's definition: which cells it counts, how a cell's row and column are named.
struct Shape {
    id: &'static str,
    title: &'static str,
    measure: Measure,
    row: fn(&Cell) -> String,
    /// Fixed columns; `None`: every category seen up to the month (or the recipient, when
    /// `by_recipient`).
    columns: Option<Vec<String>>,
    by_recipient: bool,
}

fn codes(items: &[&str]) -> Option<Vec<String>> {
    Some(items.iter().map(|s| (*s).to_owned()).collect())
}

fn shapes() -> Vec<Shape> {
    let fates: Vec<&str> = ReportFate::ALL.iter().map(|f| f.as_str()).collect();
    let delays: Vec<&str> = DELAY_BUCKETS.iter().map(|(l, _)| *l).collect();
    let stages: Vec<&str> = EvictionStage::ALL.iter().map(|s| s.as_str()).collect();
    let outcomes: Vec<&str> = SupportOutcome::ALL.iter().map(|o| o.as_str()).collect();
    let flow_landlord: fn(&Cell) -> String = |c| label(&[&c.key.flow, &c.key.landlord]);
    let flow_recipient: fn(&Cell) -> String = |c| label(&[&c.key.flow, &c.key.recipient]);
    let recipient_landlord: fn(&Cell) -> String = |c| label(&[&c.key.recipient, &c.key.landlord]);
    let recipient: fn(&Cell) -> String = |c| label(&[&c.key.recipient]);
    let flow: fn(&Cell) -> String = |c| label(&[&c.key.flow]);
    vec![
        Shape {
            id: "reports",
            title: "Reports received, by what became of them (flow · landlord)",
            measure: Measure::Reports,
            row: flow_landlord,
            columns: codes(&fates),
            by_recipient: false,
        },
        Shape {
            id: "report_policies",
            title: "Reports refused or not forwarded, by each policy that decided (flow)",
            measure: Measure::ReportPolicies,
            row: flow,
            columns: None,
            by_recipient: false,
        },
        Shape {
            id: "alerts_sent",
            title: "Alerts delivered, by social-services organisation (flow · landlord)",
            measure: Measure::AlertsSent,
            row: flow_landlord,
            columns: None,
            by_recipient: true,
        },
        Shape {
            id: "statutory_notices",
            title: "Statutory notices delivered, by recipient (flow · landlord)",
            measure: Measure::StatutoryNotices,
            row: flow_landlord,
            columns: None,
            by_recipient: true,
        },
        Shape {
            id: "ack_delay",
            title: "Alerts acknowledged, by time from report to acknowledgement (flow · social services)",
            measure: Measure::AckDelay,
            row: flow_recipient,
            columns: codes(&delays),
            by_recipient: false,
        },
        Shape {
            id: "support_notices",
            title: "Support notices sent or refused (social services · landlord)",
            measure: Measure::Notices,
            row: recipient_landlord,
            columns: codes(&fates),
            by_recipient: false,
        },
        Shape {
            id: "notice_outcomes",
            title: "Support notices by outcome (social services · landlord)",
            measure: Measure::NoticeOutcomes,
            row: recipient_landlord,
            columns: codes(&outcomes),
            by_recipient: false,
        },
        Shape {
            id: "first_notice_delay",
            title: "Cases' first support notice, by time since the case's first alert (social services · landlord)",
            measure: Measure::FirstNoticeDelay,
            row: recipient_landlord,
            columns: codes(&delays),
            by_recipient: false,
        },
        Shape {
            id: "first_alert_months_overdue",
            title: "Cases' first alert, by months of rent overdue (flow · landlord)",
            measure: Measure::FirstAlertMonthsOverdue,
            row: flow_landlord,
            columns: codes(&MONTHS_BUCKETS),
            by_recipient: false,
        },
        Shape {
            id: "first_alert_stage",
            title: "Cases' first alert, by eviction stage (flow · landlord)",
            measure: Measure::FirstAlertStage,
            row: flow_landlord,
            columns: codes(&stages),
            by_recipient: false,
        },
        Shape {
            id: "consents",
            title: "Consents recorded and ended (social services)",
            measure: Measure::ConsentsRecorded,
            row: recipient,
            columns: None,
            by_recipient: false,
        },
    ]
}

/// The consent table's columns.
const CONSENT_COLUMNS: [&str; 4] = ["recorded", "withdrawn", "ended_early", "expired"];

/// A table of `rows` × `columns`, zero-filled.
fn empty(id: &str, title: &str, rows: &BTreeSet<String>, columns: Vec<String>) -> Table {
    Table {
        id: id.to_owned(),
        title: title.to_owned(),
        rows: rows.iter().cloned().collect(),
        columns: columns.clone(),
        cells: vec![vec![0; columns.len()]; rows.len()],
    }
}

fn add(table: &mut Table, row: &str, column: &str, n: i64) {
    let (Some(r), Some(c)) = (
        table.rows.iter().position(|x| x == row),
        table.columns.iter().position(|x| x == column),
    ) else {
        return;
    };
    let cell = &mut table.cells[r][c];
    // Counters only grow, but a consent's expiry is taken back when it ends early: a count
    // below zero would be a bug, shown as zero rather than wrapped.
    *cell = u64::try_from(i64::try_from(*cell).unwrap_or(i64::MAX).saturating_add(n)).unwrap_or(0);
}

/// The month's tables, before disclosure control. `cells` are every counter up to and
/// including `month`.
pub fn tables(cells: &[Cell], month: Month) -> Vec<Table> {
    let mut out = Vec::new();
    for shape in shapes() {
        if shape.id == "consents" {
            out.push(consent_table(cells, month, shape.title));
            out.push(active_consents(cells, month));
            continue;
        }
        let mine: Vec<&Cell> = cells
            .iter()
            .filter(|c| c.key.measure == shape.measure)
            .collect();
        let rows: BTreeSet<String> = mine.iter().map(|c| (shape.row)(c)).collect();
        let column_of = |c: &Cell| {
            if shape.by_recipient {
                c.key.recipient.clone()
            } else {
                c.key.category.clone()
            }
        };
        let columns = shape.columns.clone().unwrap_or_else(|| {
            mine.iter()
                .map(|c| column_of(c))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect()
        });
        let mut table = empty(shape.id, shape.title, &rows, columns);
        for c in mine.iter().filter(|c| c.key.month == month) {
            add(&mut table, &(shape.row)(c), &column_of(c), c.n);
        }
        out.push(table);
    }
    out
}

fn consent_table(cells: &[Cell], month: Month, title: &str) -> Table {
    let measures = [
        Measure::ConsentsRecorded,
        Measure::ConsentsWithdrawn,
        Measure::ConsentsEndedEarly,
        Measure::ConsentsExpiring,
    ];
    let rows: BTreeSet<String> = cells
        .iter()
        .filter(|c| measures.contains(&c.key.measure))
        .map(|c| c.key.recipient.clone())
        .collect();
    let mut table = empty(
        "consents",
        title,
        &rows,
        CONSENT_COLUMNS.iter().map(|s| (*s).to_owned()).collect(),
    );
    for c in cells.iter().filter(|c| c.key.month == month) {
        if let Some(i) = measures.iter().position(|m| *m == c.key.measure) {
            add(&mut table, &c.key.recipient, CONSENT_COLUMNS[i], c.n);
        }
    }
    table
}

/// Consents standing at the end of the month: every consent recorded up to it, less those
/// that ended early and those that expired, in this and every earlier month.
fn active_consents(cells: &[Cell], month: Month) -> Table {
    let mut standing: BTreeMap<String, i64> = BTreeMap::new();
    for c in cells.iter().filter(|c| c.key.month <= month) {
        let sign = match c.key.measure {
            Measure::ConsentsRecorded => 1,
            Measure::ConsentsEndedEarly | Measure::ConsentsExpiring => -1,
            _ => continue,
        };
        *standing.entry(c.key.recipient.clone()).or_insert(0) += sign * c.n;
    }
    let rows: BTreeSet<String> = standing.keys().cloned().collect();
    let mut table = empty(
        "consents_active",
        "Consents standing at the end of the month (social services)",
        &rows,
        vec!["active_at_month_end".to_owned()],
    );
    for (row, n) in standing {
        add(&mut table, &row, "active_at_month_end", n.max(0));
    }
    table
}

/// Consents standing at a month's end differ from the previous month's by the month's
/// recorded, ended-early and expired consents: a row is published only where the month's
/// consent row hides nothing, so that two months' standing figures never give away a hidden
/// count.
fn hide_active_where_consents_are_hidden(released: &mut [Released]) {
    let hidden: BTreeSet<String> = released
        .iter()
        .filter(|t| t.id == "consents")
        .flat_map(|t| {
            t.rows
                .iter()
                .zip(&t.cells)
                .filter(|(_, cells)| cells.iter().any(|c| c.is_suppressed()))
                .map(|(row, _)| row.clone())
        })
        .collect();
    let Some(active) = released.iter_mut().find(|t| t.id == "consents_active") else {
        return;
    };
    let mut any = false;
    for (i, row) in active.rows.iter().enumerate() {
        if hidden.contains(row) {
            active.cells[i].fill(Shown::Suppressed);
            active.row_totals[i] = Shown::Suppressed;
            any = true;
        }
    }
    if any {
        // The one column's total would give away a single hidden row; hide the totals too
        // (and with two or more hidden rows nothing is lost that the rows did not hide).
        active.column_totals.fill(Shown::Suppressed);
        active.total = Shown::Suppressed;
    }
}

/// The bucket holding quantile `num/den` of a histogram row.
fn quantile(counts: &[u64], (num, den): (u64, u64)) -> Option<&'static str> {
    let n: u64 = counts.iter().sum();
    if n == 0 {
        return None;
    }
    // The rank of the quantile, 1-based: ceil(num·n / den), in integers.
    let rank = num
        .saturating_mul(n)
        .saturating_add(den - 1)
        .checked_div(den)?
        .max(1);
    let mut seen = 0;
    for (count, (bucket, _)) in counts.iter().zip(DELAY_BUCKETS) {
        seen += count;
        if seen >= rank {
            return Some(bucket);
        }
    }
    None
}

/// The month's release: its tables with disclosure control applied, and the delay quantiles
/// that may be published.
pub fn release_month(cells: &[Cell], month: Month, threshold: u64) -> MonthRelease {
    let raw = tables(cells, month);
    let mut released: Vec<Released> = raw.iter().map(|t| release(t, threshold)).collect();
    hide_active_where_consents_are_hidden(&mut released);
    let mut quantiles = Vec::new();
    for (table, shown) in raw.iter().zip(&released) {
        if !matches!(table.id.as_str(), "ack_delay" | "first_notice_delay") {
            continue;
        }
        for (((row, counts), total), cells) in table
            .rows
            .iter()
            .zip(&table.cells)
            .zip(&shown.row_totals)
            .zip(&shown.cells)
        {
            // A quantile is read off every count of its row: only a row with nothing
            // suppressed gives one, so it narrows no hidden count.
            let publish = matches!(total, Shown::Value(n) if *n >= shown.threshold)
                && cells.iter().all(|c| !c.is_suppressed());
            quantiles.push(DelayQuantiles {
                table: table.id.clone(),
                row: row.clone(),
                median: publish
                    .then(|| quantile(counts, (1, 2)))
                    .flatten()
                    .map(str::to_owned),
                p90: publish
                    .then(|| quantile(counts, (9, 10)))
                    .flatten()
                    .map(str::to_owned),
            });
        }
    }
    MonthRelease {
        month,
        threshold: released.first().map_or(threshold, |t| t.threshold),
        tables: released,
        quantiles,
    }
}

/// Why statistics cannot be released.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    /// The month has not ended.
    #[error("{0} has not ended: only closed months are released")]
    NotClosed(Month),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Reads and releases a closed month.
pub async fn read_month(
    store: &dyn Store,
    month: Month,
    threshold: u64,
    now: time::OffsetDateTime,
) -> Result<MonthRelease, StatsError> {
    if !month.is_closed(now) {
        return Err(StatsError::NotClosed(month));
    }
    let cells = store.stat_cells(month).await?;
    Ok(release_month(&cells, month, threshold))
}

/// A chart of released months, oldest first: one panel per flow with its reports forwarded,
/// not forwarded and refused, and one of support outcomes. A value summed from several
/// released cells is shown only if none of them was suppressed.
pub fn chart(releases: &[MonthRelease]) -> Chart {
    let months: Vec<String> = releases.iter().map(|r| r.month.to_string()).collect();
    let threshold = releases.last().map_or(0, |r| r.threshold);
    let table = |r: &'_ MonthRelease, id: &str| r.tables.iter().find(|t| t.id == id).cloned();
    // Every flow seen in the last month's table (rows are cumulative).
    let flows: BTreeSet<String> = releases
        .last()
        .and_then(|r| table(r, "reports"))
        .map(|t| {
            t.rows
                .iter()
                .filter_map(|r| r.split(" · ").next().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let sum = |values: &mut dyn Iterator<Item = Shown>| -> Shown {
        let mut total = 0u64;
        for v in values {
            match v {
                Shown::Value(n) => total = total.saturating_add(n),
                Shown::Suppressed => return Shown::Suppressed,
            }
        }
        Shown::Value(total)
    };
    let mut panels = Vec::new();
    for flow in &flows {
        let groups: [(&str, &[&str]); 3] = [
            ("forwarded", &["forwarded"]),
            ("not forwarded", &["not_forwarded"]),
            (
                "refused",
                &[
                    "refused_validation",
                    "refused_purpose",
                    "refused_role",
                    "refused_policy",
                    "refused_other",
                ],
            ),
        ];
        let series = groups
            .iter()
            .map(|(name, columns)| Series {
                label: (*name).to_owned(),
                values: releases
                    .iter()
                    .map(|r| {
                        let Some(t) = table(r, "reports") else {
                            return Shown::Value(0);
                        };
                        let picked = t
                            .rows
                            .iter()
                            .zip(&t.cells)
                            .filter(|(row, _)| row.split(" · ").next() == Some(flow.as_str()))
                            .flat_map(|(_, cells)| {
                                t.columns
                                    .iter()
                                    .zip(cells)
                                    .filter(|(c, _)| columns.contains(&c.as_str()))
                                    .map(|(_, v)| *v)
                                    .collect::<Vec<_>>()
                            });
                        sum(&mut picked.into_iter())
                    })
                    .collect(),
            })
            .collect();
        panels.push(Panel {
            title: if flow == "—" {
                "Reports refused before their flow was known".to_owned()
            } else {
                format!("Reports on {flow}")
            },
            series,
        });
    }
    let outcomes = SupportOutcome::ALL
        .iter()
        .map(|o| Series {
            label: o.as_str().replace('_', " "),
            values: releases
                .iter()
                .map(|r| {
                    table(r, "notice_outcomes")
                        .and_then(|t| {
                            let i = t.columns.iter().position(|c| c == o.as_str())?;
                            t.column_totals.get(i).copied()
                        })
                        .unwrap_or(Shown::Value(0))
                })
                .collect(),
        })
        .collect();
    panels.push(Panel {
        title: "Support notices by outcome".to_owned(),
        series: outcomes,
    });
    Chart {
        title: format!(
            "silta programme statistics, {} to {}",
            months.first().map_or("", String::as_str),
            months.last().map_or("", String::as_str)
        ),
        months,
        threshold,
        panels,
    }
}

/// What a rebuild did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rebuilt {
    /// Ledger entries read.
    pub entries: u64,
    /// Counters written.
    pub cells: usize,
}

/// Recomputes every counter the ledger implies from the stored ledger and replaces the live
/// ones with them, under the write lock, so that no entry is appended meanwhile by any node.
/// Counters of values the ledger does not hold are kept.
pub async fn rebuild(store: &dyn Store) -> Result<Rebuilt, StoreError> {
    const PAGE: u32 = 10_000;
    let mut counts: BTreeMap<silta_core::stats::CellKey, i64> = BTreeMap::new();
    let mut read = 0u64;
    // Most of the ledger is read before the lock is taken, so the gateway keeps committing.
    loop {
        let page = store
            .ledger_entries(&AuditFilter {
                start_index: read,
                limit: PAGE,
                ..AuditFilter::default()
            })
            .await?;
        if page.is_empty() {
            break;
        }
        for e in &page {
            count(&e.entry, &mut counts)?;
            read = e.index + 1;
        }
    }
    let mut tx = store.begin().await?;
    let size = tx.ledger_size().await?;
    // What was appended since, read while the lock holds every writer back.
    while read < size {
        let page = store
            .ledger_entries(&AuditFilter {
                start_index: read,
                end_index: Some(size),
                limit: PAGE,
                ..AuditFilter::default()
            })
            .await?;
        if page.is_empty() {
            return Err(StoreError::Corrupt(format!(
                "ledger entries from {read} to {size} cannot be read"
            )));
        }
        for e in &page {
            count(&e.entry, &mut counts)?;
            read = e.index + 1;
        }
    }
    let cells: Vec<Cell> = counts
        .into_iter()
        .filter(|(_, n)| *n != 0)
        .map(|(key, n)| Cell { key, n })
        .collect();
    tx.replace_ledger_stats(&cells).await?;
    tx.commit().await?;
    Ok(Rebuilt {
        entries: read,
        cells: cells.len(),
    })
}

fn count(
    bytes: &[u8],
    counts: &mut BTreeMap<silta_core::stats::CellKey, i64>,
) -> Result<(), StoreError> {
    let entry = Entry::decode(bytes)?;
    silta_store::stats::count_entry(&entry, |key, n| *counts.entry(key).or_insert(0) += n);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use silta_core::stats::CellKey;

    #[test]
    fn quantiles_name_the_bucket_holding_their_rank() {
        let (median, p90) = ((1, 2), (9, 10));
        assert_eq!(quantile(&[1, 0, 3], median), Some("4h_1d"));
        assert_eq!(quantile(&[2, 2], median), Some("lt_1h"));
        assert_eq!(quantile(&[9, 1], p90), Some("lt_1h"));
        assert_eq!(quantile(&[8, 2], p90), Some("1h_4h"));
        assert_eq!(quantile(&[0, 0], median), None);
    }

    fn cell(month: &str, landlord: &str, fate: &str, n: i64) -> Cell {
        Cell {
            key: CellKey {
                month: month.parse().expect("a month"),
                measure: Measure::Reports,
                flow: "rent-arrears".into(),
                landlord: landlord.into(),
                recipient: String::new(),
                category: fate.into(),
            },
            n,
        }
    }

    #[test]
    fn a_month_keeps_its_shape_and_small_populations_are_suppressed() {
        let nov: Month = "2026-11".parse().expect("a month");
        let cells = vec![
            cell("2026-10", "landlord-c", "forwarded", 30),
            cell("2026-11", "landlord-a", "forwarded", 3),
            cell("2026-11", "landlord-b", "forwarded", 40),
        ];
        let release = release_month(&cells, nov, 5);
        let reports = &release.tables[0];
        // October's landlord has a row of zeros in November: the shape does not depend on who
        // reported in the month.
        assert_eq!(
            reports.rows,
            [
                "rent-arrears · landlord-a",
                "rent-arrears · landlord-b",
                "rent-arrears · landlord-c"
            ]
        );
        assert_eq!(reports.cells[0][0], Shown::Suppressed);
        assert!(
            reports.cells[1][0] == Shown::Suppressed
                || reports.column_totals[0] == Shown::Suppressed,
            "3 would follow from the column total and 40"
        );
        // A later month's counters are not read for November, so its release never changes.
        let mut later = cells.clone();
        later.push(cell("2026-12", "landlord-d", "forwarded", 7));
        let november_only: Vec<Cell> = later.into_iter().filter(|c| c.key.month <= nov).collect();
        assert_eq!(release_month(&november_only, nov, 5), release);
    }
}
