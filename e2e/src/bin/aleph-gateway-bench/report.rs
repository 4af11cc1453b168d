//! The figures of a run, the goals they are judged against, and the table
//! they are printed as.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::load::{Samples, percentile};

/// The goals.
pub mod goals {
    /// The gateway's added p99 latency at most this many times nginx's.
    pub const ADDED_P99_RATIO: f64 = 1.2;
    /// The gateway's closed-loop throughput at least this share of nginx's.
    pub const THROUGHPUT_SHARE: f64 = 0.9;
    /// The gateway's resident memory with the large configuration, MiB.
    pub const RSS_MIB: f64 = 30.0;
}

/// Which way the requests go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Path {
    Direct,
    Gateway,
    Nginx,
}

impl Path {
    pub const ALL: [Path; 3] = [Path::Direct, Path::Gateway, Path::Nginx];

    pub fn name(self) -> &'static str {
        match self {
            Path::Direct => "direct",
            Path::Gateway => "aleph-gateway",
            Path::Nginx => "nginx",
        }
    }
}

/// Plain JSON answers or server-sent event streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    Plain,
    Stream,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Plain => "plain",
            Mode::Stream => "stream",
        }
    }
}

/// How the load is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Load {
    /// Open loop at this many requests per second.
    Rate(u32),
    /// Closed loop with this many callers.
    Closed(usize),
}

/// One measured run.
#[derive(Clone, Debug)]
pub struct Run {
    pub samples: Samples,
    /// CPU use during the run, percent of one core: the proxy (none for
    /// direct), the stub engine, the load generator.
    pub cpu: (Option<f64>, f64, f64),
}

/// The gateway with the large configuration.
#[derive(Clone, Debug, Default)]
pub struct LargeConfig {
    pub tenants: usize,
    pub keys: usize,
    pub models: usize,
    /// VmRSS once started and ready, before any request, KiB.
    pub idle_rss_kib: Option<u64>,
    /// VmHWM after the load, KiB.
    pub peak_rss_kib: Option<u64>,
    /// Closed-loop runs through it, cycling over every key and model.
    pub runs: BTreeMap<Mode, Run>,
    pub concurrency: BTreeMap<Mode, usize>,
}

/// Everything measured.
#[derive(Clone, Debug, Default)]
pub struct Figures {
    /// The rounds of each scenario and path, in the order they ran; the
    /// report gives the median of the rounds.
    pub runs: BTreeMap<(Mode, Load, Path), Vec<Run>>,
    /// VmHWM of the gateway after all the runs, KiB.
    pub gateway_peak_kib: Option<u64>,
    /// VmHWM of nginx's master plus its worker after all the runs, KiB.
    pub nginx_peak_kib: Option<u64>,
    pub large: LargeConfig,
}

/// KiB as MiB with one decimal, or a dash when unknown.
/// p50 and p99 of a proxy minus those of the direct path, µs.
fn added(
    (p50, p99): (Option<i64>, Option<i64>),
    (d50, d99): (Option<i64>, Option<i64>),
) -> (Option<i64>, Option<i64>) {
    (
        p50.zip(d50).map(|(a, b)| a - b),
        p99.zip(d99).map(|(a, b)| a - b),
    )
}

fn mib_or_dash(kib: Option<u64>) -> String {
    kib.map_or("–".into(), |k| format!("{:.1}", mib(k)))
}

fn mib(kib: u64) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let kib = kib as f64;
    kib / 1024.0
}

fn p(sorted: &[u32], q: f64) -> Option<i64> {
    percentile(sorted, q).map(i64::from)
}

fn pair(a: Option<i64>, b: Option<i64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) => format!("{a} / {b}"),
        _ => "–".into(),
    }
}

/// Which latency of a run: to the first byte or to the end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Point {
    FirstByte,
    End,
}

impl Figures {
    fn rounds(&self, mode: Mode, load: Load, path: Path) -> &[Run] {
        self.runs
            .get(&(mode, load, path))
            .map_or(&[], Vec::as_slice)
    }

    /// p50 and p99 of a path, µs: each the median of the rounds' own.
    pub fn latency(
        &self,
        mode: Mode,
        load: Load,
        path: Path,
        point: Point,
    ) -> (Option<i64>, Option<i64>) {
        let of = |q: f64| {
            median_i64(
                self.rounds(mode, load, path)
                    .iter()
                    .filter_map(|r| p(r.samples.at(point), q))
                    .collect(),
            )
        };
        (of(50.0), of(99.0))
    }

