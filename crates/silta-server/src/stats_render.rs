//! Renders a month's released statistics tables ([`silta_core::disclosure::Released`]) for
//! people and programs: aligned text for a terminal, CSV for a spreadsheet or R/pandas, JSON
//! for the console, and an SVG bar chart across months.
//!
//! Every renderer shows only what it is given: the labels and the published counts. A
//! suppressed count is never known here ([`Shown::Suppressed`] carries no value), so no
//! rendering can leak it; it shows as `..`, Statistics Finland's symbol for "confidential".
//!
//! Labels come from silta's configuration (flow and organisation identifiers), not from
//! callers; still, control characters in them are replaced with U+FFFD in the text and SVG
//! forms, so that a label cannot move a terminal's cursor or break the XML.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde_json::{Value, json};
use silta_core::disclosure::{Released, Shown};

/// The symbol shown for a suppressed count (Statistics Finland's "..": confidential).
pub const SUPPRESSED: &str = "..";

/// The label of the totals row and column in every form.
pub const TOTAL: &str = "total";

/// The one-line legend for `..`, naming the thresholds of the tables it covers.
fn legend(thresholds: &BTreeSet<u64>) -> String {
    let below = thresholds
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(" or ");
    format!(
        "{SUPPRESSED} suppressed (confidential): fewer than {below}, or a count that would reveal one"
    )
}

/// A label with its control characters replaced, safe for a terminal and for XML.
fn clean(label: &str) -> String {
    label
        .chars()
        .map(|ch| if ch.is_control() { '\u{FFFD}' } else { ch })
        .collect()
}

fn shown_text(s: Shown) -> String {
    match s {
        Shown::Value(n) => n.to_string(),
        Shown::Suppressed => SUPPRESSED.to_owned(),
    }
}

/// The table with its margins as rows of printed strings: a header (`""`, the columns,
/// `total`), one line per row ending with its total, and the totals line.
fn text_grid(t: &Released) -> Vec<Vec<String>> {
    let mut grid = Vec::with_capacity(t.rows.len() + 2);
    grid.push(
        std::iter::once(String::new())
            .chain(t.columns.iter().map(|c| clean(c)))
            .chain([TOTAL.to_owned()])
            .collect(),
    );
    for (r, label) in t.rows.iter().enumerate() {
        let cells = t.cells.get(r).map(Vec::as_slice).unwrap_or_default();
        let total = t.row_totals.get(r).copied().unwrap_or(Shown::Suppressed);
        grid.push(
            std::iter::once(clean(label))
                .chain(cells.iter().map(|s| shown_text(*s)))
                .chain([shown_text(total)])
                .collect(),
        );
    }
    grid.push(
        std::iter::once(TOTAL.to_owned())
            .chain(t.column_totals.iter().map(|s| shown_text(*s)))
            .chain([shown_text(t.total)])
            .collect(),
    );
    grid
}

/// Aligned plain-text tables for a terminal: a heading per table, row labels left-aligned,
/// counts right-aligned, each row's total in the last column and the column totals in the
/// last line, `..` for a suppressed count, and a one-line legend for `..` at the end.
///
/// Widths count characters, not bytes, so Finnish labels (ä, ö) align.
pub fn text(month: &str, tables: &[Released]) -> String {
    let mut out = format!("Programme statistics, {}\n", clean(month));
    if tables.is_empty() {
        out.push_str("\nNo tables.\n");
        return out;
    }
    for t in tables {
        let _ = write!(out, "\n{} ({})\n", clean(&t.title), clean(&t.id));
        let grid = text_grid(t);
        let columns = grid.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                grid.iter()
                    .filter_map(|line| line.get(c))
                    .map(|s| s.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for line in &grid {
            let mut printed = String::new();
            for (c, field) in line.iter().enumerate() {
                let pad = widths[c].saturating_sub(field.chars().count());
                if c == 0 {
                    printed.push_str(field);
                    printed.push_str(&" ".repeat(pad));
                } else {
                    printed.push_str("  ");
                    printed.push_str(&" ".repeat(pad));
                    printed.push_str(field);
                }
            }
            out.push_str(printed.trim_end());
            out.push('\n');
        }
    }
    let thresholds = tables.iter().map(|t| t.threshold).collect();
    let _ = writeln!(out, "\n{}", legend(&thresholds));
    out
}

/// One CSV field, quoted per RFC 4180 when it holds a comma, a quote or a line break.
fn csv_field(field: &str) -> String {
    if field.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_owned()
    }
}

