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
use crate::seed::{SeedMode, Seeder};
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

    /// Rounds per agent count: each round runs the /healthz phase then the heartbeat phase;
    /// figures are merged over rounds (the report shows the per-round spread).
    #[arg(long, default_value_t = 1)]
    rounds: usize,

    /// Unmeasured warm-up seconds at the start of each phase.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,

    /// How agents are created: `enroll` = `POST /api/v1/agents/heartbeat` with an enrollment
    /// token (what real agents do); `admin` = `POST /api/v1/agents` + `POST /agents/{id}/token`.
    #[arg(long, value_enum, default_value_t = SeedMode::Enroll)]
    seed_mode: SeedMode,

    /// Skip the refresh pass: by default, right before each step's phases every agent sends
    /// one heartbeat with its own token, so that none is offline (silent past its 120 s
    /// tolerance after a long seeding) and the heartbeat phase measures steady state rather
    /// than offline→healthy transitions.
    #[arg(long)]
    no_refresh: bool,

    /// Seeding requests in flight.
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

    /// `RUST_LOG` for the server, e.g. `warn,mc_server::startup=info` (the bench needs the
    /// `listening on` line, logged at info by the server) [default: inherited].
    #[arg(long)]
    server_rust_log: Option<String>,

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
        rust_log: args.server_rust_log.as_deref(),
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
        seed_mode: args.seed_mode,
        rounds: args.rounds.max(1),
        refresh: !args.no_refresh,
        server_bin: server_bin.display().to_string(),
        server_built: std::fs::metadata(&server_bin)
            .and_then(|m| m.modified())
            .map(|t| {
                chrono::DateTime::<chrono::Utc>::from(t)
                    .format("%Y-%m-%d %H:%M UTC")
                    .to_string()
            })
            .unwrap_or_else(|_| "unknown".to_owned()),
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
        args.rounds.max(1),
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
    rounds: usize,
) -> Result<()> {
    let addr = server.addr();
    let phase = report.phase;
    let max_agents = steps.iter().copied().max().unwrap_or(1);
    let mut seeder = Seeder::setup(
        addr,
        admin_token,
        max_agents,
        phase.request_timeout,
        report.seed_mode,
    )
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
            "  {} agents seeded in {:.1} s ({:.0}/s, {} retries)",
            seed.to - seed.from,
            seed.elapsed.as_secs_f64(),
            seed.rate(),
            seed.retries
        );
        server.check_alive().await?;
        let mem_after_seed = procfs::memory(server.pid());
        let refresh = if report.refresh {
            let took = seeder
                .refresh_all(phase.connections, seed_timeout)
                .await
                .context("refreshing the agents (one heartbeat each)")?;
            eprintln!(
                "  refreshed all {agents} agents (one heartbeat each) in {:.1} s",
                took.as_secs_f64()
            );
            Some(took)
        } else {
            None
        };
        let events_before = activity_total(&seeder).await;

        let healthz_target = Target::Healthz;
        let heartbeat_target = Target::Heartbeat(Arc::new(seeder.tokens.clone()));
        load::preflight(addr, &healthz_target, phase.request_timeout).await?;
        load::preflight(addr, &heartbeat_target, phase.request_timeout).await?;
        let mut healthz: Option<load::PhaseResult> = None;
        let mut heartbeat: Option<load::PhaseResult> = None;
        // Rounds alternate the two phases so slow drifts of the machine hit both alike.
        for round in 1..=rounds {
            let of = if rounds > 1 {
                format!(" (round {round}/{rounds})")
            } else {
                String::new()
            };
            for (target, slot) in [
                (&healthz_target, &mut healthz),
                (&heartbeat_target, &mut heartbeat),
            ] {
                eprintln!(
                    "phase {}{of}: {agents} agents, {} connections, {:?} warm-up + {:?} ...",
                    target.name(),
                    phase.connections,
                    phase.warmup,
                    phase.duration
                );
                let r = load::run_phase(addr, target.clone(), phase, server.pid()).await?;
                server.check_alive().await?;
                eprintln!(
                    "  {:.0} req/s, p99 {:.2} ms, {} errors",
                    r.rps(),
                    r.ms(0.99),
                    r.errors
                );
                warn_if_disturbed(&r);
                match slot {
                    Some(acc) => acc.merge(r)?,
                    None => *slot = Some(r),
                }
            }
        }
        let (Some(healthz), Some(heartbeat)) = (healthz, heartbeat) else {
            bail!("no round was run");
        };
        let events_during_phases = match (events_before, activity_total(&seeder).await) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        };
        report.steps.push(StepReport {
            agents,
            seed,
            mem_after_seed,
            mem_after_heartbeat: procfs::memory(server.pid()),
            data_bytes: procfs::dir_size(data_dir),
            refresh,
            events_during_phases,
            healthz,
            heartbeat,
        });
    }
    Ok(())
}

/// The bench board's activity event count, `None` (with a warning) when unavailable.
async fn activity_total(seeder: &Seeder) -> Option<u64> {
    match seeder.activity_total().await {
        Ok(n) => Some(n),
        Err(e) => {
            eprintln!("  warning: cannot count activity events: {e:#}");
            None
        }
    }
}

/// Warns when other processes used a noticeable share of the CPU during a phase.
fn warn_if_disturbed(p: &load::PhaseResult) {
    if let Some(pct) = p.cpu_pct(p.other_cpu()).filter(|&pct| pct > 15.0) {
        eprintln!(
            "  warning: other processes used {pct:.0} % of a core during this phase; the figures are disturbed"
        );
    }
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
