//! `aleph-gateway-bench`: what aleph-gateway adds to a request, next to nginx
//! as a plain reverse proxy, and how much memory it needs.
//!
//! ```text
//! make bench-gateway BENCH_GATEWAY_ARGS="--seconds 5"
//! ```
//!
//! It starts a stub OpenAI engine (this binary's `stub` subcommand), a
//! release aleph-gateway with a static configuration pointing at it, and
//! nginx as a reverse proxy to the same stub, then measures, with and
//! without streaming:
//!
//! 1. latency at fixed arrival rates (open loop) directly, through the
//!    gateway and through nginx, and what each proxy adds;
//! 2. the most requests per second each sustains (closed loop);
//! 3. the gateway's peak memory, and its memory with a large configuration
//!    (1,000 keys and 1,000 models), idle and under load.
//!
//! The proxy runs on one CPU, the load generator and the stub on the other
//! (`taskset`), so that the proxy's core is its own. Nothing leaves the
//! loopback interface. It prints one Markdown report.

mod config;
mod load;
mod procs;
mod report;
mod stub;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path as FsPath, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use aleph_e2e::host;
use bytes::Bytes;
use clap::{Parser, Subcommand};
use http_body_util::Full;

use config::{bearer, chat_body, large_config, sha256_hex, small_config};
use load::{HttpClient, Target, Window};
use procs::{CpuMeter, Proc};
use report::{Figures, LargeConfig, Load, Mode, Path, Run, Setup};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Setup(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = BenchError> = std::result::Result<T, E>;

/// Benchmarks aleph-gateway against a direct call and against nginx.
#[derive(Debug, Parser)]
#[command(name = "aleph-gateway-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    args: Args,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the stub engine (started by the benchmark itself).
    Stub {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        #[arg(long, default_value_t = 8)]
        chunks: usize,
        #[arg(long, default_value_t = 1000)]
        interval_us: u64,
    },
}

#[derive(Debug, clap::Args)]
#[allow(clippy::struct_excessive_bools)]
struct Args {
    /// The aleph-gateway binary; by default the one beside this binary.
    #[arg(long, env = "ALEPH_GATEWAY_BIN")]
    gateway_bin: Option<PathBuf>,
    /// The nginx binary.
    #[arg(long, env = "ALEPH_NGINX_BIN", default_value = "nginx")]
    nginx_bin: PathBuf,
    /// Seconds measured in each run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Seconds of warm-up before each run, not measured.
    #[arg(long, default_value_t = 2)]
    warmup_seconds: u64,
    /// Rounds of each scenario: in each, every path runs once, in an order
    /// that turns from round to round; a figure is the median of the rounds'.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..))]
    rounds: u16,
    /// The fixed arrival rates (requests per second) of the open-loop runs.
    #[arg(long, value_delimiter = ',', default_value = "200,1000")]
    rates: Vec<u32>,
    /// Callers of the closed-loop runs of plain requests.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Callers of the closed-loop runs of streams (which last longer).
    #[arg(long, default_value_t = 256)]
    stream_concurrency: usize,
    /// Content chunks in the stub's streams.
    #[arg(long, default_value_t = 8)]
    stream_chunks: usize,
    /// Microseconds between two chunks of the stub's streams.
    #[arg(long, default_value_t = 1000)]
    chunk_interval_us: u64,
    /// The CPU of the load generator and the stub engine.
    #[arg(long, default_value_t = 0)]
    client_cpu: usize,
    /// The CPU of the proxy (aleph-gateway or nginx).
    #[arg(long, default_value_t = 1)]
    proxy_cpu: usize,
    /// Do not pin processes to CPUs.
    #[arg(long)]
    no_pin: bool,
    /// Tenants of the large configuration.
    #[arg(long, default_value_t = 100)]
    large_tenants: usize,
    /// API keys of the large configuration (spread over its tenants).
    #[arg(long, default_value_t = 1000)]
    large_keys: usize,
    /// Models of the large configuration (spread over its tenants).
    #[arg(long, default_value_t = 1000)]
    large_models: usize,
    /// Skip the runs through the proxies and measure the large configuration only.
    #[arg(long)]
    large_only: bool,
    /// Also write the report to this file.
    #[arg(long)]
    output: Option<PathBuf>,
}

