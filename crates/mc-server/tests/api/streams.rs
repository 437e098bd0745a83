//! Live event streams: `/api/v1/activity/stream` and `/api/v1/agents/stream` push every
//! agent event as it is recorded, filter by board, agent and type, resume from
//! `Last-Event-ID` without gaps or duplicates, keep idle connections alive and end cleanly
//! when the server shuts down.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{
    Auth, TestApp, expect_denied, expect_success, expect_validation_error, unique,
};
use crate::sse::{EventStream, Frame};

const ACTIVITY: &str = "/api/v1/activity/stream";
const AGENTS: &str = "/api/v1/agents/stream";

/// Heartbeat settings that make a silent agent go offline after one second.
fn one_second() -> Option<Value> {
    Some(json!({"interval_seconds": 1, "missing_tolerance": 1}))
}

/// The ids of every recorded event, oldest first, as the activity list reports them.
async fn logged_ids(app: &TestApp) -> Vec<i64> {
    let page = expect_success(app.list_activity(Auth::Admin, "limit=200").await).await;
    let mut ids: Vec<i64> = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|e| e["id"].as_i64().expect("an integer id"))
        .collect();
    ids.reverse();
    ids
}

#[tokio::test]
async fn activity_stream_pushes_creation_first_heartbeat_and_offline_as_they_happen() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let mut stream = EventStream::open(&app, ACTIVITY, Auth::Admin, None).await;

    let agent = app.agent_with_config(&board.board_id, one_second()).await;
    let created = stream.next_of("agent.created", &agent.id).await;
    assert_eq!(created.data["event_type"], "agent.created");
    assert_eq!(created.data["board_id"], board.board_id.as_str());
    assert_eq!(
        created.id,
        created.data["id"].as_i64(),
        "the SSE id is the event id"
    );

    app.report_status(&agent, "healthy").await;
    let healthy = stream.next_of("agent.healthy", &agent.id).await;
    assert!(healthy.id > created.id, "ids increase");

    // Silence beyond the one-second tolerance: pushed, not polled.
    let offline = stream.next_of("agent.offline", &agent.id).await;
    assert_eq!(
        offline.data["data"],
        json!({"from": "healthy", "to": "offline"})
    );
    assert!(offline.id > healthy.id);
}

#[tokio::test]
async fn agents_stream_carries_the_agent_as_it_is_now_and_null_once_deleted() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let mut stream = EventStream::open(&app, AGENTS, Auth::Admin, None).await;

    let agent = app.agent_with_token(&board.board_id).await;
    app.report_status(&agent, "degraded").await;
    let degraded = stream.next_of("agent.degraded", &agent.id).await;
    assert_eq!(degraded.data["event"]["event_type"], "agent.degraded");
    assert_eq!(degraded.data["agent"]["id"], agent.id.as_str());
    assert_eq!(degraded.data["agent"]["status"], "degraded");
    assert!(degraded.data["agent"]["last_seen_at"].is_string());

    expect_success(app.delete_agent(&agent.id).await).await;
    let deleted = stream.next_of("agent.deleted", &agent.id).await;
    assert_eq!(deleted.data["agent"], Value::Null);
}

#[tokio::test]
async fn streams_deliver_only_what_the_filters_ask_for() {
    let app = TestApp::spawn().await;
    let watched = app.unmanaged_board().await;
    let other = app.unmanaged_board().await;
    let path = format!(
        "{AGENTS}?board_id={}&event_types=agent.healthy,agent.deleted",
        watched.board_id
    );
    let mut stream = EventStream::open(&app, &path, Auth::Admin, None).await;

    let elsewhere = app.agent_with_token(&other.board_id).await;
    app.report_status(&elsewhere, "healthy").await;
    let here = app.agent_with_token(&watched.board_id).await;
    app.report_status(&here, "degraded").await;
    app.report_status(&here, "healthy").await;

    let first = stream.next().await;
    assert_eq!(
        first.event, "agent.healthy",
        "created and degraded are filtered out"
    );
    assert_eq!(first.data["event"]["agent_id"], here.id.as_str());
    expect_success(app.delete_agent(&here.id).await).await;
    let second = stream.next().await;
    assert_eq!(second.event, "agent.deleted");
    assert!(
        stream
            .message_within(Duration::from_millis(300))
            .await
            .is_none(),
        "nothing about the other board"
    );
}

#[tokio::test]
async fn an_agent_token_streams_only_that_agents_own_events() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let me = app.agent_with_token(&board.board_id).await;
    let someone_else = app.agent_with_token(&board.board_id).await;
    let mut stream = EventStream::open(&app, ACTIVITY, Auth::Agent(&me.token), Some(0)).await;

    app.report_status(&someone_else, "healthy").await;
    app.report_status(&me, "healthy").await;
    // From the log (Last-Event-ID 0): my creation and token rotation; then live: healthy.
    let mut types = Vec::new();
    for _ in 0..3 {
        let message = stream.next().await;
        assert_eq!(message.data["agent_id"], me.id.as_str());
        types.push(message.event);
    }
    assert_eq!(
        types,
        ["agent.created", "agent.token_rotated", "agent.healthy"]
    );
}

