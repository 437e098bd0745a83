//! Provisioning progress on the activity log, the streams and webhooks (issue 4 §2): each
//! job says when it is queued, retried (why, and when next), done (where the agent now is)
//! or failed (why), and replicas sharing one PostgreSQL follow those events, so a job
//! queued or run on one replica shows on every other, with its outcome.

use std::time::Duration;

use mc_gateway::GatewayGeneration;
use mc_gateway::testing::{FakeGateway, FakeGatewayOptions};
use mc_server::config::ServerConfig;
use mc_testpg::TestPostgres;
use reqwest::Method;
use serde_json::{Value, json};

use crate::gateway_fixtures::{
    WORKSPACE_ROOT, board_on_fake, create_agent_named, credential, managed_board, provision_jobs,
    quick_gateway_settings, settled_jobs, spawn_provisioning_app,
};
use crate::helpers::{
    Auth, TestApp, eventually, expect_success, expect_validation_error, id_of, timestamp, unique,
};
use crate::sse::{EventStream, Message};
use crate::templates_sync::settled_main_agent;

const AGENTS: &str = "/api/v1/agents/stream";

/// The token of the gateway in these tests: it must never show in an event.
const GATEWAY_TOKEN: &str = "gateway-token-that-must-never-show-3f9a2c";

/// Quick gateway settings and a 2 s bound on every job.
fn two_second_jobs(config: &mut ServerConfig) {
    quick_gateway_settings(config);
    config.lifecycle.job_timeout = Duration::from_secs(2);
}

async fn fake_with_token() -> FakeGateway {
    let mut options = FakeGatewayOptions::new(GatewayGeneration::V4);
    options.token = Some(GATEWAY_TOKEN.to_owned());
    FakeGateway::start(options).await
}

/// The messages about `agent_id`, up to and including the first of type `last`.
async fn messages_until(stream: &mut EventStream, agent_id: &str, last: &str) -> Vec<Message> {
    let mut messages = Vec::new();
    loop {
        let message = stream.next().await;
        if message.data["event"]["agent_id"] != agent_id {
            continue;
        }
        let done = message.event == last;
        messages.push(message);
        if done {
            return messages;
        }
    }
}

fn types(messages: &[Message]) -> Vec<&str> {
    messages.iter().map(|m| m.event.as_str()).collect()
}

/// The job's own events among `messages` (a transition the job's end caused is left out).
fn job_events(messages: &[Message]) -> Vec<&Message> {
    messages
        .iter()
        .filter(|m| m.event.starts_with("agent.provision."))
        .collect()
}

/// Asserts that no event sentence or data carries the gateway's token.
fn assert_no_secret(messages: &[Message]) {
    for message in messages {
        assert!(
            !message.data["event"].to_string().contains(GATEWAY_TOKEN),
            "the gateway token leaked into {message:?}"
        );
        let sentence = message.data["event"]["message"]
            .as_str()
            .unwrap_or_default();
        assert!(sentence.ends_with('.'), "one sentence: {sentence:?}");
    }
}

/// The server's `/metrics` text.
async fn scrape(app: &TestApp) -> String {
    app.send(Method::GET, "/metrics", Auth::None, None)
        .await
        .text()
        .await
        .expect("a text body")
}

