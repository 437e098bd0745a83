//! `provision-bench`: how long Mission Control takes to provision agents onto one real
//! OpenClaw gateway of each generation.
//!
//! For every gateway version it starts that `openclaw` on 127.0.0.1 (installed by
//! `scripts/openclaw-gateway install`), starts the server in-process on a fresh SQLite data
//! directory, registers the gateway as managed, creates the agents through
//! `POST /api/v1/agents` at once, and waits until every agent's provisioning job has ended.
//! As each job ends it checks in on the agent's behalf (`POST /api/v1/agents/{id}/heartbeat`
//! as the admin): without a model provider a woken agent never heartbeats, and its re-wakes
//! would load the gateway while the others are still being provisioned.
//! It reports the wall time, the per-agent time from creation to a finished job, the job
//! attempts and the failures.
//!
//! ```sh
//! scripts/openclaw-gateway install
//! cargo run --release -p mc-bench --bin provision-bench -- --agents 100
//! ```
#![expect(clippy::print_stdout, reason = "a benchmark reports on stdout")]

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use clap::Parser;
use mc_domain::time::Timestamp;
use mc_gateway::testing::RealGateway;
use mc_server::config::ServerConfig;
use mc_server::startup::Server;
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// Time to provision agents onto real OpenClaw gateways.
#[derive(Debug, Parser)]
#[command(name = "provision-bench")]
struct Args {
    /// OpenClaw versions to measure, one gateway each.
    #[arg(long = "gateway-version", default_values_t = ["2026.4.2".to_owned(), "2026.9.6".to_owned()])]
    versions: Vec<String>,
    /// Agents to provision onto each gateway.
    #[arg(long, default_value_t = 100)]
    agents: usize,
    /// Give up on a gateway after this many seconds.
    #[arg(long, default_value_t = 1800)]
    timeout_seconds: u64,
    /// Copy each gateway's own log into this directory before it stops.
    #[arg(long)]
    gateway_log_dir: Option<std::path::PathBuf>,
}

/// What one gateway's run measured.
#[derive(Debug)]
struct Outcome {
    version: String,
    protocol: Option<u64>,
    agents: usize,
    create_requests: Duration,
    all_settled: Duration,
    done: usize,
    failed: Vec<String>,
    attempts: u64,
    per_agent: Vec<Duration>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let mut outcomes = Vec::new();
    for version in &args.versions {
        eprintln!(
            "provision-bench: openclaw@{version}, {} agents",
            args.agents
        );
        outcomes.push(
            run_one(
                version,
                args.agents,
                Duration::from_secs(args.timeout_seconds),
                args.gateway_log_dir.as_deref(),
            )
            .await?,
        );
    }
    print_report(&outcomes);
    Ok(())
}

/// An admin client for the in-process server.
struct Api {
    http: reqwest::Client,
    base: String,
    admin_token: String,
}

impl Api {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(&self.admin_token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .with_context(|| format!("{method} {path}: body"))?;
        ensure!(status.is_success(), "{method} {path}: {status} {body}");
        Ok(body)
    }
}

async fn run_one(
    version: &str,
    agents: usize,
    limit: Duration,
    log_dir: Option<&std::path::Path>,
) -> Result<Outcome> {
    let gateway = RealGateway::start(version).map_err(|e| anyhow::anyhow!("{e}"))?;
    let data_dir = tempfile::tempdir()?;
    let config = ServerConfig::for_data_dir(data_dir.path());
    let server = Server::build(config).await.context("building the server")?;
    let admin_token = server.admin_token().expose().to_owned();
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(async move {
        server
            .serve(listener, async move {
                let _ = stopped.await;
            })
            .await
    });
    let api = Api {
        http: reqwest::Client::builder().no_proxy().build()?,
        base,
        admin_token,
    };

    let gateway_read = api
        .send(
            reqwest::Method::POST,
            "/api/v1/gateways",
            Some(json!({
                "name": format!("openclaw {version}"),
                "url": gateway.url(),
                "token": gateway.token().expose(),
                "workspace_root": gateway.workspace_root().display().to_string(),
            })),
        )
        .await?;
    let gateway_id = gateway_read["id"]
        .as_str()
        .context("gateway id")?
        .to_owned();
    let protocol = wait_connected(&api, &gateway_id, Duration::from_secs(120)).await?;
    let board = api
        .send(
            reqwest::Method::POST,
            "/api/v1/boards",
            Some(json!({"name": "bench", "slug": "bench", "description": "provisioning benchmark", "gateway_id": gateway_id})),
        )
        .await?;
    let board_id = board["id"].as_str().context("board id")?.to_owned();

    let started = Instant::now();
    let creates = (0..agents).map(|n| {
        let body = json!({"name": format!("bench-agent-{n:04}"), "board_id": board_id});
        let api = &api;
        async move {
            api.send(reqwest::Method::POST, "/api/v1/agents", Some(body))
                .await
        }
    });
    let created = futures::future::try_join_all(creates).await?;
    let create_requests = started.elapsed();
    let ids: Vec<String> = created
        .iter()
        .map(|agent| agent["id"].as_str().map(str::to_owned).context("agent id"))
        .collect::<Result<_>>()?;

    let jobs = wait_settled(&api, &ids, started, limit).await?;
    let all_settled = started.elapsed();
    let mut outcome = Outcome {
        version: version.to_owned(),
        protocol,
        agents,
        create_requests,
        all_settled,
        done: 0,
        failed: Vec::new(),
        attempts: 0,
        per_agent: Vec::new(),
    };
    for job in &jobs {
        outcome.attempts += job["attempts"].as_u64().unwrap_or(0);
        if job["state"] == "done" {
            outcome.done += 1;
        } else {
            outcome
                .failed
                .push(job["last_error"].as_str().unwrap_or("?").to_owned());
        }
        outcome.per_agent.push(job_duration(job)?);
    }
    outcome.per_agent.sort();

    let _ = stop.send(());
    serving.await??;
    if let Some(dir) = log_dir {
        std::fs::create_dir_all(dir)?;
        let target = dir.join(format!("openclaw-{version}.log"));
        std::fs::copy(gateway.home().join("gateway.log"), &target)
            .with_context(|| format!("copying the gateway log to {}", target.display()))?;
    }
    drop(gateway);
    Ok(outcome)
}

