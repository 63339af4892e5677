//! `--since` / `--until` as people type them: a date (`2026-11-01`, the
//! shop's local midnight), a local date and time (`2026-11-01T09:30`, or
//! with a space), an RFC 3339 instant (`2026-11-01T09:30:00Z`), `today`,
//! `yesterday`, or an age (`7d`, `24h`, `30m`: that long before now).
//! Also the length of `report --compare PERIOD` (`7d`, `24h`), and the two
//! periods it sets against each other.

use chrono::{DateTime, Duration, Local, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};

/// A half-open interval `[since, until)`; `None` is open on that side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimeRange {
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

impl TimeRange {
    /// Parses both bounds against `now` in the local time zone.
    pub fn parse(
        since: Option<&str>,
        until: Option<&str>,
        now: DateTime<Local>,
    ) -> anyhow::Result<TimeRange> {
        let since = since.map(|text| parse_instant(text, now)).transpose()?;
        let until = until.map(|text| parse_instant(text, now)).transpose()?;
        if let (Some(since), Some(until)) = (since, until) {
            anyhow::ensure!(since < until, "--since must be before --until");
        }
        Ok(TimeRange { since, until })
    }

    /// The period of `length` that ends at `until`, and the one of the same
    /// length just before it: (this, before), touching, never overlapping.
    pub fn this_and_before(length: Duration, until: DateTime<Utc>) -> (TimeRange, TimeRange) {
        let start = until - length;
        (
            TimeRange {
                since: Some(start),
                until: Some(until),
            },
            TimeRange {
                since: Some(start - length),
                until: Some(start),
            },
        )
    }

    /// The bounds in milliseconds since the epoch, for `events.ts_ms`.
    pub fn millis(&self) -> (i64, i64) {
        (
            self.since.map_or(i64::MIN, |at| at.timestamp_millis()),
            self.until.map_or(i64::MAX, |at| at.timestamp_millis()),
        )
    }
}

/// One bound; errors say what is accepted.
pub fn parse_instant(text: &str, now: DateTime<Local>) -> anyhow::Result<DateTime<Utc>> {
    let text = text.trim();
    let local_midnight = |date: NaiveDate| local(date.and_time(NaiveTime::MIN), text);
    match text {
        "today" => return local_midnight(now.date_naive()),
        "yesterday" => return local_midnight(now.date_naive() - Duration::days(1)),
        "now" => return Ok(now.with_timezone(&Utc)),
        _ => {}
    }
    if let Some(age) = parse_age(text) {
        return Ok(now.with_timezone(&Utc) - age);
    }
    if let Ok(instant) = DateTime::parse_from_rfc3339(text) {
        return Ok(instant.with_timezone(&Utc));
    }
    if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return local_midnight(date);
    }
    for format in [
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M:%S",
    ] {
        if let Ok(moment) = NaiveDateTime::parse_from_str(text, format) {
            return local(moment, text);
        }
    }
    anyhow::bail!(
        "\"{text}\" is not a time: use a date (2026-11-01), a local time (2026-11-01T09:30), \
         an RFC 3339 instant, today, yesterday, or an age such as 7d, 24h, 30m"
    )
}

/// The length of `--compare` as typed (`7d`) and as a duration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Period {
    pub text: String,
    pub length: Duration,
}

impl Period {
    /// [`parse_period`], keeping the text (a clap value parser).
    pub fn parse(text: &str) -> anyhow::Result<Period> {
        Ok(Period {
            text: text.to_string(),
            length: parse_period(text)?,
        })
    }
}

/// The length of `--compare`: a whole number of days or hours above zero,
/// digits then `d` or `h` and nothing else (`7d`, `24h`, `30d`). Strict,
/// because a period read wrongly compares the wrong weeks without a sign.
pub fn parse_period(text: &str) -> anyhow::Result<Duration> {
    let refuse = || {
        anyhow::anyhow!(
            "\"{text}\" is not a period: use a whole number of days or hours, \
             such as 7d, 24h or 30d"
        )
    };
    // The last character need not be one byte (`7д`).
    let unit_start = text.char_indices().last().map_or(0, |(index, _)| index);
    let (number, unit) = text.split_at(unit_start);
    if number.is_empty() || !number.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(refuse());
    }
    let count: i64 = number.parse().map_err(|_| refuse())?;
    let length = match unit {
        "d" => Duration::try_days(count),
        "h" => Duration::try_hours(count),
        _ => None,
    };
    // Twice the period is read, so twice must still be a time.
    length
        .filter(|length| count > 0 && length.checked_mul(2).is_some())
        .ok_or_else(refuse)
}

