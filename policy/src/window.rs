//! Maintenance windows in a named time zone, DST-correct.
//!
//! A recurring window opens at each time its cron expression names, as a
//! wall-clock time in its zone, and stays open for its duration (elapsed
//! time). A wall-clock time that a spring-forward skips opens at the first
//! instant after the gap; one that a fall-back repeats opens once, at the
//! first. A one-off window is a pair of instants.
//!
//! The time-zone rules are jiff's bundled copy of the tz database, so this
//! module reads no files: the same policy gives the same answers on every
//! node.

use crate::cron::Cron;
use fleetmesh_protocol::UnixTime;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

/// Longest window.
pub const MAX_DURATION_SECS: u64 = 24 * 3600;
/// How far ahead `next` looks for a recurring window (covers leap days and
/// rare weekday/date combinations).
const LOOKAHEAD_DAYS: i32 = 366 * 8;

/// When a window is open.
#[derive(Clone, Debug, PartialEq)]
pub enum Schedule {
    /// From `start` until `end`.
    Once {
        /// Opens.
        start: UnixTime,
        /// Closes.
        end: UnixTime,
    },
    /// At every cron time in `tz`, for `duration_secs`.
    Every {
        /// When it opens, as wall-clock times.
        cron: Cron,
        /// How long it stays open.
        duration_secs: u64,
        /// The zone the cron times are in.
        tz: TimeZone,
    },
}

/// One opening of a window: `start <= t < end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Opening {
    /// Opens.
    pub start: UnixTime,
    /// Closes.
    pub end: UnixTime,
}

impl Opening {
    /// True if `now` is inside.
    pub fn contains(&self, now: UnixTime) -> bool {
        self.start <= now && now < self.end
    }
}

/// A time zone by IANA name, from the bundled database.
pub fn zone(name: &str) -> Result<TimeZone, String> {
    TimeZone::get(name).map_err(|_| format!("unknown time zone {name:?}"))
}

fn ts(t: UnixTime) -> Timestamp {
    Timestamp::from_second(t.0.min(i64::MAX as u64) as i64).unwrap_or(Timestamp::MAX)
}

fn unix(t: Timestamp) -> UnixTime {
    UnixTime(t.as_second().max(0) as u64)
}

impl Schedule {
    /// The opening that contains `now`, if any. Overlapping openings of a
    /// recurring window merge: the result runs from the earliest start to
    /// the latest end among those containing `now`.
    pub fn open_at(&self, now: UnixTime) -> Option<Opening> {
        match self {
            Schedule::Once { start, end } => {
                let o = Opening {
                    start: *start,
                    end: *end,
                };
                o.contains(now).then_some(o)
            }
            Schedule::Every { tz, .. } => {
                let today = ts(now).to_zoned(tz.clone()).date();
                // Openings last at most a day: those of the two days before
                // today can still be open.
                let mut open: Option<Opening> = None;
                for back in 0..=2 {
                    let Ok(d) = today.checked_sub(back.days()) else {
                        continue;
                    };
                    for o in self.openings_on(d).filter(|o| o.contains(now)) {
                        open = Some(match open {
                            None => o,
                            Some(p) => Opening {
                                start: p.start.min(o.start),
                                end: p.end.max(o.end),
                            },
                        });
                    }
                }
                open
            }
        }
    }

    /// The opening that contains `now`, or else the first to start after
    /// it; `None` if the window never opens again.
    pub fn next(&self, now: UnixTime) -> Option<Opening> {
        if let Some(o) = self.open_at(now) {
            return Some(o);
        }
        match self {
            Schedule::Once { start, end } => (now < *start).then_some(Opening {
                start: *start,
                end: *end,
            }),
            Schedule::Every { tz, .. } => {
                let mut day = ts(now).to_zoned(tz.clone()).date();
                for _ in 0..LOOKAHEAD_DAYS {
                    if let Some(o) = self.openings_on(day).find(|o| o.start > now) {
                        return Some(o);
                    }
                    day = day.tomorrow().ok()?;
                }
                None
            }
        }
    }

    /// Openings that start on local `date`, in order.
    fn openings_on(&self, date: Date) -> Box<dyn Iterator<Item = Opening> + '_> {
        let Schedule::Every {
            cron,
            duration_secs,
            tz,
        } = self
        else {
            return Box::new(std::iter::empty());
        };
        if !cron.matches_date(date) {
            return Box::new(std::iter::empty());
        }
        let mut seen = Vec::new();
        Box::new(cron.times().filter_map(move |(h, m)| {
            let civil = date.at(h, m, 0, 0);
            // `compatible`: a skipped time opens after the gap, a repeated
            // time at its first occurrence.
            let start = tz.to_ambiguous_zoned(civil).compatible().ok()?.timestamp();
            // Two skipped times can land on the same instant: open once.
            if seen.contains(&start) {
                return None;
            }
            seen.push(start);
            let start = unix(start);
            Some(Opening {
                start,
                end: start.plus_secs(*duration_secs),
            })
        }))
    }
}

#[cfg(test)]
mod tests;
