//! The console's pages as HTML, from plain data: no I/O here, so a page is a function of what
//! the handler read.
//!
//! Every page has a language, a skip link to its main content, a labelled navigation and one
//! `h1`; tables have a caption and header cells with their scope. Nothing is styled inline and
//! nothing runs: the look is `/static/console.css` alone.

use axum::http::StatusCode;
use maud::{DOCTYPE, Markup, html};
use silta_core::disclosure::{Released, Shown};
use silta_core::policy::{Flow, Policies};
use silta_core::stats::Month;
use time::OffsetDateTime;

use crate::retention::KindStatus;
use crate::statistics::MonthRelease;
use crate::stats_render::SUPPRESSED;

/// The pages in the navigation.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Nav {
    Overview,
    Statistics,
    Flows,
    None,
}

const NAV: [(Nav, &str, &str); 3] = [
    (Nav::Overview, "/", "Overview"),
    (Nav::Statistics, "/statistics", "Statistics"),
    (Nav::Flows, "/flows", "Flows"),
];

fn layout(title: &str, current: Nav, main: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · silta console" }
                link rel="stylesheet" href="/static/console.css";
            }
            body {
                a.skip href="#main" { "Skip to main content" }
                header.site {
                    p.brand { "silta · data-protection officer's console" }
                    nav aria-label="Console pages" {
                        ul {
                            @for (page, href, label) in NAV {
                                li {
                                    a href=(href) aria-current=[(page == current).then_some("page")] {
                                        (label)
                                    }
                                }
                            }
                        }
                    }
                }
                main #main tabindex="-1" {
                    h1 { (title) }
                    (main)
                }
            }
        }
    }
}

/// What the overview shows.
pub(super) struct Overview {
    /// When it was read.
    pub now: OffsetDateTime,
    /// Entries in the ledger.
    pub ledger_size: u64,
    /// The latest signed checkpoint, verified; `None`: none published yet.
    pub checkpoint: Option<CheckpointView>,
    /// The pseudonym key version new records are written under.
    pub key_version_in_use: u32,
    /// The first and latest version of this node's keyring.
    pub keyring: (u32, u32),
    /// The retention state of each kind of record.
    pub retention: Vec<KindStatus>,
}

/// A verified checkpoint, as the overview shows it.
pub(super) struct CheckpointView {
    /// The tree size it signs.
    pub size: u64,
    /// Its root hash, hex.
    pub root: String,
    /// The key whose signature verified.
    pub verifier_key: String,
    /// When the newest entry it covers was written.
    pub newest_entry: Option<OffsetDateTime>,
}

/// A moment to the second, in UTC, said so.
fn when(t: OffsetDateTime) -> String {
    let utc = t.to_offset(time::UtcOffset::UTC);
    utc.format(time::macros::format_description!(
        "[year]-[month]-[day] [hour]:[minute]:[second] UTC"
    ))
    .unwrap_or_else(|_| utc.unix_timestamp().to_string())
}

/// A duration in the largest whole unit that fits, e.g. `3 h`.
fn age(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..60 => format!("{s} s"),
        60..3_600 => format!("{} min", s / 60),
        3_600..86_400 => format!("{} h", s / 3_600),
        _ => format!("{} d", s / 86_400),
    }
}

fn period(seconds: u64) -> String {
    age(i64::try_from(seconds).unwrap_or(i64::MAX))
}