fn parse_age(text: &str) -> Option<Duration> {
    // The unit is the last character, which need not be one byte (`7д`).
    let unit_start = text.char_indices().last()?.0;
    let (number, unit) = text.split_at(unit_start);
    let count: i64 = number.parse().ok().filter(|count| *count >= 0)?;
    match unit {
        "d" => Duration::try_days(count),
        "h" => Duration::try_hours(count),
        "m" => Duration::try_minutes(count),
        _ => None,
    }
}

fn local(moment: NaiveDateTime, text: &str) -> anyhow::Result<DateTime<Utc>> {
    // On a daylight-saving gap there is no such local time; take the
    // earliest valid reading on an overlap.
    Local
        .from_local_datetime(&moment)
        .earliest()
        .map(|at| at.with_timezone(&Utc))
        .ok_or_else(|| {
            anyhow::anyhow!("\"{text}\" does not exist in the local time zone (a clock change)")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Local> {
        Local
            .with_ymd_and_hms(2026, 11, 22, 15, 30, 0)
            .single()
            .expect("a plain local time")
    }

    fn check(text: &str, expected: DateTime<Utc>) {
        assert_eq!(parse_instant(text, now()).expect(text), expected, "{text}");
    }

    fn local_time(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Local
            .with_ymd_and_hms(y, mo, d, h, mi, 0)
            .single()
            .expect("local")
            .with_timezone(&Utc)
    }

    #[test]
    fn the_forms_people_type() {
        check("today", local_time(2026, 11, 22, 0, 0));
        check("yesterday", local_time(2026, 11, 21, 0, 0));
        check("7d", now().with_timezone(&Utc) - Duration::days(7));
        check("24h", now().with_timezone(&Utc) - Duration::hours(24));
        check("30m", now().with_timezone(&Utc) - Duration::minutes(30));
        check("2026-11-01", local_time(2026, 11, 1, 0, 0));
        check("2026-11-01T09:30", local_time(2026, 11, 1, 9, 30));
        check("2026-11-01 09:30", local_time(2026, 11, 1, 9, 30));
        check(
            "2026-11-01T09:30:00Z",
            Utc.with_ymd_and_hms(2026, 11, 1, 9, 30, 0)
                .single()
                .expect("utc"),
        );
        check(
            "2026-11-01T12:30:00+03:00",
            Utc.with_ymd_and_hms(2026, 11, 1, 9, 30, 0)
                .single()
                .expect("utc"),
        );
    }

    #[test]
    fn nonsense_says_what_is_accepted() {
        for text in ["soon", "7w", "-3d", "2026-13-01", "", "7д", "д", "😀"] {
            let error = parse_instant(text, now()).expect_err(text).to_string();
            assert!(error.contains("7d"), "{text}: {error}");
        }
    }

    #[test]
    fn a_period_is_whole_days_or_hours_and_nothing_else() {
        assert_eq!(parse_period("7d").expect("7d"), Duration::days(7));
        assert_eq!(parse_period("24h").expect("24h"), Duration::hours(24));
        assert_eq!(parse_period("30d").expect("30d"), Duration::days(30));
        for text in [
            "",
            "d",
            "7",
            "0d",
            "+7d",
            "-7d",
            "7 d",
            " 7d",
            "7d ",
            "7.5d",
            "7w",
            "30m",
            "7D",
            "7дd",
            "7д",
            "１d",
            "99999999999999d",
        ] {
            let error = parse_period(text).expect_err(text).to_string();
            assert!(
                error.contains(&format!("\"{text}\" is not a period")) && error.contains("7d"),
                "{text}: {error}"
            );
        }
    }

    #[test]
    fn the_period_before_ends_where_this_one_starts() {
        let until = Utc
            .with_ymd_and_hms(2026, 11, 16, 0, 0, 0)
            .single()
            .expect("utc");
        let (this, before) = TimeRange::this_and_before(Duration::days(7), until);
        assert_eq!(this.until, Some(until));
        assert_eq!(this.since, Some(until - Duration::days(7)));
        assert_eq!(before.until, this.since);
        assert_eq!(before.since, Some(until - Duration::days(14)));
    }

    #[test]
    fn since_must_come_before_until() {
        assert!(TimeRange::parse(Some("today"), Some("yesterday"), now()).is_err());
        let range = TimeRange::parse(Some("yesterday"), Some("today"), now()).expect("valid");
        assert!(range.since < range.until);
    }
}
