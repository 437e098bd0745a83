//! Lifecycle with deadlines (issue 3 §5): after a wake the agent must check in within the
//! check-in timeout or be woken again, three wakes in all, then it is offline with the
//! reason; `updating` and `deleting` last only while their job runs, and a job that cannot
//! finish within its bound ends with the agent out of that state and the reason recorded.
//! No agent stays `provisioning`, `updating` or `deleting` without a job or a deadline.

use std::time::Duration;

use mc_gateway::GatewayGeneration;
use mc_gateway::testing::{FakeGateway, FakeGatewayOptions, Garbage};
use mc_server::config::ServerConfig;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::gateway_fixtures::{
    board_on_fake, create_agent_named, credential, provision_jobs, quick_gateway_settings,
    settled_jobs,
};
use crate::helpers::{TestApp, eventually, expect_json, expect_success, timestamp, unique};

/// The check-in timeout of these tests.
const CHECKIN: Duration = Duration::from_millis(1000);

/// Gateway-quick settings, a 1 s check-in timeout and a 2 s bound on every job.
fn short_deadlines(config: &mut ServerConfig) {
    quick_gateway_settings(config);
    config.lifecycle.checkin_timeout = CHECKIN;
    config.lifecycle.job_timeout = Duration::from_secs(2);
}

async fn spawn_app() -> TestApp {
    TestApp::spawn_with(short_deadlines).await
}

async fn fake() -> FakeGateway {
    FakeGateway::start(FakeGatewayOptions::new(GatewayGeneration::V4)).await
}

/// The agent's own token, read back from its workspace (AGENTS.md on a v4 gateway).
fn workspace_token(gw: &FakeGateway, agent_id: &str) -> String {
    let agents_md = gw
        .file(&format!("mc-{agent_id}"), "AGENTS.md")
        .expect("AGENTS.md written");
    credential(&agents_md, "AUTH_TOKEN").expect("AUTH_TOKEN in AGENTS.md")
}

/// The events about `agent_id` of `event_type`, oldest first.
async fn events_of(app: &TestApp, agent_id: &str, event_type: &str) -> Vec<Value> {
    let mut events: Vec<Value> = app
        .activity_of(agent_id)
        .await
        .into_iter()
        .filter(|e| e["event_type"] == event_type)
        .collect();
    events.reverse();
    events
}

const NEVER_CHECKED_IN: &str =
    "never checked in: woken 3 times, no heartbeat within 1 s of each wake";

/// The `chat.send` wakes the fake received for agent `id`'s main session (the gateway's own
/// main agent is woken too, and never checks in).
fn wakes_of(gw: &FakeGateway, id: &str) -> Vec<serde_json::Value> {
    let session_key = format!("agent:mc-{id}:main");
    gw.calls_to("chat.send")
        .into_iter()
        .filter(|params| params["sessionKey"] == session_key.as_str())
        .collect()
}

#[tokio::test]
async fn an_agent_that_checks_in_in_time_becomes_healthy_and_is_never_woken_again() {
    let gw = fake().await;
    let app = spawn_app().await;
    let (_, board_id) = board_on_fake(&app, &gw).await;
    let id = create_agent_named(&app, &board_id, &unique("Worker")).await;
    settled_jobs(&app, &id, 1).await;
    let token = workspace_token(&gw, &id);
    let read = expect_success(app.agent_heartbeat(&token, None).await).await;
    assert_eq!(read["status"], "healthy");

    // Well past three check-in timeouts: no further wake, still healthy, no error.
    tokio::time::sleep(CHECKIN * 4).await;
    assert_eq!(wakes_of(&gw, &id).len(), 1, "only the job's own wake");
    let read = app.agent(&id).await;
    assert_eq!(read["status"], "healthy", "{read}");
    assert!(read["last_provision_error"].is_null(), "{read}");
}

