//! `mc-bench`: load benchmark for Mission Control.
//!
//! Starts the real `mission-control serve` binary on 127.0.0.1 — on SQLite in a temporary
//! data directory, or as one or more replicas sharing a PostgreSQL (a throwaway server the
//! bench starts from the system's packages and removes afterwards, or `--database-url`) —
//! enrolls agents through the HTTP API, then measures, at each agent count:
//!
//! - a `GET /healthz` baseline and `POST /api/v1/agent/heartbeat` rotating over all agents'
//!   tokens, over N keep-alive connections split over the replicas (issue 2; issue 4's
//!   ≥ 20,000 heartbeats/s per replica on PostgreSQL);
//! - `GET /api/v1/agents?limit=200` alone and under the heartbeat load (issue 4: p99 < 20 ms);
//! - at the largest count, the time from an agent's deadline to its `agent.offline` event
//!   at an SSE client on the last replica, for a cohort that goes silent while the others
//!   keep heartbeating (issue 4: p99 < 1 s, one event per agent);
//! - every server's resident memory after seeding, after the heartbeats and at its peak
//!   (issue 4: < 200 MB), and the CPU of every process involved (servers, PostgreSQL, the
//!   load generator, everything else) over each measured window.
//!
//! ```sh
//! cargo build --release -p mission-control -p mc-bench
//! cargo run --release -p mc-bench --bin mc-bench -- --agents 10000
//! cargo run --release -p mc-bench --bin mc-bench -- --agent-steps 1000,10000,100000 --markdown
//! cargo run --release -p mc-bench --bin mc-bench -- --backend postgres --replicas 2 --agents 100000 --markdown
//! ```
#![expect(clippy::print_stdout, reason = "a benchmark reports on stdout")]

mod deadline;
mod http;
mod load;
mod pg;
mod procfs;
mod report;
mod seed;
mod server;
mod sse;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use rand::Rng as _;

use crate::deadline::DeadlineConfig;
use crate::load::{CpuProbe, Endpoint, PhaseConfig, Target, Workload};
use crate::pg::Database;
use crate::report::{Backend, Report, StepReport};
use crate::seed::{SeedMode, Seeder};
use crate::server::{Server, ServerConfig};

