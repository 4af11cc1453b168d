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
    /// Growth from one size to the next, divided by the growth of N: linear is 1.
    pub const GROWTH: f64 = 1.0;
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

/// The CPU seconds each process of the cluster used in a phase, by name
/// (`aleph_e2e::host::cpu_seconds`), with the machine's busy seconds: what
/// the time of a phase went to.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Cpu(pub BTreeMap<String, f64>);

impl Cpu {
    /// The processes read: the control plane's, the operator and this
    /// benchmark, and a real node's agents, should the cluster have one.
    pub const PROCESSES: [&str; 12] = [
        "kube-apiserver",
        "etcd",
        "kube-controller",
        "kube-scheduler",
        "kwok",
        "aleph-operator",
        "aleph-bench",
        "kubelet",
        "containerd",
        "containerd-shim",
        "kube-proxy",
        "kube-router",
    ];

    /// Reads the processes' CPU seconds now.
    pub fn now() -> Self {
        Cpu(aleph_e2e::host::cpu_seconds(&Self::PROCESSES))
    }

    /// What each used from `before` to `self`.
    pub fn since(&self, before: &Cpu) -> Cpu {
        Cpu(self
            .0
            .iter()
            .map(|(k, v)| (k.clone(), v - before.0.get(k).copied().unwrap_or(0.0)))
            .collect())
    }

    /// "machine 40.1 busy: kube-apiserver 20.3, etcd 5.0, ..., the rest 2.1", the largest first.
    fn cell(&self) -> String {
        let mut by_use: Vec<(&String, f64)> = self
            .0
            .iter()
            .filter(|(k, _)| k.as_str() != aleph_e2e::host::MACHINE)
            .map(|(k, v)| (k, *v))
            .collect();
        by_use.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(b.0)));
        let each = by_use
            .iter()
            .map(|(k, v)| format!("{k} {v:.1}"))
            .collect::<Vec<_>>()
            .join(", ");
        match self.0.get(aleph_e2e::host::MACHINE) {
            Some(busy) => {
                // What the machine was busy with besides the processes read:
                // the kernel's own work, and any other process.
                // (Read a moment apart, the sum can pass the machine's.)
                let rest = (busy - by_use.iter().map(|(_, v)| v).sum::<f64>()).max(0.0);
                format!("machine {busy:.1} busy: {each}, the rest {rest:.1}")
            }
            None => each,
        }
    }
}

/// The operator's requests in a phase against all the API server answered in
/// it, WATCH left out of both.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Share {
    /// The operator's requests (its own count).
    pub operator: f64,
    /// The API server's requests (its `apiserver_request_total`).
    pub all: f64,
}

impl Share {
    /// The operator's part, 0 to 1 (none when the API server counted nothing).
    pub fn fraction(&self) -> Option<f64> {
        (self.all > 0.0).then(|| self.operator / self.all)
    }

    fn cell(self) -> String {
        // `+ 0.0` turns a difference of equal counts that came out as -0
        // into 0, which is what it prints as.
        let operator = self.operator + 0.0;
        match self.fraction() {
            Some(f) => format!(
                "{:.1} % ({operator:.0} of {:.0})",
                f * 100.0 + 0.0,
                self.all
            ),
            None => format!("– ({operator:.0} of 0)"),
        }
    }
}

/// When, counted from the first Tenant's create, the operator had written
/// the quota of every Tenant, and when the controller manager had counted
/// them all: what a Tenant's Ready waits for besides the operator's passes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QuotaTimes {
    pub written: Convergence,
    pub counted: Convergence,
}

