//! The three heartbeat endpoints for agents that already exist: who may call which one,
//! and what a heartbeat does to the status an agent reads.

use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{
    Auth, TestApp, agent_token_header, assert_agent_read, expect_client_error, expect_json,
    expect_success, expect_validation_error, timestamp, unique,
};

#[tokio::test]
async fn agent_created_by_admin_reads_provisioning_until_its_first_heartbeat() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let agent = app.agent_with_token(&board.board_id).await;

    let before = app.agent(&agent.id).await;
    assert_eq!(before["status"], "provisioning");
    assert_eq!(before["last_seen_at"], Value::Null);

    let after = expect_json(
        app.agent_heartbeat(&agent.token, None).await,
        StatusCode::OK,
    )
    .await;
    assert_agent_read(&after);
    assert_eq!(after["id"], agent.id);
    assert_eq!(after["status"], "healthy");
    assert!(after["last_seen_at"].is_string(), "{after}");
    assert_eq!(app.agent(&agent.id).await["status"], "healthy");
}

#[tokio::test]
async fn first_heartbeat_reporting_degraded_reads_degraded() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let agent = app.agent_with_token(&board.board_id).await;

    let read = app.report_status(&agent, "degraded").await;
    assert_eq!(read["status"], "degraded");
}

#[tokio::test]
async fn heartbeat_by_name_with_agent_token_is_a_heartbeat_of_that_agent() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let agent = app.agent_with_token(&board.board_id).await;

    let response = app
        .heartbeat_by_name(Auth::Agent(&agent.token), &json!({"name": agent.name}))
        .await;
    assert_eq!(
        agent_token_header(&response),
        None,
        "an existing agent's heartbeat mints no token"
    );
    let read = expect_json(response, StatusCode::OK).await;
    assert_agent_read(&read);
    assert_eq!(read["id"], agent.id);
    assert_eq!(read["board_id"], agent.board_id);
    assert_eq!(read["gateway_id"], board.gateway_id);
    assert_eq!(read["status"], "healthy");
    assert!(read["last_seen_at"].is_string(), "{read}");
}

#[tokio::test]
async fn heartbeat_by_name_with_agent_token_and_its_own_board_id_is_ok() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let agent = app.agent_with_token(&board.board_id).await;

    let read = expect_json(
        app.heartbeat_by_name(
            Auth::Agent(&agent.token),
            &json!({"name": agent.name, "board_id": board.board_id, "status": "healthy"}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(read["id"], agent.id);
}

#[tokio::test]
async fn heartbeat_by_name_with_agent_token_and_another_board_id_is_403() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let other_board = app.board_on(&board.gateway_id).await;
    let agent = app.agent_with_token(&board.board_id).await;

    let body = expect_json(
        app.heartbeat_by_name(
            Auth::Agent(&agent.token),
            &json!({"name": agent.name, "board_id": other_board}),
        )
        .await,
        StatusCode::FORBIDDEN,
    )
    .await;
    assert!(body["detail"].is_string(), "{body}");
    assert_eq!(
        app.agent(&agent.id).await["status"],
        "provisioning",
        "a refused heartbeat is not a heartbeat"
    );
}

#[tokio::test]
async fn heartbeat_by_agent_id_with_the_agents_own_token_is_ok() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let agent = app.agent_with_token(&board.board_id).await;

    let read = expect_json(
        app.heartbeat_agent_id(Auth::Agent(&agent.token), &agent.id, &json!({}))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_agent_read(&read);
    assert_eq!(read["id"], agent.id);
    assert_eq!(read["status"], "healthy");
}

#[tokio::test]
async fn heartbeat_by_agent_id_with_admin_token_is_ok() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let agent = app.agent_with_token(&board.board_id).await;

    let read = expect_json(
        app.heartbeat_agent_id(Auth::Admin, &agent.id, &json!({"status": "degraded"}))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(read["id"], agent.id);
    assert_eq!(read["status"], "degraded");
}

#[tokio::test]
async fn heartbeat_by_agent_id_for_another_agent_is_403() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let me = app.agent_with_token(&board.board_id).await;
    let other = app.agent_with_token(&board.board_id).await;

    let body = expect_json(
        app.heartbeat_agent_id(Auth::Agent(&me.token), &other.id, &json!({}))
            .await,
        StatusCode::FORBIDDEN,
    )
    .await;
    assert!(body["detail"].is_string(), "{body}");
    assert_eq!(app.agent(&other.id).await["status"], "provisioning");
}

