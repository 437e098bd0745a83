//! Helpers for tests that provision agents onto a gateway: a server with short gateway
//! timeouts and retry delays, a managed gateway with a board, and reads of provisioning
//! jobs and workspace credentials.

use std::time::Duration;

use mc_gateway::BackoffPolicy;
use mc_gateway::testing::FakeGateway;
use mc_server::config::ServerConfig;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{
    Auth, EVENTUALLY_DEADLINE, TestApp, eventually_within, expect_json, expect_success, id_of,
    unique,
};

/// The workspace root of every managed gateway in these tests.
pub const WORKSPACE_ROOT: &str = "/srv/openclaw/workspaces";

/// Short timeouts and retry delays, so failures and retries happen within a test.
pub fn quick_gateway_settings(config: &mut ServerConfig) {
    config.gateway_connection.request_timeout = Duration::from_millis(700);
    config.gateway_connection.handshake_timeout = Duration::from_millis(700);
    config.gateway_connection.backoff = BackoffPolicy {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(200),
        jitter: 0.1,
    };
    config.provision_backoff = BackoffPolicy {
        initial: Duration::from_millis(200),
        max: Duration::from_millis(600),
        jitter: 0.1,
    };
}

/// A server with [`quick_gateway_settings`].
pub async fn spawn_provisioning_app() -> TestApp {
    TestApp::spawn_with(quick_gateway_settings).await
}

/// A server for real OpenClaw gateways: the production request timeouts (a real gateway on a
/// busy machine takes over a second per file write; a timed-out write still lands and makes
/// the retry race the gateway's config reload) with quick job retries.
pub async fn spawn_real_gateway_app() -> TestApp {
    TestApp::spawn_with(|config| {
        config.provision_backoff = BackoffPolicy {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(3),
            jitter: 0.1,
        };
    })
    .await
}

/// A managed gateway pointing at `url` with `token`, and a board on it: `(gateway, board)`.
pub async fn managed_board(app: &TestApp, url: &str, token: Option<&str>) -> (String, String) {
    managed_board_at(app, url, token, WORKSPACE_ROOT).await
}

/// Like [`managed_board`], with the gateway's workspace root.
pub async fn managed_board_at(
    app: &TestApp,
    url: &str,
    token: Option<&str>,
    workspace_root: &str,
) -> (String, String) {
    let gateway = expect_success(
        app.create_gateway(&json!({
            "name": unique("gateway"),
            "url": url,
            "token": token,
            "workspace_root": workspace_root,
        }))
        .await,
    )
    .await;
    let gateway_id = id_of(&gateway);
    let board_id = app.board_on(&gateway_id).await;
    (gateway_id, board_id)
}

/// A managed board on `fake`, with the fake's token.
pub async fn board_on_fake(app: &TestApp, fake: &FakeGateway) -> (String, String) {
    managed_board(app, &fake.url(), fake.token().as_deref()).await
}

/// `GET /api/v1/gateways/{id}/status`.
pub async fn gateway_status(app: &TestApp, gateway_id: &str) -> Value {
    expect_json(
        app.send(
            Method::GET,
            &format!("/api/v1/gateways/{gateway_id}/status"),
            Auth::Admin,
            None,
        )
        .await,
        StatusCode::OK,
    )
    .await
}

/// `GET /api/v1/agents/{id}/provision-jobs`.
pub async fn provision_jobs(app: &TestApp, agent_id: &str) -> Vec<Value> {
    let jobs = expect_json(
        app.send(
            Method::GET,
            &format!("/api/v1/agents/{agent_id}/provision-jobs"),
            Auth::Admin,
            None,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    jobs.as_array().expect("a list of jobs").clone()
}

/// Waits until the agent has `count` jobs and none is pending; returns them.
pub async fn settled_jobs(app: &TestApp, agent_id: &str, count: usize) -> Vec<Value> {
    settled_jobs_within(app, agent_id, count, EVENTUALLY_DEADLINE).await
}

/// Like [`settled_jobs`], waiting up to `limit`.
pub async fn settled_jobs_within(
    app: &TestApp,
    agent_id: &str,
    count: usize,
    limit: Duration,
) -> Vec<Value> {
    eventually_within("the provisioning jobs to settle", limit, || async {
        let jobs = provision_jobs(app, agent_id).await;
        jobs.len() == count && jobs.iter().all(|j| j["state"] != "pending")
    })
    .await;
    provision_jobs(app, agent_id).await
}

/// Creates an agent named `name` on `board_id`; returns its id.
pub async fn create_agent_named(app: &TestApp, board_id: &str, name: &str) -> String {
    let agent = expect_success(
        app.create_agent(&json!({"name": name, "board_id": board_id}))
            .await,
    )
    .await;
    id_of(&agent)
}

/// The value of ``- `KEY=value` `` lines in a workspace file.
pub fn credential(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let inner = line.trim().strip_prefix("- `")?.strip_suffix('`')?;
        let (k, v) = inner.split_once('=')?;
        (k == key).then(|| v.to_owned())
    })
}

/// The names of the files sent with `agents.files.set`, in order.
pub fn files_set(fake: &FakeGateway) -> Vec<String> {
    fake.calls_to("agents.files.set")
        .iter()
        .map(|p| p["name"].as_str().unwrap_or_default().to_owned())
        .collect()
}