/// Waits until the gateway status says connected; returns the negotiated protocol.
async fn wait_connected(api: &Api, gateway_id: &str, limit: Duration) -> Result<Option<u64>> {
    let started = Instant::now();
    loop {
        let status = api
            .send(
                reqwest::Method::GET,
                &format!("/api/v1/gateways/{gateway_id}/status"),
                None,
            )
            .await?;
        if status["connected"] == true {
            return Ok(status["protocol"].as_u64());
        }
        if started.elapsed() > limit {
            bail!("the gateway never connected: {status}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Polls every agent's newest provisioning job until none is pending; returns them.
async fn wait_settled(
    api: &Api,
    ids: &[String],
    started: Instant,
    limit: Duration,
) -> Result<Vec<Value>> {
    let mut settled: Vec<Option<Value>> = vec![None; ids.len()];
    let mut last_report = Instant::now();
    loop {
        for (slot, id) in settled.iter_mut().zip(ids) {
            if slot.is_some() {
                continue;
            }
            let jobs = api
                .send(
                    reqwest::Method::GET,
                    &format!("/api/v1/agents/{id}/provision-jobs"),
                    None,
                )
                .await?;
            let newest = jobs
                .as_array()
                .and_then(|items| items.iter().max_by_key(|job| job["id"].as_u64()))
                .cloned();
            if let Some(job) =
                newest.filter(|job| job["state"] != "pending" && job["state"] != "running")
            {
                // Without a model provider the woken agent never heartbeats; check in on
                // its behalf, as a running agent would, so that no re-wake loads the
                // gateway while the others are still being provisioned.
                api.send(
                    reqwest::Method::POST,
                    &format!("/api/v1/agents/{id}/heartbeat"),
                    Some(json!({"status": "healthy"})),
                )
                .await?;
                *slot = Some(job);
            }
        }
        let remaining = settled.iter().filter(|slot| slot.is_none()).count();
        if remaining == 0 {
            return Ok(settled.into_iter().flatten().collect());
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "provision-bench: {remaining} of {} still provisioning after {:.0} s",
                ids.len(),
                started.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
        if started.elapsed() > limit {
            bail!(
                "{remaining} agents still provisioning after {} s",
                limit.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// From the job's creation to its last update.
fn job_duration(job: &Value) -> Result<Duration> {
    let at = |field: &str| -> Result<Timestamp> {
        let text = job[field]
            .as_str()
            .with_context(|| format!("job {field}"))?;
        Timestamp::parse_rfc3339(text).with_context(|| format!("job {field}: {text}"))
    };
    let millis = at("updated_at")?.as_millis() - at("created_at")?.as_millis();
    Ok(Duration::from_millis(u64::try_from(millis).unwrap_or(0)))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn print_report(outcomes: &[Outcome]) {
    println!(
        "| Gateway | Protocol | Agents | Create requests | All provisioned | Agents/min | Per agent p50 | p90 | max | Attempts | Failed |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for o in outcomes {
        let minutes = o.all_settled.as_secs_f64() / 60.0;
        println!(
            "| openclaw@{} | {} | {} | {:.2} s | {:.1} s | {:.1} | {:.1} s | {:.1} s | {:.1} s | {} | {} |",
            o.version,
            o.protocol.map_or("?".to_owned(), |p| p.to_string()),
            o.agents,
            o.create_requests.as_secs_f64(),
            o.all_settled.as_secs_f64(),
            o.done as f64 / minutes,
            percentile(&o.per_agent, 50.0).as_secs_f64(),
            percentile(&o.per_agent, 90.0).as_secs_f64(),
            percentile(&o.per_agent, 100.0).as_secs_f64(),
            o.attempts,
            o.failed.len(),
        );
    }
    for o in outcomes {
        for error in o.failed.iter().take(5) {
            println!("\nopenclaw@{} failure: {error}", o.version);
        }
    }
}
