//! Enrollment: a brand-new agent announces itself with a board-scoped enrollment token on
//! its first heartbeat, gets created on that board, and receives its own token once.

use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{
    Auth, TestApp, agent_token_header, assert_agent_read, expect_client_error, expect_json,
    expect_success, expect_validation_error, id_of, timestamp, unique,
};

#[tokio::test]
async fn enrollment_token_is_shown_once_and_listed_without_its_secret() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;

    let created = expect_success(
        app.create_enrollment_token(&board.board_id, &json!({"max_uses": 3}))
            .await,
    )
    .await;
    let token = created["token"]
        .as_str()
        .expect("the token is shown on creation");
    assert!(token.starts_with("mce_"), "{created}");
    assert_eq!(created["board_id"], board.board_id);
    assert_eq!(created["max_uses"], 3);
    assert_eq!(created["uses"], 0);
    assert_eq!(created["revoked_at"], serde_json::Value::Null);
    let lifetime = timestamp(&created["expires_at"]).as_millis()
        - timestamp(&created["created_at"]).as_millis();
    assert!(
        (86_399_000..=86_401_000).contains(&lifetime),
        "the default lifetime is one day: {created}"
    );

    let response = app.list_enrollment_tokens(&board.board_id).await;
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.expect("a body");
    assert!(
        !text.contains(token),
        "the list never shows the secret: {text}"
    );
    let page: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(page["total"], 1);
    let listed = &page["items"][0];
    assert_eq!(listed["id"], created["id"]);
    assert!(listed.get("token").is_none(), "{listed}");
    for field in [
        "board_id",
        "expires_at",
        "max_uses",
        "uses",
        "revoked_at",
        "created_at",
    ] {
        assert!(
            listed.get(field).is_some(),
            "listed token lacks {field}: {listed}"
        );
    }
}

#[tokio::test]
async fn enrollment_token_settings_are_validated() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;

    for (body, field) in [
        (json!({"expires_in_seconds": 59}), "expires_in_seconds"),
        (json!({"expires_in_seconds": "soon"}), "expires_in_seconds"),
        (json!({"max_uses": 0}), "max_uses"),
        (json!({"max_uses": -1}), "max_uses"),
    ] {
        expect_validation_error(
            app.create_enrollment_token(&board.board_id, &body).await,
            &["body", field],
        )
        .await;
    }

    let shortest = expect_success(
        app.create_enrollment_token(&board.board_id, &json!({"expires_in_seconds": 60}))
            .await,
    )
    .await;
    let lifetime = timestamp(&shortest["expires_at"]).as_millis()
        - timestamp(&shortest["created_at"]).as_millis();
    assert!((59_000..=61_000).contains(&lifetime), "{shortest}");
    assert_eq!(
        shortest["max_uses"],
        serde_json::Value::Null,
        "unlimited by default"
    );
}

#[tokio::test]
async fn enrollment_token_lifetime_is_at_most_one_year() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;

    let longest = expect_success(
        app.create_enrollment_token(&board.board_id, &json!({"expires_in_seconds": 31_536_000}))
            .await,
    )
    .await;
    let lifetime = timestamp(&longest["expires_at"]).as_millis()
        - timestamp(&longest["created_at"]).as_millis();
    assert_eq!(lifetime, 31_536_000_000, "{longest}");
    expect_validation_error(
        app.create_enrollment_token(&board.board_id, &json!({"expires_in_seconds": 31_536_001}))
            .await,
        &["body", "expires_in_seconds"],
    )
    .await;
}

#[tokio::test]
async fn enrollment_token_for_an_unknown_board_is_refused() {
    let app = TestApp::spawn().await;

    expect_client_error(
        app.create_enrollment_token(&Uuid::new_v4().to_string(), &json!({}))
            .await,
    )
    .await;
}

