//! `epm-agent report [--since T] [--until T] [--by day|hour|device|question|unit]
//! [--json|--csv] [--chart FILE.svg]`: counts per answer and the loyalty
//! indices (IEL and NPS, as `docs/interface.md` defines them) per group,
//! each with its 95 % interval and the answers it is computed over, from
//! the local store. SQLite does the counting in one aggregate query over
//! the `events_by_time` index, so only one row per group leaves the store,
//! however many presses it holds.
//!
//! `report --compare PERIOD [--until T] [--json]` sets the last PERIOD
//! against the one before it and says whether the change of each index is
//! larger than the noise of both samples (`Estimate::differs_from`).
//!
//! Every press is in exactly one answer column: presses = suppressed + yes +
//! neutral + no + other + scores. Suppressed presses (the anti-spam rule)
//! are counted apart and nowhere else, so they are left out of both
//! indices; `other` holds unmapped keys (no answer) and answers that are
//! neither yes / neutral / no nor a score "0" to "10". Days and hours are
//! the shop's local time: each press's `ts` moved by its own
//! `tz_offset_min`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use chrono::{DateTime, Local, NaiveDate, Utc};
use rusqlite::types::Value;
use serde::Serialize;

use epm_agent::config::Settings;
use epm_agent::event::format_timestamp;
pub use epm_agent::store::Counts;
use epm_agent::store::{Bucket, Estimate, Store, FEW_ANSWERS};

use super::chart::{self, ChartData, DayIel, HourPresses};
use super::time_range::{parse_instant, Period, TimeRange};
use super::{aligned_table, open_store};

/// The command's options.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Start of the range, included: a date (2026-11-01, local midnight), a
    /// local time (2026-11-01T09:30), an RFC 3339 instant, today,
    /// yesterday, or an age (7d, 24h, 30m) [default: the oldest press]
    #[arg(long, value_name = "T")]
    pub since: Option<String>,
    /// End of the range, left out; the same forms as --since [default: the
    /// newest press]
    #[arg(long, value_name = "T")]
    pub until: Option<String>,
    /// One row per local day, local hour of the day (00-23, over all the
    /// days of the range), device, question or unit.
    #[arg(long, value_enum, default_value_t = Grouping::Day)]
    pub by: Grouping,
    /// JSON instead of a table.
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// CSV instead of a table.
    #[arg(long)]
    pub csv: bool,
    /// Also draw the IEL per day (with its 95 % interval) and the presses
    /// per hour of the day into this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    pub chart: Option<PathBuf>,
    /// Set the last PERIOD (7d, 24h, 30d: whole days or hours), ending at
    /// --until or now, against the PERIOD before it: each index with its
    /// interval, the change, and whether it is larger than the noise.
    #[arg(
        long,
        value_name = "PERIOD",
        value_parser = Period::parse,
        conflicts_with_all = ["since", "by", "csv", "chart"]
    )]
    pub compare: Option<Period>,
}

/// What one row of the report stands for.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Grouping {
    /// The shop's local calendar day.
    #[default]
    Day,
    /// The shop's local hour of the day, 00 to 23, over all days.
    Hour,
    Device,
    Question,
    Unit,
}

/// A group of presses: a day, an hour of the day, or a device, question or
/// unit by name (`None`: presses of a device without a question).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Group {
    Day(NaiveDate),
    Hour(u8),
    Named(Option<String>),
}

/// The report: one row per group in order, and their total.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub range: TimeRange,
    pub by: Grouping,
    pub groups: Vec<(Group, Counts)>,
    pub total: Counts,
}

/// `--compare`: the same totals for two periods of one length that touch.
#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    pub period: Period,
    /// The later period, ending at --until or now.
    pub this: (TimeRange, Counts),
    pub before: (TimeRange, Counts),
}

/// How an index moved from the period before to this one.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Change {
    /// This period's index minus the earlier one's, in points.
    pub points: f64,
    /// The largest change that is still noise (95 %), in points.
    pub noise: f64,
    pub larger_than_noise: bool,
    /// Either period has fewer than [`FEW_ANSWERS`] answers: the normal
    /// approximation behind the verdict is rough.
    pub few_answers: bool,
}

