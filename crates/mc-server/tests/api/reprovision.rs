//! `POST /api/v1/agents/{agent_id}/provision`: an operator re-provisions an agent on its
//! managed gateway; agents of unmanaged gateways are refused with the reason.

use mc_gateway::GatewayGeneration;
use mc_gateway::testing::{FakeGateway, FakeGatewayOptions};
use reqwest::{Method, Response, StatusCode};

use crate::gateway_fixtures::{
    board_on_fake, create_agent_named, files_set, managed_board, provision_jobs, settled_jobs,
    spawn_provisioning_app,
};
use crate::helpers::{Auth, TestApp, expect_client_error, expect_json, unique};

async fn reprovision(app: &TestApp, agent_id: &str, auth: Auth<'_>) -> Response {
    app.send(
        Method::POST,
        &format!("/api/v1/agents/{agent_id}/provision"),
        auth,
        None,
    )
    .await
}

#[tokio::test]
async fn reprovisioning_a_provisioned_agent_queues_an_update_that_rewrites_its_workspace() {
    let gw = FakeGateway::start(FakeGatewayOptions::new(GatewayGeneration::V4)).await;
    let app = spawn_provisioning_app().await;
    let (_, board_id) = board_on_fake(&app, &gw).await;
    let id = create_agent_named(&app, &board_id, &unique("Worker")).await;
    settled_jobs(&app, &id, 1).await;
    let files_before = files_set(&gw).len();

    let job = expect_json(
        reprovision(&app, &id, Auth::Admin).await,
        StatusCode::ACCEPTED,
    )
    .await;
    assert_eq!(job["action"], "update", "{job}");
    assert!(job["id"].is_i64(), "{job}");

    let jobs = settled_jobs(&app, &id, 2).await;
    assert_eq!(jobs[1]["id"], job["id"]);
    assert_eq!(jobs[1]["action"], "update");
    assert_eq!(jobs[1]["state"], "done", "{jobs:?}");
    assert!(
        files_set(&gw).len() > files_before,
        "the update wrote the workspace files again"
    );
    assert!(app.agent(&id).await["last_provision_error"].is_null());
}

#[tokio::test]
async fn reprovisioning_an_agent_never_placed_on_its_gateway_queues_a_create() {
    let app = spawn_provisioning_app().await;
    let (_, board_id) = managed_board(&app, "ws://127.0.0.1:1", None).await;
    let id = create_agent_named(&app, &board_id, &unique("Worker")).await;
    let job = expect_json(
        reprovision(&app, &id, Auth::Admin).await,
        StatusCode::ACCEPTED,
    )
    .await;
    assert_eq!(job["action"], "create", "{job}");
    let jobs = provision_jobs(&app, &id).await;
    assert_eq!(jobs.len(), 2, "the first create and the one asked for");
    assert!(jobs.iter().all(|j| j["action"] == "create"), "{jobs:?}");
}

#[tokio::test]
async fn reprovisioning_an_agent_on_an_unmanaged_gateway_is_409_with_the_reason() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let agent = app.agent_with_token(&board.board_id).await;
    let (status, body) = expect_client_error(reprovision(&app, &agent.id, Auth::Admin).await).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let detail = body["detail"].as_str().expect("a string detail");
    assert!(
        detail.contains("unmanaged") && detail.contains(&agent.name),
        "{detail}"
    );
    assert!(provision_jobs(&app, &agent.id).await.is_empty());
}

#[tokio::test]
async fn reprovisioning_needs_the_admin_and_a_known_agent() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let agent = app.agent_with_token(&board.board_id).await;
    let unknown = uuid::Uuid::new_v4().to_string();
    let (status, _) = expect_client_error(reprovision(&app, &unknown, Auth::Admin).await).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) =
        expect_client_error(reprovision(&app, "not-a-uuid", Auth::Admin).await).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, _) = expect_client_error(reprovision(&app, &agent.id, Auth::None).await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) =
        expect_client_error(reprovision(&app, &agent.id, Auth::Agent(&agent.token)).await).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "an agent cannot re-provision"
    );
}
