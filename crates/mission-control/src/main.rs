//! The `mission-control` binary: parses the command line and hands over to the libraries.

mod agent;
mod cli;

/// mimalloc: the server allocates many small, short-lived buffers per request, where
/// glibc's allocator spends a measurable share of CPU (see docs/benchmarks.md). Built
/// without transparent huge pages (`no_thp`): with them every touched 2 MiB of an arena
/// is resident, which alone put the agent client over its 10 MB budget.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> anyhow::Result<ExitCode> {
    let cli = cli::Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,sqlx=warn".into());
    let runtime = cli.runtime();
    // The server's log lines go through a buffer drained by a background thread, so a busy
    // server never waits on its terminal. The agent client logs a line a minute at most:
    // it writes to stderr directly and spares its host that buffer (megabytes, allocated up
    // front) and thread.
    let _flush_on_exit = match runtime {
        cli::Runtime::CurrentThread => {
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .init();
            None
        }
        cli::Runtime::MultiThread => {
            let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(writer)
                .init();
            Some(guard)
        }
    };
    match runtime {
        cli::Runtime::CurrentThread => tokio::runtime::Builder::new_current_thread(),
        cli::Runtime::MultiThread => tokio::runtime::Builder::new_multi_thread(),
    }
    .enable_all()
    .build()?
    .block_on(cli::run(cli))
}