#[tokio::test]
async fn first_heartbeat_with_an_enrollment_token_creates_the_agent_on_the_tokens_board() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let enrollment = app.enrollment_token(&board.board_id, &json!({})).await;
    let name = unique("newcomer");

    let response = app
        .heartbeat_by_name(Auth::Agent(&enrollment.token), &json!({"name": name}))
        .await;
    let own_token = agent_token_header(&response).expect("the new agent's token in X-Agent-Token");
    assert!(
        !own_token.starts_with("mce_"),
        "an agent token, not an enrollment token"
    );
    let status = response.status();
    let text = response.text().await.expect("a body");
    assert!(status.is_success(), "{status}: {text}");
    assert!(
        !text.contains(&own_token),
        "the token is only in the header: {text}"
    );
    let read: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    assert_agent_read(&read);
    assert_eq!(read["name"], name.as_str());
    assert_eq!(read["board_id"], board.board_id);
    assert_eq!(read["gateway_id"], board.gateway_id);
    assert_eq!(
        read["status"], "healthy",
        "the bootstrap is its first heartbeat"
    );
    assert!(read["last_seen_at"].is_string(), "{read}");

    let listed = app.listed_enrollment_token(&enrollment).await;
    assert_eq!(listed["uses"], 1);

    let own = expect_json(app.agent_heartbeat(&own_token, None).await, StatusCode::OK).await;
    assert_eq!(
        own["id"], read["id"],
        "the header token is the agent's own token"
    );
    assert_eq!(app.count_events(&id_of(&read), "agent.created").await, 1);
}

#[tokio::test]
async fn bootstrap_reporting_degraded_creates_a_degraded_agent() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let enrollment = app.enrollment_token(&board.board_id, &json!({})).await;

    let read = expect_success(
        app.heartbeat_by_name(
            Auth::Agent(&enrollment.token),
            &json!({"name": unique("newcomer"), "status": "degraded"}),
        )
        .await,
    )
    .await;
    assert_eq!(read["status"], "degraded");
}

#[tokio::test]
async fn bootstrap_with_the_tokens_own_board_id_in_the_body_is_accepted() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let enrollment = app.enrollment_token(&board.board_id, &json!({})).await;

    let read = expect_success(
        app.heartbeat_by_name(
            Auth::Agent(&enrollment.token),
            &json!({"name": unique("newcomer"), "board_id": board.board_id, "status": "healthy"}),
        )
        .await,
    )
    .await;
    assert_eq!(read["board_id"], board.board_id);
}

#[tokio::test]
async fn bootstrap_with_another_board_id_in_the_body_is_403() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let other_board = app.board_on(&board.gateway_id).await;
    let enrollment = app.enrollment_token(&board.board_id, &json!({})).await;

    let response = app
        .heartbeat_by_name(
            Auth::Agent(&enrollment.token),
            &json!({"name": unique("newcomer"), "board_id": other_board}),
        )
        .await;
    assert_eq!(agent_token_header(&response), None);
    expect_json(response, StatusCode::FORBIDDEN).await;

    let page = expect_json(app.list_agents("").await, StatusCode::OK).await;
    assert_eq!(page["total"], 0, "no agent was created: {page}");
    let listed = app.listed_enrollment_token(&enrollment).await;
    assert_eq!(listed["uses"], 0);
}

#[tokio::test]
async fn retried_first_heartbeat_returns_the_same_agent_with_a_new_token_and_voids_the_old_one() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let enrollment = app.enrollment_token(&board.board_id, &json!({})).await;
    let name = unique("newcomer");
    let bootstrap = json!({"name": name});

    let first = app
        .heartbeat_by_name(Auth::Agent(&enrollment.token), &bootstrap)
        .await;
    let first_token = agent_token_header(&first).expect("a token on the first heartbeat");
    let first = expect_success(first).await;

    let retry = app
        .heartbeat_by_name(Auth::Agent(&enrollment.token), &bootstrap)
        .await;
    let retry_token = agent_token_header(&retry).expect("a token on the retried heartbeat");
    let retry = expect_success(retry).await;

    assert_eq!(retry["id"], first["id"], "the same agent");
    assert_ne!(retry_token, first_token, "a freshly minted token");
    expect_json(
        app.agent_heartbeat(&first_token, None).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    expect_json(
        app.agent_heartbeat(&retry_token, None).await,
        StatusCode::OK,
    )
    .await;

    let listed = app.listed_enrollment_token(&enrollment).await;
    assert_eq!(listed["uses"], 1, "a retry is not another use");
    let page = expect_json(
        app.list_agents(&format!("board_id={}", board.board_id))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(page["total"], 1, "{page}");
}

#[tokio::test]
async fn retried_first_heartbeat_matches_the_name_case_insensitively() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let enrollment = app.enrollment_token(&board.board_id, &json!({})).await;
    let name = unique("Newcomer");

    let first = expect_success(
        app.heartbeat_by_name(Auth::Agent(&enrollment.token), &json!({"name": name}))
            .await,
    )
    .await;
    let retry = app
        .heartbeat_by_name(
            Auth::Agent(&enrollment.token),
            &json!({"name": name.to_uppercase()}),
        )
        .await;
    assert!(agent_token_header(&retry).is_some());
    let retry = expect_success(retry).await;
    assert_eq!(retry["id"], first["id"]);
}