#[tokio::test]
async fn heartbeat_by_agent_id_for_an_unknown_agent_is_404() {
    let app = TestApp::spawn().await;

    let body = expect_json(
        app.heartbeat_agent_id(Auth::Admin, &Uuid::new_v4().to_string(), &json!({}))
            .await,
        StatusCode::NOT_FOUND,
    )
    .await;
    assert!(body["detail"].is_string(), "{body}");
}

#[tokio::test]
async fn agent_scoped_heartbeat_accepts_no_body_and_an_empty_object() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let agent = app.agent_with_token(&board.board_id).await;

    let without_body = expect_json(
        app.agent_heartbeat(&agent.token, None).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(without_body["id"], agent.id);
    let with_empty_object = expect_json(
        app.agent_heartbeat(&agent.token, Some("{}")).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(with_empty_object["id"], agent.id);
    assert!(
        timestamp(&with_empty_object["last_seen_at"]) >= timestamp(&without_body["last_seen_at"])
    );
}

#[tokio::test]
async fn agent_scoped_heartbeat_with_the_admin_token_is_refused() {
    let app = TestApp::spawn().await;

    let response = app
        .send(
            reqwest::Method::POST,
            "/api/v1/agent/heartbeat",
            Auth::Admin,
            Some(&json!({})),
        )
        .await;
    expect_client_error(response).await;
}

#[tokio::test]
async fn agent_token_is_also_accepted_as_a_bearer_token() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let agent = app.agent_with_token(&board.board_id).await;

    let read = expect_json(
        app.heartbeat_agent_id(Auth::Bearer(&agent.token), &agent.id, &json!({}))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(read["id"], agent.id);
    let read = expect_json(
        app.send(
            reqwest::Method::POST,
            "/api/v1/agent/heartbeat",
            Auth::Bearer(&agent.token),
            None,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(read["id"], agent.id);
}

/// Sends a heartbeat with `auth` to each of the three endpoints and returns the responses.
async fn heartbeat_everywhere(
    app: &TestApp,
    auth: Auth<'_>,
    agent_id: &str,
    name: &str,
) -> Vec<reqwest::Response> {
    vec![
        app.heartbeat_by_name(auth, &json!({"name": name})).await,
        app.heartbeat_agent_id(auth, agent_id, &json!({})).await,
        app.send(reqwest::Method::POST, "/api/v1/agent/heartbeat", auth, None)
            .await,
    ]
}

#[tokio::test]
async fn heartbeat_without_token_is_401() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let agent = app.agent_with_token(&board.board_id).await;

    for response in heartbeat_everywhere(&app, Auth::None, &agent.id, &agent.name).await {
        let body = expect_json(response, StatusCode::UNAUTHORIZED).await;
        assert_eq!(body["detail"], "Unauthorized", "{body}");
    }
    assert_eq!(app.agent(&agent.id).await["status"], "provisioning");
}

#[tokio::test]
async fn heartbeat_with_unknown_token_is_401() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let agent = app.agent_with_token(&board.board_id).await;
    let forged = mc_domain::token::generate_agent_token();

    for auth in [Auth::Agent(forged.expose()), Auth::Bearer(forged.expose())] {
        for response in heartbeat_everywhere(&app, auth, &agent.id, &agent.name).await {
            expect_json(response, StatusCode::UNAUTHORIZED).await;
        }
    }
    assert_eq!(app.agent(&agent.id).await["status"], "provisioning");
}

#[tokio::test]
async fn heartbeat_with_an_empty_token_is_401() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let agent = app.agent_with_token(&board.board_id).await;

    for response in heartbeat_everywhere(&app, Auth::Agent(""), &agent.id, &agent.name).await {
        expect_json(response, StatusCode::UNAUTHORIZED).await;
    }
}

#[tokio::test]
async fn heartbeat_with_a_token_replaced_by_rotation_is_401_and_the_new_token_works() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let agent = app.agent_with_token(&board.board_id).await;
    expect_json(
        app.agent_heartbeat(&agent.token, None).await,
        StatusCode::OK,
    )
    .await;

    let new_token = app.new_token_for(&agent.id).await;
    assert_ne!(new_token, agent.token);

    for response in
        heartbeat_everywhere(&app, Auth::Agent(&agent.token), &agent.id, &agent.name).await
    {
        expect_json(response, StatusCode::UNAUTHORIZED).await;
    }
    for response in
        heartbeat_everywhere(&app, Auth::Agent(&new_token), &agent.id, &agent.name).await
    {
        expect_json(response, StatusCode::OK).await;
    }
}

