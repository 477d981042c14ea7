//! Charts drawn on the server as inline SVG: no script, nothing to load,
//! allowed by the strict CSP (presentation attributes, no inline styles).
//! Every bar and point carries a `<title>` tooltip with its exact value.

use maud::{Markup, html};

const W: f64 = 640.0;
const H: f64 = 220.0;
const LEFT: f64 = 52.0;
const RIGHT: f64 = 10.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 26.0;

/// One data series: a legend name, a CSS class for its colour, a value per bucket.
pub struct Series<'a> {
    pub name: &'a str,
    pub class: &'a str,
    pub values: Vec<f64>,
}

/// The smallest 1, 2 or 5 × 10^k at or above `v`.
pub fn nice_max(v: f64) -> f64 {
    if !(v.is_finite() && v > 0.0) {
        return 1.0;
    }
    let e = 10f64.powf(v.log10().floor());
    let f = v / e;
    let n = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    n * e
}

fn y_of(v: f64, max: f64) -> f64 {
    let plot = H - TOP - BOTTOM;
    TOP + plot - (v / max).clamp(0.0, 1.0) * plot
}

fn frame(max: f64, labels: &[String], fmt: fn(f64) -> String) -> Markup {
    let plot_w = W - LEFT - RIGHT;
    let n = labels.len().max(1);
    let step = (n as f64 / 6.0).ceil().max(1.0) as usize;
    html! {
        @for i in 0..=4 {
            @let v = max * i as f64 / 4.0;
            @let y = y_of(v, max);
            line.grid x1=(LEFT) x2=(W - RIGHT) y1=(fmt1(y)) y2=(fmt1(y)) {}
            text.axis x=(LEFT - 6.0) y=(fmt1(y + 4.0)) text-anchor="end" { (fmt(v)) }
        }
        @for (i, l) in labels.iter().enumerate() {
            @if i % step == 0 {
                @let x = LEFT + plot_w * (i as f64 + 0.5) / n as f64;
                text.axis x=(fmt1(x)) y=(H - 8.0) text-anchor="middle" { (l) }
            }
        }
    }
}

fn fmt1(v: f64) -> String {
    format!("{v:.1}")
}

fn legend(series: &[Series]) -> Markup {
    html! {
        ul.legend {
            @for s in series {
                li { span class={ "swatch " (s.class) } {} (s.name) }
            }
        }
    }
}

/// A stacked bar chart; `fmt` labels the axis, `tip` the tooltips.
pub fn bars(
    title: &str,
    labels: &[String],
    tooltips: &[String],
    series: &[Series],
    fmt: fn(f64) -> String,
    tip: fn(f64) -> String,
) -> Markup {
    let n = labels.len();
    let totals: Vec<f64> = (0..n)
        .map(|i| {
            series
                .iter()
                .map(|s| s.values.get(i).copied().unwrap_or(0.0))
                .sum()
        })
        .collect();
    let max = nice_max(totals.iter().copied().fold(0.0, f64::max));
    let plot_w = W - LEFT - RIGHT;
    let slot = plot_w / n.max(1) as f64;
    let bar_w = (slot * 0.72).max(1.0);
    html! {
        figure.chart {
            figcaption { (title) }
            svg viewBox=(format!("0 0 {W} {H}")) role="img" aria-label=(title) {
                (frame(max, labels, fmt))
                @for i in 0..n {
                    @let x = LEFT + slot * i as f64 + (slot - bar_w) / 2.0;
                    @for (s, base, v) in stack(series, i) {
                        @let y_top = y_of(base + v, max);
                        @let y_bot = y_of(base, max);
                        rect class={ "bar " (s.class) } x=(fmt1(x)) y=(fmt1(y_top)) width=(fmt1(bar_w)) height=(fmt1((y_bot - y_top).max(0.5))) {
                            title { (tooltips.get(i).map(String::as_str).unwrap_or("")) " — " (s.name) ": " (tip(v)) }
                        }
                    }
                }
            }
            @if series.len() > 1 { (legend(series)) }
        }
    }
}

