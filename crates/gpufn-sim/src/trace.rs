//! Trace readers. Every format becomes a list of requests: arrival time (seconds from the start),
//! function, service time, and the GPU memory the function is billed for.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// One request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Request {
    /// Seconds from the start of the trace.
    pub t: f64,
    /// Function index into [`Trace::functions`].
    pub function: u32,
    /// Service time in seconds.
    pub duration_s: f64,
}

/// A function of the trace.
#[derive(Debug, Clone, PartialEq)]
pub struct Function {
    /// Its name in the trace.
    pub name: String,
    /// GPU memory billed per second.
    pub memory_gb: u32,
    /// Requests one instance serves at once.
    pub concurrency: u32,
}

/// A whole trace, requests sorted by arrival.
#[derive(Debug, Clone, Default)]
pub struct Trace {
    /// Requests, by arrival time.
    pub requests: Vec<Request>,
    /// Functions.
    pub functions: Vec<Function>,
    /// Cold-start (model load) times to draw from, in seconds; empty means `SimConfig::cold_start_s`.
    pub cold_start_samples: Vec<f64>,
    /// Unix time of `t = 0`, for traces with dates (scheduled provisioning reads the wall clock).
    pub start_unix: Option<f64>,
}

impl Trace {
    /// The first or the second half of the trace by time (for choosing a policy's parameters on
    /// one half and reporting the other): the requests before (or from) the midpoint of the
    /// trace's span, the second half's times shifted to start at zero. Functions and cold-start
    /// samples are kept whole.
    pub fn half(&self, second: bool) -> Trace {
        let mid = self.requests.last().map_or(0.0, |r| r.t) / 2.0;
        let requests = self
            .requests
            .iter()
            .filter(|r| (r.t >= mid) == second)
            .map(|r| Request {
                t: if second { r.t - mid } else { r.t },
                ..*r
            })
            .collect();
        Trace {
            // The second half starts at the midpoint.
            start_unix: self.start_unix.map(|s| if second { s + mid } else { s }),
            requests,
            functions: self.functions.clone(),
            cold_start_samples: self.cold_start_samples.clone(),
        }
    }
}

impl Trace {
    /// Only function `name`'s requests (as function 0), or `None` when the trace has no such
    /// function.
    pub fn only(&self, name: &str) -> Option<Trace> {
        let index = self.functions.iter().position(|f| f.name == name)?;
        Some(Trace {
            start_unix: self.start_unix,
            requests: self
                .requests
                .iter()
                .filter(|r| r.function as usize == index)
                .map(|r| Request { function: 0, ..*r })
                .collect(),
            functions: vec![self.functions[index].clone()],
            cold_start_samples: self.cold_start_samples.clone(),
        })
    }

    /// The busiest functions' names, most requests first.
    pub fn busiest(&self, n: usize) -> Vec<(String, usize)> {
        let mut counts = vec![0usize; self.functions.len()];
        for r in &self.requests {
            if let Some(c) = counts.get_mut(r.function as usize) {
                *c += 1;
            }
        }
        let mut out: Vec<(String, usize)> = self
            .functions
            .iter()
            .map(|f| f.name.clone())
            .zip(counts)
            .collect();
        out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        out.truncate(n);
        out
    }
}

/// Trace formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `lora_request_trace.csv` (+ `basemodel_update_latency_anon.csv` beside it).
    AlibabaGenai,
    /// `invocations.csv` + `durations.csv` + `memory.csv` in one directory.
    AzureFunctions,
    /// `AzureLLMInferenceTrace_*.csv`.
    AzureLlm,
    /// `time,function,duration_s[,gpu_memory_gb]`.
    Csv,
}

