//! Provisioning onto real OpenClaw gateways: 2026.4.2 (protocol 3, credentials in TOOLS.md)
//! and 2026.9.6 (protocol 4, which refuses TOOLS.md: credentials in AGENTS.md), installed
//! by `scripts/openclaw-gateway install`. Runs when `MC_TEST_OPENCLAW=1` (as
//! `scripts/test` sets) and then FAILS if the gateway is not installed; without the variable
//! it returns at once, saying so on stderr.

use std::time::{Duration, Instant};

use mc_gateway::testing::RealGateway;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::gateway_fixtures::{
    create_agent_named, credential, managed_board_at, provision_jobs, spawn_real_gateway_app,
};
use crate::helpers::{Auth, TestApp, expect_json, expect_success, unique};

fn enabled(test: &str) -> bool {
    let on = std::env::var("MC_TEST_OPENCLAW").is_ok_and(|v| v == "1");
    if !on {
        eprintln!("{test}: NOT RUN — set MC_TEST_OPENCLAW=1 (scripts/test does)");
    }
    on
}

/// One real gateway at a time: a cold start is CPU-bound on a small machine.
static ONE_GATEWAY_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn an_agent_created_on_openclaw_2026_9_6_gets_its_files_and_credentials_in_agents_md() {
    if enabled("real-gateway provisioning on 2026.9.6") {
        provision_on("2026.9.6", "AGENTS.md").await;
    }
}

#[tokio::test]
async fn an_agent_created_on_openclaw_2026_4_2_gets_its_files_and_credentials_in_tools_md() {
    if enabled("real-gateway provisioning on 2026.4.2") {
        provision_on("2026.4.2", "TOOLS.md").await;
    }
}

