//! Template sync and the gateway main agent (issue 3, parts 6–7), against the fake
//! gateway of both generations: `POST /api/v1/gateways/{id}/templates/sync` rewrites every
//! agent's files and reuses each agent's token unless told (or forced) to rotate it; every
//! managed gateway has its main agent.

use std::time::{Duration, Instant};

use mc_gateway::GatewayGeneration;
use mc_gateway::testing::{FakeGateway, FakeGatewayOptions};
use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};

use crate::gateway_fixtures::{
    WORKSPACE_ROOT, board_on_fake, create_agent_named, credential, files_set, provision_jobs,
    settled_jobs, spawn_provisioning_app,
};
use crate::helpers::{Auth, TestApp, eventually, expect_json, expect_success, id_of, unique};

const GENERATIONS: [GatewayGeneration; 2] = [GatewayGeneration::V3, GatewayGeneration::V4];

async fn fake(generation: GatewayGeneration) -> FakeGateway {
    FakeGateway::start(FakeGatewayOptions::new(generation)).await
}

/// The file holding the credentials on a gateway of `generation`.
fn credentials_file(generation: GatewayGeneration) -> &'static str {
    match generation {
        GatewayGeneration::V3 => "TOOLS.md",
        GatewayGeneration::V4 => "AGENTS.md",
    }
}

/// `POST /api/v1/gateways/{id}/templates/sync` with `body` (none when `None`).
async fn sync(app: &TestApp, gateway_id: &str, body: Option<&Value>) -> Response {
    app.send(
        Method::POST,
        &format!("/api/v1/gateways/{gateway_id}/templates/sync"),
        Auth::Admin,
        body,
    )
    .await
}

/// A successful sync's per-agent results.
async fn synced(app: &TestApp, gateway_id: &str, body: Option<&Value>) -> Vec<Value> {
    let answer = expect_json(sync(app, gateway_id, body).await, StatusCode::OK).await;
    assert_eq!(answer["gateway_id"], gateway_id);
    answer["agents"].as_array().expect("agents").clone()
}

/// The result for `agent_id`.
fn result_of<'a>(results: &'a [Value], agent_id: &str) -> &'a Value {
    results
        .iter()
        .find(|r| r["agent_id"] == agent_id)
        .unwrap_or_else(|| panic!("no result for {agent_id} in {results:?}"))
}

/// The agents listed on `gateway_id`.
async fn agents_on(app: &TestApp, gateway_id: &str) -> Vec<Value> {
    let page = expect_json(
        app.list_agents(&format!("gateway_id={gateway_id}")).await,
        StatusCode::OK,
    )
    .await;
    page["items"].as_array().expect("items").clone()
}

/// The gateway's main agent, once it exists and its provisioning settled.
pub async fn settled_main_agent(app: &TestApp, gateway_id: &str) -> Value {
    eventually("the gateway's main agent", || async {
        agents_on(app, gateway_id)
            .await
            .iter()
            .any(|a| a["is_gateway_main"] == true)
    })
    .await;
    let main = agents_on(app, gateway_id)
        .await
        .into_iter()
        .find(|a| a["is_gateway_main"] == true)
        .expect("a main agent");
    settled_jobs(app, &id_of(&main), 1).await;
    app.agent(&id_of(&main)).await
}

/// The token in an agent's credentials file on the fake gateway.
fn token_on(gw: &FakeGateway, gateway_agent_id: &str, generation: GatewayGeneration) -> String {
    let text = gw
        .file(gateway_agent_id, credentials_file(generation))
        .unwrap_or_else(|| panic!("{gateway_agent_id} has no credentials file"));
    credential(&text, "AUTH_TOKEN").expect("an AUTH_TOKEN line")
}

