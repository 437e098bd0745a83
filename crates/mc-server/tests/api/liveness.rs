//! The liveness engine: silent agents go offline after their own tolerance, each
//! transition is recorded once, and a restart neither loses `last_seen_at` nor blames
//! agents for the server's downtime.

use std::time::{Duration, Instant};

use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{
    AgentFixture, Auth, TestApp, agent_token_header, eventually, expect_json, expect_success,
    timestamp, unique,
};

/// The fastest heartbeat settings the contract allows: one-second interval and tolerance.
fn one_second() -> Option<Value> {
    Some(json!({"interval_seconds": 1, "missing_tolerance": 1}))
}

/// The newest event of `event_type` about `agent_id`.
async fn newest_event(app: &TestApp, agent_id: &str, event_type: &str) -> Option<Value> {
    app.activity_of(agent_id)
        .await
        .into_iter()
        .find(|event| event["event_type"] == event_type)
}

/// Waits until the engine has recorded `agent.offline` for the agent.
async fn wait_until_offline(app: &TestApp, agent: &AgentFixture) {
    let id = agent.id.as_str();
    eventually("the agent.offline event", || async move {
        app.count_events(id, "agent.offline").await >= 1
    })
    .await;
}

#[tokio::test]
async fn silent_agent_goes_offline_after_its_tolerance_and_it_is_recorded_once() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let agent = app.agent_with_config(&board.board_id, one_second()).await;
    let patient = app.agent_with_token(&board.board_id).await;
    expect_json(
        app.agent_heartbeat(&patient.token, None).await,
        StatusCode::OK,
    )
    .await;

    let beat = expect_json(
        app.agent_heartbeat(&agent.token, None).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(beat["status"], "healthy");
    let last_seen = timestamp(&beat["last_seen_at"]);

    wait_until_offline(&app, &agent).await;

    let event = newest_event(&app, &agent.id, "agent.offline")
        .await
        .expect("an offline event");
    assert_eq!(event["data"], json!({"from": "healthy", "to": "offline"}));
    assert_eq!(event["board_id"], board.board_id);
    assert!(event["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert!(
        timestamp(&event["created_at"]).as_millis() >= last_seen.as_millis() + 1000,
        "not before the tolerance has passed: {event}"
    );
    let read = app.agent(&agent.id).await;
    assert_eq!(read["status"], "offline");
    assert_eq!(
        read["last_seen_at"], beat["last_seen_at"],
        "silence changes nothing else"
    );

    // Reads and further ticks do not record the same transition again.
    for _ in 0..5 {
        app.agent(&agent.id).await;
        expect_json(app.list_agents("").await, StatusCode::OK).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.count_events(&agent.id, "agent.offline").await, 1);

    assert_eq!(
        app.agent(&patient.id).await["status"],
        "healthy",
        "each agent has its own tolerance"
    );
    assert_eq!(app.count_events(&patient.id, "agent.offline").await, 0);
}

#[tokio::test]
async fn offline_agent_that_heartbeats_again_is_healthy_and_its_return_is_recorded() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let agent = app.agent_with_config(&board.board_id, one_second()).await;
    expect_json(
        app.agent_heartbeat(&agent.token, None).await,
        StatusCode::OK,
    )
    .await;
    wait_until_offline(&app, &agent).await;

    let back = expect_json(
        app.agent_heartbeat(&agent.token, None).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(back["status"], "healthy");

    let id = agent.id.as_str();
    let app_ref = &app;
    eventually("the agent.healthy event after offline", || async move {
        app_ref.activity_of(id).await.first().is_some_and(|event| {
            event["event_type"] == "agent.healthy"
                && event["data"] == json!({"from": "offline", "to": "healthy"})
        })
    })
    .await;
    assert_eq!(app.count_events(&agent.id, "agent.offline").await, 1);
}

#[tokio::test]
async fn first_heartbeat_records_the_transition_from_provisioning() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let agent = app.agent_with_token(&board.board_id).await;
    expect_json(
        app.agent_heartbeat(&agent.token, None).await,
        StatusCode::OK,
    )
    .await;

    let id = agent.id.as_str();
    let app_ref = &app;
    eventually("the agent.healthy event", || async move {
        app_ref.count_events(id, "agent.healthy").await == 1
    })
    .await;
    let event = newest_event(&app, &agent.id, "agent.healthy")
        .await
        .expect("the event");
    assert_eq!(
        event["data"],
        json!({"from": "provisioning", "to": "healthy"})
    );

    for _ in 0..3 {
        expect_json(
            app.agent_heartbeat(&agent.token, None).await,
            StatusCode::OK,
        )
        .await;
    }
    assert_eq!(
        app.count_events(&agent.id, "agent.healthy").await,
        1,
        "one event per transition, not per heartbeat"
    );
}