/// Load benchmark for Mission Control: heartbeats, agent listings, memory and offline-event latency, on SQLite or PostgreSQL with one or more replicas.
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

    /// Keep the temporary data directories and logs instead of deleting them (and, with
    /// --database-url, the bench's schema, to query it afterwards; a throwaway PostgreSQL
    /// always goes, its log is copied next to the servers' logs).
    #[arg(long)]
    keep_data: bool,

    /// Exit with status 2 when a target from the issue is missed.
    #[arg(long)]
    check: bool,

    /// Database of the servers: `sqlite` (each server's data dir) or `postgres` (one
    /// PostgreSQL for every replica: a throwaway server started from the system's packages,
    /// see scripts/ensure-postgres, unless --database-url names one).
    #[arg(long, value_enum, default_value_t = Backend::Sqlite)]
    backend: Backend,

    /// `mission-control serve` processes sharing the database (PostgreSQL only), each with
    /// its own data dir and the same --admin-token; every workload's connections are split
    /// evenly over them and figures are reported per replica and in total.
    #[arg(long, default_value_t = 1)]
    replicas: usize,

    /// Use this existing PostgreSQL database (postgres://USER:PASS@HOST/DB) instead of a
    /// throwaway server; the bench works in a new schema there and drops it at the end.
    /// Implies --backend postgres.
    #[arg(long)]
    database_url: Option<String>,

    /// Server setting of the throwaway PostgreSQL, NAME=VALUE (repeatable), on top of the
    /// durable defaults fsync=on, synchronous_commit=on, full_page_writes=on; e.g.
    /// `--pg-setting log_min_duration_statement=20` to log slow statements (the log is
    /// kept with --keep-data).
    #[arg(long = "pg-setting", value_parser = pg::parse_setting)]
    pg_settings: Vec<(String, String)>,

    /// Start replicas 2..N only once the agents are seeded and refreshed through replica 1
    /// (each loads every agent from the database as it starts) instead of running them all
    /// along, which makes the other replicas follow the seeding's creates and the refresh's
    /// burst of transitions through the event feed. This measures a replica that starts on
    /// a full fleet. Needs a single agent count (no --agent-steps).
    #[arg(long)]
    late_replicas: bool,

    /// Connections for `GET /api/v1/agents?limit=200` (admin bearer token), measured at
    /// each step alone and then alongside the heartbeat load; 0 skips both phases.
    #[arg(long, default_value_t = 4)]
    list_connections: usize,

    /// Agents in the offline-deadline phase's cohort (run once, at the largest agent
    /// count, after the other phases), at most a tenth of the agents; 0 skips the phase.
    #[arg(long, default_value_t = 2000)]
    deadline_cohort: usize,

    /// The cohort's `heartbeat_config.missing_tolerance` (and `interval_seconds`), seconds;
    /// 1 is the smallest the server accepts.
    #[arg(long, default_value_t = 1)]
    deadline_tolerance: u32,

    /// Seconds over which the cohort's single heartbeats are spread.
    #[arg(long, default_value_t = 5.0)]
    deadline_spread: f64,

    /// Seconds past the last cohort deadline to wait for offline events before counting
    /// the rest as missing.
    #[arg(long, default_value_t = 10.0)]
    deadline_grace: f64,

    /// Connections the cohort's requests use (split over the replicas like the others).
    #[arg(long, default_value_t = 4)]
    deadline_connections: usize,
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
    let mut s = "cargo run --release -p mc-bench --bin mc-bench --".to_owned();
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

/// The database the options select, or why they do not fit together.
fn backend_of(args: &Args) -> Result<Backend> {
    let backend = if args.database_url.is_some() {
        Backend::Postgres
    } else {
        args.backend
    };
    if args.replicas == 0 {
        bail!("--replicas must be at least 1");
    }
    if args.replicas > 1 && backend != Backend::Postgres {
        bail!("--replicas above 1 needs --backend postgres: replicas share one PostgreSQL");
    }
    if !args.pg_settings.is_empty() && (backend != Backend::Postgres || args.database_url.is_some())
    {
        bail!(
            "--pg-setting applies only to the throwaway PostgreSQL (--backend postgres without --database-url)"
        );
    }
    if args.deadline_tolerance == 0 {
        bail!("--deadline-tolerance must be at least 1 second (the server's minimum)");
    }
    if args.late_replicas && args.agent_steps.len() > 1 {
        bail!("--late-replicas needs a single agent count (--agents), not --agent-steps");
    }
    Ok(backend)
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
    let backend = backend_of(&args)?;
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
    let database = match (backend, &args.database_url) {
        (Backend::Sqlite, _) => None,
        (Backend::Postgres, Some(url)) => Some(Database::existing(url).await?),
        (Backend::Postgres, None) => {
            eprintln!("starting a throwaway PostgreSQL ...");
            Some(Database::throwaway(&args.pg_settings).await?)
        }
    };
    if let Some(db) = &database {
        eprintln!("database: {}", db.describe());
    }
    let keep = args.keep_data;
    let result = run_in(
        args,
        threads,
        tmp.path(),
        &steps,
        phase,
        seed_timeout,
        server_bin,
        backend,
        database.as_ref(),
    )
    .await;
    if let Some(db) = database {
        db.keep_log(&tmp.path().join("postgres.log"));
        if keep && let Some(url) = db.kept_url() {
            eprintln!("kept the bench's schema: {url}");
        } else {
            db.remove().await;
        }
    }
    if keep || result.is_err() {
        let kept = tmp.keep();
        eprintln!(
            "kept the servers' data dirs and logs in {}{}",
            kept.display(),
            if keep { "" } else { " (the run failed)" }
        );
    }
    result
}

