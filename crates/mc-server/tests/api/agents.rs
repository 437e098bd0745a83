//! Agents as the admin manages them, token rotation, the activity log, and who may call
//! the admin-only endpoints.

use mc_testpg::TestPostgres;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{
    Auth, TestApp, agent_token_header, assert_agent_read, eventually, expect_client_error,
    expect_denied, expect_json, expect_success, expect_validation_error, id_of, unique,
};

#[tokio::test]
async fn created_agent_reads_with_the_contracts_defaults() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let name = unique("worker");

    let created = expect_success(
        app.create_agent(&json!({"name": name, "board_id": board.board_id}))
            .await,
    )
    .await;
    assert_agent_read(&created);
    assert_eq!(created["name"], name.as_str());
    assert_eq!(created["board_id"], board.board_id);
    assert_eq!(created["gateway_id"], board.gateway_id);
    assert_eq!(created["status"], "provisioning");
    assert_eq!(created["last_seen_at"], Value::Null);
    assert_eq!(created["is_gateway_main"], false);
    assert_eq!(created["is_board_lead"], false);
    assert_eq!(
        created["heartbeat_config"],
        json!({"interval_seconds": 60, "missing_tolerance": 120})
    );

    let read = app.agent(&id_of(&created)).await;
    assert_eq!(read["name"], name.as_str());
    assert_eq!(read["created_at"], created["created_at"]);
    assert_eq!(app.count_events(&id_of(&created), "agent.created").await, 1);
}

#[tokio::test]
async fn agent_names_are_unique_per_board_case_insensitively() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let other_board = app.board_on(&board.gateway_id).await;
    let name = unique("Worker");

    expect_success(
        app.create_agent(&json!({"name": name, "board_id": board.board_id}))
            .await,
    )
    .await;
    for taken in [
        name.clone(),
        name.to_uppercase(),
        format!("  {}  ", name.to_lowercase()),
    ] {
        let body = expect_json(
            app.create_agent(&json!({"name": taken, "board_id": board.board_id}))
                .await,
            StatusCode::CONFLICT,
        )
        .await;
        assert!(body["detail"].is_string(), "{body}");
    }
    expect_success(
        app.create_agent(&json!({"name": name, "board_id": other_board}))
            .await,
    )
    .await;
}

#[tokio::test]
async fn renaming_an_agent_to_a_taken_name_is_409() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let first = app.agent_with_token(&board.board_id).await;
    let second = app.agent_with_token(&board.board_id).await;

    expect_json(
        app.patch_agent(&second.id, &json!({"name": first.name.to_uppercase()}))
            .await,
        StatusCode::CONFLICT,
    )
    .await;
    assert_eq!(app.agent(&second.id).await["name"], second.name.as_str());
}

#[tokio::test]
async fn create_agent_validates_its_fields() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;

    expect_validation_error(
        app.create_agent(&json!({"board_id": board.board_id})).await,
        &["body", "name"],
    )
    .await;
    expect_validation_error(
        app.create_agent(&json!({"name": "  ", "board_id": board.board_id}))
            .await,
        &["body", "name"],
    )
    .await;
    expect_validation_error(
        app.create_agent(&json!({"name": unique("a")})).await,
        &["body", "board_id"],
    )
    .await;
    expect_validation_error(
        app.create_agent(&json!({"name": unique("a"), "board_id": "nope"}))
            .await,
        &["body", "board_id"],
    )
    .await;
    expect_client_error(
        app.create_agent(&json!({"name": unique("a"), "board_id": Uuid::new_v4()}))
            .await,
    )
    .await;
}