#[tokio::test]
async fn reporting_degraded_is_recorded_once_per_transition() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let agent = app.agent_with_token(&board.board_id).await;
    let auth = Auth::Agent(&agent.token);
    expect_json(
        app.agent_heartbeat(&agent.token, None).await,
        StatusCode::OK,
    )
    .await;

    for _ in 0..3 {
        expect_json(
            app.heartbeat_agent_id(auth, &agent.id, &json!({"status": "degraded"}))
                .await,
            StatusCode::OK,
        )
        .await;
    }

    let id = agent.id.as_str();
    let app_ref = &app;
    eventually("the agent.degraded event", || async move {
        app_ref.count_events(id, "agent.degraded").await >= 1
    })
    .await;
    assert_eq!(app.count_events(&agent.id, "agent.degraded").await, 1);
    let event = newest_event(&app, &agent.id, "agent.degraded")
        .await
        .expect("the event");
    assert_eq!(event["data"], json!({"from": "healthy", "to": "degraded"}));
}

#[tokio::test]
async fn agent_that_keeps_heartbeating_never_goes_offline() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let agent = app.agent_with_config(&board.board_id, one_second()).await;

    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(2500) {
        let read = expect_json(
            app.agent_heartbeat(&agent.token, None).await,
            StatusCode::OK,
        )
        .await;
        assert_eq!(read["status"], "healthy");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    assert_eq!(app.count_events(&agent.id, "agent.offline").await, 0);
}

#[tokio::test]
async fn restart_gives_silent_agents_a_full_tolerance_before_they_go_offline() {
    let mut app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let agent = app.agent_with_config(&board.board_id, one_second()).await;
    expect_json(
        app.agent_heartbeat(&agent.token, None).await,
        StatusCode::OK,
    )
    .await;

    app.stop().await;
    // The server is down for longer than the agent's tolerance.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    app.start().await;

    let read = app.agent(&agent.id).await;
    assert_eq!(
        read["status"], "healthy",
        "the downtime is not the agent's fault"
    );
    assert_eq!(app.count_events(&agent.id, "agent.offline").await, 0);

    wait_until_offline(&app, &agent).await;
    assert_eq!(app.agent(&agent.id).await["status"], "offline");
}

#[tokio::test]
async fn agent_that_went_offline_before_a_restart_stays_offline_after_it() {
    let mut app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let agent = app.agent_with_config(&board.board_id, one_second()).await;
    expect_json(
        app.agent_heartbeat(&agent.token, None).await,
        StatusCode::OK,
    )
    .await;
    wait_until_offline(&app, &agent).await;

    app.restart().await;

    assert_eq!(app.agent(&agent.id).await["status"], "offline");
    // Past the restart grace, still exactly one transition to offline and no return.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(app.agent(&agent.id).await["status"], "offline");
    assert_eq!(app.count_events(&agent.id, "agent.offline").await, 1);
    let events = app.activity_of(&agent.id).await;
    assert_eq!(
        events[0]["event_type"], "agent.offline",
        "nothing happened after the offline event: {events:?}"
    );
}

#[tokio::test]
async fn last_seen_at_survives_a_graceful_restart() {
    let mut app = TestApp::spawn_with(|config| {
        // Only the shutdown flush can persist the heartbeat.
        config.write_behind_interval = Duration::from_secs(3600);
    })
    .await;
    let board = app.unmanaged_board().await;
    let agent = app.agent_with_token(&board.board_id).await;
    app.report_status(&agent, "degraded").await;
    let before = expect_json(
        app.agent_heartbeat(&agent.token, None).await,
        StatusCode::OK,
    )
    .await;
    assert!(before["last_seen_at"].is_string());

    app.restart().await;

    let after = app.agent(&agent.id).await;
    assert_eq!(after["last_seen_at"], before["last_seen_at"]);
    assert_eq!(
        after["status"], "degraded",
        "the reported health survives too"
    );
}

