//! A calendar view's window: fixed dates, or bounds relative to now that roll.
//!
//! A fixed window stops seeing new meetings once its end has passed (Graph then reports them
//! as `@removed`), so a source may give either bound as a signed duration from now instead:
//! `start = "-30d"`, `end = "+365d"` (units `s`, `m`, `h`, `d`). Relative bounds are taken
//! from an *anchor*, now aligned down to a multiple of the source's `window_roll` since the
//! Unix epoch in UTC, so every worker computes the same window and it moves only once per
//! `window_roll`.
//!
//! The partition identity holds the window as written ([`WindowSpec`], `"-30d/+365d"`), so the
//! partition's offset key survives every roll; the window in force ([`Window`], two instants)
//! is what a round reads and what its offset records. A fixed spec's identity is unchanged
//! from before relative windows existed (`2026-01-01T00:00:00Z/2027-01-01T00:00:00Z`).
//!
//! Graph refuses calendar views longer than [`MAX_WINDOW_DAYS`] days with a 400
//! (microsoft-graph-docs-contrib issue 6321; `shared/graph/NOTES.md`, "Window limits").

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};

/// The longest calendar view Graph answers, in days.
pub const MAX_WINDOW_DAYS: i64 = 1825;

/// One bound of a window as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bound {
    /// An instant (RFC 3339, kept in UTC).
    Fixed(DateTime<Utc>),
    /// Seconds from the anchor (negative: before it).
    Relative(i64),
}

/// A window as a source writes it: `"<start>/<end>"`, each bound RFC 3339 or a signed
/// duration (`-30d`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WindowSpec {
    pub start: Bound,
    pub end: Bound,
}

/// A window in force: `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Window {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

impl Bound {
    /// RFC 3339 with an offset (`2026-01-01T00:00:00+01:00`), or a signed whole number of
    /// `s`, `m`, `h` or `d` (`-30d`, `+12h`, `0s`).
    pub fn parse(s: &str) -> Result<Bound, String> {
        let t = s.trim();
        if let Ok(d) = DateTime::parse_from_rfc3339(t) {
            return Ok(Bound::Fixed(d.with_timezone(&Utc)));
        }
        let (sign, rest) = match t.as_bytes().first() {
            Some(b'-') => (-1, &t[1..]),
            Some(b'+') => (1, &t[1..]),
            _ => (1, t),
        };
        let unit = match rest.as_bytes().last() {
            Some(b's') => 1,
            Some(b'm') => 60,
            Some(b'h') => 3_600,
            Some(b'd') => 86_400,
            _ => return Err(Self::unreadable(s)),
        };
        let digits = &rest[..rest.len() - 1];
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Self::unreadable(s));
        }
        let n: i64 = digits.parse().map_err(|_| Self::unreadable(s))?;
        // 100 years either way is far beyond any window Graph answers; it keeps the
        // arithmetic away from overflow.
        if n.saturating_mul(unit) > 100 * 366 * 86_400 {
            return Err(format!("'{s}' is more than 100 years from now"));
        }
        Ok(Bound::Relative(sign * n * unit))
    }

    fn unreadable(s: &str) -> String {
        format!(
            "'{s}' is neither an RFC 3339 date with an offset (2026-01-01T00:00:00Z) nor a signed duration (-30d, +365d; units s, m, h, d)"
        )
    }

    /// The instant this bound stands for at `anchor`.
    pub fn at(&self, anchor: DateTime<Utc>) -> DateTime<Utc> {
        match *self {
            Bound::Fixed(t) => t,
            Bound::Relative(secs) => anchor + chrono::Duration::seconds(secs),
        }
    }
}

impl fmt::Display for Bound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Bound::Fixed(t) => f.write_str(&stamp(t)),
            Bound::Relative(secs) => {
                let sign = if secs < 0 { '-' } else { '+' };
                let a = secs.unsigned_abs();
                // The largest unit that divides it: `-30d` stays `-30d`, `-36h` stays `-36h`.
                let (n, u) = [(86_400, 'd'), (3_600, 'h'), (60, 'm'), (1, 's')]
                    .into_iter()
                    .find(|(u, _)| a % u == 0)
                    .map(|(u, c)| (a / u, c))
                    .unwrap_or((a, 's'));
                write!(f, "{sign}{n}{u}")
            }
        }
    }
}