fn progress(message: impl AsRef<str>) {
    eprintln!("==> {}", message.as_ref());
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Stub {
            listen,
            chunks,
            interval_us,
        }) => stub::serve(
            listen,
            stub::StubOptions {
                chunks,
                interval: Duration::from_micros(interval_us),
            },
        )
        .map_err(BenchError::from),
        None => run(&cli.args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("aleph-gateway-bench: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn get_ok(client: &HttpClient, url: &str) -> bool {
    let Ok(uri) = url.parse::<hyper::Uri>() else {
        return false;
    };
    let mut request = hyper::Request::new(Full::new(Bytes::new()));
    *request.uri_mut() = uri;
    matches!(client.request(request).await, Ok(r) if r.status() == hyper::StatusCode::OK)
}

/// Waits until `ready` holds, the process still running; 30 s at most.
async fn wait_until<F, Fut>(process: &mut Proc, ready: F) -> Result<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        process.check_running()?;
        if ready().await {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(BenchError::Setup(format!(
                "{} not ready after 30 s; see {}",
                process.name,
                process.log.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A gateway with `config`, on the proxy CPU, once `/readyz` says so.
async fn start_gateway(
    bench: &Bench,
    client: &HttpClient,
    name: &str,
    config: &serde_json::Value,
) -> Result<(Proc, SocketAddr)> {
    let path = bench.dir.join(format!("{name}.json"));
    std::fs::write(&path, config.to_string())?;
    let listen = procs::free_addr()?;
    let metrics = procs::free_addr()?;
    let args: Vec<String> = [
        "run",
        "--static-config",
        &path.display().to_string(),
        "--listen",
        &listen.to_string(),
        "--metrics-listen",
        &metrics.to_string(),
    ]
    .map(String::from)
    .to_vec();
    let mut gateway = Proc::spawn(
        name,
        &bench.gateway_bin,
        &args,
        bench.proxy_cpu,
        &bench.dir,
        Stdio::null(),
    )?;
    let url = format!("http://{listen}/readyz");
    wait_until(&mut gateway, || get_ok(client, &url)).await?;
    Ok((gateway, listen))
}

struct Bench {
    dir: PathBuf,
    gateway_bin: PathBuf,
    client_cpu: Option<usize>,
    proxy_cpu: Option<usize>,
    ticks: f64,
}

/// The CPU of the load generator itself.
fn own_pid() -> u32 {
    std::process::id()
}

async fn measure(
    bench: &Bench,
    client: &HttpClient,
    target: &Target,
    load: Load,
    window: Window,
    proxy_pids: Option<Vec<u32>>,
    stub_pid: u32,
) -> Run {
    let proxy = proxy_pids.map(CpuMeter::start);
    let stub = CpuMeter::start(vec![stub_pid]);
    let me = CpuMeter::start(vec![own_pid()]);
    let samples = match load {
        Load::Rate(rate) => load::open_loop(client, target, f64::from(rate), window).await,
        Load::Closed(concurrency) => load::closed_loop(client, target, concurrency, window).await,
    };
    Run {
        samples,
        cpu: (
            proxy.map(|m| m.percent(bench.ticks)),
            stub.percent(bench.ticks),
            me.percent(bench.ticks),
        ),
    }
}

fn nginx_pids(nginx: &Proc) -> Vec<u32> {
    let mut pids = vec![nginx.pid()];
    pids.extend(procs::children(nginx.pid()));
    pids
}

fn machine() -> String {
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap_or_default();
    format!(
        "{} CPUs online ({}; {} usable by this process before pinning), Linux {}",
        online.trim(),
        host::cpu_model(),
        host::usable_cores(),
        host::kernel_release()
    )
}

fn version_of(program: &FsPath, arg: &str) -> String {
    std::process::Command::new(program)
        .arg(arg)
        .output()
        .ok()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .unwrap_or_default()
}

fn run(args: &Args) -> Result<()> {
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let started = k8s_openapi::jiff::Timestamp::now();
    let load_before = host::load_average();
    let machine = machine();
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let pin = !args.no_pin && cpus >= 2;
    if !args.no_pin && !pin {
        progress("fewer than 2 CPUs: processes are not pinned");
    }
    if pin {
        procs::pin_self(args.client_cpu)?;
    }
    let me = std::env::current_exe()?;
    let gateway_bin = match &args.gateway_bin {
        Some(path) => path.clone(),
        None => me.with_file_name("aleph-gateway"),
    };
    if !gateway_bin.exists() {
        return Err(BenchError::Setup(format!(
            "no aleph-gateway at {} (build it with `cargo build --release -p aleph-gateway`, or pass --gateway-bin)",
            gateway_bin.display()
        )));
    }
    let dir = std::env::temp_dir().join(format!("aleph-gateway-bench-{}", own_pid()));
    std::fs::create_dir_all(&dir)?;
    let bench = Bench {
        dir,
        gateway_bin,
        client_cpu: pin.then_some(args.client_cpu),
        proxy_cpu: pin.then_some(args.proxy_cpu),
        ticks: procs::ticks_per_second(),
    };
    progress(format!(
        "logs and configurations in {}",
        bench.dir.display()
    ));

    let mut stub = Proc::spawn(
        "stub",
        &me,
        &[
            "stub".into(),
            "--chunks".into(),
            args.stream_chunks.to_string(),
            "--interval-us".into(),
            args.chunk_interval_us.to_string(),
        ],
        bench.client_cpu,
        &bench.dir,
        Stdio::piped(),
    )?;
    let engine: SocketAddr = stub
        .first_line()?
        .parse()
        .map_err(|e| BenchError::Setup(format!("the stub's address: {e}")))?;
    progress(format!("stub engine on {engine} (pid {})", stub.pid()));

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (figures, setup) = runtime.block_on(measure_all(&bench, args, &mut stub, engine))?;
    stub.stop();

    let mut header = vec![
        format!("Date: {started}"),
        format!("Machine: {machine}"),
        format!(
            "Load average before and after: {load_before} / {}",
            host::load_average()
        ),
        format!("Command: `{command}`"),
    ];
    header.extend(setup.lines.iter().cloned());
    let setup = Setup {
        lines: header,
        ..setup
    };
    let report = report::render(&setup, &figures);
    println!("{report}");
    if let Some(path) = &args.output {
        std::fs::write(path, &report)?;
    }
    let _ = std::fs::remove_dir_all(&bench.dir);
    Ok(())
}

#[allow(clippy::too_many_lines)]
async fn measure_all(
    bench: &Bench,
    args: &Args,
    stub: &mut Proc,
    engine: SocketAddr,
) -> Result<(Figures, Setup)> {
    let client = load::client();
    let window = Window {
        warmup: Duration::from_secs(args.warmup_seconds),
        measured: Duration::from_secs(args.seconds),
    };
    let mut figures = Figures::default();
    let concurrency = BTreeMap::from([
        (Mode::Plain, args.concurrency),
        (Mode::Stream, args.stream_concurrency),
    ]);
    let key = format!("sk-aleph-bench-{}", sha256_hex("bench"));
    let requests =
        |mode: Mode| vec![(bearer(&key), chat_body("bench-model", mode == Mode::Stream))];
    let gateway_version = version_of(&bench.gateway_bin, "--version");
    let nginx_version = version_of(&args.nginx_bin, "-v");

    if !args.large_only {
        let (mut gateway, gateway_addr) =
            start_gateway(bench, &client, "gateway", &small_config(engine, &key)).await?;
        progress(format!(
            "aleph-gateway on {gateway_addr} (pid {})",
            gateway.pid()
        ));
        let nginx_addr = procs::free_addr()?;
        let mut nginx = procs::start_nginx(
            &args.nginx_bin,
            &bench.dir,
            nginx_addr,
            engine,
            bench.proxy_cpu,
        )?;
        let probe = Target::new(nginx_addr, requests(Mode::Plain));
        wait_until(&mut nginx, || load::probe(&client, &probe)).await?;
        progress(format!(
            "nginx on {nginx_addr} (pid {}, worker {:?})",
            nginx.pid(),
            procs::children(nginx.pid())
        ));

        let mut loads: Vec<(Mode, Load)> = Vec::new();
        for mode in [Mode::Plain, Mode::Stream] {
            for rate in &args.rates {
                loads.push((mode, Load::Rate(*rate)));
            }
            loads.push((mode, Load::Closed(concurrency[&mode])));
        }
        let rounds = usize::from(args.rounds);
        for (mode, load) in loads {
            for (round, i) in (0..rounds).flat_map(|r| (0..Path::ALL.len()).map(move |i| (r, i))) {
                // The first path of a round turns, so that none always runs
                // right after another's load.
                let path = Path::ALL[(i + round) % Path::ALL.len()];
                let (addr, proxy_pids) = match path {
                    Path::Direct => (engine, None),
                    Path::Gateway => (gateway_addr, Some(vec![gateway.pid()])),
                    Path::Nginx => (nginx_addr, Some(nginx_pids(&nginx))),
                };
                gateway.check_running()?;
                nginx.check_running()?;
                stub.check_running()?;
                let target = Target::new(addr, requests(mode));
                let run = measure(
                    bench,
                    &client,
                    &target,
                    load,
                    window,
                    proxy_pids,
                    stub.pid(),
                )
                .await;
                let s = &run.samples;
                progress(format!(
                    "{} {:?} {} (round {}/{rounds}): {:.0} req/s, end p50 {:?} p99 {:?} µs, first byte p50 {:?} µs, {} failed; CPU proxy {:?} stub {:.0} client {:.0}",
                    mode.name(),
                    load,
                    path.name(),
                    round + 1,
                    s.throughput,
                    load::percentile(&s.end, 50.0),
                    load::percentile(&s.end, 99.0),
                    load::percentile(&s.first_byte, 50.0),
                    s.errors,
                    run.cpu.0.map(|c| c.round()),
                    run.cpu.1,
                    run.cpu.2,
                ));
                figures
                    .runs
                    .entry((mode, load, path))
                    .or_default()
                    .push(run);
            }
        }
        figures.gateway_peak_kib = procs::status_kib(gateway.pid(), "VmHWM");
        figures.nginx_peak_kib = Some(
            nginx_pids(&nginx)
                .iter()
                .filter_map(|p| procs::status_kib(*p, "VmHWM"))
                .sum(),
        );
        gateway.stop();
        nginx.stop();
    }

    // The large configuration.
    let mut large = LargeConfig {
        tenants: args.large_tenants,
        keys: args.large_keys,
        models: args.large_models,
        ..LargeConfig::default()
    };
    let (config, plain_requests) = large_config(
        engine,
        args.large_tenants,
        args.large_keys,
        args.large_models,
        false,
    );
    let (_, stream_requests) = large_config(
        engine,
        args.large_tenants,
        args.large_keys,
        args.large_models,
        true,
    );
    let (mut gateway, addr) = start_gateway(bench, &client, "gateway-large", &config).await?;
    progress(format!(
        "aleph-gateway with {} keys and {} models on {addr} (pid {})",
        args.large_keys,
        args.large_models,
        gateway.pid()
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    large.idle_rss_kib = procs::status_kib(gateway.pid(), "VmRSS");
    for (mode, requests) in [
        (Mode::Plain, plain_requests),
        (Mode::Stream, stream_requests),
    ] {
        let combos = requests.len();
        let target = Target::new(addr, requests);
        let c = concurrency[&mode];
        let run = measure(
            bench,
            &client,
            &target,
            Load::Closed(c),
            window,
            Some(vec![gateway.pid()]),
            stub.pid(),
        )
        .await;
        progress(format!(
            "large configuration, {} closed loop over {combos} key and model pairs: {:.0} req/s, {} failed, VmRSS {:?} KiB",
            mode.name(),
            run.samples.throughput,
            run.samples.errors,
            procs::status_kib(gateway.pid(), "VmRSS"),
        ));
        large.runs.insert(mode, run);
        large.concurrency.insert(mode, c);
    }
    large.peak_rss_kib = procs::status_kib(gateway.pid(), "VmHWM");
    gateway.check_running()?;
    gateway.stop();
    figures.large = large;

    let pinning = match (bench.proxy_cpu, bench.client_cpu) {
        (Some(p), Some(c)) => format!(
            "Pinning (taskset): the proxy on CPU {p} (aleph-gateway, whose Tokio runtime then has 1 worker thread; nginx's master and its 1 worker); the load generator (1 thread plus a pacing thread) and the stub engine (1 thread) on CPU {c}."
        ),
        _ => "Pinning: none.".to_string(),
    };
    let pinning = format!(
        "{pinning} Every process of the benchmark at nice {}, in a scheduling group (autogroup) at nice {} (other work on the machine at its own).",
        procs::nice(own_pid()).map_or("?".into(), |n| n.to_string()),
        std::fs::read_to_string("/proc/self/autogroup")
            .ok()
            .and_then(|a| a.split_whitespace().last().map(str::to_string))
            .unwrap_or_else(|| "?".into())
    );
    let setup = Setup {
        lines: vec![
            format!(
                "aleph-gateway: `{gateway_version}` (release build, `--static-config`, one tenant with limits it checks on every request but never reaches, one key, one model); nginx: `{nginx_version}` (`worker_processes 1`, upstream keepalive, `proxy_buffering off`, no access log)."
            ),
            pinning,
            format!(
                "Stub engine: plain answers at once ({} bytes with `usage`); streams: a role chunk, {} content chunks and a usage chunk then `[DONE]`, {} µs apart.",
                stub::COMPLETION.len(),
                args.stream_chunks,
                args.chunk_interval_us
            ),
            format!(
                "Each run: {} s warm-up, then {} s measured; {} rounds of each scenario, every path once per round (the first path turning), each figure the median of the rounds' (the failures their sum). Open loop at {} req/s, each release time moved later by up to 1 ms (the same draws for every path); closed loop with {} callers (plain) and {} (streams). HTTP/1.1 keep-alive on every hop.",
                args.warmup_seconds,
                args.seconds,
                args.rounds,
                args.rates
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" and "),
                args.concurrency,
                args.stream_concurrency
            ),
        ],
        rates: if args.large_only {
            Vec::new()
        } else {
            args.rates.clone()
        },
        concurrency: if args.large_only {
            BTreeMap::new()
        } else {
            concurrency
        },
    };
    Ok((figures, setup))
}
