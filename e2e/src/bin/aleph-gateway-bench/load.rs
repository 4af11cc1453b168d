//! The load generator: HTTP/1.1 with keep-alive (hyper's pooled client) on
//! one thread, sending chat completions either at a fixed arrival rate (open
//! loop) or from a fixed number of callers that each send the next request
//! when the last one ends (closed loop).
//!
//! Open loop: a pacing thread releases request i at `start + i / rate`
//! (plus its spread, below) whatever happened to the requests before it, and
//! latency is measured from that intended time, so a slow answer cannot
//! delay the next request and hide its own cost (coordinated omission). The
//! pacing thread sleeps between releases (no busy wait); how late it
//! released requests is reported as the generator's own lag.
//!
//! Each release time is moved later by an amount drawn evenly from the first
//! millisecond (at most the period), the same sequence for every path. The
//! stub paces a stream's chunks with a Tokio interval, whose ticks fall on
//! whole milliseconds of its runtime's clock; released on an exact
//! millisecond schedule, every request of a run would meet those ticks at
//! one phase, and a proxy's delay would move that phase, and with it the end
//! of every stream, by up to a millisecond either way: a skew of the stub's
//! timer that the stream rows would have charged to the proxy.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use http_body_util::{BodyExt, Full};
use hyper::http::{HeaderValue, Uri, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The pooled HTTP/1.1 client of the generator.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A client with Nagle off and an unbounded keep-alive pool.
pub fn client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(300))
        .build(connector)
}

/// Where the requests go and what they carry: request i uses the i-th of
/// `requests`, round robin.
#[derive(Clone, Debug)]
pub struct Target {
    pub uri: Uri,
    /// (the `Authorization` header, the body) of each distinct request.
    pub requests: Arc<Vec<(HeaderValue, Bytes)>>,
}

impl Target {
    /// A target at `addr` whose requests are `requests`.
    pub fn new(addr: SocketAddr, requests: Vec<(HeaderValue, Bytes)>) -> Self {
        let uri = format!("http://{addr}/v1/chat/completions")
            .parse()
            .unwrap_or_default();
        Self {
            uri,
            requests: Arc::new(requests),
        }
    }

    fn request(&self, i: u64) -> hyper::Request<Full<Bytes>> {
        let n = u64::try_from(self.requests.len()).unwrap_or(1).max(1);
        let index = usize::try_from(i % n).unwrap_or(0);
        let (auth, body) = &self.requests[index];
        let mut request = hyper::Request::new(Full::new(body.clone()));
        *request.method_mut() = hyper::Method::POST;
        *request.uri_mut() = self.uri.clone();
        let headers = request.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::AUTHORIZATION, auth.clone());
        request
    }
}

/// What one exchange gave.
#[derive(Clone, Copy, Debug)]
struct Outcome {
    /// When the first bytes of the body arrived.
    first_byte: Instant,
    /// When the body ended.
    end: Instant,
}

/// Sends one request and reads the whole answer; `None` when it failed or
/// was not a 200 with a body.
async fn exchange(client: &HttpClient, request: hyper::Request<Full<Bytes>>) -> Option<Outcome> {
    let response = client.request(request).await.ok()?;
    if response.status() != hyper::StatusCode::OK {
        return None;
    }
    let mut body = response.into_body();
    let mut first_byte = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.ok()?;
        if first_byte.is_none() && frame.data_ref().is_some_and(|d| !d.is_empty()) {
            first_byte = Some(Instant::now());
        }
    }
    Some(Outcome {
        first_byte: first_byte?,
        end: Instant::now(),
    })
}

/// Whether one request to `target` gets a whole 200 answer.
pub async fn probe(client: &HttpClient, target: &Target) -> bool {
    exchange(client, target.request(0)).await.is_some()
}

/// Latencies of one run, in microseconds.
#[derive(Clone, Debug, Default)]
pub struct Samples {
    /// To the first byte of the body.
    pub first_byte: Vec<u32>,
    /// To the end of the body.
    pub end: Vec<u32>,
    /// Requests that failed (transport error, non-200, empty body) or did
    /// not end in time.
    pub errors: u64,
    /// Open loop: how late the pacing thread released each request.
    pub lag: Vec<u32>,
    /// Requests completed per second over the measured window.
    pub throughput: f64,
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

impl Samples {
    fn record(&mut self, since: Instant, outcome: Option<Outcome>) {
        match outcome {
            Some(o) => {
                self.first_byte
                    .push(micros(o.first_byte.saturating_duration_since(since)));
                self.end
                    .push(micros(o.end.saturating_duration_since(since)));
            }
            None => self.errors += 1,
        }
    }

