//! `epm-agent report`, the binary, on stores seeded through the library's
//! writer as the daemon would: the fixture `fixtures/report/presses.txt`
//! (46 presses over five days, with suppressed presses, unmapped keys and
//! an answer that is no index's) and the numbers computed by hand below,
//! in every grouping, range and format, with the 95 % intervals, and the
//! chart it draws; and `--compare` on two weeks of a few hundred answers
//! (`fixtures/report/weeks.txt`) that differ by 40 points or by 2.
//!
//! The agent runs with `TZ=MSK-3` (Moscow, a POSIX rule that needs no time
//! zone database), the shop's own offset, so that a date given to --since
//! means the shop's midnight.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use chrono::{Duration, NaiveDateTime, Utc};
use serde_json::{json, Value};
use tempfile::TempDir;

use epm_agent::event::NewPress;
use epm_agent::protocol::UnitId;
use epm_agent::store::{writer, Store, WriterOptions};

/// The shop's offset from UTC in the fixture, and the agent's time zone.
const TZ_OFFSET_MIN: i32 = 180;
const TZ: &str = "MSK-3";

/// One expected row: the group, then presses, suppressed, yes, neutral,
/// no, other, scores, promoters, detractors, then IEL and NPS.
struct Row(&'static str, [u64; 9], Option<f64>, Option<f64>);

#[test]
fn by_day_the_numbers_are_the_hand_computed_ones() {
    let fixture = Fixture::from_table("presses.txt");
    check(
        &fixture,
        &[],
        "day",
        &[
            // yes 4, neutral 1, no 1 → IEL 100×(4−1)/6 = 50.0; the 00:40
            // press is the 2nd here although it is the 1st in UTC.
            // scores 10, 9, 7, 3 → NPS 100×(2−1)/4 = 25.0.
            // 12 = 1 suppressed + 4 + 1 + 1 + 1 unmapped + 4 scores.
            Row(
                "2026-11-02",
                [12, 1, 4, 1, 1, 1, 4, 2, 1],
                Some(50.0),
                Some(25.0),
            ),
            // yes 2, neutral 2, no 2 → 100×0/6 = 0.0 (a suppressed no and
            // neutral left out); scores 10, 10, 8, 6, 5 (the suppressed 0
            // left out) → 100×(2−2)/5 = 0.0.
            Row(
                "2026-11-03",
                [14, 3, 2, 2, 2, 0, 5, 2, 2],
                Some(0.0),
                Some(0.0),
            ),
            // yes 1, neutral 1, no 3 → 100×(1−3)/5 = −40.0; "call" is
            // other; no scores → NPS null.
            Row("2026-11-04", [6, 0, 1, 1, 3, 1, 0, 0, 0], Some(-40.0), None),
            // the only yes is suppressed, the other press unmapped → IEL
            // null (0 / 0); scores 9, 10, 9 → 100×3/3 = 100.0.
            Row("2026-11-05", [5, 1, 0, 0, 0, 1, 3, 3, 0], None, Some(100.0)),
            // yes 5, neutral 1 → 100×5/6 = 83.33 → 83.3; scores 7, 8, 2 →
            // 100×(0−1)/3 = −33.3.
            Row(
                "2026-11-06",
                [9, 0, 5, 1, 0, 0, 3, 0, 1],
                Some(83.3),
                Some(-33.3),
            ),
            // yes 12, neutral 5, no 6 → 100×(12−6)/23 = 26.09 → 26.1;
            // promoters 7, detractors 4 of 15 → 100×3/15 = 20.0.
            Row(
                "total",
                [46, 5, 12, 5, 6, 3, 15, 7, 4],
                Some(26.1),
                Some(20.0),
            ),
        ],
    );
}

/// Z of a two-sided 95 % interval.
const Z: f64 = 1.959_963_984_540_054;

#[test]
fn by_day_the_intervals_are_the_hand_computed_ones() {
    // SE = 100 × sqrt((p+ + p− − (p+ − p−)²) / n); interval ±1.96 SE,
    // clamped to −100..100. Every value here is from fewer than 30 answers.
    let json = Fixture::from_table("presses.txt").report_json(&[]);
    let intervals = |group: &Value| {
        [
            "answers",
            "iel_low",
            "iel_high",
            "scores",
            "nps_low",
            "nps_high",
            "few_answers",
        ]
        .map(|key| group[key].clone())
    };
    let groups: Vec<[Value; 7]> = json["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .map(intervals)
        .collect();
    assert_eq!(
        groups,
        [
            // IEL 50: p+ 4/6, p− 1/6, (5/6 − 1/4) / 6 = 0.09722, SE 31.18,
            // 50 − 61.11 = −11.1, 50 + 61.11 clamped to 100.
            // NPS 25: p+ 2/4, p− 1/4, (3/4 − 1/16) / 4 = 0.17188, SE 41.46,
            // 25 − 81.26 = −56.3 and 100.
            [
                json!(6),
                json!(-11.1),
                json!(100.0),
                json!(4),
                json!(-56.3),
                json!(100.0),
                json!(true),
            ],
            // IEL 0: p± 2/6, (2/3 − 0) / 6 = 0.11111, SE 33.33, ±65.33.
            // NPS 0: p± 2/5, (4/5 − 0) / 5 = 0.16, SE 40, ±78.40.
            [
                json!(6),
                json!(-65.3),
                json!(65.3),
                json!(5),
                json!(-78.4),
                json!(78.4),
                json!(true),
            ],
            // IEL −40: p+ 1/5, p− 3/5, (4/5 − 4/25) / 5 = 0.128, SE 35.78,
            // −40 − 70.12 clamped to −100, −40 + 70.12 = 30.1. No scores.
            [
                json!(5),
                json!(-100.0),
                json!(30.1),
                json!(0),
                Value::Null,
                Value::Null,
                json!(true),
            ],
            // No IEL. NPS 100 from 3 promoters of 3: (1 − 1) / 3 = 0, an
            // interval of no width: why few answers are marked.
            [
                json!(0),
                Value::Null,
                Value::Null,
                json!(3),
                json!(100.0),
                json!(100.0),
                json!(true),
            ],
            // IEL 83.3: p+ 5/6, p− 0, (5/6 − 25/36) / 6 = 0.02315, SE
            // 15.21, 83.33 − 29.82 = 53.5 and 100. NPS −33.3: p− 1/3,
            // (1/3 − 1/9) / 3 = 0.07407, SE 27.22, −33.33 ∓ 53.34 = −86.7
            // and 20.0.
            [
                json!(6),
                json!(53.5),
                json!(100.0),
                json!(3),
                json!(-86.7),
                json!(20.0),
                json!(true),
            ],
        ]
    );
    // The total: IEL 26.1 from p+ 12/23, p− 6/23: (18/23 − 36/529) / 23 =
    // 0.031068, SE 17.63, 26.09 ∓ 34.55 = −8.5 and 60.6. NPS 20 from p+
    // 7/15, p− 4/15: (11/15 − 1/25) / 15 = 0.046222, SE 21.50, 20 ∓ 42.14
    // = −22.1 and 62.1.
    assert_eq!(
        intervals(&json["total"]),
        [
            json!(23),
            json!(-8.5),
            json!(60.6),
            json!(15),
            json!(-22.1),
            json!(62.1),
            json!(true)
        ]
    );
    // The arithmetic above, once more from its inputs: the one
    // standard-error the comments use.
    let standard_error = |plus: f64, minus: f64, n: f64| {
        let (p, m) = (plus / n, minus / n);
        100.0 * ((p + m - (p - m).powi(2)) / n).sqrt()
    };
    assert!((Z * standard_error(12.0, 6.0, 23.0) - 34.55).abs() < 0.01);
    assert!((Z * standard_error(7.0, 4.0, 15.0) - 42.14).abs() < 0.01);
}

#[test]
fn the_table_and_csv_show_the_interval_and_answers_beside_each_value() {
    let fixture = Fixture::from_table("presses.txt");
    let table = fixture.report(&["--since", "2026-11-04", "--until", "2026-11-06"]);
    assert!(
        table.contains(
            "DAY         PRESSES  SUPPRESSED  YES  NEUTRAL  NO  OTHER  SCORES  IEL     95 %            N  NPS     95 %            N\n\
             2026-11-04  6        0           1    1        3   1      0       -40.0*  -100.0 to 30.1  5  -       -               0\n\
             2026-11-05  5        1           0    0        0   1      3       -       -               0  100.0*  100.0 to 100.0  3\n\
             total       11       1           1    1        3   2      3       -40.0*  -100.0 to 30.1  5  100.0*  100.0 to 100.0  3\n"
        ),
        "{table}"
    );
    assert!(
        table.ends_with(
            "\n* from fewer than 30 answers: too few to read alone, see its interval.\n"
        ),
        "{table}"
    );
}

#[test]
fn by_device_question_and_unit() {
    let fixture = Fixture::from_table("presses.txt");
    // checkout: scores only, 15 and one suppressed 0 → NPS 100×(7−4)/15.
    let checkout = [16, 1, 0, 0, 0, 0, 15, 7, 4];
    // entrance: every yes / neutral / no, so the total's IEL 26.1.
    let entrance = [30, 4, 12, 5, 6, 3, 0, 0, 0];
    let total = Row(
        "total",
        [46, 5, 12, 5, 6, 3, 15, 7, 4],
        Some(26.1),
        Some(20.0),
    );
    check(
        &fixture,
        &["--by", "device"],
        "device",
        &[
            Row("checkout", checkout, None, Some(20.0)),
            Row("entrance", entrance, Some(26.1), None),
            Row(total.0, total.1, total.2, total.3),
        ],
    );
    check(
        &fixture,
        &["--by", "question"],
        "question",
        &[
            Row("recommend", entrance, Some(26.1), None),
            Row("score", checkout, None, Some(20.0)),
            Row(total.0, total.1, total.2, total.3),
        ],
    );
    check(
        &fixture,
        &["--by", "unit"],
        "unit",
        &[
            Row("202B0001", checkout, None, Some(20.0)),
            // the 2nd and 3rd: yes 6, neutral 3, no 3 → 100×3/12 = 25.0.
            Row("301A0001", [16, 3, 6, 3, 3, 1, 0, 0, 0], Some(25.0), None),
            // the 4th to 6th: yes 6, neutral 2, no 3 → 100×3/11 = 27.27;
            // "call" and an unmapped key are other.
            Row("301A0002", [14, 1, 6, 2, 3, 2, 0, 0, 0], Some(27.3), None),
            Row(total.0, total.1, total.2, total.3),
        ],
    );
}

#[test]
fn by_hour_of_the_day_over_all_days() {
    let fixture = Fixture::from_table("presses.txt");
    check(
        &fixture,
        &["--by", "hour"],
        "hour",
        &[
            Row("00:00", [1, 0, 1, 0, 0, 0, 0, 0, 0], Some(100.0), None),
            // yes 2, neutral 1 → 100×2/3 = 66.7; two suppressed, one unmapped.
            Row("09:00", [6, 2, 2, 1, 0, 1, 0, 0, 0], Some(66.7), None),
            Row("10:00", [3, 1, 0, 0, 2, 0, 0, 0, 0], Some(-100.0), None),
            Row("11:00", [3, 0, 1, 1, 0, 1, 0, 0, 0], Some(50.0), None),
            // scores 10, 10, 10, 9, 7 → 100×4/5 = 80.0.
            Row("12:00", [7, 1, 0, 0, 0, 1, 5, 4, 0], None, Some(80.0)),
            Row("13:00", [5, 0, 1, 1, 1, 0, 2, 2, 0], Some(0.0), Some(100.0)),
            Row("14:00", [3, 0, 2, 1, 0, 0, 0, 0, 0], Some(66.7), None),
            // one 8: a passive → 100×0/1.
            Row("15:00", [1, 0, 0, 0, 0, 0, 1, 0, 0], None, Some(0.0)),
            Row("16:00", [2, 1, 0, 1, 0, 0, 0, 0, 0], Some(0.0), None),
            // scores 6, 8 → 100×(0−1)/2 = −50.0.
            Row(
                "17:00",
                [4, 0, 0, 0, 2, 0, 2, 0, 1],
                Some(-100.0),
                Some(-50.0),
            ),
            // scores 7, 3, 9 → 100×(1−1)/3 = 0.0.
            Row("18:00", [5, 0, 1, 0, 1, 0, 3, 1, 1], Some(0.0), Some(0.0)),
            Row(
                "19:00",
                [4, 0, 2, 0, 0, 0, 2, 0, 2],
                Some(100.0),
                Some(-100.0),
            ),
            Row("20:00", [2, 0, 2, 0, 0, 0, 0, 0, 0], Some(100.0), None),
            Row(
                "total",
                [46, 5, 12, 5, 6, 3, 15, 7, 4],
                Some(26.1),
                Some(20.0),
            ),
        ],
    );
}

#[test]
fn since_and_until_take_the_shops_dates_and_utc_instants() {
    let fixture = Fixture::from_table("presses.txt");
    // The 3rd and 4th: yes 2+1, neutral 2+1, no 2+3 → 100×(3−5)/11 =
    // −18.18; scores of the 3rd only → 0.0.
    check(
        &fixture,
        &["--since", "2026-11-03", "--until", "2026-11-05"],
        "day",
        &[
            Row(
                "2026-11-03",
                [14, 3, 2, 2, 2, 0, 5, 2, 2],
                Some(0.0),
                Some(0.0),
            ),
            Row("2026-11-04", [6, 0, 1, 1, 3, 1, 0, 0, 0], Some(-40.0), None),
            Row(
                "total",
                [20, 3, 3, 3, 5, 1, 5, 2, 2],
                Some(-18.2),
                Some(0.0),
            ),
        ],
    );
    // The shop's midnight, not UTC's: the 00:40 press (21:40 UTC on the
    // 1st) is after the first and before the second.
    check(
        &fixture,
        &["--until", "2026-11-02"],
        "day",
        &[Row("total", [0; 9], None, None)],
    );
    check(
        &fixture,
        &["--since", "2026-11-02", "--until", "2026-11-02 09:00"],
        "day",
        &[
            Row("2026-11-02", [1, 0, 1, 0, 0, 0, 0, 0, 0], Some(100.0), None),
            Row("total", [1, 0, 1, 0, 0, 0, 0, 0, 0], Some(100.0), None),
        ],
    );
    // 21:00-22:00 UTC on the 1st holds that press, grouped in its local day.
    let mut json = fixture.report_json(&[
        "--since",
        "2026-11-01T21:00:00Z",
        "--until",
        "2026-11-01T22:00:00Z",
    ]);
    assert_eq!(
        json["range"],
        json!({"since": "2026-11-01T21:00:00.000Z", "until": "2026-11-01T22:00:00.000Z"})
    );
    without_bounds(&mut json["groups"][0]);
    assert_eq!(
        json["groups"],
        json!([expected(&Row(
            "2026-11-02",
            [1, 0, 1, 0, 0, 0, 0, 0, 0],
            Some(100.0),
            None
        ))])
    );
}

#[test]
fn a_range_without_presses_has_zeros_and_no_indices() {
    let fixture = Fixture::from_table("presses.txt");
    check(
        &fixture,
        &["--since", "2027-01-01"],
        "day",
        &[Row("total", [0; 9], None, None)],
    );
    let table = fixture.report(&["--since", "2027-01-01"]);
    assert!(
        table.contains(
            "\ntotal  0        0           0    0        0   0      0       -    -     0  -    -     0\n"
        ),
        "{table}"
    );
    // Nothing marked, so no footnote for the mark.
    assert!(!table.contains("fewer than 30"), "{table}");
}

#[test]
fn an_age_counts_back_from_now() {
    let fixture = Fixture::answered_ago(&[(Duration::days(10), "no"), (Duration::hours(1), "yes")]);
    let json = fixture.report_json(&["--since", "7d"]);
    assert_eq!(json["total"]["presses"], 1, "{json}");
    assert_eq!(json["total"]["iel"], 100.0, "{json}");
    assert_eq!(fixture.report_json(&[])["total"]["iel"], 0.0);
}

#[test]
fn the_table_shows_undefined_indices_as_a_dash() {
    let fixture = Fixture::from_table("presses.txt");
    assert_eq!(
        fixture.report(&["--by", "device"]),
        "\
All stored presses, by device (days and hours in the shop's local time)

DEVICE    PRESSES  SUPPRESSED  YES  NEUTRAL  NO  OTHER  SCORES  IEL    95 %          N   NPS    95 %           N
checkout  16       1           0    0        0   0      15      -      -             0   20.0*  -22.1 to 62.1  15
entrance  30       4           12   5        6   3      0       26.1*  -8.5 to 60.6  23  -      -              0
total     46       5           12   5        6   3      15      26.1*  -8.5 to 60.6  23  20.0*  -22.1 to 62.1  15

IEL = 100 × (yes − no) / (yes + neutral + no); NPS = 100 × (scores 9-10 − scores 0-6) / scores.
95 %: the interval that holds the index with 95 % confidence; N: the answers it is computed over.
Suppressed presses (anti-spam) are in no other column and in neither index; OTHER: unmapped keys and other answers; -: nothing to compute from.
* from fewer than 30 answers: too few to read alone, see its interval.
"
    );
}

#[test]
fn csv_has_a_line_per_group_and_the_total() {
    let fixture = Fixture::from_table("presses.txt");
    assert_eq!(
        fixture.report(&["--csv", "--since", "2026-11-04", "--until", "2026-11-06"]),
        "\
day,presses,suppressed,yes,neutral,no,other,scores,promoters,detractors,iel,nps,answers,iel_low,iel_high,nps_low,nps_high,few_answers
2026-11-04,6,0,1,1,3,1,0,0,0,-40.0,,5,-100.0,30.1,,,true
2026-11-05,5,1,0,0,0,1,3,3,0,,100.0,0,,,100.0,100.0,true
total,11,1,1,1,3,2,3,3,0,-40.0,100.0,5,-100.0,30.1,100.0,100.0,true
"
    );
}

#[test]
fn json_and_csv_together_are_refused() {
    let fixture = Fixture::from_table("presses.txt");
    let output = fixture.run(&["--json", "--csv"]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot be used with"), "{stderr}");
}

#[test]
fn the_chart_draws_the_iel_per_day_and_the_presses_per_hour() {
    let fixture = Fixture::from_table("presses.txt");
    let chart = fixture.dir.path().join("report.svg");
    let table = fixture.report(&["--chart", path_text(&chart)]);
    assert!(
        table.ends_with(&format!("chart: {}\n", chart.display())),
        "{table}"
    );
    let svg = std::fs::read_to_string(&chart).expect("the chart file");
    assert_well_formed_svg(&svg);
    for text in [
        "2026-11-02 to 2026-11-06: 46 presses, IEL 26.1, NPS 20.0",
        "IEL per day",
        "Presses per hour of the day",
        "Mon 02 Nov",
        "Fri 06 Nov",
    ] {
        assert!(svg.contains(text), "{text} is missing from the chart");
    }

    // The IEL (orange): a point per day that has one (not the 5th), one
    // line through the 2nd to 4th (50, 0, −40), the 6th (83) alone.
    let points = elements(&svg, "<circle", "#FF7F0E");
    assert_eq!(points.len(), 4, "{points:?}");
    let lines = elements(&svg, "<polyline", "#FF7F0E");
    assert_eq!(lines.len(), 1, "{lines:?}");
    let heights: Vec<f64> = attribute(lines[0], "points")
        .split_whitespace()
        .map(|point| {
            let (_, y) = point.split_once(',').expect("x,y");
            y.parse().expect("a number")
        })
        .collect();
    assert_eq!(heights.len(), 3, "{heights:?}");
    // The y axis is linear: 50 → 0 is 5 steps of 10, 0 → −40 is 4.
    let (down_to_zero, down_to_minus_40) = (heights[1] - heights[0], heights[2] - heights[1]);
    assert!(
        (down_to_zero / down_to_minus_40 - 5.0 / 4.0).abs() < 0.05,
        "{heights:?}"
    );

    // The 95 % interval: a band under that line (its three highs, then its
    // three lows), and a bar for the 6th alone.
    let bands = elements(&svg, "<polygon", "#FFD2A8");
    assert_eq!(bands.len(), 1, "{bands:?}");
    assert_eq!(elements(&svg, "<polyline", "#FFD2A8").len(), 1);
    let band: Vec<f64> = attribute(bands[0], "points")
        .split_whitespace()
        .map(|point| {
            let (_, y) = point.split_once(',').expect("x,y");
            y.parse().expect("a number")
        })
        .collect();
    assert_eq!(band.len(), 6, "{band:?}");
    let widths: Vec<f64> = (0..3).map(|day| band[5 - day] - band[day]).collect();
    for (day, line_y) in heights.iter().enumerate() {
        assert!(band[day] < *line_y && *line_y < band[5 - day], "{band:?}");
    }
    // −11.1 to 100 (clamped) on the 2nd, −65.3 to 65.3 on the 3rd.
    assert!(
        (widths[1] / widths[0] - 130.6 / 111.1).abs() < 0.02,
        "{widths:?}"
    );

    // The bars: counted presses (blue) in the 13 hours that have some,
    // suppressed ones (grey) stacked on 09, 10, 12 and 16; and a box of
    // each in the legend.
    assert_eq!(elements(&svg, "<rect", "#1F77B4").len(), 13 + 1);
    assert_eq!(elements(&svg, "<rect", "#BEBEBE").len(), 4 + 1);
    // The legend's box comes last.
    let counted_heights: Vec<f64> = elements(&svg, "<rect", "#1F77B4")[..13]
        .iter()
        .map(|rect| attribute(rect, "height").parse().expect("a height"))
        .collect();
    // 00:00 has one counted press, 12:00 the most: 7 − 1 suppressed = 6.
    let one = counted_heights[0];
    let highest = counted_heights.iter().copied().fold(0.0, f64::max);
    assert!((highest / one - 6.0).abs() < 0.3, "{counted_heights:?}");
}

/// `docs/report.md` shows this picture; `UPDATE_EXPECT=1 cargo test --test
/// report` draws it again after a change to the chart.
#[test]
fn the_documented_example_chart_is_the_fixtures() {
    let fixture = Fixture::from_table("presses.txt");
    let chart = fixture.dir.path().join("report-example.svg");
    fixture.report(&[
        "--since",
        "2026-11-02",
        "--until",
        "2026-11-07",
        "--chart",
        path_text(&chart),
    ]);
    let drawn = std::fs::read_to_string(&chart).expect("the chart file");
    let documented = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/report-example.svg");
    if std::env::var_os("UPDATE_EXPECT").is_some() {
        std::fs::write(&documented, &drawn).expect("update the documented chart");
    }
    let shown = std::fs::read_to_string(&documented).unwrap_or_default();
    assert!(
        shown == drawn,
        "docs/report-example.svg is not what the fixture draws: run UPDATE_EXPECT=1 cargo test --test report"
    );
}

/// Two weeks of a few hundred answers each whose IEL and NPS rise by 40
/// points: far beyond the noise.
#[test]
fn compare_says_a_change_of_40_points_is_larger_than_the_noise() {
    let fixture = Fixture::from_weeks("forty");
    let json = fixture.report_json(&["--compare", "7d", "--until", "2026-11-16"]);
    assert_eq!(json["period"], "7d");
    // This week: IEL 40, p+ 0.55, p− 0.15, (0.7 − 0.16) / 400 = 0.00135,
    // SE 3.674, 40 ∓ 7.20. NPS 40, p+ 160/300, p− 40/300, (2/3 − 0.16) /
    // 300 = 0.001689, SE 4.110, 40 ∓ 8.06.
    check_period(
        &json["this"],
        ["2026-11-08T21:00:00.000Z", "2026-11-15T21:00:00.000Z"],
        [400, 300],
        [40.0, 32.8, 47.2],
        [40.0, 31.9, 48.1],
    );
    // The week before: IEL 0, p± 0.35, 0.7 / 400 = 0.00175, SE 4.183, ∓
    // 8.20. NPS 0, p± 1/3, (2/3) / 300, SE 4.714, ∓ 9.24.
    check_period(
        &json["before"],
        ["2026-11-01T21:00:00.000Z", "2026-11-08T21:00:00.000Z"],
        [400, 300],
        [0.0, -8.2, 8.2],
        [0.0, -9.2, 9.2],
    );
    // Noise: 1.96 × sqrt(3.674² + 4.183²) = 10.9; 1.96 × sqrt(4.110² +
    // 4.714²) = 12.3.
    check_changes(&json, [40.0, 10.9], [40.0, 12.3], true);

    let text = fixture.report(&["--compare", "7d", "--until", "2026-11-16"]);
    assert_eq!(
        text,
        "\
The last 7d against the 7d before it

PERIOD  FROM              UNTIL             IEL   95 %          N    NPS   95 %          N
before  2026-11-02 00:00  2026-11-09 00:00  0.0   -8.2 to 8.2   400  0.0   -9.2 to 9.2   300
this    2026-11-09 00:00  2026-11-16 00:00  40.0  32.8 to 47.2  400  40.0  31.9 to 48.1  300

IEL: +40.0 points, larger than the noise (up to ±10.9 points is noise at 95 %)
NPS: +40.0 points, larger than the noise (up to ±12.3 points is noise at 95 %)

IEL = 100 × (yes − no) / (yes + neutral + no); NPS = 100 × (scores 9-10 − scores 0-6) / scores.
95 %: the interval that holds the index with 95 % confidence; N: the answers it is computed over.
Suppressed presses (anti-spam) are in neither index; -: nothing to compute from.
"
    );
}

/// The same weeks, but this one only 2 points better: within the noise.
#[test]
fn compare_says_a_change_of_2_points_is_within_the_noise() {
    let fixture = Fixture::from_weeks("two");
    let json = fixture.report_json(&["--compare", "7d", "--until", "2026-11-16"]);
    // IEL 2: p+ 0.36, p− 0.34, (0.7 − 0.0004) / 400, SE 4.182, 2 ∓ 8.20;
    // NPS 2: p+ 103/300, p− 97/300, (2/3 − 0.0004) / 300, SE 4.713, 2 ∓
    // 9.24.
    check_period(
        &json["this"],
        ["2026-11-08T21:00:00.000Z", "2026-11-15T21:00:00.000Z"],
        [400, 300],
        [2.0, -6.2, 10.2],
        [2.0, -7.2, 11.2],
    );
    // Noise: 1.96 × sqrt(4.182² + 4.183²) = 11.6; 1.96 × sqrt(4.713² +
    // 4.714²) = 13.1.
    check_changes(&json, [2.0, 11.6], [2.0, 13.1], false);
    let text = fixture.report(&["--compare", "7d", "--until", "2026-11-16"]);
    for line in [
        "IEL: +2.0 points, within the noise (up to ±11.6 points is noise at 95 %)\n",
        "NPS: +2.0 points, within the noise (up to ±13.1 points is noise at 95 %)\n",
    ] {
        assert!(text.contains(line), "{line} is missing from:\n{text}");
    }
    assert!(!text.contains("larger than the noise"), "{text}");
}

#[test]
fn compare_without_until_ends_now_and_says_what_it_cannot_compare() {
    let fixture =
        Fixture::answered_ago(&[(Duration::hours(30), "no"), (Duration::hours(1), "yes")]);
    let json = fixture.report_json(&["--compare", "24h"]);
    assert_eq!(json["this"]["yes"], 1, "{json}");
    assert_eq!(json["before"]["no"], 1, "{json}");
    // One answer a side: a change of 200 points, with no noise at all by
    // the formula (every answer the same), so it is marked.
    assert_eq!(json["iel"]["change"], 200.0, "{json}");
    assert_eq!(json["iel"]["few_answers"], true, "{json}");
    assert_eq!(json["nps"], Value::Null, "{json}");
    let text = fixture.report(&["--compare", "24h"]);
    assert!(
        text.contains("\nNPS: no scores in either period, nothing to compare\n"),
        "{text}"
    );
    assert!(
        text.ends_with(
            "\n* from fewer than 30 answers: too few to read alone, see its interval.\n"
        ),
        "{text}"
    );
}

#[test]
fn compare_takes_a_strict_period_and_sets_its_own_range() {
    let fixture = Fixture::from_weeks("two");
    for (args, says) in [
        (vec!["--compare", "7"], "\"7\" is not a period"),
        (vec!["--compare", "1w"], "\"1w\" is not a period"),
        (vec!["--compare", "0d"], "such as 7d, 24h or 30d"),
        (vec!["--compare=-7d"], "\"-7d\" is not a period"),
        (
            vec!["--compare", "7d", "--since", "2026-11-02"],
            "cannot be used with",
        ),
        (
            vec!["--compare", "7d", "--by", "device"],
            "cannot be used with",
        ),
        (vec!["--compare", "7d", "--csv"], "cannot be used with"),
    ] {
        let output = fixture.run(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

/// The changes of `--compare --json`, IEL and NPS each as change and
/// noise, from enough answers, both larger than the noise or both not.
fn check_changes(json: &Value, iel: [f64; 2], nps: [f64; 2], larger_than_noise: bool) {
    for (index, [change, noise]) in [("iel", iel), ("nps", nps)] {
        assert_eq!(
            json[index],
            json!({"change": change, "noise": noise,
                   "larger_than_noise": larger_than_noise, "few_answers": false}),
            "{index}"
        );
    }
}

/// One period of `--compare --json`: its range, then the answers, then IEL
/// and NPS each as value, low, high.
fn check_period(period: &Value, range: [&str; 2], answers: [u64; 2], iel: [f64; 3], nps: [f64; 3]) {
    let keys = [
        "since",
        "until",
        "answers",
        "scores",
        "iel",
        "iel_low",
        "iel_high",
        "nps",
        "nps_low",
        "nps_high",
        "few_answers",
    ];
    let expected: Vec<Value> = range
        .iter()
        .map(|at| json!(at))
        .chain(answers.iter().map(|count| json!(count)))
        .chain(iel.iter().chain(&nps).map(|index| json!(index)))
        .chain([json!(false)])
        .collect();
    let actual: Vec<Value> = keys.iter().map(|key| period[*key].clone()).collect();
    assert_eq!(actual, expected, "{period}");
}

/// Compares the report as JSON, range and interval bounds aside (those
/// have their own test), with the expected rows (the last one is the
/// total).
fn check(fixture: &Fixture, args: &[&str], by: &str, rows: &[Row]) {
    let mut json = fixture.report_json(args);
    let (total, groups) = rows.split_last().expect("a total row");
    assert_eq!(json["by"], by, "{args:?}");
    let groups_json = json["groups"].as_array_mut().expect("groups");
    groups_json.iter_mut().for_each(without_bounds);
    assert_eq!(
        json["groups"],
        Value::Array(groups.iter().map(expected).collect()),
        "{args:?}"
    );
    let mut total = expected(total);
    if let Value::Object(total) = &mut total {
        total.remove("group");
    }
    without_bounds(&mut json["total"]);
    assert_eq!(json["total"], total, "{args:?}");
}

/// The group without its intervals' bounds, which must be there.
fn without_bounds(group: &mut Value) {
    let group = group.as_object_mut().expect("a group is an object");
    for key in ["iel_low", "iel_high", "nps_low", "nps_high"] {
        assert!(group.remove(key).is_some(), "{key} is missing");
    }
}

fn expected(Row(group, counts, iel, nps): &Row) -> Value {
    let [presses, suppressed, yes, neutral, no, other, scores, promoters, detractors] = *counts;
    assert_eq!(
        presses,
        suppressed + yes + neutral + no + other + scores,
        "{group}: every press in one column"
    );
    let answers = yes + neutral + no;
    let few_answers = (answers > 0 && answers < 30) || (scores > 0 && scores < 30);
    json!({
        "group": group, "presses": presses, "suppressed": suppressed,
        "yes": yes, "neutral": neutral, "no": no, "other": other,
        "scores": scores, "promoters": promoters, "detractors": detractors,
        "answers": answers, "iel": iel, "nps": nps, "few_answers": few_answers,
    })
}

/// A store seeded with presses, and a configuration that points at it.
struct Fixture {
    dir: TempDir,
    config: PathBuf,
}

impl Fixture {
    /// The presses of a table in `fixtures/report/`: day, local time,
    /// device, unit, question, key, answer (`-`: unmapped), suppressed.
    fn from_table(name: &str) -> Fixture {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/report")
            .join(name);
        let table = std::fs::read_to_string(&path).expect("the fixture table");
        let presses = table
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let [day, time, device, unit, question, key, answer, suppressed] = fields[..]
                else {
                    panic!("{}: not 8 columns: {line}", path.display());
                };
                let local =
                    NaiveDateTime::parse_from_str(&format!("{day} {time}"), "%Y-%m-%d %H:%M")
                        .expect("a local day and time");
                NewPress {
                    ts: (local - Duration::minutes(TZ_OFFSET_MIN.into())).and_utc(),
                    key: key.parse().expect("a key"),
                    answer: (answer != "-").then(|| answer.to_string()),
                    question: Some(question.to_string()),
                    suppressed: match suppressed {
                        "yes" => true,
                        "no" => false,
                        other => panic!("suppressed is yes or no, not {other}"),
                    },
                    ..fixture_press(device, unit, 0)
                }
            })
            .collect();
        Fixture::new(presses)
    }

    /// The weeks of `fixtures/report/weeks.txt` named `name`: each week's
    /// answers evenly over its seven local days, yes, neutral, no, then the
    /// scores 10, 8 and 3, on the `entrance` device.
    fn from_weeks(name: &str) -> Fixture {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/report/weeks.txt");
        let table = std::fs::read_to_string(&path).expect("the weeks fixture");
        let mut presses = Vec::new();
        for line in table
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
        {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [fixture, week, counts @ ..] = &fields[..] else {
                panic!("{}: a short line: {line}", path.display());
            };
            if *fixture != name {
                continue;
            }
            let counts: Vec<usize> = counts
                .iter()
                .map(|count| count.parse().expect("a count"))
                .collect();
            assert_eq!(counts.len(), 6, "{line}");
            let answers: Vec<&str> = ["yes", "neutral", "no", "10", "8", "3"]
                .iter()
                .zip(&counts)
                .flat_map(|(answer, count)| std::iter::repeat_n(*answer, *count))
                .collect();
            let start = NaiveDateTime::parse_from_str(&format!("{week} 00:00"), "%Y-%m-%d %H:%M")
                .expect("a week's first day");
            let step = Duration::days(7) / i32::try_from(answers.len()).expect("a small week");
            for (index, answer) in answers.into_iter().enumerate() {
                let local = start + step * i32::try_from(index).expect("a small week");
                presses.push(NewPress {
                    ts: (local - Duration::minutes(TZ_OFFSET_MIN.into())).and_utc(),
                    answer: Some(answer.to_string()),
                    question: Some("recommend".into()),
                    ..fixture_press("entrance", "301A0001", 1)
                });
            }
        }
        assert!(
            !presses.is_empty(),
            "no weeks named {name} in {}",
            path.display()
        );
        Fixture::new(presses)
    }

    /// One press of `entrance` per (how long ago, answer).
    fn answered_ago(presses: &[(Duration, &str)]) -> Fixture {
        let now = Utc::now();
        Fixture::new(
            presses
                .iter()
                .map(|(ago, answer)| NewPress {
                    ts: now - *ago,
                    answer: Some(answer.to_string()),
                    ..fixture_press("entrance", "301A0001", 1)
                })
                .collect(),
        )
    }

    fn new(presses: Vec<NewPress>) -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let data_dir = dir.path().join("data");
        seed(&data_dir, presses);
        let config = dir.path().join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "[agent]\nid = \"shop-017\"\ndata_dir = \"{}\"\n",
                data_dir.display()
            ),
        )
        .expect("write the configuration");
        Fixture { dir, config }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_epm-agent"))
            .arg("report")
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .env("TZ", TZ)
            .output()
            .expect("run epm-agent report")
    }

    /// The report's standard output; the command must succeed.
    fn report(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "report {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("UTF-8")
    }

    fn report_json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.push("--json");
        serde_json::from_str(&self.report(&args)).expect("the report as JSON")
    }
}

