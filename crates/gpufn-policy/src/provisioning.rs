//! How many provisioned instances a function keeps, beyond its fixed `min_instances`: scheduled
//! (cron patterns in a time zone, Function Compute's `scheduledActions`) and target-tracking
//! (keep provisioned capacity near a utilization, FC's `targetTrackingPolicies`).
//!
//! Pure: the wall-clock time (`now`, UTC) and the load are inputs. Time zones come from chrono-tz,
//! so a schedule written in local time follows its zone's daylight-saving changes.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;

/// One scheduled action: from each time `cron` matches (in `tz`), keep `min_instances`.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// The action's name, for the console and logs.
    pub name: String,
    cron: Cron,
    tz: Tz,
    /// Provisioned instances from each match on.
    pub min_instances: u32,
    /// Matches count only from `start` and until `end` (Function Compute's `startTime` and
    /// `endTime`); the last one keeps its effect after `end` until another action's.
    start: Option<DateTime<Utc>>,
    end: Option<DateTime<Utc>>,
}

/// A pattern or zone that cannot be used, in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleError(pub String);

impl Schedule {
    /// A schedule from a five-field cron pattern (minute hour day month weekday, POSIX weekdays,
    /// `@daily` and the like) and an IANA zone name (`Asia/Shanghai`, `UTC`).
    pub fn new(
        name: &str,
        cron: &str,
        timezone: &str,
        min_instances: u32,
    ) -> Result<Self, ScheduleError> {
        let cron = parse_cron(cron)?;
        let tz = parse_zone(timezone)?;
        Ok(Self {
            name: name.to_string(),
            cron,
            tz,
            min_instances,
            start: None,
            end: None,
        })
    }

    /// The same, its matches counted only within `[start, end]` (either open).
    pub fn bounded(mut self, start: Option<DateTime<Utc>>, end: Option<DateTime<Utc>>) -> Self {
        self.start = start;
        self.end = end;
        self
    }

    /// The latest time at or before `now` the pattern matched (within a year; none before).
    pub fn last_match(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let until = self.end.map_or(now, |e| e.min(now));
        let local = until.with_timezone(&self.tz);
        let t = self.cron.find_previous_occurrence(&local, true).ok()?;
        let t = t.with_timezone(&Utc);
        (self.start.is_none_or(|s| t >= s)
            && now.signed_duration_since(t) <= chrono::TimeDelta::days(366))
        .then_some(t)
    }

    /// Whether the pattern matches at least once in the year after `now` (a pattern that never
    /// does — `0 0 31 2 *` — costs a long search each time it is looked up).
    pub fn matches_within_a_year(&self, now: DateTime<Utc>) -> bool {
        self.next_match(now)
            .is_some_and(|t| t.signed_duration_since(now) <= chrono::TimeDelta::days(366))
    }

    /// The first time after `now` the pattern matches.
    pub fn next_match(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let t = match self.start {
            // Not started yet: its first match from the start on.
            Some(s) if s > now => self
                .cron
                .find_next_occurrence(&s.with_timezone(&self.tz), true)
                .ok()?,
            _ => self
                .cron
                .find_next_occurrence(&now.with_timezone(&self.tz), false)
                .ok()?,
        };
        let t = t.with_timezone(&Utc);
        self.end.is_none_or(|e| t <= e).then_some(t)
    }
}

/// Parses a five-field cron pattern (seconds and years are not taken: provisioning changes at
/// most once a minute).
pub fn parse_cron(pattern: &str) -> Result<Cron, ScheduleError> {
    let fields = pattern.split_whitespace().count();
    if !(pattern.starts_with('@') || fields == 5) {
        return Err(ScheduleError(format!(
            "must have five fields (minute hour day-of-month month day-of-week), got {fields}"
        )));
    }
    Cron::from_str(pattern).map_err(|e| ScheduleError(e.to_string()))
}