    /// Sorts the samples so that percentiles can be read.
    fn finish(mut self) -> Self {
        self.first_byte.sort_unstable();
        self.end.sort_unstable();
        self.lag.sort_unstable();
        self
    }
}

/// The p-th percentile (0 < p <= 100) of sorted samples, nearest rank.
pub fn percentile(sorted: &[u32], p: f64) -> Option<u32> {
    if sorted.is_empty() {
        return None;
    }
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// How long a run lasts: a warm-up whose requests are not recorded, then
/// the measured window.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    pub warmup: Duration,
    pub measured: Duration,
}

/// How long to wait for the last answers after the window.
const DRAIN: Duration = Duration::from_secs(10);

/// The span over which open-loop release times are spread (see the
/// module's documentation): one tick of the stub's timer.
const SPREAD: Duration = Duration::from_millis(1);

/// The seed of the release times' spread: the same for every path.
const SPREAD_SEED: u64 = 0x5EED;

/// Sends `rate` requests per second for the window; latencies from each
/// request's intended start.
pub async fn open_loop(client: &HttpClient, target: &Target, rate: f64, window: Window) -> Samples {
    let period = Duration::from_secs_f64(1.0 / rate);
    let to_count = |d: Duration| {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let n = (d.as_secs_f64() * rate).round() as u64;
        n
    };
    let warmup = to_count(window.warmup);
    let total = warmup + to_count(window.measured);
    let start = Instant::now() + Duration::from_millis(20);
    let spread = period.min(SPREAD);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u64, Instant, Duration)>();
    let pacer = std::thread::spawn(move || {
        let mut offsets = StdRng::seed_from_u64(SPREAD_SEED);
        for i in 0..total {
            let due = start + period.mul_f64(i as f64) + spread.mul_f64(offsets.random::<f64>());
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if tx.send((i, due, due.elapsed())).is_err() {
                break;
            }
        }
    });
    let mut samples = Samples::default();
    let mut in_flight = FuturesUnordered::new();
    let mut open = true;
    let mut drain_by = tokio::time::Instant::now() + window.warmup + window.measured + DRAIN;
    while open || !in_flight.is_empty() {
        tokio::select! {
            biased;
            released = rx.recv(), if open => match released {
                Some((i, due, lag)) => {
                    let request = target.request(i);
                    in_flight.push(async move {
                        (i >= warmup, due, exchange(client, request).await)
                    });
                    if i >= warmup {
                        samples.lag.push(micros(lag));
                    }
                }
                None => {
                    open = false;
                    drain_by = tokio::time::Instant::now() + DRAIN;
                }
            },
            Some((measured, due, outcome)) = in_flight.next(), if !in_flight.is_empty() => {
                if measured {
                    samples.record(due, outcome);
                }
            }
            () = tokio::time::sleep_until(drain_by) => break,
        }
    }
    // What did not end in time counts as failed.
    samples.errors += in_flight.len() as u64;
    let _ = pacer.join();
    samples.throughput = samples.end.len() as f64 / window.measured.as_secs_f64();
    samples.finish()
}

/// `concurrency` callers, each sending its next request when the last one
/// ended, for the window; latencies from each request's start.
pub async fn closed_loop(
    client: &HttpClient,
    target: &Target,
    concurrency: usize,
    window: Window,
) -> Samples {
    let start = Instant::now();
    let measure_from = start + window.warmup;
    let end = measure_from + window.measured;
    let mut next = 0u64;
    let mut in_flight = FuturesUnordered::new();
    let send = |i: u64| {
        let request = target.request(i);
        async move {
            let sent = Instant::now();
            (sent, exchange(client, request).await)
        }
    };
    for _ in 0..concurrency {
        in_flight.push(send(next));
        next += 1;
    }
    let mut samples = Samples::default();
    let mut completed = 0u64;
    let drain_by = tokio::time::Instant::from_std(end + DRAIN);
    loop {
        tokio::select! {
            finished = in_flight.next() => {
                let Some((sent, outcome)) = finished else { break };
                let now = Instant::now();
                // Throughput: every answer that ended within the window;
                // latency: those that were also sent within it.
                if now >= measure_from && now <= end {
                    if outcome.is_some() {
                        completed += 1;
                    }
                    if sent >= measure_from {
                        samples.record(sent, outcome);
                    } else if outcome.is_none() {
                        samples.errors += 1;
                    }
                } else if outcome.is_none() {
                    samples.errors += 1;
                }
                if now < end {
                    in_flight.push(send(next));
                    next += 1;
                }
            }
            () = tokio::time::sleep_until(drain_by) => break,
        }
    }
    samples.errors += in_flight.len() as u64;
    #[allow(clippy::cast_precision_loss)]
    let completed = completed as f64;
    samples.throughput = completed / window.measured.as_secs_f64();
    samples.finish()
}