/// Creates an agent on a fresh `openclaw@version` and checks its workspace on disk, with
/// the credentials in `credentials_file`.
async fn provision_on(version: &str, credentials_file: &str) {
    let _turn = ONE_GATEWAY_AT_A_TIME.lock().await;
    let gateway = RealGateway::start(version).unwrap_or_else(|e| panic!("{e}"));
    let app = spawn_real_gateway_app().await;
    let root = gateway.workspace_root();
    let (gateway_id, board_id) = managed_board_at(
        &app,
        &gateway.url(),
        Some(gateway.token().expose()),
        &root.display().to_string(),
    )
    .await;
    let id = create_agent_named(&app, &board_id, &unique("Worker")).await;

    // A cold gateway start takes up to a minute on a busy machine; transient failures
    // meanwhile are retried by the job itself.
    let job = settled_job(&app, &id, "create", &gateway).await;
    assert_eq!(job["state"], "done", "{job}\n{}", gateway.log_tail(40));
    let gateway_agent_id = format!("mc-{id}");
    assert!(
        on_gateway(&gateway, &gateway_agent_id),
        "in the gateway's config"
    );

    let read = app.agent(&id).await;
    // Without a model provider the woken agent cannot start; provisioning says so.
    if let Some(warning) = read["last_provision_error"].as_str() {
        assert!(warning.contains("could not start"), "{warning}");
    }
    let workspace = read["workspace_path"].as_str().expect("workspace_path");
    assert_eq!(workspace, format!("{}/workspace-mc-{id}", root.display()));
    assert_eq!(read["openclaw_session_id"], format!("agent:mc-{id}:main"));
    let credentials = std::fs::read_to_string(format!("{workspace}/{credentials_file}"))
        .unwrap_or_else(|e| panic!("{credentials_file} written into the workspace: {e}"));
    assert_eq!(
        credential(&credentials, "AGENT_ID").as_deref(),
        Some(id.as_str())
    );
    assert_eq!(
        credential(&credentials, "BASE_URL").as_deref(),
        Some(app.address.as_str())
    );
    let token = credential(&credentials, "AUTH_TOKEN").expect("AUTH_TOKEN");
    let agents_md = std::fs::read_to_string(format!("{workspace}/AGENTS.md")).expect("AGENTS.md");
    assert!(agents_md.contains("X-Agent-Token"), "{agents_md}");
    if credentials_file != "AGENTS.md" {
        assert!(agents_md.contains(credentials_file), "{agents_md}");
        assert_eq!(credential(&agents_md, "AUTH_TOKEN"), None);
    }
    expect_success(app.agent_heartbeat(&token, None).await).await;
    let identity =
        std::fs::read_to_string(format!("{workspace}/IDENTITY.md")).expect("IDENTITY.md written");
    assert!(identity.contains(&id), "{identity}");

    // A template sync rewrites the files and keeps the token it reads back.
    let synced = expect_json(
        app.send(
            Method::POST,
            &format!("/api/v1/gateways/{gateway_id}/templates/sync"),
            Auth::Admin,
            None,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let result = synced["agents"]
        .as_array()
        .and_then(|agents| agents.iter().find(|a| a["agent_id"] == id.as_str()))
        .unwrap_or_else(|| panic!("no result for the agent: {synced}"));
    assert_eq!(
        result["outcome"],
        "synced",
        "{synced}\n{}",
        gateway.log_tail(40)
    );
    assert_eq!(result["token_rotated"], false, "{synced}");
    let credentials = std::fs::read_to_string(format!("{workspace}/{credentials_file}"))
        .expect("the credentials file after the sync");
    assert_eq!(credential(&credentials, "AUTH_TOKEN"), Some(token.clone()));
    expect_success(app.agent_heartbeat(&token, None).await).await;

    // An update rewrites the workspace: the new name reaches IDENTITY.md.
    let renamed = unique("Renamed");
    expect_success(
        app.send(
            Method::PATCH,
            &format!("/api/v1/agents/{id}"),
            Auth::Admin,
            Some(&json!({"name": renamed})),
        )
        .await,
    )
    .await;
    let job = settled_job(&app, &id, "update", &gateway).await;
    assert_eq!(job["state"], "done", "{job}\n{}", gateway.log_tail(40));
    let identity = std::fs::read_to_string(format!("{workspace}/IDENTITY.md"))
        .expect("IDENTITY.md after the update");
    assert!(identity.contains(&renamed), "{identity}");

    // A delete removes it from the gateway, then from Mission Control.
    expect_success(
        app.send(
            Method::DELETE,
            &format!("/api/v1/agents/{id}"),
            Auth::Admin,
            None,
        )
        .await,
    )
    .await;
    let started = Instant::now();
    while app.get_agent(&id).await.status() != StatusCode::NOT_FOUND {
        assert!(
            started.elapsed() < JOB_LIMIT,
            "not deleted in time: {:?}\n{}",
            provision_jobs(&app, &id).await,
            gateway.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        !on_gateway(&gateway, &gateway_agent_id),
        "gone from the gateway's config"
    );
}

/// How long one provisioning job may take on a real gateway on a busy machine.
const JOB_LIMIT: Duration = Duration::from_secs(240);

/// Waits until the agent's newest `action` job has ended; returns it.
async fn settled_job(app: &TestApp, id: &str, action: &str, gateway: &RealGateway) -> Value {
    let started = Instant::now();
    loop {
        let jobs = provision_jobs(app, id).await;
        let newest = jobs
            .iter()
            .filter(|job| job["action"] == action)
            .max_by_key(|job| job["id"].as_u64());
        if let Some(job) =
            newest.filter(|job| job["state"] != "pending" && job["state"] != "running")
        {
            return job.clone();
        }
        assert!(
            started.elapsed() < JOB_LIMIT,
            "{action} not finished in time: {jobs:?}\n{}",
            gateway.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Whether the gateway's config file lists `gateway_agent_id` (protocol 3 keeps agents in
/// `agents.list`, protocol 4 in `agents.entries`).
fn on_gateway(gateway: &RealGateway, gateway_agent_id: &str) -> bool {
    let path = gateway.home().join(".openclaw/openclaw.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let config: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    let in_list = config["agents"]["list"]
        .as_array()
        .is_some_and(|list| list.iter().any(|a| a["id"] == gateway_agent_id));
    let in_entries = config["agents"]["entries"]
        .as_object()
        .is_some_and(|entries| entries.contains_key(gateway_agent_id));
    in_list || in_entries
}
