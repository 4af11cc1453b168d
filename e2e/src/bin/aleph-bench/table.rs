//! The figures of one benchmark run and the table they are printed as.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use crate::observe::Memory;

/// The goals the figures are judged against.
pub mod goals {
    /// Aleph's convergence time at most this many times the direct-write floor…
    pub const RATIO: f64 = 1.5;
    /// …at this many objects.
    pub const RATIO_AT: usize = 1000;
    /// Peak resident memory in MiB with this many Tenants and AIModels watched.
    pub const PEAK_RSS_MIB: f64 = 64.0;
    /// From process start to the first finished reconcile.
    pub const FIRST_RECONCILE_SECONDS: f64 = 1.0;
}

/// How long it took until every object was ready, or how far it got.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Convergence {
    /// Every object was ready after this long.
    Done(Duration),
    /// Only `ready` of the objects were ready when the wait gave up.
    TimedOut { ready: usize, after: Duration },
}

impl Convergence {
    /// The time, when every object got ready.
    pub fn time(&self) -> Option<Duration> {
        match self {
            Convergence::Done(d) => Some(*d),
            Convergence::TimedOut { .. } => None,
        }
    }

    fn cell(&self, n: usize) -> String {
        match self {
            Convergence::Done(d) => format!("{:.1}", d.as_secs_f64()),
            Convergence::TimedOut { ready, after } => {
                format!("{ready}/{n} after {:.0} s", after.as_secs_f64())
            }
        }
    }
}

/// Requests by verb (get, list, watch, create, update, patch, delete).
pub type Requests = BTreeMap<String, f64>;

/// The verbs that change something on the API server.
pub const WRITE_VERBS: [&str; 4] = ["create", "update", "patch", "delete"];

/// The write requests among `requests`.
pub fn writes(requests: &Requests) -> f64 {
    WRITE_VERBS
        .iter()
        .filter_map(|v| requests.get(*v))
        .sum::<f64>()
}

/// `after - before`, verb by verb, leaving out verbs that did not change.
pub fn delta(before: &Requests, after: &Requests) -> Requests {
    after
        .iter()
        .map(|(verb, a)| (verb.clone(), a - before.get(verb).copied().unwrap_or(0.0)))
        .filter(|(_, d)| *d > 0.0)
        .collect()
}

/// The figures of one kind (Tenants or AIModels) at one size.
#[derive(Clone, Debug, PartialEq)]
pub struct KindFigures {
    /// From the first create until every object reported Ready.
    pub aleph: Convergence,
    /// A plain client writing the same children directly, until the same readiness.
    pub floor: Convergence,
    /// The operator's requests by verb during convergence.
    pub requests: Requests,
    /// The floor client's requests by verb.
    pub floor_requests: Requests,
    /// The operator's requests by verb and resource during convergence.
    pub by_resource: Requests,
    /// The operator's reconciles of this kind during convergence.
    pub reconciles: f64,
    /// Their summed duration, in seconds.
    pub reconcile_seconds: f64,
}

impl KindFigures {
    /// Aleph's time over the floor's, when both converged.
    pub fn ratio(&self) -> Option<f64> {
        let aleph = self.aleph.time()?.as_secs_f64();
        let floor = self.floor.time()?.as_secs_f64();
        (floor > 0.0).then(|| aleph / floor)
    }
}

/// Everything measured at one size N.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SizeFigures {
    /// N: Tenants and AIModels each.
    pub n: usize,
    /// The Tenants' convergence, against the floor (none when not run).
    pub tenants: Option<KindFigures>,
    /// The AIModels' convergence, against the floor (none when not run).
    pub aimodels: Option<KindFigures>,
    /// The operator's writes by verb during the idle window after convergence.
    pub idle_writes: Option<Requests>,
    /// Resident memory of the operator that converged.
    pub memory: Option<Memory>,
    /// Resident memory of an operator restarted with every object present.
    pub restart_memory: Option<Memory>,
    /// From process start to the first finished reconcile, with every object present.
    pub first_reconcile: Option<Duration>,
    /// The operator's own measure of the same (`aleph_first_reconcile_seconds`).
    pub first_reconcile_in_process: Option<f64>,
    /// From process start until every object was reconciled once.
    pub resync: Option<Convergence>,
    /// The restarted operator's writes by verb during that resync.
    pub resync_writes: Option<Requests>,
}

