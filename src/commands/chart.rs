//! The picture of `epm-agent report --chart FILE.svg`: the IEL per day as a
//! line over −100..100 in a band of its 95 % interval (upper panel; a day
//! alone has a bar of it) and the presses per hour of the day as
//! bars, counted presses and suppressed ones stacked apart (lower panel).
//! It takes plain numbers ([`ChartData`]) and draws them with plotters' SVG
//! backend; the store and the arithmetic stay in `report`.
//!
//! Text needs no font library: without plotters' `ttf` feature, text sizes
//! are estimated from the character count (good enough for layout) and the
//! SVG carries `<text font-family="sans-serif">` that the viewer renders,
//! so nothing depends on fonts installed on the agent's machine.

use std::path::Path;

use anyhow::Context;
use chrono::{Days, NaiveDate};
use plotters::coord::Shift;
use plotters::prelude::*;

/// What the chart shows.
#[derive(Clone, Debug, PartialEq)]
pub struct ChartData {
    /// The headline: what the numbers cover (e.g. the range).
    pub title: String,
    /// The IEL of each local day, oldest first; `None` where it is
    /// undefined (no yes / neutral / no answers that day). Days may skip.
    pub iel_per_day: Vec<(NaiveDate, Option<DayIel>)>,
    /// The presses of each local hour of the day, 00 to 23.
    pub presses_per_hour: [HourPresses; 24],
}

/// The IEL of one day and its 95 % interval, as drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DayIel {
    pub value: f64,
    pub low: f64,
    pub high: f64,
}

/// The presses of one hour of the day.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HourPresses {
    /// Not suppressed: the presses the indices are made of.
    pub counted: u64,
    /// Kept by the anti-spam rule but left out of the indices.
    pub suppressed: u64,
}

/// The line of the IEL (orange, `#FF7F0E` in the SVG).
const IEL_COLOR: RGBColor = RGBColor(255, 127, 14);
/// The band of its 95 % interval (light orange, `#FFD2A8`): opaque, and
/// drawn before the zero line and the IEL line, which stay on top.
const BAND_COLOR: RGBColor = RGBColor(255, 210, 168);
/// Counted presses (blue, `#1F77B4`).
const COUNTED_COLOR: RGBColor = RGBColor(31, 119, 180);
/// Suppressed presses (grey, `#BEBEBE`).
const SUPPRESSED_COLOR: RGBColor = RGBColor(190, 190, 190);
const WIDTH: u32 = 960;
const HEIGHT: u32 = 680;
const FONT: &str = "sans-serif";
/// The most days whose points are labelled with their value.
const LABELLED_DAYS: usize = 31;

/// Writes the chart as an SVG file.
pub fn write_svg(path: &Path, data: &ChartData) -> anyhow::Result<()> {
    let svg = render_svg(data)?;
    std::fs::write(path, svg).with_context(|| format!("cannot write chart {}", path.display()))
}

/// The chart as SVG text.
pub fn render_svg(data: &ChartData) -> anyhow::Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE)?;
        let root = root.titled(&data.title, (FONT, 28))?;
        let (upper, lower) = root.split_vertically(HEIGHT * 11 / 20);
        draw_iel_per_day(&upper, &data.iel_per_day)?;
        draw_presses_per_hour(&lower, &data.presses_per_hour)?;
        root.present()?;
    }
    Ok(svg)
}

