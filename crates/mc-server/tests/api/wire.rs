//! Wire details every endpoint shares: request ids, security headers, body limits,
//! validation error shapes, pagination, health checks and the OpenAPI document.

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{
    Auth, BODY_LIMIT_BYTES, TestApp, expect_json, expect_validation_error, id_of, unique,
};

/// The value of a response header, if present.
fn header<'a>(response: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    response
        .headers()
        .get(name)
        .map(|value| value.to_str().expect("an ASCII header"))
}

#[tokio::test]
async fn request_id_is_echoed_when_given() {
    let app = TestApp::spawn().await;
    let request_id = format!("test-{}", Uuid::new_v4());

    let ok = app
        .request(Method::GET, "/healthz", Auth::None)
        .header("X-Request-Id", &request_id)
        .send()
        .await
        .expect("a response");
    assert_eq!(header(&ok, "x-request-id"), Some(request_id.as_str()));

    let refused = app
        .request(Method::GET, "/api/v1/agents", Auth::None)
        .header("X-Request-Id", &request_id)
        .send()
        .await
        .expect("a response");
    assert_eq!(header(&refused, "x-request-id"), Some(request_id.as_str()));
    let body = expect_json(refused, StatusCode::UNAUTHORIZED).await;
    assert_eq!(body["request_id"], request_id.as_str(), "{body}");
}

#[tokio::test]
async fn request_id_is_generated_when_absent_and_differs_per_request() {
    let app = TestApp::spawn().await;

    let first = app.healthz().await;
    let second = app.healthz().await;
    let first_id = header(&first, "x-request-id")
        .expect("a generated id")
        .to_owned();
    let second_id = header(&second, "x-request-id")
        .expect("a generated id")
        .to_owned();
    assert!(!first_id.is_empty());
    assert_ne!(first_id, second_id);

    let missing = app.get_agent(&Uuid::new_v4().to_string()).await;
    let generated = header(&missing, "x-request-id").expect("an id").to_owned();
    let body = expect_json(missing, StatusCode::NOT_FOUND).await;
    assert_eq!(body["request_id"], generated.as_str(), "{body}");
}

#[tokio::test]
async fn security_headers_are_on_every_response() {
    let app = TestApp::spawn().await;
    let responses = [
        app.healthz().await,
        app.list_agents("").await,
        app.list_activity(Auth::None, "").await,
        app.get_agent(&Uuid::new_v4().to_string()).await,
        app.get_agent("not-a-uuid").await,
        app.openapi().await,
        app.send(Method::GET, "/no/such/route", Auth::None, None)
            .await,
    ];
    for response in responses {
        let url = response.url().clone();
        assert_eq!(
            header(&response, "x-content-type-options"),
            Some("nosniff"),
            "{url}"
        );
        assert_eq!(header(&response, "x-frame-options"), Some("DENY"), "{url}");
        assert_eq!(
            header(&response, "referrer-policy"),
            Some("strict-origin-when-cross-origin"),
            "{url}"
        );
        assert!(header(&response, "x-request-id").is_some(), "{url}");
    }
}

#[tokio::test]
async fn body_over_one_mebibyte_is_413() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let agent = app.agent_with_token(&board.board_id).await;
    let huge = "x".repeat(BODY_LIMIT_BYTES + 1);

    let create = json!({"name": unique("big"), "board_id": board.board_id, "soul_template": huge});
    let response = app.create_agent(&create).await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let heartbeat = json!({"name": agent.name, "status": huge});
    let response = app
        .heartbeat_by_name(Auth::Agent(&agent.token), &heartbeat)
        .await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);

    let page = expect_json(
        app.list_agents(&format!("board_id={}", board.board_id))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(page["total"], 1, "the oversized agent was not created");
}

#[tokio::test]
async fn body_just_under_the_limit_is_not_413() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let text = "x".repeat(BODY_LIMIT_BYTES - 1024);

    let response = app
        .create_agent(
            &json!({"name": unique("big"), "board_id": board.board_id, "soul_template": text}),
        )
        .await;
    assert_ne!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        !response.status().is_server_error(),
        "{}",
        response.status()
    );
}

#[tokio::test]
async fn malformed_json_is_422_json_invalid() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let agent = app.agent_with_token(&board.board_id).await;

    let responses = [
        app.send_raw(
            Method::POST,
            "/api/v1/agents",
            Auth::Admin,
            "application/json",
            "{\"name\": ",
        )
        .await,
        app.send_raw(
            Method::POST,
            "/api/v1/agents/heartbeat",
            Auth::Agent(&agent.token),
            "application/json",
            "this is not json",
        )
        .await,
        app.send_raw(
            Method::POST,
            &format!("/api/v1/agents/{}/heartbeat", agent.id),
            Auth::Agent(&agent.token),
            "application/json",
            "{\"status\": \"healthy\"",
        )
        .await,
    ];
    for response in responses {
        let body = expect_json(response, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(body["detail"][0]["loc"], json!(["body"]), "{body}");
        assert_eq!(body["detail"][0]["type"], "json_invalid", "{body}");
        assert!(body["request_id"].is_string(), "{body}");
    }
}