/// `/`.
pub(super) fn overview(o: &Overview) -> Markup {
    layout(
        "Overview",
        Nav::Overview,
        html! {
            p { "As of " (when(o.now)) "." }
            h2 { "Audit ledger" }
            table {
                caption { "The ledger and its latest signed checkpoint" }
                tbody {
                    tr { th scope="row" { "Entries in the ledger" } td.number { (o.ledger_size) } }
                    @match &o.checkpoint {
                        Some(c) => {
                            tr { th scope="row" { "Latest checkpoint: entries it signs" } td.number { (c.size) } }
                            tr {
                                th scope="row" { "Signature" }
                                td { "verified with this gateway's key " code { (c.verifier_key) } }
                            }
                            tr { th scope="row" { "Root hash" } td { code.hash { (c.root) } } }
                            tr {
                                th scope="row" { "Newest entry it covers" }
                                td {
                                    @match c.newest_entry {
                                        Some(t) => {
                                            (when(t)) " (" (age((o.now - t).whole_seconds())) " ago)"
                                        }
                                        None => "not readable",
                                    }
                                }
                            }
                            tr {
                                th scope="row" { "Entries not yet under a checkpoint" }
                                td.number { (o.ledger_size.saturating_sub(c.size)) }
                            }
                        }
                        None => {
                            tr { th scope="row" { "Latest checkpoint" } td { "none published yet" } }
                        }
                    }
                }
            }
            h2 { "Pseudonym keys" }
            p {
                "New records are written under key version " strong { (o.key_version_in_use) }
                "; this gateway's keyring holds versions " (o.keyring.0) " to " (o.keyring.1) "."
            }
            h2 { "Retention" }
            table {
                caption { "What is kept, for how long, and what the next purge deletes" }
                thead {
                    tr {
                        th scope="col" { "Records" }
                        th scope="col" { "Flow" }
                        th scope="col" { "Kept for" }
                        th scope="col" { "Rows" }
                        th scope="col" { "Oldest" }
                        th scope="col" { "Due for deletion" }
                        th scope="col" { "Rule" }
                    }
                }
                tbody {
                    @for k in &o.retention {
                        tr {
                            th scope="row" { (k.kind) }
                            td { (k.flow_id.as_deref().unwrap_or("—")) }
                            td.number { (period(k.kept_for_s)) }
                            td.number { (k.count.rows) }
                            td { (k.count.oldest.map_or_else(|| "—".to_owned(), when)) }
                            td.number { (k.count.due) }
                            td { (k.rule) }
                        }
                    }
                }
            }
        },
    )
}

fn legend(threshold: u64) -> Markup {
    let title = format!(
        "suppressed (confidential): fewer than {threshold}, or a count that would reveal one"
    );
    html! {
        p.legend {
            abbr title=(title) { (SUPPRESSED) } " "
            (title) "."
        }
    }
}

fn cell(s: Shown, threshold: u64) -> Markup {
    match s {
        Shown::Value(n) => html! { td.number { (n) } },
        Shown::Suppressed => html! {
            td.number.suppressed {
                abbr title=(format!("suppressed: fewer than {threshold}, or would reveal one")) {
                    (SUPPRESSED)
                }
            }
        },
    }
}

fn released_table(t: &Released) -> Markup {
    html! {
        table {
            caption { (t.title) " " span.id { "(" (t.id) ")" } }
            thead {
                tr {
                    td {}
                    // The codes docs/statistics.md defines, as every other form shows them.
                    @for c in &t.columns { th scope="col" { (c) } }
                    th scope="col" { "total" }
                }
            }
            tbody {
                @for (r, label) in t.rows.iter().enumerate() {
                    tr {
                        th scope="row" { (label) }
                        @for s in t.cells.get(r).map(Vec::as_slice).unwrap_or_default() {
                            (cell(*s, t.threshold))
                        }
                        (cell(t.row_totals.get(r).copied().unwrap_or(Shown::Suppressed), t.threshold))
                    }
                }
                @if t.rows.is_empty() {
                    tr { td colspan=(t.columns.len() + 2) { "Nothing counted yet." } }
                }
            }
            tfoot {
                tr {
                    th scope="row" { "total" }
                    @for s in &t.column_totals { (cell(*s, t.threshold)) }
                    (cell(t.total, t.threshold))
                }
            }
        }
    }
}

