//! Removing deleted agents from their managed gateway, against the protocol-faithful fake
//! gateway: a deleted board's agents leave Mission Control at once and are removed from
//! the gateway by delete jobs queued with the deletion, and deleting the gateway removes
//! whatever those jobs have not removed yet.

use std::time::Duration;

use mc_gateway::BackoffPolicy;
use mc_gateway::GatewayGeneration;
use mc_gateway::testing::{FakeGateway, FakeGatewayOptions, Garbage};
use mc_server::config::ServerConfig;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::gateway_fixtures::{
    board_on_fake, create_agent_named, provision_jobs, quick_gateway_settings, settled_jobs,
    spawn_provisioning_app,
};
use crate::helpers::{TestApp, eventually, expect_json, expect_success, id_of, unique};
use crate::templates_sync::settled_main_agent;

async fn fake(generation: GatewayGeneration) -> FakeGateway {
    FakeGateway::start(FakeGatewayOptions::new(generation)).await
}

/// The agents the fake gateway holds or has in its config.
fn on_gateway(gw: &FakeGateway, generation: GatewayGeneration) -> Vec<String> {
    let mut ids = gw.agent_ids();
    ids.extend(generation.configured_agent_ids(&gw.config()));
    ids
}

/// Whether an event of `event_type` about a delete job is among `events`.
fn has_delete_step(events: &[Value], event_type: &str) -> bool {
    events
        .iter()
        .any(|e| e["event_type"] == event_type && e["data"]["action"] == "delete")
}

#[tokio::test]
async fn deleting_a_board_removes_its_agents_from_mission_control_at_once_and_from_the_gateway_by_delete_jobs()
 {
    for generation in [GatewayGeneration::V3, GatewayGeneration::V4] {
        let gw = fake(generation).await;
        let app = spawn_provisioning_app().await;
        let (gateway_id, board_id) = board_on_fake(&app, &gw).await;
        settled_main_agent(&app, &gateway_id).await;
        let worker = create_agent_named(&app, &board_id, &unique("Worker")).await;
        let lead = id_of(
            &expect_success(
                app.create_agent(
                    &json!({"name": unique("Lead"), "board_id": board_id, "is_board_lead": true}),
                )
                .await,
            )
            .await,
        );
        settled_jobs(&app, &worker, 1).await;
        settled_jobs(&app, &lead, 1).await;
        let placed = [format!("mc-{worker}"), format!("lead-{board_id}")];
        for id in &placed {
            assert!(on_gateway(&gw, generation).contains(id), "{generation:?}");
        }

        expect_success(app.delete_board(&board_id).await).await;

        for (agent, gateway_agent_id) in [&worker, &lead].into_iter().zip(&placed) {
            expect_json(app.get_agent(agent).await, StatusCode::NOT_FOUND).await;
            assert_eq!(app.count_events(agent, "agent.deleted").await, 1);
            let jobs = settled_jobs(&app, agent, 2).await;
            assert_eq!(jobs[1]["action"], "delete", "{generation:?}: {jobs:?}");
            assert_eq!(jobs[1]["state"], "done", "{generation:?}: {jobs:?}");
            assert!(
                !on_gateway(&gw, generation).contains(gateway_agent_id),
                "{generation:?}: {gateway_agent_id} is still on the gateway"
            );
            let events = app.activity_of(agent).await;
            assert!(
                has_delete_step(&events, "agent.provision.queued"),
                "{events:?}"
            );
            assert!(
                has_delete_step(&events, "agent.provision.done"),
                "{events:?}"
            );
            assert_eq!(
                app.count_events(agent, "agent.deleted").await,
                1,
                "the job, ending, records no second deletion"
            );
        }
        assert!(
            on_gateway(&gw, generation).contains(&format!("mc-gateway-{gateway_id}")),
            "{generation:?}: the gateway's main agent stays"
        );
    }
}

#[tokio::test]
async fn an_agent_already_being_deleted_gets_no_second_delete_job_when_its_board_is_deleted() {
    let gw = fake(GatewayGeneration::V4).await;
    let app = spawn_provisioning_app().await;
    let (gateway_id, board_id) = board_on_fake(&app, &gw).await;
    settled_main_agent(&app, &gateway_id).await;
    let id = create_agent_named(&app, &board_id, &unique("Worker")).await;
    settled_jobs(&app, &id, 1).await;
    gw.garble("agents.delete", Garbage::MalformedResponse);
    expect_success(app.delete_agent(&id).await).await;
    eventually("the agent's delete job to be retrying", || async {
        provision_jobs(&app, &id)
            .await
            .get(1)
            .is_some_and(|job| job["state"] == "pending" && job["attempts"] != 0)
    })
    .await;

    expect_success(app.delete_board(&board_id).await).await;
    expect_json(app.get_agent(&id).await, StatusCode::NOT_FOUND).await;
    gw.stop_garbling();

    let jobs = settled_jobs(&app, &id, 2).await;
    assert_eq!(jobs[1]["state"], "done", "{jobs:?}");
    assert!(!gw.agent_ids().contains(&format!("mc-{id}")));
    assert_eq!(app.count_events(&id, "agent.deleted").await, 1);
}

/// [`quick_gateway_settings`], with a failed job waiting a minute before its next attempt.
fn slow_job_retries(config: &mut ServerConfig) {
    quick_gateway_settings(config);
    config.provision_backoff = BackoffPolicy {
        initial: Duration::from_secs(60),
        max: Duration::from_secs(60),
        jitter: 0.0,
    };
}

#[tokio::test]
async fn deleting_a_gateway_first_removes_the_agents_its_pending_delete_jobs_still_have_to_remove()
{
    let gw = fake(GatewayGeneration::V4).await;
    let app = TestApp::spawn_with(slow_job_retries).await;
    let (gateway_id, board_id) = board_on_fake(&app, &gw).await;
    let main = settled_main_agent(&app, &gateway_id).await;
    let id = create_agent_named(&app, &board_id, &unique("Worker")).await;
    settled_jobs(&app, &id, 1).await;
    let gateway_agent_id = format!("mc-{id}");
    gw.garble("agents.delete", Garbage::MalformedResponse);
    expect_success(app.delete_board(&board_id).await).await;
    eventually("the clean-up job to wait for its next attempt", || async {
        provision_jobs(&app, &id)
            .await
            .get(1)
            .is_some_and(|job| job["state"] == "pending" && job["attempts"] == 1)
    })
    .await;

    // The gateway still answers garbage: nothing is deleted.
    let refused = expect_json(app.delete_gateway(&gateway_id).await, StatusCode::CONFLICT).await;
    let detail = refused["detail"].as_str().expect("a message");
    assert!(detail.contains("could not be removed"), "{detail}");
    expect_success(app.get_agent(&id_of(&main)).await).await;
    assert!(gw.agent_ids().contains(&gateway_agent_id));

    gw.stop_garbling();
    expect_success(app.delete_gateway(&gateway_id).await).await;
    assert!(
        !gw.agent_ids().contains(&gateway_agent_id),
        "{:?}",
        gw.agent_ids()
    );
    assert!(!gw.agent_ids().contains(&format!("mc-gateway-{gateway_id}")));
    expect_json(app.get_agent(&id_of(&main)).await, StatusCode::NOT_FOUND).await;
    expect_json(app.get_gateway(&gateway_id).await, StatusCode::NOT_FOUND).await;
}