fn csv_record(out: &mut String, fields: [&str; 6]) {
    let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
    out.push_str(&line.join(","));
    out.push_str("\r\n");
}

/// The month's tables in tidy (long) CSV: UTF-8, CRLF line ends (RFC 4180), a header
/// `month,table,row,column,value,suppressed`, then one record per count: each row's cells and
/// its total (column `total`), then the column totals and the grand total (row `total`).
///
/// `table` is the table's id; `value` is empty when `suppressed` is `true`, so R's `read.csv`
/// and pandas' `read_csv` read it as missing and the flag as a boolean. Without a byte-order
/// mark (it would corrupt the first column name in R): open it in a spreadsheet through its
/// text import, choosing UTF-8. A row or column labelled `total` is indistinguishable from
/// the totals; identifiers are chosen so that none is.
pub fn csv(month: &str, tables: &[Released]) -> String {
    let mut out = String::new();
    csv_record(
        &mut out,
        ["month", "table", "row", "column", "value", "suppressed"],
    );
    for t in tables {
        let mut record = |row: &str, column: &str, s: Shown| {
            let value = s.value().map(|n| n.to_string()).unwrap_or_default();
            let flag = if s.is_suppressed() { "true" } else { "false" };
            csv_record(&mut out, [month, &t.id, row, column, &value, flag]);
        };
        for (r, row) in t.rows.iter().enumerate() {
            for (c, column) in t.columns.iter().enumerate() {
                let s = t
                    .cells
                    .get(r)
                    .and_then(|cells| cells.get(c))
                    .copied()
                    .unwrap_or(Shown::Suppressed);
                record(row, column, s);
            }
            let total = t.row_totals.get(r).copied().unwrap_or(Shown::Suppressed);
            record(row, TOTAL, total);
        }
        for (c, column) in t.columns.iter().enumerate() {
            let total = t.column_totals.get(c).copied().unwrap_or(Shown::Suppressed);
            record(TOTAL, column, total);
        }
        record(TOTAL, TOTAL, t.total);
    }
    out
}

/// The month's tables as JSON, in this shape (stable: consumers rely on it):
///
/// ```json
/// { "month": "2026-11",
///   "suppressed": "..",
///   "tables": [ { "id": "reports", "title": "Reports by flow", "threshold": 5,
///                 "rows": ["rent_arrears"], "columns": ["forwarded", "refused"],
///                 "cells": [[12, null]], "row_totals": [null],
///                 "column_totals": [12, null], "total": null } ] }
/// ```
///
/// A suppressed count is `null`; `"suppressed"` is the symbol a display should show for it;
/// counts below `threshold` (and counts that would reveal them) are the suppressed ones.
pub fn json(month: &str, tables: &[Released]) -> Value {
    let shown = |s: &[Shown]| s.iter().map(|s| json!(s.value())).collect::<Vec<_>>();
    let tables: Vec<Value> = tables
        .iter()
        .map(|t| {
            json!({
                "id": t.id,
                "title": t.title,
                "threshold": t.threshold,
                "rows": t.rows,
                "columns": t.columns,
                "cells": t.cells.iter().map(|row| shown(row)).collect::<Vec<_>>(),
                "row_totals": shown(&t.row_totals),
                "column_totals": shown(&t.column_totals),
                "total": t.total.value(),
            })
        })
        .collect();
    json!({ "month": month, "suppressed": SUPPRESSED, "tables": tables })
}