fn draw_iel_per_day(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    iel_per_day: &[(NaiveDate, Option<DayIel>)],
) -> anyhow::Result<()> {
    // Days are numbered from the first one; a day of margin on each side
    // keeps the first and last points off the axes.
    let first = iel_per_day.first().map(|(day, _)| *day);
    let day_number = |day: NaiveDate| first.map_or(0, |first| (day - first).num_days());
    let last_number = iel_per_day.last().map_or(0, |(day, _)| day_number(*day));
    let label = |number: &i64| -> String {
        let day = u64::try_from(*number)
            .ok()
            .filter(|_| *number <= last_number)
            .and_then(|offset| first?.checked_add_days(Days::new(offset)));
        day.map_or_else(String::new, |day| day.format("%a %d %b").to_string())
    };
    let mut chart = ChartBuilder::on(area)
        .caption(
            "IEL per day: 100 × (yes − no) / (yes + neutral + no), 95 % interval shaded",
            (FONT, 22),
        )
        .margin(12)
        .margin_right(40)
        .x_label_area_size(38)
        .y_label_area_size(76)
        .build_cartesian_2d(-1i64..last_number + 1, -100f64..100f64)?;
    chart
        .configure_mesh()
        .x_labels(
            usize::try_from(last_number + 3)
                .unwrap_or(usize::MAX)
                .min(12),
        )
        .x_label_formatter(&label)
        .y_labels(9)
        .y_label_formatter(&|value| format!("{value:.0}"))
        .y_desc("IEL")
        .label_style((FONT, 17))
        .axis_desc_style((FONT, 18))
        .light_line_style(WHITE)
        .draw()?;
    // A day without an IEL breaks the line and its band rather than
    // bridging them; the band goes first so the line is drawn over it.
    let runs: Vec<Vec<(i64, DayIel)>> = iel_per_day
        .chunk_by(|(earlier, earlier_iel), (later, later_iel)| {
            earlier_iel.is_some() && later_iel.is_some() && (*later - *earlier).num_days() == 1
        })
        .map(|run| {
            run.iter()
                .filter_map(|(day, iel)| Some((day_number(*day), (*iel)?)))
                .collect()
        })
        .filter(|run: &Vec<(i64, DayIel)>| !run.is_empty())
        .collect();
    for run in &runs {
        if let [(day, iel)] = run[..] {
            chart.draw_series(std::iter::once(PathElement::new(
                [(day, iel.low), (day, iel.high)],
                BAND_COLOR.stroke_width(12),
            )))?;
        } else {
            let upper = run.iter().map(|(day, iel)| (*day, iel.high));
            let lower = run.iter().rev().map(|(day, iel)| (*day, iel.low));
            chart.draw_series(std::iter::once(Polygon::new(
                upper.chain(lower).collect::<Vec<_>>(),
                BAND_COLOR.filled(),
            )))?;
        }
    }
    chart.draw_series(LineSeries::new(
        [(-1, 0.0), (last_number + 1, 0.0)],
        BLACK.mix(0.4),
    ))?;
    for run in runs.iter().filter(|run| run.len() > 1) {
        chart.draw_series(LineSeries::new(
            run.iter().map(|(day, iel)| (*day, iel.value)),
            IEL_COLOR.stroke_width(3),
        ))?;
    }
    // Up to a month, each day's point carries its value; beyond, the
    // values would overprint one another and only the line is drawn.
    let labelled = iel_per_day.len() <= LABELLED_DAYS;
    chart.draw_series(iel_per_day.iter().filter_map(|(day, iel)| {
        let iel = iel.as_ref()?.value;
        let (radius, value) = if labelled {
            (5, format!("{iel:.1}"))
        } else {
            (2, String::new())
        };
        Some(
            EmptyElement::at((day_number(*day), iel))
                + Circle::new((0, 0), radius, IEL_COLOR.filled())
                + Text::new(value, (-14, -28), (FONT, 18)),
        )
    }))?;
    // Say why a day has no point, so that a gap is not read as a day
    // without presses.
    chart.draw_series(
        iel_per_day
            .iter()
            .filter(|(_, iel)| labelled && iel.is_none())
            .map(|(day, _)| {
                EmptyElement::at((day_number(*day), -100.0))
                    + Text::new(
                        "no answers",
                        (-36, -26),
                        (FONT, 16).into_font().color(&BLACK.mix(0.5)),
                    )
            }),
    )?;
    Ok(())
}