#[tokio::test]
async fn retried_first_heartbeat_after_the_agent_used_its_own_token_is_403() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let enrollment = app.enrollment_token(&board.board_id, &json!({})).await;
    let bootstrap = json!({"name": unique("newcomer")});

    let first = app
        .heartbeat_by_name(Auth::Agent(&enrollment.token), &bootstrap)
        .await;
    let own_token = agent_token_header(&first).expect("a token");
    expect_success(first).await;
    expect_json(app.agent_heartbeat(&own_token, None).await, StatusCode::OK).await;

    let retry = app
        .heartbeat_by_name(Auth::Agent(&enrollment.token), &bootstrap)
        .await;
    assert_eq!(
        agent_token_header(&retry),
        None,
        "no token for a refused retry"
    );
    expect_json(retry, StatusCode::FORBIDDEN).await;
    expect_json(app.agent_heartbeat(&own_token, None).await, StatusCode::OK).await;
}

#[tokio::test]
async fn bootstrap_with_the_name_of_an_agent_the_admin_created_is_403() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let existing = app.agent_with_token(&board.board_id).await;
    let enrollment = app.enrollment_token(&board.board_id, &json!({})).await;

    let response = app
        .heartbeat_by_name(
            Auth::Agent(&enrollment.token),
            &json!({"name": existing.name}),
        )
        .await;
    assert_eq!(agent_token_header(&response), None);
    expect_json(response, StatusCode::FORBIDDEN).await;
    expect_json(
        app.agent_heartbeat(&existing.token, None).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(app.listed_enrollment_token(&enrollment).await["uses"], 0);
}

#[tokio::test]
async fn bootstrap_with_another_agents_name_in_other_case_neither_creates_nor_takes_it_over() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let existing = app.agent_with_token(&board.board_id).await;
    let enrollment = app.enrollment_token(&board.board_id, &json!({})).await;

    let response = app
        .heartbeat_by_name(
            Auth::Agent(&enrollment.token),
            &json!({"name": existing.name.to_uppercase()}),
        )
        .await;
    assert_eq!(agent_token_header(&response), None);
    expect_client_error(response).await;
    let page = expect_json(
        app.list_agents(&format!("board_id={}", board.board_id))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        page["total"], 1,
        "names are unique case-insensitively: {page}"
    );
}

#[tokio::test]
async fn bootstrap_with_the_name_of_an_agent_enrolled_by_another_token_is_403() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let first_token = app.enrollment_token(&board.board_id, &json!({})).await;
    let second_token = app.enrollment_token(&board.board_id, &json!({})).await;
    let bootstrap = json!({"name": unique("newcomer")});

    expect_success(
        app.heartbeat_by_name(Auth::Agent(&first_token.token), &bootstrap)
            .await,
    )
    .await;
    let response = app
        .heartbeat_by_name(Auth::Agent(&second_token.token), &bootstrap)
        .await;
    assert_eq!(agent_token_header(&response), None);
    expect_json(response, StatusCode::FORBIDDEN).await;
}

