//! Presses counted per answer in one aggregate query over the
//! `events_by_time` index (for `report`), so only one row per group leaves
//! the store, however many presses it holds.

use rusqlite::types::Value;

use super::{Store, StoreError};

/// The presses of one group, each counted in `presses` and in exactly one
/// of the other columns (`promoters` and `detractors` are part of `scores`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub presses: u64,
    pub suppressed: u64,
    pub yes: u64,
    pub neutral: u64,
    pub no: u64,
    /// Not suppressed, and the key is unmapped or the answer is none of the
    /// others.
    pub other: u64,
    /// Not suppressed, answer "0" to "10".
    pub scores: u64,
    /// Scores 9 and 10.
    pub promoters: u64,
    /// Scores 0 to 6.
    pub detractors: u64,
}

/// Answers below this many make an index too uncertain to read alone: its
/// values are marked (`few_answers`).
pub const FEW_ANSWERS: u64 = 30;

/// z for a two-sided 95 % interval of the normal distribution.
const Z_95: f64 = 1.959_963_984_540_054;

/// An index (100 × (p+ − p−), IEL or NPS) from one sample, with its 95 %
/// interval. The variance of a difference of two shares of one sample of
/// n answers is (p+ + p− − (p+ − p−)²) / n, so the standard error of the
/// index is 100 × sqrt(that) and the interval is the index ± 1.96 standard
/// errors (normal approximation), clamped to the index's range −100..100.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Estimate {
    pub value: f64,
    pub low: f64,
    pub high: f64,
    /// The standard error, in index points.
    pub standard_error: f64,
    /// n: the answers the index is computed over.
    pub answers: u64,
    /// Fewer than [`FEW_ANSWERS`] answers.
    pub few_answers: bool,
}

impl Estimate {
    /// The index 100 × (plus − minus) / answers; `None` without answers.
    pub fn of_difference(plus: u64, minus: u64, answers: u64) -> Option<Estimate> {
        if answers == 0 {
            return None;
        }
        let n = answers as f64;
        let (p_plus, p_minus) = (plus as f64 / n, minus as f64 / n);
        let difference = p_plus - p_minus;
        let variance = ((p_plus + p_minus - difference * difference) / n).max(0.0);
        let standard_error = 100.0 * variance.sqrt();
        // The same arithmetic as `Counts::iel`/`nps`, so that a value
        // rounds the same wherever it is shown (100 × (p+ − p−) can differ
        // in the last bit).
        let value = 100.0 * (plus as f64 - minus as f64) / n;
        Some(Estimate {
            value,
            low: (value - Z_95 * standard_error).max(-100.0),
            high: (value + Z_95 * standard_error).min(100.0),
            standard_error,
            answers,
            few_answers: answers < FEW_ANSWERS,
        })
    }

    /// Whether `self − earlier` is larger than the noise: the difference of
    /// two independent samples' indices is outside ±1.96 × sqrt(se₁² + se₂²).
    pub fn differs_from(&self, earlier: &Estimate) -> bool {
        (self.value - earlier.value).abs() > self.noise_against(earlier)
    }

    /// The largest change from `earlier` that is still noise, in index
    /// points: 1.96 × sqrt(se₁² + se₂²), the half-width of the 95 %
    /// interval of the difference of two independent samples' indices.
    pub fn noise_against(&self, earlier: &Estimate) -> f64 {
        Z_95 * self.standard_error.hypot(earlier.standard_error)
    }
}

/// What presses are grouped by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bucket {
    /// Whole local days since the epoch (each press's `ts` moved by its own
    /// `tz_offset_min`), an integer.
    LocalDay,
    /// The local hour of the day, 0 to 23, an integer.
    LocalHour,
    Device,
    /// The question, NULL for presses without one.
    Question,
    Unit,
}

impl Counts {
    /// IEL = 100 × (yes − no) / (yes + neutral + no); `None` without any of
    /// those answers.
    pub fn iel(&self) -> Option<f64> {
        let answered = self.yes + self.neutral + self.no;
        (answered > 0).then(|| 100.0 * (self.yes as f64 - self.no as f64) / answered as f64)
    }

