//! Small helpers shared by the modules.

use std::time::{SystemTime, UNIX_EPOCH};

/// RFC 3339 with milliseconds, UTC.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The inverse of [`now_ms`].
pub(crate) fn from_ms(ms: i64) -> SystemTime {
    UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// Wall-clock milliseconds of a monotonic instant (for records that outlive the process).
pub(crate) fn wall_ms(t: std::time::Instant) -> i64 {
    let now = std::time::Instant::now();
    let wall = now_ms();
    let delta = |d: std::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    if t <= now {
        wall - delta(now - t)
    } else {
        wall + delta(t - now)
    }
}