#[tokio::test]
async fn heartbeat_config_is_validated() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;

    let cases = [
        (json!({"interval_seconds": 0}), "interval_seconds"),
        (json!({"interval_seconds": -5}), "interval_seconds"),
        (json!({"missing_tolerance": 0}), "missing_tolerance"),
        (
            json!({"interval_seconds": 60, "missing_tolerance": 30}),
            "missing_tolerance",
        ),
    ];
    for (config, field) in cases {
        let response = app
            .create_agent(&json!({
                "name": unique("a"),
                "board_id": board.board_id,
                "heartbeat_config": config,
            }))
            .await;
        expect_validation_error(response, &["body", "heartbeat_config", field]).await;
    }

    let body = expect_json(
        app.create_agent(&json!({
            "name": unique("a"),
            "board_id": board.board_id,
            "heartbeat_config": {"interval_seconds": "often"},
        }))
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    let loc = &body["detail"][0]["loc"];
    assert_eq!(loc[0], "body", "{body}");
    assert_eq!(loc[1], "heartbeat_config", "{body}");

    let agent = app.agent_with_token(&board.board_id).await;
    expect_validation_error(
        app.patch_agent(
            &agent.id,
            &json!({"heartbeat_config": {"interval_seconds": 0}}),
        )
        .await,
        &["body", "heartbeat_config", "interval_seconds"],
    )
    .await;
    let page = expect_json(
        app.list_agents(&format!("board_id={}", board.board_id))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(page["total"], 1, "invalid agents were not created: {page}");
}

#[tokio::test]
async fn explicit_heartbeat_config_is_kept() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;

    let agent = app
        .agent_with_config(
            &board.board_id,
            Some(json!({"interval_seconds": 30, "missing_tolerance": 90})),
        )
        .await;
    assert_eq!(
        app.agent(&agent.id).await["heartbeat_config"],
        json!({"interval_seconds": 30, "missing_tolerance": 90})
    );
}

#[tokio::test]
async fn patch_agent_changes_settings() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let agent = app.agent_with_token(&board.board_id).await;
    let new_name = unique("renamed");

    let patched = expect_json(
        app.patch_agent(
            &agent.id,
            &json!({
                "name": new_name,
                "heartbeat_config": {"interval_seconds": 10, "missing_tolerance": 40},
                "identity_profile": {"role": "Researcher"},
            }),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_agent_read(&patched);
    assert_eq!(patched["name"], new_name.as_str());
    assert_eq!(
        patched["heartbeat_config"],
        json!({"interval_seconds": 10, "missing_tolerance": 40})
    );
    assert_eq!(patched["identity_profile"]["role"], "Researcher");
    assert_eq!(app.agent(&agent.id).await["name"], new_name.as_str());
    assert!(app.count_events(&agent.id, "agent.updated").await >= 1);
}

#[tokio::test]
async fn patch_agent_with_status_is_403() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let agent = app.agent_with_token(&board.board_id).await;

    let body = expect_json(
        app.patch_agent(&agent.id, &json!({"status": "healthy"}))
            .await,
        StatusCode::FORBIDDEN,
    )
    .await;
    assert!(body["detail"].is_string(), "{body}");
    assert_eq!(app.agent(&agent.id).await["status"], "provisioning");
}

#[tokio::test]
async fn unknown_agent_is_404_everywhere() {
    let app = TestApp::spawn().await;
    let unknown = Uuid::new_v4().to_string();

    for response in [
        app.get_agent(&unknown).await,
        app.patch_agent(&unknown, &json!({"name": "x"})).await,
        app.delete_agent(&unknown).await,
        app.rotate_agent_token(&unknown).await,
    ] {
        let body = expect_json(response, StatusCode::NOT_FOUND).await;
        assert!(body["detail"].is_string(), "{body}");
        assert!(body["request_id"].is_string(), "{body}");
    }
}