/// Prints the report as a table, JSON or CSV; draws the chart if asked.
pub fn run(settings: &Settings, args: &Args, out: &mut dyn Write) -> anyhow::Result<()> {
    if let Some(period) = &args.compare {
        return run_comparison(settings, args, period, out);
    }
    let range = TimeRange::parse(args.since.as_deref(), args.until.as_deref(), Local::now())?;
    let store = open_store(&settings.agent.data_dir)?;
    let report = Report::query(&store, range, args.by)?;
    if let Some(path) = &args.chart {
        chart::write_svg(path, &chart_data(&store, &report)?)?;
    }
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &report_json(&report))?;
        writeln!(out)?;
    } else if args.csv {
        write_csv(&report, out)?;
    } else {
        write_table(&report, out)?;
        if let Some(path) = &args.chart {
            writeln!(out, "chart: {}", path.display())?;
        }
    }
    Ok(())
}

fn run_comparison(
    settings: &Settings,
    args: &Args,
    period: &Period,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let now = Local::now();
    let until = match args.until.as_deref() {
        Some(text) => parse_instant(text, now)?,
        None => now.with_timezone(&Utc),
    };
    let store = open_store(&settings.agent.data_dir)?;
    let comparison = Comparison::query(&store, period.clone(), until)?;
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &comparison_json(&comparison))?;
        writeln!(out)?;
    } else {
        write_comparison(&comparison, out)?;
    }
    Ok(())
}

impl Grouping {
    /// The name of the option value, and of the group column.
    pub fn name(self) -> &'static str {
        match self {
            Grouping::Day => "day",
            Grouping::Hour => "hour",
            Grouping::Device => "device",
            Grouping::Question => "question",
            Grouping::Unit => "unit",
        }
    }

    /// What the store groups presses by for this grouping.
    fn bucket(self) -> Bucket {
        match self {
            Grouping::Day => Bucket::LocalDay,
            Grouping::Hour => Bucket::LocalHour,
            Grouping::Device => Bucket::Device,
            Grouping::Question => Bucket::Question,
            Grouping::Unit => Bucket::Unit,
        }
    }

    fn group(self, bucket: Value) -> anyhow::Result<Group> {
        let impossible = || anyhow::anyhow!("the store holds a press with an impossible time");
        match (self, bucket) {
            (Grouping::Day, Value::Integer(days)) => days
                .checked_mul(86_400)
                .and_then(|seconds| DateTime::from_timestamp(seconds, 0))
                .map(|midnight| Group::Day(midnight.date_naive()))
                .ok_or_else(impossible),
            (Grouping::Hour, Value::Integer(hour)) => u8::try_from(hour)
                .ok()
                .filter(|hour| *hour < 24)
                .map(Group::Hour)
                .ok_or_else(impossible),
            (Grouping::Device | Grouping::Question | Grouping::Unit, Value::Null) => {
                Ok(Group::Named(None))
            }
            (Grouping::Device | Grouping::Question | Grouping::Unit, Value::Text(name)) => {
                Ok(Group::Named(Some(name)))
            }
            (by, bucket) => anyhow::bail!(
                "the store holds a press with an unexpected {}: {bucket:?}",
                by.name()
            ),
        }
    }
}

impl Group {
    /// How the group is written in every format; `None` for a device
    /// without a question.
    pub fn label(&self) -> Option<String> {
        match self {
            Group::Day(day) => Some(day.format("%Y-%m-%d").to_string()),
            Group::Hour(hour) => Some(format!("{hour:02}:00")),
            Group::Named(name) => name.clone(),
        }
    }
}

impl Report {
    /// Counts the presses of `range` per group, in one query.
    pub fn query(store: &Store, range: TimeRange, by: Grouping) -> anyhow::Result<Report> {
        let rows = store
            .press_counts(
                range.since.map(|since| since.timestamp_millis()),
                range.until.map(|until| until.timestamp_millis()),
                by.bucket(),
            )
            .context("cannot read the report from the store")?;
        let mut groups = Vec::new();
        let mut total = Counts::default();
        for (bucket, counts) in rows {
            total.add(&counts);
            groups.push((by.group(bucket)?, counts));
        }
        Ok(Report {
            range,
            by,
            groups,
            total,
        })
    }
}

