//! The HTML report: one self-contained page (inline CSS and SVG, nothing fetched) with the
//! verdict, each check, calls over time coloured by outcome, latency, and the fault periods
//! shaded on both charts. The page is a minijinja template; this file only lays out the
//! numbers it draws.

use serde::Serialize;

use super::history::{Call, Outcome};
use super::report::{Outcome as Verdict, Results};

const TEMPLATE: &str = include_str!("report.html");
/// The charts' size in pixels, and the room left of the plot for the axis labels.
const WIDTH: f64 = 1000.0;
const LEFT: f64 = 44.0;
const CALLS_HEIGHT: f64 = 160.0;
const LATENCY_HEIGHT: f64 = 140.0;
const SLICES: usize = 100;
const OUTCOMES: [Outcome; 5] = [
    Outcome::Ok,
    Outcome::Fail,
    Outcome::Info,
    Outcome::Hung,
    Outcome::Mismatched,
];

#[derive(Serialize)]
struct View<'a> {
    r: &'a Results,
    verdict: &'static str,
    duration: String,
    outcomes: Vec<&'static str>,
    w: f64,
    left: f64,
    faults: Vec<FaultView>,
    ticks: Vec<Tick>,
    calls: CallsChart,
    lat: LatencyChart,
}

#[derive(Serialize)]
struct FaultView {
    what: String,
    x: f64,
    w: f64,
    span: String,
    from: String,
    until: String,
    recovery: String,
}

#[derive(Serialize)]
struct Tick {
    x: f64,
    label: String,
    /// How the label sits on its tick: the last one ends there, so it stays on the chart.
    anchor: &'static str,
}

#[derive(Serialize)]
struct Bar {
    outcome: &'static str,
    x: f64,
    y: f64,
    w: f64,
    h: f64,
    title: String,
}

#[derive(Serialize)]
struct CallsChart {
    height: f64,
    max: usize,
    bars: Vec<Bar>,
}

#[derive(Serialize)]
struct LatencyChart {
    height: f64,
    top: f64,
    median_points: String,
    max_points: String,
}

fn name(o: Outcome) -> &'static str {
    match o {
        Outcome::Ok => "ok",
        Outcome::Fail => "fail",
        Outcome::Info => "info",
        Outcome::Hung => "hung",
        Outcome::Mismatched => "mismatched",
    }
}

fn secs(ms: f64) -> String {
    format!("{:.1} s", ms / 1000.0)
}

/// The report for `r`, whose calls are `calls`.
pub fn render(r: &Results, calls: &[Call]) -> Result<String, minijinja::Error> {
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    // The time the charts span: the workload, to its last call or fault.
    let span = calls
        .iter()
        .map(|c| ms(c.invoke + c.took))
        .chain(r.faults.iter().filter_map(|f| f.until.map(ms)))
        .fold(1.0_f64, f64::max);
    let plot = WIDTH - LEFT - 10.0;
    let x_of = |t: f64| LEFT + (t / span).clamp(0.0, 1.0) * plot;

    let mut recoveries = r.recovery_s.iter();
    let faults = r
        .faults
        .iter()
        .map(|f| {
            let (from, until) = (ms(f.from), f.until.map_or(span, ms));
            let recovery = if f.to_the_end {
                "still on at the end".to_owned()
            } else {
                match recoveries.next() {
                    Some(Some(s)) => format!("{:.3} s", s),
                    _ => "never".to_owned(),
                }
            };
            FaultView {
                what: match &f.step {
                    Some(step) => format!("{step}: {}", f.what),
                    None => f.what.clone(),
                },
                x: x_of(from),
                w: (x_of(until) - x_of(from)).max(1.0),
                span: format!("{} to {}", secs(from), secs(until)),
                from: secs(from),
                until: secs(until),
                recovery,
            }
        })
        .collect();
    let ticks = (0..=5)
        .map(|i| {
            let t = span * f64::from(i) / 5.0;
            Tick {
                x: x_of(t),
                label: secs(t),
                anchor: if i == 5 { "end" } else { "middle" },
            }
        })
        .collect();

    // Calls per slice of time (by when they were invoked), stacked by outcome.
    let slice = span / SLICES as f64;
    let mut counts = vec![[0usize; 5]; SLICES];
    let mut latencies: Vec<Vec<f64>> = vec![Vec::new(); SLICES];
    for c in calls {
        let i = ((ms(c.invoke) / slice) as usize).min(SLICES - 1);
        let o = OUTCOMES
            .iter()
            .position(|o| *o == c.outcome)
            .expect("every outcome");
        counts[i][o] += 1;
        if c.outcome == Outcome::Ok {
            latencies[i].push(ms(c.took));
        }
    }
    let max = counts
        .iter()
        .map(|c| c.iter().sum::<usize>())
        .max()
        .unwrap_or(0)
        .max(1);
    let bar_w = plot / SLICES as f64;
    let mut bars = Vec::new();
    for (i, c) in counts.iter().enumerate() {
        let mut y = 10.0 + CALLS_HEIGHT;
        for (o, n) in c.iter().enumerate().filter(|(_, n)| **n > 0) {
            let h = *n as f64 / max as f64 * CALLS_HEIGHT;
            y -= h;
            let t0 = slice * i as f64;
            bars.push(Bar {
                outcome: name(OUTCOMES[o]),
                x: LEFT + bar_w * i as f64,
                y,
                w: (bar_w - 0.5).max(0.5),
                h,
                title: format!(
                    "{n} {} from {} to {}",
                    name(OUTCOMES[o]),
                    secs(t0),
                    secs(t0 + slice)
                ),
            });
        }
    }

    // Median and slowest ok call per slice.
    let stats: Vec<Option<(f64, f64)>> = latencies
        .iter_mut()
        .map(|l| {
            l.sort_by(f64::total_cmp);
            (!l.is_empty()).then(|| (l[l.len() / 2], l[l.len() - 1]))
        })
        .collect();
    let top = stats
        .iter()
        .flatten()
        .map(|s| s.1)
        .fold(1.0_f64, f64::max)
        .ceil();
    let points = |pick: fn(&(f64, f64)) -> f64| {
        stats
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                s.as_ref().map(|s| {
                    let x = LEFT + bar_w * (i as f64 + 0.5);
                    let y = 10.0 + LATENCY_HEIGHT * (1.0 - pick(s) / top);
                    format!("{x:.1},{y:.1}")
                })
            })
            .collect::<Vec<_>>()
            .join(" ")
    };

    let view = View {
        r,
        verdict: match r.verdict {
            Verdict::Pass => "passed",
            Verdict::Fail => "failed",
            Verdict::Error => "could not run",
        },
        duration: format!("{:.1} s", r.duration_s),
        outcomes: OUTCOMES.iter().map(|o| name(*o)).collect(),
        w: WIDTH,
        left: LEFT,
        faults,
        ticks,
        calls: CallsChart {
            height: CALLS_HEIGHT,
            max,
            bars,
        },
        lat: LatencyChart {
            height: LATENCY_HEIGHT,
            top,
            median_points: points(|s| s.0),
            max_points: points(|s| s.1),
        },
    };
    let mut env = minijinja::Environment::new();
    env.add_template("report.html", TEMPLATE)?;
    env.get_template("report.html")?
        .render(minijinja::value::Serde(&view))
}