/// The figures of one kind (Tenants or AIModels) at one size.
#[derive(Clone, Debug, PartialEq)]
pub struct KindFigures {
    /// From the first create until every object reported Ready.
    pub aleph: Convergence,
    /// A plain client writing the same children directly, until the same
    /// readiness (none when the floor was not measured at this size).
    pub floor: Option<Convergence>,
    /// The same floor until kube-controller-manager has also counted every
    /// quota it wrote, which a Tenant's Ready waits for (Tenants only).
    pub floor_counted: Option<Convergence>,
    /// Aleph's time line (Tenants only): until every Tenant's quota was
    /// written, and until the controller manager had counted every one.
    pub quotas: Option<QuotaTimes>,
    /// The operator's requests by verb during convergence.
    pub requests: Requests,
    /// The floor client's requests by verb (none when not measured).
    pub floor_requests: Option<Requests>,
    /// The operator's share of the API server's requests during convergence.
    pub api_share: Option<Share>,
    /// The operator's requests by verb and resource during convergence.
    pub by_resource: Requests,
    /// Every client's requests to the API server by verb and resource
    /// during convergence, WATCH left out (none when its metrics could not
    /// be read).
    pub api_by_resource: Option<Requests>,
    /// The operator's reconciles of this kind during convergence.
    pub reconciles: f64,
    /// Their summed duration, in seconds.
    pub reconcile_seconds: f64,
    /// CPU seconds by process during convergence (see [`Cpu`]).
    pub cpu: Option<Cpu>,
    /// The same while the floor wrote (none when not measured).
    pub floor_cpu: Option<Cpu>,
}

impl KindFigures {
    /// Aleph's time over the floor's, when both converged.
    pub fn ratio(&self) -> Option<f64> {
        let aleph = self.aleph.time()?.as_secs_f64();
        let floor = self.floor?.time()?.as_secs_f64();
        (floor > 0.0).then(|| aleph / floor)
    }

    /// Aleph's time over the floor's until its quotas were counted.
    pub fn ratio_counted(&self) -> Option<f64> {
        let aleph = self.aleph.time()?.as_secs_f64();
        let floor = self.floor_counted?.time()?.as_secs_f64();
        (floor > 0.0).then(|| aleph / floor)
    }

