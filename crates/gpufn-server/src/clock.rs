//! The wall clock scheduled provisioning reads: the real one, or (for tests and demos, the hidden
//! `--clock-start` / `--clock-rate` flags) one that starts at a given time and runs faster, so a
//! schedule's minute-long window passes in seconds. Only schedules read it; billing, logs and
//! timeouts keep the real clock.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

/// Real time, or real time shifted and sped up.
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    /// Virtual time at `origin`, and how many virtual seconds pass per real one.
    shifted: Option<(DateTime<Utc>, Instant, f64)>,
}

impl Default for WallClock {
    fn default() -> Self {
        Self::real()
    }
}

impl WallClock {
    /// The system clock.
    pub fn real() -> Self {
        Self { shifted: None }
    }

    /// A clock that reads `start` now and runs `rate` times faster than real time (rate > 0).
    pub fn starting_at(start: DateTime<Utc>, rate: f64) -> Self {
        let rate = if rate.is_finite() && rate > 0.0 {
            rate
        } else {
            1.0
        };
        Self {
            shifted: Some((start, Instant::now(), rate)),
        }
    }

    /// The time now.
    pub fn now(&self) -> DateTime<Utc> {
        match self.shifted {
            None => Utc::now(),
            Some((start, origin, rate)) => {
                let real = origin.elapsed().as_secs_f64() * rate;
                start + chrono::TimeDelta::milliseconds((real * 1000.0) as i64)
            }
        }
    }

    /// The monotonic instant at which this clock will read `t`, seen from (`now`, `wall`) read
    /// together; `now` itself for a time already past.
    pub fn instant_of(&self, t: DateTime<Utc>, now: Instant, wall: DateTime<Utc>) -> Instant {
        let ahead = t.signed_duration_since(wall).to_std().unwrap_or_default();
        let rate = self.shifted.map_or(1.0, |(_, _, r)| r);
        now.checked_add(Duration::from_secs_f64(ahead.as_secs_f64() / rate))
            .unwrap_or(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fast_clock_maps_its_times_back_to_real_instants() {
        let start = DateTime::parse_from_rfc3339("2026-03-08T07:59:00-05:00")
            .unwrap()
            .with_timezone(&Utc);
        let c = WallClock::starting_at(start, 60.0);
        let (now, wall) = (Instant::now(), c.now());
        assert!(wall >= start && wall < start + chrono::TimeDelta::seconds(5));
        // One virtual minute ahead is one real second ahead.
        let at = c.instant_of(wall + chrono::TimeDelta::seconds(60), now, wall);
        let d = at.duration_since(now);
        assert!((d.as_secs_f64() - 1.0).abs() < 1e-6, "{d:?}");
        assert_eq!(
            c.instant_of(wall - chrono::TimeDelta::seconds(5), now, wall),
            now
        );
        let real = WallClock::real();
        assert!((real.now() - Utc::now()).num_seconds().abs() < 2);
    }
}
