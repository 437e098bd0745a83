//! Subcommands and their options. Settings resolve in this order, later winning:
//! compiled defaults, the TOML file (`--config`), `MC_*` environment variables, flags.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use mc_domain::token::Secret;
use mc_server::config::{DEFAULT_MAX_BODY_BYTES, ServerConfig};
use mc_server::startup::Server;
use serde::Deserialize;

/// Mission Control: the control plane for fleets of OpenClaw agents.
#[derive(Debug, Parser)]
#[command(name = "mission-control", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (API and liveness engine).
    Serve(ServeArgs),
    /// Create or upgrade the database schema, then exit.
    Migrate(ServeArgs),
    /// Print a commented example configuration file.
    DefaultConfig,
    /// The agent-side heartbeat client: keep Mission Control informed from an agent host.
    Agent(crate::agent::AgentArgs),
}

/// The tokio runtime a command needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// One thread: the agent client, which must stay light on its host.
    CurrentThread,
    /// A worker per core: the server.
    MultiThread,
}

impl Cli {
    /// The runtime the chosen command runs on.
    pub fn runtime(&self) -> Runtime {
        match self.command {
            Command::Agent(_) => Runtime::CurrentThread,
            Command::Serve(_) | Command::Migrate(_) | Command::DefaultConfig => {
                Runtime::MultiThread
            }
        }
    }
}

/// Options of `serve` (and `migrate`); each is also an environment variable.
#[derive(Debug, Args)]
struct ServeArgs {
    /// TOML configuration file (keys as in `default-config`).
    #[arg(long, env = "MC_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "MC_BIND")]
    bind: Option<String>,
    /// Directory for the SQLite database and the generated admin token.
    #[arg(long, env = "MC_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Database URL: sqlite://PATH or postgres://USER:PASS@HOST/DB (default: sqlite://<data-dir>/mission-control.db).
    #[arg(long, env = "MC_DATABASE_URL")]
    database_url: Option<String>,
    /// Admin bearer token, at least 50 characters (default: generated into <data-dir>/admin-token).
    #[arg(long, env = "MC_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// The URL agents use to reach this server (default: derived from --bind).
    #[arg(long, env = "MC_BASE_URL")]
    base_url: Option<String>,
    /// Largest accepted request body in bytes.
    #[arg(long, env = "MC_MAX_BODY_BYTES")]
    max_body_bytes: Option<usize>,
    /// Longest delay, in milliseconds, before a heartbeat's last_seen_at is on disk.
    #[arg(long, env = "MC_WRITE_BEHIND_MS")]
    write_behind_ms: Option<u64>,
    /// Directory of workspace templates (AGENTS.md.j2, ..., credentials.md.j2) that replace the compiled-in ones by name; checked at start.
    #[arg(long, env = "MC_TEMPLATES_DIR")]
    templates_dir: Option<PathBuf>,
    /// Seconds an agent has after each wake to check in (heartbeat) before it is woken again; after 3 wakes it is offline.
    #[arg(long, env = "MC_CHECKIN_TIMEOUT_SECONDS")]
    checkin_timeout_seconds: Option<u64>,
    /// Seconds a provisioning job (create, update, delete) may keep retrying, from its first attempt, before it gives up.
    #[arg(long, env = "MC_PROVISION_TIMEOUT_SECONDS")]
    provision_timeout_seconds: Option<u64>,
}

/// The TOML file's keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    bind: Option<String>,
    data_dir: Option<PathBuf>,
    database_url: Option<String>,
    admin_token: Option<String>,
    base_url: Option<String>,
    max_body_bytes: Option<usize>,
    write_behind_ms: Option<u64>,
    templates_dir: Option<PathBuf>,
    checkin_timeout_seconds: Option<u64>,
    provision_timeout_seconds: Option<u64>,
}

const DEFAULT_BIND: &str = "127.0.0.1:8000";

const DEFAULT_CONFIG: &str = r#"# Mission Control configuration. Every key is optional; environment variables
# (MC_BIND, MC_DATA_DIR, ...) and command-line flags override what is set here.

# Address the server listens on.
bind = "127.0.0.1:8000"

# Directory for the embedded SQLite database and the generated admin token.
data_dir = "./data"

# Database URL. Default: sqlite://<data_dir>/mission-control.db
# database_url = "sqlite:///var/lib/mission-control/mission-control.db"
# database_url = "postgres://mission_control:secret@db.example.com/mission_control"

# Admin bearer token (at least 50 characters). Default: generated on first start
# and kept in <data_dir>/admin-token (mode 0600).
# admin_token = "..."

# The URL agents use to reach this server. Default: http://<bind>
# base_url = "https://mission-control.example.com"

# Largest accepted request body, in bytes (larger bodies get 413).
max_body_bytes = 1048576