    /// The ratio the convergence goal judges: against the floor that
    /// reaches what Aleph's Ready promises. For Tenants that is the floor
    /// until its quotas are counted, when measured: until then a new
    /// quota limits nothing (admission reads the limits from its status),
    /// so a tenant whose children are merely written is not yet limited.
    pub fn judged_ratio(&self) -> Option<f64> {
        if self.floor_counted.is_some() {
            self.ratio_counted()
        } else {
            self.ratio()
        }
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
    /// The restarted operator's requests by verb and resource during that
    /// resync (WATCH included).
    pub resync_by_resource: Option<Requests>,
    /// The operator's share of the API server's requests during the idle window.
    pub idle_share: Option<Share>,
    /// The same during the resync after the restart.
    pub resync_share: Option<Share>,
    /// The watches the operator held open at idle, by resource: the API
    /// server's open watches while it ran less those right after it stopped.
    pub watches: Option<Requests>,
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
    judged_among(sizes, |_| true)
}

/// The same among the sizes that `has`.
fn judged_among(sizes: &[SizeFigures], has: impl Fn(&SizeFigures) -> bool) -> Option<&SizeFigures> {
    sizes
        .iter()
        .find(|s| s.n == goals::RATIO_AT && has(s))
        .or_else(|| sizes.iter().filter(|s| has(s)).max_by_key(|s| s.n))
}

/// The size the convergence goal of a kind is judged at: N = 1,000 if its
/// floor was measured there, else the largest size with a floor.
fn ratio_size(
    sizes: &[SizeFigures],
    kind: fn(&SizeFigures) -> Option<&KindFigures>,
) -> Option<&SizeFigures> {
    judged_among(sizes, |s| kind(s).is_some_and(|k| k.floor.is_some()))
}

/// Where a goal "at N = 1,000" was judged instead: at N, `which`.
fn at_note(size: Option<&SizeFigures>, which: &str) -> String {
    match size {
        Some(s) if s.n != goals::RATIO_AT => format!(" (judged at N={}, {which})", s.n),
        _ => String::new(),
    }
}

/// The verdict on the convergence goal of a kind.
pub fn ratio_verdict(
    sizes: &[SizeFigures],
    kind: fn(&SizeFigures) -> Option<&KindFigures>,
) -> Verdict {
    let size = ratio_size(sizes, kind);
    let figures = size.and_then(kind);
    match figures {
        None => Verdict::NotMeasured,
        // An operator that never converged missed the goal; a floor that never did leaves it open.
        Some(k) if k.aleph.time().is_none() => Verdict::Missed,
        Some(k) => Verdict::of(k.judged_ratio().map(|r| r <= goals::RATIO)),
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

/// How a figure grew from one size to the next, per unit of N: the figure's
/// growth divided by N's (1 is linear, below 1 better).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Growth {
    /// The factor.
    Factor(f64),
    /// At least this much: the larger size did not converge by the time it
    /// gave up, so its time is longer than that.
    AtLeast(f64),
}

impl Growth {
    /// The growth of `(n, value)` to `(m, later)` per unit of N.
    pub fn between(from: (usize, f64), to: (usize, f64)) -> Option<f64> {
        let (n, value) = from;
        let (m, later) = to;
        if n == 0 || m <= n || value <= 0.0 {
            return None;
        }
        // Counts of objects: small enough for f64.
        #[allow(clippy::cast_precision_loss)]
        let ratio = m as f64 / n as f64;
        Some(later / value / ratio)
    }

    /// Whether it is linear or better (none when a bound leaves it open).
    pub fn linear(self) -> Option<bool> {
        match self {
            Growth::Factor(f) => Some(f <= goals::GROWTH),
            Growth::AtLeast(f) => (f > goals::GROWTH).then_some(false),
        }
    }

    fn cell(self) -> String {
        match self {
            Growth::Factor(f) => format!("{f:.2}"),
            Growth::AtLeast(f) => format!("> {f:.2}"),
        }
    }
}

/// A figure of one size, for its growth.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Figure {
    /// Measured.
    Value(f64),
    /// Longer than this (a convergence that gave up).
    Above(f64),
}

/// The growth of a figure into `size` from the largest smaller size measured.
pub fn growth_into(
    sizes: &[SizeFigures],
    size: &SizeFigures,
    figure: impl Fn(&SizeFigures) -> Option<Figure>,
) -> Option<Growth> {
    let before = sizes.iter().filter(|s| s.n < size.n).max_by_key(|s| s.n)?;
    let Some(Figure::Value(from)) = figure(before) else {
        return None;
    };
    match figure(size)? {
        Figure::Value(to) => Growth::between((before.n, from), (size.n, to)).map(Growth::Factor),
        Figure::Above(to) => Growth::between((before.n, from), (size.n, to)).map(Growth::AtLeast),
    }
}

/// Linear or better at every step measured; worse at any; not measured when
/// no step says.
pub fn growth_verdict(
    sizes: &[SizeFigures],
    figure: impl Fn(&SizeFigures) -> Option<Figure>,
) -> Option<bool> {
    let steps: Vec<bool> = sizes
        .iter()
        .filter_map(|s| growth_into(sizes, s, &figure).and_then(Growth::linear))
        .collect();
    if steps.is_empty() {
        None
    } else {
        Some(steps.iter().all(|linear| *linear))
    }
}

fn growth_word(linear: Option<bool>) -> &'static str {
    match linear {
        Some(true) => "linear or better",
        Some(false) => "**worse than linear**",
        None => "not measured",
    }
}

