//! The client against the protocol-faithful fake gateway, for both generations: handshake,
//! status wording, error classification, correlation, timeouts, reconnects and every typed
//! call provisioning needs.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use mc_domain::ids::GatewayId;
use mc_domain::token::Secret;
use mc_gateway::rpc::{ChatSend, CreateAgent, SessionDeletion, UpdateAgent, until_agent_visible};
use mc_gateway::testing::{FakeGateway, FakeGatewayOptions, Garbage};
use mc_gateway::{
    AgentConfigEntry, AuthRejection, BackoffPolicy, DeviceIdentity, GatewayConfig, GatewayError,
    GatewayGeneration, GatewayHandle, GatewayPool, GatewayStatus, HeartbeatSettings,
};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const BOTH: [GatewayGeneration; 2] = [GatewayGeneration::V3, GatewayGeneration::V4];

fn identity() -> Arc<DeviceIdentity> {
    Arc::new(DeviceIdentity::generate())
}

fn fast_config(url: &str, token: Option<&str>) -> GatewayConfig {
    let mut config = GatewayConfig::new(url, token.map(Secret::new));
    config.request_timeout = Duration::from_secs(5);
    config.handshake_timeout = Duration::from_secs(2);
    config.backoff = BackoffPolicy {
        initial: Duration::from_millis(30),
        max: Duration::from_millis(300),
        jitter: 0.2,
    };
    config
}

async fn start(generation: GatewayGeneration) -> FakeGateway {
    FakeGateway::start(FakeGatewayOptions::new(generation)).await
}

fn client(fake: &FakeGateway) -> GatewayHandle {
    GatewayHandle::connect(
        fast_config(&fake.url(), fake.token().as_deref()),
        identity(),
    )
}

async fn connected(fake: &FakeGateway) -> GatewayHandle {
    let handle = client(fake);
    let status = handle.wait_connected(Duration::from_secs(5)).await;
    assert!(status.connected, "not connected: {status:?}");
    handle
}

