//! The `mission-control` binary: parses the command line and hands over to the libraries.

mod agent;
mod cli;

/// mimalloc: the server allocates many small, short-lived buffers per request, where
/// glibc's allocator spends a measurable share of CPU (see docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> anyhow::Result<ExitCode> {
    let cli = cli::Cli::parse();
    // Log lines go through a buffer drained by a background thread, so a busy server
    // never waits on its terminal.
    let (writer, _flush_on_exit) = tracing_appender::non_blocking(std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .with_writer(writer)
        .init();
    let runtime = match cli.runtime() {
        cli::Runtime::CurrentThread => tokio::runtime::Builder::new_current_thread(),
        cli::Runtime::MultiThread => tokio::runtime::Builder::new_multi_thread(),
    }
    .enable_all()
    .build()?;
    runtime.block_on(cli::run(cli))
}
