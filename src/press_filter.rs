//! Deciding what a decoded press is: a duplicate the hardware sent again
//! (dropped), a press that came too soon after the previous one of its unit
//! (kept, marked suppressed), or an ordinary press.
//!
//! Pure: the caller passes the time in, as milliseconds on a monotonic
//! scale of its choosing, so a wall-clock jump neither revives nor expires
//! a duplicate window. Presses rebuilt from the store after a restart are
//! placed on the same scale by the caller (before its start: negative).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use crate::protocol::UnitId;

/// The spec's duplicate windows are minutes long; this bounds memory if a
/// hostile or broken device floods distinct (unit, seq) pairs. It is far
/// above real use: a keypad pressed 27 times a second for its 10 minutes,
/// a receiver hearing 546 presses a second for its 30 s. Past it the
/// oldest pairs are forgotten first (a radio repeat follows its press
/// within milliseconds, so it is still caught).
const MAX_REMEMBERED: usize = 16_384;
/// Once full, the map of pairs churns (one out, one in, per press). A hash
/// table at its size fills with tombstones and doubles, and doubles again,
/// over minutes of a flood (measured: a 2.2 MB step after 20 s); at twice
/// the pairs it holds it only ever rehashes in place, so it is sized so
/// once, when it first fills.
const CHURN_CAPACITY: usize = 2 * MAX_REMEMBERED;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The same (unit, seq) was accepted within the duplicate window.
    Duplicate,
    /// A new press; `suppressed` when it came less than `min_interval`
    /// after the previous press of the same unit.
    Accept { suppressed: bool },
}

/// Duplicate and anti-spam memory of one device.
#[derive(Debug)]
pub struct PressFilter {
    duplicate_window_ms: i64,
    min_interval_ms: i64,
    /// (unit, seq) → when it was accepted, with `order` for expiry.
    accepted: HashMap<(UnitId, u16), i64>,
    order: VecDeque<(i64, UnitId, u16)>,
    /// unit → its previous accepted press.
    last_press: HashMap<UnitId, i64>,
}

impl PressFilter {
    pub fn new(duplicate_window: Duration, min_interval: Duration) -> Self {
        PressFilter {
            duplicate_window_ms: duration_ms(duplicate_window),
            min_interval_ms: duration_ms(min_interval),
            accepted: HashMap::new(),
            order: VecDeque::new(),
            last_press: HashMap::new(),
        }
    }

    /// Judges a press seen at `now` and, unless it is a duplicate, remembers it.
    pub fn judge(&mut self, unit: UnitId, seq: u16, now_ms: i64) -> Verdict {
        self.expire(now_ms);
        if self.accepted.contains_key(&(unit, seq)) {
            return Verdict::Duplicate;
        }
        let suppressed = self
            .last_press
            .get(&unit)
            .is_some_and(|previous| now_ms - previous < self.min_interval_ms);
        self.remember(unit, seq, now_ms);
        Verdict::Accept { suppressed }
    }

    /// Records a press accepted earlier (rebuilding after a restart). Call in
    /// the order the presses were accepted.
    pub fn remember(&mut self, unit: UnitId, seq: u16, at_ms: i64) {
        if self.order.len() >= MAX_REMEMBERED {
            if self.accepted.capacity() < CHURN_CAPACITY {
                self.accepted.reserve(CHURN_CAPACITY - self.accepted.len());
            }
            if let Some((_, old_unit, old_seq)) = self.order.pop_front() {
                self.accepted.remove(&(old_unit, old_seq));
            }
        }
        self.accepted.insert((unit, seq), at_ms);
        self.order.push_back((at_ms, unit, seq));
        self.last_press.insert(unit, at_ms);
    }

    /// How many (unit, seq) pairs are inside the duplicate window now.
    pub fn remembered(&self) -> usize {
        self.accepted.len()
    }

    fn expire(&mut self, now_ms: i64) {
        while let Some(&(at, unit, seq)) = self.order.front() {
            if now_ms - at < self.duplicate_window_ms {
                break;
            }
            self.order.pop_front();
            // A pair re-accepted later has a newer instant: keep that one.
            if self.accepted.get(&(unit, seq)) == Some(&at) {
                self.accepted.remove(&(unit, seq));
            }
        }
        // Only presses within `min_interval` can suppress another. Swept
        // when the map has doubled past the bound, so a flood of distinct
        // units costs one sweep per `MAX_REMEMBERED` presses, not one per
        // press; if that many units were pressed within `min_interval` (no
        // real shop), their anti-spam memory is dropped rather than the
        // bound.
        if self.last_press.len() > 2 * MAX_REMEMBERED {
            let keep_ms = self.min_interval_ms;
            self.last_press.retain(|_, at| now_ms - *at < keep_ms);
            if self.last_press.len() > MAX_REMEMBERED {
                self.last_press.clear();
            }
        }
    }
}