/// A bar chart across months: one panel per subject (a flow's reports by fate, the support
/// outcomes), grouped bars per month, one bar per series.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chart {
    /// The chart's title, also its SVG `<title>`.
    pub title: String,
    /// The month labels along the horizontal axis, in order.
    pub months: Vec<String>,
    /// The threshold of the released tables the values come from, for the legend of `..`.
    pub threshold: u64,
    /// The panels, top to bottom.
    pub panels: Vec<Panel>,
}

/// One panel of a [`Chart`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Panel {
    /// The panel's title (e.g. the flow).
    pub title: String,
    /// The series, drawn side by side within each month.
    pub series: Vec<Series>,
}

/// One series of a [`Panel`]: a label and one value per month of the chart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Series {
    /// The label in the legend (e.g. `forwarded`).
    pub label: String,
    /// One value per month; a month without a value is drawn empty, a suppressed value as `..`.
    pub values: Vec<Shown>,
}

const WIDTH: u32 = 960;
const TITLE_HEIGHT: u32 = 44;
const PANEL_HEIGHT: u32 = 280;
const FOOTER_HEIGHT: u32 = 36;
const LEFT: i32 = 40;
const RIGHT: i32 = 20;

/// Okabe–Ito colours: distinguishable with the common colour-vision deficiencies.
const PALETTE: [RGBColor; 7] = [
    RGBColor(0, 114, 178),
    RGBColor(230, 159, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(213, 94, 0),
    RGBColor(0, 0, 0),
];

/// The chart as a standalone SVG document: a `<title>`, the chart title, per panel a title, a
/// legend of its series and grouped bars per month, each bar labelled with its count, `..` in
/// place of a suppressed bar, and a footnote explaining `..`.
///
/// There is no numeric axis: its tick numbers would be numbers nobody gave the chart, so the
/// only numbers in the text are the published counts. Text is SVG `<text>` in the generic
/// `sans-serif` family, so the viewer's fonts render it and nothing here needs font files.
pub fn svg(chart: &Chart) -> String {
    let height = TITLE_HEIGHT + PANEL_HEIGHT * u32::try_from(chart.panels.len()).unwrap_or(0);
    let height = height + FOOTER_HEIGHT;
    let mut body = String::new();
    let drawn = draw(chart, &mut body, height);
    if drawn.is_err() {
        // Drawing into a String does not fail; should plotters ever report an error, an empty
        // but valid document is better than half a chart.
        body = format!(
            "<svg width=\"{WIDTH}\" height=\"{height}\" viewBox=\"0 0 {WIDTH} {height}\" xmlns=\"http://www.w3.org/2000/svg\">\n</svg>\n"
        );
    }
    with_title(&body, &chart.title)
}

/// Inserts `<title>` as the first child of the `<svg>` element.
fn with_title(svg: &str, title: &str) -> String {
    let mut escaped = String::new();
    for ch in clean(title).chars() {
        match ch {
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '&' => escaped.push_str("&amp;"),
            other => escaped.push(other),
        }
    }
    match svg.find('>') {
        Some(end) => format!(
            "{}\n<title>{escaped}</title>{}",
            &svg[..=end],
            &svg[end + 1..]
        ),
        None => svg.to_owned(),
    }
}

type DrawResult = Result<(), DrawingAreaErrorKind<std::io::Error>>;

fn draw(chart: &Chart, out: &mut String, height: u32) -> DrawResult {
    let root = SVGBackend::with_string(out, (WIDTH, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let font = |size: f64| ("sans-serif", size).into_font();
    root.draw(&Text::new(
        clean(&chart.title),
        (LEFT, 14),
        font(20.0).style(FontStyle::Bold).color(&BLACK),
    ))?;
    let mut top = i32::try_from(TITLE_HEIGHT).unwrap_or(0);
    for panel in &chart.panels {
        draw_panel(&root, chart, panel, top)?;
        top += i32::try_from(PANEL_HEIGHT).unwrap_or(0);
    }
    let note = legend(&BTreeSet::from([chart.threshold]));
    root.draw(&Text::new(
        note,
        (LEFT, top + 12),
        font(12.0).color(&BLACK.mix(0.8)),
    ))?;
    root.present()
}

fn draw_panel(
    root: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    chart: &Chart,
    panel: &Panel,
    top: i32,
) -> DrawResult {
    let font = |size: f64| ("sans-serif", size).into_font();
    let width = i32::try_from(WIDTH).unwrap_or(0);
    root.draw(&Text::new(
        clean(&panel.title),
        (LEFT, top + 6),
        font(16.0).style(FontStyle::Bold).color(&BLACK),
    ))?;

    // Legend: a swatch and the label per series, in one line under the panel title.
    let mut x = LEFT;
    for (k, series) in panel.series.iter().enumerate() {
        let colour = PALETTE[k % PALETTE.len()];
        root.draw(&Rectangle::new(
            [(x, top + 30), (x + 10, top + 40)],
            colour.filled(),
        ))?;
        let label = clean(&series.label);
        root.draw(&Text::new(
            label.clone(),
            (x + 14, top + 28),
            font(12.0).color(&BLACK),
        ))?;
        x += 14 + 7 * i32::try_from(label.chars().count()).unwrap_or(0) + 24;
    }

    let plot_top = top + 64;
    let baseline = top + i32::try_from(PANEL_HEIGHT).unwrap_or(0) - 40;
    let plot_height = u128::try_from(baseline - plot_top).unwrap_or(0);
    let max = panel
        .series
        .iter()
        .flat_map(|s| s.values.iter().filter_map(|v| v.value()))
        .max()
        .unwrap_or(0)
        .max(1);
    root.draw(&PathElement::new(
        vec![(LEFT, baseline), (width - RIGHT, baseline)],
        BLACK.stroke_width(1),
    ))?;

    let months = i32::try_from(chart.months.len().max(1)).unwrap_or(1);
    let group = (width - LEFT - RIGHT) / months;
    let bars = i32::try_from(panel.series.len().max(1)).unwrap_or(1);
    // Bars at most 48 px wide, so that a panel of one series does not read as a block.
    let bar = (group * 4 / 5 / bars).clamp(1, 48);
    let label_style = font(11.0)
        .color(&BLACK)
        .pos(Pos::new(HPos::Center, VPos::Bottom));
    for (m, month) in chart.months.iter().enumerate() {
        let m = i32::try_from(m).unwrap_or(0);
        let left = LEFT + m * group + (group - bar * bars) / 2;
        root.draw(&Text::new(
            clean(month),
            (LEFT + m * group + group / 2, baseline + 8),
            font(12.0)
                .color(&BLACK)
                .pos(Pos::new(HPos::Center, VPos::Top)),
        ))?;
        for (k, series) in panel.series.iter().enumerate() {
            let colour = PALETTE[k % PALETTE.len()];
            let x0 = left + i32::try_from(k).unwrap_or(0) * bar;
            let centre = x0 + bar / 2;
            match series.values.get(usize::try_from(m).unwrap_or(usize::MAX)) {
                Some(Shown::Value(n)) => {
                    // Rounded integer scaling: n ≤ max, so h ≤ plot_height and fits an i32.
                    let scaled =
                        (u128::from(*n) * plot_height + u128::from(max) / 2) / u128::from(max);
                    let h = i32::try_from(scaled).unwrap_or(0);
                    if h > 0 {
                        root.draw(&Rectangle::new(
                            [(x0, baseline - h), (x0 + bar - 1, baseline)],
                            colour.filled(),
                        ))?;
                    }
                    root.draw(&Text::new(
                        n.to_string(),
                        (centre, baseline - h - 2),
                        label_style.clone(),
                    ))?;
                }
                Some(Shown::Suppressed) => {
                    // Absent: an outline in the series colour where the bar would stand, and the
                    // symbol above it.
                    root.draw(&Rectangle::new(
                        [(x0, baseline - 6), (x0 + bar - 1, baseline)],
                        colour.stroke_width(1),
                    ))?;
                    root.draw(&Text::new(
                        SUPPRESSED,
                        (centre, baseline - 8),
                        font(14.0)
                            .style(FontStyle::Bold)
                            .color(&BLACK)
                            .pos(Pos::new(HPos::Center, VPos::Bottom)),
                    ))?;
                }
                None => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use Shown::{Suppressed as S, Value as V};

    fn reports() -> Released {
        Released {
            id: "reports".into(),
            title: "Reports by flow".into(),
            rows: vec!["rent_arrears".into(), "Vuokra, \"ä\"".into()],
            columns: vec!["forwarded".into(), "refused".into()],
            threshold: 5,
            cells: vec![vec![V(12), S], vec![V(0), S]],
            row_totals: vec![S, S],
            column_totals: vec![V(12), V(9)],
            total: V(21),
        }
    }

    /// A minimal RFC 4180 reader: records of fields, quotes and doubled quotes honoured.
    fn parse_csv(text: &str) -> Vec<Vec<String>> {
        let mut records = Vec::new();
        let mut record = Vec::new();
        let mut field = String::new();
        let mut quoted = false;
        let mut chars = text.chars().peekable();
        while let Some(ch) = chars.next() {
            match (quoted, ch) {
                (true, '"') if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                (true, '"') => quoted = false,
                (true, other) => field.push(other),
                (false, '"') => quoted = true,
                (false, ',') => record.push(std::mem::take(&mut field)),
                (false, '\r') => {}
                (false, '\n') => {
                    record.push(std::mem::take(&mut field));
                    records.push(std::mem::take(&mut record));
                }
                (false, other) => field.push(other),
            }
        }
        records
    }

    #[test]
    fn csv_parses_back_with_header_every_count_and_quoted_labels() {
        let out = csv("2026-11", &[reports()]);
        assert!(out.ends_with("\r\n"));
        let records = parse_csv(&out);
        assert_eq!(
            records[0],
            ["month", "table", "row", "column", "value", "suppressed"]
        );
        // 2×2 cells, 2 row totals, 2 column totals, the grand total.
        assert_eq!(records.len(), 1 + 4 + 2 + 2 + 1);
        assert!(records.iter().all(|r| r.len() == 6));
        assert!(out.contains("\"Vuokra, \"\"ä\"\"\""));
        assert!(records.contains(&vec![
            "2026-11".into(),
            "reports".into(),
            "Vuokra, \"ä\"".into(),
            "refused".into(),
            String::new(),
            "true".into(),
        ]));
        assert!(records.contains(&vec![
            "2026-11".into(),
            "reports".into(),
            "total".into(),
            "total".into(),
            "21".into(),
            "false".into(),
        ]));
    }

    #[test]
    fn text_shows_suppressed_counts_as_two_dots_with_totals_and_a_legend() {
        let out = text("2026-11", &[reports()]);
        let line = out
            .lines()
            .find(|l| l.starts_with("rent_arrears"))
            .unwrap_or_default();
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields, ["rent_arrears", "12", "..", ".."]);
        let totals = out
            .lines()
            .find(|l| l.starts_with("total"))
            .unwrap_or_default();
        assert_eq!(
            totals.split_whitespace().collect::<Vec<_>>(),
            ["total", "12", "9", "21"]
        );
        assert!(out.contains(".. suppressed (confidential): fewer than 5"));
        // Right-aligned: every line of the table is as wide as the header's columns allow.
        let header = out
            .lines()
            .find(|l| l.contains("forwarded"))
            .unwrap_or_default();
        assert!(header.ends_with("total"));
        assert_eq!(line.chars().count(), header.chars().count(), "{out}");
    }

    #[test]
    fn text_replaces_control_characters_in_labels() {
        let mut t = reports();
        t.rows[0] = "evil\u{1b}[2J".into();
        assert!(!text("2026-11", &[t]).contains('\u{1b}'));
    }

    #[test]
    fn json_has_the_documented_shape_with_null_for_suppressed() {
        let v = json("2026-11", &[reports()]);
        assert_eq!(v["month"], "2026-11");
        assert_eq!(v["suppressed"], "..");
        let t = &v["tables"][0];
        assert_eq!(t["id"], "reports");
        assert_eq!(t["threshold"], 5);
        assert_eq!(t["cells"], serde_json::json!([[12, null], [0, null]]));
        assert_eq!(t["row_totals"], serde_json::json!([null, null]));
        assert_eq!(t["column_totals"], serde_json::json!([12, 9]));
        assert_eq!(t["total"], 21);
    }

    fn chart() -> Chart {
        Chart {
            title: "Reports & notices, 2026".into(),
            months: vec!["2026-10".into(), "2026-11".into()],
            threshold: 5,
            panels: vec![
                Panel {
                    title: "rent_arrears".into(),
                    series: vec![
                        Series {
                            label: "forwarded".into(),
                            values: vec![V(12), V(40)],
                        },
                        Series {
                            label: "not forwarded".into(),
                            values: vec![S, V(0)],
                        },
                        Series {
                            label: "refused".into(),
                            values: vec![V(7), S],
                        },
                    ],
                },
                Panel {
                    title: "support outcomes".into(),
                    series: vec![Series {
                        label: "contacted".into(),
                        values: vec![V(25), V(28)],
                    }],
                },
            ],
        }
    }

    /// The character data of every `<text>` element.
    fn texts(svg: &str) -> Vec<String> {
        svg.split("<text")
            .skip(1)
            .filter_map(|s| {
                let start = s.find('>')? + 1;
                let end = s.find("</text>")?;
                Some(s[start..end].trim().to_owned())
            })
            .collect()
    }

    #[test]
    fn svg_is_a_standalone_document_with_title_labels_and_only_the_given_numbers() {
        let out = svg(&chart());
        assert!(out.starts_with("<svg"), "{out}");
        assert!(out.trim_end().ends_with("</svg>"));
        assert!(out.contains("xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(out.contains("<title>Reports &amp; notices, 2026</title>"));
        let texts = texts(&out);
        for label in [
            "forwarded",
            "not forwarded",
            "refused",
            "contacted",
            "rent_arrears",
            "support outcomes",
            "2026-11",
        ] {
            assert!(texts.iter().any(|t| t == label), "{label} in {texts:?}");
        }
        assert!(texts.iter().any(|t| t == ".."));
        assert!(
            texts
                .iter()
                .any(|t| t.contains("suppressed (confidential): fewer than 5"))
        );
        // Every number drawn is a published count, a month or the threshold: no axis ticks,
        // and nothing for the suppressed bars.
        let given = ["12", "40", "0", "7", "25", "28"];
        for t in &texts {
            if t.chars().all(|c| c.is_ascii_digit()) {
                assert!(given.contains(&t.as_str()), "unexpected number {t}");
            }
        }
        assert_eq!(out.matches("<text").count(), out.matches("</text>").count());
    }

    #[test]
    fn svg_escapes_markup_and_drops_control_characters_in_labels() {
        let mut c = chart();
        c.title = "<script>alert(1)</script>".into();
        c.panels[0].series[0].label = "a<b & \u{7}c".into();
        let out = svg(&c);
        assert!(!out.contains("<script"));
        assert!(out.contains("<title>&lt;script&gt;alert(1)&lt;/script&gt;</title>"));
        assert!(out.contains("a&lt;b &amp; \u{FFFD}c"));
        assert!(!out.contains('\u{7}'));
    }

    #[test]
    fn an_empty_chart_is_still_a_document() {
        let out = svg(&Chart {
            title: "Nothing yet".into(),
            months: vec![],
            threshold: 5,
            panels: vec![],
        });
        assert!(out.starts_with("<svg") && out.trim_end().ends_with("</svg>"));
        assert!(out.contains("<title>Nothing yet</title>"));
    }

    #[test]
    fn svg_never_shows_a_suppressed_count() {
        // The true count behind the suppressed bar was 3; it is not in the input, and no
        // text of the chart may be 3 (the footnote's threshold is 5).
        let out = svg(&chart());
        assert!(!texts(&out).iter().any(|t| t == "3"));
        assert!(
            !texts(&out)
                .iter()
                .any(|t| t.contains('3') && !t.contains("2026"))
        );
    }
}
