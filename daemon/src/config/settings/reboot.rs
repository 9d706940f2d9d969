//! `[maintenance] reboot = "coordinated"` as plain data: when reboots
//! may begin (the window, parsed and judged here, without a clock) and
//! what reboots the machine. The watcher that acts on it is
//! `fleet::reboot`.

use std::path::PathBuf;

/// Monday first, as `Mon-Fri` reads.
const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
const MINUTES_PER_DAY: u32 = 24 * 60;

/// When reboots may begin: some days of the week, a span of the day, in
/// UTC. `"Mon-Fri 02:00-05:00 UTC"`, `"Sat,Sun 01:00-06:00 UTC"`,
/// `"22:00-02:00 UTC"` (every day, across midnight: the span belongs to
/// the day it opens on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Monday first.
    days: [bool; 7],
    /// Minute of the day it opens.
    start: u32,
    /// Minute of the day it closes (before `start`: the next day).
    end: u32,
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.days != [true; 7] {
            let names: Vec<&str> = DAYS
                .iter()
                .zip(self.days)
                .filter_map(|(n, on)| on.then_some(*n))
                .collect();
            write!(f, "{} ", names.join(","))?;
        }
        write!(
            f,
            "{:02}:{:02}-{:02}:{:02} UTC",
            self.start / 60,
            self.start % 60,
            self.end / 60,
            self.end % 60
        )
    }
}

/// Why a `window` is not one; each names the part at fault and the form
/// expected (shown under the key `maintenance.window`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    /// Not three-letter English day names.
    #[error("{0:?} is not a day: use {days} (a range like Mon-Fri, or a list like Sat,Sun)", days = DAYS.join(" "))]
    NotADay(String),
    /// Not `HH:MM`.
    #[error("{0:?} is not a time of day: use HH:MM, 00:00 to 24:00")]
    NotATime(String),
    /// Not `[DAYS] HH:MM-HH:MM UTC` at all.
    #[error(
        "{0:?} is not a window: use \"[DAYS] HH:MM-HH:MM UTC\", e.g. \"Mon-Fri 02:00-05:00 UTC\""
    )]
    NotAWindow(String),
    /// A zone other than UTC, or none.
    #[error(
        "the window {0:?} must end with its zone, UTC (only UTC is understood: write the hours in UTC), as in \"Mon-Fri 02:00-05:00 UTC\""
    )]
    NotUtc(String),
    /// A list of days that names none.
    #[error("the window {0:?} names no day")]
    NoDay(String),
    /// Not `HH:MM-HH:MM`.
    #[error("{0:?} is not a span of the day: use HH:MM-HH:MM, e.g. 02:00-05:00")]
    NotASpan(String),
    /// Start and end are the same time.
    #[error("the window {0:?} is empty: leave `window` out to allow reboots at any time")]
    Empty(String),
}

fn day(name: &str) -> Result<usize, WindowError> {
    DAYS.iter()
        .position(|d| d.eq_ignore_ascii_case(name))
        .ok_or_else(|| WindowError::NotADay(name.to_owned()))
}

fn minute(hhmm: &str) -> Result<u32, WindowError> {
    let bad = || WindowError::NotATime(hhmm.to_owned());
    let (h, m) = hhmm.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if m >= 60 || h > 24 || (h == 24 && m != 0) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

impl std::str::FromStr for Window {
    type Err = WindowError;

    /// `[DAYS] HH:MM-HH:MM UTC`; DAYS is a comma-separated list of days
    /// (`Mon` … `Sun`) and ranges (`Mon-Fri`, `Fri-Mon`), every day when
    /// left out. Only UTC: a machine's local zone is not the fleet's.
    fn from_str(s: &str) -> Result<Self, WindowError> {
        let words: Vec<&str> = s.split_whitespace().collect();
        let (days, span, zone) = match words.as_slice() {
            [span, zone] => (None, *span, *zone),
            [days, span, zone] => (Some(*days), *span, *zone),
            _ => {
                return Err(WindowError::NotAWindow(s.to_owned()));
            }
        };
        if zone != "UTC" {
            return Err(WindowError::NotUtc(s.to_owned()));
        }
        let mut on = [days.is_none(); 7];
        for part in days
            .unwrap_or_default()
            .split(',')
            .filter(|p| !p.is_empty())
        {
            match part.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (day(a)?, day(b)?);
                    // Fri-Mon wraps over the weekend.
                    let mut d = a;
                    loop {
                        on[d] = true;
                        if d == b {
                            break;
                        }
                        d = (d + 1) % 7;
                    }
                }
                None => on[day(part)?] = true,
            }
        }
        if on == [false; 7] {
            return Err(WindowError::NoDay(s.to_owned()));
        }
        let (a, b) = span
            .split_once('-')
            .ok_or_else(|| WindowError::NotASpan(span.to_owned()))?;
        let (start, end) = (minute(a)? % MINUTES_PER_DAY, minute(b)?);
        if start == end {
            return Err(WindowError::Empty(span.to_owned()));
        }
        Ok(Self {
            days: on,
            start,
            end,
        })
    }
}

impl Window {
    /// Whether `unix_secs` is inside the window.
    pub fn contains(&self, unix_secs: u64) -> bool {
        let (weekday, minute) = split(unix_secs);
        if self.start < self.end {
            self.days[weekday] && (self.start..self.end).contains(&minute)
        } else {
            // Across midnight: the evening of an allowed day, or the
            // morning after one.
            (self.days[weekday] && minute >= self.start)
                || (self.days[(weekday + 6) % 7] && minute < self.end)
        }
    }

