//! Five-field cron expressions (`minute hour day-of-month month
//! day-of-week`), evaluated on civil dates and times of a named time zone.
//!
//! Fields take `*`, numbers, ranges `a-b`, steps `*/n` and `a-b/n`, and
//! lists of those; months and weekdays also take three-letter names
//! (`jan`, `mon`). Weekday 0 and 7 are Sunday. As in Vixie cron, when both
//! day-of-month and day-of-week are restricted, a day matches if either
//! does.

use jiff::civil::{Date, Weekday};
use std::fmt;
use std::str::FromStr;

/// A parsed cron expression.
#[derive(Clone, PartialEq, Eq)]
pub struct Cron {
    text: String,
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    days_any: bool,
    weekdays_any: bool,
}

impl fmt::Debug for Cron {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cron({:?})", self.text)
    }
}

impl fmt::Display for Cron {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// Parses one field into a bit set of the values in `lo..=hi`.
fn field(text: &str, what: &str, lo: u32, hi: u32, names: &[&str]) -> Result<u64, String> {
    let value = |s: &str| -> Result<u32, String> {
        if let Some(i) = names.iter().position(|n| s.eq_ignore_ascii_case(n)) {
            return Ok(i as u32 + if lo == 1 { 1 } else { 0 });
        }
        let v: u32 = s
            .parse()
            .map_err(|_| format!("{what}: {s:?} is not a number"))?;
        if v < lo || v > hi {
            return Err(format!("{what}: {v} is outside {lo}-{hi}"));
        }
        Ok(v)
    };
    let mut bits = 0u64;
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("{what}: step {s:?} must be a positive number"))?;
                (r, step)
            }
            None => (item, 1),
        };
        let (a, b) = match range {
            "*" => (lo, hi),
            r => match r.split_once('-') {
                Some((a, b)) => (value(a)?, value(b)?),
                None if step > 1 => (value(r)?, hi),
                None => {
                    let v = value(r)?;
                    (v, v)
                }
            },
        };
        if a > b {
            return Err(format!("{what}: range {a}-{b} is backwards"));
        }
        for v in (a..=b).step_by(step as usize) {
            bits |= 1 << v;
        }
    }
    Ok(bits)
}

impl FromStr for Cron {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let parts: Vec<&str> = text.split_whitespace().collect();
        let [min, hour, dom, month, dow] = parts[..] else {
            return Err(format!(
                "cron {text:?} must have 5 fields (minute hour day month weekday), has {}",
                parts.len()
            ));
        };
        let mut weekdays = field(dow, "weekday", 0, 7, &WEEKDAYS)?;
        if weekdays & (1 << 7) != 0 {
            weekdays = (weekdays | 1) & 0x7f;
        }
        Ok(Cron {
            text: parts.join(" "),
            minutes: field(min, "minute", 0, 59, &[])?,
            hours: field(hour, "hour", 0, 23, &[])? as u32,
            days: field(dom, "day of month", 1, 31, &[])? as u32,
            months: field(month, "month", 1, 12, &MONTHS)? as u16,
            weekdays: weekdays as u8,
            days_any: dom == "*",
            weekdays_any: dow == "*",
        })
    }
}

impl Cron {
    /// True if the expression fires on some minute of `date`.
    pub fn matches_date(&self, date: Date) -> bool {
        if self.months & (1 << date.month()) == 0 {
            return false;
        }
        let day = self.days & (1 << date.day()) != 0;
        let weekday = self.weekdays & (1 << weekday_number(date.weekday())) != 0;
        match (self.days_any, self.weekdays_any) {
            (true, true) => true,
            (true, false) => weekday,
            (false, true) => day,
            (false, false) => day || weekday,
        }
    }

    /// The (hour, minute) pairs it fires at on a matching date, in order.
    pub fn times(&self) -> impl Iterator<Item = (i8, i8)> + '_ {
        (0..24i8)
            .filter(|h| self.hours & (1 << h) != 0)
            .flat_map(move |h| {
                (0..60i8)
                    .filter(move |m| self.minutes & (1 << m) != 0)
                    .map(move |m| (h, m))
            })
    }

    /// True if some date in a 400-year Gregorian cycle matches (so that
    /// `30 2 31 feb *` is refused instead of never firing).
    pub fn can_fire(&self) -> bool {
        (1..=12).any(|m| {
            self.months & (1 << m) != 0
                && (1..=31)
                    .any(|d| Date::new(2000, m, d).is_ok() && self.matches_date_any_year(m, d))
        })
    }

    fn matches_date_any_year(&self, month: i8, day: i8) -> bool {
        // Every weekday falls on every month/day within 28 years.
        (2000..2028).any(|y| Date::new(y, month, day).is_ok_and(|d| self.matches_date(d)))
    }
}

fn weekday_number(w: Weekday) -> u32 {
    w.to_sunday_zero_offset() as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;

    #[test]
    fn fields_lists_ranges_steps_and_names() {
        let c: Cron = "*/15 2-4 * jan,jul mon-fri".parse().expect("parses");
        assert_eq!(c.times().count(), 12);
        assert_eq!(c.times().next(), Some((2, 0)));
        assert!(c.matches_date(date(2026, 1, 5))); // Monday
        assert!(!c.matches_date(date(2026, 1, 4))); // Sunday
        assert!(!c.matches_date(date(2026, 2, 2))); // February
        let sunday: Cron = "0 3 * * 7".parse().expect("7 is Sunday");
        assert!(sunday.matches_date(date(2026, 1, 4)));
    }

    #[test]
    fn day_of_month_or_weekday_when_both_are_restricted() {
        let c: Cron = "0 0 1 * fri".parse().expect("parses");
        assert!(c.matches_date(date(2026, 3, 1))); // the 1st, a Sunday
        assert!(c.matches_date(date(2026, 3, 6))); // a Friday
        assert!(!c.matches_date(date(2026, 3, 7)));
    }

    #[test]
    fn errors_name_the_field() {
        for (text, expect) in [
            ("0 3 * *", "5 fields"),
            ("60 3 * * *", "minute: 60 is outside 0-59"),
            ("0 3 0 * *", "day of month: 0"),
            ("0 3 * foo *", "month: \"foo\""),
            ("0 5-3 * * *", "backwards"),
            ("*/0 3 * * *", "step"),
        ] {
            let err = text.parse::<Cron>().expect_err(text);
            assert!(err.contains(expect), "{text}: {err}");
        }
        let never: Cron = "0 3 31 feb *".parse().expect("parses");
        assert!(!never.can_fire());
        let leap: Cron = "0 3 29 feb *".parse().expect("parses");
        assert!(leap.can_fire());
    }
}