impl Comparison {
    /// Counts the presses of the `period` ending at `until` and of the one
    /// before it.
    pub fn query(
        store: &Store,
        period: Period,
        until: DateTime<Utc>,
    ) -> anyhow::Result<Comparison> {
        let (this, before) = TimeRange::this_and_before(period.length, until);
        let total = |range: TimeRange| -> anyhow::Result<(TimeRange, Counts)> {
            Ok((range, Report::query(store, range, Grouping::Day)?.total))
        };
        Ok(Comparison {
            this: total(this)?,
            before: total(before)?,
            period,
        })
    }

    /// The change of the IEL; `None` unless both periods have one.
    pub fn iel_change(&self) -> Option<Change> {
        Some(Change::between(
            self.this.1.iel_estimate()?,
            self.before.1.iel_estimate()?,
        ))
    }

    /// The change of the NPS; `None` unless both periods have scores.
    pub fn nps_change(&self) -> Option<Change> {
        Some(Change::between(
            self.this.1.nps_estimate()?,
            self.before.1.nps_estimate()?,
        ))
    }
}

impl Change {
    fn between(this: Estimate, before: Estimate) -> Change {
        Change {
            points: this.value - before.value,
            noise: this.noise_against(&before),
            larger_than_noise: this.differs_from(&before),
            few_answers: this.few_answers || before.few_answers,
        }
    }

    /// The verdict as the table says it.
    fn verdict(&self) -> &'static str {
        if self.larger_than_noise {
            "larger than the noise"
        } else {
            "within the noise"
        }
    }
}

/// The chart's numbers: the report's own rows when it is by day or hour,
/// otherwise one more query for each.
fn chart_data(store: &Store, report: &Report) -> anyhow::Result<ChartData> {
    let groups_by = |by: Grouping| -> anyhow::Result<Vec<(Group, Counts)>> {
        if report.by == by {
            Ok(report.groups.clone())
        } else {
            Ok(Report::query(store, report.range, by)?.groups)
        }
    };
    let iel_per_day: Vec<(NaiveDate, Option<DayIel>)> = groups_by(Grouping::Day)?
        .into_iter()
        .filter_map(|(group, counts)| match group {
            Group::Day(day) => Some((
                day,
                counts.iel_estimate().map(|estimate| DayIel {
                    value: one_decimal(estimate.value),
                    low: one_decimal(estimate.low),
                    high: one_decimal(estimate.high),
                }),
            )),
            _ => None,
        })
        .collect();
    let mut presses_per_hour = [HourPresses::default(); 24];
    for (group, counts) in groups_by(Grouping::Hour)? {
        if let Group::Hour(hour) = group {
            if let Some(slot) = presses_per_hour.get_mut(usize::from(hour)) {
                *slot = HourPresses {
                    counted: counts.presses.saturating_sub(counts.suppressed),
                    suppressed: counts.suppressed,
                };
            }
        }
    }
    let span = match (iel_per_day.first(), iel_per_day.last()) {
        (Some((first, _)), Some((last, _))) if first == last => {
            first.format("%Y-%m-%d").to_string()
        }
        (Some((first, _)), Some((last, _))) => {
            format!(
                "{} to {}",
                first.format("%Y-%m-%d"),
                last.format("%Y-%m-%d")
            )
        }
        _ => "No presses".to_string(),
    };
    let total = &report.total;
    Ok(ChartData {
        title: format!(
            "{span}: {} presses, IEL {}, NPS {}",
            total.presses,
            index_text(total.iel()),
            index_text(total.nps())
        ),
        iel_per_day,
        presses_per_hour,
    })
}

/// An index rounded to one decimal, as every format shows it (never −0.0).
fn one_decimal(index: f64) -> f64 {
    (index * 10.0).round() / 10.0 + 0.0
}

/// An index for people: one decimal, or `-` when it is undefined.
fn index_text(index: Option<f64>) -> String {
    index.map_or_else(
        || "-".to_string(),
        |index| format!("{:.1}", one_decimal(index)),
    )
}

/// The mark of a value from fewer than [`FEW_ANSWERS`] answers.
const FEW_ANSWERS_MARK: &str = "*";

/// The mark when `few_answers`, otherwise nothing.
fn mark(few_answers: bool) -> &'static str {
    if few_answers {
        FEW_ANSWERS_MARK
    } else {
        ""
    }
}

