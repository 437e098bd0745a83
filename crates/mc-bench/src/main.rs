//! `mc-bench`: load benchmark for Mission Control.
//!
//! Starts the real `mission-control serve` binary on SQLite in a temporary data directory,
//! enrolls agents through the HTTP API, then drives, over N keep-alive connections,
//! a `GET /healthz` baseline followed by `POST /api/v1/agent/heartbeat` rotating over all
//! agents' tokens, and reports throughput, latency percentiles, server CPU and memory.
//!
//! ```sh
//! cargo build --release -p mission-control -p mc-bench
//! cargo run --release -p mc-bench -- --agents 10000
//! cargo run --release -p mc-bench -- --agent-steps 1000,10000,100000 --markdown
//! ```
#![expect(clippy::print_stdout, reason = "a benchmark reports on stdout")]

mod http;
mod load;
mod procfs;
mod report;
mod seed;
mod server;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use rand::Rng as _;

use crate::load::{PhaseConfig, Target};
use crate::report::{Report, StepReport};
use crate::seed::Seeder;
use crate::server::{Server, ServerConfig};

/// Load benchmark for Mission Control: heartbeat throughput against a /healthz baseline.
#[derive(Debug, Parser)]
#[command(name = "mc-bench", version)]
struct Args {
    /// Path of the `mission-control` binary [default: `mission-control` next to this executable].
    #[arg(long)]
    server_bin: Option<PathBuf>,

    /// Number of agents to enroll before measuring.
    #[arg(long, default_value_t = 10_000)]
    agents: usize,

    /// Scaling series: comma-separated agent counts, measured in ascending order on one server
    /// (agents are added between steps). Overrides --agents.
    #[arg(long, value_delimiter = ',')]
    agent_steps: Vec<usize>,

    /// Concurrent keep-alive connections, one request in flight each.
    #[arg(long, default_value_t = 64)]
    connections: usize,

    /// Measured seconds per phase.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,

    /// Unmeasured warm-up seconds at the start of each phase.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,

    /// Enrollment requests in flight while seeding.
    #[arg(long, default_value_t = 32)]
    seed_concurrency: usize,

    /// Give up seeding one step after this many seconds.
    #[arg(long, default_value_t = 900.0)]
    seed_timeout: f64,

    /// Tokio worker threads of the load generator [default: number of CPUs].
    #[arg(long)]
    threads: Option<usize>,

    /// Seconds to wait for the server's `listening on http://ADDR` line.
    #[arg(long, default_value_t = 60.0)]
    startup_timeout: f64,

    /// Per-request timeout in seconds (a timed-out request counts as an error).
    #[arg(long, default_value_t = 5.0)]
    request_timeout: f64,

    /// Extra argument for `mission-control serve` (repeatable), e.g. `--server-arg=--foo`.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,

    /// Also print a markdown block for docs/benchmarks.md.
    #[arg(long)]
    markdown: bool,

    /// Keep the temporary data directory and server log instead of deleting them.
    #[arg(long)]
    keep_data: bool,

    /// Exit with status 2 when a target from the issue is missed.
    #[arg(long)]
    check: bool,
}

fn secs(name: &str, v: f64) -> Result<Duration> {
    if !(0.0..=86_400.0).contains(&v) {
        bail!("--{name} must be between 0 and 86400 seconds, got {v}");
    }
    Ok(Duration::from_secs_f64(v))
}

/// The command line to reproduce this run, as a `cargo run` invocation.
fn command_line() -> String {
    let quote = |a: &str| {
        if !a.is_empty()
            && a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./=,:@+".contains(c))
        {
            a.to_owned()
        } else {
            format!("'{}'", a.replace('\'', r"'\''"))
        }
    };
    let args: Vec<String> = std::env::args().skip(1).map(|a| quote(&a)).collect();
    let mut s = "cargo run --release -p mc-bench --".to_owned();
    for a in args {
        s.push(' ');
        s.push_str(&a);
    }
    s
}

fn admin_token() -> String {
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(64)
        .map(char::from)
        .collect()
}

async fn run(args: Args, threads: usize) -> Result<bool> {
    let mut steps = if args.agent_steps.is_empty() {
        vec![args.agents]
    } else {
        args.agent_steps.clone()
    };
    steps.sort_unstable();
    steps.dedup();
    if steps.first() == Some(&0) {
        bail!("agent counts must be at least 1");
    }
    if args.connections == 0 {
        bail!("--connections must be at least 1");
    }
    let phase = PhaseConfig {
        connections: args.connections,
        warmup: secs("warmup", args.warmup)?,
        duration: secs("duration", args.duration)?,
        request_timeout: secs("request-timeout", args.request_timeout)?,
    };
    if phase.duration.is_zero() || phase.request_timeout.is_zero() {
        bail!("--duration and --request-timeout must be positive");
    }
    let seed_timeout = secs("seed-timeout", args.seed_timeout)?;
    let server_bin = match &args.server_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .context("cannot locate the bench executable")?
            .with_file_name("mission-control"),
    };

    let tmp = tempfile::Builder::new()
        .prefix("mc-bench-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let keep = args.keep_data;
    let result = run_in(
        args,
        threads,
        tmp.path(),
        &steps,
        phase,
        seed_timeout,
        server_bin,
    )
    .await;
    if keep || result.is_err() {
        let kept = tmp.keep();
        eprintln!(
            "kept the server's data dir and log in {}{}",
            kept.display(),
            if keep { "" } else { " (the run failed)" }
        );
    }
    result
}