/// A kind's convergence time as a figure to grow.
fn time_figure(k: &KindFigures) -> Figure {
    match k.aleph {
        Convergence::Done(d) => Figure::Value(d.as_secs_f64()),
        Convergence::TimedOut { after, .. } => Figure::Above(after.as_secs_f64()),
    }
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

/// Like [`opt`], but "not measured" for nothing.
fn measured<T>(value: Option<T>, show: impl Fn(T) -> String) -> String {
    value.map_or_else(|| "not measured".to_string(), show)
}

/// Watches by resource: the total, then each resource, most first.
fn watches_cell(watches: &Requests) -> String {
    let total: f64 = watches.values().sum();
    if total == 0.0 {
        return "0".to_string();
    }
    let mut entries: Vec<(&String, &f64)> = watches.iter().collect();
    entries.sort_by(|a, b| b.1.total_cmp(a.1).then(a.0.cmp(b.0)));
    let parts: Vec<String> = entries
        .iter()
        .map(|(resource, count)| format!("{resource} {count:.0}"))
        .collect();
    format!("{total:.0} ({})", parts.join(", "))
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
    let kinds: [(&str, &str, &str, KindOf); 2] = [
        ("Tenants", "Tenant", "", |s| s.tenants.as_ref()),
        (
            "AIModels",
            "AIModel",
            ", until their Deployments are available",
            |s| s.aimodels.as_ref(),
        ),
    ];
    let judged = at_note(judged_size(sizes), "the largest run");
    for (plural, singular, floor_end, kind) in kinds {
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
            &format!("{plural}: floor, children written directly{floor_end} (s)"),
            &|s| opt(kind(s), |k| measured(k.floor, |f| f.cell(s.n))),
            "",
            "",
        );
        let ratio_at = at_note(ratio_size(sizes, kind), "the largest with a floor");
        let goal = format!("≤ {} at N={}{ratio_at}", goals::RATIO, goals::RATIO_AT);
        let verdict = ratio_verdict(sizes, kind).word();
        // The goal goes with the floor that reaches what Ready promises
        // (`KindFigures::judged_ratio`).
        let counted = sizes
            .iter()
            .any(|s| kind(s).is_some_and(|k| k.floor_counted.is_some()));
        let (written_goal, written_verdict) = if counted {
            ("", "")
        } else {
            (goal.as_str(), verdict)
        };
        row(
            &format!("{plural}: Aleph ÷ floor"),
            &|s| opt(kind(s).and_then(KindFigures::ratio), |r| format!("{r:.2}")),
            written_goal,
            written_verdict,
        );
        if counted {
            row(
                &format!(
                    "{plural}: the same floor until the controller manager has counted its quotas (a new quota limits nothing before), as a Tenant's Ready waits for (s)"
                ),
                &|s| opt(kind(s), |k| measured(k.floor_counted, |f| f.cell(s.n))),
                "",
                "",
            );
            row(
                &format!("{plural}: Aleph ÷ that floor"),
                &|s| {
                    opt(kind(s).and_then(KindFigures::ratio_counted), |r| {
                        format!("{r:.2}")
                    })
                },
                &goal,
                verdict,
            );
        }
        if sizes
            .iter()
            .any(|s| kind(s).is_some_and(|k| k.quotas.is_some()))
        {
            row(
                &format!(
                    "{plural}: Aleph's time line: every {singular}'s quota written; all of them counted by the controller manager (s)"
                ),
                &|s| {
                    opt(kind(s), |k| {
                        measured(k.quotas, |q| {
                            format!("{}; {}", q.written.cell(s.n), q.counted.cell(s.n))
                        })
                    })
                },
                "",
                "",
            );
        }
        row(
            &format!("{plural}: operator requests per {singular}"),
            &|s| opt(kind(s), |k| per_object(&k.requests, s.n)),
            "",
            "",
        );
        row(
            &format!("{plural}: CPU seconds while Aleph converged, by process"),
            &|s| opt(kind(s), |k| measured(k.cpu.as_ref(), Cpu::cell)),
            "",
            "",
        );
        row(
            &format!("{plural}: CPU seconds while the floor wrote, by process"),
            &|s| opt(kind(s), |k| measured(k.floor_cpu.as_ref(), Cpu::cell)),
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
            &|s| {
                opt(kind(s), |k| {
                    measured(k.floor_requests.as_ref(), |r| per_object(r, s.n))
                })
            },
            "",
            "",
        );
    }
    row(
        &format!("writes while idle ({} s)", setup.idle.as_secs()),
        &|s| measured(s.idle_writes.as_ref(), writes_cell),
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
    for (plural, _, _, kind) in kinds {
        if !sizes.iter().any(|s| kind(s).is_some()) {
            continue;
        }
        row(
            &format!(
                "operator's share of the API server's requests, WATCH left out: {plural} converging"
            ),
            &|s| opt(kind(s), |k| measured(k.api_share, Share::cell)),
            "",
            "",
        );
    }
    row(
        "operator's share of the API server's requests, WATCH left out: idle",
        &|s| {
            if s.idle_writes.is_none() {
                "not measured".to_string()
            } else {
                measured(s.idle_share, Share::cell)
            }
        },
        "",
        "",
    );
    row(
        "operator's share of the API server's requests, WATCH left out: restart resync",
        &|s| opt(s.resync.as_ref(), |_| measured(s.resync_share, Share::cell)),
        "",
        "",
    );
    row(
        "watches the operator holds open at idle (by resource)",
        &|s| measured(s.watches.as_ref(), watches_cell),
        "",
        "",
    );
    // Growth from the next smaller size, per unit of N.
    type FigureOf = Box<dyn Fn(&SizeFigures) -> Option<Figure>>;
    let mut grown: Vec<(String, FigureOf)> = Vec::new();
    for (plural, singular, _, kind) in kinds {
        if !sizes.iter().any(|s| kind(s).is_some()) {
            continue;
        }
        grown.push((
            format!("{plural}: time to all Ready"),
            Box::new(move |s: &SizeFigures| kind(s).map(time_figure)),
        ));
        grown.push((
            format!("{plural}: operator requests per {singular}"),
            Box::new(move |s: &SizeFigures| {
                kind(s).map(|k| Figure::Value(k.requests.values().sum()))
            }),
        ));
    }
    grown.push((
        "peak RSS, the higher".to_string(),
        Box::new(|s: &SizeFigures| s.peak_rss_mib().map(Figure::Value)),
    ));
    for (name, figure) in &grown {
        row(
            &format!("growth from the size before, per unit of N: {name}"),
            &|s| opt(growth_into(sizes, s, figure), Growth::cell),
            &format!("≤ {:.1} (linear)", goals::GROWTH),
            growth_word(growth_verdict(sizes, figure)),
        );
    }
    out.push_str(&breakdown(sizes));
    out
}

/// `requests` per object, most first, as `"verb resource 1.23"`; those that
/// round to nothing per object (a watch restarted) are left out.
fn by_resource_per_object(requests: &Requests, n: f64) -> Vec<String> {
    let mut entries: Vec<(&String, &f64)> = requests.iter().collect();
    entries.sort_by(|a, b| b.1.total_cmp(a.1).then(a.0.cmp(b.0)));
    entries
        .iter()
        .filter(|(_, count)| **count / n >= 0.005)
        .map(|(key, count)| format!("{key} {:.2}", *count / n))
        .collect()
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
            #[allow(clippy::cast_precision_loss)]
            let n = s.n.max(1) as f64;
            let parts = by_resource_per_object(&k.by_resource, n);
            let _ = writeln!(
                out,
                "\n{plural} at N={}, the operator's requests per object by verb and resource: {}.",
                s.n,
                parts.join(", ")
            );
            if let Some(all) = k.api_by_resource.as_ref().filter(|r| !r.is_empty()) {
                let _ = writeln!(
                    out,
                    "\n{plural} at N={}, the API server's requests per object while Aleph converged, every client's (the operator's, the benchmark's creates, the controller manager's, ...), WATCH left out, by verb and resource: {}.",
                    s.n,
                    by_resource_per_object(all, n).join(", ")
                );
            }
        }
        if let Some(resync) = s.resync_by_resource.as_ref().filter(|r| !r.is_empty()) {
            let mut entries: Vec<(&String, &f64)> = resync.iter().collect();
            entries.sort_by(|a, b| b.1.total_cmp(a.1).then(a.0.cmp(b.0)));
            let parts: Vec<String> = entries
                .iter()
                .map(|(key, count)| format!("{key} {count:.0}"))
                .collect();
            let _ = writeln!(
                out,
                "\nThe restart at N={} (every Tenant and AIModel present), the operator's requests from its start until each was reconciled once, by verb and resource: {}.",
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
            floor: Some(Convergence::Done(Duration::from_secs_f64(floor))),
            // The same as the floor: the verdicts then read alike on both.
            floor_counted: Some(Convergence::Done(Duration::from_secs_f64(floor))),
            quotas: Some(QuotaTimes {
                written: Convergence::Done(Duration::from_secs_f64(0.5 * aleph)),
                counted: Convergence::TimedOut {
                    ready: 7,
                    after: Duration::from_secs_f64(aleph),
                },
            }),
            requests: requests(&[("list", 600.0), ("patch", 300.0)]),
            floor_requests: Some(requests(&[("create", 700.0)])),
            api_share: Some(Share {
                operator: 900.0,
                all: 3600.0,
            }),
            by_resource: requests(&[("list namespaces", 500.0), ("patch tenants", 300.0)]),
            api_by_resource: Some(requests(&[
                ("LIST namespaces", 500.0),
                ("PUT resourcequotas/status", 1200.0),
                ("PATCH tenants", 300.0),
                ("GET leases", 1.0),
            ])),
            reconciles: 400.0,
            reconcile_seconds: 20.0,
            cpu: Some(Cpu(BTreeMap::from([
                (aleph_e2e::host::MACHINE.to_string(), 30.0),
                ("etcd".to_string(), 4.0),
                ("kube-apiserver".to_string(), 20.0),
            ]))),
            floor_cpu: None,
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
            resync_by_resource: None,
            idle_share: Some(Share {
                operator: 0.0,
                all: 50.0,
            }),
            resync_share: Some(Share {
                operator: 30.0,
                all: 120.0,
            }),
            watches: Some(requests(&[("tenants", 1.0), ("namespaces", 2.0)])),
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

    #[test]
    fn growth_is_measured_per_unit_of_n() {
        // Ten times the objects in ten times the time: linear.
        assert_eq!(Growth::between((100, 10.0), (1000, 100.0)), Some(1.0));
        // Five times the objects in ten times the time: twice worse than linear.
        assert_eq!(Growth::between((1000, 100.0), (5000, 1000.0)), Some(2.0));
        // The same memory for more objects: better.
        assert_eq!(Growth::between((100, 50.0), (1000, 50.0)), Some(0.1));
        assert_eq!(Growth::between((100, 0.0), (1000, 50.0)), None);
        assert_eq!(Growth::between((1000, 1.0), (100, 50.0)), None);
        assert_eq!(Growth::Factor(1.0).linear(), Some(true));
        assert_eq!(Growth::Factor(1.01).linear(), Some(false));
        // A bound above linear decides; one below does not.
        assert_eq!(Growth::AtLeast(1.5).linear(), Some(false));
        assert_eq!(Growth::AtLeast(0.5).linear(), None);
    }

    /// A size whose Tenants took `seconds`, with `per_tenant` requests each and `rss_mib`.
    fn grown(n: usize, seconds: f64, per_tenant: f64, rss_mib: u64) -> SizeFigures {
        let mut s = size(n, 1.0, 0.0, rss_mib, 0.1);
        if let Some(t) = s.tenants.as_mut() {
            t.aleph = Convergence::Done(Duration::from_secs_f64(seconds));
            #[allow(clippy::cast_precision_loss)]
            let total = per_tenant * n as f64;
            t.requests = requests(&[("patch", total)]);
        }
        s
    }

    #[test]
    fn growth_rows_compare_each_size_with_the_one_before() {
        let sizes = [
            grown(100, 10.0, 30.0, 50),
            grown(1000, 80.0, 30.0, 100),
            grown(5000, 600.0, 27.0, 300),
        ];
        let time = |s: &SizeFigures| s.tenants.as_ref().map(time_figure);
        assert_eq!(
            growth_into(&sizes, &sizes[1], time),
            Some(Growth::Factor(0.8))
        );
        assert_eq!(
            growth_into(&sizes, &sizes[2], time),
            Some(Growth::Factor(1.5))
        );
        assert_eq!(growth_into(&sizes, &sizes[0], time), None);
        assert_eq!(growth_verdict(&sizes, time), Some(false));
        let table = render(&Setup::default(), &sizes);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            row(
                &lines,
                "| growth from the size before, per unit of N: Tenants: time"
            ),
            "| growth from the size before, per unit of N: Tenants: time to all Ready | – | 0.80 | 1.50 | ≤ 1.0 (linear) | **worse than linear** |"
        );
        assert_eq!(
            row(
                &lines,
                "| growth from the size before, per unit of N: Tenants: operator"
            ),
            "| growth from the size before, per unit of N: Tenants: operator requests per Tenant | – | 1.00 | 0.90 | ≤ 1.0 (linear) | linear or better |"
        );
        // The higher peak: 50, 100 and 300 MiB.
        assert_eq!(
            row(
                &lines,
                "| growth from the size before, per unit of N: peak RSS"
            ),
            "| growth from the size before, per unit of N: peak RSS, the higher | – | 0.20 | 0.60 | ≤ 1.0 (linear) | linear or better |"
        );
        // Sizes need not come in order; the one before is the next smaller.
        let shuffled = [sizes[2].clone(), sizes[0].clone(), sizes[1].clone()];
        assert_eq!(
            growth_into(&shuffled, &shuffled[0], time),
            Some(Growth::Factor(1.5))
        );
    }

    #[test]
    fn a_size_that_gave_up_grew_at_least_this_much() {
        let mut sizes = [grown(1000, 100.0, 30.0, 100), grown(5000, 0.0, 30.0, 300)];
        if let Some(t) = sizes[1].tenants.as_mut() {
            t.aleph = Convergence::TimedOut {
                ready: 4000,
                after: Duration::from_secs(1000),
            };
        }
        let time = |s: &SizeFigures| s.tenants.as_ref().map(time_figure);
        assert_eq!(
            growth_into(&sizes, &sizes[1], time),
            Some(Growth::AtLeast(2.0))
        );
        assert_eq!(growth_verdict(&sizes, time), Some(false));
        let table = render(&Setup::default(), &sizes);
        assert!(
            table.contains("| – | > 2.00 | ≤ 1.0 (linear) | **worse than linear** |"),
            "{table}"
        );
        // One size alone grows from nothing.
        assert_eq!(growth_verdict(&sizes[..1], time), None);
    }

    #[test]
    fn the_goal_judges_tenants_against_the_floor_that_counted_its_quotas() {
        let mut tenants = kind(60.0, 20.0);
        tenants.floor_counted = Some(Convergence::Done(Duration::from_secs(50)));
        assert_eq!(tenants.ratio(), Some(3.0));
        assert_eq!(tenants.judged_ratio(), Some(1.2));
        let mut sizes = [size(1000, 1.0, 0.0, 30, 0.5)];
        sizes[0].tenants = Some(tenants.clone());
        assert_eq!(ratio_verdict(&sizes, |s| s.tenants.as_ref()), Verdict::Met);
        // A floor that never got its quotas counted leaves the goal open,
        // and without that floor the goal reads the written one.
        tenants.floor_counted = Some(Convergence::TimedOut {
            ready: 3,
            after: Duration::from_secs(90),
        });
        assert_eq!(tenants.judged_ratio(), None);
        tenants.floor_counted = None;
        assert_eq!(tenants.judged_ratio(), Some(3.0));
        sizes[0].tenants = Some(tenants);
        assert_eq!(
            ratio_verdict(&sizes, |s| s.tenants.as_ref()),
            Verdict::Missed
        );
    }

    #[test]
    fn sizes_without_a_floor_show_it_and_are_not_judged_on_it() {
        let mut large = size(5000, 1.0, 0.0, 300, 0.5);
        if let Some(t) = large.tenants.as_mut() {
            t.floor = None;
            t.floor_counted = None;
            t.floor_requests = None;
            t.quotas = None;
        }
        large.idle_writes = None;
        large.idle_share = None;
        let sizes = [size(100, 2.0, 0.0, 30, 0.2), large];
        // Judged at the largest size with a floor: N=100, ratio 2.
        assert_eq!(
            ratio_verdict(&sizes, |s| s.tenants.as_ref()),
            Verdict::Missed
        );
        let table = render(&Setup::default(), &sizes);
        let lines: Vec<&str> = table.lines().collect();
        for (start, whole) in [
            (
                "| Tenants: floor, children",
                "| Tenants: floor, children written directly (s) | 10.0 | not measured |  |  |",
            ),
            (
                "| Tenants: Aleph ÷ floor",
                "| Tenants: Aleph ÷ floor | 2.00 | – |  |  |",
            ),
            (
                "| Tenants: the same floor",
                "| Tenants: the same floor until the controller manager has counted its quotas (a new quota limits nothing before), as a Tenant's Ready waits for (s) | 10.0 | not measured |  |  |",
            ),
            (
                "| Tenants: Aleph ÷ that floor",
                "| Tenants: Aleph ÷ that floor | 2.00 | – | ≤ 1.5 at N=1000 (judged at N=100, the largest with a floor) | **missed** |",
            ),
            (
                "| Tenants: Aleph's time line",
                "| Tenants: Aleph's time line: every Tenant's quota written; all of them counted by the controller manager (s) | 10.0; 7/100 after 20 s | not measured |  |  |",
            ),
            (
                "| Tenants: floor requests",
                "| Tenants: floor requests per Tenant | create 7.00, = 7.00 | not measured |  |  |",
            ),
        ] {
            assert_eq!(row(&lines, start), whole);
        }
        assert_eq!(
            row(&lines, "| writes while idle"),
            "| writes while idle (0 s) | 0 | not measured | 0 | met |"
        );
        assert_eq!(
            row(
                &lines,
                "| operator's share of the API server's requests, WATCH left out: idle"
            ),
            "| operator's share of the API server's requests, WATCH left out: idle | 0.0 % (0 of 50) | not measured |  |  |"
        );
    }

    #[test]
    fn shares_and_watches_have_rows() {
        let sizes = [size(100, 1.0, 0.0, 30, 0.2)];
        let table = render(&Setup::default(), &sizes);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            row(
                &lines,
                "| operator's share of the API server's requests, WATCH left out: Tenants"
            ),
            "| operator's share of the API server's requests, WATCH left out: Tenants converging | 25.0 % (900 of 3600) |  |  |"
        );
        assert_eq!(
            row(
                &lines,
                "| operator's share of the API server's requests, WATCH left out: restart"
            ),
            "| operator's share of the API server's requests, WATCH left out: restart resync | 25.0 % (30 of 120) |  |  |"
        );
        assert_eq!(
            row(&lines, "| watches the operator"),
            "| watches the operator holds open at idle (by resource) | 3 (namespaces 2, tenants 1) |  |  |"
        );
        assert!(!table.contains("AIModels converging"), "{table}");
        let none = Share {
            operator: 3.0,
            all: 0.0,
        };
        assert_eq!(none.fraction(), None);
        assert_eq!(none.cell(), "– (3 of 0)");
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
        assert_eq!(ratio, "| Tenants: Aleph ÷ floor | 1.20 | 1.40 |  |  |");
        // The goal is judged against the floor until the quotas are counted.
        assert_eq!(
            row(&lines, "| Tenants: Aleph ÷ that floor"),
            "| Tenants: Aleph ÷ that floor | 1.20 | 1.40 | ≤ 1.5 at N=1000 | met |"
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
        let cpu = "machine 30.0 busy: kube-apiserver 20.0, etcd 4.0, the rest 6.0";
        assert!(
            table.contains(&format!(
                "| Tenants: CPU seconds while Aleph converged, by process | {cpu} | {cpu} |"
            )),
            "{table}"
        );
        assert!(
            table.contains(
                "| Tenants: CPU seconds while the floor wrote, by process | not measured | not measured |"
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
        assert!(
            table.contains(
                "WATCH left out, by verb and resource: PUT resourcequotas/status 1.20, \
                 LIST namespaces 0.50, PATCH tenants 0.30."
            ),
            "{table}"
        );
    }
}