/// Parses an IANA time zone name.
pub fn parse_zone(name: &str) -> Result<Tz, ScheduleError> {
    name.parse::<Tz>()
        .map_err(|_| ScheduleError(format!("{name:?} is not an IANA time zone name")))
}

/// Which schedule is in force at `now`: the one whose last match is the latest (a tie goes to
/// the later entry), with that match. `None` before any has matched: `min_instances` applies.
pub fn in_force(schedules: &[Schedule], now: DateTime<Utc>) -> Option<(usize, DateTime<Utc>)> {
    schedules
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.last_match(now).map(|t| (i, t)))
        .max_by_key(|&(i, t)| (t, i))
}

/// When the schedule in force may next change: the earliest next match of any schedule.
pub fn next_change(schedules: &[Schedule], now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    schedules.iter().filter_map(|s| s.next_match(now)).min()
}

/// What the schedules say at `at`: the action in force (its index and since when) and the next
/// match (its index and when). It holds until that next match, so a caller may keep it until then
/// instead of searching the patterns again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outlook {
    /// When it was worked out.
    pub at: DateTime<Utc>,
    /// [`in_force`] at `at`.
    pub in_force: Option<(usize, DateTime<Utc>)>,
    /// The earliest next match after `at` (the first schedule among ties).
    pub next: Option<(usize, DateTime<Utc>)>,
}

impl Outlook {
    /// Works it out for `now`.
    pub fn new(schedules: &[Schedule], now: DateTime<Utc>) -> Self {
        let next = schedules
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.next_match(now).map(|t| (i, t)))
            .min_by_key(|&(i, t)| (t, i));
        Self {
            at: now,
            in_force: in_force(schedules, now),
            next,
        }
    }

    /// Whether it still holds at `now` (not before it was worked out, not at or past the next
    /// match).
    pub fn holds_at(&self, now: DateTime<Utc>) -> bool {
        self.at <= now && self.next.is_none_or(|(_, t)| now < t)
    }
}

/// Target tracking: provisioned instances so that the average requests in flight over them come
/// to `target` of their capacity (`concurrency` each), between `floor` and `ceiling`.
pub fn tracked_instances(
    avg_in_flight: f64,
    concurrency: u32,
    target: f64,
    floor: u32,
    ceiling: u32,
) -> u32 {
    let capacity = f64::from(concurrency.max(1)) * target.clamp(0.01, 1.0);
    let wanted = if avg_in_flight.is_finite() && avg_in_flight > 0.0 {
        // Within a hundredth of a whole number is that number: 2.004 instances' worth is not 3,
        // and the tail of a decayed average (0.0001) asks for none.
        (avg_in_flight / capacity - 0.01).ceil().max(0.0)
    } else {
        0.0
    };
    let wanted = if wanted >= f64::from(u32::MAX) {
        u32::MAX
    } else {
        wanted as u32
    };
    wanted.clamp(floor, ceiling.max(floor))
}

/// A time-weighted average of a step signal (requests in flight), forgetting with time constant
/// `tau`: what target tracking reads, so one burst does not provision for an hour and a lull does
/// not release at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadAverage {
    value: f64,
    current: f64,
    at: Option<std::time::Instant>,
    tau: Duration,
}

impl LoadAverage {
    /// Starts at zero.
    pub fn new(tau: Duration) -> Self {
        Self {
            value: 0.0,
            current: 0.0,
            at: None,
            tau: tau.max(Duration::from_millis(1)),
        }
    }

    /// The signal is `x` from `now` on.
    pub fn set(&mut self, x: f64, now: std::time::Instant) {
        self.value = self.value_at(now);
        self.current = x;
        self.at = Some(now);
    }

    /// The average at `now`.
    pub fn value_at(&self, now: std::time::Instant) -> f64 {
        let Some(at) = self.at else {
            return self.current;
        };
        let dt = now.saturating_duration_since(at).as_secs_f64();
        let keep = (-dt / self.tau.as_secs_f64()).exp();
        self.current + (self.value - self.current) * keep
    }
}

