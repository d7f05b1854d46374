//! One module per group of subcommands.

pub mod cluster;
pub mod cost;
pub mod functions;
pub mod images;
pub mod invoke;
pub mod replay;
pub mod secrets;
pub mod serve;
pub mod simulate;
pub mod sleep_app;
pub mod tasks;
pub mod tokens;

/// The RFC 3339 time `t` given to `flag`, in UTC; the error names the flag.
pub fn rfc3339_flag(flag: &str, t: &str) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(t)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| anyhow::anyhow!("{flag}: {t:?} is not an RFC 3339 time: {e}"))
}