#[tokio::test]
async fn an_agent_that_never_checks_in_is_woken_three_times_then_offline_with_the_reason() {
    let gw = fake().await;
    let app = spawn_app().await;
    let (_, board_id) = board_on_fake(&app, &gw).await;
    let id = create_agent_named(&app, &board_id, &unique("Worker")).await;
    settled_jobs(&app, &id, 1).await;
    assert_eq!(
        app.agent(&id).await["status"],
        "provisioning",
        "awaiting its check-in"
    );

    eventually("the agent to be given up on", || async {
        app.agent(&id).await["status"] == "offline"
    })
    .await;
    let wakes = wakes_of(&gw, &id);
    assert_eq!(wakes.len(), 3, "{wakes:?}");
    let mut keys: Vec<&str> = wakes
        .iter()
        .map(|w| w["idempotencyKey"].as_str().expect("a key"))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), 3, "every wake has a fresh idempotency key");
    assert!(
        wakes
            .iter()
            .all(|w| w["sessionKey"] == format!("agent:mc-{id}:main"))
    );
    let read = app.agent(&id).await;
    assert_eq!(read["last_provision_error"], NEVER_CHECKED_IN, "{read}");
    let offline = events_of(&app, &id, "agent.offline").await;
    assert_eq!(offline.len(), 1, "one transition: {offline:?}");
    assert!(
        offline[0]["message"]
            .as_str()
            .is_some_and(|m| m.contains(NEVER_CHECKED_IN)),
        "{offline:?}"
    );
    assert_eq!(
        offline[0]["data"],
        json!({"from": "provisioning", "to": "offline", "reason": NEVER_CHECKED_IN})
    );
    // Each wake sent again is on the log: the job's own wake was the first.
    let sent = events_of(&app, &id, "agent.wakeup.sent").await;
    let counted: Vec<&Value> = sent.iter().map(|e| &e["data"]["wake"]).collect();
    assert_eq!(counted, [&json!(2), &json!(3)], "{sent:?}");
    for event in &sent {
        assert_eq!(event["data"]["max_wakes"], 3);
        let deadline = timestamp(&event["data"]["checkin_deadline"]);
        let at = timestamp(&event["created_at"]);
        assert_eq!(deadline.as_millis() - at.as_millis(), 1000, "{event}");
        assert!(event["message"].as_str().is_some_and(|m| m.ends_with('.')));
    }

    // Nothing more happens: no fourth wake.
    tokio::time::sleep(CHECKIN * 2).await;
    assert_eq!(wakes_of(&gw, &id).len(), 3);

    // A late heartbeat brings it back like any offline agent.
    let token = workspace_token(&gw, &id);
    let read = expect_success(app.agent_heartbeat(&token, None).await).await;
    assert_eq!(read["status"], "healthy");
}

#[tokio::test]
async fn a_check_in_deadline_survives_a_restart() {
    let gw = fake().await;
    let mut app = spawn_app().await;
    let (_, board_id) = board_on_fake(&app, &gw).await;
    let id = create_agent_named(&app, &board_id, &unique("Worker")).await;
    settled_jobs(&app, &id, 1).await;
    app.restart().await;
    // The wait is still on after the restart (no job runs any more: only its deadline
    // keeps the agent provisioning) ...
    assert_eq!(app.agent(&id).await["status"], "provisioning");
    // ... and comes due: two more wakes, then offline with the reason.
    eventually("the agent to be given up on", || async {
        app.agent(&id).await["status"] == "offline"
    })
    .await;
    assert_eq!(wakes_of(&gw, &id).len(), 3);
    assert_eq!(
        app.agent(&id).await["last_provision_error"],
        NEVER_CHECKED_IN
    );
    let jobs = provision_jobs(&app, &id).await;
    assert_eq!(jobs.len(), 1, "the wakes are not jobs: {jobs:?}");
    assert_eq!(jobs[0]["attempts"], 1, "the create job did not run again");
}