    /// The p99 of each round of a path, µs, in the order they ran.
    fn p99_by_round(&self, mode: Mode, load: Load, path: Path, point: Point) -> Vec<Option<i64>> {
        self.rounds(mode, load, path)
            .iter()
            .map(|r| p(r.samples.at(point), 99.0))
            .collect()
    }

    /// Requests per second of a path: the median of the rounds'.
    fn throughput(&self, mode: Mode, load: Load, path: Path) -> Option<f64> {
        median_f64(
            self.rounds(mode, load, path)
                .iter()
                .map(|r| r.samples.throughput)
                .collect(),
        )
    }
}

/// The median of `values` (the mean of the two middle ones for an even
/// count), or None when there are none.
pub fn median_f64(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some(f64::midpoint(values[n / 2 - 1], values[n / 2])),
    }
}

fn median_i64(values: Vec<i64>) -> Option<i64> {
    #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
    median_f64(values.into_iter().map(|v| v as f64).collect()).map(|m| m.round() as i64)
}

impl Samples {
    /// The latencies of one point of the requests, sorted.
    fn at(&self, point: Point) -> &[u32] {
        match point {
            Point::FirstByte => &self.first_byte,
            Point::End => &self.end,
        }
    }
}

/// The verdict on the added p99 of one row: the ratio and whether it meets the goal.
/// One row of p50 / p99 latencies, a cell per path.
fn latency_row(out: &mut String, f: &Figures, label: &str, mode: Mode, load: Load, point: Point) {
    let cells: Vec<String> = Path::ALL
        .iter()
        .map(|path| {
            let (a, b) = f.latency(mode, load, *path, point);
            pair(a, b)
        })
        .collect();
    let _ = writeln!(
        out,
        "| {label}: p50 / p99 | {} | {} | {} |  |  |",
        cells[0], cells[1], cells[2]
    );
    each_round_row(out, label, "p99", |path| {
        f.p99_by_round(mode, load, path, point)
            .iter()
            .map(|v| v.map_or("–".into(), |v| v.to_string()))
            .collect()
    });
}

/// The row of a figure's value in each round, a cell per path (`cells`
/// gives a path's values in the order the rounds ran); none when no path
/// ran more than one round.
fn each_round_row(out: &mut String, label: &str, what: &str, cells: impl Fn(Path) -> Vec<String>) {
    let rounds: Vec<String> = Path::ALL
        .iter()
        .map(|path| {
            let values = cells(*path);
            if values.len() < 2 {
                return "–".into();
            }
            values.join(", ")
        })
        .collect();
    if rounds.iter().any(|r| r != "–") {
        let _ = writeln!(
            out,
            "| {label}: {what} of each round | {} | {} | {} |  |  |",
            rounds[0], rounds[1], rounds[2]
        );
    }
}

fn added_verdict(gateway: Option<i64>, nginx: Option<i64>) -> (String, Option<bool>) {
    match (gateway, nginx) {
        // A proxy's p99 below the direct path's: the direct run stalled
        // (scheduling on a shared machine), and the difference says nothing
        // about either proxy.
        (Some(g), Some(n)) if g < 0 || n <= 0 => (
            "no verdict (the direct path's own p99 is above a proxy's)".into(),
            None,
        ),
        (Some(g), Some(n)) => {
            #[allow(clippy::cast_precision_loss)]
            let ratio = g as f64 / n as f64;
            let met = ratio <= goals::ADDED_P99_RATIO;
            (
                format!("{} ({ratio:.2}×)", if met { "met" } else { "**missed**" }),
                Some(met),
            )
        }
        _ => ("–".into(), None),
    }
}

#[cfg(test)]
mod tests {
    use super::{Figures, Load, Mode, Path, Point, Run, added_verdict, median_f64};
    use crate::load::Samples;

    fn run(end: Vec<u32>, throughput: f64) -> Run {
        Run {
            samples: Samples {
                first_byte: end.clone(),
                end,
                throughput,
                ..Samples::default()
            },
            cpu: (None, 0.0, 0.0),
        }
    }