impl Format {
    /// Parses a `--format` value.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "alibaba-genai" => Format::AlibabaGenai,
            "azure-functions" => Format::AzureFunctions,
            "azure-llm" => Format::AzureLlm,
            "csv" => Format::Csv,
            _ => return None,
        })
    }

    /// Guesses the format from the path.
    pub fn detect(path: &Path) -> Self {
        let p = path.to_string_lossy();
        if p.contains("lora_request_trace") || p.contains("alibaba-genai") {
            Format::AlibabaGenai
        } else if p.contains("AzureLLM") || p.contains("azure-llm") {
            Format::AzureLlm
        } else if path.is_dir() || p.contains("azure-functions") {
            Format::AzureFunctions
        } else {
            Format::Csv
        }
    }
}

/// Why a trace could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line did not parse.
    #[error("{path}:{line}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What was wrong.
        message: String,
    },
}

fn read(path: &Path) -> Result<String, TraceError> {
    std::fs::read_to_string(path).map_err(|source| TraceError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn parse_err(path: &Path, line: usize, message: impl Into<String>) -> TraceError {
    TraceError::Parse {
        path: path.to_path_buf(),
        line: line + 1,
        message: message.into(),
    }
}

/// Seconds since 1970 of `YYYY-MM-DD HH:MM:SS[.fraction]` (UTC).
pub fn parse_datetime(s: &str) -> Option<f64> {
    let (date, time) = s.trim().split_once(' ')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':');
    let (hh, mm) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let ss: f64 = t.next()?.parse().ok()?;
    // Out of range: refused (found by fuzzing: a year of 10^17 overflowed the day count).
    let ok = (0..=9999).contains(&y)
        && (1..=12).contains(&m)
        && (1..=31).contains(&day)
        && (0..=24).contains(&hh)
        && (0..=59).contains(&mm)
        && ss.is_finite()
        && (0.0..61.0).contains(&ss);
    if !ok {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + hh * 3600 + mm * 60) as f64 + ss)
}

struct Builder {
    index: HashMap<String, u32>,
    trace: Trace,
}

impl Builder {
    fn new() -> Self {
        Self {
            index: HashMap::new(),
            trace: Trace::default(),
        }
    }

    fn function(&mut self, name: &str, memory_gb: u32, concurrency: u32) -> u32 {
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        let i = u32::try_from(self.trace.functions.len()).unwrap_or(u32::MAX);
        self.trace.functions.push(Function {
            name: name.to_string(),
            memory_gb,
            concurrency,
        });
        self.index.insert(name.to_string(), i);
        i
    }

    fn finish(mut self) -> Trace {
        let t0 = self
            .trace
            .requests
            .iter()
            .map(|r| r.t)
            .fold(f64::INFINITY, f64::min);
        if t0.is_finite() {
            self.trace.start_unix = Some(t0);
        }
        for r in &mut self.trace.requests {
            r.t -= if t0.is_finite() { t0 } else { 0.0 };
        }
        self.trace.requests.sort_by(|a, b| a.t.total_cmp(&b.t));
        self.trace
    }
}

/// Reads a trace; `memory_gb` overrides the per-format GPU size, `concurrency` the per-format
/// instance concurrency.
pub fn load(
    path: &Path,
    format: Format,
    memory_gb: Option<u32>,
    concurrency: Option<u32>,
) -> Result<Trace, TraceError> {
    match format {
        Format::AlibabaGenai => alibaba(path, memory_gb, concurrency),
        Format::AzureFunctions => azure_functions(path, memory_gb, concurrency),
        Format::AzureLlm => azure_llm(path, memory_gb, concurrency),
        Format::Csv => csv(path, memory_gb, concurrency),
    }
}