#[tokio::test]
async fn deleted_agent_is_gone_and_its_token_stops_working() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let agent = app.agent_with_token(&board.board_id).await;

    let deleted = expect_json(app.delete_agent(&agent.id).await, StatusCode::OK).await;
    assert_eq!(deleted, json!({"ok": true}));

    expect_json(app.get_agent(&agent.id).await, StatusCode::NOT_FOUND).await;
    expect_json(
        app.agent_heartbeat(&agent.token, None).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    let page = expect_json(
        app.list_agents(&format!("board_id={}", board.board_id))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(page["total"], 0);
    assert_eq!(app.count_events(&agent.id, "agent.deleted").await, 1);
}

#[tokio::test]
async fn agents_are_listed_newest_first_and_filtered_by_board_and_gateway() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let elsewhere = app.unmanaged_board().await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(app.agent_with_token(&board.board_id).await.id);
    }
    app.agent_with_token(&elsewhere.board_id).await;

    let page = expect_json(
        app.list_agents(&format!("board_id={}", board.board_id))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(page["total"], 3);
    let listed: Vec<String> = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(id_of)
        .collect();
    ids.reverse();
    assert_eq!(listed, ids, "newest first");

    let by_gateway = expect_json(
        app.list_agents(&format!("gateway_id={}", elsewhere.gateway_id))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(by_gateway["total"], 1);
    assert_eq!(by_gateway["items"][0]["board_id"], elsewhere.board_id);

    let all = expect_json(app.list_agents("").await, StatusCode::OK).await;
    assert_eq!(all["total"], 4);
    for item in all["items"].as_array().expect("items") {
        assert_agent_read(item);
    }
}

/// The `total` of `GET /agents?{query}` and how many agents its page lists.
async fn total_and_listed(app: &TestApp, query: &str) -> (u64, usize) {
    let page = expect_json(app.list_agents(query).await, StatusCode::OK).await;
    let total = page["total"].as_u64().expect("a total");
    (total, page["items"].as_array().expect("items").len())
}

/// The totals of `queries`, each checked against the agents its page lists (every page
/// of these tests holds all the agents it counts).
async fn exact_totals(app: &TestApp, queries: &[String]) -> Vec<u64> {
    let mut totals = Vec::new();
    for query in queries {
        let (total, listed) = total_and_listed(app, query).await;
        assert_eq!(usize::try_from(total).unwrap(), listed, "{query}");
        totals.push(total);
    }
    totals
}

#[tokio::test]
async fn listing_totals_stay_exact_through_creates_deletes_moves_and_a_board_deletion() {
    let app = TestApp::spawn().await;
    let first = app.unmanaged_board().await;
    let second = app.unmanaged_board().await;
    let queries = [
        String::new(),
        format!("board_id={}", first.board_id),
        format!("board_id={}", second.board_id),
        format!("gateway_id={}", first.gateway_id),
        format!("gateway_id={}", second.gateway_id),
        format!(
            "board_id={}&gateway_id={}",
            first.board_id, first.gateway_id
        ),
        format!(
            "board_id={}&gateway_id={}",
            first.board_id, second.gateway_id
        ),
    ];
    let mut on_first = Vec::new();
    for _ in 0..3 {
        on_first.push(app.agent_with_token(&first.board_id).await.id);
    }
    for _ in 0..2 {
        app.agent_with_token(&second.board_id).await;
    }
    assert_eq!(exact_totals(&app, &queries).await, [5, 3, 2, 3, 2, 3, 0]);

    expect_success(app.delete_agent(&on_first[0]).await).await;
    assert_eq!(exact_totals(&app, &queries).await, [4, 2, 2, 2, 2, 2, 0]);

    // Moved to a board on another gateway: its board and its gateway change.
    expect_success(
        app.patch_agent(&on_first[1], &json!({"board_id": second.board_id}))
            .await,
    )
    .await;
    assert_eq!(exact_totals(&app, &queries).await, [4, 1, 3, 1, 3, 1, 0]);

    // The first board moves to the second gateway without its agent; a new agent of
    // the board is created on the board's new gateway.
    expect_success(
        app.patch_board(&first.board_id, &json!({"gateway_id": second.gateway_id}))
            .await,
    )
    .await;
    app.agent_with_token(&first.board_id).await;
    assert_eq!(exact_totals(&app, &queries).await, [5, 2, 3, 1, 4, 1, 1]);

    expect_success(app.delete_board(&second.board_id).await).await;
    assert_eq!(exact_totals(&app, &queries).await, [2, 2, 0, 1, 1, 1, 1]);
}

#[tokio::test]
async fn an_agent_stored_by_another_replica_and_not_yet_followed_is_listed_from_the_database() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let known = app.agent_with_token(&board.board_id).await;
    let name = unique("elsewhere");
    let elsewhere = app
        .store_agent_with_create_job(&board.board_id, &board.gateway_id, &name)
        .await;

    let page = expect_json(
        app.list_agents(&format!("board_id={}", board.board_id))
            .await,
        StatusCode::OK,
    )
    .await;
    let items = page["items"].as_array().expect("items");
    let listed: Vec<String> = items.iter().map(id_of).collect();
    assert_eq!(
        listed,
        [elsewhere.clone(), known.id],
        "newest first: {page}"
    );
    assert_agent_read(&items[0]);
    assert_eq!(items[0]["name"], name.as_str());
    assert_eq!(items[0]["board_id"], board.board_id);
}