/// How to start replica `r`: its own data dir and log under the run's directory, the
/// shared admin token and database.
struct ReplicaSpec<'a> {
    bin: &'a Path,
    tmp: &'a Path,
    admin_token: &'a str,
    database_url: Option<&'a str>,
    extra_args: &'a [String],
    startup_timeout: Duration,
    rust_log: Option<&'a str>,
}

impl ReplicaSpec<'_> {
    async fn start(&self, r: usize) -> Result<Server> {
        let data_dir = self.tmp.join(format!("data-{r}"));
        std::fs::create_dir_all(&data_dir)?;
        let log_path = self.tmp.join(format!("server-{r}.log"));
        eprintln!(
            "starting replica {r}: {}, {} ...",
            self.bin.display(),
            procfs::clock_and_load()
        );
        let server = Server::start(ServerConfig {
            bin: self.bin,
            data_dir: &data_dir,
            log_path: &log_path,
            admin_token: self.admin_token,
            database_url: self.database_url,
            extra_args: self.extra_args,
            startup_timeout: self.startup_timeout,
            rust_log: self.rust_log,
        })
        .await
        .with_context(|| format!("replica {r}"))?;
        eprintln!(
            "  pid {} listening on {} (log: {})",
            server.pid(),
            server.addr(),
            server.log_path().display()
        );
        Ok(server)
    }
}

/// The replicas, started one after the other (the first one up usually leads).
struct Replicas(Vec<Server>);

impl Replicas {
    fn endpoints(&self) -> Vec<Endpoint> {
        self.0
            .iter()
            .map(|s| Endpoint {
                addr: s.addr(),
                pid: s.pid(),
            })
            .collect()
    }

    async fn check_alive(&mut self) -> Result<()> {
        for (r, s) in self.0.iter_mut().enumerate() {
            s.check_alive()
                .await
                .with_context(|| format!("replica {}", r + 1))?;
        }
        Ok(())
    }

    fn memory(&self) -> Vec<Option<procfs::Memory>> {
        self.0.iter().map(|s| procfs::memory(s.pid())).collect()
    }

    async fn shutdown(self) -> u64 {
        let mut lines = 0;
        for s in self.0 {
            lines += s.shutdown().await;
        }
        lines
    }
}

/// The run proper, with server data and logs under `tmp`.
#[expect(
    clippy::too_many_arguments,
    reason = "one call site, all settings of the run"
)]
async fn run_in(
    args: Args,
    threads: usize,
    tmp: &Path,
    steps: &[usize],
    phase: PhaseConfig,
    seed_timeout: Duration,
    server_bin: PathBuf,
    backend: Backend,
    database: Option<&Database>,
) -> Result<bool> {
    let token = admin_token();
    let spec = ReplicaSpec {
        bin: &server_bin,
        tmp,
        admin_token: &token,
        database_url: database.map(Database::server_url),
        extra_args: &args.server_args,
        startup_timeout: secs("startup-timeout", args.startup_timeout)?,
        rust_log: args.server_rust_log.as_deref(),
    };
    let mut replicas = Replicas(Vec::new());
    let first = if args.late_replicas { 1 } else { args.replicas };
    for r in 1..=first {
        replicas.0.push(spec.start(r).await?);
    }

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
        backend,
        database: database.map_or_else(|| "SQLite".to_owned(), Database::describe),
        replicas: args.replicas,
        late_replicas: args.late_replicas,
        list_connections: args.list_connections,
        load_start: procfs::load_average(),
        load_end: None,
        mem_stages: procfs::Stages::default(),
        steps: Vec::new(),
        server_log_lines: None,
    };
    eprintln!("start: {}", procfs::clock_and_load());

    let deadline = (args.deadline_cohort > 0).then(|| DeadlineConfig {
        cohort: args.deadline_cohort,
        tolerance_seconds: args.deadline_tolerance,
        spread: Duration::from_secs_f64(args.deadline_spread.clamp(0.0, 3_600.0)),
        grace: Duration::from_secs_f64(args.deadline_grace.clamp(0.0, 3_600.0)),
        cohort_connections: args.deadline_connections.max(1),
        background_connections: phase.connections,
        warmup: phase.warmup,
        request_timeout: phase.request_timeout,
    });
    let first_data_dir = tmp.join("data-1");
    let mem_watch = procfs::MemWatch::start(
        replicas.0.iter().map(Server::pid).collect(),
        Duration::from_millis(100),
    );
    let plan = Plan {
        spec: &spec,
        replicas: args.replicas,
        mem: &mem_watch,
        admin_token: &token,
        data_dir: &first_data_dir,
        database,
        seed_timeout,
        rounds: args.rounds.max(1),
        list_connections: args.list_connections,
        deadline,
    };
    let outcome = drive(&mut replicas, &mut report, steps, &plan).await;
    // Collect a crash tail before the kill.
    let outcome = match outcome {
        Err(e) => match replicas.check_alive().await {
            Err(dead) => Err(e.context(format!("{dead:#}"))),
            Ok(()) => Err(e),
        },
        ok => ok,
    };
    report.mem_stages = mem_watch.stop();
    report.load_end = Some(procfs::load_average());
    report.server_log_lines = Some(replicas.shutdown().await);

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