/// An index's three table cells: its value (marked when from few
/// answers), its 95 % interval, and the answers it is computed over.
fn estimate_cells(estimate: Option<Estimate>) -> [String; 3] {
    match estimate {
        None => ["-".into(), "-".into(), "0".into()],
        Some(estimate) => [
            format!(
                "{}{}",
                index_text(Some(estimate.value)),
                mark(estimate.few_answers)
            ),
            format!(
                "{} to {}",
                index_text(Some(estimate.low)),
                index_text(Some(estimate.high))
            ),
            estimate.answers.to_string(),
        ],
    }
}

/// Whether any of these values is from fewer than [`FEW_ANSWERS`] answers.
fn any_few_answers<'a>(counts: impl IntoIterator<Item = &'a Counts>) -> bool {
    counts.into_iter().any(|counts| {
        [counts.iel_estimate(), counts.nps_estimate()]
            .into_iter()
            .flatten()
            .any(|estimate| estimate.few_answers)
    })
}

/// The footnotes under every table of indices: what the columns mean (the
/// table's own `note` among them), and what the mark means when a value
/// carries it.
fn write_index_footnotes(note: &str, marked: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    writeln!(
        out,
        "\nIEL = 100 × (yes − no) / (yes + neutral + no); NPS = 100 × (scores 9-10 − scores 0-6) / scores.\n\
         95 %: the interval that holds the index with 95 % confidence; N: the answers it is computed over.\n\
         {note}"
    )?;
    if marked {
        writeln!(
            out,
            "{FEW_ANSWERS_MARK} from fewer than {FEW_ANSWERS} answers: too few to read alone, see its interval."
        )?;
    }
    Ok(())
}

/// An instant in this machine's local time, to the minute.
fn local_minute(at: DateTime<Utc>) -> String {
    at.with_timezone(&Local)
        .format("%Y-%m-%d %H:%M")
        .to_string()
}

/// Which presses the report covers, the range in this machine's local time.
fn range_heading(range: &TimeRange) -> String {
    match (range.since, range.until) {
        (Some(since), Some(until)) => {
            format!(
                "Presses from {} until {}",
                local_minute(since),
                local_minute(until)
            )
        }
        (Some(since), None) => format!("Presses from {}", local_minute(since)),
        (None, Some(until)) => format!("Presses until {}", local_minute(until)),
        (None, None) => "All stored presses".to_string(),
    }
}

fn write_table(report: &Report, out: &mut dyn Write) -> anyhow::Result<()> {
    let counts_cells = |counts: &Counts| {
        [
            counts.presses,
            counts.suppressed,
            counts.yes,
            counts.neutral,
            counts.no,
            counts.other,
            counts.scores,
        ]
        .into_iter()
        .map(|count| count.to_string())
        .chain(estimate_cells(counts.iel_estimate()))
        .chain(estimate_cells(counts.nps_estimate()))
    };
    let rows: Vec<Vec<String>> = report
        .groups
        .iter()
        .map(|(group, counts)| {
            std::iter::once(group.label().unwrap_or_else(|| "-".into()))
                .chain(counts_cells(counts))
                .collect()
        })
        .chain(std::iter::once(
            std::iter::once("total".to_string())
                .chain(counts_cells(&report.total))
                .collect(),
        ))
        .collect();
    let group_header = report.by.name().to_uppercase();
    writeln!(
        out,
        "{}, by {} (days and hours in the shop's local time)\n",
        range_heading(&report.range),
        report.by.name()
    )?;
    write!(
        out,
        "{}",
        aligned_table(
            &[
                &group_header,
                "PRESSES",
                "SUPPRESSED",
                "YES",
                "NEUTRAL",
                "NO",
                "OTHER",
                "SCORES",
                "IEL",
                "95 %",
                "N",
                "NPS",
                "95 %",
                "N"
            ],
            &rows
        )
    )?;
    let groups = report.groups.iter().map(|(_, counts)| counts);
    write_index_footnotes(
        "Suppressed presses (anti-spam) are in no other column and in neither index; \
         OTHER: unmapped keys and other answers; -: nothing to compute from.",
        any_few_answers(groups.chain([&report.total])),
        out,
    )
}

