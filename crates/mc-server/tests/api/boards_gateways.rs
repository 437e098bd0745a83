//! Gateways and boards: where agents run and how they are grouped. The gateway token is
//! write-only; deleting a board takes its agents and enrollment tokens with it.

use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{
    Auth, TestApp, expect_json, expect_success, expect_validation_error, id_of, unique,
};

/// Every field a GatewayRead carries.
const GATEWAY_READ_FIELDS: [&str; 10] = [
    "id",
    "organization_id",
    "name",
    "url",
    "workspace_root",
    "allow_insecure_tls",
    "disable_device_pairing",
    "has_token",
    "created_at",
    "updated_at",
];

#[tokio::test]
async fn gateway_token_never_appears_in_any_read() {
    let app = TestApp::spawn().await;
    let secret = format!("gw-secret-{}", Uuid::new_v4().simple());

    let response = app
        .create_gateway(&json!({
            "name": unique("managed"),
            "url": "ws://127.0.0.1:9",
            "token": secret,
            "workspace_root": "/srv/openclaw",
        }))
        .await;
    let status = response.status();
    let text = response.text().await.expect("a body");
    assert!(status.is_success(), "{status}: {text}");
    assert!(
        !text.contains(&secret),
        "the create response leaks the token: {text}"
    );
    let created: Value = serde_json::from_str(&text).expect("JSON");
    let id = id_of(&created);
    for field in GATEWAY_READ_FIELDS {
        assert!(
            created.get(field).is_some(),
            "GatewayRead lacks {field}: {created}"
        );
    }
    assert!(created.get("token").is_none(), "{created}");
    assert_eq!(created["has_token"], true);
    assert_eq!(created["url"], "ws://127.0.0.1:9");
    assert_eq!(created["allow_insecure_tls"], false);
    assert_eq!(created["disable_device_pairing"], false);

    let reads = [
        app.get_gateway(&id).await,
        app.list_gateways("").await,
        app.patch_gateway(&id, &json!({"name": unique("renamed")}))
            .await,
        app.get_gateway(&id).await,
    ];
    for response in reads {
        let url = response.url().clone();
        let status = response.status();
        let text = response.text().await.expect("a body");
        assert!(status.is_success(), "{url}: {status}: {text}");
        assert!(
            !text.contains(&secret),
            "{url} leaks the gateway token: {text}"
        );
        assert!(
            !text.contains("\"token\""),
            "{url} has a token field: {text}"
        );
    }
}

#[tokio::test]
async fn unmanaged_gateway_has_an_empty_url_and_no_token() {
    let app = TestApp::spawn().await;

    let created = expect_success(
        app.create_gateway(&json!({"name": unique("unmanaged"), "url": ""}))
            .await,
    )
    .await;
    assert_eq!(created["url"], "");
    assert_eq!(created["has_token"], false);
    let page = expect_json(app.list_gateways("").await, StatusCode::OK).await;
    assert_eq!(page["total"], 1);
    assert_eq!(page["items"][0]["id"], created["id"]);
}

#[tokio::test]
async fn gateway_fields_are_validated() {
    let app = TestApp::spawn().await;

    let cases = [
        (json!({"url": ""}), "name"),
        (json!({"name": "  ", "url": ""}), "name"),
        (json!({"name": "g", "url": "http://example.com"}), "url"),
        (json!({"name": "g", "url": "ws://"}), "url"),
        (
            json!({"name": "g", "url": "ws://127.0.0.1:9"}),
            "workspace_root",
        ),
        (
            json!({"name": "g", "url": "", "allow_insecure_tls": "yes"}),
            "allow_insecure_tls",
        ),
    ];
    for (body, field) in cases {
        expect_validation_error(app.create_gateway(&body).await, &["body", field]).await;
    }
    let page = expect_json(app.list_gateways("").await, StatusCode::OK).await;
    assert_eq!(page["total"], 0);
}

#[tokio::test]
async fn unknown_gateway_is_404() {
    let app = TestApp::spawn().await;
    let unknown = Uuid::new_v4().to_string();

    for response in [
        app.get_gateway(&unknown).await,
        app.patch_gateway(&unknown, &json!({"name": "x"})).await,
        app.delete_gateway(&unknown).await,
    ] {
        let body = expect_json(response, StatusCode::NOT_FOUND).await;
        assert!(body["detail"].is_string(), "{body}");
    }
}

#[tokio::test]
async fn gateway_in_use_by_a_board_cannot_be_deleted() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;

    let body = expect_json(
        app.delete_gateway(&board.gateway_id).await,
        StatusCode::CONFLICT,
    )
    .await;
    assert!(body["detail"].is_string(), "{body}");

    expect_json(app.delete_board(&board.board_id).await, StatusCode::OK).await;
    let deleted = expect_json(app.delete_gateway(&board.gateway_id).await, StatusCode::OK).await;
    assert_eq!(deleted, json!({"ok": true}));
    expect_json(
        app.get_gateway(&board.gateway_id).await,
        StatusCode::NOT_FOUND,
    )
    .await;
}

