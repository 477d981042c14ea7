//! Per-key usage baseline: flags a request whose prompt size or whose key's
//! request rate jumps far above what that key usually does.
//!
//! Per key the detector keeps, in O(1) memory:
//! - an exponentially weighted mean of prompt tokens (a plain running mean
//!   for the first 20 requests, then α = 0.05);
//! - request counts in one-minute buckets aligned to the key's first request,
//!   and a weighted mean of the counts of the completed minutes in which the
//!   key was active (plain mean for the first 5, then α = 0.2). Idle minutes
//!   do not drag the baseline to zero.
//!
//! The rate of a request is the number of requests in the sliding minute
//! ending at it (this one included), estimated from the current and previous
//! bucket. A request is anomalous when a value exceeds
//! `factor × max(baseline, floor)`; the floors are [`TOKEN_FLOOR`] tokens and
//! [`RATE_FLOOR`] requests per minute. The rate is judged only once the key
//! has at least one completed active minute.
//!
//! The baseline is updated after judging, with the new sample clipped to the
//! threshold, so one outlier does not blind the detector while a lasting
//! change of workload is still learnt within a handful of requests.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

/// Smallest prompt-token baseline used for judging.
pub const TOKEN_FLOOR: f64 = 32.0;
/// Smallest requests-per-minute baseline used for judging.
pub const RATE_FLOOR: f64 = 2.0;

const TOKEN_ALPHA: f64 = 0.05;
const RATE_ALPHA: f64 = 0.2;
const MINUTE_MS: i64 = 60_000;

#[derive(Clone, Copy, Debug)]
pub struct AnomalyConfig {
    /// How many times the baseline a value must exceed (default 10).
    pub factor: f64,
    /// Requests per key before anything is judged (default 20).
    pub warmup: u64,
}

