use super::*;
use proptest::prelude::*;

fn at(rfc3339: &str) -> UnixTime {
    unix(rfc3339.parse::<Timestamp>().expect("timestamp"))
}

fn every(cron: &str, hours: u64, tz: &str) -> Schedule {
    Schedule::Every {
        cron: cron.parse().expect("cron"),
        duration_secs: hours * 3600,
        tz: zone(tz).expect("zone"),
    }
}

#[test]
fn berlin_spring_forward_opens_after_the_gap_and_fall_back_opens_once() {
    let w = every("30 2 * * *", 1, "Europe/Berlin");
    // 2026-03-29: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist.
    let o = w.next(at("2026-03-28T23:00:00Z")).expect("opens");
    assert_eq!(o.start, at("2026-03-29T01:30:00Z")); // 03:30 CEST
    assert_eq!(o.end, at("2026-03-29T02:30:00Z"));
    // 2026-10-25: 03:00 CEST falls back to 02:00 CET; 02:30 happens twice.
    let o = w.next(at("2026-10-24T23:00:00Z")).expect("opens");
    assert_eq!(o.start, at("2026-10-25T00:30:00Z")); // the first 02:30 (CEST)
    let after = w.next(o.end).expect("opens again");
    assert_eq!(
        after.start,
        at("2026-10-26T01:30:00Z"),
        "not again at the second 02:30"
    );
    // A normal winter night.
    assert!(w.open_at(at("2026-01-15T01:45:00Z")).is_some()); // 02:45 CET
    assert!(w.open_at(at("2026-01-15T02:30:00Z")).is_none()); // 03:30 CET
}

#[test]
fn new_york_dst_both_ways() {
    let w = every("30 1 * * *", 2, "America/New_York");
    // 2026-03-08: 02:00 EST jumps to 03:00 EDT; 01:30 EST exists.
    let o = w.next(at("2026-03-08T00:00:00Z")).expect("opens");
    assert_eq!(o.start, at("2026-03-08T06:30:00Z"));
    assert_eq!(o.end, at("2026-03-08T08:30:00Z"), "two elapsed hours");
    // 2026-11-01: 02:00 EDT falls back to 01:00 EST; 01:30 happens twice.
    let o = w.next(at("2026-11-01T00:00:00Z")).expect("opens");
    assert_eq!(o.start, at("2026-11-01T05:30:00Z"));
    let gap = every("30 2 * * *", 1, "America/New_York");
    let o = gap.next(at("2026-03-08T00:00:00Z")).expect("opens");
    assert_eq!(
        o.start,
        at("2026-03-08T07:30:00Z"),
        "02:30 is skipped: 03:30 EDT"
    );
}

#[test]
fn month_is_the_local_month_behind_utc() {
    // 22:00 on January 31st in New York is already February in UTC; a UTC
    // evaluator would call it February. It opens in local January only.
    let w = every("0 22 31 jan *", 1, "America/New_York");
    let o = w.next(at("2026-01-01T00:00:00Z")).expect("opens");
    assert_eq!(o.start, at("2026-02-01T03:00:00Z"));
    let o = w.next(o.end).expect("next year");
    assert_eq!(o.start, at("2027-02-01T03:00:00Z"));
}

#[test]
fn month_ends_and_leap_days() {
    let w = every("0 1 31 * *", 1, "UTC");
    let o = w.next(at("2026-02-01T00:00:00Z")).expect("opens");
    assert_eq!(o.start, at("2026-03-31T01:00:00Z"), "February has no 31st");
    let o = w.next(o.end).expect("opens");
    assert_eq!(o.start, at("2026-05-31T01:00:00Z"), "April has no 31st");
    let leap = every("0 3 29 feb *", 1, "Europe/Berlin");
    let o = leap.next(at("2026-03-01T00:00:00Z")).expect("opens");
    assert_eq!(o.start, at("2028-02-29T02:00:00Z"));
}

#[test]
fn one_off_windows_and_overlapping_openings() {
    let once = Schedule::Once {
        start: UnixTime(100),
        end: UnixTime(200),
    };
    assert_eq!(
        once.next(UnixTime(50)).map(|o| o.start),
        Some(UnixTime(100))
    );
    assert!(once.open_at(UnixTime(150)).is_some());
    assert!(once.open_at(UnixTime(200)).is_none());
    assert_eq!(once.next(UnixTime(200)), None);
    // Every hour for two hours: always open, openings merge.
    let w = every("0 * * * *", 2, "UTC");
    let o = w.open_at(at("2026-05-05T10:30:00Z")).expect("open");
    assert_eq!(
        (o.start, o.end),
        (at("2026-05-05T09:00:00Z"), at("2026-05-05T12:00:00Z"))
    );
}

fn cron_strategy() -> impl Strategy<Value = String> {
    (
        prop_oneof![
            Just("0".to_string()),
            Just("*/20".to_string()),
            (0..60u8).prop_map(|m| m.to_string())
        ],
        prop_oneof![
            Just("*".to_string()),
            (0..24u8).prop_map(|h| h.to_string()),
            Just("1-3".to_string())
        ],
        prop_oneof![
            Just("*".to_string()),
            (1..=31u8).prop_map(|d| d.to_string())
        ],
        prop_oneof![
            Just("*".to_string()),
            (1..=12u8).prop_map(|m| m.to_string())
        ],
        prop_oneof![Just("*".to_string()), (0..7u8).prop_map(|d| d.to_string())],
    )
        .prop_map(|(a, b, c, d, e)| format!("{a} {b} {c} {d} {e}"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn next_is_never_past_and_agrees_with_open_at(
        cron in cron_strategy(),
        hours in 1u64..=24,
        tz in prop_oneof![Just("Europe/Berlin"), Just("America/New_York"), Just("Australia/Lord_Howe"), Just("UTC")],
        now in 1_700_000_000u64..1_900_000_000,
    ) {
        let c: Cron = cron.parse().expect("generated crons parse");
        prop_assume!(c.can_fire());
        let w = Schedule::Every { cron: c, duration_secs: hours * 3600, tz: zone(tz).expect("zone") };
        let now = UnixTime(now);
        let next = w.next(now).expect("a window that can fire opens within 8 years");
        prop_assert!(next.end > now, "next window {next:?} is in the past at {now}");
        match w.open_at(now) {
            Some(o) => prop_assert_eq!(o, next),
            None => {
                prop_assert!(next.start > now);
                prop_assert!(w.open_at(next.start).is_some(), "not open at its own start");
                // Nothing opens between now and next.start.
                let mid = UnixTime(now.0 + (next.start.0 - now.0) / 2);
                prop_assert!(w.open_at(mid).is_none());
            }
        }
    }
}
