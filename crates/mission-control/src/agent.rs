//! `mission-control agent`: the agent-side heartbeat client. `heartbeat` sends one
//! heartbeat and prints the agent's state; `run` heartbeats until SIGTERM or SIGINT,
//! then reports `offline`.
//!
//! Errors end here: each becomes one message on stderr and the exit code of
//! [`AgentError::exit_code`] (documented in the README).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use mc_client::agent::credentials::{self, CredentialOptions, CredentialsError};
use mc_client::agent::{
    Backoff, BeatError, BeatOutcome, EventLog, HealthSource, Heartbeater, LoopSettings,
    StatusCommand,
};
use mc_client::{AgentRead, Client, ClientError, Failure, HealthStatus, Secret};

/// Options of `mission-control agent`.
#[derive(Debug, Args)]
pub struct AgentArgs {
    #[command(subcommand)]
    command: AgentCommand,
}

#[derive(Debug, Subcommand)]
enum AgentCommand {
    /// Send one heartbeat and print the agent's state.
    Heartbeat(HeartbeatArgs),
    /// Heartbeat at the agent's configured interval until SIGTERM or SIGINT, then report offline.
    Run(RunArgs),
}

/// Where the agent's credentials come from (see the README for the order).
#[derive(Debug, Args)]
struct ConnectionArgs {
    /// The agent's workspace: credentials from its TOOLS.md, the saved token from
    /// .mission-control/agent-token.
    #[arg(long, env = "MC_AGENT_WORKSPACE", value_name = "DIR")]
    workspace: Option<PathBuf>,
    /// Mission Control's base URL, e.g. http://127.0.0.1:8000.
    #[arg(long, env = "MC_BASE_URL", value_name = "URL")]
    base_url: Option<String>,
    /// The agent's own token (X-Agent-Token).
    #[arg(long, env = "MC_AGENT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Where the agent's own token is kept after enrollment (default:
    /// <workspace>/.mission-control/agent-token).
    #[arg(long, env = "MC_AGENT_TOKEN_FILE", value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// A board's enrollment token (mce_...), used on first contact when there is no agent token.
    #[arg(long, env = "MC_ENROLL_TOKEN", hide_env_values = true)]
    enroll_token: Option<String>,
    /// The agent's name, for enrollment (default: AGENT_NAME from the workspace).
    #[arg(long, env = "MC_AGENT_NAME")]
    name: Option<String>,
    /// The board to enroll on (default: BOARD_ID from the workspace, else the token's board).
    #[arg(long, env = "MC_BOARD_ID", value_name = "UUID")]
    board_id: Option<String>,
    /// Seconds a request may take before it counts as failed.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300), value_name = "SECONDS")]
    timeout: u64,
}

/// How the agent's health is decided.
#[derive(Debug, Args)]
struct HealthArgs {
    /// A shell command run before each heartbeat: exit code 0 reports healthy, anything else degraded.
    #[arg(long, env = "MC_STATUS_COMMAND", value_name = "CMD")]
    status_command: Option<String>,
    /// Seconds the status command may run before the agent counts as degraded.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600), value_name = "SECONDS")]
    status_timeout: u64,
}