#[tokio::test]
async fn a_heartbeat_is_durable_within_the_write_behind_window_without_a_shutdown() {
    let app = TestApp::spawn_with(|config| {
        config.write_behind_interval = Duration::from_millis(200);
    })
    .await;
    let board = app.unmanaged_board().await;
    let agent = app.agent_with_token(&board.board_id).await;
    // The first heartbeat changes the status (a row write), the later ones only the
    // times (the liveness log).
    for _ in 0..3 {
        let body = expect_json(
            app.agent_heartbeat(&agent.token, None).await,
            StatusCode::OK,
        )
        .await;
        let seen = timestamp(&body["last_seen_at"]);
        let answered = Instant::now();
        eventually("the heartbeat is durable", || async {
            app.durable_last_seen(&agent.id).await == Some(seen)
        })
        .await;
        assert!(
            answered.elapsed() < Duration::from_secs(1),
            "durable {:?} after the answer",
            answered.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn logged_heartbeats_are_folded_into_the_rows_and_survive_restarts() {
    let mut app = TestApp::spawn_with(|config| {
        config.liveness_log_fold_interval = Duration::from_millis(100);
    })
    .await;
    let board = app.unmanaged_board().await;
    let agent = app.agent_with_token(&board.board_id).await;
    app.agent_heartbeat(&agent.token, None).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let last = expect_json(
        app.agent_heartbeat(&agent.token, None).await,
        StatusCode::OK,
    )
    .await;
    let seen = timestamp(&last["last_seen_at"]);
    eventually("the heartbeat is folded into the agent's row", || async {
        app.row_last_seen(&agent.id).await == Some(seen)
    })
    .await;
    // Several folds pass: the value stays, none moves it back.
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(app.row_last_seen(&agent.id).await, Some(seen));
    assert_eq!(app.durable_last_seen(&agent.id).await, Some(seen));

    app.restart().await;
    let after = app.agent(&agent.id).await;
    assert_eq!(after["last_seen_at"], last["last_seen_at"]);
    assert_eq!(after["status"], "healthy");
}

#[tokio::test]
async fn agents_tokens_and_enrollments_survive_a_restart() {
    let mut app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let agent = app.agent_with_token(&board.board_id).await;
    let enrollment = app
        .enrollment_token(&board.board_id, &json!({"max_uses": 2}))
        .await;
    let bootstrap = json!({"name": unique("newcomer")});
    let first = app
        .heartbeat_by_name(Auth::Agent(&enrollment.token), &bootstrap)
        .await;
    assert!(agent_token_header(&first).is_some());
    let enrolled = expect_success(first).await;
    let events_before = app.activity_of(&agent.id).await;

    app.restart().await;

    expect_json(
        app.agent_heartbeat(&agent.token, None).await,
        StatusCode::OK,
    )
    .await;
    let retry = app
        .heartbeat_by_name(Auth::Agent(&enrollment.token), &bootstrap)
        .await;
    let retry_token = agent_token_header(&retry).expect("the retry still mints a token");
    assert_eq!(expect_success(retry).await["id"], enrolled["id"]);
    expect_json(
        app.agent_heartbeat(&retry_token, None).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(app.listed_enrollment_token(&enrollment).await["uses"], 1);
    let events_after = app.activity_of(&agent.id).await;
    assert!(
        events_after.ends_with(&events_before),
        "the activity log is durable: {events_before:?} / {events_after:?}"
    );
}

#[tokio::test]
async fn hundred_agents_heartbeating_concurrently_all_succeed_and_end_healthy() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let agents: Vec<AgentFixture> =
        join_all((0..100).map(|_| app.agent_with_token(&board.board_id))).await;

    for round in 0..3 {
        let responses = join_all(agents.iter().map(|agent| async {
            let response = match round {
                0 => app.agent_heartbeat(&agent.token, None).await,
                1 => {
                    app.heartbeat_by_name(Auth::Agent(&agent.token), &json!({"name": agent.name}))
                        .await
                }
                _ => {
                    app.heartbeat_agent_id(Auth::Agent(&agent.token), &agent.id, &json!({}))
                        .await
                }
            };
            (
                agent.id.clone(),
                expect_json(response, StatusCode::OK).await,
            )
        }))
        .await;
        for (id, read) in responses {
            assert_eq!(read["id"], id.as_str());
            assert_eq!(read["status"], "healthy");
        }
    }

    let page = expect_json(
        app.list_agents(&format!("board_id={}", board.board_id))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(page["total"], 100);
    let items = page["items"].as_array().expect("items");
    assert_eq!(items.len(), 100);
    for item in items {
        assert_eq!(item["status"], "healthy", "{item}");
        assert!(item["last_seen_at"].is_string(), "{item}");
    }
}
