//! The OpenAPI 3.1 document at `/openapi.json`. Agents discover their operations by the
//! role tags `agent-main`, `agent-lead` and `agent-worker`; those operations also carry
//! `x-llm-intent` and `x-when-to-use` hints.

use std::sync::OnceLock;

use axum::Json;
use serde_json::{Value, json};
use utoipa::OpenApi;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};

use super::v1::{
    activity, agents, boards, enrollment_tokens, gateways, heartbeats, provision_jobs, streams,
    webhooks,
};
use super::{health, v1};

#[derive(OpenApi)]
#[openapi(
    info(title = "Mission Control", description = "Control plane for fleets of OpenClaw agents."),
    paths(
        health::healthz, health::readyz, crate::metrics::metrics,
        gateways::create_gateway, gateways::list_gateways, gateways::get_gateway,
        gateways::update_gateway, gateways::delete_gateway, gateways::gateway_status, provision_jobs::list_provision_jobs,
        provision_jobs::provision_agent,
        gateways::sync_gateway_templates,
        boards::create_board, boards::list_boards, boards::get_board, boards::update_board,
        boards::delete_board,
        enrollment_tokens::create_enrollment_token, enrollment_tokens::list_enrollment_tokens,
        enrollment_tokens::revoke_enrollment_token,
        agents::create_agent, agents::list_agents, agents::get_agent, agents::update_agent,
        agents::delete_agent, agents::rotate_agent_token,
        heartbeats::heartbeat_by_name, heartbeats::heartbeat_agent, heartbeats::heartbeat_own,
        activity::list_activity, streams::activity_stream, streams::agents_stream,
        webhooks::create_webhook, webhooks::list_webhooks, webhooks::get_webhook,
        webhooks::update_webhook, webhooks::delete_webhook, webhooks::list_deliveries,
    ),
    components(schemas(v1::OkResponse, activity::EventTypeName)),
    modifiers(&Security),
    security(("admin_token" = []), ("agent_token" = [])),
)]
struct ApiDoc;

struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "agent_token",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-Agent-Token"))),
        );
    }
}

/// Hints for agents, by operation path.
const AGENT_HINTS: [(&str, &str, &str); 6] = [
    (
        "/api/v1/agent/heartbeat",
        "Tell Mission Control this agent is alive.",
        "Every heartbeat_config.interval_seconds, and with status degraded while impaired.",
    ),
    (
        "/api/v1/agents/heartbeat",
        "Heartbeat by name; the first one with an enrollment token creates the agent.",
        "Once, at first start with an enrollment token; keep the X-Agent-Token answer header.",
    ),
    (
        "/api/v1/agents/{agent_id}/heartbeat",
        "Heartbeat of this agent by its id.",
        "When the agent knows its id; same effect as /api/v1/agent/heartbeat.",
    ),
    (
        "/api/v1/activity",
        "Read this agent's activity log.",
        "To check which liveness transitions Mission Control recorded.",
    ),
    (
        "/api/v1/activity/stream",
        "Follow this agent's activity live (server-sent events).",
        "To react to events as they happen; reconnect with Last-Event-ID to resume.",
    ),
    (
        "/api/v1/agents/stream",
        "Follow agents' liveness live (server-sent events).",
        "A lead watching its board's agents; reconnect with Last-Event-ID to resume.",
    ),
];

fn build() -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_else(|_| json!({}));
    doc["openapi"] = json!("3.1.0");
    for (path, intent, when) in AGENT_HINTS {
        if let Some(Value::Object(methods)) = doc["paths"].get_mut(path) {
            for operation in methods.values_mut() {
                operation["x-llm-intent"] = json!(intent);
                operation["x-when-to-use"] = json!(when);
            }
        }
    }
    doc
}

/// The document (built once).
pub fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(build)
}

/// Serves the OpenAPI document.
pub async fn openapi_json() -> Json<Value> {
    Json(document().clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_operations_carry_role_tags_and_hints() {
        let doc = document();
        for path in [
            "/api/v1/agent/heartbeat",
            "/api/v1/agents/heartbeat",
            "/api/v1/agents/{agent_id}/heartbeat",
        ] {
            let operation = &doc["paths"][path]["post"];
            let tags: Vec<&str> = operation["tags"]
                .as_array()
                .unwrap_or_else(|| panic!("{path} has no tags"))
                .iter()
                .filter_map(Value::as_str)
                .collect();
            for role in ["agent-main", "agent-lead", "agent-worker"] {
                assert!(tags.contains(&role), "{path} lacks {role}");
            }
            assert!(operation["x-llm-intent"].is_string(), "{path} lacks a hint");
        }
    }

    #[test]
    fn every_operation_for_agents_has_hints() {
        let doc = document();
        let paths = doc["paths"].as_object().expect("paths");
        for (path, methods) in paths {
            for (method, operation) in methods.as_object().expect("methods") {
                let for_agents = operation["tags"].as_array().is_some_and(|tags| {
                    tags.iter()
                        .filter_map(Value::as_str)
                        .any(|tag| tag.starts_with("agent-"))
                });
                if for_agents {
                    assert!(
                        operation["x-llm-intent"].is_string()
                            && operation["x-when-to-use"].is_string(),
                        "{method} {path} is tagged for agents but has no hints"
                    );
                }
            }
        }
    }

    #[test]
    fn the_document_lists_every_event_type_the_filters_and_subscriptions_accept() {
        let listed = &document()["components"]["schemas"]["EventTypeName"]["enum"];
        let names: Vec<&str> = mc_domain::activity::EventType::ALL
            .iter()
            .map(|t| t.as_str())
            .collect();
        assert_eq!(listed, &json!(names));
        assert!(names.contains(&"agent.provision.failed"));
        let read = &document()["components"]["schemas"]["ActivityEventRead"];
        assert_eq!(
            read["properties"]["event_type"]["$ref"],
            "#/components/schemas/EventTypeName"
        );
    }

    #[test]
    fn the_document_is_stable() {
        insta::assert_json_snapshot!("openapi", document());
    }
}
