//! `aleph-operator`: runs Aleph's controllers (`run`) or prints its CRDs (`crds`).

mod cli;
mod http;
mod run;
mod telemetry;

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // kube's TLS uses ring; the AWS SDK brings aws-lc-rs too, so choose one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = cli::Cli::parse();
    match cli.command {
        cli::Command::Crds(args) => match print_crds(args.dir.as_deref()) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("aleph-operator crds: {error}");
                std::process::ExitCode::FAILURE
            }
        },
        cli::Command::Run(args) => match run::run(*args).await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("aleph-operator: {error}");
                std::process::ExitCode::FAILURE
            }
        },
    }
}

/// Prints every CRD as one YAML stream, or writes one file per kind into `dir`.
fn print_crds(dir: Option<&std::path::Path>) -> Result<(), Box<dyn std::error::Error>> {
    for (file, crd) in aleph_crds::all_crds() {
        let yaml = aleph_crds::crd_yaml(&crd)?;
        match dir {
            Some(dir) => std::fs::write(dir.join(file), yaml)?,
            None => print!("{yaml}"),
        }
    }
    Ok(())
}