    #[test]
    fn the_report_judges_the_median_round_and_shows_every_round() {
        let load = super::Load::Closed(64);
        let mut f = Figures::default();
        for (path, rates) in [
            (Path::Gateway, [900.0, 100.0, 950.0]),
            (Path::Nginx, [1000.0, 1000.0, 990.0]),
        ] {
            f.runs.insert(
                (Mode::Plain, load, path),
                rates.iter().map(|r| run(vec![10, 20], *r)).collect(),
            );
        }
        let setup = super::Setup {
            concurrency: [(Mode::Plain, 64)].into(),
            ..super::Setup::default()
        };
        let report = super::render(&setup, &f);
        assert!(
            report.contains("| plain, closed loop (64 callers): req/s | – | 900 | 1000 | ≥ 90 % of nginx's | met (90 %) |"),
            "{report}"
        );
        assert!(
            report.contains("| plain, closed loop (64 callers): req/s of each round | – | 900, 100, 950 | 1000, 1000, 990 |"),
            "{report}"
        );
    }

    #[test]
    fn a_path_s_figures_are_the_median_of_its_rounds() {
        let key = (Mode::Plain, Load::Rate(200), Path::Gateway);
        let mut f = Figures::default();
        // Three rounds of 100 samples: the p99 of each is its 99th value.
        let round = |slow: u32| {
            let mut end: Vec<u32> = (1..=98).collect();
            end.extend([slow, slow]);
            end
        };
        f.runs.insert(
            key,
            vec![
                run(round(900), 1000.0),
                run(round(30_000), 900.0),
                run(round(400), 1200.0),
            ],
        );
        let (p50, p99) = f.latency(key.0, key.1, key.2, Point::End);
        assert_eq!(p50, Some(50));
        assert_eq!(p99, Some(900), "one slow round does not make the figure");
        assert_eq!(f.throughput(key.0, key.1, key.2), Some(1000.0));
        assert_eq!(
            f.p99_by_round(key.0, key.1, key.2, Point::End),
            vec![Some(900), Some(30_000), Some(400)]
        );
        assert_eq!(
            f.latency(key.0, key.1, Path::Nginx, Point::End),
            (None, None)
        );
        assert_eq!(median_f64(vec![4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median_f64(Vec::new()), None);
    }

    #[test]
    fn a_negative_added_p99_gives_no_verdict() {
        assert_eq!(added_verdict(Some(-5723), Some(-5483)).1, None);
        assert_eq!(added_verdict(Some(-602), Some(179)).1, None);
        assert_eq!(added_verdict(Some(300), Some(0)).1, None);
        assert_eq!(added_verdict(Some(240), Some(200)).1, Some(true));
        assert_eq!(added_verdict(Some(871), Some(212)).1, Some(false));
        assert_eq!(added_verdict(None, Some(212)).1, None);
    }
}

/// How the run was set up, for the report's header.
#[derive(Clone, Debug, Default)]
pub struct Setup {
    pub lines: Vec<String>,
    pub rates: Vec<u32>,
    pub concurrency: BTreeMap<Mode, usize>,
}

/// The table and the goals' verdicts, in Markdown.
#[allow(clippy::too_many_lines)]
pub fn render(setup: &Setup, f: &Figures) -> String {
    let mut out = String::new();
    for line in &setup.lines {
        let _ = writeln!(out, "{line}");
    }
    let _ = writeln!(
        out,
        "\nLatencies in µs. \"added\" is a proxy's percentile minus the direct path's \
         percentile in the same scenario (a difference of percentiles, not the percentile \
         of per-request differences). Open-loop latencies run from each request's intended \
         start.\n"
    );
    let _ = writeln!(
        out,
        "| figure | direct | aleph-gateway | nginx | goal | result |"
    );
    let _ = writeln!(out, "|---|--:|--:|--:|---|---|");
    let mut added_verdicts: Vec<(String, Option<bool>, String)> = Vec::new();
    for mode in [Mode::Plain, Mode::Stream] {
        let points: &[(Point, &str)] = match mode {
            Mode::Plain => &[(Point::End, "")],
            Mode::Stream => &[(Point::FirstByte, ", first byte"), (Point::End, ", end")],
        };
        for rate in &setup.rates {
            let load = Load::Rate(*rate);
            for (point, what) in points {
                let label = format!("{}, {rate} req/s{what}", mode.name());
                latency_row(&mut out, f, &label, mode, load, *point);
                let direct = f.latency(mode, load, Path::Direct, *point);
                let (g50, g99) = added(f.latency(mode, load, Path::Gateway, *point), direct);
                let (n50, n99) = added(f.latency(mode, load, Path::Nginx, *point), direct);
                let (verdict, met) = added_verdict(g99, n99);
                let _ = writeln!(
                    out,
                    "| {label}: added p50 / p99 |  | {} | {} | p99 ≤ {} × nginx's | {verdict} |",
                    pair(g50, g99),
                    pair(n50, n99),
                    goals::ADDED_P99_RATIO
                );
                added_verdicts.push((label, met, verdict));
            }
        }
        if let Some(&concurrency) = setup.concurrency.get(&mode) {
            let load = Load::Closed(concurrency);
            let label = format!("{}, closed loop ({concurrency} callers)", mode.name());
            let tput: Vec<Option<f64>> = Path::ALL
                .iter()
                .map(|p| f.throughput(mode, load, *p))
                .collect();
            let cell = |t: Option<f64>| t.map_or("–".into(), |t| format!("{t:.0}"));
            let (verdict, _) = throughput_verdict(tput[1], tput[2]);
            let _ = writeln!(
                out,
                "| {label}: req/s | {} | {} | {} | ≥ {:.0} % of nginx's | {verdict} |",
                cell(tput[0]),
                cell(tput[1]),
                cell(tput[2]),
                goals::THROUGHPUT_SHARE * 100.0
            );
            each_round_row(&mut out, &label, "req/s", |path| {
                f.rounds(mode, load, path)
                    .iter()
                    .map(|r| format!("{:.0}", r.samples.throughput))
                    .collect()
            });
            for (point, what) in points {
                latency_row(&mut out, f, &format!("{label}{what}"), mode, load, *point);
            }
            let cpu: Vec<String> = Path::ALL
                .iter()
                .map(|path| {
                    let rounds = f.rounds(mode, load, *path);
                    if rounds.is_empty() {
                        return "–".into();
                    }
                    let median = |pick: fn(&Run) -> Option<f64>| {
                        median_f64(rounds.iter().filter_map(pick).collect())
                    };
                    format!(
                        "{} / {:.0} / {:.0}",
                        median(|r| r.cpu.0).map_or("–".into(), |p| format!("{p:.0}")),
                        median(|r| Some(r.cpu.1)).unwrap_or_default(),
                        median(|r| Some(r.cpu.2)).unwrap_or_default(),
                    )
                })
                .collect();
            let _ = writeln!(
                out,
                "| {label}: CPU % of one core, proxy / stub / load generator | {} | {} | {} |  |  |",
                cpu[0], cpu[1], cpu[2]
            );
        }
    }
    // The runs of a path, with their loads.
    let runs_of = |path: &Path| {
        let path = *path;
        f.runs
            .iter()
            .filter(move |((_, _, p), _)| *p == path)
            .flat_map(|((_, load, _), rounds)| rounds.iter().map(move |run| (load, run)))
    };
    let errors: Vec<u64> = Path::ALL
        .iter()
        .map(|path| runs_of(path).map(|(_, r)| r.samples.errors).sum())
        .collect();
    let _ = writeln!(
        out,
        "| failed requests, all runs above | {} | {} | {} |  |  |",
        errors[0], errors[1], errors[2]
    );
    let lag: Vec<String> = Path::ALL
        .iter()
        .map(|path| {
            let mut all: Vec<u32> = runs_of(path)
                .filter(|(l, _)| matches!(l, Load::Rate(_)))
                .flat_map(|(_, r)| r.samples.lag.iter().copied())
                .collect();
            all.sort_unstable();
            pair(p(&all, 50.0), p(&all, 99.0))
        })
        .collect();
    let _ = writeln!(
        out,
        "| the load generator's lag in releasing open-loop requests, p50 / p99 | {} | {} | {} |  |  |",
        lag[0], lag[1], lag[2]
    );
    let _ = writeln!(
        out,
        "| peak RSS over the runs above, MiB |  | {} | {} |  |  |",
        mib_or_dash(f.gateway_peak_kib),
        f.nginx_peak_kib
            .map_or("–".into(), |k| format!("{:.1} (master + worker)", mib(k)))
    );
    let large = &f.large;
    let large_label = format!(
        "{} keys and {} models ({} tenants)",
        large.keys, large.models, large.tenants
    );
    let rss_verdict = |kib: Option<u64>| match kib {
        Some(k) if mib(k) <= goals::RSS_MIB => ("met".to_string(), Some(true)),
        Some(_) => ("**missed**".to_string(), Some(false)),
        None => ("–".to_string(), None),
    };
    let (idle_verdict, idle_met) = rss_verdict(large.idle_rss_kib);
    let (peak_verdict, peak_met) = rss_verdict(large.peak_rss_kib);
    let _ = writeln!(
        out,
        "| {large_label}: RSS idle, MiB |  | {} |  | ≤ {} MiB | {idle_verdict} |",
        mib_or_dash(large.idle_rss_kib),
        goals::RSS_MIB
    );
    let _ = writeln!(
        out,
        "| {large_label}: peak RSS under load, MiB |  | {} |  | ≤ {} MiB | {peak_verdict} |",
        mib_or_dash(large.peak_rss_kib),
        goals::RSS_MIB
    );
    for (mode, run) in &large.runs {
        let concurrency = large.concurrency.get(mode).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "| {large_label}: {}, closed loop ({concurrency} callers, every key and model in turn): req/s, p50 / p99 |  | {:.0}, {} |  |  |  |",
            mode.name(),
            run.samples.throughput,
            pair(p(&run.samples.end, 50.0), p(&run.samples.end, 99.0)),
        );
    }
    let _ = writeln!(
        out,
        "| cold start from zero to the first token on the real engine |  | not measured here |  |  |  |"
    );

    // The verdicts.
    let _ = writeln!(out, "\n| goal | figure | verdict |\n|---|---|---|");
    let measured: Vec<_> = added_verdicts
        .iter()
        .filter(|(_, met, _)| met.is_some())
        .collect();
    let missed: Vec<&str> = measured
        .iter()
        .filter(|(_, met, _)| *met == Some(false))
        .map(|(label, _, _)| label.as_str())
        .collect();
    let _ = writeln!(
        out,
        "| added p99 at most {} × nginx's, every open-loop row | {} of {} rows met{}{} | {} |",
        goals::ADDED_P99_RATIO,
        measured.len() - missed.len(),
        measured.len(),
        if missed.is_empty() {
            String::new()
        } else {
            format!("; missed: {}", missed.join("; "))
        },
        match added_verdicts.len() - measured.len() {
            0 => String::new(),
            n => format!("; {n} without a verdict (the direct path's p99 above a proxy's)"),
        },
        if measured.is_empty() {
            "–"
        } else if !missed.is_empty() {
            "**missed**"
        } else if measured.len() < added_verdicts.len() {
            "met where measured"
        } else {
            "met"
        }
    );
    let mut shares = Vec::new();
    let mut all_met = true;
    for mode in [Mode::Plain, Mode::Stream] {
        if let Some(&c) = setup.concurrency.get(&mode) {
            let load = Load::Closed(c);
            let (text, met) = throughput_verdict(
                f.throughput(mode, load, Path::Gateway),
                f.throughput(mode, load, Path::Nginx),
            );
            all_met &= met == Some(true);
            shares.push(format!("{}: {text}", mode.name()));
        }
    }
    let _ = writeln!(
        out,
        "| at least {:.0} % of nginx's throughput | {} | {} |",
        goals::THROUGHPUT_SHARE * 100.0,
        shares.join("; "),
        if all_met { "met" } else { "**missed**" }
    );
    let _ = writeln!(
        out,
        "| at most {} MiB RSS with {large_label} | idle {}, under load {} | {} |",
        goals::RSS_MIB,
        large
            .idle_rss_kib
            .map_or("–".into(), |k| format!("{:.1} MiB", mib(k))),
        large
            .peak_rss_kib
            .map_or("–".into(), |k| format!("{:.1} MiB", mib(k))),
        if idle_met == Some(true) && peak_met == Some(true) {
            "met"
        } else {
            "**missed**"
        }
    );
    out
}

fn throughput_verdict(gateway: Option<f64>, nginx: Option<f64>) -> (String, Option<bool>) {
    match (gateway, nginx) {
        (Some(g), Some(n)) if n > 0.0 => {
            let share = g / n;
            let met = share >= goals::THROUGHPUT_SHARE;
            (
                format!(
                    "{} ({:.0} %)",
                    if met { "met" } else { "**missed**" },
                    share * 100.0
                ),
                Some(met),
            )
        }
        _ => ("–".into(), None),
    }
}