#[tokio::test]
async fn malformed_json_is_json_invalid_even_when_a_value_before_the_break_has_a_wrong_type() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let agent = app.agent_with_token(&board.board_id).await;

    for raw in ["{\"status\": 5", "[1, 2"] {
        let response = app
            .send_raw(
                Method::POST,
                &format!("/api/v1/agents/{}/heartbeat", agent.id),
                Auth::Agent(&agent.token),
                "application/json",
                raw,
            )
            .await;
        let body = expect_json(response, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(body["detail"][0]["loc"], json!(["body"]), "{raw}: {body}");
        assert_eq!(body["detail"][0]["type"], "json_invalid", "{raw}: {body}");
    }
}

#[tokio::test]
async fn a_json_value_that_is_not_an_object_is_422() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let agent = app.agent_with_token(&board.board_id).await;

    for raw in ["[]", "\"healthy\"", "42", "null"] {
        let response = app
            .send_raw(
                Method::POST,
                "/api/v1/agents/heartbeat",
                Auth::Agent(&agent.token),
                "application/json",
                raw,
            )
            .await;
        let body = expect_json(response, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(body["detail"][0]["loc"][0], "body", "{raw}: {body}");
    }
}

#[tokio::test]
async fn wrong_json_types_are_422_naming_the_field() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;

    for (body, field) in [
        (json!({"name": 5, "board_id": board.board_id}), "name"),
        (json!({"name": "x", "board_id": 5}), "board_id"),
        (
            json!({"name": "x", "board_id": board.board_id, "is_board_lead": "yes"}),
            "is_board_lead",
        ),
        (
            json!({"name": "x", "board_id": board.board_id, "heartbeat_config": 60}),
            "heartbeat_config",
        ),
    ] {
        let response = app.create_agent(&body).await;
        let error = expect_json(response, StatusCode::UNPROCESSABLE_ENTITY).await;
        let entry = &error["detail"][0];
        assert_eq!(entry["loc"][0], "body", "{error}");
        assert_eq!(entry["loc"][1], field, "{error}");
        assert!(
            entry["msg"].is_string() && entry["type"].is_string(),
            "{error}"
        );
    }
}