#[tokio::test]
async fn created_board_reads_with_the_contracts_defaults() {
    let app = TestApp::spawn().await;
    let gateway = expect_success(
        app.create_gateway(&json!({"name": unique("g"), "url": ""}))
            .await,
    )
    .await;
    let slug = unique("ops");

    let board = expect_success(
        app.create_board(&json!({
            "name": "Operations",
            "slug": slug,
            "description": "Runs the place.",
            "gateway_id": gateway["id"],
        }))
        .await,
    )
    .await;
    assert_eq!(board["slug"], slug.as_str());
    assert_eq!(board["gateway_id"], gateway["id"]);
    assert_eq!(board["require_approval_for_done"], true);
    assert_eq!(board["require_review_before_done"], false);
    assert_eq!(board["comment_required_for_review"], false);
    assert_eq!(board["block_status_changes_with_pending_approval"], false);
    assert_eq!(board["only_lead_can_change_status"], false);
    assert_eq!(board["max_agents"], 1);
    for field in [
        "id",
        "organization_id",
        "name",
        "description",
        "created_at",
        "updated_at",
    ] {
        assert!(
            board.get(field).is_some(),
            "BoardRead lacks {field}: {board}"
        );
    }

    let read = expect_json(app.get_board(&id_of(&board)).await, StatusCode::OK).await;
    assert_eq!(read, board);
}

#[tokio::test]
async fn board_slugs_are_unique() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let existing = expect_json(app.get_board(&board.board_id).await, StatusCode::OK).await;

    let body = expect_json(
        app.create_board(&json!({
            "name": "Copy",
            "slug": existing["slug"],
            "description": "Same slug.",
            "gateway_id": board.gateway_id,
        }))
        .await,
        StatusCode::CONFLICT,
    )
    .await;
    assert!(body["detail"].is_string(), "{body}");
}

#[tokio::test]
async fn board_fields_are_validated() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let valid = json!({
        "name": "Board",
        "slug": unique("b"),
        "description": "A board.",
        "gateway_id": board.gateway_id,
    });

    for (field, bad) in [
        ("name", json!("  ")),
        ("slug", json!("Not A Slug")),
        ("description", json!("")),
        ("gateway_id", json!("nope")),
        ("gateway_id", json!(Uuid::new_v4())),
        ("max_agents", json!(-1)),
        ("require_approval_for_done", json!("yes")),
    ] {
        let mut body = valid.clone();
        body[field] = bad;
        expect_validation_error(app.create_board(&body).await, &["body", field]).await;
    }
    for missing in ["name", "slug", "description", "gateway_id"] {
        let mut body = valid.clone();
        body.as_object_mut().expect("an object").remove(missing);
        expect_validation_error(app.create_board(&body).await, &["body", missing]).await;
    }
}

#[tokio::test]
async fn boards_are_listed_and_filtered_by_gateway() {
    let app = TestApp::spawn().await;
    let first = app.unmanaged_board().await;
    let second_on_first = app.board_on(&first.gateway_id).await;
    let other = app.unmanaged_board().await;

    let all = expect_json(app.list_boards("").await, StatusCode::OK).await;
    assert_eq!(all["total"], 3);
    let filtered = expect_json(
        app.list_boards(&format!("gateway_id={}", first.gateway_id))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(filtered["total"], 2);
    let ids: Vec<String> = filtered["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(id_of)
        .collect();
    assert!(ids.contains(&first.board_id) && ids.contains(&second_on_first));
    assert!(!ids.contains(&other.board_id));
}

#[tokio::test]
async fn patch_board_changes_only_the_given_fields() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let before = expect_json(app.get_board(&board.board_id).await, StatusCode::OK).await;

    let patched = expect_json(
        app.patch_board(
            &board.board_id,
            &json!({"description": "New purpose.", "require_review_before_done": true}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(patched["description"], "New purpose.");
    assert_eq!(patched["require_review_before_done"], true);
    assert_eq!(patched["name"], before["name"]);
    assert_eq!(patched["slug"], before["slug"]);
    assert_eq!(patched["max_agents"], before["max_agents"]);
}

#[tokio::test]
async fn deleting_a_board_removes_its_agents_and_enrollment_tokens() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let agent = app.agent_with_token(&board.board_id).await;
    let enrollment = app.enrollment_token(&board.board_id, &json!({})).await;

    let deleted = expect_json(app.delete_board(&board.board_id).await, StatusCode::OK).await;
    assert_eq!(deleted, json!({"ok": true}));

    expect_json(app.get_board(&board.board_id).await, StatusCode::NOT_FOUND).await;
    expect_json(app.get_agent(&agent.id).await, StatusCode::NOT_FOUND).await;
    expect_json(
        app.agent_heartbeat(&agent.token, None).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    expect_json(
        app.heartbeat_by_name(
            Auth::Agent(&enrollment.token),
            &json!({"name": unique("late")}),
        )
        .await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    let agents = expect_json(app.list_agents("").await, StatusCode::OK).await;
    assert_eq!(agents["total"], 0, "{agents}");
    assert_eq!(app.count_events(&agent.id, "agent.deleted").await, 1);
}
