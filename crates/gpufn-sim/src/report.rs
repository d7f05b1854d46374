//! Results as a table, JSON, and a Pareto plot.

use std::fmt::Write;

use crate::engine::SimResult;

/// A readable table, one row per policy.
pub fn table(results: &[SimResult]) -> String {
    let header = [
        "POLICY",
        "REQUESTS",
        "COLD",
        "COLD%",
        "P75-FN-COLD%",
        "P50-S",
        "P99-S",
        "BUSY-GB-S",
        "BILLED-GB-S",
        "EFFIC",
        "COST-USD",
        "PEAK-CARDS",
        "REFUSED",
        "BY-QUOTA",
    ];
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|r| {
            vec![
                r.policy.clone(),
                r.requests.to_string(),
                r.cold_starts.to_string(),
                format!("{:.2}", r.cold_start_rate * 100.0),
                format!("{:.1}", r.p75_function_cold_start_pct),
                format!("{:.1}", r.p50_latency_s),
                format!("{:.1}", r.p99_latency_s),
                format!("{:.0}", r.busy_gb_seconds),
                format!("{:.0}", r.billed_gb_seconds),
                format!("{:.3}", r.efficiency),
                format!("{:.2}", r.cost_usd),
                r.peak_cards.to_string(),
                r.refused.to_string(),
                r.refused_for_quota.to_string(),
            ]
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &[String]| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if i == 0 {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect();
        let _ = writeln!(out, "{}", parts.join("  "));
    };
    line(
        &mut out,
        &header.iter().map(ToString::to_string).collect::<Vec<_>>(),
    );
    for row in &rows {
        line(&mut out, row);
    }
    out
}

/// The Pareto plot: billed GB-s (x) against cold-start rate (y), one labelled point per policy.
pub fn svg(results: &[SimResult], title: &str) -> String {
    let (w, h, m) = (720.0, 480.0, 70.0);
    let xs: Vec<f64> = results.iter().map(|r| r.billed_gb_seconds).collect();
    let ys: Vec<f64> = results.iter().map(|r| r.cold_start_rate * 100.0).collect();
    let max_x = xs.iter().copied().fold(0.0, f64::max).max(1.0) * 1.1;
    let max_y = ys.iter().copied().fold(0.0, f64::max).max(1.0) * 1.1;
    let px = |x: f64| m + x / max_x * (w - 2.0 * m);
    let py = |y: f64| h - m - y / max_y * (h - 2.0 * m);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="15">{}</text>"#,
        w / 2.0,
        escape(title)
    );
    let _ = writeln!(
        s,
        r#"<line x1="{m}" y1="{0}" x2="{1}" y2="{0}" stroke="black"/><line x1="{m}" y1="{m}" x2="{m}" y2="{0}" stroke="black"/>"#,
        h - m,
        w - m
    );
    for i in 0..=4 {
        let fx = max_x * f64::from(i) / 4.0;
        let fy = max_y * f64::from(i) / 4.0;
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            px(fx),
            h - m + 18.0,
            human(fx)
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{:.1}%</text>"#,
            m - 6.0,
            py(fy) + 4.0,
            fy
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">billed GB-seconds (GPU memory held)</text>"#,
        w / 2.0,
        h - 20.0
    );
    let _ = writeln!(
        s,
        r#"<text x="18" y="{}" text-anchor="middle" transform="rotate(-90 18 {})">cold-start rate</text>"#,
        h / 2.0,
        h / 2.0
    );
    for (r, (x, y)) in results.iter().zip(xs.iter().zip(&ys)) {
        let _ = writeln!(
            s,
            r##"<circle cx="{:.1}" cy="{:.1}" r="5" fill="#1f77b4"/><text x="{:.1}" y="{:.1}">{}</text>"##,
            px(*x),
            py(*y),
            px(*x) + 8.0,
            py(*y) - 6.0,
            escape(&r.policy)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn human(v: f64) -> String {
    if v >= 1e9 {
        format!("{:.1}G", v / 1e9)
    } else if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