/// A press of the fixture's devices; the caller sets the rest.
fn fixture_press(device: &str, unit: &str, key: u8) -> NewPress {
    NewPress {
        ts: Utc::now(),
        tz_offset_min: TZ_OFFSET_MIN,
        device: device.to_string(),
        model: if device == "checkout" {
            "prolan-202"
        } else {
            "prolan-501"
        },
        unit: unit.parse::<UnitId>().expect("a unit id"),
        key,
        answer: None,
        question: None,
        seq: 0,
        rssi: None,
        battery: None,
        suppressed: false,
    }
}

/// Stores `presses` through the library's writer, as the daemon would.
fn seed(data_dir: &Path, presses: Vec<NewPress>) {
    let store = Store::open_writer(data_dir).expect("open the store");
    let (handle, thread) = writer::spawn(store, WriterOptions::default()).expect("store writer");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime to seed with");
    runtime.block_on(async {
        for (seq, press) in presses.into_iter().enumerate() {
            let seq = u16::try_from(seq).expect("a small fixture");
            handle
                .press(NewPress { seq, ..press }, None)
                .await
                .expect("queue a press");
        }
        handle.flush().await.expect("commit the presses");
    });
    drop(handle);
    thread.join().expect("the store writer stops");
}

fn path_text(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 temp path")
}

