//! Knobs, percentiles and table rows shared by the benchmarks (included with
//! `#[path]`; each bench uses what it needs).
#![allow(dead_code)]

use std::time::Duration;

/// Milliseconds, fractional.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The `p` quantile (0..=1) by nearest rank; `samples` must not be empty.
pub fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut v = samples.to_vec();
    v.sort();
    let idx = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[idx.min(v.len() - 1)]
}

/// `| what | p50 | p90 | p99 | max | n |` in milliseconds; dashes when
/// there is no sample.
pub fn row(what: &str, samples: &[Duration]) -> String {
    let Some(max) = samples.iter().max() else {
        return format!("| {what} | – | – | – | – | 0 |\n");
    };
    format!(
        "| {what} | {:.1} | {:.1} | {:.1} | {:.1} | {} |\n",
        ms(percentile(samples, 0.5)),
        ms(percentile(samples, 0.9)),
        ms(percentile(samples, 0.99)),
        ms(*max),
        samples.len()
    )
}

/// A benchmark knob from the environment, or its default.
pub fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