/// The non-zero parts of bucket `i`, each with the height below it.
fn stack<'a, 'b>(series: &'a [Series<'b>], i: usize) -> Vec<(&'a Series<'b>, f64, f64)> {
    let mut base = 0.0;
    let mut out = Vec::new();
    for s in series {
        let v = s.values.get(i).copied().unwrap_or(0.0);
        if v > 0.0 {
            out.push((s, base, v));
            base += v;
        }
    }
    out
}

/// Exact numbers for tooltips: whole numbers plain, others to 2 places.
pub fn exact(v: f64) -> String {
    if v == v.trunc() {
        super::html::thousands(v as i64)
    } else {
        format!("{v:.2}")
    }
}

/// A line chart with one polyline per series (gaps where a bucket has no value).
pub fn lines(
    title: &str,
    labels: &[String],
    tooltips: &[String],
    series: &[Series],
    fmt: fn(f64) -> String,
) -> Markup {
    let n = labels.len();
    let max = nice_max(
        series
            .iter()
            .flat_map(|s| s.values.iter().copied())
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max),
    );
    let plot_w = W - LEFT - RIGHT;
    let x_of = |i: usize| LEFT + plot_w * (i as f64 + 0.5) / n.max(1) as f64;
    html! {
        figure.chart {
            figcaption { (title) }
            svg viewBox=(format!("0 0 {W} {H}")) role="img" aria-label=(title) {
                (frame(max, labels, fmt))
                @for s in series {
                    @for seg in segments(&s.values) {
                        @if seg.len() > 1 {
                            polyline class={ "line " (s.class) } fill="none" points=(seg.iter().map(|(i, v)| format!("{:.1},{:.1}", x_of(*i), y_of(*v, max))).collect::<Vec<_>>().join(" ")) {}
                        }
                    }
                    @for (i, v) in s.values.iter().enumerate() {
                        @if v.is_finite() {
                            circle class={ "dot " (s.class) } cx=(fmt1(x_of(i))) cy=(fmt1(y_of(*v, max))) r="2.5" {
                                title { (tooltips.get(i).map(String::as_str).unwrap_or("")) " — " (s.name) ": " (fmt(*v)) }
                            }
                        }
                    }
                }
            }
            (legend(series))
        }
    }
}

/// Runs of finite values (NaN marks an empty bucket).
fn segments(values: &[f64]) -> Vec<Vec<(usize, f64)>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    for (i, v) in values.iter().enumerate() {
        if v.is_finite() {
            cur.push((i, *v));
        } else if !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The `q`-quantile (0..=1) of sorted values, nearest rank.
pub fn quantile(sorted: &[i64], q: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::html::compact;

    #[test]
    fn nice_maxima() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(7.0), 10.0);
        assert_eq!(nice_max(120.0), 200.0);
        assert_eq!(nice_max(0.003), 0.005);
        assert_eq!(nice_max(f64::NAN), 1.0);
    }

    #[test]
    fn quantiles_nearest_rank() {
        let v: Vec<i64> = (1..=100).collect();
        assert_eq!(quantile(&v, 0.5), Some(50));
        assert_eq!(quantile(&v, 0.95), Some(95));
        assert_eq!(quantile(&v, 0.99), Some(99));
        assert_eq!(quantile(&[7], 0.99), Some(7));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn charts_render_tooltips_and_gaps() {
        let labels = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let s = bars(
            "Requests",
            &labels,
            &labels,
            &[Series {
                name: "requests",
                class: "s1",
                values: vec![1.0, 0.0, 3.0],
            }],
            compact,
            exact,
        )
        .into_string();
        assert_eq!(s.matches("<rect").count(), 2, "{s}");
        assert!(s.contains("c — requests: 3"), "{s}");
        assert!(!s.contains("style="));
        let l = lines(
            "Latency",
            &labels,
            &labels,
            &[Series {
                name: "p50",
                class: "s1",
                values: vec![10.0, f64::NAN, 30.0],
            }],
            compact,
        )
        .into_string();
        assert_eq!(l.matches("<circle").count(), 2);
        assert_eq!(l.matches("<polyline").count(), 0);
        assert_eq!(segments(&[1.0, 2.0, f64::NAN, 3.0]).len(), 2);
    }
}