async fn wait_for_error(handle: &GatewayHandle) -> GatewayStatus {
    for _ in 0..250 {
        let status = handle.status();
        if status.last_error.is_some() {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no error reported: {:?}", handle.status());
}

async fn wait_until_disconnected(handle: &GatewayHandle) {
    for _ in 0..1000 {
        if !handle.status().connected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("never saw the connection drop: {:?}", handle.status());
}

fn worker(id: &str) -> AgentConfigEntry {
    AgentConfigEntry {
        id: id.to_owned(),
        workspace: format!("/srv/agents/workspace-{id}"),
        name: None,
        heartbeat: HeartbeatSettings {
            every: "10m".into(),
            target: "last".into(),
        },
    }
}

#[tokio::test]
async fn handshake_negotiates_the_gateways_protocol_and_reports_it_in_the_status() {
    for (generation, protocol, version) in [
        (GatewayGeneration::V3, 3, "2026.4.2"),
        (GatewayGeneration::V4, 4, "2026.9.6"),
    ] {
        let fake = start(generation).await;
        let handle = connected(&fake).await;
        let status = handle.status();
        assert_eq!(status.protocol, Some(protocol));
        assert_eq!(status.generation, Some(generation));
        assert_eq!(status.version.as_deref(), Some(version));
        assert!(status.paired);
        assert_eq!(status.last_error, None);
        assert!(status.last_contact_at.is_some());
        assert_eq!(fake.handshakes(), 1);
    }
}

#[tokio::test]
async fn the_token_travels_in_the_url_query_and_the_connect_params() {
    let fake = start(GatewayGeneration::V4).await;
    let _handle = connected(&fake).await;
    assert_eq!(fake.last_query().as_deref(), Some("token=fake-token"));
}

#[tokio::test]
async fn a_wrong_token_is_auth_rejected_and_requests_fail_at_once() {
    for generation in BOTH {
        let fake = start(generation).await;
        let handle = GatewayHandle::connect(fast_config(&fake.url(), Some("wrong")), identity());
        let status = wait_for_error(&handle).await;
        assert!(!status.connected);
        assert_eq!(
            status.last_error.as_deref(),
            Some("token rejected by the gateway")
        );
        let started = std::time::Instant::now();
        let error = handle.health().await.unwrap_err();
        assert_eq!(
            error,
            GatewayError::AuthRejected(AuthRejection::TokenMismatch)
        );
        assert!(error.is_permanent());
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "waited {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn a_missing_token_is_auth_rejected() {
    let fake = start(GatewayGeneration::V3).await;
    let handle = GatewayHandle::connect(fast_config(&fake.url(), None), identity());
    let status = wait_for_error(&handle).await;
    assert_eq!(
        status.last_error.as_deref(),
        Some("the gateway requires a token and none is configured")
    );
}

#[tokio::test]
async fn pairing_required_names_the_request_to_approve_and_connects_once_approved() {
    for generation in BOTH {
        let mut options = FakeGatewayOptions::new(generation);
        options.pairing_required = true;
        let fake = FakeGateway::start(options).await;
        let handle = client(&fake);
        let status = wait_for_error(&handle).await;
        let request_id = fake.pairing_request_id();
        assert_eq!(
            status.last_error,
            Some(format!(
                "pairing required: run `openclaw devices approve {request_id}` on the gateway host"
            ))
        );
        assert!(!status.paired);
        match handle.health().await.unwrap_err() {
            GatewayError::PairingRequired {
                request_id: Some(id),
            } => assert_eq!(id, request_id),
            other => panic!("expected pairing required, got {other:?}"),
        }
        fake.approve_pairing();
        let status = handle.wait_connected(Duration::from_secs(5)).await;
        assert!(status.connected && status.paired && status.last_error.is_none());
        handle.health().await.unwrap();
    }
}

#[tokio::test]
async fn a_gateway_speaking_another_protocol_is_a_protocol_mismatch() {
    let mut options = FakeGatewayOptions::new(GatewayGeneration::V4);
    options.protocol = Some(5);
    let fake = FakeGateway::start(options).await;
    let handle = client(&fake);
    let status = wait_for_error(&handle).await;
    assert_eq!(
        status.last_error.as_deref(),
        Some("gateway speaks protocol 5; this server supports 3–4")
    );
    assert_eq!(
        handle.health().await.unwrap_err(),
        GatewayError::ProtocolMismatch { gateway: Some(5) }
    );
}

#[tokio::test]
async fn a_gateway_still_starting_is_transient_and_the_client_retries_until_it_is_up() {
    let fake = start(GatewayGeneration::V4).await;
    fake.refuse_handshakes_while_starting(3);
    let handle = client(&fake);
    let status = wait_for_error(&handle).await;
    let message = status.last_error.unwrap();
    assert!(message.contains("gateway starting"), "{message}");
    // Requests wait through the refusals instead of failing.
    assert!(handle.health().await.unwrap().ok);
    assert!(handle.status().connected);
    assert_eq!(fake.handshakes(), 1);
}

#[tokio::test]
async fn a_refused_connection_is_unreachable_at_the_url() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("ws://127.0.0.1:{port}");
    let handle = GatewayHandle::connect(fast_config(&url, Some("t")), identity());
    let status = wait_for_error(&handle).await;
    assert_eq!(
        status.last_error,
        Some(format!("connection refused at {url}"))
    );
    let error = handle
        .request_with_timeout("health", json!({}), Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(
        matches!(error, GatewayError::Unreachable { .. }),
        "{error:?}"
    );
    assert!(!error.is_permanent());
}

#[tokio::test]
async fn responses_are_matched_by_id_while_events_interleave() {
    for generation in BOTH {
        let fake = start(generation).await;
        let handle = connected(&fake).await;
        let mut events = handle.subscribe_events();
        fake.delay("health", Duration::from_millis(300));
        let slow = handle.health();
        let fast = async {
            let config = handle.config_get().await;
            (config, std::time::Instant::now())
        };
        let ((health, health_done), (config, config_done)) =
            tokio::join!(async { (slow.await, std::time::Instant::now()) }, fast);
        assert!(health.unwrap().ok);
        assert!(config.unwrap().hash.is_some());
        assert!(
            config_done < health_done,
            "the later response must not block the earlier one"
        );
        let event = events.recv().await.unwrap();
        assert_eq!(event.event, "tick");
    }
}

#[tokio::test]
async fn a_request_the_gateway_never_answers_times_out_as_transient() {
    let fake = start(GatewayGeneration::V4).await;
    let handle = connected(&fake).await;
    fake.hang("health");
    let error = handle
        .request_with_timeout("health", json!({}), Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(matches!(error, GatewayError::Transient { .. }), "{error:?}");
    assert!(error.to_string().contains("timed out"), "{error}");
    handle.config_get().await.unwrap();
    assert!(handle.status().connected);
}

#[tokio::test]
async fn in_flight_requests_fail_as_transient_when_the_gateway_restarts_and_later_ones_succeed() {
    for generation in BOTH {
        let fake = start(generation).await;
        let handle = connected(&fake).await;
        fake.hang("health");
        let in_flight = tokio::spawn({
            let handle = handle.clone();
            async move { handle.health().await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        fake.restart(Duration::from_millis(300)).await;
        let error = in_flight.await.unwrap().unwrap_err();
        assert!(matches!(error, GatewayError::Transient { .. }), "{error:?}");
        assert!(error.to_string().contains("service restart"), "{error}");
        handle.config_get().await.unwrap();
        assert_eq!(fake.handshakes(), 2);
        assert!(handle.status().connected);
    }
}

#[tokio::test]
async fn requests_sent_while_the_gateway_is_down_wait_for_the_reconnect() {
    let fake = start(GatewayGeneration::V3).await;
    let handle = connected(&fake).await;
    let restart = fake.restart(Duration::from_millis(600));
    let request = async {
        wait_until_disconnected(&handle).await;
        handle.health().await
    };
    let ((), health) = tokio::join!(restart, request);
    assert!(health.unwrap().ok);
}

#[tokio::test]
async fn a_dropped_connection_is_reconnected() {
    let fake = start(GatewayGeneration::V4).await;
    let handle = connected(&fake).await;
    fake.drop_connections();
    tokio::time::sleep(Duration::from_millis(100)).await;
    handle.health().await.unwrap();
    assert_eq!(fake.handshakes(), 2);
}

#[tokio::test]
async fn a_gateway_that_drops_every_session_is_redialled_with_backoff_not_in_a_loop() {
    let fake = start(GatewayGeneration::V4).await;
    fake.set_drop_after_handshake(true);
    let handle = client(&fake);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let handshakes = fake.handshakes();
    // Backoff 30 ms doubling to 300 ms allows about 8 attempts in 1.5 s; a loop makes hundreds.
    assert!(
        (2..=12).contains(&handshakes),
        "{handshakes} handshakes in 1.5 s"
    );
    let status = wait_for_error(&handle).await;
    assert!(status.last_error.unwrap().contains("going away"));
    fake.set_drop_after_handshake(false);
    // A session dialled just before the switch may still be dropped: the client recovers
    // on a following session.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while let Err(error) = handle.health().await {
        assert!(
            std::time::Instant::now() < deadline,
            "never recovered: {error}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_v3_restart_after_config_patch_is_survived() {
    let fake = start(GatewayGeneration::V3).await;
    let handle = connected(&fake).await;
    assert!(handle.apply_agent_config(&[worker("mc-1")]).await.unwrap());
    // The fake restarts 200 ms after the patch and is down for 300 ms.
    wait_until_disconnected(&handle).await;
    let files = handle.config_get().await.unwrap();
    assert_eq!(files.config["agents"]["list"][0]["id"], "mc-1");
    assert_eq!(fake.handshakes(), 2);
}

#[tokio::test]
async fn apply_agent_config_writes_each_generations_schema_with_the_base_hash() {
    for generation in BOTH {
        let mut options = FakeGatewayOptions::new(generation);
        options.restart_after_config_patch = None;
        let fake = FakeGateway::start(options).await;
        let handle = connected(&fake).await;
        assert!(handle.apply_agent_config(&[worker("mc-1")]).await.unwrap());
        let patch = &fake.calls_to("config.patch")[0];
        assert!(patch["baseHash"].as_str().unwrap().starts_with("sha256:"));
        let config = fake.config();
        match generation {
            GatewayGeneration::V3 => {
                assert_eq!(config["agents"]["list"][0]["heartbeat"]["every"], "10m");
                assert!(config["channels"]["defaults"]["heartbeat"].is_object());
            }
            GatewayGeneration::V4 => {
                assert_eq!(
                    config["agents"]["entries"]["mc-1"]["heartbeat"]["target"],
                    "last"
                );
                assert!(config["channels"]["defaults"]["heartbeatVisibility"].is_object());
            }
        }
        assert_eq!(config["tools"]["exec"]["host"], "gateway");
        assert!(!handle.apply_agent_config(&[worker("mc-1")]).await.unwrap());
        assert_eq!(
            fake.calls_to("config.patch").len(),
            1,
            "nothing to change, no patch"
        );
    }
}

#[tokio::test]
async fn config_patch_rules_differ_by_generation() {
    let v4 = start(GatewayGeneration::V4).await;
    let handle = connected(&v4).await;
    let without_hash = handle
        .config_patch(&json!({"tools": {"exec": {"host": "gateway"}}}), None)
        .await
        .unwrap_err();
    assert!(
        matches!(without_hash, GatewayError::Rejected { .. }),
        "{without_hash:?}"
    );
    let hash = handle.config_get().await.unwrap().hash.unwrap();
    let old_schema = handle
        .config_patch(&json!({"agents": {"list": []}}), Some(&hash))
        .await
        .unwrap_err();
    assert!(
        old_schema
            .to_string()
            .contains("Unrecognized key: \"list\""),
        "{old_schema}"
    );
    let stale = handle
        .config_patch(&json!({"tools": {}}), Some("sha256:stale"))
        .await
        .unwrap_err();
    assert!(stale.is_stale_config(), "{stale:?}");
}

#[tokio::test]
async fn provisioning_calls_round_trip_on_both_generations() {
    for generation in BOTH {
        let fake = start(generation).await;
        let handle = connected(&fake).await;
        let created = handle
            .agents_create(&CreateAgent {
                name: "mc-7".into(),
                workspace: "/srv/agents/workspace-mc-7".into(),
            })
            .await
            .unwrap();
        assert_eq!(created.agent_id, "mc-7");
        let again = handle
            .agents_create(&CreateAgent {
                name: "mc-7".into(),
                workspace: "/srv/agents/workspace-mc-7".into(),
            })
            .await
            .unwrap_err();
        assert!(again.is_already_exists(), "{again:?}");
        handle
            .agents_update(&UpdateAgent {
                agent_id: "mc-7".into(),
                name: Some("Seven".into()),
                workspace: Some("/srv/agents/workspace-mc-7".into()),
            })
            .await
            .unwrap();
        let listing = handle.agents_files_list("mc-7").await.unwrap();
        let memory = listing
            .files
            .iter()
            .find(|f| f.name == "MEMORY.md")
            .unwrap();
        assert!(memory.missing);
        handle
            .agents_files_set("mc-7", "SOUL.md", "# Soul\nBe kind.\n")
            .await
            .unwrap();
        let soul = handle.agents_files_get("mc-7", "SOUL.md").await.unwrap();
        assert_eq!(soul.file.content.as_deref(), Some("# Soul\nBe kind.\n"));
        assert_eq!(
            fake.file("mc-7", "SOUL.md").as_deref(),
            Some("# Soul\nBe kind.\n")
        );
        let key = "agent:mc-7:main";
        handle.sessions_patch(key, Some("Seven")).await.unwrap();
        handle.sessions_reset(key).await.unwrap();
        let chat = handle
            .chat_send(&ChatSend {
                session_key: key.into(),
                message: "Wake up".into(),
                deliver: false,
                idempotency_key: uuid::Uuid::new_v4().to_string(),
            })
            .await
            .unwrap();
        assert_eq!(chat.status.as_deref(), Some("started"));
        let deletion = handle.sessions_delete(key).await.unwrap();
        let expected = match generation {
            GatewayGeneration::V3 => SessionDeletion::Deleted,
            GatewayGeneration::V4 => SessionDeletion::MainSessionKept,
        };
        assert_eq!(deletion, expected);
        handle.agents_delete("mc-7").await.unwrap();
        assert!(fake.agent_ids().is_empty());
        let missing = handle.agents_files_list("mc-7").await.unwrap_err();
        assert!(
            missing.is_missing_agent() && missing.is_permanent(),
            "{missing:?}"
        );
        let calls: Vec<String> = fake.calls().into_iter().map(|c| c.method).collect();
        assert_eq!(calls.first().map(String::as_str), Some("agents.create"));
    }
}

#[tokio::test]
async fn v4_refuses_tools_md_as_unsupported_and_v3_accepts_it() {
    for generation in BOTH {
        let fake = start(generation).await;
        let handle = connected(&fake).await;
        handle
            .agents_create(&CreateAgent {
                name: "lead-1".into(),
                workspace: "/srv/agents/workspace-lead-1".into(),
            })
            .await
            .unwrap();
        let result = handle
            .agents_files_set("lead-1", "TOOLS.md", "- `AUTH_TOKEN=x`\n")
            .await;
        match generation {
            GatewayGeneration::V3 => {
                result.unwrap();
            }
            GatewayGeneration::V4 => {
                let error = result.unwrap_err();
                assert!(
                    matches!(error, GatewayError::Unsupported { .. }),
                    "{error:?}"
                );
                assert!(error.is_unsupported_file() && error.is_permanent());
            }
        }
        assert_eq!(
            generation.accepts_workspace_file("TOOLS.md"),
            generation == GatewayGeneration::V3
        );
    }
}

#[tokio::test]
async fn an_unknown_method_is_unsupported() {
    let fake = start(GatewayGeneration::V3).await;
    let handle = connected(&fake).await;
    let error = handle
        .request(
            "agents.files.delete",
            json!({"agentId": "a", "name": "X.md"}),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(error, GatewayError::Unsupported { .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn wss_with_a_self_signed_certificate_needs_allow_insecure_tls() {
    let mut options = FakeGatewayOptions::new(GatewayGeneration::V4);
    options.tls = true;
    let fake = FakeGateway::start(options).await;
    assert!(fake.url().starts_with("wss://"));
    let strict = GatewayHandle::connect(fast_config(&fake.url(), Some("fake-token")), identity());
    let status = wait_for_error(&strict).await;
    let message = status.last_error.unwrap();
    assert!(message.starts_with("TLS failed"), "{message}");
    assert!(
        message.ends_with(&format!("at {}", fake.url())),
        "{message}"
    );

    let mut insecure = fast_config(&fake.url(), Some("fake-token"));
    insecure.allow_insecure_tls = true;
    let handle = GatewayHandle::connect(insecure, identity());
    assert!(
        handle
            .wait_connected(Duration::from_secs(5))
            .await
            .connected
    );
    handle.health().await.unwrap();
}

#[tokio::test]
async fn the_identity_survives_reconnects_and_the_fake_checks_the_signature() {
    // A raw client that signs with one key but presents another public key must be refused,
    // which is what makes the successful handshakes above meaningful.
    let fake = start(GatewayGeneration::V3).await;
    let (mut socket, _) = tokio_tungstenite::connect_async(fake.url()).await.unwrap();
    let challenge: Value = match socket.next().await.unwrap().unwrap() {
        Message::Text(text) => serde_json::from_str(&text).unwrap(),
        other => panic!("unexpected {other:?}"),
    };
    let nonce = challenge["payload"]["nonce"].as_str().unwrap().to_owned();
    let signer = DeviceIdentity::generate();
    let impostor = DeviceIdentity::generate();
    let scopes = ["operator.read"];
    let now = mc_domain::Timestamp::now().as_millis();
    let mut proof = signer.prove(&mc_gateway::identity::SignedConnect {
        client_id: "gateway-client",
        client_mode: "backend",
        role: "operator",
        scopes: &scopes,
        signed_at_ms: now,
        token: "fake-token",
        nonce: &nonce,
    });
    proof.id = impostor.device_id().to_owned();
    proof.public_key = impostor.public_key_base64url();
    let request = json!({"type": "req", "id": "1", "method": "connect", "params": {
        "minProtocol": 3, "maxProtocol": 4, "role": "operator", "scopes": scopes,
        "client": {"id": "gateway-client", "version": "1", "platform": "linux", "mode": "backend"},
        "device": proof, "auth": {"token": "fake-token"},
    }});
    socket
        .send(Message::text(request.to_string()))
        .await
        .unwrap();
    let response: Value = match socket.next().await.unwrap().unwrap() {
        Message::Text(text) => serde_json::from_str(&text).unwrap(),
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(response["ok"], false);
    assert_eq!(response["error"]["message"], "device signature invalid");
    assert_eq!(fake.handshakes(), 0);
}

#[tokio::test]
async fn the_pool_keeps_one_connection_per_gateway_and_replaces_it_when_its_config_changes() {
    let fake = start(GatewayGeneration::V4).await;
    let pool = GatewayPool::new(identity(), fast_config("ws://unused", None));
    let id = GatewayId::new();
    let first = pool.ensure(id, &fake.url(), Some(Secret::new("wrong")), false);
    assert!(wait_for_error(&first).await.last_error.is_some());
    let same = pool.ensure(id, &fake.url(), Some(Secret::new("wrong")), false);
    assert!(
        same.status().last_error.is_some(),
        "same config reuses the connection"
    );
    let fixed = pool.ensure(id, &fake.url(), Some(Secret::new("fake-token")), false);
    assert!(fixed.wait_connected(Duration::from_secs(5)).await.connected);
    assert!(pool.status(id).unwrap().connected);
    assert_eq!(pool.statuses().len(), 1);
    pool.remove(id);
    assert!(pool.get(id).is_none());
}

#[tokio::test]
async fn a_new_agent_the_gateway_does_not_see_yet_is_waited_for_not_reported_missing() {
    let mut options = FakeGatewayOptions::new(GatewayGeneration::V4);
    options.new_agent_lag = Duration::from_millis(600);
    let fake = FakeGateway::start(options).await;
    let handle = connected(&fake).await;
    let create = CreateAgent {
        name: "mc-lagging".into(),
        workspace: "/srv/agents/workspace-mc-lagging".into(),
    };
    handle.agents_create(&create).await.unwrap();
    let update = UpdateAgent {
        agent_id: "mc-lagging".into(),
        name: Some("Lagging".into()),
        workspace: None,
    };

    let at_once = handle.agents_update(&update).await.unwrap_err();
    assert!(at_once.is_missing_agent(), "{at_once:?}");
    until_agent_visible(|| handle.agents_update(&update))
        .await
        .expect("the update succeeds once the gateway sees the agent");
}

#[tokio::test]
async fn an_agent_that_never_appears_is_still_reported_missing() {
    let fake = start(GatewayGeneration::V4).await;
    let handle = connected(&fake).await;
    let started = std::time::Instant::now();
    let error = until_agent_visible(|| handle.agents_files_list("mc-nobody"))
        .await
        .unwrap_err();
    assert!(error.is_missing_agent(), "{error:?}");
    assert!(started.elapsed() >= mc_gateway::rpc::NEW_AGENT_SETTLE);
}

#[tokio::test]
async fn a_malformed_answer_fails_its_request_at_once_and_the_connection_stays_usable() {
    let fake = start(GatewayGeneration::V4).await;
    let handle = connected(&fake).await;
    fake.garble("config.get", Garbage::MalformedResponse);

    let started = std::time::Instant::now();
    let error = handle.config_get().await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "no timeout wait"
    );
    assert!(!error.is_permanent(), "{error:?}");
    let message = error.to_string();
    assert!(
        message.contains("config.get") && message.contains("malformed response frame"),
        "{message}"
    );
    handle.health().await.expect("other calls still answered");
}

#[tokio::test]
async fn an_answer_that_is_not_json_is_named_when_the_request_times_out_and_in_the_status() {
    let fake = start(GatewayGeneration::V3).await;
    let handle = connected(&fake).await;
    fake.garble("agents.files.list", Garbage::NotJson);

    let error = handle.agents_files_list("mc-any").await.unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("agents.files.list timed out")
            && message.contains("unreadable frame")
            && message.contains("502 Bad Gateway"),
        "{message}"
    );
    let status = handle.status();
    assert!(status.connected, "{status:?}");
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("unreadable frame")),
        "{status:?}"
    );
}

#[tokio::test]
async fn config_writes_submitted_together_go_out_as_one_patch() {
    for generation in BOTH {
        let mut options = FakeGatewayOptions::new(generation);
        options.restart_after_config_patch = None;
        let fake = FakeGateway::start(options).await;
        let handle = connected(&fake).await;
        let writes = (0..12).map(|n| handle.write_agent_config(worker(&format!("mc-{n}"))));
        for outcome in futures::future::join_all(writes).await {
            assert!(outcome.unwrap(), "{generation:?}: the batch sent a patch");
        }
        assert_eq!(fake.calls_to("config.patch").len(), 1, "{generation:?}");
        let ids = generation.configured_agent_ids(&fake.config());
        assert_eq!(ids.len(), 12, "{generation:?}: {ids:?}");

        // The same entries again: the config already says it all, so nothing is written.
        assert!(!handle.write_agent_config(worker("mc-3")).await.unwrap());
        assert_eq!(fake.calls_to("config.patch").len(), 1, "{generation:?}");
    }
}

#[tokio::test]
async fn a_config_write_rereads_and_retries_when_another_writer_changed_the_config() {
    let mut options = FakeGatewayOptions::new(GatewayGeneration::V4);
    options.restart_after_config_patch = None;
    let fake = FakeGateway::start(options).await;
    let handle = connected(&fake).await;
    let other = connected(&fake).await;
    // config.get answers late, so another client's write lands between read and patch.
    fake.delay("config.get", Duration::from_millis(300));
    let write = tokio::spawn({
        let handle = handle.clone();
        async move { handle.write_agent_config(worker("mc-1")).await }
    });
    // The write's batch window is 150 ms; its config.get is read then and answered 300 ms
    // later.
    tokio::time::sleep(Duration::from_millis(300)).await;
    other
        .agents_create(&CreateAgent {
            name: "someone-else".into(),
            workspace: "/srv/agents/workspace-someone-else".into(),
        })
        .await
        .unwrap();
    assert!(write.await.unwrap().unwrap());
    assert_eq!(
        fake.calls_to("config.patch").len(),
        2,
        "the first patch met a changed config, the second one was written"
    );
    let config = fake.config();
    assert!(config["agents"]["entries"]["mc-1"]["heartbeat"].is_object());
    assert!(config["agents"]["entries"]["someone-else"].is_object());
}

#[tokio::test]
async fn requests_wait_out_the_restart_a_v3_config_patch_announces_instead_of_failing() {
    let mut options = FakeGatewayOptions::new(GatewayGeneration::V3);
    options.restart_after_config_patch =
        Some((Duration::from_millis(300), Duration::from_millis(400)));
    let fake = FakeGateway::start(options).await;
    let handle = connected(&fake).await;
    // Slow answers: without the pause some request is always in flight when it restarts.
    fake.delay("health", Duration::from_millis(80));
    assert!(handle.write_agent_config(worker("mc-1")).await.unwrap());
    let busy = (0..4).map(|_| {
        let handle = handle.clone();
        async move {
            let mut failures = Vec::new();
            let started = std::time::Instant::now();
            while started.elapsed() < Duration::from_millis(1500) {
                if let Err(error) = handle.health().await {
                    failures.push(error.to_string());
                }
            }
            failures
        }
    });
    let failures: Vec<String> = futures::future::join_all(busy)
        .await
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(fake.handshakes(), 2, "the gateway restarted once");
    assert!(failures.is_empty(), "requests failed: {failures:?}");
}

#[tokio::test]
async fn calls_that_rewrite_the_gateway_config_are_sent_one_at_a_time() {
    let fake = start(GatewayGeneration::V4).await;
    let handle = connected(&fake).await;
    fake.delay("agents.create", Duration::from_millis(200));
    let started = std::time::Instant::now();
    let creates = (0..3).map(|n| {
        let handle = handle.clone();
        async move {
            handle
                .agents_create(&CreateAgent {
                    name: format!("mc-{n}"),
                    workspace: format!("/srv/agents/workspace-mc-{n}"),
                })
                .await
        }
    });
    for created in futures::future::join_all(creates).await {
        created.unwrap();
    }
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "three 200 ms creates overlapped: {:?}",
        started.elapsed()
    );
    // Reads are not held back by a config write in flight.
    fake.delay("agents.create", Duration::from_millis(500));
    let slow = tokio::spawn({
        let handle = handle.clone();
        async move {
            handle
                .agents_create(&CreateAgent {
                    name: "mc-slow".into(),
                    workspace: "/srv/agents/workspace-mc-slow".into(),
                })
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let read = std::time::Instant::now();
    handle.health().await.unwrap();
    assert!(read.elapsed() < Duration::from_millis(400));
    slow.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_config_write_refused_for_the_gateways_rate_limit_waits_and_goes_out_later() {
    let mut options = FakeGatewayOptions::new(GatewayGeneration::V4);
    options.restart_after_config_patch = None;
    options.config_write_limit = Some((1, Duration::from_secs(2)));
    let fake = FakeGateway::start(options).await;
    let handle = connected(&fake).await;
    // Another client of the same device spends the budget.
    let snapshot = handle.config_get().await.unwrap();
    handle
        .config_patch(
            &json!({"tools": {"exec": {"host": "gateway"}}}),
            snapshot.hash.as_deref(),
        )
        .await
        .unwrap();
    let started = std::time::Instant::now();
    assert!(handle.write_agent_config(worker("mc-1")).await.unwrap());
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "written only once the gateway's window had passed: {:?}",
        started.elapsed()
    );
    assert!(fake.config()["agents"]["entries"]["mc-1"].is_object());
}

#[tokio::test]
async fn a_config_write_waits_for_the_late_answer_of_one_whose_caller_timed_out() {
    let fake = start(GatewayGeneration::V4).await;
    let mut config = fast_config(&fake.url(), fake.token().as_deref());
    config.request_timeout = Duration::from_millis(300);
    let handle = GatewayHandle::connect(config, identity());
    assert!(
        handle
            .wait_connected(Duration::from_secs(5))
            .await
            .connected
    );
    let create = |name: &str| CreateAgent {
        name: name.into(),
        workspace: format!("/srv/agents/workspace-{name}"),
    };
    // OpenClaw reads the config, works on the files, then writes the whole config back.
    fake.lag_next_config_write("agents.create", Duration::from_secs(1));

    let timed_out = handle.agents_create(&create("mc-slow")).await.unwrap_err();
    assert!(timed_out.to_string().contains("timed out"), "{timed_out}");
    handle
        .agents_create(&create("mc-next"))
        .await
        .expect("the next create succeeds once the slow one has landed");
    assert_eq!(fake.unlanded_config_writes(), 0);
    let ids = fake.agent_ids();
    assert!(
        ids.contains(&"mc-slow".to_owned()) && ids.contains(&"mc-next".to_owned()),
        "{ids:?}"
    );
}