/// Alibaba GenAI: each `checkpoint_model_version_id` is a function (a Stable Diffusion base model
/// on a 16 GB card, concurrency 1); service time is `exec_time_seconds`; cold starts are drawn from
/// the measured base-model load latencies in the same directory.
fn alibaba(
    path: &Path,
    memory_gb: Option<u32>,
    concurrency: Option<u32>,
) -> Result<Trace, TraceError> {
    let file = if path.is_dir() {
        path.join("lora_request_trace.csv")
    } else {
        path.to_path_buf()
    };
    let text = read(&file)?;
    let mut b = Builder::new();
    let mut lines = text.lines().enumerate();
    let header: Vec<&str> = lines
        .next()
        .map(|(_, h)| h.split(',').collect())
        .unwrap_or_default();
    let col = |name: &str| header.iter().position(|h| *h == name);
    let (Some(c_time), Some(c_exec), Some(c_model)) = (
        col("gmt_create"),
        col("exec_time_seconds"),
        col("checkpoint_model_version_id"),
    ) else {
        return Err(parse_err(
            &file,
            0,
            "missing gmt_create, exec_time_seconds or checkpoint_model_version_id",
        ));
    };
    for (n, line) in lines {
        let f: Vec<&str> = line.split(',').collect();
        let get = |c: usize| f.get(c).copied().unwrap_or_default();
        let Some(t) = parse_datetime(get(c_time)) else {
            return Err(parse_err(&file, n, format!("bad time {:?}", get(c_time))));
        };
        let duration_s: f64 = get(c_exec).parse().unwrap_or(0.0);
        if get(c_model).is_empty() || !duration_s.is_finite() || duration_s <= 0.0 {
            continue; // failed or unlabelled requests used no model time
        }
        let function = b.function(
            get(c_model),
            memory_gb.unwrap_or(16),
            concurrency.unwrap_or(1),
        );
        b.trace.requests.push(Request {
            t,
            function,
            duration_s,
        });
    }
    let latency = file.with_file_name("basemodel_update_latency_anon.csv");
    if let Ok(text) = std::fs::read_to_string(&latency) {
        b.trace.cold_start_samples = text
            .lines()
            .skip(1)
            .filter_map(|l| l.split(',').nth(1)?.parse::<f64>().ok())
            .filter(|ms| ms.is_finite() && *ms > 0.0)
            .map(|ms| ms / 1000.0)
            .collect();
    }
    Ok(b.finish())
}

/// Azure Functions 2019: per-minute counts become evenly spaced arrivals in their minute; service
/// times are drawn (deterministically) from each function's duration percentiles. These are CPU
/// functions: each gets a GPU size from its average allocated memory, 1 GB per 128 MB (so 128 MB →
/// 1 GB, 1 GB → 8 GB), capped at 16 GB — small, medium and large models in the usual proportions.
fn azure_functions(
    dir: &Path,
    memory_gb: Option<u32>,
    concurrency: Option<u32>,
) -> Result<Trace, TraceError> {
    let inv_path = dir.join("invocations.csv");
    let dur_path = dir.join("durations.csv");
    let mem_path = dir.join("memory.csv");
    let invocations = read(&inv_path)?;
    let durations = read(&dur_path)?;
    let memory = std::fs::read_to_string(&mem_path).unwrap_or_default();
    // HashFunction → duration percentile points (ms) at 0, 1, 25, 50, 75, 99, 100.
    let mut dur: HashMap<&str, [f64; 7]> = HashMap::new();
    for line in durations.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() < 14 {
            continue;
        }
        let mut p = [0.0; 7];
        for (i, v) in f[7..14].iter().enumerate() {
            p[i] = v.parse().unwrap_or(0.0);
        }
        dur.insert(f[2], p);
    }
    let mut mem: HashMap<&str, f64> = HashMap::new();
    for line in memory.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        if let (Some(h), Some(m)) = (f.first(), f.get(4).and_then(|m| m.parse().ok())) {
            mem.insert(h, m);
        }
    }
    let mut b = Builder::new();
    let mut seq: u64 = 0;
    for (n, line) in invocations.lines().enumerate().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() < 5 {
            return Err(parse_err(&inv_path, n, "too few columns"));
        }
        let name = f[2];
        let Some(points) = dur.get(name) else {
            continue;
        };
        let gb = memory_gb.unwrap_or_else(|| {
            let mb = mem.get(name).copied().unwrap_or(256.0);
            ((mb / 128.0).ceil() as u32).clamp(1, 16)
        });
        let function = b.function(name, gb, concurrency.unwrap_or(1));
        for (minute, count) in f[4..].iter().enumerate() {
            let count: u32 = count.trim().parse().unwrap_or(0);
            for i in 0..count {
                let t = minute as f64 * 60.0 + (f64::from(i) + 0.5) * 60.0 / f64::from(count);
                seq += 1;
                let duration_s = (quantile(points, unit(seq)) / 1000.0).max(0.001);
                b.trace.requests.push(Request {
                    t,
                    function,
                    duration_s,
                });
            }
        }
    }
    Ok(b.finish())
}