#[tokio::test]
async fn heartbeat_with_the_token_of_a_deleted_agent_is_401() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let agent = app.agent_with_token(&board.board_id).await;

    expect_json(app.delete_agent(&agent.id).await, StatusCode::OK).await;

    expect_json(
        app.agent_heartbeat(&agent.token, None).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
}

#[tokio::test]
async fn status_online_is_read_as_healthy() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let agent = app.agent_with_token(&board.board_id).await;

    let read = expect_json(
        app.heartbeat_by_name(
            Auth::Agent(&agent.token),
            &json!({"name": agent.name, "status": "online"}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(read["status"], "healthy");
}

#[tokio::test]
async fn reported_status_is_kept_when_a_later_heartbeat_omits_it() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let agent = app.agent_with_token(&board.board_id).await;
    let auth = Auth::Agent(&agent.token);

    let degraded = expect_json(
        app.heartbeat_agent_id(auth, &agent.id, &json!({"status": "degraded"}))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(degraded["status"], "degraded");

    let silent_on_status = expect_json(
        app.agent_heartbeat(&agent.token, None).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(silent_on_status["status"], "degraded");
    let by_name = expect_json(
        app.heartbeat_by_name(auth, &json!({"name": agent.name}))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(by_name["status"], "degraded");

    let healthy = expect_json(
        app.heartbeat_agent_id(auth, &agent.id, &json!({"status": "healthy"}))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(healthy["status"], "healthy");
    let later = expect_json(
        app.heartbeat_agent_id(auth, &agent.id, &json!({"status": null}))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(later["status"], "healthy");
}

#[tokio::test]
async fn an_agent_that_reports_offline_reads_offline() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let agent = app.agent_with_token(&board.board_id).await;

    let read = app.report_status(&agent, "offline").await;
    assert_eq!(read["status"], "offline");
    assert_eq!(app.agent(&agent.id).await["status"], "offline");
}

#[tokio::test]
async fn unknown_status_is_422_naming_the_accepted_values_on_every_endpoint() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let agent = app.agent_with_token(&board.board_id).await;
    let auth = Auth::Agent(&agent.token);

    let responses = [
        app.heartbeat_by_name(auth, &json!({"name": agent.name, "status": "sleepy"}))
            .await,
        app.heartbeat_agent_id(auth, &agent.id, &json!({"status": "sleepy"}))
            .await,
        app.heartbeat_agent_id(Auth::Admin, &agent.id, &json!({"status": "bad"}))
            .await,
    ];
    for response in responses {
        let body = expect_validation_error(response, &["body", "status"]).await;
        assert!(
            body["detail"][0]["msg"]
                .as_str()
                .is_some_and(|msg| msg.contains("healthy")),
            "the message lists the accepted values: {body}"
        );
        assert_eq!(body["detail"][0]["type"], "value_error", "{body}");
    }
    assert_eq!(
        app.agent(&agent.id).await["status"],
        "provisioning",
        "an invalid heartbeat is not recorded"
    );
}

#[tokio::test]
async fn heartbeat_moves_last_seen_at_forward() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let agent = app.agent_with_token(&board.board_id).await;

    let first = expect_json(
        app.agent_heartbeat(&agent.token, None).await,
        StatusCode::OK,
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let second = expect_json(
        app.agent_heartbeat(&agent.token, None).await,
        StatusCode::OK,
    )
    .await;
    assert!(timestamp(&second["last_seen_at"]) > timestamp(&first["last_seen_at"]));
    assert!(
        app.agent(&agent.id).await["last_seen_at"] == second["last_seen_at"],
        "readers see the latest heartbeat at once"
    );
}

#[tokio::test]
async fn admin_heartbeat_by_name_updates_an_existing_agent() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let agent = app.agent_with_token(&board.board_id).await;

    let read = expect_json(
        app.heartbeat_by_name(
            Auth::Admin,
            &json!({"name": agent.name, "board_id": board.board_id}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(read["id"], agent.id);
    assert_eq!(read["status"], "healthy");
    let page = expect_json(
        app.list_agents(&format!("board_id={}", board.board_id))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(page["total"], 1, "no second agent was created: {page}");
}

#[tokio::test]
async fn admin_heartbeat_by_name_creates_the_agent_on_the_board_when_absent() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let name = unique("bootstrapped");

    let read = expect_success(
        app.heartbeat_by_name(
            Auth::Admin,
            &json!({"name": name, "board_id": board.board_id, "status": "healthy"}),
        )
        .await,
    )
    .await;
    assert_agent_read(&read);
    assert_eq!(read["name"], name.as_str());
    assert_eq!(read["board_id"], board.board_id);
    assert_eq!(read["gateway_id"], board.gateway_id);
    assert_eq!(read["status"], "healthy");

    let again = expect_json(
        app.heartbeat_by_name(
            Auth::Admin,
            &json!({"name": name, "board_id": board.board_id}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        again["id"], read["id"],
        "the second heartbeat finds the agent"
    );
}

#[tokio::test]
async fn admin_heartbeat_by_name_for_an_absent_agent_without_board_id_is_422() {
    let app = TestApp::spawn().await;

    let body = expect_json(
        app.heartbeat_by_name(Auth::Admin, &json!({"name": unique("nobody")}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert!(
        body["detail"].to_string().contains("board_id is required"),
        "{body}"
    );
}

#[tokio::test]
async fn admin_heartbeat_by_name_on_an_unknown_board_is_refused() {
    let app = TestApp::spawn().await;

    expect_client_error(
        app.heartbeat_by_name(
            Auth::Admin,
            &json!({"name": unique("nobody"), "board_id": Uuid::new_v4()}),
        )
        .await,
    )
    .await;
}

#[tokio::test]
async fn heartbeat_by_name_without_name_is_422() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let enrollment = app.enrollment_token(&board.board_id, &json!({})).await;

    expect_validation_error(
        app.heartbeat_by_name(Auth::Admin, &json!({"board_id": board.board_id}))
            .await,
        &["body", "name"],
    )
    .await;
    expect_validation_error(
        app.heartbeat_by_name(
            Auth::Agent(&enrollment.token),
            &json!({"status": "healthy"}),
        )
        .await,
        &["body", "name"],
    )
    .await;
    expect_validation_error(
        app.heartbeat_by_name(Auth::Agent(&enrollment.token), &json!({"name": "   "}))
            .await,
        &["body", "name"],
    )
    .await;
    let listed = app.listed_enrollment_token(&enrollment).await;
    assert_eq!(listed["uses"], 0, "a refused bootstrap uses nothing");
}

#[tokio::test]
async fn heartbeat_with_a_malformed_board_id_is_422() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let agent = app.agent_with_token(&board.board_id).await;
    let enrollment = app.enrollment_token(&board.board_id, &json!({})).await;

    for auth in [
        Auth::Admin,
        Auth::Agent(&agent.token),
        Auth::Agent(&enrollment.token),
    ] {
        let name = unique("someone");
        expect_validation_error(
            app.heartbeat_by_name(auth, &json!({"name": name, "board_id": "not-a-uuid"}))
                .await,
            &["body", "board_id"],
        )
        .await;
    }
}

#[tokio::test]
async fn heartbeat_with_wrong_json_types_is_422_naming_the_field() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let agent = app.agent_with_token(&board.board_id).await;
    let auth = Auth::Agent(&agent.token);

    let cases: [(Value, &str); 4] = [
        (json!({"name": 5}), "name"),
        (json!({"name": agent.name, "status": 3}), "status"),
        (json!({"name": agent.name, "board_id": 7}), "board_id"),
        (json!({"name": ["a"]}), "name"),
    ];
    for (body, field) in cases {
        expect_validation_error(app.heartbeat_by_name(auth, &body).await, &["body", field]).await;
    }
    expect_validation_error(
        app.heartbeat_agent_id(auth, &agent.id, &json!({"status": true}))
            .await,
        &["body", "status"],
    )
    .await;
}

#[tokio::test]
async fn agent_scoped_heartbeat_with_malformed_json_is_422() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let agent = app.agent_with_token(&board.board_id).await;

    let body = expect_json(
        app.agent_heartbeat(&agent.token, Some("{not json")).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(body["detail"][0]["loc"], json!(["body"]), "{body}");
    assert_eq!(body["detail"][0]["type"], "json_invalid", "{body}");
}
