//! Creating an agent is never left half done: once a create has reached the database it
//! finishes (stored, known to the server's memory, handed to provisioning) even when the
//! client goes away, and an enrollment retried after a lost answer finds the agent, even
//! on a replica that has not followed its creation yet.

use std::time::Duration;

use mc_testpg::TestPostgres;
use reqwest::StatusCode;
use serde_json::json;
use sqlx::Connection as _;
use tokio::io::AsyncWriteExt as _;

use crate::helpers::{
    Auth, TestApp, agent_token_header, eventually, expect_json, expect_success, id_of, unique,
};

/// How long the server is given to see that the client closed its connection (and drop
/// the request) before the database lets the create go on. Only whether the test can
/// detect a create that dies with its request depends on it: a slower server makes the
/// test pass either way, never fail.
const DISCONNECT_NOTICED: Duration = Duration::from_millis(1_000);

/// Sends `POST /api/v1/agents/heartbeat` with the enrollment token over a connection of
/// its own and returns the connection without reading the answer.
async fn send_enrollment(app: &TestApp, enrollment: &str, name: &str) -> tokio::net::TcpStream {
    let address = app.address.trim_start_matches("http://");
    let body = json!({"name": name}).to_string();
    let request = format!(
        "POST /api/v1/agents/heartbeat HTTP/1.1\r\nHost: {address}\r\nX-Agent-Token: {enrollment}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("the server accepts a connection");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("the request is sent");
    stream
}

/// How many lock requests on this schema's `agents` table wait.
async fn waiting_on_agents(conn: &mut sqlx::PgConnection) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks WHERE relation = 'agents'::regclass AND NOT granted",
    )
    .fetch_one(conn)
    .await
    .expect("pg_locks reads")
}

#[tokio::test]
async fn an_enrollment_whose_client_goes_away_mid_request_still_leaves_a_usable_agent() {
    // PostgreSQL whatever `MC_TEST_BACKEND` says: it shows when the create waits.
    let database_url = TestPostgres::shared().fresh_schema_url().await;
    let app = TestApp::spawn_on(Some(database_url.clone()), |_| {}).await;
    let board = app.unmanaged_board().await;
    let enrollment = app.enrollment_token(&board.board_id, &json!({})).await;
    let name = unique("impatient");

    // A slow database: writes to the agents table wait until the test lets them go.
    let mut holder = sqlx::PgConnection::connect(&database_url).await.unwrap();
    let mut observer = sqlx::PgConnection::connect(&database_url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    sqlx::query("LOCK TABLE agents IN SHARE ROW EXCLUSIVE MODE")
        .execute(&mut holder)
        .await
        .unwrap();
    let connection = send_enrollment(&app, &enrollment.token, &name).await;
    let observing = &mut observer;
    let waiting = async move {
        while waiting_on_agents(observing).await == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the create reaches the database and waits");
    // The client gives up and closes its connection, as a client timing out does.
    drop(connection);
    tokio::time::sleep(DISCONNECT_NOTICED).await;
    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();

    // The create went on without its client: the agent is stored and this server knows it.
    let listing = format!("board_id={}", board.board_id);
    eventually("the agent to be stored", || async {
        let page = expect_json(app.list_agents(&listing).await, StatusCode::OK).await;
        page["total"] == 1
    })
    .await;
    let page = expect_json(app.list_agents(&listing).await, StatusCode::OK).await;
    let id = id_of(&page["items"][0]);
    assert_eq!(page["items"][0]["name"], name.as_str());
    let known = expect_success(app.get_agent(&id).await).await;
    assert_eq!(known["status"], "provisioning", "{known}");

    // Its token went to the vanished client: the retried enrollment gets a new one.
    let retry = app
        .heartbeat_by_name(Auth::Agent(&enrollment.token), &json!({"name": name}))
        .await;
    let token = agent_token_header(&retry).expect("a token on the retry");
    assert_eq!(id_of(&expect_success(retry).await), id);
    expect_success(app.agent_heartbeat(&token, None).await).await;
    let listed = app.listed_enrollment_token(&enrollment).await;
    assert_eq!(listed["uses"], 1, "one agent, one use: {listed}");
}

#[tokio::test]
async fn an_enrollment_retried_where_the_agent_is_stored_but_not_in_memory_gets_it() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let enrollment = app.enrollment_token(&board.board_id, &json!({})).await;
    let name = unique("elsewhere");
    let id = app
        .store_enrolled_agent(&board.board_id, &board.gateway_id, &name, &enrollment.id)
        .await;

    let retry = app
        .heartbeat_by_name(Auth::Agent(&enrollment.token), &json!({"name": name}))
        .await;
    let token = agent_token_header(&retry).expect("a token on the retry");
    let retry = expect_success(retry).await;
    assert_eq!(id_of(&retry), id, "the stored agent, not a new one");
    let beat = expect_success(app.agent_heartbeat(&token, None).await).await;
    assert_eq!(beat["status"], "healthy", "{beat}");
    let listed = app.listed_enrollment_token(&enrollment).await;
    assert_eq!(listed["uses"], 1, "the retry spends no use: {listed}");

    // The admin's heartbeat by name finds such an agent too.
    let other = unique("elsewhere");
    let other_id = app
        .store_enrolled_agent(&board.board_id, &board.gateway_id, &other, &enrollment.id)
        .await;
    let by_admin = expect_success(
        app.heartbeat_by_name(
            Auth::Admin,
            &json!({"name": other, "board_id": board.board_id}),
        )
        .await,
    )
    .await;
    assert_eq!(id_of(&by_admin), other_id);
}