/// What every step does besides the heartbeat rounds.
struct Plan<'a> {
    /// How to start a replica (the late ones, with --late-replicas).
    spec: &'a ReplicaSpec<'a>,
    /// Replicas wanted once seeded.
    replicas: usize,
    /// Samples the servers' memory, stage by stage.
    mem: &'a procfs::MemWatch,
    admin_token: &'a str,
    /// The first replica's data dir (the SQLite database).
    data_dir: &'a Path,
    database: Option<&'a Database>,
    seed_timeout: Duration,
    rounds: usize,
    list_connections: usize,
    deadline: Option<DeadlineConfig>,
}

/// Seeds and measures every step on the running replicas.
async fn drive(
    replicas: &mut Replicas,
    report: &mut Report,
    steps: &[usize],
    plan: &Plan<'_>,
) -> Result<()> {
    let mut endpoints = replicas.endpoints();
    let addrs = endpoints.iter().map(|e| e.addr).collect();
    let mut probe = CpuProbe {
        servers: endpoints.iter().map(|e| e.pid).collect(),
        pg: plan.database.map(Database::processes),
    };
    let phase = report.phase;
    let rounds = plan.rounds;
    let max_agents = steps.iter().copied().max().unwrap_or(1);
    let mut seeder = Seeder::setup(
        addrs,
        plan.admin_token,
        max_agents,
        phase.request_timeout,
        report.seed_mode,
    )
    .await
    .context("setting up the bench gateway, board and enrollment token")?;
    let stage = |name: String| plan.mem.stage(name);
    for &agents in steps {
        stage(format!("seeding to {agents} agents"));
        eprintln!(
            "seeding agents {}..{} ({} in flight), {} ...",
            seeder.tokens.len(),
            agents,
            report.seed_concurrency,
            procfs::clock_and_load()
        );
        let seed = seeder
            .seed_to(agents, report.seed_concurrency, plan.seed_timeout)
            .await?;
        eprintln!(
            "  {} agents seeded in {:.1} s ({:.0}/s, {} retries)",
            seed.to - seed.from,
            seed.elapsed.as_secs_f64(),
            seed.rate(),
            seed.retries
        );
        replicas.check_alive().await?;
        let mut mem_after_seed = replicas.memory();
        let refresh = if report.refresh {
            stage(format!("refresh ({agents} agents)"));
            let took = seeder
                .refresh_all(phase.connections, plan.seed_timeout)
                .await
                .context("refreshing the agents (one heartbeat each)")?;
            eprintln!(
                "  refreshed all {agents} agents (one heartbeat each) in {:.1} s",
                took.as_secs_f64()
            );
            // The transitions the refresh caused are written behind it; the phases start
            // once they are all recorded.
            settle_activity(&seeder).await;
            Some(took)
        } else {
            None
        };
        // Late replicas start after the refresh, on a fleet that is all healthy again.
        if replicas.0.len() < plan.replicas {
            stage(format!("late replicas start ({agents} agents)"));
            for r in replicas.0.len() + 1..=plan.replicas {
                let server = plan.spec.start(r).await?;
                plan.mem.watch(server.pid());
                replicas.0.push(server);
            }
            endpoints = replicas.endpoints();
            probe.servers = endpoints.iter().map(|e| e.pid).collect();
            seeder.set_addrs(endpoints.iter().map(|e| e.addr).collect());
            // Their memory once they have loaded every agent stands for "after seeding".
            for server in &replicas.0[mem_after_seed.len()..] {
                mem_after_seed.push(procfs::memory(server.pid()));
            }
        }
        let events_before = activity_total(&seeder).await;

        let healthz_target = Target::Healthz;
        let heartbeat_target = Target::Heartbeat(Arc::new(seeder.tokens.clone()));
        load::preflight(&endpoints, &healthz_target, phase.request_timeout).await?;
        load::preflight(&endpoints, &heartbeat_target, phase.request_timeout).await?;
        let mut healthz: Option<load::PhaseResult> = None;
        let mut heartbeat: Option<load::PhaseResult> = None;
        stage(format!("/healthz and heartbeat phases ({agents} agents)"));
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
                    "phase {}{of}: {agents} agents, {} connections, {:?} warm-up + {:?}, {} ...",
                    target.name(),
                    phase.connections,
                    phase.warmup,
                    phase.duration,
                    procfs::clock_and_load()
                );
                let r = load::run_phase(
                    &endpoints,
                    vec![Workload {
                        target: target.clone(),
                        connections: phase.connections,
                    }],
                    phase,
                    probe.clone(),
                )
                .await?
                .remove(0);
                replicas.check_alive().await?;
                say(&r);
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
        let mem_after_heartbeat = replicas.memory();

        let (list_alone, list_loaded) = if plan.list_connections > 0 {
            stage(format!("agent listing phases ({agents} agents)"));
            let list_target = Target::AgentsList(seeder.admin_auth().clone());
            load::preflight(&endpoints, &list_target, phase.request_timeout).await?;
            let list = Workload {
                target: list_target,
                connections: plan.list_connections,
            };
            eprintln!(
                "phase {} alone: {agents} agents, {} connections, {} ...",
                list.target.name(),
                list.connections,
                procfs::clock_and_load()
            );
            let alone = load::run_phase(&endpoints, vec![list.clone()], phase, probe.clone())
                .await?
                .remove(0);
            replicas.check_alive().await?;
            say(&alone);
            eprintln!(
                "phase {} under heartbeat load: {agents} agents, {} + {} connections, {} ...",
                list.target.name(),
                list.connections,
                phase.connections,
                procfs::clock_and_load()
            );
            let mut both = load::run_phase(
                &endpoints,
                vec![
                    list,
                    Workload {
                        target: heartbeat_target.clone(),
                        connections: phase.connections,
                    },
                ],
                phase,
                probe.clone(),
            )
            .await?;
            replicas.check_alive().await?;
            let hb = both.remove(1);
            let listed = both.remove(0);
            say(&listed);
            say(&hb);
            (Some(alone), Some((listed, hb)))
        } else {
            (None, None)
        };

        let deadline = match plan.deadline {
            Some(mut cfg) if agents == max_agents => {
                let cap = (agents / 10).max(1);
                if cfg.cohort > cap {
                    eprintln!(
                        "  deadline cohort {} capped at a tenth of the agents: {cap}",
                        cfg.cohort
                    );
                    cfg.cohort = cap;
                }
                stage(format!("deadline phase ({agents} agents)"));
                eprintln!("deadline phase: {} ...", procfs::clock_and_load());
                let d = deadline::run(&endpoints, &seeder, cfg, probe.clone()).await?;
                replicas.check_alive().await?;
                eprintln!(
                    "  deadline → SSE event: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {} on time, {} missing, {} duplicates, {} before the deadline",
                    deadline::DeadlineResult::ms(&d.tally.latency, 0.5),
                    deadline::DeadlineResult::ms(&d.tally.latency, 0.99),
                    d.tally.latency.max() as f64 / 1e3,
                    d.tally.on_time,
                    d.tally.missing,
                    d.tally.duplicates,
                    d.tally.early
                );
                Some(d)
            }
            _ => None,
        };

        report.steps.push(StepReport {
            agents,
            seed,
            mem_after_seed,
            mem_after_heartbeat,
            mem_end: replicas.memory(),
            data_bytes: match plan.database {
                Some(db) => db.data_bytes(),
                None => Some(procfs::dir_size(plan.data_dir)),
            },
            refresh,
            events_during_phases,
            healthz,
            heartbeat,
            list_alone,
            list_loaded,
            deadline,
        });
    }
    Ok(())
}