/// A deterministic number in [0, 1) from a counter (splitmix64).
pub fn unit(seed: u64) -> f64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// Interpolates a value at quantile `u` between the points at 0, 1, 25, 50, 75, 99, 100 %.
fn quantile(points: &[f64; 7], u: f64) -> f64 {
    const AT: [f64; 7] = [0.0, 0.01, 0.25, 0.5, 0.75, 0.99, 1.0];
    for i in 1..AT.len() {
        if u <= AT[i] {
            let f = (u - AT[i - 1]) / (AT[i] - AT[i - 1]);
            return points[i - 1] + f * (points[i] - points[i - 1]);
        }
    }
    points[6]
}

/// Azure LLM 2023: one function (an LLM on a 48 GB card) serving every request; service time is
/// 20 ms per generated token plus 0.2 ms per context token (a prefill/decode model of a mid-size LLM
/// on one card); concurrency 8, as a batching server would run it.
fn azure_llm(
    path: &Path,
    memory_gb: Option<u32>,
    concurrency: Option<u32>,
) -> Result<Trace, TraceError> {
    let text = read(path)?;
    let mut b = Builder::new();
    let function = b.function("llm", memory_gb.unwrap_or(48), concurrency.unwrap_or(8));
    for (n, line) in text.lines().enumerate().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let t = f
            .first()
            .and_then(|s| parse_datetime(s))
            .ok_or_else(|| parse_err(path, n, "bad TIMESTAMP"))?;
        let ctx: f64 = f.get(1).and_then(|s| s.trim().parse().ok()).unwrap_or(0.0);
        let generated: f64 = f.get(2).and_then(|s| s.trim().parse().ok()).unwrap_or(0.0);
        b.trace.requests.push(Request {
            t,
            function,
            duration_s: (0.02 * generated + 0.0002 * ctx).max(0.01),
        });
    }
    Ok(b.finish())
}

/// `time,function,duration_s[,gpu_memory_gb]`, time in seconds; a header line is optional.
fn csv(path: &Path, memory_gb: Option<u32>, concurrency: Option<u32>) -> Result<Trace, TraceError> {
    let text = read(path)?;
    let mut b = Builder::new();
    for (n, line) in text.lines().enumerate() {
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        if line.trim().is_empty()
            || (n == 0 && f.first().is_some_and(|h| h.parse::<f64>().is_err()))
        {
            continue;
        }
        if f.len() < 3 {
            return Err(parse_err(
                path,
                n,
                "expected time,function,duration_s[,gpu_memory_gb]",
            ));
        }
        let t: f64 = f[0]
            .parse()
            .map_err(|_| parse_err(path, n, format!("time: not a number ({:?})", f[0])))?;
        let duration_s: f64 = f[2]
            .parse()
            .map_err(|_| parse_err(path, n, format!("duration_s: not a number ({:?})", f[2])))?;
        if !(t.is_finite() && duration_s.is_finite() && duration_s >= 0.0) {
            return Err(parse_err(
                path,
                n,
                "time and duration_s must be finite, duration_s >= 0",
            ));
        }
        let gb = match f.get(3) {
            Some(g) => g.parse().map_err(|_| {
                parse_err(
                    path,
                    n,
                    format!("gpu_memory_gb: not a whole number ({g:?})"),
                )
            })?,
            None => memory_gb.unwrap_or(4),
        };
        let function = b.function(f[1], gb, concurrency.unwrap_or(1));
        b.trace.requests.push(Request {
            t,
            function,
            duration_s,
        });
    }
    Ok(b.finish())
}