/// The run proper, with server data and log under `tmp`.
async fn run_in(
    args: Args,
    threads: usize,
    tmp: &std::path::Path,
    steps: &[usize],
    phase: PhaseConfig,
    seed_timeout: Duration,
    server_bin: PathBuf,
) -> Result<bool> {
    let data_dir = tmp.join("data");
    std::fs::create_dir_all(&data_dir)?;
    let log_path = tmp.join("server.log");
    let token = admin_token();

    eprintln!("starting {} ...", server_bin.display());
    let mut server = Server::start(ServerConfig {
        bin: &server_bin,
        data_dir: &data_dir,
        log_path: &log_path,
        admin_token: &token,
        extra_args: &args.server_args,
        startup_timeout: secs("startup-timeout", args.startup_timeout)?,
    })
    .await?;
    eprintln!(
        "server pid {} listening on {} (log: {})",
        server.pid(),
        server.addr(),
        server.log_path().display()
    );

    let mut report = Report {
        facts: procfs::MachineFacts::collect(),
        command: command_line(),
        phase,
        loadgen_threads: threads,
        seed_concurrency: args.seed_concurrency.max(1),
        server_bin: server_bin.display().to_string(),
        steps: Vec::new(),
        server_log_lines: None,
    };

    let outcome = drive(
        &mut server,
        &mut report,
        steps,
        &token,
        &data_dir,
        seed_timeout,
    )
    .await;
    // Collect a crash tail before the kill.
    let outcome = match outcome {
        Err(e) => match server.check_alive().await {
            Err(dead) => Err(e.context(format!("{dead:#}"))),
            Ok(()) => Err(e),
        },
        ok => ok,
    };
    report.server_log_lines = Some(server.shutdown().await);

    if !report.steps.is_empty() {
        if outcome.is_err() {
            println!("(partial results: the run stopped early)");
        }
        println!("{}", report.text());
        if args.markdown {
            println!("----- markdown for docs/benchmarks.md -----\n");
            println!("{}", report.markdown());
        }
    }
    outcome?;
    Ok(report.verdicts().iter().all(|v| v.ok))
}

/// Seeds and measures every step on the running server.
async fn drive(
    server: &mut Server,
    report: &mut Report,
    steps: &[usize],
    admin_token: &str,
    data_dir: &std::path::Path,
    seed_timeout: Duration,
) -> Result<()> {
    let addr = server.addr();
    let phase = report.phase;
    let max_agents = steps.iter().copied().max().unwrap_or(1);
    let mut seeder = Seeder::setup(addr, admin_token, max_agents, phase.request_timeout)
        .await
        .context("setting up the bench gateway, board and enrollment token")?;
    for &agents in steps {
        eprintln!(
            "seeding agents {}..{} ({} in flight) ...",
            seeder.tokens.len(),
            agents,
            report.seed_concurrency
        );
        let seed = seeder
            .seed_to(agents, report.seed_concurrency, seed_timeout)
            .await?;
        eprintln!(
            "  {} agents enrolled in {:.1} s ({:.0}/s, {} retries)",
            seed.to - seed.from,
            seed.elapsed.as_secs_f64(),
            seed.rate(),
            seed.retries
        );
        server.check_alive().await?;
        let mem_after_seed = procfs::memory(server.pid());

        let healthz = Target::Healthz;
        load::preflight(addr, &healthz, phase.request_timeout).await?;
        eprintln!(
            "phase GET /healthz: {} connections, {:?} warm-up + {:?} ...",
            phase.connections, phase.warmup, phase.duration
        );
        let healthz = load::run_phase(addr, healthz, phase, server.pid()).await?;
        server.check_alive().await?;
        eprintln!(
            "  {:.0} req/s, p99 {:.2} ms",
            healthz.rps(),
            healthz.ms(0.99)
        );

        let heartbeat = Target::Heartbeat(Arc::new(seeder.tokens.clone()));
        load::preflight(addr, &heartbeat, phase.request_timeout).await?;
        eprintln!(
            "phase POST /api/v1/agent/heartbeat over {agents} agents: {} connections ...",
            phase.connections
        );
        let heartbeat = load::run_phase(addr, heartbeat, phase, server.pid()).await?;
        server.check_alive().await?;
        eprintln!(
            "  {:.0} req/s, p99 {:.2} ms, {} errors",
            heartbeat.rps(),
            heartbeat.ms(0.99),
            heartbeat.errors
        );
        report.steps.push(StepReport {
            agents,
            seed,
            mem_after_seed,
            mem_after_heartbeat: procfs::memory(server.pid()),
            data_bytes: procfs::dir_size(data_dir),
            healthz,
            heartbeat,
        });
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mc-bench: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let check = args.check;
    let result = rt.block_on(async move {
        tokio::select! {
            r = run(args, threads) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    rt.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) if check => {
            eprintln!("mc-bench: a target was missed (--check)");
            ExitCode::from(2)
        }
        Ok(false) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mc-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
