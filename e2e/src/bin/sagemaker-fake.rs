//! The SageMaker fake as a process, so that the operator (or anything using
//! the AWS SDK) can be pointed at it with `AWS_ENDPOINT_URL_SAGEMAKER`.
//!
//! ```text
//! sagemaker-fake --port 0 --throttle 0.3
//! export AWS_ENDPOINT_URL_SAGEMAKER=http://127.0.0.1:43127
//! ```
//!
//! The first line on stdout is that export line; `GET /_fake/counters` returns
//! the counters as JSON and `POST /_fake/knobs` (JSON `{"throttleFraction":
//! 0.1, "serverErrorFraction": 0, "lostResponseFraction": 0}`) changes faults.
//! Stops on SIGINT or SIGTERM.

use std::io::Write;

use aleph_e2e::sagemaker_fake::{FakeConfig, SageMakerFake};
use clap::Parser;

/// A stateful fake of the SageMaker API (AWS JSON 1.1).
#[derive(Debug, Parser)]
#[command(name = "sagemaker-fake", version)]
struct Args {
    /// The address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// The port; 0 picks a free one.
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// The region in ARNs.
    #[arg(long, default_value = "us-east-1")]
    region: String,
    /// Describes a training job answers InProgress before it finishes.
    #[arg(long, default_value_t = 2)]
    training_describes: u32,
    /// The least time a training job runs, in milliseconds.
    #[arg(long, default_value_t = 0)]
    training_min_millis: u64,
    /// Describes a stopping job answers Stopping before Stopped.
    #[arg(long, default_value_t = 1)]
    stopping_describes: u32,
    /// Describes an endpoint answers Creating before InService.
    #[arg(long, default_value_t = 2)]
    endpoint_creating_describes: u32,
    /// Describes an endpoint answers Updating before InService.
    #[arg(long, default_value_t = 2)]
    endpoint_updating_describes: u32,
    /// Describes an endpoint answers Deleting before it is gone.
    #[arg(long, default_value_t = 0)]
    endpoint_deleting_describes: u32,
    /// A Model whose image contains this makes its endpoint fail.
    #[arg(long, default_value = "fake-fail")]
    failure_marker: String,
    /// Fraction of calls answered ThrottlingException.
    #[arg(long, default_value_t = 0.0)]
    throttle: f64,
    /// Fraction of calls answered HTTP 500 before doing anything.
    #[arg(long, default_value_t = 0.0)]
    server_errors: f64,
    /// Fraction of mutating calls answered HTTP 500 after doing their work.
    #[arg(long, default_value_t = 0.0)]
    lost_responses: f64,
    /// Seed of the fault dice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let config = FakeConfig {
        host: args.host,
        port: args.port,
        region: args.region,
        training_describes: args.training_describes,
        training_min_millis: args.training_min_millis,
        stopping_describes: args.stopping_describes,
        endpoint_creating_describes: args.endpoint_creating_describes,
        endpoint_updating_describes: args.endpoint_updating_describes,
        endpoint_deleting_describes: args.endpoint_deleting_describes,
        failure_marker: args.failure_marker,
        throttle_fraction: args.throttle,
        server_error_fraction: args.server_errors,
        lost_response_fraction: args.lost_responses,
        seed: args.seed,
    };
    let fake = SageMakerFake::start(config).await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "export AWS_ENDPOINT_URL_SAGEMAKER={}",
            fake.endpoint_url()
        )?;
        out.flush()?;
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    let counters = fake.counters();
    fake.shutdown().await;
    eprintln!("{}", serde_json::to_string(&counters).unwrap_or_default());
    Ok(())
}
