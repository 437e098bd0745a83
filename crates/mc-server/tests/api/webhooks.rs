//! Outbound webhooks: subscriptions (secret write-only), deliveries signed with
//! HMAC-SHA256 of the body, retried with backoff until the receiver recovers or the
//! attempts run out, and a delivery log per subscription.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode as AxumStatus};
use hmac::{Hmac, Mac};
use mc_domain::webhook::RetryPolicy;
use mc_server::config::ServerConfig;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::net::TcpListener;

use crate::helpers::{
    Auth, TestApp, eventually, expect_json, expect_success, expect_validation_error, id_of,
};

const SECRET: &str = "a-webhook-secret-of-some-length";

/// Fast retries for tests: 100 ms doubling to 400 ms, four attempts.
fn fast_retries(config: &mut ServerConfig) {
    config.webhook_delivery.retry = RetryPolicy {
        first: Duration::from_millis(100),
        cap: Duration::from_millis(400),
        max_attempts: 4,
    };
    config.webhook_delivery.timeout = Duration::from_secs(2);
}

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    headers: HeaderMap,
    body: Bytes,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }
}

/// A local HTTP receiver answering each request with the next scripted status (200 once
/// the script is used up) and recording every request.
struct Receiver {
    url: String,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    async fn start(script: &[u16]) -> Self {
        let received = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(script.iter().copied().collect::<VecDeque<_>>()));
        let app = {
            let received = Arc::clone(&received);
            axum::Router::new().route(
                "/hook",
                axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                    let received = Arc::clone(&received);
                    let script = Arc::clone(&script);
                    async move {
                        received.lock().unwrap().push(Received { headers, body });
                        let status = script.lock().unwrap().pop_front().unwrap_or(200);
                        AxumStatus::from_u16(status).unwrap()
                    }
                }),
            )
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            url: format!("http://{address}/hook"),
            received,
        }
    }

    fn requests(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

async fn create_webhook(app: &TestApp, body: &Value) -> reqwest::Response {
    app.send(Method::POST, "/api/v1/webhooks", Auth::Admin, Some(body))
        .await
}

async fn subscribe(app: &TestApp, url: &str, event_types: &[&str]) -> String {
    let webhook = expect_success(
        create_webhook(
            app,
            &json!({"url": url, "event_types": event_types, "secret": SECRET}),
        )
        .await,
    )
    .await;
    id_of(&webhook)
}

async fn deliveries(app: &TestApp, webhook_id: &str) -> Vec<Value> {
    let page = expect_success(
        app.send(
            Method::GET,
            &format!("/api/v1/webhooks/{webhook_id}/deliveries"),
            Auth::Admin,
            None,
        )
        .await,
    )
    .await;
    page["items"].as_array().expect("items").clone()
}

/// Waits until the newest delivery of the subscription satisfies `check`, and returns it.
async fn newest_delivery_when(
    app: &TestApp,
    webhook_id: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let check = &check;
    eventually(what, || async move {
        deliveries(app, webhook_id).await.first().is_some_and(check)
    })
    .await;
    deliveries(app, webhook_id).await.remove(0)
}

fn expected_signature(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[tokio::test]
async fn offline_and_back_are_delivered_signed_to_a_subscriber() {
    let app = TestApp::spawn_with(fast_retries).await;
    let receiver = Receiver::start(&[]).await;
    subscribe(&app, &receiver.url, &["agent.offline", "agent.healthy"]).await;
    let board = app.unmanaged_board().await;
    let agent = app
        .agent_with_config(
            &board.board_id,
            Some(json!({"interval_seconds": 1, "missing_tolerance": 1})),
        )
        .await;
    app.report_status(&agent, "healthy").await;
    eventually("the offline delivery", || async {
        receiver.requests().len() >= 2
    })
    .await;
    app.report_status(&agent, "healthy").await;
    eventually("the back-online delivery", || async {
        receiver.requests().len() >= 3
    })
    .await;

    let requests = receiver.requests();
    let types: Vec<&str> = requests.iter().map(|r| r.header("x-mc-event")).collect();
    assert_eq!(
        types,
        ["agent.healthy", "agent.offline", "agent.healthy"],
        "creation and token rotation are not subscribed"
    );
    for request in &requests {
        assert_eq!(
            request.header("x-mc-signature"),
            expected_signature(&request.body),
            "signed with HMAC-SHA256 of the exact body"
        );
        assert_eq!(request.header("content-type"), "application/json");
        let event = request.json();
        assert_eq!(event["agent_id"], agent.id.as_str());
        assert_eq!(request.header("x-mc-event-id"), event["id"].to_string());
    }
    assert_eq!(
        requests[1].json()["data"],
        json!({"from": "healthy", "to": "offline"})
    );
    assert_eq!(
        requests[2].json()["data"],
        json!({"from": "offline", "to": "healthy"})
    );
}

#[tokio::test]
async fn a_failing_receiver_is_retried_with_backoff_until_it_recovers() {
    let app = TestApp::spawn_with(fast_retries).await;
    let receiver = Receiver::start(&[500, 503]).await;
    let webhook_id = subscribe(&app, &receiver.url, &["agent.created"]).await;
    let board = app.unmanaged_board().await;
    app.agent_with_token(&board.board_id).await;

    let delivered = newest_delivery_when(&app, &webhook_id, "delivery after recovery", |d| {
        d["status"] == "delivered"
    })
    .await;
    assert_eq!(delivered["attempts"], 3, "two failures, then success");
    assert_eq!(delivered["last_status_code"], 200);
    assert_eq!(delivered["event_type"], "agent.created");
    let requests = receiver.requests();
    assert_eq!(requests.len(), 3);
    assert!(
        requests.iter().all(|r| r.body == requests[0].body),
        "every attempt carries the same event"
    );
    assert_eq!(
        requests[0].header("x-mc-delivery"),
        delivered["id"].to_string(),
        "the delivery id is sent"
    );
}

#[tokio::test]
async fn a_receiver_that_never_recovers_is_given_up_after_the_last_attempt() {
    let app = TestApp::spawn_with(fast_retries).await;
    let receiver = Receiver::start(&[500; 12]).await;
    let webhook_id = subscribe(&app, &receiver.url, &[]).await;
    let board = app.unmanaged_board().await;
    let agent = app.agent_with_token(&board.board_id).await;
    expect_success(app.delete_agent(&agent.id).await).await;

    eventually("every delivery given up", || async {
        let log = deliveries(&app, &webhook_id).await;
        log.len() == 3 && log.iter().all(|d| d["status"] == "failed")
    })
    .await;
    for delivery in deliveries(&app, &webhook_id).await {
        assert_eq!(delivery["attempts"], 4);
        assert_eq!(delivery["last_status_code"], 500);
        assert_eq!(delivery["last_error"], "the receiver answered HTTP 500");
        assert_eq!(delivery["next_attempt_at"], Value::Null);
    }
    let types: Vec<Value> = deliveries(&app, &webhook_id)
        .await
        .iter()
        .map(|d| d["event_type"].clone())
        .collect();
    assert_eq!(
        types,
        ["agent.deleted", "agent.token_rotated", "agent.created"],
        "no filter: every event"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        receiver.requests().len(),
        12,
        "four attempts each, none after giving up"
    );
    let metrics = app
        .send(Method::GET, "/metrics", Auth::None, None)
        .await
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("mc_webhook_deliveries_total{outcome=\"failed\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mc_webhook_deliveries_total{outcome=\"retrying\"} 9"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mc_job_queue_depth{kind=\"webhook_delivery\"} 0"),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_unreachable_receiver_is_logged_in_words() {
    let app = TestApp::spawn_with(fast_retries).await;
    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/hook", closed.local_addr().expect("address"));
    drop(closed);
    let webhook_id = subscribe(&app, &url, &["agent.created"]).await;
    let board = app.unmanaged_board().await;
    app.agent_with_token(&board.board_id).await;
    let failed = newest_delivery_when(&app, &webhook_id, "a failed attempt", |d| {
        d["attempts"].as_u64() >= Some(1)
    })
    .await;
    let error = failed["last_error"].as_str().expect("an error in words");
    assert!(
        error.starts_with("could not deliver: cannot connect"),
        "{error}"
    );
    assert_eq!(failed["last_status_code"], Value::Null);
}

#[tokio::test]
async fn disabled_and_deleted_subscriptions_get_nothing() {
    let app = TestApp::spawn_with(fast_retries).await;
    let receiver = Receiver::start(&[]).await;
    let disabled = expect_success(
        create_webhook(
            &app,
            &json!({"url": receiver.url, "secret": SECRET, "enabled": false}),
        )
        .await,
    )
    .await;
    let deleted = subscribe(&app, &receiver.url, &[]).await;
    expect_success(
        app.send(
            Method::DELETE,
            &format!("/api/v1/webhooks/{deleted}"),
            Auth::Admin,
            None,
        )
        .await,
    )
    .await;
    let board = app.unmanaged_board().await;
    app.agent_with_token(&board.board_id).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(receiver.requests().is_empty());
    assert!(deliveries(&app, &id_of(&disabled)).await.is_empty());
    let gone = app
        .send(
            Method::GET,
            &format!("/api/v1/webhooks/{deleted}/deliveries"),
            Auth::Admin,
            None,
        )
        .await;
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn subscriptions_are_managed_and_never_show_their_secret() {
    let app = TestApp::spawn().await;
    let created = expect_success(
        create_webhook(
            &app,
            &json!({"url": "https://hooks.example.com/mc", "event_types": ["agent.offline"], "secret": SECRET}),
        )
        .await,
    )
    .await;
    assert_eq!(created["event_types"], json!(["agent.offline"]));
    assert_eq!(created["enabled"], true);
    assert_eq!(created["has_secret"], true);
    let id = id_of(&created);
    let path = format!("/api/v1/webhooks/{id}");

    let patched = expect_success(
        app.send(
            Method::PATCH,
            &path,
            Auth::Admin,
            Some(&json!({"event_types": [], "enabled": false, "secret": "another-secret-value"})),
        )
        .await,
    )
    .await;
    assert_eq!(patched["event_types"], json!([]), "empty: every event");
    assert_eq!(patched["enabled"], false);
    assert_eq!(
        patched["url"], "https://hooks.example.com/mc",
        "absent fields stay"
    );

    let listed = expect_success(
        app.send(Method::GET, "/api/v1/webhooks", Auth::Admin, None)
            .await,
    )
    .await;
    assert_eq!(listed["total"], 1);
    let read = expect_success(app.send(Method::GET, &path, Auth::Admin, None).await).await;
    for body in [&created, &patched, &listed, &read] {
        let text = body.to_string();
        assert!(
            !text.contains(SECRET) && !text.contains("another-secret-value"),
            "{text}"
        );
    }

    expect_success(app.send(Method::DELETE, &path, Auth::Admin, None).await).await;
    let gone = app.send(Method::GET, &path, Auth::Admin, None).await;
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bad_subscriptions_are_refused_field_by_field_and_nothing_is_stored() {
    let app = TestApp::spawn().await;
    for (body, field) in [
        (json!({"url": "ftp://x", "secret": SECRET}), "url"),
        (json!({"url": "not a url", "secret": SECRET}), "url"),
        (
            json!({"url": "https://h.example", "secret": "short"}),
            "secret",
        ),
        (
            json!({"url": "https://h.example", "secret": SECRET, "event_types": ["agent.exploded"]}),
            "event_types",
        ),
        (json!({"url": "https://h.example"}), "secret"),
        (json!({"secret": SECRET}), "url"),
    ] {
        expect_validation_error(create_webhook(&app, &body).await, &["body", field]).await;
    }
    let wrong_type = create_webhook(
        &app,
        &json!({"url": "https://h.example", "secret": SECRET, "event_types": "agent.offline"}),
    )
    .await;
    expect_validation_error(wrong_type, &["body", "event_types"]).await;
    let listed = expect_success(
        app.send(Method::GET, "/api/v1/webhooks", Auth::Admin, None)
            .await,
    )
    .await;
    assert_eq!(listed["total"], 0, "nothing half-saved");

    let malformed = app
        .send(
            Method::GET,
            "/api/v1/webhooks/not-a-uuid",
            Auth::Admin,
            None,
        )
        .await;
    expect_validation_error(malformed, &["path", "webhook_id"]).await;
    let unknown = app
        .send(
            Method::GET,
            "/api/v1/webhooks/0190f5c2-7c1e-7000-8000-000000000000",
            Auth::Admin,
            None,
        )
        .await;
    expect_json(unknown, StatusCode::NOT_FOUND).await;
    let board = app.unmanaged_board().await;
    let agent = app.agent_with_token(&board.board_id).await;
    let as_agent = app
        .send(
            Method::GET,
            "/api/v1/webhooks",
            Auth::Agent(&agent.token),
            None,
        )
        .await;
    assert_eq!(as_agent.status(), StatusCode::FORBIDDEN);
    let anonymous = app
        .send(Method::GET, "/api/v1/webhooks", Auth::None, None)
        .await;
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn pending_deliveries_survive_a_restart() {
    let mut app = TestApp::spawn_with(|config| {
        fast_retries(config);
        config.webhook_delivery.retry.first = Duration::from_secs(2);
    })
    .await;
    let receiver = Receiver::start(&[503]).await;
    let webhook_id = subscribe(&app, &receiver.url, &["agent.created"]).await;
    let board = app.unmanaged_board().await;
    app.agent_with_token(&board.board_id).await;
    newest_delivery_when(&app, &webhook_id, "the first failed attempt", |d| {
        d["attempts"] == 1 && d["status"] == "pending"
    })
    .await;

    app.restart().await;
    let delivered = newest_delivery_when(&app, &webhook_id, "delivery after the restart", |d| {
        d["status"] == "delivered"
    })
    .await;
    assert_eq!(delivered["attempts"], 2);
    assert_eq!(receiver.requests().len(), 2);
}