/// Both periods as rows, then a line per index with its change.
fn write_comparison(comparison: &Comparison, out: &mut dyn Write) -> anyhow::Result<()> {
    let Comparison {
        period,
        this,
        before,
    } = comparison;
    let local = |at: Option<DateTime<Utc>>| at.map(local_minute).unwrap_or_default();
    let rows: Vec<Vec<String>> = [("before", before), ("this", this)]
        .into_iter()
        .map(|(name, (range, counts))| {
            [name.to_string(), local(range.since), local(range.until)]
                .into_iter()
                .chain(estimate_cells(counts.iel_estimate()))
                .chain(estimate_cells(counts.nps_estimate()))
                .collect()
        })
        .collect();
    writeln!(
        out,
        "The last {period} against the {period} before it\n",
        period = period.text
    )?;
    write!(
        out,
        "{}",
        aligned_table(
            &["PERIOD", "FROM", "UNTIL", "IEL", "95 %", "N", "NPS", "95 %", "N"],
            &rows
        )
    )?;
    writeln!(out)?;
    let lines = [
        (
            "IEL",
            comparison.iel_change(),
            "yes, neutral or no answers",
            this.1.iel(),
            before.1.iel(),
        ),
        (
            "NPS",
            comparison.nps_change(),
            "scores",
            this.1.nps(),
            before.1.nps(),
        ),
    ];
    for (name, change, answers, this_index, before_index) in lines {
        match change {
            Some(change) => writeln!(
                out,
                "{name}: {:+.1} points, {} (up to ±{:.1} points is noise at 95 %){}",
                one_decimal(change.points),
                change.verdict(),
                one_decimal(change.noise),
                mark(change.few_answers)
            )?,
            None => {
                let missing = match (this_index, before_index) {
                    (None, None) => "either period",
                    (None, Some(_)) => "this period",
                    _ => "the period before",
                };
                writeln!(out, "{name}: no {answers} in {missing}, nothing to compare")?;
            }
        }
    }
    write_index_footnotes(
        "Suppressed presses (anti-spam) are in neither index; -: nothing to compute from.",
        any_few_answers([&this.1, &before.1]),
        out,
    )
}

/// The numbers of a group as JSON and CSV write them.
#[derive(Serialize)]
struct Numbers {
    presses: u64,
    suppressed: u64,
    yes: u64,
    neutral: u64,
    no: u64,
    other: u64,
    scores: u64,
    promoters: u64,
    detractors: u64,
    /// yes + neutral + no: what the IEL is computed over (the NPS over
    /// `scores`).
    answers: u64,
    iel: Option<f64>,
    iel_low: Option<f64>,
    iel_high: Option<f64>,
    nps: Option<f64>,
    nps_low: Option<f64>,
    nps_high: Option<f64>,
    /// The IEL or the NPS is from fewer than [`FEW_ANSWERS`] answers.
    few_answers: bool,
}

#[derive(Serialize)]
struct JsonReport {
    range: JsonRange,
    by: &'static str,
    groups: Vec<JsonGroup>,
    total: Numbers,
}

#[derive(Serialize)]
struct JsonRange {
    since: Option<String>,
    until: Option<String>,
}

#[derive(Serialize)]
struct JsonGroup {
    group: Option<String>,
    #[serde(flatten)]
    numbers: Numbers,
}

#[derive(Serialize)]
struct JsonComparison {
    period: String,
    this: JsonPeriod,
    before: JsonPeriod,
    iel: Option<JsonChange>,
    nps: Option<JsonChange>,
}

#[derive(Serialize)]
struct JsonPeriod {
    #[serde(flatten)]
    range: JsonRange,
    #[serde(flatten)]
    numbers: Numbers,
}

#[derive(Serialize)]
struct JsonChange {
    change: f64,
    noise: f64,
    larger_than_noise: bool,
    few_answers: bool,
}

impl From<&TimeRange> for JsonRange {
    fn from(range: &TimeRange) -> JsonRange {
        JsonRange {
            since: range.since.map(format_timestamp),
            until: range.until.map(format_timestamp),
        }
    }
}

impl From<Change> for JsonChange {
    fn from(change: Change) -> JsonChange {
        JsonChange {
            change: one_decimal(change.points),
            noise: one_decimal(change.noise),
            larger_than_noise: change.larger_than_noise,
            few_answers: change.few_answers,
        }
    }
}