impl WindowSpec {
    /// `start` and `end` as a source gives them.
    pub fn new(start: &str, end: &str) -> Result<WindowSpec, (&'static str, String)> {
        Ok(WindowSpec {
            start: Bound::parse(start).map_err(|e| ("start", e))?,
            end: Bound::parse(end).map_err(|e| ("end", e))?,
        })
    }

    /// The identity form, `"<start>/<end>"`.
    pub fn parse(s: &str) -> Result<WindowSpec, String> {
        let (a, b) = s
            .split_once('/')
            .ok_or_else(|| format!("window '{s}': not '<start>/<end>'"))?;
        WindowSpec::new(a, b).map_err(|(_, e)| format!("window '{s}': {e}"))
    }

    /// Whether the window moves (either bound relative).
    pub fn rolls(&self) -> bool {
        matches!(self.start, Bound::Relative(_)) || matches!(self.end, Bound::Relative(_))
    }

    /// The window in force at `now` with relative bounds rolled every `roll`.
    pub fn at(&self, now: DateTime<Utc>, roll: Duration) -> Window {
        let anchor = anchor(now, roll);
        Window {
            start: self.start.at(anchor),
            end: self.end.at(anchor),
        }
    }

    /// What is wrong with it whatever the time: an end not after its start, a window longer
    /// than Graph answers. Mixed windows (one bound fixed) are checked at `now`.
    pub fn check(&self, now: DateTime<Utc>, roll: Duration) -> Result<(), String> {
        let w = self.at(now, roll);
        if w.end <= w.start {
            return Err(match (self.start, self.end) {
                (Bound::Fixed(_), Bound::Fixed(_)) => "must be after start".into(),
                _ => format!(
                    "must be after start (today's window would be {}/{})",
                    stamp(w.start),
                    stamp(w.end)
                ),
            });
        }
        let days = (w.end - w.start).num_seconds() as f64 / 86_400.0;
        if days > MAX_WINDOW_DAYS as f64 {
            return Err(format!(
                "the window spans {days:.0} days: Graph refuses calendar views longer than {MAX_WINDOW_DAYS} days"
            ));
        }
        Ok(())
    }
}

impl fmt::Display for WindowSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.start, self.end)
    }
}

impl Window {
    /// `"<start>/<end>"`, both RFC 3339 in UTC to the second.
    pub fn parse(s: &str) -> Result<Window, String> {
        match WindowSpec::parse(s)? {
            WindowSpec {
                start: Bound::Fixed(start),
                end: Bound::Fixed(end),
            } => Ok(Window { start, end }),
            _ => Err(format!("window '{s}': not two instants")),
        }
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", stamp(self.start), stamp(self.end))
    }
}

/// `now` aligned down to a multiple of `roll` since the Unix epoch (UTC); `roll` under a
/// second counts as a second.
pub fn anchor(now: DateTime<Utc>, roll: Duration) -> DateTime<Utc> {
    let step = roll.as_secs().max(1) as i64;
    let t = now.timestamp().div_euclid(step) * step;
    Utc.timestamp_opt(t, 0).single().unwrap_or(now)
}

/// When the window of a rolling spec next moves, after `now`.
pub fn next_roll(now: DateTime<Utc>, roll: Duration) -> DateTime<Utc> {
    anchor(now, roll) + chrono::Duration::seconds(roll.as_secs().max(1) as i64)
}

