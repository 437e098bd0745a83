//! A PostgreSQL that goes away and comes back. While it is gone, requests that need it
//! answer 503 with a clear detail and heartbeats keep being answered from memory; when it
//! returns, the same server process serves again and writes behind what it held, so
//! nothing acknowledged is lost.
//!
//! These tests run on PostgreSQL whatever `MC_TEST_BACKEND` says: each starts a
//! throwaway server of its own, so stopping it disturbs no other test.

use mc_domain::Timestamp;
use mc_testpg::TestPostgres;
use reqwest::StatusCode;
use serde_json::json;
use sqlx::Connection as _;

use crate::helpers::{TestApp, eventually, expect_json, expect_success, id_of, timestamp, unique};

/// What a client is told while the database is away.
const UNAVAILABLE_DETAIL: &str = "the database is unavailable; retry shortly";

/// The agent's `last_seen_at` as stored in its database row (not as held in memory, nor
/// in the liveness log before it is folded into the row).
async fn stored_last_seen(database_url: &str, agent_id: &str) -> Option<Timestamp> {
    let mut conn = sqlx::PgConnection::connect(database_url).await.ok()?;
    let millis: Option<i64> = sqlx::query_scalar(
        "SELECT (extract(epoch FROM last_seen_at) * 1000)::bigint
         FROM agent_liveness WHERE agent_id = $1::uuid",
    )
    .bind(agent_id)
    .fetch_one(&mut conn)
    .await
    .ok()?;
    let _ = conn.close().await;
    millis.map(Timestamp::from_millis)
}

async fn expect_unavailable(response: reqwest::Response) {
    let body = expect_json(response, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(body["detail"], UNAVAILABLE_DETAIL);
    assert!(body["request_id"].is_string(), "{body}");
}

#[tokio::test]
async fn a_database_outage_is_503_and_the_server_recovers_by_itself_losing_nothing() {
    let pg = TestPostgres::start();
    let database_url = pg.fresh_schema_url().await;
    let app = TestApp::spawn_on(Some(database_url.clone()), |config| {
        // The check below reads the agent's row: fold the liveness log into it quickly.
        config.liveness_log_fold_interval = std::time::Duration::from_millis(100);
    })
    .await;
    let board = app.unmanaged_board().await;
    let agent = app.agent_with_token(&board.board_id).await;
    let first = expect_json(
        app.agent_heartbeat(&agent.token, None).await,
        StatusCode::OK,
    )
    .await;
    let first_seen = timestamp(&first["last_seen_at"]);
    eventually("the first heartbeat is written behind", || async {
        stored_last_seen(&database_url, &agent.id).await == Some(first_seen)
    })
    .await;

    pg.stop();

    expect_unavailable(app.list_agents("").await).await;
    expect_unavailable(app.readyz().await).await;
    let slug = unique("board");
    expect_unavailable(
        app.create_board(&json!({
            "name": "During the outage",
            "slug": slug,
            "description": "Created while the database is away.",
            "gateway_id": board.gateway_id,
        }))
        .await,
    )
    .await;
    // The heartbeat path needs no database: it is answered from memory.
    let during = expect_json(
        app.agent_heartbeat(&agent.token, None).await,
        StatusCode::OK,
    )
    .await;
    let during_seen = timestamp(&during["last_seen_at"]);
    assert!(during_seen > first_seen);

    pg.resume();

    eventually(
        "the heartbeat held during the outage is written",
        || async { stored_last_seen(&database_url, &agent.id).await == Some(during_seen) },
    )
    .await;
    expect_success(app.readyz().await).await;
    let agents = expect_success(app.list_agents("").await).await;
    assert_eq!(agents["total"], 1);
    assert_eq!(id_of(&agents["items"][0]), agent.id);
    expect_success(app.get_board(&board.board_id).await).await;
    let created = expect_success(
        app.create_board(&json!({
            "name": "After the outage",
            "slug": slug,
            "description": "Created once the database is back.",
            "gateway_id": board.gateway_id,
        }))
        .await,
    )
    .await;
    assert_eq!(created["slug"], slug.as_str());
}