    /// NPS = 100 × (promoters − detractors) / scores; `None` without scores.
    pub fn nps(&self) -> Option<f64> {
        (self.scores > 0)
            .then(|| 100.0 * (self.promoters as f64 - self.detractors as f64) / self.scores as f64)
    }

    /// IEL with its 95 % interval, `None` without a yes, neutral or no.
    pub fn iel_estimate(&self) -> Option<Estimate> {
        Estimate::of_difference(self.yes, self.no, self.yes + self.neutral + self.no)
    }

    /// NPS with its 95 % interval, `None` without scores.
    pub fn nps_estimate(&self) -> Option<Estimate> {
        Estimate::of_difference(self.promoters, self.detractors, self.scores)
    }

    /// Adds `other`'s presses to these.
    pub fn add(&mut self, other: &Counts) {
        self.presses += other.presses;
        self.suppressed += other.suppressed;
        self.yes += other.yes;
        self.neutral += other.neutral;
        self.no += other.no;
        self.other += other.other;
        self.scores += other.scores;
        self.promoters += other.promoters;
        self.detractors += other.detractors;
    }
}

impl Bucket {
    /// The SQL value a press is grouped by. Day and hour are counted in
    /// whole local days and hours since the epoch (integer arithmetic,
    /// cheaper per row than SQLite's date functions).
    fn sql(self) -> &'static str {
        match self {
            Bucket::LocalDay => "(ts_ms + tz_offset_min * 60000) / 86400000",
            Bucket::LocalHour => "(ts_ms + tz_offset_min * 60000) / 3600000 % 24",
            Bucket::Device => "device",
            Bucket::Question => "question",
            Bucket::Unit => "unit",
        }
    }
}

