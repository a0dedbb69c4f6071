//! `silta stats`: the programme's statistics for a closed month, from the gateway's
//! `Audit/Statistics` over mTLS (role `analyst` or `dpo`), as a table, CSV or JSON, and a
//! chart as SVG. `silta stats rebuild` (in `main.rs`) recomputes the counters from the ledger.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use silta_core::disclosure::{Released, Shown};
use silta_core::stats::Month;
use silta_server::proto;
use silta_server::proto::audit_client::AuditClient;
use silta_server::statistics::{DelayQuantiles, MonthRelease};
use silta_server::stats_render;
use tonic::transport::Channel;

/// How to print a month.
#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    /// Aligned tables for a terminal.
    Table,
    /// UTF-8 CSV with a header row, one count per line (loads into a spreadsheet, R or pandas).
    Csv,
    /// JSON.
    Json,
}

/// `silta stats` without a subcommand.
#[derive(Args)]
pub struct Show {
    /// The month, YYYY-MM in Helsinki time (default: the last closed month). Only closed
    /// months are released.
    #[arg(long)]
    pub month: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Also writes a chart (SVG) of the months up to `--month` to this file: reports per flow
    /// forwarded, not forwarded and refused, and support outcomes.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// How many months the chart shows.
    #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(u32).range(1..=60))]
    pub chart_months: u32,
    #[command(flatten)]
    pub conn: Connection,
}

/// How to reach the gateway as an analyst (or the DPO, with the DPO's certificate).
#[derive(Args)]
pub struct Connection {
    /// The gateway's URL.
    #[arg(long, default_value = "https://127.0.0.1:7443", env = "SILTA_URL")]
    url: String,
    /// The name the server certificate must carry.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// CA certificate that issued the server certificate.
    #[arg(long, default_value = "dev-pki/ca.pem")]
    ca: PathBuf,
    /// The client certificate: role `analyst` or `dpo`.
    #[arg(long, default_value = "dev-pki/programme-research.pem")]
    cert: PathBuf,
    /// Its key.
    #[arg(long, default_value = "dev-pki/programme-research.key")]
    cert_key: PathBuf,
}

impl Connection {
    async fn audit(&self) -> anyhow::Result<AuditClient<Channel>> {
        crate::audit_cli::audit_client(
            &self.url,
            &self.server_name,
            &self.ca,
            &self.cert,
            &self.cert_key,
        )
        .await
    }
}

fn shown(v: Option<&proto::StatisticsValue>) -> Shown {
    match v {
        Some(v) if !v.suppressed => Shown::Value(v.count),
        _ => Shown::Suppressed,
    }
}

/// A release as the gateway sent it, back in the form the renderers take.
pub fn from_proto(r: proto::StatisticsRelease) -> anyhow::Result<MonthRelease> {
    let month: Month = r
        .month
        .parse()
        .context("the gateway answered with a malformed month")?;
    let threshold = u64::from(r.threshold);
    let tables = r
        .tables
        .into_iter()
        .map(|t| Released {
            id: t.id,
            title: t.title,
            columns: t.columns,
            threshold,
            rows: t.rows.iter().map(|row| row.label.clone()).collect(),
            cells: t
                .rows
                .iter()
                .map(|row| row.values.iter().map(|v| shown(Some(v))).collect())
                .collect(),
            row_totals: t.rows.iter().map(|row| shown(row.total.as_ref())).collect(),
            column_totals: t.column_totals.iter().map(|v| shown(Some(v))).collect(),
            total: shown(t.total.as_ref()),
        })
        .collect();
    let quantiles = r
        .quantiles
        .into_iter()
        .map(|q| DelayQuantiles {
            table: q.table,
            row: q.row,
            median: (!q.median.is_empty()).then_some(q.median),
            p90: (!q.p90.is_empty()).then_some(q.p90),
        })
        .collect();
    Ok(MonthRelease {
        month,
        threshold,
        tables,
        quantiles,
    })
}

async fn fetch(client: &mut AuditClient<Channel>, month: Month) -> anyhow::Result<MonthRelease> {
    let release = client
        .statistics(proto::StatisticsRequest {
            month: month.to_string(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}: {}", s.code(), s.message()))
        .with_context(|| format!("reading the statistics of {month}"))?
        .into_inner();
    from_proto(release)
}

/// The delay quantiles as text lines.
fn quantile_lines(release: &MonthRelease) -> String {
    let mut out = String::new();
    if release.quantiles.is_empty() {
        return out;
    }
    out.push_str("\nMedian and 90th percentile of the delays (the bucket each falls in)\n");
    for q in &release.quantiles {
        out.push_str(&format!(
            "  {:<20} {:<40} median {:<8} p90 {}\n",
            q.table,
            q.row,
            q.median.as_deref().unwrap_or(stats_render::SUPPRESSED),
            q.p90.as_deref().unwrap_or(stats_render::SUPPRESSED),
        ));
    }
    out
}

/// Prints a month (and writes the chart). Returns the text to print.
pub async fn run(show: Show) -> anyhow::Result<String> {
    let now = time::OffsetDateTime::now_utc();
    let month = match &show.month {
        Some(m) => m
            .parse::<Month>()
            .map_err(|e| anyhow::anyhow!("--month: {e}"))?,
        None => Month::of(now).previous(),
    };
    if !month.is_closed(now) {
        bail!("--month: {month} has not ended; only closed months are released");
    }
    let mut client = show.conn.audit().await?;
    let release = fetch(&mut client, month).await?;
    if let Some(path) = &show.svg {
        let mut months = vec![month];
        while months.len() < show.chart_months as usize {
            let earlier = months[months.len() - 1].previous();
            months.push(earlier);
        }
        months.reverse();
        let mut releases = Vec::with_capacity(months.len());
        for m in months {
            if m == month {
                releases.push(release.clone());
            } else {
                releases.push(fetch(&mut client, m).await?);
            }
        }
        let svg = stats_render::svg(&silta_server::statistics::chart(&releases));
        std::fs::write(path, svg).with_context(|| format!("writing {}", path.display()))?;
    }
    let m = month.to_string();
    Ok(match show.format {
        Format::Table => stats_render::text(&m, &release.tables) + &quantile_lines(&release),
        Format::Csv => stats_render::csv(&m, &release.tables),
        Format::Json => {
            let mut json = stats_render::json(&m, &release.tables);
            json["quantiles"] = serde_json::Value::Array(
                release
                    .quantiles
                    .iter()
                    .map(|q| {
                        serde_json::json!({
                            "table": q.table,
                            "row": q.row,
                            "median": q.median,
                            "p90": q.p90,
                        })
                    })
                    .collect(),
            );
            format!("{json:#}\n")
        }
    })
}
