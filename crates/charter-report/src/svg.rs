//! Inline SVG charts: a histogram, a scatter plot, a line chart and the
//! build graph. Plain markup with fixed-precision numbers, so the same data
//! always gives the same bytes.

use std::fmt::Write as _;

use crate::html::esc;

const W: f64 = 360.0;
const H: f64 = 220.0;
/// Margins: left (for tick labels), right, top, bottom (for the axis title).
const ML: f64 = 44.0;
const MR: f64 = 12.0;
const MT: f64 = 12.0;
const MB: f64 = 36.0;

fn open(out: &mut String, label: &str) {
    let _ = write!(
        out,
        r#"<svg viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="{}">"#,
        esc(label)
    );
}

/// Axes with ticks at the given values, `x` and `y` mapping data to pixels.
fn axes(
    out: &mut String,
    xticks: &[(f64, String)],
    yticks: &[(f64, String)],
    xlabel: &str,
    ylabel: &str,
) {
    let (x0, y0, x1, y1) = (ML, H - MB, W - MR, MT);
    let _ = write!(
        out,
        r##"<path d="M{x0} {y1}V{y0}H{x1}" fill="none" stroke="#888"/>"##
    );
    for (px, label) in xticks {
        let _ = write!(
            out,
            r##"<text x="{px:.1}" y="{:.1}" font-size="10" text-anchor="middle" fill="#555">{}</text>"##,
            y0 + 12.0,
            esc(label)
        );
    }
    for (py, label) in yticks {
        let _ = write!(
            out,
            r##"<text x="{:.1}" y="{:.1}" font-size="10" text-anchor="end" fill="#555">{}</text><path d="M{x0} {py:.1}H{x1}" stroke="#eee"/>"##,
            x0 - 4.0,
            py + 3.0,
            esc(label)
        );
    }
    let _ = write!(
        out,
        r##"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle" fill="#333">{}</text>"##,
        (x0 + x1) / 2.0,
        H - 6.0,
        esc(xlabel)
    );
    let _ = write!(
        out,
        r##"<text x="10" y="{:.1}" font-size="11" text-anchor="middle" fill="#333" transform="rotate(-90 10 {:.1})">{}</text>"##,
        (y0 + y1) / 2.0,
        (y0 + y1) / 2.0,
        esc(ylabel)
    );
}

/// Tick labels for `values` on an axis spanning `lo..hi`: integers as
/// integers, otherwise enough decimals to tell the ends apart.
fn ticks(lo: f64, hi: f64, values: &[f64]) -> Vec<String> {
    let integral = values.iter().all(|v| v.fract() == 0.0 && v.abs() < 1e9);
    let span = (hi - lo).abs().max(f64::MIN_POSITIVE);
    values
        .iter()
        .map(|v| {
            if integral {
                format!("{v:.0}")
            } else if v.abs() >= 1e4 || (v.abs() < 1e-3 && *v != 0.0) {
                format!("{v:.2e}")
            } else {
                let digits = (2.0 - span.log10().floor()).clamp(0.0, 6.0) as usize;
                format!("{v:.digits$}")
            }
        })
        .collect()
}

/// A histogram of `values` in [lo, hi] over `bins` equal bins.
pub(crate) fn histogram(values: &[f64], lo: f64, hi: f64, bins: usize, xlabel: &str) -> String {
    let mut counts = vec![0usize; bins];
    for v in values {
        let i = (((v - lo) / (hi - lo)) * bins as f64).floor();
        counts[(i.max(0.0) as usize).min(bins - 1)] += 1;
    }
    let top = counts.iter().copied().max().unwrap_or(0).max(1) as f64;
    let mut out = String::new();
    open(&mut out, &format!("histogram of {xlabel}"));
    let (pw, ph) = (W - ML - MR, H - MT - MB);
    let bw = pw / bins as f64;
    let at: Vec<f64> = (0..=4)
        .map(|i| lo + f64::from(i) / 4.0 * (hi - lo))
        .collect();
    let xticks: Vec<(f64, String)> = at
        .iter()
        .zip(ticks(lo, hi, &at))
        .map(|(v, label)| (ML + (v - lo) / (hi - lo) * pw, label))
        .collect();
    let yticks = [(H - MB, "0".to_string()), (MT, format!("{top:.0}"))];
    axes(&mut out, &xticks, &yticks, xlabel, "rows");
    for (i, c) in counts.iter().enumerate() {
        let h = *c as f64 / top * ph;
        let _ = write!(
            out,
            r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="#4c78a8"><title>{c}</title></rect>"##,
            ML + i as f64 * bw + 1.0,
            H - MB - h,
            bw - 2.0
        );
    }
    out.push_str("</svg>");
    out
}

/// A scatter plot of points in the unit square, with the diagonal.
pub(crate) fn scatter(points: &[(f64, f64)], xlabel: &str, ylabel: &str) -> String {
    let mut out = String::new();
    open(&mut out, &format!("{ylabel} against {xlabel}"));
    let (pw, ph) = (W - ML - MR, H - MT - MB);
    let unit = |horizontal: bool| -> Vec<(f64, String)> {
        let at = [0.0, 0.5, 1.0];
        at.iter()
            .zip(ticks(0.0, 1.0, &at))
            .map(|(f, label)| {
                let px = if horizontal {
                    ML + f * pw
                } else {
                    H - MB - f * ph
                };
                (px, label)
            })
            .collect()
    };
    axes(&mut out, &unit(true), &unit(false), xlabel, ylabel);
    let _ = write!(
        out,
        r##"<path d="M{ML} {:.1}L{:.1} {MT}" stroke="#bbb" stroke-dasharray="4 3"/>"##,
        H - MB,
        W - MR
    );
    for (x, y) in points {
        let _ = write!(
            out,
            r##"<circle cx="{:.1}" cy="{:.1}" r="3" fill="#e45756" fill-opacity="0.6"/>"##,
            ML + x.clamp(0.0, 1.0) * pw,
            H - MB - y.clamp(0.0, 1.0) * ph
        );
    }
    out.push_str("</svg>");
    out
}