#[tokio::test]
async fn last_event_id_resumes_with_exactly_the_missed_events_then_live_ones() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    for _ in 0..5 {
        app.agent_with_token(&board.board_id).await;
    }
    let logged = logged_ids(&app).await;
    assert_eq!(logged.len(), 10, "five creations and five rotations");
    let resume_after = logged[3];

    let mut stream = EventStream::open(&app, ACTIVITY, Auth::Admin, Some(resume_after)).await;
    let mut received = Vec::new();
    for _ in 0..6 {
        received.push(stream.next().await.id.expect("an id"));
    }
    assert_eq!(received, logged[4..], "the missed events, in order");

    let live = app.agent_with_token(&board.board_id).await;
    let next = stream.next().await;
    assert_eq!(next.event, "agent.created");
    assert_eq!(next.data["agent_id"], live.id.as_str());
    assert!(next.id > received.last().copied());
}

#[tokio::test]
async fn reconnecting_under_load_loses_and_repeats_nothing() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let writer = {
        let client = app.client.clone();
        let url = format!("{}/api/v1/agents", app.address);
        let token = app.admin_token.clone();
        let board_id = board.board_id.clone();
        tokio::spawn(async move {
            for _ in 0..60 {
                let response = client
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&json!({"name": unique("busy"), "board_id": board_id}))
                    .send()
                    .await
                    .expect("create request");
                assert!(response.status().is_success());
            }
        })
    };

    // Read a few events, drop the connection, resume from the last id; repeat.
    let mut received = Vec::new();
    let mut last = Some(0);
    while received.len() < 60 {
        let mut stream = EventStream::open(&app, ACTIVITY, Auth::Admin, last).await;
        for _ in 0..7 {
            if received.len() == 60 {
                break;
            }
            let id = stream.next().await.id.expect("an id");
            received.push(id);
            last = Some(id);
        }
    }
    writer.await.expect("the writer finishes");

    let logged = logged_ids(&app).await;
    let unique_ids: BTreeSet<i64> = received.iter().copied().collect();
    assert_eq!(
        unique_ids.len(),
        received.len(),
        "no duplicates: {received:?}"
    );
    assert_eq!(received, logged[..60], "no gaps, in order");
}

#[tokio::test]
async fn idle_streams_receive_keep_alive_comments() {
    let app = TestApp::spawn_with(|config| {
        config.stream_keep_alive = Duration::from_millis(100);
    })
    .await;
    let mut stream = EventStream::open(&app, AGENTS, Auth::Admin, None).await;
    match stream.next_frame().await {
        Some(Frame::Comment(text)) => assert_eq!(text, "keep-alive"),
        other => panic!("expected a keep-alive comment, got {other:?}"),
    }
}

#[tokio::test]
async fn a_graceful_shutdown_ends_open_streams_with_a_reason() {
    let mut app = TestApp::spawn().await;
    let mut stream = EventStream::open(&app, ACTIVITY, Auth::Admin, None).await;
    app.stop().await;
    let last = stream.next().await;
    assert_eq!(last.event, "shutdown");
    assert!(
        last.data
            .as_str()
            .is_some_and(|text| text.contains("Last-Event-ID")),
        "{last:?}"
    );
    assert!(stream.next_frame().await.is_none(), "then the stream ends");
}

#[tokio::test]
async fn streams_refuse_bad_credentials_and_bad_parameters() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let enrollment = app.enrollment_token(&board.board_id, &json!({})).await;
    for path in [ACTIVITY, AGENTS] {
        let anonymous = app.send(Method::GET, path, Auth::None, None).await;
        assert_eq!(anonymous.status(), 401, "{path} without credentials");
        let enrolling = app
            .send(Method::GET, path, Auth::Agent(&enrollment.token), None)
            .await;
        expect_denied(enrolling).await;

        let unknown_type = format!("{path}?event_types=agent.healthy,agent.exploded");
        let body = expect_validation_error(
            app.send(Method::GET, &unknown_type, Auth::Admin, None)
                .await,
            &["query", "event_types"],
        )
        .await;
        assert!(body.to_string().contains("agent.exploded"), "{body}");

        let bad_board = format!("{path}?board_id=not-a-uuid");
        expect_validation_error(
            app.send(Method::GET, &bad_board, Auth::Admin, None).await,
            &["query", "board_id"],
        )
        .await;

        let bad_resume = app
            .request(Method::GET, path, Auth::Admin)
            .header("Last-Event-ID", "yesterday")
            .send()
            .await
            .expect("sent");
        expect_validation_error(bad_resume, &["header", "Last-Event-ID"]).await;

        let negative = format!("{path}?last_event_id=-4");
        expect_validation_error(
            app.send(Method::GET, &negative, Auth::Admin, None).await,
            &["query", "last_event_id"],
        )
        .await;
    }
    // Nothing was created by the refused requests.
    let agents = expect_success(app.list_agents("").await).await;
    assert_eq!(agents["total"], 0);
}