#[tokio::test]
async fn an_update_a_gateway_down_for_good_never_takes_ends_out_of_updating_with_the_reason() {
    let gw = fake().await;
    let app = spawn_app().await;
    let (_, board_id) = board_on_fake(&app, &gw).await;
    let id = create_agent_named(&app, &board_id, &unique("Worker")).await;
    settled_jobs(&app, &id, 1).await;
    let token = workspace_token(&gw, &id);
    expect_success(app.agent_heartbeat(&token, None).await).await;

    gw.stop();
    let read = expect_success(
        app.patch_agent(&id, &json!({"name": unique("Renamed")}))
            .await,
    )
    .await;
    assert_eq!(read["status"], "updating", "{read}");
    assert_eq!(app.agent(&id).await["status"], "updating");

    let jobs = settled_jobs(&app, &id, 2).await;
    assert_eq!(jobs[1]["state"], "failed", "{jobs:?}");
    let read = app.agent(&id).await;
    assert_eq!(
        read["status"], "healthy",
        "back to its liveness status: {read}"
    );
    let error = read["last_provision_error"].as_str().unwrap_or_default();
    assert!(error.starts_with("update gave up after "), "{read}");
    assert!(error.contains(" in 2 s: "), "{read}");
    // The gateway never answered, so no token was minted: the agent's own still works.
    expect_success(app.agent_heartbeat(&token, None).await).await;
    assert_eq!(app.count_events(&id, "agent.token_rotated").await, 0);
}

#[tokio::test]
async fn a_create_that_never_succeeds_ends_offline_not_provisioning() {
    let gw = fake().await;
    gw.stop();
    let app = spawn_app().await;
    let (_, board_id) = board_on_fake(&app, &gw).await;
    let id = create_agent_named(&app, &board_id, &unique("Worker")).await;
    assert_eq!(app.agent(&id).await["status"], "provisioning");
    let jobs = settled_jobs(&app, &id, 1).await;
    assert_eq!(jobs[0]["state"], "failed", "{jobs:?}");
    let read = app.agent(&id).await;
    assert_eq!(read["status"], "offline", "{read}");
    assert!(
        read["last_provision_error"]
            .as_str()
            .is_some_and(|e| e.starts_with("create gave up after ")),
        "{read}"
    );
    let offline = events_of(&app, &id, "agent.offline").await;
    assert_eq!(offline.len(), 1, "{offline:?}");
}

#[tokio::test]
async fn a_deleted_agent_reads_deleting_until_its_gateway_has_removed_it() {
    let gw = fake().await;
    let app = spawn_app().await;
    let (_, board_id) = board_on_fake(&app, &gw).await;
    let id = create_agent_named(&app, &board_id, &unique("Worker")).await;
    settled_jobs(&app, &id, 1).await;
    gw.delay("agents.delete", Duration::from_millis(400));

    expect_success(app.delete_agent(&id).await).await;
    assert_eq!(app.agent(&id).await["status"], "deleting");
    // Deleting twice is deleting once.
    expect_success(app.delete_agent(&id).await).await;
    eventually("the agent to be gone", || async {
        app.get_agent(&id).await.status() == StatusCode::NOT_FOUND
    })
    .await;
    assert!(!gw.agent_ids().contains(&format!("mc-{id}")));
    let jobs = provision_jobs(&app, &id).await;
    assert_eq!(jobs.len(), 2, "one delete job: {jobs:?}");
    let deleted = events_of(&app, &id, "agent.deleted").await;
    assert_eq!(deleted.len(), 1, "{deleted:?}");
    assert!(
        deleted[0]["message"]
            .as_str()
            .is_some_and(|m| m.ends_with("was deleted."))
    );
}