fn draw_presses_per_hour(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    presses_per_hour: &[HourPresses; 24],
) -> anyhow::Result<()> {
    let highest = presses_per_hour
        .iter()
        .map(|hour| hour.counted + hour.suppressed)
        .max()
        .unwrap_or(0);
    // Room above the highest bar for the legend; at least one step.
    let top = i64::try_from(highest + highest / 2 + 1).unwrap_or(i64::MAX);
    let mut chart = ChartBuilder::on(area)
        .caption(
            "Presses per hour of the day (the shop's local time)",
            (FONT, 22),
        )
        .margin(12)
        .margin_right(40)
        .x_label_area_size(38)
        .y_label_area_size(76)
        .build_cartesian_2d(-0.5f64..23.5f64, 0i64..top)?;
    chart
        .configure_mesh()
        .x_labels(24)
        .x_label_formatter(&|hour| format!("{:02}", hour.round()))
        .y_labels(usize::try_from(top + 1).unwrap_or(usize::MAX).min(8))
        .y_desc("presses")
        .label_style((FONT, 17))
        .axis_desc_style((FONT, 18))
        .disable_x_mesh()
        .light_line_style(WHITE)
        .draw()?;
    let bar = |hour: usize, from: u64, to: u64| {
        let x = hour as f64;
        [
            (x - 0.38, i64::try_from(from).unwrap_or(i64::MAX)),
            (x + 0.38, i64::try_from(to).unwrap_or(i64::MAX)),
        ]
    };
    chart
        .draw_series(
            presses_per_hour
                .iter()
                .enumerate()
                .filter(|(_, presses)| presses.counted > 0)
                .map(|(hour, presses)| {
                    Rectangle::new(bar(hour, 0, presses.counted), COUNTED_COLOR.filled())
                }),
        )?
        .label("counted")
        .legend(|(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], COUNTED_COLOR.filled()));
    chart
        .draw_series(
            presses_per_hour
                .iter()
                .enumerate()
                .filter(|(_, presses)| presses.suppressed > 0)
                .map(|(hour, presses)| {
                    Rectangle::new(
                        bar(hour, presses.counted, presses.counted + presses.suppressed),
                        SUPPRESSED_COLOR.filled(),
                    )
                }),
        )?
        .label("suppressed (anti-spam, not in the indices)")
        .legend(|(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], SUPPRESSED_COLOR.filled()));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font((FONT, 17))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.3))
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How many `tag` elements of this colour the SVG holds (plotters
    /// writes one element per line).
    fn elements(svg: &str, tag: &str, color: &str) -> usize {
        svg.lines()
            .filter(|line| line.starts_with(tag) && line.contains(color))
            .count()
    }

    fn day(number: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, number).expect("a November day")
    }

    #[test]
    fn an_empty_range_still_draws_both_panels() {
        let svg = render_svg(&ChartData {
            title: "nothing".into(),
            iel_per_day: Vec::new(),
            presses_per_hour: [HourPresses::default(); 24],
        })
        .expect("render");
        assert!(svg.contains("IEL per day"), "{svg}");
        assert!(svg.contains("Presses per hour"), "{svg}");
        // The legend's two boxes, and no bar.
        assert_eq!(elements(&svg, "<rect", "#1F77B4"), 1, "{svg}");
        assert_eq!(elements(&svg, "<rect", "#BEBEBE"), 1, "{svg}");
    }

    fn iel(value: f64) -> Option<DayIel> {
        Some(DayIel {
            value,
            low: value - 10.0,
            high: value + 10.0,
        })
    }

    #[test]
    fn a_day_without_an_iel_breaks_the_line_and_its_band() {
        let svg = render_svg(&ChartData {
            title: "gap".into(),
            iel_per_day: vec![
                (day(2), iel(50.0)),
                (day(3), iel(0.0)),
                (day(4), None),
                (day(5), iel(-40.0)),
                (day(6), iel(20.0)),
                (day(8), iel(10.0)),
            ],
            presses_per_hour: [HourPresses {
                counted: 1,
                suppressed: 0,
            }; 24],
        })
        .expect("render");
        // Two runs of two days; the 8th stands alone, after a missing day.
        assert_eq!(elements(&svg, "<polyline", "#FF7F0E"), 2, "{svg}");
        assert_eq!(elements(&svg, "<circle", "#FF7F0E"), 5, "{svg}");
        // A band under each run, a bar of the interval for the lone day.
        assert_eq!(elements(&svg, "<polygon", "#FFD2A8"), 2, "{svg}");
        assert_eq!(elements(&svg, "<polyline", "#FFD2A8"), 1, "{svg}");
    }
}