impl From<&Counts> for Numbers {
    fn from(counts: &Counts) -> Numbers {
        let (iel, nps) = (counts.iel_estimate(), counts.nps_estimate());
        Numbers {
            presses: counts.presses,
            suppressed: counts.suppressed,
            yes: counts.yes,
            neutral: counts.neutral,
            no: counts.no,
            other: counts.other,
            scores: counts.scores,
            promoters: counts.promoters,
            detractors: counts.detractors,
            answers: counts.yes + counts.neutral + counts.no,
            iel: counts.iel().map(one_decimal),
            iel_low: iel.map(|iel| one_decimal(iel.low)),
            iel_high: iel.map(|iel| one_decimal(iel.high)),
            nps: counts.nps().map(one_decimal),
            nps_low: nps.map(|nps| one_decimal(nps.low)),
            nps_high: nps.map(|nps| one_decimal(nps.high)),
            few_answers: any_few_answers([counts]),
        }
    }
}

fn comparison_json(comparison: &Comparison) -> JsonComparison {
    let period = |(range, counts): &(TimeRange, Counts)| JsonPeriod {
        range: JsonRange::from(range),
        numbers: Numbers::from(counts),
    };
    JsonComparison {
        period: comparison.period.text.clone(),
        this: period(&comparison.this),
        before: period(&comparison.before),
        iel: comparison.iel_change().map(JsonChange::from),
        nps: comparison.nps_change().map(JsonChange::from),
    }
}

fn report_json(report: &Report) -> JsonReport {
    JsonReport {
        range: JsonRange::from(&report.range),
        by: report.by.name(),
        groups: report
            .groups
            .iter()
            .map(|(group, counts)| JsonGroup {
                group: group.label(),
                numbers: Numbers::from(counts),
            })
            .collect(),
        total: Numbers::from(&report.total),
    }
}