#[tokio::test]
async fn unknown_json_fields_are_ignored() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let agent = app.agent_with_token(&board.board_id).await;

    let read = expect_json(
        app.heartbeat_by_name(
            Auth::Agent(&agent.token),
            &json!({"name": agent.name, "mood": "cheerful"}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(read["id"], agent.id);
}

#[tokio::test]
async fn malformed_uuid_in_a_path_is_422_uuid_parsing() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let agent = app.agent_with_token(&board.board_id).await;

    let body = expect_json(
        app.heartbeat_agent_id(Auth::Agent(&agent.token), "not-a-uuid", &json!({}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(
        body["detail"][0]["loc"],
        json!(["path", "agent_id"]),
        "{body}"
    );
    assert_eq!(body["detail"][0]["type"], "uuid_parsing", "{body}");

    for response in [
        app.get_agent("not-a-uuid").await,
        app.patch_agent("123", &json!({})).await,
        app.delete_agent("zzz").await,
        app.rotate_agent_token("not-a-uuid").await,
        app.get_board("not-a-uuid").await,
        app.get_gateway("not-a-uuid").await,
        app.list_enrollment_tokens("not-a-uuid").await,
    ] {
        let url = response.url().clone();
        let body = expect_json(response, StatusCode::UNPROCESSABLE_ENTITY).await;
        let entry = &body["detail"][0];
        assert_eq!(entry["loc"][0], "path", "{url}: {body}");
        assert!(entry["loc"][1].is_string(), "{url}: {body}");
        assert_eq!(entry["type"], "uuid_parsing", "{url}: {body}");
    }
}

#[tokio::test]
async fn malformed_uuid_in_a_query_filter_is_422() {
    let app = TestApp::spawn().await;

    expect_validation_error(
        app.list_agents("board_id=nope").await,
        &["query", "board_id"],
    )
    .await;
    expect_validation_error(
        app.list_activity(Auth::Admin, "agent_id=nope").await,
        &["query", "agent_id"],
    )
    .await;
}

#[tokio::test]
async fn pagination_limit_must_be_between_1_and_200_and_offset_not_negative() {
    let app = TestApp::spawn().await;

    for query in ["limit=0", "limit=201", "limit=abc"] {
        expect_validation_error(app.list_agents(query).await, &["query", "limit"]).await;
        expect_validation_error(app.list_boards(query).await, &["query", "limit"]).await;
        expect_validation_error(
            app.list_activity(Auth::Admin, query).await,
            &["query", "limit"],
        )
        .await;
    }
    expect_validation_error(app.list_gateways("offset=-1").await, &["query", "offset"]).await;
    expect_json(app.list_agents("limit=1").await, StatusCode::OK).await;
    expect_json(app.list_agents("limit=200").await, StatusCode::OK).await;
}

#[tokio::test]
async fn pages_have_items_total_limit_and_offset() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    for _ in 0..3 {
        app.agent_with_token(&board.board_id).await;
    }

    let default = expect_json(app.list_agents("").await, StatusCode::OK).await;
    assert_eq!(default["total"], 3);
    assert_eq!(default["limit"], 200);
    assert_eq!(default["offset"], 0);
    let all: Vec<String> = default["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(id_of)
        .collect();
    assert_eq!(all.len(), 3);

    let page = expect_json(app.list_agents("limit=2&offset=1").await, StatusCode::OK).await;
    assert_eq!(page["total"], 3);
    assert_eq!(page["limit"], 2);
    assert_eq!(page["offset"], 1);
    let items: Vec<String> = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(id_of)
        .collect();
    assert_eq!(items, all[1..3].to_vec());

    let beyond = expect_json(app.list_agents("offset=10").await, StatusCode::OK).await;
    assert_eq!(beyond["items"], json!([]));
    assert_eq!(beyond["total"], 3);
}

#[tokio::test]
async fn health_checks_answer_ok_without_credentials() {
    let app = TestApp::spawn().await;

    assert_eq!(
        expect_json(app.healthz().await, StatusCode::OK).await,
        json!({"ok": true})
    );
    assert_eq!(
        expect_json(app.readyz().await, StatusCode::OK).await,
        json!({"ok": true})
    );
}

/// Every tag named anywhere in the document: the top-level list and each operation's.
fn tags_of(document: &Value) -> BTreeSet<String> {
    let mut tags = BTreeSet::new();
    for tag in document["tags"].as_array().into_iter().flatten() {
        if let Some(name) = tag["name"].as_str() {
            tags.insert(name.to_owned());
        }
    }
    for item in document["paths"]
        .as_object()
        .into_iter()
        .flat_map(|p| p.values())
    {
        for operation in item.as_object().into_iter().flat_map(|o| o.values()) {
            for tag in operation["tags"].as_array().into_iter().flatten() {
                if let Some(name) = tag.as_str() {
                    tags.insert(name.to_owned());
                }
            }
        }
    }
    tags
}

#[tokio::test]
async fn openapi_document_lists_the_heartbeat_paths_and_the_agent_role_tags() {
    let app = TestApp::spawn().await;

    let document = expect_json(app.openapi().await, StatusCode::OK).await;
    assert!(
        document["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with('3')),
        "an OpenAPI 3 document"
    );
    let paths = document["paths"].as_object().expect("paths");
    for path in [
        "/api/v1/agents/heartbeat",
        "/api/v1/agents/{agent_id}/heartbeat",
        "/api/v1/agent/heartbeat",
    ] {
        assert!(
            paths
                .get(path)
                .is_some_and(|item| item.get("post").is_some()),
            "POST {path} is documented; paths: {:?}",
            paths.keys().collect::<Vec<_>>()
        );
    }
    let tags = tags_of(&document);
    for tag in ["agent-main", "agent-lead", "agent-worker"] {
        assert!(tags.contains(tag), "the tag {tag} is used: {tags:?}");
    }
    let agent_scoped = &paths["/api/v1/agent/heartbeat"]["post"]["tags"];
    for tag in ["agent-main", "agent-lead", "agent-worker"] {
        assert!(
            agent_scoped
                .as_array()
                .is_some_and(|tags| tags.iter().any(|t| t == tag)),
            "every agent role may heartbeat: {agent_scoped}"
        );
    }
}

#[tokio::test]
async fn a_nul_character_in_any_string_is_422_naming_the_field_on_every_backend() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;

    let body = expect_validation_error(
        app.create_board(&json!({
            "name": "Nul",
            "slug": unique("nul"),
            "description": "before\u{0}after",
            "gateway_id": board.gateway_id,
        }))
        .await,
        &["body", "description"],
    )
    .await;
    assert_eq!(body["detail"][0]["type"], "string_nul");
    expect_validation_error(
        app.create_gateway(&json!({"name": "g", "url": "", "extra": ["ok", "\u{0}"]}))
            .await,
        &["body", "extra", "1"],
    )
    .await;
}