/// RFC 3339 in UTC to the second, as identities and links carry it.
fn stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn bounds_parse_and_print_as_written() {
        for (s, want) in [
            ("-30d", Bound::Relative(-30 * 86_400)),
            ("+365d", Bound::Relative(365 * 86_400)),
            ("12h", Bound::Relative(12 * 3_600)),
            ("-90s", Bound::Relative(-90)),
            ("0s", Bound::Relative(0)),
            (
                "2026-01-01T01:00:00+01:00",
                Bound::Fixed(t("2026-01-01T00:00:00Z")),
            ),
        ] {
            assert_eq!(Bound::parse(s), Ok(want), "{s}");
        }
        for bad in [
            "",
            "-",
            "30",
            "-30w",
            "+-3d",
            "3.5d",
            "-30 d",
            "yesterday",
            "99999999999d",
        ] {
            assert!(Bound::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Bound::Relative(-30 * 86_400).to_string(), "-30d");
        assert_eq!(Bound::Relative(36 * 3_600).to_string(), "+36h");
        assert_eq!(Bound::Relative(-90).to_string(), "-90s");
        assert_eq!(Bound::Relative(0).to_string(), "+0d");
        let spec = WindowSpec::new("-30d", "+365d").unwrap();
        assert_eq!(spec.to_string(), "-30d/+365d");
        assert_eq!(WindowSpec::parse("-30d/+365d"), Ok(spec));
        // A fixed spec prints exactly as identities did before relative windows.
        let fixed = WindowSpec::new("2026-01-01T00:00:00Z", "2027-01-01T00:00:00+00:00").unwrap();
        assert_eq!(
            fixed.to_string(),
            "2026-01-01T00:00:00Z/2027-01-01T00:00:00Z"
        );
        assert!(!fixed.rolls() && spec.rolls());
    }

    #[test]
    fn the_window_rolls_on_multiples_of_the_roll_since_the_epoch() {
        let spec = WindowSpec::new("-30d", "+365d").unwrap();
        let w = spec.at(t("2026-12-03T20:30:00Z"), DAY);
        assert_eq!(w.start, t("2026-11-03T00:00:00Z"));
        assert_eq!(w.end, t("2027-12-03T00:00:00Z"));
        // The same all day, the next one from midnight UTC.
        assert_eq!(spec.at(t("2026-12-03T23:59:59Z"), DAY), w);
        assert_ne!(spec.at(t("2026-12-04T00:00:00Z"), DAY), w);
        assert_eq!(
            next_roll(t("2026-12-03T20:30:00Z"), DAY),
            t("2026-12-04T00:00:00Z")
        );
        // Seconds, for tests.
        let s = Duration::from_secs(5);
        assert_eq!(
            anchor(t("2026-12-03T20:30:07Z"), s),
            t("2026-12-03T20:30:05Z")
        );
        // Before the epoch, still aligned down.
        assert_eq!(
            anchor(t("1969-12-31T23:59:59Z"), DAY),
            t("1969-12-31T00:00:00Z")
        );
        // A fixed window does not move.
        let fixed = WindowSpec::parse("2026-01-01T00:00:00Z/2027-01-01T00:00:00Z").unwrap();
        assert_eq!(
            fixed.at(t("2030-01-01T00:00:00Z"), DAY),
            fixed.at(t("2020-01-01T00:00:00Z"), DAY)
        );
        assert_eq!(
            Window::parse(&fixed.at(t("2030-01-01T00:00:00Z"), DAY).to_string()).unwrap(),
            fixed.at(t("2030-01-01T00:00:00Z"), DAY)
        );
    }

    #[test]
    fn windows_graph_would_refuse_are_named() {
        let now = t("2026-12-03T00:00:00Z");
        assert!(WindowSpec::new("-30d", "+365d")
            .unwrap()
            .check(now, DAY)
            .is_ok());
        assert!(WindowSpec::new("-825d", "+1000d")
            .unwrap()
            .check(now, DAY)
            .is_ok());
        let e = WindowSpec::new("-826d", "+1000d")
            .unwrap()
            .check(now, DAY)
            .unwrap_err();
        assert!(e.contains("1825"), "{e}");
        let e = WindowSpec::new("+1d", "-1d")
            .unwrap()
            .check(now, DAY)
            .unwrap_err();
        assert!(e.contains("after start"), "{e}");
        // Mixed: a fixed start with a relative end, checked at now.
        let e = WindowSpec::new("2027-06-01T00:00:00Z", "+30d")
            .unwrap()
            .check(now, DAY)
            .unwrap_err();
        assert!(
            e.contains("today's window would be 2027-06-01T00:00:00Z/2027-01-02T00:00:00Z"),
            "{e}"
        );
    }
}