#[tokio::test]
async fn a_create_streams_as_queued_then_done_with_its_placement_and_a_resume_replays_both() {
    let gw = fake_with_token().await;
    let app = spawn_provisioning_app().await;
    let (gateway_id, board_id) = board_on_fake(&app, &gw).await;
    settled_main_agent(&app, &gateway_id).await;
    let mut stream = EventStream::open(&app, AGENTS, Auth::Admin, None).await;

    let id = create_agent_named(&app, &board_id, &unique("Worker")).await;
    let seen = messages_until(&mut stream, &id, "agent.provision.done").await;
    assert_eq!(
        types(&seen),
        [
            "agent.created",
            "agent.provision.queued",
            "agent.provision.done"
        ]
    );
    assert_no_secret(&seen);
    let job = provision_jobs(&app, &id).await[0]["id"].clone();
    let (queued, done) = (&seen[1], &seen[2]);
    assert_eq!(
        queued.data["event"]["data"],
        json!({"job": job, "action": "create", "attempt": 0})
    );
    assert_eq!(queued.data["event"]["board_id"], board_id.as_str());
    assert_eq!(queued.data["agent"]["status"], "provisioning");

    let gateway_agent_id = format!("mc-{id}");
    let placement = json!({
        "gateway_agent_id": gateway_agent_id,
        "workspace_path": format!("{WORKSPACE_ROOT}/workspace-{gateway_agent_id}"),
        "openclaw_session_id": format!("agent:{gateway_agent_id}:main"),
    });
    assert_eq!(
        done.data["event"]["data"],
        json!({"job": job, "action": "create", "attempt": 1, "placement": placement})
    );
    // The agent as it is now: placed, and awaiting its check-in.
    assert_eq!(
        done.data["agent"]["gateway_agent_id"],
        gateway_agent_id.as_str()
    );
    assert_eq!(done.data["agent"]["status"], "provisioning");
    assert!(
        done.id > queued.id && queued.id > seen[0].id,
        "ids increase"
    );

    // Resumed right after the creation: the job's two events again, same ids, in order.
    let mut resumed = EventStream::open(&app, AGENTS, Auth::Admin, seen[0].id).await;
    let replayed = messages_until(&mut resumed, &id, "agent.provision.done").await;
    let ids = |messages: &[Message]| messages.iter().map(|m| m.id).collect::<Vec<_>>();
    assert_eq!(ids(&replayed), ids(&seen[1..]));

    // Progress is not a liveness transition.
    let metrics = scrape(&app).await;
    for status in ["provisioning", "healthy", "degraded", "offline"] {
        let line = format!("mc_liveness_transitions_total{{to=\"{status}\"}} 0");
        assert!(metrics.contains(&line), "{line}: {metrics}");
    }
}

#[tokio::test]
async fn a_gateway_that_is_down_streams_retrying_with_the_next_attempt_then_failed_with_why() {
    let gw = fake_with_token().await;
    let app = TestApp::spawn_with(two_second_jobs).await;
    let (gateway_id, board_id) = board_on_fake(&app, &gw).await;
    settled_main_agent(&app, &gateway_id).await;
    gw.stop();
    let mut stream = EventStream::open(&app, AGENTS, Auth::Admin, None).await;

    let id = create_agent_named(&app, &board_id, &unique("Worker")).await;
    let seen = messages_until(&mut stream, &id, "agent.provision.failed").await;
    assert_no_secret(&seen);
    assert_eq!(
        types(&seen)[..2],
        ["agent.created", "agent.provision.queued"]
    );
    let job = job_events(&seen);
    let kinds: Vec<&str> = job.iter().map(|m| m.event.as_str()).collect();
    let retries = &job[1..job.len() - 1];
    assert!(!retries.is_empty(), "{kinds:?}");
    for (n, retry) in retries.iter().enumerate() {
        assert_eq!(retry.event, "agent.provision.retrying", "{kinds:?}");
        let data = &retry.data["event"]["data"];
        assert_eq!(data["action"], "create");
        assert_eq!(data["attempt"], n + 1);
        assert!(
            data["error"]
                .as_str()
                .is_some_and(|e| e.starts_with("create failed, retrying: ")),
            "{data}"
        );
        assert!(
            timestamp(&data["next_attempt_at"]) > timestamp(&retry.data["event"]["created_at"]),
            "the next attempt lies ahead: {data}"
        );
    }

    let failed = job.last().expect("the failure");
    let data = &failed.data["event"]["data"];
    assert_eq!(data["attempt"], retries.len() + 1);
    let error = data["error"].as_str().expect("an error");
    assert!(error.starts_with("create gave up after"), "{error}");
    assert_eq!(failed.data["agent"]["last_provision_error"], error);
    assert_eq!(failed.data["agent"]["status"], "offline");
    // The agent went offline with the job's end, saying why.
    let offline = seen
        .iter()
        .find(|m| m.event == "agent.offline")
        .expect("the transition");
    assert_eq!(
        offline.data["event"]["data"],
        json!({"from": "provisioning", "to": "offline", "reason": error})
    );
}