/// `/statistics`: the month's released tables, the delay quantiles, and the year's chart.
pub(super) fn statistics(r: &MonthRelease, last_closed: Month) -> Markup {
    let month = r.month.to_string();
    let chart = format!("/statistics/chart.svg?month={month}");
    html! {
        (layout(&format!("Programme statistics, {month}"), Nav::Statistics, html! {
            nav.months aria-label="Months" {
                ul {
                    li { a href=(format!("/statistics?month={}", r.month.previous())) { "Previous month (" (r.month.previous()) ")" } }
                    @if r.month < last_closed {
                        li { a href=(format!("/statistics?month={}", r.month.next())) { "Next month (" (r.month.next()) ")" } }
                    }
                }
            }
            p {
                "Counts of the month, as released to analysts: every count from 1 to "
                (r.threshold.saturating_sub(1)) " is suppressed, with as many others as it takes "
                "so that none can be recomputed from the totals."
            }
            (legend(r.threshold))
            figure {
                img src=(chart) width="960" alt=(format!(
                    "Bar chart of the {} months to {month}: reports per flow by what became of \
                     them, and support notices by outcome. The figures of {month} are in the \
                     tables below.", super::CHART_MONTHS));
                figcaption { "The twelve months to " (month) "; " (SUPPRESSED) " marks a suppressed bar." }
            }
            @for t in &r.tables { (released_table(t)) }
            @if !r.quantiles.is_empty() {
                table {
                    caption { "Median and 90th percentile of the delays (the bucket each falls in)" }
                    thead {
                        tr {
                            th scope="col" { "Table" }
                            th scope="col" { "Row" }
                            th scope="col" { "Median" }
                            th scope="col" { "90th percentile" }
                        }
                    }
                    tbody {
                        @for q in &r.quantiles {
                            tr {
                                td { (q.table) }
                                th scope="row" { (q.row) }
                                @for v in [&q.median, &q.p90] {
                                    @match v {
                                        Some(bucket) => td { (bucket) },
                                        None => td.suppressed { abbr title="suppressed" { (SUPPRESSED) } },
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }))
    }
}

/// The fields a flow lets cross, each with the form it crosses in.
fn crossing(f: &Flow) -> Markup {
    html! {
        ul.fields {
            @for c in &f.fields {
                li {
                    code { (c.source) }
                    @if c.output != c.source { " → " code { (c.output) } }
                    " (" (c.form.as_str()) ")"
                }
            }
            @if f.discloses_identity {
                li { "identity code (sealed to the recipient's key)" }
            }
        }
    }
}

/// `/flows`: every flow of the policy set in force.
pub(super) fn flows(p: &Policies) -> Markup {
    let declared = p.declarations();
    layout(
        "Flows",
        Nav::Flows,
        html! {
            p {
                "The flows of the policy set in force, " code { (p.digest()) } ": who may send what "
                "to whom, why, on which legal basis, in which form each field crosses, and how long "
                "the recipient's copy is kept."
            }
            table {
                caption { "Flows in force" }
                thead {
                    tr {
                        th scope="col" { "Flow" }
                        th scope="col" { "Sender → recipient" }
                        th scope="col" { "Purpose" }
                        th scope="col" { "Legal basis" }
                        th scope="col" { "Fields that cross (and how)" }
                        th scope="col" { "Retention" }
                    }
                }
                tbody {
                    @for f in p.flows() {
                        tr {
                            th scope="row" { code { (f.id) } br; (f.description) }
                            td {
                                (f.sender) " → " (f.recipient)
                                @if !f.recipients.is_empty() {
                                    br;
                                    "(" (f.recipients.iter().map(|o| o.as_str()).collect::<Vec<_>>().join(", ")) ")"
                                }
                            }
                            td {
                                code { (f.purpose) }
                                @if let Some(purpose) = declared.purposes.get(&f.purpose) {
                                    br; (purpose.description)
                                }
                            }
                            td {
                                code { (f.legal_basis) }
                                @if let Some(basis) = declared.legal_bases.get(&f.legal_basis) {
                                    br; (basis.description)
                                    br; cite { (basis.citation) }
                                }
                                br;
                                @if f.requires_consent { "Needs the resident's consent." }
                                @else { "No consent needed." }
                            }
                            td { (crossing(f)) }
                            td.number { (f.retention_days) " days" }
                        }
                    }
                }
            }
            h2 { "Policies" }
            p {
                "The Cedar policies that decide each disclosure. A " code { "forbid" }
                " overrides every " code { "permit" } "; the reason is what a refused sender is told."
            }
            table {
                caption { "Cedar policies in force" }
                thead {
                    tr {
                        th scope="col" { "Policy" }
                        th scope="col" { "Effect" }
                        th scope="col" { "File" }
                        th scope="col" { "Reason given on refusal" }
                    }
                }
                tbody {
                    @for info in p.policies().values() {
                        tr {
                            th scope="row" { code { (info.id) } }
                            td { (info.effect) }
                            td { code { (info.file) } }
                            td { (info.reason.as_deref().unwrap_or("—")) }
                        }
                    }
                }
            }
        },
    )
}

/// The page of a refused caller: plain, with nothing to load.
pub(super) fn refused(why: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; title { "Forbidden · silta console" } }
            body { main { h1 { "Forbidden" } p { (why) } } }
        }
    }
}

/// The page of a failed request, with the request id the operator finds in the logs.
pub(super) fn error(status: StatusCode, message: &str, request_id: &str) -> Markup {
    layout(
        status.canonical_reason().unwrap_or("Error"),
        Nav::None,
        html! {
            p { (message) }
            p { "Request id: " code { (request_id) } " (the gateway's log names it)." }
        },
    )
}

/// The page of a path the console does not serve.
pub(super) fn not_found() -> Markup {
    layout(
        "Not found",
        Nav::None,
        html! {
            p { "The console has no such page. " a href="/" { "Go to the overview." } }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flows_page_names_every_flow_with_its_legal_basis_and_citation_and_every_policy() {
        let policies = Policies::builtin();
        let page = flows(&policies).into_string();
        assert!(page.contains("<caption>Flows in force</caption>"));
        for f in policies.flows() {
            assert!(page.contains(&format!("<code>{}</code>", f.id)), "{}", f.id);
            let basis = &policies.declarations().legal_bases[&f.legal_basis];
            // As maud escapes it.
            let citation = html! { (basis.citation) }.into_string();
            assert!(
                page.contains(&format!("<cite>{citation}</cite>")),
                "{}",
                f.id
            );
            assert!(page.contains(&format!("{} days", f.retention_days)));
        }
        assert!(page.contains("<caption>Cedar policies in force</caption>"));
        for id in policies.policies().keys() {
            let id = html! { (id) }.into_string();
            assert!(page.contains(&format!("<code>{id}</code>")), "{id}");
        }
    }

    #[test]
    fn a_suppressed_count_is_dots_with_a_legend_and_every_header_cell_has_its_scope() {
        let table = Released {
            id: "reports".into(),
            title: "Reports <received>".into(),
            rows: vec!["rent-arrears · landlord-a".into()],
            columns: vec!["forwarded".into(), "not_forwarded".into()],
            threshold: 5,
            cells: vec![vec![Shown::Value(7), Shown::Suppressed]],
            row_totals: vec![Shown::Suppressed],
            column_totals: vec![Shown::Value(7), Shown::Suppressed],
            total: Shown::Suppressed,
        };
        let html = released_table(&table).into_string();
        assert!(
            html.contains("<caption>Reports &lt;received&gt; "),
            "{html}"
        );
        assert_eq!(
            html.matches("<abbr title=\"suppressed").count(),
            4,
            "{html}"
        );
        assert_eq!(html.matches(">..</abbr>").count(), 4, "{html}");
        assert_eq!(html.matches("<th scope=\"col\">").count(), 3, "{html}");
        assert_eq!(html.matches("<th scope=\"row\">").count(), 2, "{html}");
        assert!(html.contains("<td class=\"number\">7</td>"), "{html}");
        assert!(
            html.contains("<th scope=\"col\">not_forwarded</th>"),
            "{html}"
        );
    }

    #[test]
    fn ages_are_told_in_the_largest_whole_unit() {
        assert_eq!(age(-5), "0 s");
        assert_eq!(age(59), "59 s");
        assert_eq!(age(60), "1 min");
        assert_eq!(age(7_200), "2 h");
        assert_eq!(age(200_000), "2 d");
        let t = OffsetDateTime::from_unix_timestamp(1_764_950_400).expect("a time");
        assert_eq!(when(t), "2025-12-05 16:00:00 UTC");
    }
}
