//! The stub engine: an OpenAI-compatible `/v1/chat/completions` that answers
//! at once with a fixed completion (with `usage`), or, for `"stream": true`,
//! with a fixed stream of server-sent events whose chunks are a fixed
//! interval apart, ending with a usage chunk and `data: [DONE]`. Small and
//! single-threaded, so that it costs the benchmark little CPU; every path
//! measured reaches the same stub.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

/// How the stub answers streams.
#[derive(Clone, Copy, Debug)]
pub struct StubOptions {
    /// Content chunks in a stream (before the usage chunk and `[DONE]`).
    pub chunks: usize,
    /// Time between two chunks of a stream; zero sends them back to back.
    pub interval: Duration,
}

/// The completion of a plain request: what a small model's answer looks like.
pub const COMPLETION: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"stub-model","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I help you today?"},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":24,"completion_tokens":9,"total_tokens":33}}"#;

const ROLE_CHUNK: &str = "data: {\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"stub-model\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}],\"usage\":null}\n\n";
const CONTENT_CHUNK: &str = "data: {\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"stub-model\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" word\"},\"finish_reason\":null}],\"usage\":null}\n\n";
const LAST_CHUNKS: &str = "data: {\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"stub-model\",\"choices\":[],\"usage\":{\"prompt_tokens\":24,\"completion_tokens\":9,\"total_tokens\":33}}\n\ndata: [DONE]\n\n";

/// Whether a request body asks for a stream. Every client of the stub (the
/// load generator, the gateway's re-serialised body, nginx passing it
/// through) writes compact JSON.
fn wants_stream(body: &[u8]) -> bool {
    const NEEDLE: &[u8] = b"\"stream\":true";
    body.windows(NEEDLE.len()).any(|w| w == NEEDLE)
}

type StubBody = Either<
    Full<Bytes>,
    StreamBody<futures::stream::BoxStream<'static, Result<Frame<Bytes>, Infallible>>>,
>;

fn stream(options: StubOptions) -> StubBody {
    let mut interval = tokio::time::interval(options.interval.max(Duration::from_micros(1)));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let total = options.chunks + 2;
    let pace = !options.interval.is_zero();
    let frames = futures::stream::unfold((0, interval), move |(i, mut interval)| async move {
        if i >= total {
            return None;
        }
        // The first tick is immediate: the role chunk leaves with the headers.
        if pace {
            interval.tick().await;
        }
        let text = match i {
            0 => ROLE_CHUNK,
            i if i == total - 1 => LAST_CHUNKS,
            _ => CONTENT_CHUNK,
        };
        Some((
            Ok(Frame::data(Bytes::from_static(text.as_bytes()))),
            (i + 1, interval),
        ))
    });
    Either::Right(StreamBody::new(Box::pin(frames)))
}

async fn answer(
    request: Request<Incoming>,
    options: StubOptions,
) -> Result<Response<StubBody>, Infallible> {
    let body = match request.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            let mut response = Response::new(Either::Left(Full::new(Bytes::new())));
            *response.status_mut() = StatusCode::BAD_REQUEST;
            return Ok(response);
        }
    };
    let response = if wants_stream(&body) {
        Response::builder()
            .header("content-type", "text/event-stream")
            .header("cache-control", "no-cache")
            .body(stream(options))
    } else {
        Response::builder()
            .header("content-type", "application/json")
            .body(Either::Left(Full::new(Bytes::from_static(
                COMPLETION.as_bytes(),
            ))))
    };
    Ok(response.unwrap_or_else(|_| Response::new(Either::Left(Full::new(Bytes::new())))))
}

/// Serves on `listen` until the process ends, printing the bound address on
/// the first line of standard output.
pub fn serve(listen: SocketAddr, options: StubOptions) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        println!("{}", listener.local_addr()?);
        loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            tokio::spawn(async move {
                let service = service_fn(move |request| answer(request, options));
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}