#[tokio::test]
async fn a_gateway_that_refuses_streams_failed_at_once_without_retrying() {
    let gw = fake_with_token().await;
    let app = spawn_provisioning_app().await;
    let (_, board_id) = managed_board(&app, &gw.url(), Some("not-the-token")).await;
    let mut stream = EventStream::open(&app, AGENTS, Auth::Admin, None).await;
    let id = create_agent_named(&app, &board_id, &unique("Worker")).await;
    let seen = messages_until(&mut stream, &id, "agent.provision.failed").await;
    assert_no_secret(&seen);
    let job = job_events(&seen);
    let kinds: Vec<&str> = job.iter().map(|m| m.event.as_str()).collect();
    assert_eq!(kinds, ["agent.provision.queued", "agent.provision.failed"]);
    let data = &job[1].data["event"]["data"];
    assert_eq!(data["attempt"], 1);
    assert_eq!(
        data["error"],
        "create failed: token rejected by the gateway"
    );
    assert!(
        !job[1].data["event"].to_string().contains("not-the-token"),
        "{:?}",
        job[1]
    );
}

#[tokio::test]
async fn the_event_types_filter_and_webhook_subscriptions_take_progress_events_and_refuse_unknown_ones()
 {
    let gw = fake_with_token().await;
    let app = spawn_provisioning_app().await;
    let (gateway_id, board_id) = board_on_fake(&app, &gw).await;
    settled_main_agent(&app, &gateway_id).await;

    let wanted = json!([
        "agent.provision.done",
        "agent.provision.failed",
        "agent.wakeup.sent"
    ]);
    let webhook = expect_success(
        app.send(
            Method::POST,
            "/api/v1/webhooks",
            Auth::Admin,
            Some(&json!({
                "url": "http://127.0.0.1:9/hook",
                "event_types": wanted,
                "secret": "a-webhook-secret-of-some-length",
            })),
        )
        .await,
    )
    .await;
    let mut listed: Vec<Value> = webhook["event_types"].as_array().unwrap().clone();
    listed.sort_by_key(ToString::to_string);
    assert_eq!(Value::Array(listed), wanted);
    for (method, path) in [
        (Method::POST, "/api/v1/webhooks".to_owned()),
        (
            Method::PATCH,
            format!("/api/v1/webhooks/{}", id_of(&webhook)),
        ),
    ] {
        let body = expect_validation_error(
            app.send(
                method,
                &path,
                Auth::Admin,
                Some(&json!({
                    "url": "http://127.0.0.1:9/hook",
                    "event_types": ["agent.provision.exploded"],
                    "secret": "a-webhook-secret-of-some-length",
                })),
            )
            .await,
            &["body", "event_types"],
        )
        .await;
        assert!(
            body.to_string().contains("agent.provision.exploded"),
            "{body}"
        );
    }
    let unknown = format!("{AGENTS}?event_types=agent.provision.done,agent.provision.exploded");
    let body = expect_validation_error(
        app.send(Method::GET, &unknown, Auth::Admin, None).await,
        &["query", "event_types"],
    )
    .await;
    assert!(
        body.to_string().contains("agent.provision.exploded"),
        "{body}"
    );

    let only_done = format!("{AGENTS}?event_types=agent.provision.done");
    let mut stream = EventStream::open(&app, &only_done, Auth::Admin, None).await;
    let id = create_agent_named(&app, &board_id, &unique("Worker")).await;
    let first = stream.next().await;
    assert_eq!(
        first.event, "agent.provision.done",
        "created and queued are left out"
    );
    assert_eq!(first.data["event"]["agent_id"], id.as_str());

    // The subscription queued a delivery of that event.
    let deliveries = format!("/api/v1/webhooks/{}/deliveries", id_of(&webhook));
    let page = expect_success(app.send(Method::GET, &deliveries, Auth::Admin, None).await).await;
    let delivered: Vec<&Value> = page["items"].as_array().unwrap().iter().collect();
    assert!(
        delivered.iter().any(
            |d| d["event_type"] == "agent.provision.done" && d["event_id"] == first.id.unwrap()
        ),
        "{page}"
    );
    assert!(
        delivered
            .iter()
            .all(|d| d["event_type"] != "agent.provision.queued"),
        "{page}"
    );
}