impl SizeFigures {
    /// The higher of the two peaks.
    pub fn peak_rss_mib(&self) -> Option<f64> {
        let peak = match (self.memory, self.restart_memory) {
            (Some(a), Some(b)) => Some(a.peak_kib.max(b.peak_kib)),
            (a, b) => a.or(b).map(|m| m.peak_kib),
        }?;
        Some(kib_to_mib(peak))
    }
}

fn kib_to_mib(kib: u64) -> f64 {
    // KiB counts of a process fit in f64's mantissa.
    #[allow(clippy::cast_precision_loss)]
    let kib = kib as f64;
    kib / 1024.0
}

/// How the run was set up, for the table's header.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Setup {
    /// The operator's flags that shape its speed.
    pub operator_flags: String,
    /// How the floor client was limited.
    pub floor: String,
    /// The idle window.
    pub idle: Duration,
}

/// Met, missed, or not measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Met,
    Missed,
    NotMeasured,
}

impl Verdict {
    fn of(value: Option<bool>) -> Self {
        match value {
            Some(true) => Verdict::Met,
            Some(false) => Verdict::Missed,
            None => Verdict::NotMeasured,
        }
    }

    fn word(self) -> &'static str {
        match self {
            Verdict::Met => "met",
            Verdict::Missed => "**missed**",
            Verdict::NotMeasured => "not measured",
        }
    }
}

/// The size a goal "at N = 1,000" is judged at: that one if measured, else the largest.
fn judged_size(sizes: &[SizeFigures]) -> Option<&SizeFigures> {
    sizes
        .iter()
        .find(|s| s.n == goals::RATIO_AT)
        .or_else(|| sizes.iter().max_by_key(|s| s.n))
}

fn at_note(size: Option<&SizeFigures>) -> String {
    match size {
        Some(s) if s.n != goals::RATIO_AT => format!(" (judged at N={}, the largest run)", s.n),
        _ => String::new(),
    }
}

/// The verdict on the convergence goal of a kind.
pub fn ratio_verdict(
    sizes: &[SizeFigures],
    kind: fn(&SizeFigures) -> Option<&KindFigures>,
) -> Verdict {
    let size = judged_size(sizes);
    let figures = size.and_then(kind);
    match figures {
        None => Verdict::NotMeasured,
        // An operator that never converged missed the goal; a floor that never did leaves it open.
        Some(k) if k.aleph.time().is_none() => Verdict::Missed,
        Some(k) => Verdict::of(k.ratio().map(|r| r <= goals::RATIO)),
    }
}

/// The verdict on zero writes while idle: every size measured, all zero.
pub fn idle_verdict(sizes: &[SizeFigures]) -> Verdict {
    let measured: Vec<f64> = sizes
        .iter()
        .filter_map(|s| s.idle_writes.as_ref().map(writes))
        .collect();
    if measured.is_empty() {
        return Verdict::NotMeasured;
    }
    Verdict::of(Some(measured.iter().all(|w| *w == 0.0)))
}

/// The verdict on peak memory at N = 1,000.
pub fn memory_verdict(sizes: &[SizeFigures]) -> Verdict {
    Verdict::of(
        judged_size(sizes)
            .and_then(SizeFigures::peak_rss_mib)
            .map(|m| m <= goals::PEAK_RSS_MIB),
    )
}

/// The verdict on the first reconcile: within the goal at every size.
pub fn first_reconcile_verdict(sizes: &[SizeFigures]) -> Verdict {
    let measured: Vec<f64> = sizes
        .iter()
        .filter_map(|s| s.first_reconcile.map(|d| d.as_secs_f64()))
        .collect();
    if measured.is_empty() {
        return Verdict::NotMeasured;
    }
    Verdict::of(Some(
        measured
            .iter()
            .all(|s| *s <= goals::FIRST_RECONCILE_SECONDS),
    ))
}

fn per_object(requests: &Requests, n: usize) -> String {
    if requests.is_empty() {
        return "0".to_string();
    }
    // n is a count of objects: small enough for f64.
    #[allow(clippy::cast_precision_loss)]
    let n = n.max(1) as f64;
    let total: f64 = requests.values().sum();
    let mut parts: Vec<String> = requests
        .iter()
        .map(|(verb, count)| format!("{verb} {:.2}", count / n))
        .collect();
    parts.push(format!("= {:.2}", total / n));
    parts.join(", ")
}