/// Entry point for the `trace` fuzz target and its corpus regression test: `bytes` as a trace file
/// of every format. Any outcome but a panic. Not an API.
#[doc(hidden)]
pub fn fuzz_formats(bytes: &[u8]) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let path = std::env::temp_dir().join(format!(
        "gpufn-fuzz-trace-{}-{}.csv",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    if std::fs::write(&path, bytes).is_err() {
        return;
    }
    for format in [
        Format::AlibabaGenai,
        Format::AzureFunctions,
        Format::AzureLlm,
        Format::Csv,
    ] {
        let _ = load(&path, format, None, None);
    }
    let _ = std::fs::remove_file(&path);
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates_out_of_range_are_refused_not_overflowed() {
        assert_eq!(super::parse_datetime("1970-01-01 00:00:01"), Some(1.0));
        for bad in [
            "100000000000000000-01-01 00:00:00",
            "2024-13-01 00:00:00",
            "2024-01-01 99999999999999:00:00",
            "2024-01-01 00:00:NaN",
            "2024-01-01 00:00:inf",
        ] {
            assert_eq!(super::parse_datetime(bad), None, "{bad}");
        }
    }

    use super::*;

    #[test]
    fn a_trace_splits_into_halves_by_time() {
        let trace = Trace {
            start_unix: None,
            requests: (0..=10)
                .map(|i| Request {
                    t: f64::from(i) * 10.0,
                    function: 0,
                    duration_s: 1.0,
                })
                .collect(),
            ..Trace::default()
        };
        let first = trace.half(false);
        let second = trace.half(true);
        assert_eq!(
            first.requests.iter().map(|r| r.t).collect::<Vec<_>>(),
            [0.0, 10.0, 20.0, 30.0, 40.0]
        );
        // From the midpoint (50 s), shifted to start at zero.
        assert_eq!(
            second.requests.iter().map(|r| r.t).collect::<Vec<_>>(),
            [0.0, 10.0, 20.0, 30.0, 40.0, 50.0]
        );
    }

    #[test]
    fn datetimes() {
        assert_eq!(parse_datetime("1970-01-01 00:00:00"), Some(0.0));
        assert_eq!(parse_datetime("2024-11-15 16:57:50"), Some(1_731_689_870.0));
        assert_eq!(
            parse_datetime("2023-11-16 18:17:03.9799600").map(|t| (t * 1000.0).round()),
            Some(1_700_158_623_980.0)
        );
        assert_eq!(parse_datetime("garbage"), None);
    }

    #[test]
    fn quantiles_interpolate_and_units_are_uniform_enough() {
        let p = [0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0];
        assert_eq!(quantile(&p, 0.5), 30.0);
        assert_eq!(quantile(&p, 1.0), 60.0);
        let mean: f64 = (0..10_000).map(unit).sum::<f64>() / 10_000.0;
        assert!((mean - 0.5).abs() < 0.02, "{mean}");
    }

    #[test]
    fn csv_traces_and_their_errors() {
        let dir = std::env::temp_dir().join(format!("gpufn-sim-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let ok = dir.join("ok.csv");
        std::fs::write(
            &ok,
            "time,function,duration_s,gpu_memory_gb\n10,a,1.5,8\n5,b,2\n",
        )
        .expect("write");
        let t = load(&ok, Format::Csv, None, None).expect("loads");
        assert_eq!(t.requests.len(), 2);
        assert_eq!(t.requests[0].t, 0.0, "times start at zero, sorted");
        assert_eq!(t.functions[t.requests[1].function as usize].memory_gb, 8);
        let bad = dir.join("bad.csv");
        std::fs::write(&bad, "1,a,x\n").expect("write");
        let err = load(&bad, Format::Csv, None, None)
            .expect_err("bad")
            .to_string();
        assert!(
            err.ends_with("bad.csv:1: duration_s: not a number (\"x\")"),
            "{err}"
        );
    }
}