#[tokio::test]
async fn on_two_replicas_the_total_on_one_follows_creates_moves_and_deletes_on_the_other() {
    let database_url = TestPostgres::shared().fresh_schema_url().await;
    let a = TestApp::spawn_on(Some(database_url.clone()), |_| {}).await;
    let b = TestApp::spawn_on(Some(database_url), |_| {}).await;
    let first = a.unmanaged_board().await;
    let second = a.board_on(&first.gateway_id).await;
    let totals_on_b = || async {
        [
            total_and_listed(&b, "").await.0,
            total_and_listed(&b, &format!("board_id={}", first.board_id))
                .await
                .0,
            total_and_listed(&b, &format!("board_id={second}")).await.0,
        ]
    };
    assert_eq!(totals_on_b().await, [0, 0, 0]);

    let mut created = Vec::new();
    for _ in 0..3 {
        created.push(a.agent_with_token(&first.board_id).await.id);
    }
    eventually("B to count A's creates", || async {
        totals_on_b().await == [3, 3, 0]
    })
    .await;

    expect_success(
        a.patch_agent(&created[0], &json!({"board_id": second}))
            .await,
    )
    .await;
    eventually("B to count the move", || async {
        totals_on_b().await == [3, 2, 1]
    })
    .await;

    expect_success(a.delete_agent(&created[1]).await).await;
    eventually("B to count the delete", || async {
        totals_on_b().await == [2, 1, 1]
    })
    .await;

    expect_success(a.delete_board(&second).await).await;
    eventually("B to count the board's deletion", || async {
        totals_on_b().await == [1, 1, 0]
    })
    .await;
    // Settled: B's totals count what B lists.
    assert_eq!(
        exact_totals(&b, &[String::new(), format!("board_id={}", first.board_id)]).await,
        [1, 1]
    );
}

#[tokio::test]
async fn rotating_a_token_returns_a_new_one_and_voids_the_old_one() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let agent = app.agent_with_token(&board.board_id).await;

    let rotated = expect_success(app.rotate_agent_token(&agent.id).await).await;
    let new_token = rotated["token"].as_str().expect("a token");
    assert_ne!(new_token, agent.token);
    assert!(new_token.len() >= 32, "a strong token");

    expect_json(
        app.agent_heartbeat(&agent.token, None).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    expect_json(app.agent_heartbeat(new_token, None).await, StatusCode::OK).await;
    assert!(app.count_events(&agent.id, "agent.token_rotated").await >= 1);
}

#[tokio::test]
async fn agent_tokens_never_appear_in_reads() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let agent = app.agent_with_token(&board.board_id).await;
    let enrollment = app.enrollment_token(&board.board_id, &json!({})).await;
    let enrolled = app
        .heartbeat_by_name(
            Auth::Agent(&enrollment.token),
            &json!({"name": unique("newcomer")}),
        )
        .await;
    let enrolled_token = agent_token_header(&enrolled).expect("a token");
    let enrolled_id = id_of(&expect_success(enrolled).await);
    let rotated = app.new_token_for(&agent.id).await;
    expect_json(app.agent_heartbeat(&rotated, None).await, StatusCode::OK).await;
    expect_json(
        app.agent_heartbeat(&enrolled_token, None).await,
        StatusCode::OK,
    )
    .await;

    let reads = [
        app.get_agent(&agent.id).await,
        app.get_agent(&enrolled_id).await,
        app.list_agents("").await,
        app.list_agents(&format!("board_id={}", board.board_id))
            .await,
        app.list_activity(Auth::Admin, "").await,
        app.list_activity(Auth::Agent(&rotated), "").await,
        app.list_activity(Auth::Agent(&enrolled_token), "").await,
        app.list_enrollment_tokens(&board.board_id).await,
        app.heartbeat_by_name(Auth::Agent(&rotated), &json!({"name": agent.name}))
            .await,
        app.heartbeat_agent_id(Auth::Admin, &agent.id, &json!({}))
            .await,
        app.patch_agent(&agent.id, &json!({"identity_template": "Hello"}))
            .await,
    ];
    for response in reads {
        let url = response.url().clone();
        let status = response.status();
        let text = response.text().await.expect("a body");
        assert!(status.is_success(), "{url}: {status}: {text}");
        for secret in [&agent.token, &rotated, &enrolled_token, &enrollment.token] {
            assert!(
                !text.contains(secret.as_str()),
                "{url} leaks a token: {text}"
            );
        }
        assert!(
            !text.contains(&app.admin_token),
            "{url} leaks the admin token"
        );
    }
}