#[derive(Debug, Args)]
struct HeartbeatArgs {
    #[command(flatten)]
    connection: ConnectionArgs,
    #[command(flatten)]
    health: HealthArgs,
    /// Report this status instead of asking the status command.
    #[arg(long, value_enum, conflicts_with = "status_command")]
    status: Option<StatusArg>,
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    connection: ConnectionArgs,
    #[command(flatten)]
    health: HealthArgs,
    /// Longest wait, in seconds, between retries of failed heartbeats.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600), value_name = "SECONDS")]
    max_backoff: u64,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum StatusArg {
    Healthy,
    Degraded,
    Offline,
}

impl From<StatusArg> for HealthStatus {
    fn from(status: StatusArg) -> Self {
        match status {
            StatusArg::Healthy => Self::Healthy,
            StatusArg::Degraded => Self::Degraded,
            StatusArg::Offline => Self::Offline,
        }
    }
}

/// How long the final `offline` heartbeat may take at shutdown.
const OFFLINE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the agent command failed.
#[derive(Debug, thiserror::Error)]
enum AgentError {
    /// The credentials could not be resolved.
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    /// The client could not be set up (a bad base URL).
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A heartbeat failed for good.
    #[error(transparent)]
    Beat(#[from] BeatError),
    /// Signal handlers could not be installed.
    #[error("cannot listen for SIGTERM/SIGINT: {0}")]
    Signals(std::io::Error),
    /// The agent's state could not be printed.
    #[error("cannot write to stdout: {0}")]
    Output(std::io::Error),
}

impl AgentError {
    /// 2: configuration (missing credentials, bad URL); 3: credentials refused (401/403);
    /// 1: anything else (server unreachable, malformed answer, ...).
    fn exit_code(&self) -> u8 {
        match self {
            Self::Credentials(_) | Self::Client(_) => 2,
            Self::Beat(error) if error.failure() == Failure::CredentialsRefused => 3,
            Self::Beat(_) | Self::Signals(_) | Self::Output(_) => 1,
        }
    }
}

/// Runs `mission-control agent ...`; failures are printed here, once.
pub async fn run(args: AgentArgs) -> ExitCode {
    let outcome = match args.command {
        AgentCommand::Heartbeat(args) => heartbeat_once(args).await,
        AgentCommand::Run(args) => heartbeat_until_stopped(args).await,
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("mission-control agent: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

fn heartbeater(connection: ConnectionArgs) -> Result<Heartbeater, AgentError> {
    let resolved = credentials::resolve(CredentialOptions {
        base_url: connection.base_url,
        token: connection.token.map(Secret::new),
        workspace: connection.workspace,
        token_file: connection.token_file,
        enroll_token: connection.enroll_token.map(Secret::new),
        name: connection.name,
        board_id: connection.board_id,
    })?;
    let client = Client::new(&resolved.base_url, Duration::from_secs(connection.timeout))?;
    Ok(Heartbeater::new(client, resolved.credential))
}

fn health_source(health: HealthArgs) -> HealthSource {
    match health.status_command {
        Some(command) => HealthSource::Command(StatusCommand {
            command,
            timeout: Duration::from_secs(health.status_timeout),
        }),
        None => HealthSource::Fixed(HealthStatus::Healthy),
    }
}

async fn heartbeat_once(args: HeartbeatArgs) -> Result<(), AgentError> {
    let mut heartbeater = heartbeater(args.connection)?;
    let source = match args.status {
        Some(status) => HealthSource::Fixed(status.into()),
        None => health_source(args.health),
    };
    let report = source.report().await;
    if let Some(reason) = &report.reason {
        tracing::warn!(reported = %report.status, reason, "reporting degraded");
    }
    let outcome = heartbeater.beat(report.status).await?;
    print_agent(&outcome).map_err(AgentError::Output)
}

fn print_agent(outcome: &BeatOutcome) -> std::io::Result<()> {
    let AgentRead {
        id,
        name,
        status,
        last_seen_at,
        board_id,
        heartbeat_config,
        ..
    } = &outcome.agent;
    let mut out = std::io::stdout().lock();
    writeln!(out, "agent: {name} ({id})")?;
    if let Some(board_id) = board_id {
        writeln!(out, "board_id: {board_id}")?;
    }
    writeln!(out, "status: {status}")?;
    writeln!(
        out,
        "last_seen_at: {}",
        last_seen_at.as_deref().unwrap_or("never")
    )?;
    writeln!(
        out,
        "heartbeat: every {} s, offline after {} s of silence",
        heartbeat_config.interval_seconds, heartbeat_config.missing_tolerance
    )?;
    if let Some(token_file) = &outcome.enrolled {
        writeln!(
            out,
            "enrolled: the agent's own token is saved in {}",
            token_file.display()
        )?;
    }
    out.flush()
}

async fn heartbeat_until_stopped(args: RunArgs) -> Result<(), AgentError> {
    // Installed before the first heartbeat: a signal from then on is always answered
    // with a final `offline`.
    let shutdown = shutdown_signal().map_err(AgentError::Signals)?;
    let mut heartbeater = heartbeater(args.connection)?;
    let settings = LoopSettings {
        backoff: Backoff {
            max: Duration::from_secs(args.max_backoff),
            ..Backoff::default()
        },
        health: health_source(args.health),
        offline_timeout: OFFLINE_TIMEOUT,
    };
    let mut log = EventLog::default();
    let stopped = mc_client::agent::run(&mut heartbeater, &settings, shutdown, &mut |event| {
        log.record(event)
    })
    .await?;
    tracing::info!(offline_sent = stopped.offline_sent, "stopped");
    Ok(())
}

fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM received"),
            _ = interrupt.recv() => tracing::info!("SIGINT received"),
        }
    })
}
