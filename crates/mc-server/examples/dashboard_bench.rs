//! Times the fleet overview with many agents: `GET /` end to end against a real
//! in-process server (signed in, whole body read), and the page render alone
//! (`render_fleet`) on synthetic agents.
//!
//! ```sh
//! cargo run --release -p mc-server --example dashboard_bench -- 10000
//! ```
#![expect(clippy::print_stdout, reason = "a benchmark reports on stdout")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use mc_domain::Timestamp;
use mc_domain::agent::{Agent, AgentName, AgentStatus, HeartbeatConfig};
use mc_domain::board::{Board, BoardRules, Slug};
use mc_domain::gateway::{Gateway, GatewayUrl};
use mc_domain::ids::{AgentId, BoardId, GatewayId, OrganizationId};
use mc_server::config::ServerConfig;
use mc_server::dashboard::pages::Directory;
use mc_server::dashboard::pages::fleet::{FleetFilter, render_fleet};
use mc_server::liveness::AgentView;
use mc_server::startup::Server;
use serde_json::{Value, json};

const RUNS: usize = 30;

fn summary(label: &str, mut times: Vec<Duration>) {
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{label}: min {:.1} ms, median {:.1} ms, p90 {:.1} ms, max {:.1} ms ({} runs)",
        ms(times[0]),
        ms(times[times.len() / 2]),
        ms(times[times.len() * 9 / 10]),
        ms(times[times.len() - 1]),
        times.len()
    );
}

fn between<'a>(text: &'a str, prefix: &str, end: char) -> &'a str {
    let start = text.find(prefix).map_or(0, |i| i + prefix.len());
    let stop = text[start..].find(end).map_or(start, |i| start + i);
    &text[start..stop]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let agents: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(10_000);
    let dir = tempfile::tempdir()?;
    let server = Server::build(ServerConfig::for_data_dir(dir.path())).await?;
    let admin = server.admin_token().expose().to_owned();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(listener, async move {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let post = |path: &str, body: Value| {
        client
            .post(format!("{base}{path}"))
            .bearer_auth(&admin)
            .json(&body)
            .send()
    };
    let gateway: Value = post("/api/v1/gateways", json!({"name": "bench"}))
        .await?
        .json()
        .await?;
    let board: Value = post(
        "/api/v1/boards",
        json!({"name": "bench", "slug": "bench", "description": "benchmark", "gateway_id": gateway["id"]}),
    )
    .await?
    .json()
    .await?;
    let started = Instant::now();
    let created = futures::stream::iter(0..agents)
        .map(|i| {
            post(
                "/api/v1/agents",
                json!({"name": format!("agent-{i:06}"), "board_id": board["id"]}),
            )
        })
        .buffer_unordered(32)
        .filter(|r| std::future::ready(r.as_ref().is_ok_and(|r| r.status().is_success())))
        .count()
        .await;
    anyhow::ensure!(
        created == agents,
        "only {created} of {agents} agents were created"
    );
    println!(
        "seeded {agents} agents in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // Sign in like a browser.
    let form = client.get(format!("{base}/sign-in")).send().await?;
    let nonce = between(form.headers()["set-cookie"].to_str()?, "", ';').to_owned();
    let html = form.text().await?;
    let csrf = between(&html, "name=\"csrf_token\" value=\"", '"').to_owned();
    let signed = client
        .post(format!("{base}/sign-in"))
        .header("cookie", nonce)
        .form(&[("csrf_token", csrf.as_str()), ("token", admin.as_str())])
        .send()
        .await?;
    let session = signed
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("mc_session="))
        .map(|v| between(v, "", ';').to_owned())
        .ok_or_else(|| anyhow::anyhow!("signing in failed"))?;

    let mut page_times = Vec::new();
    let mut bytes = 0;
    for _ in 0..RUNS {
        let started = Instant::now();
        let page = client
            .get(format!("{base}/"))
            .header("cookie", &session)
            .send()
            .await?;
        anyhow::ensure!(
            page.status().is_success(),
            "GET / answered {}",
            page.status()
        );
        bytes = page.bytes().await?.len();
        page_times.push(started.elapsed());
    }
    println!("GET / with {agents} agents: {} KiB of HTML", bytes / 1024);
    summary("GET / end to end (handler, render, transfer)", page_times);
    let _ = stop.send(());
    serving.await??;

    let (views, directory) = synthetic(agents);
    let mut render_times = Vec::new();
    for _ in 0..RUNS {
        let started = Instant::now();
        let html = render_fleet(
            &views,
            &directory,
            &FleetFilter::default(),
            0,
            Timestamp::now(),
        )
        .into_string();
        render_times.push(started.elapsed());
        std::hint::black_box(html);
    }
    summary("render_fleet alone", render_times);
    Ok(())
}

/// `count` agents on one board, statuses mixed, as the overview receives them.
fn synthetic(count: usize) -> (Vec<AgentView>, Directory) {
    let now = Timestamp::now();
    let gateway = Gateway {
        id: GatewayId::new(),
        organization_id: OrganizationId::new(),
        name: "bench".into(),
        url: GatewayUrl::from_stored(String::new()),
        token: None,
        workspace_root: String::new(),
        allow_insecure_tls: false,
        disable_device_pairing: false,
        created_at: now,
        updated_at: now,
    };
    let board = Board {
        id: BoardId::new(),
        organization_id: gateway.organization_id,
        name: "bench".into(),
        slug: Slug::from_stored("bench".into()),
        description: String::new(),
        gateway_id: gateway.id,
        rules: BoardRules::default(),
        created_at: now,
        updated_at: now,
    };
    let views = (0..count)
        .map(|i| AgentView {
            profile: Arc::new(Agent {
                id: AgentId::new(),
                board_id: Some(board.id),
                gateway_id: gateway.id,
                name: AgentName::from_stored(format!("agent-{i:06}")),
                is_board_lead: false,
                is_mc_agent: true,
                gateway_agent_id: None,
                workspace_path: None,
                openclaw_session_id: None,
                heartbeat_config: HeartbeatConfig::default(),
                identity_profile: None,
                identity_template: None,
                soul_template: None,
                last_provision_error: None,
                last_seen_at: Some(now),
                reported_health: None,
                published_status: AgentStatus::Healthy,
                enrolled_via: None,
                own_token_used: true,
                created_at: now,
                updated_at: now,
            }),
            last_seen_at: Some(now),
            updated_at: now,
            status: AgentStatus::ALL[i % 4],
        })
        .collect();
    (views, Directory::new(vec![board], vec![gateway]))
}