impl Store {
    /// The presses with `since_ms <= ts_ms < until_ms` (each bound only
    /// when given) counted per `bucket`, in bucket order: the bucket's
    /// value and its counts.
    pub fn press_counts(
        &self,
        since_ms: Option<i64>,
        until_ms: Option<i64>,
        bucket: Bucket,
    ) -> Result<Vec<(Value, Counts)>, StoreError> {
        let (sql, bounds) = aggregate_sql(since_ms, until_ms, bucket);
        let mut statement = self.connection.prepare(&sql)?;
        let rows = statement.query_map(rusqlite::params_from_iter(bounds), |row| {
            Ok((
                row.get::<_, Value>(0)?,
                Counts {
                    presses: row.get(1)?,
                    suppressed: row.get(2)?,
                    yes: row.get(3)?,
                    neutral: row.get(4)?,
                    no: row.get(5)?,
                    other: row.get(6)?,
                    scores: row.get(7)?,
                    promoters: row.get(8)?,
                    detractors: row.get(9)?,
                },
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// The scores of the NPS, as SQL text literals.
const SCORES_SQL: &str = "'0', '1', '2', '3', '4', '5', '6', '7', '8', '9', '10'";
const PROMOTERS_SQL: &str = "'9', '10'";
const DETRACTORS_SQL: &str = "'0', '1', '2', '3', '4', '5', '6'";

/// The aggregate query and its parameters. A bound is only in the query
/// when it is given: a range uses `events_by_time`, no range scans the
/// table in order (faster than visiting every row through the index).
fn aggregate_sql(
    since_ms: Option<i64>,
    until_ms: Option<i64>,
    bucket: Bucket,
) -> (String, Vec<i64>) {
    let mut conditions = vec!["type = 'press'"];
    let mut bounds = Vec::new();
    if let Some(since_ms) = since_ms {
        conditions.push("ts_ms >= ?");
        bounds.push(since_ms);
    }
    if let Some(until_ms) = until_ms {
        conditions.push("ts_ms < ?");
        bounds.push(until_ms);
    }
    let counted = "NOT suppressed AND";
    let sql = format!(
        "SELECT {bucket} AS bucket,
                count(*),
                count(*) FILTER (WHERE suppressed),
                count(*) FILTER (WHERE {counted} answer = 'yes'),
                count(*) FILTER (WHERE {counted} answer = 'neutral'),
                count(*) FILTER (WHERE {counted} answer = 'no'),
                count(*) FILTER (WHERE {counted} (answer IS NULL
                    OR answer NOT IN ('yes', 'neutral', 'no', {SCORES_SQL}))),
                count(*) FILTER (WHERE {counted} answer IN ({SCORES_SQL})),
                count(*) FILTER (WHERE {counted} answer IN ({PROMOTERS_SQL})),
                count(*) FILTER (WHERE {counted} answer IN ({DETRACTORS_SQL}))
         FROM events
         WHERE {conditions}
         GROUP BY bucket
         ORDER BY bucket",
        bucket = bucket.sql(),
        conditions = conditions.join(" AND "),
    );
    (sql, bounds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_is_the_index_plus_minus_two_standard_errors() {
        // 60 yes, 20 neutral, 20 no: p+ = 0.6, p- = 0.2, variance
        // (0.8 - 0.16) / 100 = 0.0064, standard error 8 points.
        let estimate = Estimate::of_difference(60, 20, 100).expect("answers");
        assert!((estimate.value - 40.0).abs() < 1e-9);
        assert!((estimate.standard_error - 8.0).abs() < 1e-9);
        assert!((estimate.low - (40.0 - 1.959_963_984_540_054 * 8.0)).abs() < 1e-9);
        assert!((estimate.high - (40.0 + 1.959_963_984_540_054 * 8.0)).abs() < 1e-9);
        assert!(!estimate.few_answers);
        // All yes: no variance, and the bounds stay inside the range.
        let all_yes = Estimate::of_difference(10, 0, 10).expect("answers");
        assert_eq!(
            (all_yes.low, all_yes.high, all_yes.few_answers),
            (100.0, 100.0, true)
        );
        let wide = Estimate::of_difference(2, 0, 3).expect("answers");
        assert!(wide.high <= 100.0 && wide.low >= -100.0);
        assert_eq!(Estimate::of_difference(0, 0, 0), None);
    }

    #[test]
    fn a_change_counts_only_beyond_the_noise_of_both_samples() {
        let this_week = Estimate::of_difference(300, 100, 500).expect("answers"); // 40
        let forty_less = Estimate::of_difference(100, 100, 500).expect("answers"); // 0
        let two_less = Estimate::of_difference(295, 105, 500).expect("answers"); // 38
                                                                                 // se 100 × sqrt((0.8 − 0.16) / 500) = 3.578 and 100 × sqrt(0.4 /
                                                                                 // 500) = 2.828 points: noise 1.96 × sqrt(3.578² + 2.828²) = 8.94.
        assert!((this_week.noise_against(&forty_less) - 8.939).abs() < 0.001);
        assert!(this_week.differs_from(&forty_less));
        assert!(!this_week.differs_from(&two_less));
    }

    #[test]
    fn a_range_is_read_through_the_time_index() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open_writer(dir.path()).expect("store");
        let since_ms = Some(1_793_577_600_000); // 2026-11-02T00:00:00Z
        for bucket in [
            Bucket::LocalDay,
            Bucket::LocalHour,
            Bucket::Device,
            Bucket::Question,
            Bucket::Unit,
        ] {
            let (sql, bounds) = aggregate_sql(since_ms, None, bucket);
            let mut statement = store
                .connection
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .expect("explain");
            let plan: Vec<String> = statement
                .query_map(rusqlite::params_from_iter(bounds), |row| row.get(3))
                .expect("plan")
                .collect::<Result<_, _>>()
                .expect("plan rows");
            assert!(
                plan.iter()
                    .any(|step| step.contains("USING INDEX events_by_time (ts_ms>?)")),
                "{bucket:?}: {plan:?}"
            );
        }
    }
}