/// The `agents.files.set` calls naming `gateway_agent_id`, by file name.
fn files_written_for(gw: &FakeGateway, gateway_agent_id: &str) -> Vec<String> {
    gw.calls_to("agents.files.set")
        .iter()
        .filter(|p| p["agentId"] == gateway_agent_id)
        .map(|p| p["name"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn a_new_managed_gateway_gets_a_provisioned_main_agent_without_a_board() {
    for generation in GENERATIONS {
        let gw = fake(generation).await;
        let app = spawn_provisioning_app().await;
        let (gateway_id, board_id) = board_on_fake(&app, &gw).await;
        let main = settled_main_agent(&app, &gateway_id).await;
        assert!(main["board_id"].is_null(), "{main}");
        assert_eq!(main["is_board_lead"], false);
        assert_eq!(main["is_mc_agent"], true);
        assert!(main["last_provision_error"].is_null(), "{main}");
        let key = format!("mc-gateway-{gateway_id}");
        assert_eq!(main["gateway_agent_id"], key.as_str());
        assert_eq!(
            main["workspace_path"],
            format!("{WORKSPACE_ROOT}/workspace-gateway-{gateway_id}")
        );
        assert!(gw.agent_ids().contains(&key), "{:?}", gw.agent_ids());

        let guide = gw.file(&key, "AGENTS.md").expect("AGENTS.md");
        assert!(guide.contains("`agent-main`"), "{guide}");
        assert!(guide.contains("main agent"), "{guide}");
        let token = token_on(&gw, &key, generation);
        expect_success(app.agent_heartbeat(&token, None).await).await;

        // Board filters keep working: the main agent is on no board.
        let on_board = expect_json(
            app.list_agents(&format!("board_id={board_id}")).await,
            StatusCode::OK,
        )
        .await;
        assert_eq!(on_board["total"], 0, "{on_board}");
    }
}

#[tokio::test]
async fn an_unmanaged_gateway_gets_no_main_agent_and_cannot_be_synced() {
    let app = spawn_provisioning_app().await;
    let board = app.unmanaged_board().await;
    assert!(agents_on(&app, &board.gateway_id).await.is_empty());
    let answer = expect_json(
        sync(&app, &board.gateway_id, None).await,
        StatusCode::CONFLICT,
    )
    .await;
    let detail = answer["detail"].as_str().expect("a message");
    assert!(
        detail.contains("unmanaged") && detail.contains("no workspace files"),
        "{detail}"
    );
}

#[tokio::test]
async fn sync_requests_are_checked_before_anything_happens() {
    let gw = fake(GatewayGeneration::V4).await;
    let app = spawn_provisioning_app().await;
    let (gateway_id, _) = board_on_fake(&app, &gw).await;
    let unknown = uuid::Uuid::new_v4().to_string();
    expect_json(sync(&app, &unknown, None).await, StatusCode::NOT_FOUND).await;
    let malformed = expect_json(
        sync(&app, "not-a-uuid", None).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(malformed["detail"][0]["loc"], json!(["path", "gateway_id"]));
    let wrong_type = expect_json(
        sync(&app, &gateway_id, Some(&json!({"rotate_tokens": "yes"}))).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(
        wrong_type["detail"][0]["loc"],
        json!(["body", "rotate_tokens"])
    );
    let anonymous = app
        .send(
            Method::POST,
            &format!("/api/v1/gateways/{gateway_id}/templates/sync"),
            Auth::None,
            None,
        )
        .await;
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let main = settled_main_agent(&app, &gateway_id).await;
    let token = token_on(
        &gw,
        main["gateway_agent_id"].as_str().unwrap(),
        GatewayGeneration::V4,
    );
    let as_agent = app
        .send(
            Method::POST,
            &format!("/api/v1/gateways/{gateway_id}/templates/sync"),
            Auth::Agent(&token),
            None,
        )
        .await;
    assert_eq!(as_agent.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_sync_rewrites_every_agents_files_and_keeps_their_tokens() {
    for generation in GENERATIONS {
        let gw = fake(generation).await;
        let app = spawn_provisioning_app().await;
        let (gateway_id, board_id) = board_on_fake(&app, &gw).await;
        let main = settled_main_agent(&app, &gateway_id).await;
        let worker = create_agent_named(&app, &board_id, &unique("Worker")).await;
        let lead = id_of(
            &expect_success(
                app.create_agent(
                    &json!({"name": unique("Lead"), "board_id": board_id, "is_board_lead": true}),
                )
                .await,
            )
            .await,
        );
        settled_jobs(&app, &worker, 1).await;
        settled_jobs(&app, &lead, 1).await;
        let keys: Vec<(String, String)> = [id_of(&main), worker.clone(), lead.clone()]
            .into_iter()
            .map(|id| {
                let key = if id == id_of(&main) {
                    format!("mc-gateway-{gateway_id}")
                } else if id == lead {
                    format!("lead-{board_id}")
                } else {
                    format!("mc-{id}")
                };
                (id, key)
            })
            .collect();
        let tokens_before: Vec<String> = keys
            .iter()
            .map(|(_, key)| token_on(&gw, key, generation))
            .collect();
        // The agent's own notes must survive a sync.
        gw.set_file(
            &keys[1].1,
            "MEMORY.md",
            Some("# MEMORY.md\nMy own notes.\n"),
        );
        let written_before: Vec<usize> = keys
            .iter()
            .map(|(_, key)| files_written_for(&gw, key).len())
            .collect();

        let results = synced(&app, &gateway_id, None).await;
        assert_eq!(results.len(), 3, "{results:?}");
        for (((id, key), token), before) in keys.iter().zip(&tokens_before).zip(&written_before) {
            let result = result_of(&results, id);
            assert_eq!(result["outcome"], "synced", "{result}");
            assert_eq!(result["token_rotated"], false, "{result}");
            assert!(result["error"].is_null(), "{result}");
            let rewritten = &files_written_for(&gw, key)[*before..];
            assert!(
                rewritten.iter().any(|f| f == "AGENTS.md")
                    && rewritten.iter().any(|f| f == credentials_file(generation)),
                "{key}: {rewritten:?}"
            );
            assert!(
                !rewritten.iter().any(|f| f == "USER.md" || f == "MEMORY.md"),
                "{key}: {rewritten:?}"
            );
            assert_eq!(&token_on(&gw, key, generation), token, "{key}");
            expect_success(app.agent_heartbeat(token, None).await).await;
        }
        assert_eq!(
            gw.file(&keys[1].1, "MEMORY.md").as_deref(),
            Some("# MEMORY.md\nMy own notes.\n")
        );
        if generation == GatewayGeneration::V4 {
            let sent = files_set(&gw);
            assert!(
                !sent.iter().any(|f| f == "TOOLS.md" || f == "HEARTBEAT.md"),
                "{sent:?}"
            );
        }
    }
}

#[tokio::test]
async fn a_sync_with_rotate_tokens_writes_new_tokens_and_the_old_ones_stop_working() {
    for generation in GENERATIONS {
        let gw = fake(generation).await;
        let app = spawn_provisioning_app().await;
        let (gateway_id, board_id) = board_on_fake(&app, &gw).await;
        settled_main_agent(&app, &gateway_id).await;
        let worker = create_agent_named(&app, &board_id, &unique("Worker")).await;
        settled_jobs(&app, &worker, 1).await;
        let key = format!("mc-{worker}");
        let old = token_on(&gw, &key, generation);

        let results = synced(&app, &gateway_id, Some(&json!({"rotate_tokens": true}))).await;
        assert_eq!(results.len(), 2, "{results:?}");
        for result in &results {
            assert_eq!(result["outcome"], "synced", "{result}");
            assert_eq!(result["token_rotated"], true, "{result}");
            assert_eq!(result["note"], "rotated as requested", "{result}");
        }
        let new = token_on(&gw, &key, generation);
        assert_ne!(new, old);
        expect_success(app.agent_heartbeat(&new, None).await).await;
        assert_eq!(
            app.agent_heartbeat(&old, None).await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
}

#[tokio::test]
async fn a_workspace_without_the_current_token_gets_a_new_one_and_the_result_says_why() {
    for generation in GENERATIONS {
        let gw = fake(generation).await;
        let app = spawn_provisioning_app().await;
        let (gateway_id, board_id) = board_on_fake(&app, &gw).await;
        let main = settled_main_agent(&app, &gateway_id).await;
        let worker = create_agent_named(&app, &board_id, &unique("Worker")).await;
        settled_jobs(&app, &worker, 1).await;
        let file = credentials_file(generation);
        let worker_key = format!("mc-{worker}");
        let main_key = main["gateway_agent_id"].as_str().unwrap().to_owned();
        // Someone edited one workspace's token, and emptied the other's credentials.
        let edited = gw
            .file(&worker_key, file)
            .unwrap()
            .lines()
            .map(|line| {
                if line.contains("AUTH_TOKEN=") {
                    "- `AUTH_TOKEN=not-the-real-token`"
                } else {
                    line
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        gw.set_file(&worker_key, file, Some(&edited));
        gw.set_file(&main_key, file, Some("# nothing here\n"));

        let results = synced(&app, &gateway_id, Some(&json!({}))).await;
        let for_worker = result_of(&results, &worker);
        assert_eq!(for_worker["outcome"], "synced", "{for_worker}");
        assert_eq!(for_worker["token_rotated"], true, "{for_worker}");
        assert!(
            for_worker["note"]
                .as_str()
                .is_some_and(|n| n.contains("not the agent's current token")),
            "{for_worker}"
        );
        let for_main = result_of(&results, &id_of(&main));
        assert_eq!(for_main["token_rotated"], true, "{for_main}");
        assert!(
            for_main["note"]
                .as_str()
                .is_some_and(|n| n.contains(&format!("{file} holds no AUTH_TOKEN"))),
            "{for_main}"
        );
        for key in [&worker_key, &main_key] {
            let token = token_on(&gw, key, generation);
            expect_success(app.agent_heartbeat(&token, None).await).await;
        }
    }
}

#[tokio::test]
async fn a_sync_gives_a_gateway_back_its_missing_main_agent() {
    let gw = fake(GatewayGeneration::V4).await;
    let app = spawn_provisioning_app().await;
    let (gateway_id, _) = board_on_fake(&app, &gw).await;
    let first = settled_main_agent(&app, &gateway_id).await;
    expect_success(app.delete_agent(&id_of(&first)).await).await;
    // Its delete job removes it from the gateway, then from Mission Control.
    eventually(
        "the main agent to leave the gateway and Mission Control",
        || async {
            gw.agent_ids().is_empty()
                && app.get_agent(&id_of(&first)).await.status() == reqwest::StatusCode::NOT_FOUND
        },
    )
    .await;

    let results = synced(&app, &gateway_id, None).await;
    assert_eq!(results.len(), 1, "{results:?}");
    assert_eq!(results[0]["outcome"], "created", "{results:?}");
    assert!(
        results[0]["note"]
            .as_str()
            .is_some_and(|n| n.contains("no main agent")),
        "{results:?}"
    );
    let second = settled_main_agent(&app, &gateway_id).await;
    assert_ne!(id_of(&second), id_of(&first));
    assert_eq!(results[0]["agent_id"], id_of(&second).as_str());
    assert!(gw.agent_ids().contains(&format!("mc-gateway-{gateway_id}")));
}

#[tokio::test]
async fn an_agent_missing_on_the_gateway_is_queued_for_an_update_that_puts_it_back() {
    let gw = fake(GatewayGeneration::V3).await;
    let app = spawn_provisioning_app().await;
    let (gateway_id, board_id) = board_on_fake(&app, &gw).await;
    settled_main_agent(&app, &gateway_id).await;
    let worker = create_agent_named(&app, &board_id, &unique("Worker")).await;
    settled_jobs(&app, &worker, 1).await;
    let key = format!("mc-{worker}");
    // Removed on the gateway host, behind Mission Control's back.
    assert!(gw.remove_agent(&key));

    let results = synced(&app, &gateway_id, None).await;
    let result = result_of(&results, &worker);
    assert_eq!(result["outcome"], "queued", "{result}");
    assert!(
        result["note"]
            .as_str()
            .is_some_and(|n| n.contains("not on the gateway")),
        "{result}"
    );
    let jobs = settled_jobs(&app, &worker, 2).await;
    assert!(jobs.iter().all(|j| j["state"] == "done"), "{jobs:?}");
    assert!(gw.agent_ids().contains(&key));
    let token = token_on(&gw, &key, GatewayGeneration::V3);
    expect_success(app.agent_heartbeat(&token, None).await).await;
}

#[tokio::test]
async fn an_unreachable_gateway_is_502_and_no_token_changes() {
    let gw = fake(GatewayGeneration::V4).await;
    let app = spawn_provisioning_app().await;
    let (gateway_id, board_id) = board_on_fake(&app, &gw).await;
    settled_main_agent(&app, &gateway_id).await;
    let worker = create_agent_named(&app, &board_id, &unique("Worker")).await;
    settled_jobs(&app, &worker, 1).await;
    let token = token_on(&gw, &format!("mc-{worker}"), GatewayGeneration::V4);
    gw.stop();

    let started = Instant::now();
    let answer = expect_json(
        sync(&app, &gateway_id, Some(&json!({"rotate_tokens": true}))).await,
        StatusCode::BAD_GATEWAY,
    )
    .await;
    // Bounded: the sync gives a restarting gateway 8 s to answer, then says so.
    assert!(started.elapsed() < Duration::from_secs(15));
    let detail = answer["detail"].as_str().expect("a message");
    assert!(detail.contains("nothing was changed"), "{detail}");
    expect_success(app.agent_heartbeat(&token, None).await).await;
}

#[tokio::test]
async fn a_gateway_that_stops_answering_mid_sync_fails_the_agents_not_the_request() {
    let gw = fake(GatewayGeneration::V4).await;
    let app = spawn_provisioning_app().await;
    let (gateway_id, board_id) = board_on_fake(&app, &gw).await;
    settled_main_agent(&app, &gateway_id).await;
    let worker = create_agent_named(&app, &board_id, &unique("Worker")).await;
    settled_jobs(&app, &worker, 1).await;
    let token = token_on(&gw, &format!("mc-{worker}"), GatewayGeneration::V4);
    gw.hang("agents.files.set");

    let started = Instant::now();
    let results = synced(&app, &gateway_id, None).await;
    assert!(started.elapsed() < Duration::from_secs(20));
    let result = result_of(&results, &worker);
    assert_eq!(result["outcome"], "failed", "{result}");
    assert_eq!(result["token_rotated"], false, "{result}");
    assert!(
        result["error"]
            .as_str()
            .is_some_and(|e| e.contains("timed out") || e.contains("timeout")),
        "{result}"
    );
    assert!(
        result["note"]
            .as_str()
            .is_some_and(|n| n.contains("update job was queued")),
        "{result}"
    );
    // The update job the sync queued reads the token back from the workspace and keeps
    // it while its own writes keep failing: the agent is never locked out.
    eventually("the queued update to have failed an attempt", || async {
        provision_jobs(&app, &worker)
            .await
            .get(1)
            .is_some_and(|job| job["attempts"].as_u64() >= Some(1))
    })
    .await;
    expect_success(app.agent_heartbeat(&token, None).await).await;
    assert_eq!(app.count_events(&worker, "agent.token_rotated").await, 0);
}

#[tokio::test]
async fn agents_with_a_pending_job_are_left_to_that_job() {
    let gw = fake(GatewayGeneration::V4).await;
    let app = spawn_provisioning_app().await;
    let (gateway_id, board_id) = board_on_fake(&app, &gw).await;
    settled_main_agent(&app, &gateway_id).await;
    gw.delay("agents.create", Duration::from_secs(2));
    let worker = create_agent_named(&app, &board_id, &unique("Worker")).await;
    let results = synced(&app, &gateway_id, None).await;
    let result = result_of(&results, &worker);
    assert_eq!(result["outcome"], "skipped", "{result}");
    assert!(
        result["note"]
            .as_str()
            .is_some_and(|n| n.contains("job is pending")),
        "{result}"
    );
}

#[tokio::test]
async fn deleting_a_managed_gateway_removes_its_main_agent_from_the_gateway() {
    let gw = fake(GatewayGeneration::V4).await;
    let app = spawn_provisioning_app().await;
    let gateway = expect_success(
        app.create_gateway(&json!({
            "name": unique("gateway"),
            "url": gw.url(),
            "token": gw.token(),
            "workspace_root": WORKSPACE_ROOT,
        }))
        .await,
    )
    .await;
    let gateway_id = id_of(&gateway);
    let main = settled_main_agent(&app, &gateway_id).await;
    let key = format!("mc-gateway-{gateway_id}");
    assert!(gw.agent_ids().contains(&key));

    expect_success(app.delete_gateway(&gateway_id).await).await;
    assert!(!gw.agent_ids().contains(&key), "{:?}", gw.agent_ids());
    expect_json(app.get_agent(&id_of(&main)).await, StatusCode::NOT_FOUND).await;
}

#[tokio::test]
async fn an_unreachable_managed_gateway_is_not_deleted_until_its_url_is_cleared() {
    let gw = fake(GatewayGeneration::V4).await;
    let app = spawn_provisioning_app().await;
    let gateway = expect_success(
        app.create_gateway(&json!({
            "name": unique("gateway"),
            "url": gw.url(),
            "token": gw.token(),
            "workspace_root": WORKSPACE_ROOT,
        }))
        .await,
    )
    .await;
    let gateway_id = id_of(&gateway);
    let main = settled_main_agent(&app, &gateway_id).await;
    gw.stop();

    let refused = expect_json(app.delete_gateway(&gateway_id).await, StatusCode::CONFLICT).await;
    let detail = refused["detail"].as_str().expect("a message");
    assert!(
        detail.contains("main agent could not be removed")
            && detail.contains("clear the gateway's url"),
        "{detail}"
    );
    expect_success(app.get_agent(&id_of(&main)).await).await;

    expect_success(app.patch_gateway(&gateway_id, &json!({"url": ""})).await).await;
    expect_success(app.delete_gateway(&gateway_id).await).await;
    expect_json(app.get_agent(&id_of(&main)).await, StatusCode::NOT_FOUND).await;
}

#[tokio::test]
async fn making_an_unmanaged_gateway_managed_gives_it_its_main_agent() {
    let gw = fake(GatewayGeneration::V4).await;
    let app = spawn_provisioning_app().await;
    let board = app.unmanaged_board().await;
    assert!(agents_on(&app, &board.gateway_id).await.is_empty());
    expect_success(
        app.patch_gateway(
            &board.gateway_id,
            &json!({"url": gw.url(), "token": gw.token(), "workspace_root": WORKSPACE_ROOT}),
        )
        .await,
    )
    .await;
    let main = settled_main_agent(&app, &board.gateway_id).await;
    assert!(main["board_id"].is_null(), "{main}");
    // Changing it again does not add a second one.
    expect_success(
        app.patch_gateway(&board.gateway_id, &json!({"name": unique("renamed")}))
            .await,
    )
    .await;
    assert_eq!(agents_on(&app, &board.gateway_id).await.len(), 1);
}

#[tokio::test]
async fn a_main_agent_another_replica_just_created_is_not_created_twice() {
    let gw = fake(GatewayGeneration::V4).await;
    let app = spawn_provisioning_app().await;
    let board = app.unmanaged_board().await;
    // Another replica gave the gateway its main agent a moment ago; this server has not
    // followed it yet, so its own check finds none.
    let elsewhere = app.store_main_agent_elsewhere(&board.gateway_id).await;
    expect_success(
        app.patch_gateway(
            &board.gateway_id,
            &json!({"url": gw.url(), "token": gw.token(), "workspace_root": WORKSPACE_ROOT}),
        )
        .await,
    )
    .await;
    let agents = agents_on(&app, &board.gateway_id).await;
    let ids: Vec<String> = agents.iter().map(id_of).collect();
    assert_eq!(ids, [elsewhere], "{agents:?}");
}

/// The templates directory of [`a_templates_directory_override_reaches_the_workspace`].
static OVERRIDE_DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();

fn with_override_dir(config: &mut mc_server::config::ServerConfig) {
    config.templates_dir = OVERRIDE_DIR.get().map(|d| d.path().to_owned());
}

#[tokio::test]
async fn a_templates_directory_override_reaches_the_workspace() {
    let dir = OVERRIDE_DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary directory");
        std::fs::write(
            dir.path().join("SOUL.md.j2"),
            "# SOUL.md\n\n{{ agent_name }} answers in haiku ({{ role_tag }}).\n",
        )
        .expect("writing the override");
        dir
    });
    assert!(dir.path().join("SOUL.md.j2").exists());
    let gw = fake(GatewayGeneration::V4).await;
    let app = TestApp::spawn_with(with_override_dir).await;
    let (_, board_id) = board_on_fake(&app, &gw).await;
    let name = unique("Poet");
    let id = create_agent_named(&app, &board_id, &name).await;
    let jobs = settled_jobs(&app, &id, 1).await;
    assert_eq!(jobs[0]["state"], "done", "{jobs:?}");
    assert_eq!(
        gw.file(&format!("mc-{id}"), "SOUL.md").as_deref(),
        Some(format!("# SOUL.md\n\n{name} answers in haiku (agent-worker).\n").as_str())
    );
}

#[tokio::test]
async fn a_broken_templates_directory_stops_the_server_naming_the_file() {
    let data = tempfile::tempdir().expect("a data directory");
    let templates = tempfile::tempdir().expect("a templates directory");
    std::fs::write(
        templates.path().join("AGENTS.md.j2"),
        "# AGENTS.md\n{{ agent_name }} heartbeats every {{ heartbeat_every }}\n",
    )
    .expect("writing the template");
    let mut config = mc_server::config::ServerConfig::for_data_dir(data.path());
    config.templates_dir = Some(templates.path().to_owned());
    let error = match mc_server::startup::Server::build(config).await {
        Ok(_) => panic!("a broken template must stop the server"),
        Err(error) => format!("{error:#}"),
    };
    let file = templates.path().join("AGENTS.md.j2");
    assert!(error.contains(&file.display().to_string()), "{error}");
    assert!(error.contains("heartbeat_every"), "{error}");
}