/// `t` as the zone's local time, for explanations (`2026-03-08 08:00 EDT`).
pub fn local_time(t: DateTime<Utc>, tz: &str) -> String {
    match parse_zone(tz) {
        Ok(zone) => zone
            .from_utc_datetime(&t.naive_utc())
            .format("%Y-%m-%d %H:%M %Z")
            .to_string(),
        Err(_) => t.format("%Y-%m-%d %H:%M UTC").to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn the_latest_match_is_in_force_and_the_next_match_is_the_next_change() {
        let s = [
            Schedule::new("workday", "0 8 * * 1-5", "Asia/Shanghai", 4).unwrap(),
            Schedule::new("night", "0 20 * * *", "Asia/Shanghai", 0).unwrap(),
        ];
        // Monday 2026-11-30 09:00 in Shanghai (01:00 UTC): the workday action (08:00) is in force.
        let now = utc("2026-11-30T01:00:00Z");
        let (i, since) = in_force(&s, now).unwrap();
        assert_eq!((i, since), (0, utc("2026-11-30T00:00:00Z")));
        assert_eq!(next_change(&s, now), Some(utc("2026-11-30T12:00:00Z")));
        // 21:00 Shanghai: night.
        let (i, _) = in_force(&s, utc("2026-11-30T13:00:00Z")).unwrap();
        assert_eq!(s[i].name, "night");
        // Saturday 10:00: still Friday night's action (no workday on weekends).
        let (i, since) = in_force(&s, utc("2026-12-05T02:00:00Z")).unwrap();
        assert_eq!((i, since), (1, utc("2026-12-04T12:00:00Z")));
        let o = Outlook::new(&s, now);
        assert_eq!(o.in_force, Some((0, utc("2026-11-30T00:00:00Z"))));
        assert_eq!(o.next, Some((1, utc("2026-11-30T12:00:00Z"))));
        assert!(o.holds_at(utc("2026-11-30T11:59:59Z")));
        assert!(!o.holds_at(utc("2026-11-30T12:00:00Z")));
        assert!(
            !o.holds_at(utc("2026-11-30T00:59:59Z")),
            "before it was worked out"
        );
        // A tie goes to the later entry.
        let tie = [
            Schedule::new("a", "0 * * * *", "UTC", 1).unwrap(),
            Schedule::new("b", "0 * * * *", "UTC", 2).unwrap(),
        ];
        assert_eq!(in_force(&tie, utc("2026-11-30T01:30:00Z")).unwrap().0, 1);
    }

    #[test]
    fn a_bounded_schedule_counts_matches_only_within_its_window() {
        let day = Schedule::new("day", "0 8 * * *", "UTC", 2)
            .unwrap()
            .bounded(
                Some(utc("2026-12-01T00:00:00Z")),
                Some(utc("2026-12-03T00:00:00Z")),
            );
        let night = Schedule::new("night", "0 20 * * *", "UTC", 0).unwrap();
        let s = [day, night];
        // Before its start: the daily 08:00 does not count; next is 2026-12-01 08:00.
        let before = utc("2026-11-30T09:00:00Z");
        assert_eq!(s[0].last_match(before), None);
        assert_eq!(s[0].next_match(before), Some(utc("2026-12-01T08:00:00Z")));
        assert_eq!(in_force(&s, before).unwrap().0, 1);
        // Within: in force after 08:00.
        assert_eq!(in_force(&s, utc("2026-12-02T09:00:00Z")).unwrap().0, 0);
        // After its end: no more matches; the last one (12-02 08:00) lost to the night's.
        let after = utc("2026-12-05T09:00:00Z");
        assert_eq!(s[0].next_match(after), None);
        assert_eq!(s[0].last_match(after), Some(utc("2026-12-02T08:00:00Z")));
        assert_eq!(in_force(&s, after).unwrap().0, 1);
        assert_eq!(next_change(&s, after), Some(utc("2026-12-05T20:00:00Z")));
    }

    #[test]
    fn a_local_schedule_follows_daylight_saving_time() {
        // 08:00 in New York is 13:00 UTC in winter and 12:00 UTC from 2026-03-08 (EDT).
        let s = [Schedule::new("morning", "0 8 * * *", "America/New_York", 3).unwrap()];
        assert_eq!(
            next_change(&s, utc("2026-03-07T00:00:00Z")),
            Some(utc("2026-03-07T13:00:00Z"))
        );
        assert_eq!(
            next_change(&s, utc("2026-03-07T14:00:00Z")),
            Some(utc("2026-03-08T12:00:00Z"))
        );
        assert_eq!(
            in_force(&s, utc("2026-03-08T12:30:00Z")).unwrap().1,
            utc("2026-03-08T12:00:00Z")
        );
        assert_eq!(
            local_time(utc("2026-03-08T12:00:00Z"), "America/New_York"),
            "2026-03-08 08:00 EDT"
        );
        // And back on 2026-11-01 (EST).
        assert_eq!(
            next_change(&s, utc("2026-11-01T00:00:00Z")),
            Some(utc("2026-11-01T13:00:00Z"))
        );
    }

    #[test]
    fn bad_patterns_and_zones_are_named() {
        assert!(parse_cron("0 8 * * 1-5").is_ok());
        assert!(parse_cron("@daily").is_ok());
        assert!(
            parse_cron("0 0 8 * * 1-5")
                .unwrap_err()
                .0
                .contains("five fields")
        );
        assert!(parse_cron("0 25 * * *").is_err());
        assert!(parse_zone("Mars/Olympus").unwrap_err().0.contains("IANA"));
        assert!(parse_zone("UTC").is_ok());
        let now = DateTime::parse_from_rfc3339("2026-11-30T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let never = Schedule::new("x", "0 0 31 2 *", "UTC", 1).unwrap();
        assert!(!never.matches_within_a_year(now));
        let leap = Schedule::new("x", "0 0 29 2 *", "UTC", 1).unwrap();
        assert!(!leap.matches_within_a_year(now), "next in 2028");
        assert!(
            Schedule::new("x", "0 8 * * 1-5", "UTC", 1)
                .unwrap()
                .matches_within_a_year(now)
        );
    }

    #[test]
    fn target_tracking_keeps_capacity_near_the_target_within_bounds() {
        // 3 requests in flight at concurrency 1, target 0.6: 5 instances (3 / 0.6).
        assert_eq!(tracked_instances(3.0, 1, 0.6, 0, 10), 5);
        assert_eq!(tracked_instances(3.0, 1, 0.6, 0, 4), 4, "ceiling");
        assert_eq!(tracked_instances(0.0, 1, 0.6, 2, 10), 2, "floor");
        assert_eq!(
            tracked_instances(1.2, 2, 0.6, 0, 10),
            1,
            "exactly one's worth"
        );
        assert_eq!(tracked_instances(f64::NAN, 1, 0.6, 1, 10), 1);
        assert_eq!(
            tracked_instances(0.0001, 1, 0.6, 0, 10),
            0,
            "a decayed tail"
        );
        assert_eq!(tracked_instances(1e30, 1, 0.5, 0, 7), 7);
    }

    #[test]
    fn the_load_average_follows_a_step_with_its_time_constant() {
        let t0 = std::time::Instant::now();
        let mut a = LoadAverage::new(Duration::from_secs(60));
        a.set(0.0, t0);
        a.set(10.0, t0);
        let at = |s: u64| a.value_at(t0 + Duration::from_secs(s));
        assert!(at(0) < 1e-9);
        assert!((at(60) - 10.0 * (1.0 - (-1.0f64).exp())).abs() < 1e-9);
        assert!(at(600) > 9.99);
        a.set(0.0, t0 + Duration::from_secs(600));
        assert!(a.value_at(t0 + Duration::from_secs(660)) < 4.0);
    }
}