# Longest delay, in milliseconds, before a heartbeat's last_seen_at reaches the database.
write_behind_ms = 500

# Directory of workspace templates replacing the compiled-in ones by file name
# (AGENTS.md.j2, SOUL.md.j2, IDENTITY.md.j2, USER.md.j2, MEMORY.md.j2, TOOLS.md.j2,
# HEARTBEAT.md.j2, BOOTSTRAP.md.j2, credentials.md.j2). Checked at start: a template that
# does not parse or names an unknown variable stops the server with its file name.
# templates_dir = "/etc/mission-control/templates"
# Seconds an agent has after each wake to check in (heartbeat). Unanswered, it is
# woken again, 3 wakes in all; then it is offline with last_provision_error saying why.
checkin_timeout_seconds = 30

# Seconds a provisioning job (create, update, delete) may keep retrying a gateway that
# fails, counted from its first attempt, before it gives up and records why.
provision_timeout_seconds = 300
"#;

/// The resolved settings of `serve`.
struct Resolved {
    bind: String,
    config: ServerConfig,
}

fn resolve(args: ServeArgs) -> anyhow::Result<Resolved> {
    let file = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading config file {}", path.display()))?;
            toml::from_str::<FileConfig>(&text)
                .with_context(|| format!("parsing config file {}", path.display()))?
        }
        None => FileConfig::default(),
    };
    let bind = args
        .bind
        .or(file.bind)
        .unwrap_or_else(|| DEFAULT_BIND.to_owned());
    let data_dir = args
        .data_dir
        .or(file.data_dir)
        .unwrap_or_else(|| PathBuf::from("./data"));
    let mut config = ServerConfig::for_data_dir(data_dir);
    config.database_url = args.database_url.or(file.database_url);
    config.admin_token = args.admin_token.or(file.admin_token).map(Secret::new);
    config.base_url = args.base_url.or(file.base_url);
    config.max_body_bytes = args
        .max_body_bytes
        .or(file.max_body_bytes)
        .unwrap_or(DEFAULT_MAX_BODY_BYTES);
    anyhow::ensure!(
        config.max_body_bytes >= 1024,
        "max_body_bytes must be at least 1024"
    );
    if let Some(ms) = args.write_behind_ms.or(file.write_behind_ms) {
        anyhow::ensure!(
            (10..=10_000).contains(&ms),
            "write_behind_ms must be between 10 and 10000"
        );
        config.write_behind_interval = Duration::from_millis(ms);
    }
    config.templates_dir = args.templates_dir.or(file.templates_dir);
    if let Some(seconds) = args
        .checkin_timeout_seconds
        .or(file.checkin_timeout_seconds)
    {
        anyhow::ensure!(
            (1..=86_400).contains(&seconds),
            "checkin_timeout_seconds must be between 1 and 86400"
        );
        config.lifecycle.checkin_timeout = Duration::from_secs(seconds);
    }
    if let Some(seconds) = args
        .provision_timeout_seconds
        .or(file.provision_timeout_seconds)
    {
        anyhow::ensure!(
            (1..=604_800).contains(&seconds),
            "provision_timeout_seconds must be between 1 and 604800"
        );
        config.lifecycle.job_timeout = Duration::from_secs(seconds);
    }
    if config.base_url.is_none() {
        config.base_url = Some(format!("http://{bind}"));
    }
    Ok(Resolved { bind, config })
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
    tracing::info!("shutdown requested; draining requests");
}

/// Runs a parsed command line; the exit code is the agent client's (see its module), or
/// success for the other commands, whose failures are errors.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Agent(args) => Ok(crate::agent::run(args).await),
        Command::Serve(args) => {
            let Resolved { bind, mut config } = resolve(args)?;
            let listener = tokio::net::TcpListener::bind(&bind)
                .await
                .with_context(|| format!("binding {bind}"))?;
            if bind.ends_with(":0") {
                config.base_url = Some(format!("http://{}", listener.local_addr()?));
            }
            let server = Server::build(config).await?;
            server.serve(listener, shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate(args) => {
            let Resolved { config, .. } = resolve(args)?;
            std::fs::create_dir_all(&config.data_dir)?;
            let url = config.effective_database_url();
            mc_store::migrate(&url)
                .await
                .context("running migrations")?;
            tracing::info!("database is up to date");
            Ok(ExitCode::SUCCESS)
        }
        Command::DefaultConfig => {
            use std::io::Write as _;
            std::io::stdout().write_all(DEFAULT_CONFIG.as_bytes())?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn the_default_config_parses_and_matches_the_defaults() {
        let file: FileConfig = toml::from_str(DEFAULT_CONFIG).unwrap();
        assert_eq!(file.bind.as_deref(), Some(DEFAULT_BIND));
        assert_eq!(file.max_body_bytes, Some(DEFAULT_MAX_BODY_BYTES));
    }
}