fn writes_cell(requests: &Requests) -> String {
    let total = writes(requests);
    if total == 0.0 {
        return "0".to_string();
    }
    let parts: Vec<String> = WRITE_VERBS
        .iter()
        .filter_map(|v| requests.get(*v).map(|c| format!("{v} {c:.0}")))
        .collect();
    format!("{total:.0} ({})", parts.join(", "))
}

fn memory_cell(m: Memory) -> String {
    format!(
        "{:.1} ({:.1} + {:.1})",
        kib_to_mib(m.peak_kib),
        kib_to_mib(m.anon_kib),
        kib_to_mib(m.file_kib)
    )
}

fn opt<T>(value: Option<T>, show: impl Fn(T) -> String) -> String {
    value.map_or_else(|| "–".to_string(), show)
}

/// Renders the figures as one Markdown table: a row per figure, a column per size.
pub fn render(setup: &Setup, sizes: &[SizeFigures]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Operator: `{}`; floor: {}; idle window: {} s.",
        setup.operator_flags,
        setup.floor,
        setup.idle.as_secs()
    );
    out.push('\n');
    let mut header = "| figure |".to_string();
    let mut rule = "|---|".to_string();
    for s in sizes {
        let _ = write!(header, " N={} |", s.n);
        rule.push_str("--:|");
    }
    header.push_str(" goal | result |");
    rule.push_str("---|---|");
    let _ = writeln!(out, "{header}\n{rule}");

    let mut row = |name: &str, cell: &dyn Fn(&SizeFigures) -> String, goal: &str, verdict: &str| {
        let mut line = format!("| {name} |");
        for s in sizes {
            let _ = write!(line, " {} |", cell(s));
        }
        let _ = writeln!(line, " {goal} | {verdict} |");
        out.push_str(&line);
    };

    type KindOf = fn(&SizeFigures) -> Option<&KindFigures>;
    let kinds: [(&str, &str, KindOf); 2] = [
        ("Tenants", "Tenant", |s| s.tenants.as_ref()),
        ("AIModels", "AIModel", |s| s.aimodels.as_ref()),
    ];
    let judged = at_note(judged_size(sizes));
    for (plural, singular, kind) in kinds {
        if !sizes.iter().any(|s| kind(s).is_some()) {
            continue;
        }
        row(
            &format!("{plural}: all Ready, Aleph (s)"),
            &|s| opt(kind(s), |k| k.aleph.cell(s.n)),
            "",
            "",
        );
        row(
            &format!("{plural}: floor, children written directly (s)"),
            &|s| opt(kind(s), |k| k.floor.cell(s.n)),
            "",
            "",
        );
        row(
            &format!("{plural}: Aleph ÷ floor"),
            &|s| opt(kind(s).and_then(KindFigures::ratio), |r| format!("{r:.2}")),
            &format!("≤ {} at N={}{judged}", goals::RATIO, goals::RATIO_AT),
            ratio_verdict(sizes, kind).word(),
        );
        row(
            &format!("{plural}: operator requests per {singular}"),
            &|s| opt(kind(s), |k| per_object(&k.requests, s.n)),
            "",
            "",
        );
        row(
            &format!("{plural}: reconciles per {singular} (mean duration)"),
            &|s| {
                opt(kind(s), |k| {
                    let mean = if k.reconciles > 0.0 {
                        k.reconcile_seconds / k.reconciles * 1000.0
                    } else {
                        0.0
                    };
                    #[allow(clippy::cast_precision_loss)]
                    let n = s.n.max(1) as f64;
                    format!("{:.1} ({mean:.0} ms)", k.reconciles / n)
                })
            },
            "",
            "",
        );
        row(
            &format!("{plural}: floor requests per {singular}"),
            &|s| opt(kind(s), |k| per_object(&k.floor_requests, s.n)),
            "",
            "",
        );
    }
    row(
        &format!("writes while idle ({} s)", setup.idle.as_secs()),
        &|s| opt(s.idle_writes.as_ref(), writes_cell),
        "0",
        idle_verdict(sizes).word(),
    );
    row(
        "peak RSS while converging, MiB (largest heap + mapped code seen)",
        &|s| opt(s.memory, memory_cell),
        "",
        "",
    );
    row(
        "peak RSS after a restart with everything present, MiB (heap + code)",
        &|s| opt(s.restart_memory, memory_cell),
        "",
        "",
    );
    row(
        "peak RSS, the higher (MiB)",
        &|s| opt(s.peak_rss_mib(), |m| format!("{m:.1}")),
        &format!("≤ {} at N={}{judged}", goals::PEAK_RSS_MIB, goals::RATIO_AT),
        memory_verdict(sizes).word(),
    );
    row(
        "process start to first reconcile (s)",
        &|s| {
            let inside = opt(s.first_reconcile_in_process, |g| {
                format!(" ({g:.2} in-process)")
            });
            opt(s.first_reconcile, |d| {
                format!("{:.2}{inside}", d.as_secs_f64())
            })
        },
        &format!("≤ {}", goals::FIRST_RECONCILE_SECONDS),
        first_reconcile_verdict(sizes).word(),
    );
    row(
        "process start to every object reconciled once (s)",
        &|s| opt(s.resync.as_ref(), |c| c.cell(2 * s.n)),
        "",
        "",
    );
    row(
        "writes during that resync",
        &|s| opt(s.resync_writes.as_ref(), writes_cell),
        "",
        "",
    );
    out.push_str(&breakdown(sizes));
    out
}