#[tokio::test]
async fn enrollment_token_of_one_board_does_not_reach_an_agent_of_another_board() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let other_board = app.board_on(&board.gateway_id).await;
    let elsewhere = app.agent_with_token(&other_board).await;
    let enrollment = app.enrollment_token(&board.board_id, &json!({})).await;

    let read = expect_success(
        app.heartbeat_by_name(
            Auth::Agent(&enrollment.token),
            &json!({"name": elsewhere.name}),
        )
        .await,
    )
    .await;
    assert_eq!(
        read["board_id"], board.board_id,
        "a new agent on the token's board"
    );
    assert_ne!(read["id"], elsewhere.id.as_str());
    assert_eq!(app.agent(&elsewhere.id).await["status"], "provisioning");
}

#[tokio::test]
async fn revoked_enrollment_token_is_401() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let enrollment = app.enrollment_token(&board.board_id, &json!({})).await;

    let revoked = expect_json(
        app.revoke_enrollment_token(&board.board_id, &enrollment.id)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(revoked, json!({"ok": true}));
    let listed = app.listed_enrollment_token(&enrollment).await;
    assert!(listed["revoked_at"].is_string(), "{listed}");

    let response = app
        .heartbeat_by_name(
            Auth::Agent(&enrollment.token),
            &json!({"name": unique("late")}),
        )
        .await;
    assert_eq!(agent_token_header(&response), None);
    let body = expect_json(response, StatusCode::UNAUTHORIZED).await;
    assert!(body["detail"].is_string(), "{body}");
    let page = expect_json(app.list_agents("").await, StatusCode::OK).await;
    assert_eq!(page["total"], 0);
}

#[tokio::test]
async fn revoked_enrollment_token_is_401_even_for_a_retried_first_heartbeat() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let enrollment = app.enrollment_token(&board.board_id, &json!({})).await;
    let bootstrap = json!({"name": unique("newcomer")});

    let first = app
        .heartbeat_by_name(Auth::Agent(&enrollment.token), &bootstrap)
        .await;
    let own_token = agent_token_header(&first).expect("a token");
    expect_success(first).await;
    expect_json(
        app.revoke_enrollment_token(&board.board_id, &enrollment.id)
            .await,
        StatusCode::OK,
    )
    .await;

    let retry = app
        .heartbeat_by_name(Auth::Agent(&enrollment.token), &bootstrap)
        .await;
    assert_eq!(agent_token_header(&retry), None);
    expect_json(retry, StatusCode::UNAUTHORIZED).await;
    expect_json(app.agent_heartbeat(&own_token, None).await, StatusCode::OK).await;
}

#[tokio::test]
async fn used_up_enrollment_token_is_401_for_a_new_name() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let enrollment = app
        .enrollment_token(&board.board_id, &json!({"max_uses": 1}))
        .await;

    expect_success(
        app.heartbeat_by_name(
            Auth::Agent(&enrollment.token),
            &json!({"name": unique("first")}),
        )
        .await,
    )
    .await;
    let response = app
        .heartbeat_by_name(
            Auth::Agent(&enrollment.token),
            &json!({"name": unique("second")}),
        )
        .await;
    assert_eq!(agent_token_header(&response), None);
    let body = expect_json(response, StatusCode::UNAUTHORIZED).await;
    assert!(body["detail"].is_string(), "{body}");

    let listed = app.listed_enrollment_token(&enrollment).await;
    assert_eq!(listed["uses"], 1);
    let page = expect_json(app.list_agents("").await, StatusCode::OK).await;
    assert_eq!(page["total"], 1);
}

#[tokio::test]
async fn used_up_enrollment_token_still_accepts_a_retried_first_heartbeat() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let enrollment = app
        .enrollment_token(&board.board_id, &json!({"max_uses": 1}))
        .await;
    let bootstrap = json!({"name": unique("newcomer")});

    let first = expect_success(
        app.heartbeat_by_name(Auth::Agent(&enrollment.token), &bootstrap)
            .await,
    )
    .await;
    let retry = app
        .heartbeat_by_name(Auth::Agent(&enrollment.token), &bootstrap)
        .await;
    let retry_token = agent_token_header(&retry).expect("a fresh token on the retry");
    let retry = expect_success(retry).await;
    assert_eq!(retry["id"], first["id"]);
    expect_json(
        app.agent_heartbeat(&retry_token, None).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(app.listed_enrollment_token(&enrollment).await["uses"], 1);
}