/// A line chart of `ys` against `xs`.
pub(crate) fn line(xs: &[f64], ys: &[f64], xlabel: &str, ylabel: &str) -> String {
    let span = |v: &[f64]| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if !lo.is_finite() {
            (0.0, 1.0)
        } else if hi - lo < 1e-12 {
            (lo - 0.5, hi + 0.5)
        } else {
            (lo, hi)
        }
    };
    let ((x0, x1), (y0, y1)) = (span(xs), span(ys));
    let (pw, ph) = (W - ML - MR, H - MT - MB);
    let px = |x: f64| ML + (x - x0) / (x1 - x0) * pw;
    let py = |y: f64| H - MB - (y - y0) / (y1 - y0) * ph;
    let mut out = String::new();
    open(&mut out, &format!("{ylabel} against {xlabel}"));
    let label = |lo: f64, hi: f64, p: &dyn Fn(f64) -> f64| -> Vec<(f64, String)> {
        vec![p(lo), p(hi)]
            .into_iter()
            .zip(ticks(lo, hi, &[lo, hi]))
            .collect()
    };
    axes(
        &mut out,
        &label(x0, x1, &px),
        &label(y0, y1, &py),
        xlabel,
        ylabel,
    );
    let mut d = String::new();
    for (i, (x, y)) in xs.iter().zip(ys).enumerate() {
        let _ = write!(
            d,
            "{}{:.1} {:.1}",
            if i == 0 { "M" } else { "L" },
            px(*x),
            py(*y)
        );
    }
    let _ = write!(
        out,
        r##"<path d="{d}" fill="none" stroke="#4c78a8" stroke-width="1.5"/>"##
    );
    if xs.len() == 1 {
        let _ = write!(
            out,
            r##"<circle cx="{:.1}" cy="{:.1}" r="3" fill="#4c78a8"/>"##,
            px(xs[0]),
            py(ys[0])
        );
    }
    out.push_str("</svg>");
    out
}

/// A node of the build graph.
pub(crate) struct Node<'a> {
    pub(crate) name: &'a str,
    pub(crate) kind: &'a str,
    pub(crate) status: &'a str,
    /// Indices of the nodes it reads.
    pub(crate) inputs: Vec<usize>,
}

/// The build graph, top to bottom: each stage in the row one past its
/// deepest input, in build order within a row.
pub(crate) fn graph(nodes: &[Node<'_>]) -> String {
    let mut depth = vec![0usize; nodes.len()];
    for (i, n) in nodes.iter().enumerate() {
        depth[i] = n
            .inputs
            .iter()
            .filter(|&&j| j < i)
            .map(|&j| depth[j] + 1)
            .max()
            .unwrap_or(0);
    }
    let rows = depth.iter().max().map_or(0, |d| d + 1);
    let mut column = vec![0usize; nodes.len()];
    let mut filled = vec![0usize; rows];
    for (i, d) in depth.iter().enumerate() {
        column[i] = filled[*d];
        filled[*d] += 1;
    }
    let (bw, bh, gx, gy) = (118.0, 34.0, 16.0, 18.0);
    let width = filled.iter().max().copied().unwrap_or(1) as f64 * (bw + gx) + 8.0;
    let height = rows as f64 * (bh + gy) + 8.0;
    let at = |i: usize| {
        (
            4.0 + column[i] as f64 * (bw + gx),
            4.0 + depth[i] as f64 * (bh + gy),
        )
    };
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg viewBox="0 0 {width:.0} {height:.0}" width="{width:.0}" height="{height:.0}" role="img" aria-label="build graph">"#
    );
    for (i, n) in nodes.iter().enumerate() {
        for &j in &n.inputs {
            let ((x0, y0), (x1, y1)) = (at(j), at(i));
            let (x0, x1) = (x0 + bw / 2.0, x1 + bw / 2.0);
            let _ = write!(
                out,
                r##"<path d="M{x0:.1} {:.1}C{x0:.1} {:.1} {x1:.1} {:.1} {x1:.1} {y1:.1}" fill="none" stroke="#999"/>"##,
                y0 + bh,
                y0 + bh + gy,
                y1 - gy,
            );
        }
    }
    for (i, n) in nodes.iter().enumerate() {
        let (x, y) = at(i);
        let fill = match n.status {
            "ran" => "#dbeafe",
            "resumed" => "#fef3c7",
            "cached" | "source" => "#f3f4f6",
            _ => "#fee2e2",
        };
        let _ = write!(
            out,
            r##"<rect x="{x:.1}" y="{y:.1}" width="{bw}" height="{bh}" rx="4" fill="{fill}" stroke="#6b7280"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text><text x="{:.1}" y="{:.1}" font-size="9" text-anchor="middle" fill="#555">{} · {}</text>"##,
            x + bw / 2.0,
            y + 14.0,
            esc(n.name),
            x + bw / 2.0,
            y + 27.0,
            esc(n.kind),
            esc(n.status)
        );
    }
    out.push_str("</svg>");
    out
}