/// The operator's requests per object by verb and resource, most first.
fn breakdown(sizes: &[SizeFigures]) -> String {
    let mut out = String::new();
    for s in sizes {
        for (plural, figures) in [("Tenants", &s.tenants), ("AIModels", &s.aimodels)] {
            let Some(k) = figures else { continue };
            if k.by_resource.is_empty() {
                continue;
            }
            let mut entries: Vec<(&String, &f64)> = k.by_resource.iter().collect();
            entries.sort_by(|a, b| b.1.total_cmp(a.1).then(a.0.cmp(b.0)));
            #[allow(clippy::cast_precision_loss)]
            let n = s.n.max(1) as f64;
            // Requests that round to nothing per object (a watch restarted) are left out.
            let parts: Vec<String> = entries
                .iter()
                .filter(|(_, count)| **count / n >= 0.005)
                .map(|(key, count)| format!("{key} {:.2}", *count / n))
                .collect();
            let _ = writeln!(
                out,
                "\n{plural} at N={}, the operator's requests per object by verb and resource: {}.",
                s.n,
                parts.join(", ")
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requests(pairs: &[(&str, f64)]) -> Requests {
        pairs.iter().map(|(v, c)| (v.to_string(), *c)).collect()
    }

    fn kind(aleph: f64, floor: f64) -> KindFigures {
        KindFigures {
            aleph: Convergence::Done(Duration::from_secs_f64(aleph)),
            floor: Convergence::Done(Duration::from_secs_f64(floor)),
            requests: requests(&[("list", 600.0), ("patch", 300.0)]),
            floor_requests: requests(&[("create", 700.0)]),
            by_resource: requests(&[("list namespaces", 500.0), ("patch tenants", 300.0)]),
            reconciles: 400.0,
            reconcile_seconds: 20.0,
        }
    }

    fn size(n: usize, ratio: f64, idle: f64, rss_mib: u64, first: f64) -> SizeFigures {
        SizeFigures {
            n,
            tenants: Some(kind(10.0 * ratio, 10.0)),
            aimodels: None,
            idle_writes: Some(requests(&[("get", 3.0), ("patch", idle)])),
            memory: Some(Memory {
                peak_kib: rss_mib * 1024,
                anon_kib: rss_mib * 512,
                file_kib: rss_mib * 512,
            }),
            restart_memory: Some(Memory {
                peak_kib: rss_mib * 512,
                anon_kib: rss_mib * 256,
                file_kib: rss_mib * 256,
            }),
            first_reconcile: Some(Duration::from_secs_f64(first)),
            first_reconcile_in_process: Some(first - 0.01),
            resync: Some(Convergence::Done(Duration::from_secs(2))),
            resync_writes: Some(Requests::new()),
        }
    }

    #[test]
    fn delta_keeps_only_the_verbs_that_moved() {
        let before = requests(&[("get", 5.0), ("patch", 2.0)]);
        let after = requests(&[("get", 5.0), ("patch", 7.0), ("create", 1.0)]);
        assert_eq!(
            delta(&before, &after),
            requests(&[("patch", 5.0), ("create", 1.0)])
        );
        assert_eq!(writes(&delta(&before, &after)), 6.0);
    }

    #[test]
    fn goals_are_judged_at_one_thousand_when_measured() {
        let sizes = [size(100, 2.0, 0.0, 30, 0.2), size(1000, 1.4, 0.0, 60, 0.5)];
        assert_eq!(ratio_verdict(&sizes, |s| s.tenants.as_ref()), Verdict::Met);
        assert_eq!(memory_verdict(&sizes), Verdict::Met);
        assert_eq!(idle_verdict(&sizes), Verdict::Met);
        assert_eq!(first_reconcile_verdict(&sizes), Verdict::Met);
        assert_eq!(
            ratio_verdict(&sizes, |s| s.aimodels.as_ref()),
            Verdict::NotMeasured
        );
    }

    #[test]
    fn a_miss_anywhere_is_shown() {
        let sizes = [size(100, 1.0, 2.0, 30, 1.5), size(1000, 1.6, 0.0, 70, 0.5)];
        assert_eq!(
            ratio_verdict(&sizes, |s| s.tenants.as_ref()),
            Verdict::Missed
        );
        assert_eq!(memory_verdict(&sizes), Verdict::Missed);
        assert_eq!(idle_verdict(&sizes), Verdict::Missed);
        assert_eq!(first_reconcile_verdict(&sizes), Verdict::Missed);
    }

    #[test]
    fn an_operator_that_never_converged_missed_the_goal() {
        let mut s = size(1000, 1.0, 0.0, 10, 0.1);
        if let Some(t) = s.tenants.as_mut() {
            t.aleph = Convergence::TimedOut {
                ready: 10,
                after: Duration::from_secs(600),
            };
        }
        assert_eq!(
            ratio_verdict(&[s.clone()], |s| s.tenants.as_ref()),
            Verdict::Missed
        );
        let table = render(&Setup::default(), &[s]);
        assert!(table.contains("10/1000 after 600 s"), "{table}");
    }

    /// The line of `lines` that starts with `start`, or "".
    fn row<'a>(lines: &[&'a str], start: &str) -> &'a str {
        lines
            .iter()
            .find(|l| l.starts_with(start))
            .copied()
            .unwrap_or_default()
    }

    #[test]
    fn the_table_has_a_column_per_size_and_a_row_per_figure() {
        let sizes = [size(100, 1.2, 0.0, 30, 0.2), size(1000, 1.4, 1.0, 60, 0.5)];
        let setup = Setup {
            operator_flags: "--kube-qps 500".into(),
            floor: "same QPS".into(),
            idle: Duration::from_secs(30),
        };
        let table = render(&setup, &sizes);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].contains("--kube-qps 500"), "{table}");
        assert_eq!(lines[2], "| figure | N=100 | N=1000 | goal | result |");
        let ratio = row(&lines, "| Tenants: Aleph ÷ floor");
        assert_eq!(
            ratio,
            "| Tenants: Aleph ÷ floor | 1.20 | 1.40 | ≤ 1.5 at N=1000 | met |"
        );
        let requests = row(&lines, "| Tenants: operator requests per Tenant");
        assert!(
            requests.contains("list 6.00, patch 3.00, = 9.00 | list 0.60, patch 0.30, = 0.90"),
            "{requests}"
        );
        let idle = row(&lines, "| writes while idle (30 s)");
        assert_eq!(
            idle,
            "| writes while idle (30 s) | 0 | 1 (patch 1) | 0 | **missed** |"
        );
        assert!(
            table.contains(
                "| Tenants: reconciles per Tenant (mean duration) | 4.0 (50 ms) | 0.4 (50 ms) |"
            ),
            "{table}"
        );
        assert!(
            table.contains("| peak RSS while converging, MiB (largest heap + mapped code seen) | 30.0 (15.0 + 15.0) | 60.0 (30.0 + 30.0) |"),
            "{table}"
        );
        assert!(!table.contains("AIModels"), "{table}");
        // Every row of the table has the same number of cells.
        let cells = |l: &str| l.matches('|').count();
        assert!(
            lines[2..]
                .iter()
                .take_while(|l| l.starts_with('|'))
                .all(|l| cells(l) == cells(lines[2])),
            "{table}"
        );
        assert!(
            table.contains(
                "Tenants at N=1000, the operator's requests per object by verb and resource: \
                 list namespaces 0.50, patch tenants 0.30."
            ),
            "{table}"
        );
    }
}