#[tokio::test]
async fn admin_only_endpoints_refuse_agent_tokens() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let agent = app.agent_with_token(&board.board_id).await;
    let enrollment = app.enrollment_token(&board.board_id, &json!({})).await;
    let agents_path = format!("/api/v1/agents/{}", agent.id);
    let board_path = format!("/api/v1/boards/{}", board.board_id);
    let gateway_path = format!("/api/v1/gateways/{}", board.gateway_id);
    let tokens_path = format!("{board_path}/enrollment-tokens");

    let endpoints: Vec<(Method, String, Option<Value>)> = vec![
        (
            Method::POST,
            "/api/v1/gateways".into(),
            Some(json!({"name": "g", "url": ""})),
        ),
        (Method::GET, "/api/v1/gateways".into(), None),
        (Method::GET, gateway_path.clone(), None),
        (
            Method::PATCH,
            gateway_path.clone(),
            Some(json!({"name": "g2"})),
        ),
        (Method::DELETE, gateway_path, None),
        (
            Method::POST,
            "/api/v1/boards".into(),
            Some(
                json!({"name": "b", "slug": unique("b"), "description": "d", "gateway_id": board.gateway_id}),
            ),
        ),
        (Method::GET, "/api/v1/boards".into(), None),
        (Method::GET, board_path.clone(), None),
        (
            Method::PATCH,
            board_path.clone(),
            Some(json!({"name": "b2"})),
        ),
        (Method::DELETE, board_path, None),
        (Method::POST, tokens_path.clone(), Some(json!({}))),
        (Method::GET, tokens_path.clone(), None),
        (
            Method::DELETE,
            format!("{tokens_path}/{}", enrollment.id),
            None,
        ),
        (
            Method::POST,
            "/api/v1/agents".into(),
            Some(json!({"name": unique("a"), "board_id": board.board_id})),
        ),
        (Method::GET, "/api/v1/agents".into(), None),
        (Method::POST, format!("{agents_path}/token"), None),
    ];

    for (method, path, body) in &endpoints {
        for auth in [Auth::Agent(&agent.token), Auth::Bearer(&agent.token)] {
            expect_denied(app.send(method.clone(), path, auth, body.as_ref()).await).await;
        }
        let refused = expect_json(
            app.send(method.clone(), path, Auth::None, body.as_ref())
                .await,
            StatusCode::UNAUTHORIZED,
        )
        .await;
        assert_eq!(
            refused["detail"], "Unauthorized",
            "{method} {path}: {refused}"
        );
        expect_json(
            app.send(
                method.clone(),
                path,
                Auth::Bearer(&format!("{}x", app.admin_token)),
                body.as_ref(),
            )
            .await,
            StatusCode::UNAUTHORIZED,
        )
        .await;
    }

    expect_json(
        app.agent_heartbeat(&agent.token, None).await,
        StatusCode::OK,
    )
    .await;
    expect_json(app.get_board(&board.board_id).await, StatusCode::OK).await;
    expect_json(app.get_gateway(&board.gateway_id).await, StatusCode::OK).await;
    assert_eq!(
        app.listed_enrollment_token(&enrollment).await["revoked_at"],
        Value::Null,
        "nothing was changed by the refused calls"
    );
}

