//! When a partition starts a round from scratch on its own, between delta rounds: its
//! rolling window moved, or its periodic reconcile is due.
//!
//! A round from scratch (from the initial request) reports no deletions; the worker
//! tombstones, at its last page, every key the partition has live that the round did not
//! return (`crate::live`), with the reason the round began ([`Restart::reason`]).
//!
//! - **Window roll.** A rolling calendar view reads the window in force
//!   ([`WindowSpec::at`]); when it moves, the next round reads the new window from scratch:
//!   what entered comes as upserts, what left is tombstoned (`window`).
//! - **Periodic reconcile.** Graph leaves some changes out of delta rounds for good (a
//!   deleted occurrence of a recurring series, NOTES.md "Occurrences"): every
//!   `graph.reconcile_interval` a partition re-reads itself from scratch, which heals them
//!   (`reconcile`). Partitions are spread over the interval by a phase taken from their
//!   identity, so a fleet that synced at the same hour does not reconcile at the same hour.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::source::PartitionId;
use crate::window::{Window, WindowSpec};

/// A partition's own schedule of rounds from scratch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rounds {
    /// How often a rolling window moves (the source's `window_roll`).
    pub window_roll: Duration,
    /// How often the partition reconciles (`graph.reconcile_interval`); `None`: never.
    pub reconcile_interval: Option<Duration>,
    /// Pages a round may take before it is abandoned (`graph.max_pages_per_round`).
    pub max_pages_per_round: u32,
}

impl Default for Rounds {
    /// A day's roll, no periodic reconcile, 10,000 pages a round.
    fn default() -> Self {
        Rounds {
            window_roll: Duration::from_secs(86_400),
            reconcile_interval: None,
            max_pages_per_round: 10_000,
        }
    }
}

/// Why a round from scratch began: the `graph-cdc.removed-reason` of the tombstones it ends
/// with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// A `410`, a resync signal, or a first sync.
    Resync,
    /// The rolling window moved.
    Window,
    /// The periodic reconcile.
    Reconcile,
}

impl Restart {
    pub fn reason(self) -> &'static str {
        match self {
            Restart::Resync => "resync",
            Restart::Window => "window",
            Restart::Reconcile => "reconcile",
        }
    }

    /// Read back from an offset (`None`, or anything unknown: a resync).
    pub fn from_reason(s: Option<&str>) -> Restart {
        match s {
            Some("window") => Restart::Window,
            Some("reconcile") => Restart::Reconcile,
            _ => Restart::Resync,
        }
    }
}

impl Rounds {
    /// A rolling view's window in force at `now` (`None` for a fixed window or another kind).
    pub fn window(&self, spec: Option<&WindowSpec>, now: DateTime<Utc>) -> Option<Window> {
        spec.filter(|s| s.rolls())
            .map(|s| s.at(now, self.window_roll))
    }

    /// Whether `id`, which last began a round from scratch at `last` (Unix seconds), is due
    /// to reconcile at `now`: it is once `now` enters a later period of the interval than
    /// `last`, periods being shifted by the partition's phase.
    pub fn reconcile_due(&self, id: &PartitionId, last: i64, now: i64) -> bool {
        let Some(every) = self.reconcile_interval.map(|d| d.as_secs() as i64) else {
            return false;
        };
        if every <= 0 {
            return false;
        }
        let phase = (fnv1a(id.to_json().as_bytes()) % every as u64) as i64;
        (now - phase).div_euclid(every) > (last - phase).div_euclid(every)
    }
}

/// FNV-1a: a hash that is the same in every process and version (the phase must not move
/// when a worker restarts).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(u: &str) -> PartitionId {
        PartitionId::CalendarList { user: u.into() }
    }

    #[test]
    fn a_partition_reconciles_once_per_interval_at_its_own_phase() {
        let r = Rounds {
            reconcile_interval: Some(Duration::from_secs(100)),
            ..Rounds::default()
        };
        let p = user("a@contoso.com");
        // Walking a second at a time from t=1000, it is due exactly once per 100 s.
        let mut last = 1_000;
        let mut due_at = Vec::new();
        for now in 1_001..1_400 {
            if r.reconcile_due(&p, last, now) {
                due_at.push(now);
                last = now;
            }
        }
        assert_eq!(due_at.len(), 4, "{due_at:?}");
        assert!(due_at.windows(2).all(|w| w[1] - w[0] == 100), "{due_at:?}");
        assert!(due_at[0] - 1_000 <= 100, "the first within one interval");
    }

    #[test]
    fn phases_spread_partitions_over_the_interval() {
        let r = Rounds {
            reconcile_interval: Some(Duration::from_secs(7 * 86_400)),
            ..Rounds::default()
        };
        // 1,000 partitions synced at the same instant: when does each reconcile first?
        let t0 = 1_800_000_000;
        let mut firsts: Vec<i64> = (0..1_000)
            .map(|i| {
                let p = user(&format!("u{i}@contoso.com"));
                let mut t = t0;
                while !r.reconcile_due(&p, t0, t) {
                    t += 3_600;
                }
                t - t0
            })
            .collect();
        firsts.sort_unstable();
        // Spread over the whole week: no day holds more than a quarter of them.
        let week = 7 * 86_400;
        for day in 0..7 {
            let n = firsts
                .iter()
                .filter(|&&t| t / 86_400 == day && t <= week)
                .count();
            assert!(n < 250, "day {day}: {n} of 1,000");
        }
        assert!(*firsts.last().unwrap() <= week + 3_600);
    }

    #[test]
    fn off_when_zero_or_absent() {
        let p = user("a");
        for r in [
            Rounds::default(),
            Rounds {
                reconcile_interval: Some(Duration::ZERO),
                ..Rounds::default()
            },
        ] {
            assert!(!r.reconcile_due(&p, 0, 10_000_000));
        }
    }

    #[test]
    fn reasons_round_trip() {
        for r in [Restart::Resync, Restart::Window, Restart::Reconcile] {
            assert_eq!(Restart::from_reason(Some(r.reason())), r);
        }
        assert_eq!(Restart::from_reason(None), Restart::Resync);
    }
}
