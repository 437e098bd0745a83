//! Measures what `mission-control agent run` costs its host: resident memory and CPU time
//! while it heartbeats a local release server every second.
//!
//! ```sh
//! cargo build --release -p mission-control
//! cargo run --release -p mc-client --example agent_overhead -- target/release/mission-control 120
//! ```
//!
//! Starts `mission-control serve` on a free loopback port with a temporary data directory,
//! creates a board and an agent with a 1 s heartbeat interval through the typed client,
//! runs the agent for the given seconds, then reads `/proc/<pid>/status` (VmRSS, VmHWM)
//! and `/proc/<pid>/stat` (utime + stime) of the agent, stops it with SIGTERM and checks
//! that it reported `offline`.
#![expect(clippy::print_stdout, reason = "a benchmark reports on stdout")]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mc_client::{AgentCreate, BoardCreate, Client, GatewayCreate, HeartbeatConfig, Secret};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Kills the child when dropped, so an early error leaves no process behind.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn status_field_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .ok_or_else(|| format!("{field} missing in /proc/{pid}/status"))?;
    Ok(line.trim().trim_end_matches("kB").trim().parse()?)
}

/// utime + stime in clock ticks (USER_HZ, 100 on Linux).
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after_name = &stat[stat.rfind(')').ok_or("malformed stat")? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    Ok(fields[11].parse::<u64>()? + fields[12].parse::<u64>()?)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let binary = args
        .next()
        .ok_or("usage: agent_overhead <path to mission-control> [seconds]")?;
    let seconds: u64 = args.next().map_or(Ok(120), |s| s.parse())?;

    let data_dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let base_url = format!("http://127.0.0.1:{port}");
    let admin = Secret::new(format!("mca_{}", "x".repeat(60)));
    let _server = Process(
        Command::new(&binary)
            .args([
                "serve",
                "--bind",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(data_dir.path())
            .env("MC_ADMIN_TOKEN", admin.expose())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()?,
    );
    let client = Client::new(&base_url, Duration::from_secs(5))?;
    let started = Instant::now();
    let gateway = loop {
        let gateway = GatewayCreate {
            name: "overhead".into(),
            url: String::new(),
        };
        match client.create_gateway(&admin, &gateway).await {
            Ok(gateway) => break gateway,
            Err(_) if started.elapsed() < Duration::from_secs(30) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(format!("the server did not come up: {e}").into()),
        }
    };
    let board = client
        .create_board(
            &admin,
            &BoardCreate {
                name: "Overhead".into(),
                slug: "overhead".into(),
                description: "agent overhead measurement".into(),
                gateway_id: gateway.id,
                max_agents: 10,
            },
        )
        .await?;
    let agent = client
        .create_agent(
            &admin,
            &AgentCreate {
                name: "overhead-agent".into(),
                board_id: board.id,
                heartbeat_config: Some(HeartbeatConfig {
                    interval_seconds: 1,
                    missing_tolerance: 120,
                }),
            },
        )
        .await?;
    let token = client.rotate_agent_token(&admin, agent.id).await?;

    let mut agent_process = Process(
        Command::new(&binary)
            .args(["agent", "run", "--base-url", &base_url])
            .env("MC_AGENT_TOKEN", token.expose())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let pid = agent_process.0.id();
    let mut peak_rss = 0;
    let run_started = Instant::now();
    while run_started.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        peak_rss = peak_rss.max(status_field_kib(pid, "VmRSS:")?);
    }
    let rss = status_field_kib(pid, "VmRSS:")?;
    let hwm = status_field_kib(pid, "VmHWM:")?;
    let anon = status_field_kib(pid, "RssAnon:")?;
    let file = status_field_kib(pid, "RssFile:")?;
    let ticks = cpu_ticks(pid)?;
    let wall = run_started.elapsed();
    let seen = client.get_agent(&admin, agent.id).await?;

    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    let exit = agent_process.0.wait()?;
    let after = client.get_agent(&admin, agent.id).await?;

    let cpu = Duration::from_millis(ticks * 10);
    println!(
        "agent run for {:.1} s, heartbeat interval 1 s",
        wall.as_secs_f64()
    );
    println!(
        "VmRSS at the end: {rss} KiB (RssAnon {anon} KiB, RssFile {file} KiB); highest sampled: {peak_rss} KiB; VmHWM: {hwm} KiB"
    );
    println!(
        "CPU (utime+stime): {:.2} s = {:.3} % of one core",
        cpu.as_secs_f64(),
        100.0 * cpu.as_secs_f64() / wall.as_secs_f64()
    );
    println!(
        "agent status while running: {}; after SIGTERM: {} ({exit})",
        seen.status, after.status
    );
    Ok(())
}