#[tokio::test]
async fn a_delete_a_gateway_down_for_good_never_takes_removes_the_agent_and_says_so() {
    let gw = fake().await;
    let app = spawn_app().await;
    let (_, board_id) = board_on_fake(&app, &gw).await;
    let id = create_agent_named(&app, &board_id, &unique("Worker")).await;
    settled_jobs(&app, &id, 1).await;
    gw.stop();

    expect_success(app.delete_agent(&id).await).await;
    assert_eq!(app.agent(&id).await["status"], "deleting");
    eventually("the agent to be gone", || async {
        app.get_agent(&id).await.status() == StatusCode::NOT_FOUND
    })
    .await;
    let jobs = provision_jobs(&app, &id).await;
    assert_eq!(jobs[1]["state"], "failed", "{jobs:?}");
    let deleted = events_of(&app, &id, "agent.deleted").await;
    assert_eq!(deleted.len(), 1, "{deleted:?}");
    let message = deleted[0]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("from Mission Control; it may remain on its gateway")
            && message.contains("delete gave up after"),
        "{message}"
    );
}

#[tokio::test]
async fn an_agent_on_an_unmanaged_gateway_that_never_heartbeats_is_offline_after_the_timeout() {
    let app = spawn_app().await;
    let board = app.unmanaged_board().await;
    let agent = app.agent_with_token(&board.board_id).await;
    assert_eq!(app.agent(&agent.id).await["status"], "provisioning");
    eventually("the agent to be given up on", || async {
        app.agent(&agent.id).await["status"] == "offline"
    })
    .await;
    let read = app.agent(&agent.id).await;
    let error = read["last_provision_error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("never checked in: no heartbeat within 1 s of its creation")
            && error.contains("unmanaged"),
        "{read}"
    );
    assert!(provision_jobs(&app, &agent.id).await.is_empty());
    let read = expect_json(
        app.agent_heartbeat(&agent.token, None).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(read["status"], "healthy");
}

/// [`short_deadlines`] with gateway requests allowed to take long: a slow call is a wait,
/// not a failure.
fn short_jobs_slow_gateway(config: &mut ServerConfig) {
    short_deadlines(config);
    config.gateway_connection.request_timeout = Duration::from_secs(8);
}

#[tokio::test]
async fn a_job_that_waited_in_the_queue_past_its_bound_still_retries_a_transient_failure() {
    let gw = fake().await;
    let app = TestApp::spawn_with(short_jobs_slow_gateway).await;
    let (gateway_id, board_id) = board_on_fake(&app, &gw).await;
    crate::templates_sync::settled_main_agent(&app, &gateway_id).await;
    // The agent's create job is slow; its update job waits behind it for longer than the
    // 2 s bound, then fails once (`agents.update` is called only for an existing agent).
    gw.delay("agents.create", Duration::from_secs(3));
    gw.garble("agents.update", Garbage::MalformedResponse);
    let id = create_agent_named(&app, &board_id, &unique("Worker")).await;
    expect_success(
        app.patch_agent(&id, &json!({"name": unique("Renamed")}))
            .await,
    )
    .await;
    eventually("the create job to be in its slow agents.create", || async {
        gw.calls_to("agents.create")
            .iter()
            .any(|p| p["name"] == format!("mc-{id}"))
    })
    .await;
    gw.delay("agents.create", Duration::ZERO);

    eventually(
        "the update job to have failed its first attempt",
        || async {
            provision_jobs(&app, &id)
                .await
                .get(1)
                .is_some_and(|job| job["attempts"].as_u64() >= Some(1))
        },
    )
    .await;
    let update = provision_jobs(&app, &id).await[1].clone();
    let waited = timestamp(&update["first_attempt_at"]).as_millis()
        - timestamp(&update["created_at"]).as_millis();
    assert!(
        waited > 2000,
        "it waited {waited} ms in the queue: {update}"
    );
    assert_eq!(
        update["state"], "pending",
        "retrying, not given up: {update}"
    );
    assert!(
        update["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("agents.update") && e.contains("retrying")),
        "{update}"
    );
    assert_eq!(app.agent(&id).await["status"], "updating");

    gw.stop_garbling();
    let jobs = settled_jobs(&app, &id, 2).await;
    assert_eq!(jobs[1]["state"], "done", "{jobs:?}");
    assert!(jobs[1]["attempts"].as_u64() >= Some(2), "{jobs:?}");
}