    /// When it next opens at or after `unix_secs` (`unix_secs` itself when
    /// open now).
    pub fn next_open(&self, unix_secs: u64) -> u64 {
        if self.contains(unix_secs) {
            return unix_secs;
        }
        let today = unix_secs / 86_400;
        (today..today + 8)
            .filter(|d| self.days[weekday(*d)])
            .map(|d| d * 86_400 + u64::from(self.start) * 60)
            .find(|t| *t > unix_secs)
            // Some day is always on (the parser sees to it).
            .unwrap_or(unix_secs)
    }
}

/// Monday = 0 of the day `day` (days since 1970-01-01, a Thursday).
fn weekday(day: u64) -> usize {
    usize::try_from((day + 3) % 7).unwrap_or(0)
}

fn split(unix_secs: u64) -> (usize, u32) {
    let minute = u32::try_from((unix_secs % 86_400) / 60).unwrap_or(0);
    (weekday(unix_secs / 86_400), minute)
}

/// `[maintenance] reboot = "coordinated"`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebootSettings {
    /// When reboots may begin (`None`: at any time).
    pub window: Option<Window>,
    /// What reboots the machine (argv, no shell).
    pub command: Vec<String>,
    /// The file whose presence asks for a reboot.
    pub required: PathBuf,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// 2026-12-07 (a Monday) at `hh:mm` UTC, plus `days`.
    fn monday(days: u64, hh: u64, mm: u64) -> u64 {
        // 2026-12-07T00:00:00Z
        1_796_601_600 + days * 86_400 + hh * 3600 + mm * 60
    }

    #[test]
    fn the_reference_monday_is_a_monday() {
        assert_eq!(split(monday(0, 0, 0)), (0, 0));
        assert_eq!(split(monday(6, 23, 59)), (6, 23 * 60 + 59));
    }

    #[test]
    fn windows_parse_and_print_canonically() {
        let w: Window = "Mon-Fri 02:00-05:00 UTC".parse().unwrap();
        assert_eq!(w.to_string(), "Mon,Tue,Wed,Thu,Fri 02:00-05:00 UTC");
        let w: Window = "sat,SUN 01:30-06:00 UTC".parse().unwrap();
        assert_eq!(w.to_string(), "Sat,Sun 01:30-06:00 UTC");
        let w: Window = "Fri-Mon 22:00-02:00 UTC".parse().unwrap();
        assert_eq!(w.to_string(), "Mon,Fri,Sat,Sun 22:00-02:00 UTC");
        let w: Window = "00:00-24:00 UTC".parse().unwrap();
        assert_eq!(w.to_string(), "00:00-24:00 UTC");
    }

    #[test]
    fn bad_windows_say_what_is_wrong() {
        let e = |s: &str| s.parse::<Window>().unwrap_err().to_string();
        assert_eq!(
            "Mon-Fry 02:00-05:00 UTC".parse::<Window>(),
            Err(WindowError::NotADay("Fry".into()))
        );
        assert!(e("Mon-Fri 02:00-05:00").contains("must end with its zone, UTC"));
        assert!(e("Mon-Fri 02:00-05:00 CET").contains("only UTC"));
        assert!(e("Mon - Fri 02:00-05:00 UTC").contains("is not a window"));
        assert!(e("").contains("is not a window"));
        assert!(e("Mon-Fry 02:00-05:00 UTC").contains("\"Fry\" is not a day"));
        assert!(e("Mon 2:00-05:00 UTC").contains("not a time of day"));
        assert!(e("Mon 02:60-05:00 UTC").contains("not a time of day"));
        assert!(e("Mon 24:01-05:00 UTC").contains("not a time of day"));
        assert!(e("Mon 02:00 UTC").contains("not a span of the day"));
        assert!(e("Mon 02:00-02:00 UTC").contains("is empty"));
        assert!(e(", 02:00-03:00 UTC").contains("names no day"));
    }

    #[test]
    fn a_weekday_window_is_open_only_inside() {
        let w: Window = "Mon-Fri 02:00-05:00 UTC".parse().unwrap();
        assert!(!w.contains(monday(0, 1, 59)));
        assert!(w.contains(monday(0, 2, 0)));
        assert!(w.contains(monday(4, 4, 59)));
        assert!(!w.contains(monday(4, 5, 0)));
        // Saturday and Sunday are out.
        assert!(!w.contains(monday(5, 3, 0)));
        assert!(!w.contains(monday(6, 3, 0)));
        // Friday after the window: next Monday 02:00.
        assert_eq!(w.next_open(monday(4, 6, 0)), monday(7, 2, 0));
        // Before it on a Tuesday: that day's.
        assert_eq!(w.next_open(monday(1, 0, 30)), monday(1, 2, 0));
        // Inside: now.
        assert_eq!(w.next_open(monday(2, 3, 0)), monday(2, 3, 0));
    }

    #[test]
    fn a_window_across_midnight_belongs_to_the_day_it_opens() {
        let w: Window = "Fri 22:00-02:00 UTC".parse().unwrap();
        assert!(w.contains(monday(4, 22, 0)));
        assert!(w.contains(monday(4, 23, 59)));
        // Saturday morning is Friday's night.
        assert!(w.contains(monday(5, 1, 59)));
        assert!(!w.contains(monday(5, 2, 0)));
        // Friday morning is Thursday's, which is not allowed.
        assert!(!w.contains(monday(4, 1, 0)));
        assert!(!w.contains(monday(5, 22, 30)));
        assert_eq!(w.next_open(monday(5, 3, 0)), monday(11, 22, 0));
    }

    #[test]
    fn every_day_is_the_default() {
        let w: Window = "23:00-24:00 UTC".parse().unwrap();
        for d in 0..7 {
            assert!(w.contains(monday(d, 23, 30)));
            assert!(!w.contains(monday(d, 22, 59)));
        }
    }
}
