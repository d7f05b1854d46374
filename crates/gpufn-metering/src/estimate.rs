//! The seed's cost comparison: serverless GPU billed per GB-second vs a dedicated GPU server.

use serde::Serialize;

/// A workload and the prices to compare.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EstimateInput {
    /// Invocations per day.
    pub invocations_per_day: f64,
    /// Seconds per invocation.
    pub duration_s: f64,
    /// GPU memory per instance, GB.
    pub gpu_memory_gb: f64,
    /// USD per GB-second, active.
    pub usd_per_gb_s: f64,
    /// USD per hour for a dedicated GPU server (the seed's reference: 2).
    pub dedicated_usd_per_hour: f64,
}

/// The ranges an [`EstimateInput`] must lie in: a workload that could exist, at prices that
/// could be asked. Outside them the arithmetic still runs but says nothing (a saving of
/// −2.35e53 %).
pub const RANGES: [(&str, f64, f64); 5] = [
    // Up to about 11 600 invocations a second.
    ("invocations", 0.0, 1e9),
    // Up to a day per invocation.
    ("duration_s", 0.0, 86_400.0),
    // The product's vGPU memory starts at 1 GB; the largest cards hold under a terabyte.
    ("gpu_memory_gb", 1.0, 1024.0),
    ("usd_per_gb_s", 0.0, 1.0),
    ("dedicated_usd_per_hour", 0.01, 10_000.0),
];

impl EstimateInput {
    /// Checks every field against [`RANGES`]: the field's name and why, for the first one out.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let values = [
            self.invocations_per_day,
            self.duration_s,
            self.gpu_memory_gb,
            self.usd_per_gb_s,
            self.dedicated_usd_per_hour,
        ];
        for ((field, lo, hi), v) in RANGES.into_iter().zip(values) {
            if !v.is_finite() || v < lo || v > hi {
                return Err((field, format!("must be between {lo} and {hi} (got {v})")));
            }
        }
        Ok(())
    }
}

/// The comparison, per day.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Estimate {
    /// N × D × G × price.
    pub serverless_usd_per_day: f64,
    /// 24 × hourly price.
    pub dedicated_usd_per_day: f64,
    /// N × D / 86 400, in percent.
    pub gpu_utilization_pct: f64,
    /// 1 − serverless / dedicated, in percent (negative when serverless costs more).
    pub saving_pct: f64,
    /// Invocations per day at which both cost the same.
    pub break_even_invocations_per_day: f64,
}

/// Computes the comparison.
pub fn estimate(i: EstimateInput) -> Estimate {
    let per_invocation = i.duration_s * i.gpu_memory_gb * i.usd_per_gb_s;
    let serverless = i.invocations_per_day * per_invocation;
    let dedicated = 24.0 * i.dedicated_usd_per_hour;
    Estimate {
        serverless_usd_per_day: serverless,
        dedicated_usd_per_day: dedicated,
        gpu_utilization_pct: i.invocations_per_day * i.duration_s / 86_400.0 * 100.0,
        saving_pct: if dedicated > 0.0 {
            (1.0 - serverless / dedicated) * 100.0
        } else {
            0.0
        },
        break_even_invocations_per_day: if per_invocation > 0.0 {
            dedicated / per_invocation
        } else {
            f64::INFINITY
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(invocations: f64) -> Estimate {
        estimate(EstimateInput {
            invocations_per_day: invocations,
            duration_s: 1.0,
            gpu_memory_gb: 4.0,
            usd_per_gb_s: 0.000_018,
            dedicated_usd_per_hour: 2.0,
        })
    }

    #[test]
    fn absurd_inputs_are_refused_naming_the_field() {
        let ok = EstimateInput {
            invocations_per_day: 3_600.0,
            duration_s: 1.0,
            gpu_memory_gb: 4.0,
            usd_per_gb_s: 0.000_018,
            dedicated_usd_per_hour: 2.0,
        };
        assert_eq!(ok.validate(), Ok(()));
        for (bad, field) in [
            (
                EstimateInput {
                    invocations_per_day: 1e300,
                    ..ok
                },
                "invocations",
            ),
            (
                EstimateInput {
                    duration_s: f64::NAN,
                    ..ok
                },
                "duration_s",
            ),
            (
                EstimateInput {
                    gpu_memory_gb: 0.5,
                    ..ok
                },
                "gpu_memory_gb",
            ),
            (
                EstimateInput {
                    usd_per_gb_s: -1.0,
                    ..ok
                },
                "usd_per_gb_s",
            ),
            (
                EstimateInput {
                    dedicated_usd_per_hour: 1e-300,
                    ..ok
                },
                "dedicated_usd_per_hour",
            ),
        ] {
            assert_eq!(bad.validate().map_err(|(f, _)| f), Err(field), "{bad:?}");
        }
        // Within the ranges the figures stay readable.
        let worst = estimate(EstimateInput {
            invocations_per_day: 1e9,
            duration_s: 86_400.0,
            gpu_memory_gb: 1024.0,
            usd_per_gb_s: 1.0,
            dedicated_usd_per_hour: 0.01,
        });
        assert!(worst.saving_pct.is_finite(), "{worst:?}");
    }

    #[test]
    fn the_seeds_example_1() {
        // 3,600 invocations × 1 s × 4 GB: USD 0.259/day vs USD 48, utilization 4.1 %, saving > 99 %.
        let e = seed(3_600.0);
        assert!((e.serverless_usd_per_day - 0.2592).abs() < 1e-9, "{e:?}");
        assert_eq!(e.dedicated_usd_per_day, 48.0);
        assert!((e.gpu_utilization_pct - 4.1667).abs() < 1e-3, "{e:?}");
        assert!(e.saving_pct > 99.0, "{e:?}");
    }

    #[test]
    fn the_seeds_example_2() {
        // 50,000 invocations: USD 3.6/day, utilization 57 %, saving > 90 %.
        let e = seed(50_000.0);
        assert!((e.serverless_usd_per_day - 3.6).abs() < 1e-9, "{e:?}");
        assert!((e.gpu_utilization_pct - 57.87).abs() < 0.01, "{e:?}");
        assert!(e.saving_pct > 90.0 && e.saving_pct < 93.0, "{e:?}");
    }

    #[test]
    fn break_even_is_where_the_costs_meet() {
        let e = seed(0.0);
        // 48 / (1 × 4 × 0.000018) = 666,666.7 invocations a day.
        assert!(
            (e.break_even_invocations_per_day - 666_666.67).abs() < 0.01,
            "{e:?}"
        );
        let at = seed(e.break_even_invocations_per_day);
        assert!(at.saving_pct.abs() < 1e-9, "{at:?}");
    }
}