#[tokio::test]
async fn an_agent_sees_only_its_own_activity() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let me = app.agent_with_token(&board.board_id).await;
    let other = app.agent_with_token(&board.board_id).await;
    expect_json(app.agent_heartbeat(&me.token, None).await, StatusCode::OK).await;
    expect_json(
        app.agent_heartbeat(&other.token, None).await,
        StatusCode::OK,
    )
    .await;

    let mine = expect_json(
        app.list_activity(Auth::Agent(&me.token), "").await,
        StatusCode::OK,
    )
    .await;
    let items = mine["items"].as_array().expect("items");
    assert!(!items.is_empty(), "{mine}");
    for event in items {
        assert_eq!(event["agent_id"], me.id, "{mine}");
    }
    let asked_for_other = expect_success(
        app.list_activity(Auth::Agent(&me.token), &format!("agent_id={}", other.id))
            .await,
    )
    .await;
    for event in asked_for_other["items"].as_array().expect("items") {
        assert_eq!(event["agent_id"], me.id, "{asked_for_other}");
    }
}

#[tokio::test]
async fn activity_is_newest_first_with_increasing_ids_and_filters() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let elsewhere = app.unmanaged_board().await;
    let agent = app.agent_with_token(&board.board_id).await;
    let stranger = app.agent_with_token(&elsewhere.board_id).await;
    expect_json(
        app.agent_heartbeat(&agent.token, None).await,
        StatusCode::OK,
    )
    .await;

    let page = expect_json(app.list_activity(Auth::Admin, "").await, StatusCode::OK).await;
    let items = page["items"].as_array().expect("items");
    assert!(items.len() >= 2, "{page}");
    let ids: Vec<i64> = items
        .iter()
        .map(|event| event["id"].as_i64().expect("integer ids"))
        .collect();
    assert!(
        ids.windows(2).all(|pair| pair[0] > pair[1]),
        "newest first: {ids:?}"
    );
    for event in items {
        for field in [
            "event_type",
            "message",
            "agent_id",
            "board_id",
            "data",
            "created_at",
        ] {
            assert!(event.get(field).is_some(), "event lacks {field}: {event}");
        }
    }

    let on_board = expect_json(
        app.list_activity(Auth::Admin, &format!("board_id={}", board.board_id))
            .await,
        StatusCode::OK,
    )
    .await;
    let on_board = on_board["items"].as_array().expect("items");
    assert!(!on_board.is_empty());
    assert!(
        on_board
            .iter()
            .all(|event| event["board_id"] == board.board_id)
    );
    assert!(
        on_board
            .iter()
            .all(|event| event["agent_id"] != stranger.id)
    );

    let about_agent = app.activity_of(&agent.id).await;
    assert!(
        about_agent
            .iter()
            .all(|event| event["agent_id"] == agent.id)
    );
    assert!(
        about_agent
            .iter()
            .any(|event| event["event_type"] == "agent.created")
    );
}

#[tokio::test]
async fn activity_without_credentials_is_401() {
    let app = TestApp::spawn().await;

    let body = expect_json(
        app.list_activity(Auth::None, "").await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_eq!(body["detail"], "Unauthorized");
}

#[tokio::test]
async fn generated_admin_token_is_long_accepted_and_kept_across_restarts() {
    let mut app = TestApp::spawn_with(|config| config.admin_token = None).await;
    let generated = app.admin_token.clone();
    assert!(generated.len() >= 50, "at least 50 characters");
    expect_json(app.list_agents("").await, StatusCode::OK).await;

    app.restart().await;

    assert_eq!(
        app.admin_token, generated,
        "the first start's token is kept"
    );
    expect_json(app.list_agents("").await, StatusCode::OK).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_a_token_right_after_the_first_heartbeat_always_succeeds() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    // The first heartbeat's transition is written behind at once, racing the rotation's
    // transaction on the same agent: neither may fail the other.
    for _ in 0..40 {
        let agent = app.agent_with_token(&board.board_id).await;
        let (beat, rotated) = tokio::join!(
            app.agent_heartbeat(&agent.token, Some(r#"{"status": "healthy"}"#)),
            app.rotate_agent_token(&agent.id),
        );
        // The heartbeat may come second and carry the token the rotation just replaced.
        assert!(
            [StatusCode::OK, StatusCode::UNAUTHORIZED].contains(&beat.status()),
            "{}",
            beat.status()
        );
        let status = rotated.status();
        assert_eq!(status, StatusCode::OK, "{}", rotated.text().await.unwrap());
    }
}