/// The `tag` elements of this colour (plotters writes one element a line).
fn elements<'a>(svg: &'a str, tag: &str, color: &str) -> Vec<&'a str> {
    svg.lines()
        .filter(|line| line.starts_with(tag) && line.contains(color))
        .collect()
}

fn attribute<'a>(element: &'a str, name: &str) -> &'a str {
    let start = element
        .find(&format!(" {name}=\""))
        .unwrap_or_else(|| panic!("no {name} in {element}"))
        + name.len()
        + 3;
    let length = element[start..].find('"').expect("a closing quote");
    &element[start..start + length]
}

/// An `<svg>` root whose every tag is closed in order, with nothing after.
fn assert_well_formed_svg(svg: &str) {
    let mut open: Vec<&str> = Vec::new();
    let mut rest = svg.trim();
    assert!(
        rest.starts_with("<svg") || rest.starts_with("<?xml"),
        "not an SVG: {rest:.80}"
    );
    let mut roots = 0;
    while let Some(start) = rest.find('<') {
        let end = start + rest[start..].find('>').expect("a tag is closed with >");
        let tag = &rest[start + 1..end];
        rest = &rest[end + 1..];
        if tag.starts_with('?') || tag.starts_with('!') {
            continue;
        }
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(open.pop(), Some(name.trim()), "a closing tag out of order");
            continue;
        }
        let name = tag.split_whitespace().next().unwrap_or_default();
        if open.is_empty() {
            roots += 1;
            assert_eq!(name, "svg", "the root element");
        }
        if !tag.ends_with('/') {
            open.push(name);
        }
    }
    assert!(open.is_empty(), "unclosed: {open:?}");
    assert_eq!(roots, 1, "one root element");
    assert!(rest.trim().is_empty(), "text after the root: {rest}");
}