/// One line per phase on stderr, with a warning when other processes took CPU.
fn say(r: &load::PhaseResult) {
    eprintln!(
        "  {}: {:.0} req/s, p99 {:.2} ms, {} errors",
        r.target,
        r.rps(),
        r.ms(0.99),
        r.errors
    );
    warn_if_disturbed(r);
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

/// Waits until the activity log stops growing (two counts half a second apart agree), at
/// most a minute, and says how long that took.
async fn settle_activity(seeder: &Seeder) {
    let started = Instant::now();
    let mut last = activity_total(seeder).await;
    while started.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = activity_total(seeder).await;
        if now == last {
            break;
        }
        last = now;
    }
    eprintln!(
        "  activity log settled after {:.1} s ({} events)",
        started.elapsed().as_secs_f64(),
        last.map_or_else(|| "n/a".to_owned(), |n| n.to_string())
    );
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    fn parse(line: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("mc-bench").chain(line.iter().copied())).unwrap()
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn a_database_url_means_postgres_and_replicas_need_it() {
        assert_eq!(backend_of(&parse(&[])).unwrap(), Backend::Sqlite);
        let url = parse(&[
            "--database-url",
            "postgres://mc@127.0.0.1/mc",
            "--replicas",
            "2",
        ]);
        assert_eq!(backend_of(&url).unwrap(), Backend::Postgres);
        let error = backend_of(&parse(&["--replicas", "2"])).unwrap_err();
        assert!(error.to_string().contains("--backend postgres"), "{error}");
        assert!(backend_of(&parse(&["--backend", "postgres", "--replicas", "0"])).is_err());
    }

    #[test]
    fn postgres_settings_apply_only_to_the_throwaway_server() {
        let ok = parse(&[
            "--backend",
            "postgres",
            "--pg-setting",
            "log_min_duration_statement=20",
        ]);
        assert_eq!(
            ok.pg_settings,
            vec![("log_min_duration_statement".to_owned(), "20".to_owned())]
        );
        assert!(backend_of(&ok).is_ok());
        assert!(backend_of(&parse(&["--pg-setting", "fsync=off"])).is_err());
        let existing = parse(&[
            "--database-url",
            "postgres://mc@127.0.0.1/mc",
            "--pg-setting",
            "fsync=off",
        ]);
        assert!(backend_of(&existing).is_err());
        assert!(Args::try_parse_from(["mc-bench", "--pg-setting", "fsync"]).is_err());
    }

    #[test]
    fn the_deadline_tolerance_is_at_least_the_servers_minimum() {
        assert!(backend_of(&parse(&["--deadline-tolerance", "0"])).is_err());
        assert!(backend_of(&parse(&["--deadline-tolerance", "1"])).is_ok());
    }
}
