//! The report's charts as hand-written SVG (no plotting crate): a pie of the
//! request outcomes, a latency histogram and latency over time, like the
//! original service's benchmark charts.

use std::fmt::Write;

use super::stats::{histogram, Outcome, Sample};

const W: f64 = 640.0;
const H: f64 = 400.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;

fn colour(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Verified => "#2e7d32",
        Outcome::Mismatch => "#f9a825",
        Outcome::KernelError => "#ef6c00",
        Outcome::HttpError => "#c62828",
        Outcome::Transport => "#6a1b9a",
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn open(title: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" \
         viewBox=\"0 0 {W} {H}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"24\" text-anchor=\"middle\" font-size=\"15\">{}</text>\n",
        W / 2.0,
        escape(title)
    )
}

/// A pie of outcomes with a legend of counts.
pub fn pie(title: &str, samples: &[Sample]) -> String {
    let mut svg = open(title);
    let total = samples.len().max(1) as f64;
    let (cx, cy, r) = (220.0, 220.0, 150.0);
    let mut angle = -std::f64::consts::FRAC_PI_2;
    let mut legend_y = 90.0;
    for outcome in Outcome::ALL {
        let n = samples.iter().filter(|s| s.outcome == outcome).count();
        if n == 0 {
            continue;
        }
        let share = n as f64 / total;
        if share >= 0.9999 {
            let _ = writeln!(
                svg,
                "<circle cx=\"{cx}\" cy=\"{cy}\" r=\"{r}\" fill=\"{}\"/>",
                colour(outcome)
            );
        } else {
            let end = angle + share * std::f64::consts::TAU;
            let large = u8::from(share > 0.5);
            let _ = writeln!(
                svg,
                "<path d=\"M{cx},{cy} L{:.2},{:.2} A{r},{r} 0 {large} 1 {:.2},{:.2} Z\" fill=\"{}\"/>",
                cx + r * angle.cos(),
                cy + r * angle.sin(),
                cx + r * end.cos(),
                cy + r * end.sin(),
                colour(outcome)
            );
            angle = end;
        }
        let _ = writeln!(
            svg,
            "<rect x=\"410\" y=\"{}\" width=\"14\" height=\"14\" fill=\"{}\"/>\
             <text x=\"432\" y=\"{legend_y}\">{}: {n} ({:.1}%)</text>",
            legend_y - 11.0,
            colour(outcome),
            outcome.label(),
            share * 100.0
        );
        legend_y += 22.0;
    }
    svg.push_str("</svg>\n");
    svg
}

/// Axes with `ticks` labelled ticks on each; returns the SVG so far.
fn axes(title: &str, x_label: &str, y_label: &str, x_max: f64, y_max: f64) -> String {
    let mut svg = open(title);
    let (x0, y0, x1, y1) = (LEFT, H - BOTTOM, W - RIGHT, TOP);
    let _ = writeln!(
        svg,
        "<path d=\"M{x0},{y1} L{x0},{y0} L{x1},{y0}\" stroke=\"black\" fill=\"none\"/>"
    );
    for i in 0..=5 {
        let f = f64::from(i) / 5.0;
        let x = x0 + f * (x1 - x0);
        let y = y0 - f * (y0 - y1);
        let _ = writeln!(
            svg,
            "<text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\
             <line x1=\"{x0}\" y1=\"{y:.1}\" x2=\"{x1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>",
            y0 + 16.0,
            tick(f * x_max),
            x0 - 6.0,
            y + 4.0,
            tick(f * y_max)
        );
    }
    let _ = writeln!(
        svg,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\
         <text x=\"16\" y=\"{:.1}\" text-anchor=\"middle\" transform=\"rotate(-90 16 {:.1})\">{}</text>",
        (x0 + x1) / 2.0,
        H - 12.0,
        escape(x_label),
        (y0 + y1) / 2.0,
        (y0 + y1) / 2.0,
        escape(y_label)
    );
    svg
}

fn tick(v: f64) -> String {
    if v >= 100.0 || v == 0.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Requests per latency bin.
pub fn latency_histogram(title: &str, samples: &[Sample]) -> String {
    let values: Vec<f64> = samples.iter().map(|s| s.latency_ms).collect();
    let bins = 40;
    let (counts, width) = histogram(&values, bins);
    let top = counts.iter().copied().max().unwrap_or(1).max(1) as f64;
    let x_max = width * bins as f64;
    let mut svg = axes(title, "latency (ms)", "requests", x_max, top);
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let bar_w = plot_w / bins as f64;
    for (i, &n) in counts.iter().enumerate() {
        if n == 0 {
            continue;
        }
        let h = n as f64 / top * plot_h;
        let _ = writeln!(
            svg,
            "<rect x=\"{:.2}\" y=\"{:.2}\" width=\"{:.2}\" height=\"{h:.2}\" fill=\"#1565c0\"/>",
            LEFT + i as f64 * bar_w + 0.5,
            H - BOTTOM - h,
            (bar_w - 1.0).max(0.5)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// Each request's latency at the time it was sent, coloured by outcome.
pub fn latency_over_time(title: &str, samples: &[Sample]) -> String {
    let t_max = samples
        .iter()
        .map(|s| s.start_ms / 1000.0)
        .fold(0.0, f64::max)
        .max(1e-3);
    let l_max = samples
        .iter()
        .map(|s| s.latency_ms)
        .fold(0.0, f64::max)
        .max(1e-3);
    let mut svg = axes(title, "time since start (s)", "latency (ms)", t_max, l_max);
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    for s in samples {
        let _ = writeln!(
            svg,
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"1.5\" fill=\"{}\" fill-opacity=\"0.6\"/>",
            LEFT + s.start_ms / 1000.0 / t_max * plot_w,
            H - BOTTOM - s.latency_ms / l_max * plot_h,
            colour(s.outcome)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Sample> {
        (0..10)
            .map(|i| Sample {
                user: 0,
                index: i,
                start_ms: i as f64 * 100.0,
                latency_ms: 5.0 + i as f64,
                outcome: if i < 8 {
                    Outcome::Verified
                } else {
                    Outcome::HttpError
                },
                status: 200,
            })
            .collect()
    }

    fn well_formed(svg: &str) {
        assert!(svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<svg").count(), 1);
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }

    #[test]
    fn pie_has_a_slice_and_legend_per_outcome() {
        let svg = pie("a & b", &samples());
        well_formed(&svg);
        assert_eq!(svg.matches("<path").count(), 2);
        assert!(svg.contains("verified: 8 (80.0%)"));
        assert!(svg.contains("a &amp; b"));
        let all_ok: Vec<Sample> = samples().into_iter().take(8).collect();
        assert!(pie("ok", &all_ok).contains("<circle"));
    }

    #[test]
    fn histogram_and_timeline_draw_every_sample() {
        let s = samples();
        let h = latency_histogram("h", &s);
        well_formed(&h);
        assert!(h.matches("<rect").count() >= 3);
        let t = latency_over_time("t", &s);
        well_formed(&t);
        assert_eq!(t.matches("<circle").count(), 10);
        well_formed(&latency_over_time("empty", &[]));
        well_formed(&latency_histogram("empty", &[]));
    }
}