/// Settings of the two replicas: quick gateway retries, a 1 s check-in and 3 s jobs.
fn replica_settings(config: &mut ServerConfig) {
    quick_gateway_settings(config);
    config.lifecycle.checkin_timeout = Duration::from_secs(1);
    config.lifecycle.job_timeout = Duration::from_secs(3);
}

#[tokio::test]
async fn jobs_queued_and_run_on_one_replica_and_their_outcome_show_on_the_other_at_once() {
    let database_url = TestPostgres::shared().fresh_schema_url().await;
    let gw = fake_with_token().await;
    let a = TestApp::spawn_on(Some(database_url.clone()), replica_settings).await;
    // A leads (acts on check-in deadlines), so what B shows of them it learnt from A.
    eventually("replica A to lead", || async {
        scrape(&a).await.contains("mc_leader 1")
    })
    .await;
    let b = TestApp::spawn_on(Some(database_url), replica_settings).await;
    let (gateway_id, board_id) = board_on_fake(&a, &gw).await;
    settled_main_agent(&a, &gateway_id).await;

    // Created and provisioned through A: B shows where the job put them, at once, and
    // that they await their check-in (not offline).
    let worker = create_agent_named(&a, &board_id, &unique("Worker")).await;
    let silent = create_agent_named(&a, &board_id, &unique("Silent")).await;
    settled_jobs(&a, &worker, 1).await;
    settled_jobs(&a, &silent, 1).await;
    for id in [&worker, &silent] {
        let gateway_agent_id = format!("mc-{id}");
        eventually("B to show the placement", || async {
            b.agent(id).await["gateway_agent_id"] == gateway_agent_id.as_str()
        })
        .await;
        let on_b = b.agent(id).await;
        assert_eq!(
            on_b["workspace_path"],
            format!("{WORKSPACE_ROOT}/workspace-{gateway_agent_id}")
        );
        assert_eq!(
            on_b["openclaw_session_id"],
            format!("agent:{gateway_agent_id}:main")
        );
        assert_eq!(on_b["status"], "provisioning", "{on_b}");
    }
    let agents_md = gw
        .file(&format!("mc-{worker}"), "AGENTS.md")
        .expect("AGENTS.md");
    let token = credential(&agents_md, "AUTH_TOKEN").expect("AUTH_TOKEN");
    expect_success(b.agent_heartbeat(&token, None).await).await;

    // The silent one is given up on by A: B shows why.
    eventually("B to show the silent agent given up on", || async {
        let on_b = b.agent(&silent).await;
        on_b["status"] == "offline"
            && on_b["last_provision_error"]
                == "never checked in: woken 3 times, no heartbeat within 1 s of each wake"
    })
    .await;
    let wakes: Vec<Value> = a
        .activity_of(&silent)
        .await
        .into_iter()
        .filter(|e| e["event_type"] == "agent.wakeup.sent")
        .map(|e| e["data"]["wake"].clone())
        .collect();
    assert_eq!(wakes, [json!(3), json!(2)], "newest first");

    // An update queued on A while the gateway is down: B reads `updating` while it runs,
    // then, once it gives up, the agent's status again and why, with no other event.
    gw.stop();
    expect_success(
        a.patch_agent(&worker, &json!({"name": unique("Renamed")}))
            .await,
    )
    .await;
    eventually("B to read updating", || async {
        b.agent(&worker).await["status"] == "updating"
    })
    .await;
    eventually("B to show why the update gave up", || async {
        b.agent(&worker).await["last_provision_error"]
            .as_str()
            .is_some_and(|e| e.starts_with("update gave up after"))
    })
    .await;
    let on_b = b.agent(&worker).await;
    assert_eq!(on_b["status"], "healthy", "{on_b}");
    assert_eq!(
        on_b["last_provision_error"],
        a.agent(&worker).await["last_provision_error"]
    );
    let newest = &a.activity_of(&worker).await[0];
    assert_eq!(newest["event_type"], "agent.provision.failed", "{newest}");
}