/// One line per group and a last `total` line; an undefined index is an
/// empty field.
fn write_csv(report: &Report, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut writer = csv::Writer::from_writer(out);
    writer.write_record([
        report.by.name(),
        "presses",
        "suppressed",
        "yes",
        "neutral",
        "no",
        "other",
        "scores",
        "promoters",
        "detractors",
        "iel",
        "nps",
        "answers",
        "iel_low",
        "iel_high",
        "nps_low",
        "nps_high",
        "few_answers",
    ])?;
    let lines = report
        .groups
        .iter()
        .map(|(group, counts)| (group.label().unwrap_or_default(), counts))
        .chain(std::iter::once(("total".to_string(), &report.total)));
    for (label, counts) in lines {
        let index =
            |index: Option<f64>| index.map_or_else(String::new, |index| format!("{index:.1}"));
        let numbers = Numbers::from(counts);
        let mut record = vec![label];
        record.extend(
            [
                counts.presses,
                counts.suppressed,
                counts.yes,
                counts.neutral,
                counts.no,
                counts.other,
                counts.scores,
                counts.promoters,
                counts.detractors,
            ]
            .iter()
            .map(u64::to_string),
        );
        record.extend([numbers.iel, numbers.nps].map(index));
        record.push(numbers.answers.to_string());
        record.extend(
            [
                numbers.iel_low,
                numbers.iel_high,
                numbers.nps_low,
                numbers.nps_high,
            ]
            .map(index),
        );
        record.push(numbers.few_answers.to_string());
        writer.write_record(&record)?;
    }
    writer.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use epm_agent::event::{Event, EventBody, PressFields};

    fn counts(yes: u64, neutral: u64, no: u64) -> Counts {
        Counts {
            yes,
            neutral,
            no,
            ..Counts::default()
        }
    }

    fn scores(promoters: u64, passives: u64, detractors: u64) -> Counts {
        Counts {
            scores: promoters + passives + detractors,
            promoters,
            detractors,
            ..Counts::default()
        }
    }

    fn check(counts: Counts, expected_iel: &str, expected_nps: &str) {
        assert_eq!(
            (index_text(counts.iel()), index_text(counts.nps())),
            (expected_iel.to_string(), expected_nps.to_string()),
            "{counts:?}"
        );
    }

    #[test]
    fn the_indices_as_the_spec_defines_them() {
        check(counts(5, 2, 1), "50.0", "-"); // 100 × (5 − 1) / 8
        check(counts(0, 0, 3), "-100.0", "-");
        check(counts(3, 0, 0), "100.0", "-");
        check(counts(0, 4, 0), "0.0", "-");
        check(counts(1, 1, 1), "0.0", "-");
        check(counts(2, 0, 1), "33.3", "-"); // 100 / 3
        check(counts(1, 0, 2), "-33.3", "-");
        check(Counts::default(), "-", "-");
        check(scores(2, 1, 1), "-", "25.0"); // 100 × (2 − 1) / 4
        check(scores(0, 3, 0), "-", "0.0");
        check(scores(0, 1, 2), "-", "-66.7"); // 100 × −2 / 3
                                              // 1 in 16: 6.25 rounds half away from zero.
        check(scores(1, 15, 0), "-", "6.3");
    }

    #[test]
    fn a_tiny_negative_index_is_shown_as_zero_not_minus_zero() {
        // 100 × (1000 − 1001) / 2001 = −0.04997…
        assert_eq!(index_text(counts(1000, 0, 1001).iel()), "0.0");
        assert_eq!(one_decimal(-0.04).to_string(), "0");
    }

    fn store_with(presses: &[(&str, i32, &str, Option<&str>, bool)]) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open_writer(dir.path()).expect("store");
        for (index, (ts, tz_offset_min, device, answer, suppressed)) in presses.iter().enumerate() {
            let event = Event {
                id: format!("event-{index}"),
                ts: ts.to_string(),
                tz_offset_min: *tz_offset_min,
                body: EventBody::Press(PressFields {
                    device: device.to_string(),
                    model: "prolan-501".into(),
                    unit: "301A0001".into(),
                    key: 1,
                    answer: answer.map(String::from),
                    question: None,
                    seq: index as u16,
                    rssi: None,
                    battery: None,
                    suppressed: *suppressed,
                }),
            };
            store.insert_fixture_event(&event).expect("insert");
        }
        (dir, store)
    }

    fn labels(report: &Report) -> Vec<(Option<String>, u64)> {
        report
            .groups
            .iter()
            .map(|(group, counts)| (group.label(), counts.presses))
            .collect()
    }

    #[test]
    fn days_and_hours_are_the_shops_local_time() {
        let (_dir, store) = store_with(&[
            // 00:40 on the 2nd in Moscow (UTC+3), still the 1st in UTC.
            ("2026-11-01T21:40:00Z", 180, "entrance", Some("yes"), false),
            // 23:10 on the 1st in New York (UTC−5), the 2nd in UTC.
            ("2026-11-02T04:10:00Z", -300, "entrance", Some("no"), false),
            ("2026-11-02T09:00:00Z", 180, "entrance", Some("no"), true),
        ]);
        let by_day = Report::query(&store, TimeRange::default(), Grouping::Day).expect("day");
        assert_eq!(
            labels(&by_day),
            [
                (Some("2026-11-01".into()), 1),
                (Some("2026-11-02".into()), 2)
            ]
        );
        let by_hour = Report::query(&store, TimeRange::default(), Grouping::Hour).expect("hour");
        assert_eq!(
            labels(&by_hour),
            [
                (Some("00:00".into()), 1),
                (Some("12:00".into()), 1),
                (Some("23:00".into()), 1)
            ]
        );
        assert_eq!(by_hour.total, by_day.total);
        assert_eq!(
            by_day.total,
            Counts {
                presses: 3,
                suppressed: 1,
                yes: 1,
                no: 1,
                ..Counts::default()
            }
        );
    }

    #[test]
    fn the_range_is_half_open_and_a_missing_question_is_its_own_group() {
        let (_dir, store) = store_with(&[
            ("2026-11-02T09:00:00Z", 180, "entrance", Some("yes"), false),
            ("2026-11-02T10:00:00Z", 180, "entrance", None, false),
            ("2026-11-02T11:00:00Z", 180, "entrance", Some("9"), false),
        ]);
        let range = TimeRange {
            since: Utc.with_ymd_and_hms(2026, 11, 2, 9, 0, 0).single(),
            until: Utc.with_ymd_and_hms(2026, 11, 2, 11, 0, 0).single(),
        };
        let report = Report::query(&store, range, Grouping::Question).expect("query");
        assert_eq!(labels(&report), [(None, 2)]);
        assert_eq!((report.total.yes, report.total.other), (1, 1));
    }
}