#[tokio::test]
async fn each_enrolled_agent_counts_one_use() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let enrollment = app
        .enrollment_token(&board.board_id, &json!({"max_uses": 3}))
        .await;
    let first = json!({"name": unique("first")});

    for _ in 0..3 {
        expect_success(
            app.heartbeat_by_name(Auth::Agent(&enrollment.token), &first)
                .await,
        )
        .await;
    }
    expect_success(
        app.heartbeat_by_name(
            Auth::Agent(&enrollment.token),
            &json!({"name": unique("second")}),
        )
        .await,
    )
    .await;

    assert_eq!(app.listed_enrollment_token(&enrollment).await["uses"], 2);
}

#[tokio::test]
async fn concurrent_bootstraps_never_exceed_max_uses() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let enrollment = app
        .enrollment_token(&board.board_id, &json!({"max_uses": 5}))
        .await;

    let names: Vec<String> = (0..20).map(|i| unique(&format!("racer{i}"))).collect();
    let (app, token) = (&app, enrollment.token.as_str());
    let responses = join_all(names.iter().map(|name| async move {
        app.heartbeat_by_name(Auth::Agent(token), &json!({"name": name}))
            .await
    }))
    .await;
    let mut created = 0;
    for response in responses {
        match response.status() {
            status if status.is_success() => created += 1,
            StatusCode::UNAUTHORIZED => {}
            other => panic!(
                "unexpected {other}: {}",
                response.text().await.unwrap_or_default()
            ),
        }
    }

    assert_eq!(created, 5);
    assert_eq!(app.listed_enrollment_token(&enrollment).await["uses"], 5);
    let page = expect_json(
        app.list_agents(&format!("board_id={}", board.board_id))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(page["total"], 5);
}

#[tokio::test]
async fn enrollment_token_is_refused_everywhere_but_the_bootstrap_heartbeat() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let enrollment = app.enrollment_token(&board.board_id, &json!({})).await;
    let enrolled = expect_success(
        app.heartbeat_by_name(
            Auth::Agent(&enrollment.token),
            &json!({"name": unique("newcomer")}),
        )
        .await,
    )
    .await;
    let agent_id = id_of(&enrolled);
    let auth = Auth::Agent(&enrollment.token);

    expect_json(
        app.agent_heartbeat(&enrollment.token, None).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    expect_json(
        app.heartbeat_agent_id(auth, &agent_id, &json!({})).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    expect_json(app.list_activity(auth, "").await, StatusCode::UNAUTHORIZED).await;
    expect_json(
        app.send(
            reqwest::Method::GET,
            "/api/v1/agents",
            Auth::Bearer(&enrollment.token),
            None,
        )
        .await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
}

#[tokio::test]
async fn expired_enrollment_token_is_401_even_for_a_retried_first_heartbeat() {
    let app = TestApp::spawn().await;
    let board = app.unmanaged_board().await;
    let created = expect_success(
        app.create_enrollment_token(&board.board_id, &json!({"expires_in_seconds": 60}))
            .await,
    )
    .await;
    let token = created["token"].as_str().expect("a token");
    let bootstrap = json!({"name": unique("newcomer")});
    let first = app.heartbeat_by_name(Auth::Agent(token), &bootstrap).await;
    let own_token = agent_token_header(&first).expect("a token");
    expect_success(first).await;

    let expires_at = timestamp(&created["expires_at"]).as_millis();
    let now = mc_domain::Timestamp::now().as_millis();
    let wait = u64::try_from(expires_at - now + 1000).unwrap_or(0);
    tokio::time::sleep(std::time::Duration::from_millis(wait)).await;

    let retry = app.heartbeat_by_name(Auth::Agent(token), &bootstrap).await;
    assert_eq!(agent_token_header(&retry), None);
    expect_json(retry, StatusCode::UNAUTHORIZED).await;
    let body = expect_json(
        app.heartbeat_by_name(Auth::Agent(token), &json!({"name": unique("late")}))
            .await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert!(body["detail"].is_string(), "{body}");
    expect_json(app.agent_heartbeat(&own_token, None).await, StatusCode::OK).await;
}
