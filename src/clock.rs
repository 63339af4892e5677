//! Noticing that the wall clock moved: between two looks, the wall clock
//! should advance as much as the monotonic clock. When the two disagree by
//! more than a minute (an NTP step, a dead CMOS battery, someone setting
//! the time by hand), event timestamps around then are suspect, so the
//! daemon records the jump and `status` shows it. Event order and ids do
//! not depend on the wall clock (seqnos, monotonic ids), nor does the
//! duplicate window (monotonic time).
//!
//! Pure: the caller passes both clocks in.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// A disagreement above this is a jump, not drift.
pub const JUMP_THRESHOLD: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct ClockWatch {
    last_wall: DateTime<Utc>,
    last_monotonic: Duration,
}

impl ClockWatch {
    /// Starts watching from one reading of both clocks (`monotonic` since
    /// any fixed origin).
    pub fn new(wall: DateTime<Utc>, monotonic: Duration) -> ClockWatch {
        ClockWatch {
            last_wall: wall,
            last_monotonic: monotonic,
        }
    }

    /// Takes a new reading; returns the jump in whole seconds (positive:
    /// the wall clock went forward) when it exceeds [`JUMP_THRESHOLD`].
    pub fn observe(&mut self, wall: DateTime<Utc>, monotonic: Duration) -> Option<i64> {
        let wall_elapsed_ms = (wall - self.last_wall).num_milliseconds();
        let monotonic_elapsed_ms =
            i64::try_from(monotonic.saturating_sub(self.last_monotonic).as_millis())
                .unwrap_or(i64::MAX);
        self.last_wall = wall;
        self.last_monotonic = monotonic;
        let jump_ms = wall_elapsed_ms.saturating_sub(monotonic_elapsed_ms);
        let threshold_ms = JUMP_THRESHOLD.as_millis() as i64;
        (jump_ms.abs() > threshold_ms).then_some(jump_ms / 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Readings as (wall seconds after a start, monotonic seconds).
    fn check(readings: &[(i64, u64)], expected: &[Option<i64>]) {
        let start = DateTime::<Utc>::from_timestamp(1_800_000_000, 0).expect("a time");
        let mut watch = ClockWatch::new(start, Duration::ZERO);
        let jumps: Vec<Option<i64>> = readings
            .iter()
            .map(|&(wall_s, monotonic_s)| {
                watch.observe(
                    start + chrono::Duration::seconds(wall_s),
                    Duration::from_secs(monotonic_s),
                )
            })
            .collect();
        assert_eq!(jumps, expected, "{readings:?}");
    }

    #[test]
    fn clocks_in_step_or_drifting_a_little_are_no_jump() {
        check(
            &[(5, 5), (10, 10), (70, 15), (75, 80)],
            &[None, None, None, None],
        );
    }

    #[test]
    fn a_step_forward_or_back_is_reported_once_with_its_size() {
        check(
            &[(5, 5), (3_610, 10), (3_615, 15)],
            &[None, Some(3_600), None],
        );
        check(
            &[(5, 5), (-3_590, 10), (-3_585, 15)],
            &[None, Some(-3_600), None],
        );
    }

    #[test]
    fn a_resume_from_suspend_is_reported_as_a_jump_forward() {
        // CLOCK_MONOTONIC stops in suspend on Linux; a resumed machine's
        // wall clock then looks like a jump forward — which it is, for the
        // presses' timestamps, so it is reported.
        check(&[(7_200, 5)], &[Some(7_195)]);
    }
}