fn duration_ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNIT_A: UnitId = UnitId(0x301A0002);
    const UNIT_B: UnitId = UnitId(0x301A0003);

    /// Feeds (unit, seq, milliseconds since start) and compares the verdicts.
    fn check(
        window_s: u64,
        min_interval_s: u64,
        presses: &[(UnitId, u16, i64)],
        expected: &[Verdict],
    ) {
        let mut filter = PressFilter::new(
            Duration::from_secs(window_s),
            Duration::from_secs(min_interval_s),
        );
        let verdicts: Vec<Verdict> = presses
            .iter()
            .map(|&(unit, seq, at_ms)| filter.judge(unit, seq, at_ms))
            .collect();
        assert_eq!(verdicts, expected);
    }

    const NEW: Verdict = Verdict::Accept { suppressed: false };
    const SUPPRESSED: Verdict = Verdict::Accept { suppressed: true };
    const DUP: Verdict = Verdict::Duplicate;

    #[test]
    fn radio_triplets_collapse_to_one_press() {
        check(
            30,
            0,
            &[(UNIT_A, 258, 0), (UNIT_A, 258, 100), (UNIT_A, 258, 290)],
            &[NEW, DUP, DUP],
        );
    }

    #[test]
    fn same_counter_after_the_window_is_a_new_press() {
        check(
            30,
            0,
            &[(UNIT_A, 0, 0), (UNIT_A, 0, 29_999), (UNIT_A, 0, 60_000)],
            &[NEW, DUP, NEW],
        );
    }

    #[test]
    fn units_are_independent() {
        check(30, 3, &[(UNIT_A, 5, 0), (UNIT_B, 5, 10)], &[NEW, NEW]);
    }

    #[test]
    fn anti_spam_marks_presses_closer_than_min_interval() {
        check(
            600,
            3,
            &[
                (UNIT_A, 1, 0),
                (UNIT_A, 2, 1_000),
                (UNIT_A, 3, 2_500),
                (UNIT_A, 4, 6_000),
            ],
            &[NEW, SUPPRESSED, SUPPRESSED, NEW],
        );
    }

    #[test]
    fn duplicates_do_not_restart_the_anti_spam_interval() {
        check(
            600,
            3,
            &[(UNIT_A, 1, 0), (UNIT_A, 1, 2_000), (UNIT_A, 2, 3_000)],
            &[NEW, DUP, NEW],
        );
    }

    #[test]
    fn remembered_presses_survive_a_rebuild() {
        let mut filter = PressFilter::new(Duration::from_secs(600), Duration::ZERO);
        // Stored 9 minutes before this run's time origin.
        filter.remember(UNIT_A, 17, -540_000);
        assert_eq!(filter.judge(UNIT_A, 17, 5_000), DUP);
        assert_eq!(filter.judge(UNIT_A, 18, 5_000), NEW);
        assert_eq!(
            filter.judge(UNIT_A, 17, 61_000),
            NEW,
            "the window has passed"
        );
    }

    #[test]
    fn memory_is_bounded_under_a_flood_of_distinct_pairs() {
        let mut filter = PressFilter::new(Duration::from_secs(600), Duration::ZERO);
        for index in 0..(MAX_REMEMBERED as u32 + 1000) {
            filter.judge(UnitId(index), 0, 0);
        }
        assert_eq!(filter.remembered(), MAX_REMEMBERED);
        // Churning at the bound for a long flood: the table never grows.
        let sized = filter.accepted.capacity();
        for index in 0..(20 * MAX_REMEMBERED as u32) {
            filter.judge(UnitId(index % 997), (index / 997) as u16, 0);
        }
        assert_eq!(filter.remembered(), MAX_REMEMBERED);
        assert!(
            filter.accepted.capacity() <= sized,
            "no growth while churning: {} after {sized}",
            filter.accepted.capacity()
        );
        // Distinct units without end: the anti-spam memory stays bounded too.
        for index in 0..(3 * MAX_REMEMBERED as u32) {
            filter.judge(UnitId(1_000_000 + index), 0, 0);
        }
        assert!(filter.last_press.len() <= 2 * MAX_REMEMBERED + 1);
    }
}
