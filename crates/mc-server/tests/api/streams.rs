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

/// Transitions the slow-client test records: comfortably more than the feed buffers for a
/// subscriber (4096 events) plus what the socket and HTTP write buffers of a client that
/// does not read can hold.
const FLOOD_TRANSITIONS: usize = 8_000;

/// Agents heartbeating at once in the slow-client test.
const FLOOD_AGENTS: usize = 10;

/// A raw HTTP/1.1 client of `path` with a small receive buffer: it reads the response
/// head, then nothing until told to, so the server's writes to it stall soon.
struct StalledClient {
    socket: tokio::net::TcpStream,
    received: Vec<u8>,
}

impl StalledClient {
    async fn open(app: &TestApp, path: &str) -> Self {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let address: std::net::SocketAddr = app
            .address
            .trim_start_matches("http://")
            .parse()
            .expect("a socket address");
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
        socket.set_recv_buffer_size(65_536).expect("SO_RCVBUF");
        let mut socket = socket.connect(address).await.expect("connected");
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\n\
             Accept: text/event-stream\r\nConnection: close\r\n\r\n",
            app.admin_token
        );
        socket.write_all(request.as_bytes()).await.expect("sent");
        let mut received = Vec::new();
        while !received.windows(4).any(|w| w == b"\r\n\r\n") {
            let mut chunk = [0_u8; 256];
            let n = socket.read(&mut chunk).await.expect("the head reads");
            assert!(n > 0, "the server closed before answering");
            received.extend_from_slice(&chunk[..n]);
        }
        let head = String::from_utf8_lossy(&received);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        Self { socket, received }
    }

    /// Reads everything until the server closes the connection; the SSE messages sent.
    async fn read_to_end(mut self) -> Vec<crate::sse::Message> {
        use tokio::io::AsyncReadExt as _;
        tokio::time::timeout(
            Duration::from_secs(60),
            self.socket.read_to_end(&mut self.received),
        )
        .await
        .expect("the server ends the lagging stream")
        .expect("the stream reads");
        let text = String::from_utf8_lossy(&self.received).into_owned();
        let (_, body) = text.split_once("\r\n\r\n").expect("a response head");
        crate::sse::parse_messages(&dechunk(body))
    }
}

/// The payload of an HTTP/1.1 chunked body.
fn dechunk(mut body: &str) -> String {
    let mut payload = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).expect("a chunk size");
        if size == 0 || rest.len() < size {
            break;
        }
        payload.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    payload
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_slows_nobody_is_cut_off_with_a_reason_and_resumes_without_gaps() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let mut agents = Vec::new();
    for _ in 0..FLOOD_AGENTS {
        agents.push(app.agent_with_token(&board.board_id).await);
    }
    let start_id = logged_ids(&app).await.last().copied().unwrap_or(0);
    let stalled = StalledClient::open(&app, ACTIVITY).await;
    // A client that keeps up, reading as fast as events come.
    let mut reader = EventStream::open(&app, ACTIVITY, Auth::Admin, None).await;
    let expected = FLOOD_TRANSITIONS;
    let keeping_up = tokio::spawn(async move {
        let mut ids = Vec::with_capacity(expected);
        while ids.len() < expected {
            let message = reader.next().await;
            assert_ne!(message.event, "lagged", "a reading client is never cut off");
            ids.push(message.id.expect("an id"));
        }
        ids
    });

    // Every heartbeat flips its agent between healthy and degraded: one transition each.
    let per_agent = FLOOD_TRANSITIONS / FLOOD_AGENTS;
    let slowest = futures::future::join_all(agents.iter().map(|agent| {
        let app = &app;
        async move {
            let mut slowest = Duration::ZERO;
            for i in 0..per_agent {
                let status = if i % 2 == 0 { "degraded" } else { "healthy" };
                let started = std::time::Instant::now();
                app.report_status(agent, status).await;
                slowest = slowest.max(started.elapsed());
            }
            slowest
        }
    }))
    .await
    .into_iter()
    .max()
    .unwrap_or_default();
    assert!(
        slowest < Duration::from_secs(5),
        "a heartbeat took {slowest:?} while a client stalled"
    );
    let kept_up = tokio::time::timeout(Duration::from_secs(60), keeping_up)
        .await
        .expect("the reading client gets every event")
        .expect("the reader does not panic");
    assert!(kept_up.windows(2).all(|w| w[0] < w[1]), "in id order");

    // The stalled client, read at last: what fitted in the buffers, then the reason it
    // was cut off, then the end of the stream.
    let messages = stalled.read_to_end().await;
    let lagged = messages.last().expect("something was sent");
    assert_eq!(lagged.event, "lagged", "{lagged:?}");
    let reason = lagged.data.as_str().unwrap_or_default();
    assert!(reason.contains("Last-Event-ID"), "{reason}");
    let before: Vec<i64> = messages.iter().filter_map(|m| m.id).collect();
    assert!(
        before.len() < FLOOD_TRANSITIONS,
        "only what the buffers held: {} events",
        before.len()
    );

    // Resumed from its last id, it gets exactly what it missed.
    let last_seen = before.last().copied().unwrap_or(start_id);
    let mut resumed = EventStream::open(&app, ACTIVITY, Auth::Admin, Some(last_seen)).await;
    let mut all = before.clone();
    while all.len() < kept_up.len() {
        all.push(resumed.next().await.id.expect("an id"));
    }
    assert_eq!(all, kept_up, "no gap and no duplicate after the resume");
}
