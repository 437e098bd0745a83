//! `/metrics`: Prometheus text with request latency by route, heartbeats, agents by status,
//! liveness transitions, open streams, database pool use and the reads a replica makes to
//! follow the others.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{Auth, TestApp, eventually};
use crate::sse::EventStream;

/// The scraped exposition.
async fn scrape(app: &TestApp) -> String {
    let response = app.send(Method::GET, "/metrics", Auth::None, None).await;
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()[reqwest::header::CONTENT_TYPE]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    response.text().await.expect("a text body")
}

/// The value of the sample `series` (name with its labels exactly as exposed), or 0.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |value| value.parse().expect("a numeric sample"))
}

#[tokio::test]
async fn requests_are_counted_and_timed_by_route_method_and_status_class() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    for _ in 0..3 {
        app.agent_with_token(&board.board_id).await;
    }
    let missing = app.get_agent("0190f5c2-7c1e-7000-8000-000000000000").await;
    assert_eq!(missing.status(), 404);
    app.send(Method::GET, "/no/such/page/1", Auth::None, None)
        .await;
    app.send(Method::GET, "/no/such/page/2", Auth::None, None)
        .await;

    let text = scrape(&app).await;
    let created = r#"mc_http_requests_total{route="/api/v1/agents",method="POST",status="2xx"}"#;
    assert_eq!(sample(&text, created), 3.0, "{text}");
    let not_found =
        r#"mc_http_requests_total{route="/api/v1/agents/{agent_id}",method="GET",status="4xx"}"#;
    assert_eq!(sample(&text, not_found), 1.0);
    let unmatched = r#"mc_http_requests_total{route="unmatched",method="GET",status="4xx"}"#;
    assert_eq!(
        sample(&text, unmatched),
        2.0,
        "unknown paths share one label value"
    );

    let labels = r#"route="/api/v1/agents",method="POST""#;
    let count = sample(
        &text,
        &format!("mc_http_request_duration_seconds_count{{{labels}}}"),
    );
    assert_eq!(count, 3.0);
    let inf = sample(
        &text,
        &format!("mc_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}}"),
    );
    assert_eq!(inf, 3.0, "the +Inf bucket holds every observation");
    let five_seconds = sample(
        &text,
        &format!("mc_http_request_duration_seconds_bucket{{{labels},le=\"5\"}}"),
    );
    assert!(five_seconds <= inf, "buckets are cumulative");
    assert!(
        sample(
            &text,
            &format!("mc_http_request_duration_seconds_sum{{{labels}}}")
        ) > 0.0
    );
    assert!(text.contains("# TYPE mc_http_request_duration_seconds histogram"));
}

#[tokio::test]
async fn heartbeats_agents_by_status_and_transitions_are_exposed() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let _silent = app.agent_with_token(&board.board_id).await;
    let healthy = app.agent_with_token(&board.board_id).await;
    let degraded = app.agent_with_token(&board.board_id).await;
    let leaving = app
        .agent_with_config(
            &board.board_id,
            Some(json!({"interval_seconds": 1, "missing_tolerance": 1})),
        )
        .await;
    let before = sample(&scrape(&app).await, "mc_heartbeats_total");
    app.report_status(&healthy, "healthy").await;
    app.report_status(&healthy, "healthy").await;
    app.report_status(&degraded, "degraded").await;
    app.report_status(&leaving, "healthy").await;
    let after = sample(&scrape(&app).await, "mc_heartbeats_total");
    assert_eq!(after - before, 4.0, "each accepted heartbeat counts once");

    let leaving_id = leaving.id.clone();
    eventually("the silent agent to go offline", || {
        let app = &app;
        let id = leaving_id.clone();
        async move { app.count_events(&id, "agent.offline").await == 1 }
    })
    .await;
    let text = scrape(&app).await;
    assert_eq!(
        sample(&text, r#"mc_agents{status="provisioning"}"#),
        1.0,
        "{text}"
    );
    assert_eq!(sample(&text, r#"mc_agents{status="healthy"}"#), 1.0);
    assert_eq!(sample(&text, r#"mc_agents{status="degraded"}"#), 1.0);
    assert_eq!(sample(&text, r#"mc_agents{status="offline"}"#), 1.0);
    assert_eq!(
        sample(&text, r#"mc_liveness_transitions_total{to="healthy"}"#),
        2.0
    );
    assert_eq!(
        sample(&text, r#"mc_liveness_transitions_total{to="degraded"}"#),
        1.0
    );
    assert_eq!(
        sample(&text, r#"mc_liveness_transitions_total{to="offline"}"#),
        1.0
    );
    assert!(text.contains("# TYPE mc_heartbeats_total counter"));
}

#[tokio::test]
async fn open_event_streams_and_database_pools_are_exposed() {
    let app = TestApp::spawn().await;
    let stream = EventStream::open(&app, "/api/v1/activity/stream", Auth::Admin, None).await;
    let text = scrape(&app).await;
    assert_eq!(sample(&text, "mc_event_stream_clients"), 1.0);
    drop(stream);
    eventually("the closed stream to be forgotten", || {
        let app = &app;
        async move { sample(&scrape(app).await, "mc_event_stream_clients") == 0.0 }
    })
    .await;

    // Pools by backend: SQLite has a writer and readers, PostgreSQL one shared pool.
    let text = scrape(&app).await;
    let pools: Vec<&str> = if text.contains(r#"pool="writer""#) {
        vec!["writer", "reader"]
    } else {
        vec!["postgres"]
    };
    for pool in pools {
        let max = sample(
            &text,
            &format!("mc_db_pool_max_connections{{pool=\"{pool}\"}}"),
        );
        assert!(max >= 1.0, "{pool}: {text}");
        for state in ["busy", "idle"] {
            let series = format!("mc_db_pool_connections{{pool=\"{pool}\",state=\"{state}\"}}");
            assert!(text.contains(&series), "{series}: {text}");
        }
    }
    assert!(text.contains("mc_liveness_pending_writes "));
}

#[tokio::test]
async fn a_replica_counts_the_reads_it_makes_to_follow_another() {
    // Two replicas on one PostgreSQL, whatever `MC_TEST_BACKEND` says.
    let database_url = mc_testpg::TestPostgres::shared().fresh_schema_url().await;
    let a = TestApp::spawn_on(Some(database_url.clone()), |_| {}).await;
    let b = TestApp::spawn_on(Some(database_url), |_| {}).await;
    let board = a.unmanaged_board().await;
    let agent = a.agent_with_token(&board.board_id).await;
    eventually("B to take the agent's token", || async {
        b.agent_heartbeat(&agent.token, None).await.status() == StatusCode::OK
    })
    .await;

    let followed = scrape(&b).await;
    assert!(followed.contains("# TYPE mc_feed_reads_total counter"));
    assert!(
        sample(&followed, "mc_feed_reads_total{read=\"agents\"}") >= 1.0,
        "{followed}"
    );
    assert_eq!(
        sample(&followed, "mc_feed_reads_total{read=\"reload\"}"),
        0.0
    );
    // A replica's own events are in its memory already: nothing to read.
    let own = scrape(&a).await;
    assert_eq!(
        sample(&own, "mc_feed_reads_total{read=\"agents\"}"),
        0.0,
        "{own}"
    );
}