impl Default for AnomalyConfig {
    fn default() -> Self {
        AnomalyConfig {
            factor: 10.0,
            warmup: 20,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Verdict {
    Normal,
    /// `reason` is `"prompt_tokens"` or `"request_rate"`; `value` exceeded
    /// `factor × baseline` (`baseline` is the floored baseline used).
    Anomalous {
        reason: &'static str,
        value: f64,
        baseline: f64,
    },
}

impl Verdict {
    pub fn is_anomalous(&self) -> bool {
        matches!(self, Verdict::Anomalous { .. })
    }
}

#[derive(Clone, Debug)]
struct Baseline {
    /// Requests observed.
    seen: u64,
    token_mean: f64,
    /// Time of the first request: minute buckets are aligned to it.
    origin_ms: i64,
    /// Current bucket index (minutes since `origin_ms`).
    minute: i64,
    /// Requests in the current bucket.
    minute_count: u64,
    /// Requests in the bucket before the current one (0 if it was idle).
    prev_count: u64,
    /// Completed active minutes folded into `rate_mean`.
    minutes_seen: u64,
    rate_mean: f64,
}

impl Baseline {
    fn new(now_ms: i64) -> Self {
        Baseline {
            seen: 0,
            token_mean: 0.0,
            origin_ms: now_ms,
            minute: 0,
            minute_count: 0,
            prev_count: 0,
            minutes_seen: 0,
            rate_mean: 0.0,
        }
    }

    /// Move to the bucket of `now_ms`, folding a completed active minute into
    /// the rate baseline. A clock that goes back stays in the current bucket.
    fn roll(&mut self, now_ms: i64, factor: f64) {
        let minute = now_ms.saturating_sub(self.origin_ms).div_euclid(MINUTE_MS);
        if minute <= self.minute {
            return;
        }
        if self.minute_count > 0 {
            let count = self.minute_count as f64;
            self.rate_mean = if self.minutes_seen == 0 {
                count
            } else {
                let clipped = count.min(factor * self.rate_mean.max(RATE_FLOOR));
                let alpha = (1.0 / (self.minutes_seen + 1) as f64).max(RATE_ALPHA);
                self.rate_mean + alpha * (clipped - self.rate_mean)
            };
            self.minutes_seen += 1;
        }
        self.prev_count = if minute == self.minute + 1 {
            self.minute_count
        } else {
            0
        };
        self.minute = minute;
        self.minute_count = 0;
    }

    /// Requests in the sliding minute ending now, this one included.
    fn current_rate(&self, now_ms: i64) -> f64 {
        let into = now_ms
            .saturating_sub(self.origin_ms)
            .saturating_sub(self.minute.saturating_mul(MINUTE_MS));
        let frac = (into as f64 / MINUTE_MS as f64).clamp(0.0, 1.0);
        self.prev_count as f64 * (1.0 - frac) + self.minute_count as f64 + 1.0
    }
}

/// Thread-safe per-key detector. One short mutex hold per request; memory is
/// a few dozen bytes per key id ever seen (see [`AnomalyDetector::forget`]).
#[derive(Debug)]
pub struct AnomalyDetector {
    cfg: AnomalyConfig,
    keys: Mutex<HashMap<String, Baseline>>,
}

impl Default for AnomalyDetector {
    fn default() -> Self {
        AnomalyDetector::new(AnomalyConfig::default())
    }
}

impl AnomalyDetector {
    /// A non-finite or sub-1 `factor` falls back to the default 10.
    pub fn new(cfg: AnomalyConfig) -> Self {
        let factor = if cfg.factor.is_finite() && cfg.factor >= 1.0 {
            cfg.factor
        } else {
            AnomalyConfig::default().factor
        };
        AnomalyDetector {
            cfg: AnomalyConfig { factor, ..cfg },
            keys: Mutex::new(HashMap::new()),
        }
    }

    pub fn config(&self) -> AnomalyConfig {
        self.cfg
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Baseline>> {
        // A panic while holding the lock cannot leave a baseline half-updated
        // in a way that matters: keep going with what is there.
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Judge a request before forwarding, then fold it into the key's
    /// baseline. `now_ms` is the request time in milliseconds (any epoch, as
    /// long as it is the same for all calls).
    pub fn observe(&self, key_id: &str, prompt_tokens: u64, now_ms: i64) -> Verdict {
        let factor = self.cfg.factor;
        let mut keys = self.lock();
        if !keys.contains_key(key_id) {
            keys.insert(key_id.to_string(), Baseline::new(now_ms));
        }
        let Some(b) = keys.get_mut(key_id) else {
            return Verdict::Normal;
        };
        b.roll(now_ms, factor);

        let tokens = prompt_tokens as f64;
        let rate = b.current_rate(now_ms);
        let warm = b.seen >= self.cfg.warmup;
        let token_base = b.token_mean.max(TOKEN_FLOOR);
        let rate_base = b.rate_mean.max(RATE_FLOOR);

        let mut verdict = Verdict::Normal;
        if warm && b.seen > 0 {
            // Whichever value is furthest past its threshold is reported.
            let token_ratio = tokens / (factor * token_base);
            let rate_ratio = if b.minutes_seen > 0 {
                rate / (factor * rate_base)
            } else {
                0.0
            };
            if token_ratio > 1.0 && token_ratio >= rate_ratio {
                verdict = Verdict::Anomalous {
                    reason: "prompt_tokens",
                    value: tokens,
                    baseline: token_base,
                };
            } else if rate_ratio > 1.0 {
                verdict = Verdict::Anomalous {
                    reason: "request_rate",
                    value: rate,
                    baseline: rate_base,
                };
            }
        }

        // Update after judging.
        let n = b.seen.saturating_add(1);
        let sample = if warm {
            tokens.min(factor * token_base)
        } else {
            tokens
        };
        let alpha = (1.0 / n as f64).max(TOKEN_ALPHA);
        b.token_mean += alpha * (sample - b.token_mean);
        b.seen = n;
        b.minute_count = b.minute_count.saturating_add(1);
        verdict
    }

    /// Drop a key's baseline (a deleted or rotated key).
    pub fn forget(&self, key_id: &str) {
        self.lock().remove(key_id);
    }

    /// Number of keys with a baseline.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const MIN: i64 = 60_000;

    fn det() -> AnomalyDetector {
        AnomalyDetector::new(AnomalyConfig::default())
    }

    /// `n` requests of `tokens` spread evenly, `per_min` per minute, from `t0`.
    /// Answers the time after the last one and whether any was flagged.
    fn steady(
        d: &AnomalyDetector,
        key: &str,
        n: u64,
        tokens: u64,
        per_min: i64,
        t0: i64,
    ) -> (i64, bool) {
        let step = MIN / per_min;
        let mut t = t0;
        let mut flagged = false;
        for _ in 0..n {
            flagged |= d.observe(key, tokens, t).is_anomalous();
            t += step;
        }
        (t, flagged)
    }

    #[test]
    fn defaults() {
        let c = AnomalyConfig::default();
        assert_eq!(c.factor, 10.0);
        assert_eq!(c.warmup, 20);
        let d = AnomalyDetector::new(AnomalyConfig {
            factor: f64::NAN,
            warmup: 3,
        });
        assert_eq!(d.config().factor, 10.0);
        assert_eq!(d.config().warmup, 3);
    }

    #[test]
    fn warmup_never_flags() {
        let d = det();
        // Wildly varying sizes and a burst, all within the warm-up.
        for i in 0..20u64 {
            let tokens = if i % 2 == 0 { 1 } else { 1_000_000 };
            assert_eq!(
                d.observe("k", tokens, i as i64),
                Verdict::Normal,
                "request {i}"
            );
        }
        // The 21st is judged.
        assert!(d.observe("k", 100_000_000, 21).is_anomalous());
    }

    #[test]
    fn huge_prompt_after_warmup_is_flagged() {
        let d = det();
        let (t, flagged) = steady(&d, "k", 30, 100, 6, 0);
        assert!(!flagged);
        match d.observe("k", 10_000, t) {
            Verdict::Anomalous {
                reason,
                value,
                baseline,
            } => {
                assert_eq!(reason, "prompt_tokens");
                assert_eq!(value, 10_000.0);
                assert!((baseline - 100.0).abs() < 1e-6, "{baseline}");
            }
            v => panic!("{v:?}"),
        }
        // Just under 10x is fine; one outlier does not blind the detector.
        assert_eq!(d.observe("k", 900, t + 10_000), Verdict::Normal);
        assert!(d.observe("k", 10_000, t + 20_000).is_anomalous());
    }

    #[test]
    fn steady_traffic_is_not_flagged() {
        let d = det();
        // Varying sizes (50..=500) at a steady 30 req/min for an hour.
        let mut t = 0;
        for i in 0..1_800u64 {
            let tokens = 50 + (i * 37) % 451;
            assert_eq!(d.observe("k", tokens, t), Verdict::Normal, "request {i}");
            t += 2_000;
        }
        // Sparse traffic with long idle gaps is also fine.
        let d = det();
        let mut t = 0;
        for i in 0..200i64 {
            assert_eq!(d.observe("s", 200, t), Verdict::Normal, "request {i}");
            t += if i % 10 == 9 { 3 * 3_600_000 } else { 5_000 };
        }
    }

    #[test]
    fn small_baseline_has_a_floor() {
        let d = det();
        let (t, _) = steady(&d, "k", 25, 1, 4, 0);
        // 1-token prompts: 100 tokens is under 10 x the 32-token floor.
        assert_eq!(d.observe("k", 100, t), Verdict::Normal);
        assert!(d.observe("k", 1_000, t + 1).is_anomalous());
    }

    #[test]
    fn burst_is_flagged_for_request_rate() {
        let d = det();
        // 3 requests per minute for 20 minutes.
        let (t, flagged) = steady(&d, "k", 60, 100, 3, 0);
        assert!(!flagged);
        // Then 200 requests within one minute, same size.
        let mut first = None;
        for i in 0..200 {
            let v = d.observe("k", 100, t + i * 250);
            if let Verdict::Anomalous {
                reason,
                value,
                baseline,
            } = v
            {
                assert_eq!(reason, "request_rate");
                assert!((baseline - 3.0).abs() < 0.5, "{baseline}");
                assert!(value > 30.0);
                first.get_or_insert(i);
            }
        }
        let first = first.expect("burst flagged");
        assert!(first < 40, "flagged only at request {first}");
    }

    #[test]
    fn moderate_rate_increase_is_not_flagged() {
        let d = det();
        let (t, _) = steady(&d, "k", 60, 100, 6, 0);
        // Tripling the rate is within 10x.
        let (_, flagged) = steady(&d, "k", 200, 100, 18, t);
        assert!(!flagged);
    }

    #[test]
    fn per_key_isolation() {
        let d = det();
        let (t, _) = steady(&d, "a", 30, 100, 6, 0);
        // Key b is new: warm-up, so its huge prompt is normal.
        assert_eq!(d.observe("b", 100_000, t), Verdict::Normal);
        // Key b's traffic does not move a's baseline.
        for i in 0..50 {
            d.observe("b", 100_000, t + i);
        }
        assert!(d.observe("a", 10_000, t + 100).is_anomalous());
        // And a's baseline does not apply to b: 100k is b's normal.
        assert_eq!(d.observe("b", 100_000, t + 30 * MIN), Verdict::Normal);
        assert_eq!(d.len(), 2);
        d.forget("a");
        assert_eq!(d.len(), 1);
        // Forgotten: a is warming up again.
        assert_eq!(d.observe("a", 10_000_000, t + 200), Verdict::Normal);
    }

    #[test]
    fn clock_going_back_does_not_panic_or_flag() {
        let d = det();
        let (t, _) = steady(&d, "k", 30, 100, 6, 1_000_000);
        assert_eq!(d.observe("k", 100, t - 10 * MIN), Verdict::Normal);
        assert_eq!(d.observe("k", 100, i64::MIN), Verdict::Normal);
        assert_eq!(d.observe("k", 100, i64::MAX), Verdict::Normal);
    }

    #[test]
    fn thread_safe() {
        let d = Arc::new(det());
        let handles: Vec<_> = (0..4)
            .map(|k| {
                let d = Arc::clone(&d);
                std::thread::spawn(move || {
                    let key = format!("key{k}");
                    steady(&d, &key, 500, 100, 10, 0).1
                })
            })
            .collect();
        for h in handles {
            assert!(!h.join().unwrap());
        }
        assert_eq!(d.len(), 4);
    }
}
