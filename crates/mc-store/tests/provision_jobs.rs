//! The provisioning job queue: what every backend must do, run on each backend by the
//! shared harness in `common/`.

mod common;

use std::sync::Arc;

use common::now;
use mc_domain::activity::{ActivityEvent, EventType, NewActivity};
use mc_domain::agent::AgentName;
use mc_domain::ids::{AgentId, GatewayId};
use mc_domain::page::PageRequest;
use mc_domain::time::Timestamp;
use mc_domain::token::TokenDigest;
use mc_store::{
    ActivityFilter, AgentPlacement, Constraint, NewProvisionJob, ProvisionAction, ProvisionAttempt,
    ProvisionJob, ProvisionJobState, Store, StoreError,
};
use serde_json::json;

on_every_backend!(
    jobs_of_one_agent_run_in_order_and_other_agents_do_not_wait,
    a_retry_waits_for_its_time_and_a_lease_that_ran_out_is_claimed_again,
    recording_an_outcome_stores_the_agents_error_and_placement,
    unfinished_jobs_are_the_pending_ones_claimed_or_not_in_queue_order,
    an_agent_is_stored_with_its_first_job_or_neither_is,
    an_update_is_stored_with_its_job_or_neither_is,
    a_delete_job_is_queued_only_while_its_agent_exists,
    a_board_is_deleted_with_the_clean_up_jobs_of_its_agents_or_neither_happens,
    every_way_of_queueing_a_job_records_its_queued_event_with_it,
    each_recorded_attempt_records_its_progress_event_with_it,
    progress_events_are_published_on_the_feed_once_committed,
    a_token_rotation_is_stored_with_its_job_or_neither_is,
    a_jobs_first_attempt_is_recorded_once_and_kept_across_retries,
    a_retry_is_claimed_before_jobs_not_yet_started_that_were_due_earlier,
);

fn job(agent_id: AgentId, action: ProvisionAction) -> NewProvisionJob {
    NewProvisionJob {
        agent_id,
        gateway_id: GatewayId::new(),
        action,
        gateway_agent_id: None,
        session_key: None,
        requested_at: now(),
    }
}

fn outcome(job: &ProvisionJob, state: ProvisionJobState) -> ProvisionAttempt {
    ProvisionAttempt {
        job_id: job.id,
        agent_id: job.agent_id,
        attempted_at: now(),
        state,
        error: None,
        next_attempt_at: None,
        placement: None,
    }
}

async fn claim(store: &Arc<dyn Store>, at: Timestamp) -> Vec<ProvisionJob> {
    store
        .claim_due_provision_jobs(at, at.plus_millis(60_000), 10)
        .await
        .unwrap()
}

async fn jobs_of_one_agent_run_in_order_and_other_agents_do_not_wait(store: Arc<dyn Store>) {
    let (a, b) = (AgentId::new(), AgentId::new());
    store
        .enqueue_provision_job(&job(a, ProvisionAction::Create))
        .await
        .unwrap();
    store
        .enqueue_provision_job(&job(a, ProvisionAction::Update))
        .await
        .unwrap();
    store
        .enqueue_provision_job(&job(b, ProvisionAction::Create))
        .await
        .unwrap();

    let first = claim(&store, now()).await;
    let claimed: Vec<_> = first.iter().map(|j| (j.agent_id, j.action)).collect();
    assert_eq!(
        claimed,
        vec![(a, ProvisionAction::Create), (b, ProvisionAction::Create)]
    );
    assert!(
        claim(&store, now()).await.is_empty(),
        "claimed jobs are leased, and a's update waits for its create"
    );

    store
        .record_provision_attempt(&outcome(&first[0], ProvisionJobState::Done))
        .await
        .unwrap();
    let second = claim(&store, now()).await;
    assert_eq!(second.len(), 1);
    assert_eq!(
        (second[0].agent_id, second[0].action),
        (a, ProvisionAction::Update)
    );
}

async fn a_retry_waits_for_its_time_and_a_lease_that_ran_out_is_claimed_again(
    store: Arc<dyn Store>,
) {
    let agent = AgentId::new();
    store
        .enqueue_provision_job(&job(agent, ProvisionAction::Create))
        .await
        .unwrap();
    let claimed = claim(&store, now()).await;
    assert_eq!(
        claim(&store, now().plus_millis(60_001)).await.len(),
        1,
        "the lease ran out"
    );
    let mut retry = outcome(&claimed[0], ProvisionJobState::Pending);
    retry.error = Some("create failed, retrying: connection refused".into());
    retry.next_attempt_at = Some(now().plus_millis(120_000));
    store.record_provision_attempt(&retry).await.unwrap();
    assert_eq!(
        store.next_provision_job_due().await.unwrap(),
        Some(now().plus_millis(120_000))
    );
    assert!(claim(&store, now().plus_millis(100_000)).await.is_empty());
    let again = claim(&store, now().plus_millis(120_000)).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempts, 1);
    assert_eq!(again[0].last_error, retry.error);
}

/// A managed gateway to put agents on.
async fn gateway(store: &Arc<dyn Store>) -> GatewayId {
    let org = store.ensure_default_organization(now()).await.unwrap();
    let gateway = mc_domain::gateway::Gateway {
        id: GatewayId::new(),
        organization_id: org,
        name: "gw".into(),
        url: mc_domain::gateway::GatewayUrl::parse("ws://127.0.0.1:1").unwrap(),
        token: None,
        workspace_root: "/ws".into(),
        allow_insecure_tls: false,
        disable_device_pairing: false,
        created_at: now(),
        updated_at: now(),
    };
    store.insert_gateway(&gateway).await.unwrap();
    gateway.id
}

async fn recording_an_outcome_stores_the_agents_error_and_placement(store: Arc<dyn Store>) {
    let agent = common::new_agent(gateway(&store).await, None, "main");
    let created = NewActivity {
        event_type: EventType::AgentCreated,
        message: "Created.".into(),
        agent_id: Some(agent.id),
        board_id: None,
        data: None,
        created_at: now(),
    };
    store
        .insert_agent(&agent, None, None, &created)
        .await
        .unwrap();
    store
        .enqueue_provision_job(&job(agent.id, ProvisionAction::Create))
        .await
        .unwrap();
    let claimed = claim(&store, now()).await;

    let mut failed = outcome(&claimed[0], ProvisionJobState::Failed);
    failed.error = Some("create failed: token rejected by the gateway".into());
    store.record_provision_attempt(&failed).await.unwrap();
    let stored = store.agent(agent.id).await.unwrap().unwrap();
    assert_eq!(stored.last_provision_error, failed.error);
    assert_eq!(store.next_provision_job_due().await.unwrap(), None);

    store
        .enqueue_provision_job(&job(agent.id, ProvisionAction::Update))
        .await
        .unwrap();
    let claimed = claim(&store, now()).await;
    let mut done = outcome(&claimed[0], ProvisionJobState::Done);
    done.placement = Some(AgentPlacement {
        gateway_agent_id: "mc-x".into(),
        workspace_path: "/ws/workspace-mc-x".into(),
        session_key: "agent:mc-x:main".into(),
    });
    store.record_provision_attempt(&done).await.unwrap();
    let stored = store.agent(agent.id).await.unwrap().unwrap();
    assert_eq!(stored.last_provision_error, None);
    assert_eq!(stored.gateway_agent_id.as_deref(), Some("mc-x"));
    assert_eq!(stored.workspace_path.as_deref(), Some("/ws/workspace-mc-x"));
    assert_eq!(
        stored.openclaw_session_id.as_deref(),
        Some("agent:mc-x:main")
    );
    let jobs = store.provision_jobs(agent.id).await.unwrap();
    let states: Vec<_> = jobs.iter().map(|j| (j.state, j.attempts)).collect();
    assert_eq!(
        states,
        vec![(ProvisionJobState::Failed, 1), (ProvisionJobState::Done, 1)]
    );
}

async fn unfinished_jobs_are_the_pending_ones_claimed_or_not_in_queue_order(store: Arc<dyn Store>) {
    let (a, b) = (AgentId::new(), AgentId::new());
    let create_a = store
        .enqueue_provision_job(&job(a, ProvisionAction::Create))
        .await
        .unwrap();
    let delete_b = store
        .enqueue_provision_job(&job(b, ProvisionAction::Delete))
        .await
        .unwrap();
    let update_a = store
        .enqueue_provision_job(&job(a, ProvisionAction::Update))
        .await
        .unwrap();
    let claimed = claim(&store, now()).await;
    let first = claimed.iter().find(|j| j.id == create_a).unwrap();
    store
        .record_provision_attempt(&outcome(first, ProvisionJobState::Done))
        .await
        .unwrap();
    // b's delete is claimed (running) but not finished: still unfinished.
    let unfinished: Vec<(i64, ProvisionAction)> = store
        .unfinished_provision_jobs()
        .await
        .unwrap()
        .iter()
        .map(|j| (j.id, j.action))
        .collect();
    assert_eq!(
        unfinished,
        [
            (delete_b, ProvisionAction::Delete),
            (update_a, ProvisionAction::Update)
        ]
    );
}

async fn an_agent_is_stored_with_its_first_job_or_neither_is(store: Arc<dyn Store>) {
    let agent = common::new_agent(gateway(&store).await, None, "main");
    let created = NewActivity {
        event_type: EventType::AgentCreated,
        message: "Created.".into(),
        agent_id: Some(agent.id),
        board_id: None,
        data: None,
        created_at: now(),
    };
    let first = job(agent.id, ProvisionAction::Create);
    let id = store
        .insert_agent_with_job(&agent, None, None, &created, &first)
        .await
        .unwrap();
    assert!(store.agent(agent.id).await.unwrap().is_some());
    let jobs = store.provision_jobs(agent.id).await.unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(
        (jobs[0].id, jobs[0].action, jobs[0].state),
        (id, ProvisionAction::Create, ProvisionJobState::Pending)
    );

    // The same agent again fails as a whole: no second job is left behind.
    assert!(
        store
            .insert_agent_with_job(&agent, None, None, &created, &first)
            .await
            .is_err()
    );
    assert_eq!(store.provision_jobs(agent.id).await.unwrap().len(), 1);
    assert_eq!(
        events_of(&store, agent.id).await,
        ["agent.provision.queued", "agent.created"],
        "nor a second queued event"
    );
}

fn event(agent: AgentId, event_type: EventType) -> NewActivity {
    NewActivity {
        event_type,
        message: "Recorded.".into(),
        agent_id: Some(agent),
        board_id: None,
        data: None,
        created_at: now(),
    }
}

async fn events_of(store: &Arc<dyn Store>, agent: AgentId) -> Vec<String> {
    store
        .list_activity(
            ActivityFilter {
                agent_id: Some(agent),
                board_id: None,
            },
            PageRequest::default(),
        )
        .await
        .unwrap()
        .items
        .iter()
        .map(|e| e.event_type.clone())
        .collect()
}

async fn board(store: &Arc<dyn Store>, gateway: GatewayId) -> mc_domain::ids::BoardId {
    let org = store.ensure_default_organization(now()).await.unwrap();
    let board = mc_domain::board::Board {
        id: mc_domain::ids::BoardId::new(),
        organization_id: org,
        name: "Ops".into(),
        slug: mc_domain::board::Slug::parse("ops").unwrap(),
        description: "d".into(),
        gateway_id: gateway,
        rules: mc_domain::board::BoardRules::default(),
        created_at: now(),
        updated_at: now(),
    };
    store.insert_board(&board).await.unwrap();
    board.id
}

async fn an_update_is_stored_with_its_job_or_neither_is(store: Arc<dyn Store>) {
    let gateway = gateway(&store).await;
    let board = board(&store, gateway).await;
    let first = common::new_agent(gateway, Some(board), "first");
    let second = common::new_agent(gateway, Some(board), "second");
    for agent in [&first, &second] {
        store
            .insert_agent(agent, None, None, &event(agent.id, EventType::AgentCreated))
            .await
            .unwrap();
    }

    let mut renamed = first.clone();
    renamed.name = AgentName::parse("renamed", "name").unwrap();
    let update = job(first.id, ProvisionAction::Update);
    let id = store
        .update_agent_with_job(&renamed, &event(first.id, EventType::AgentUpdated), &update)
        .await
        .unwrap()
        .expect("the agent exists");
    let stored = store.agent(first.id).await.unwrap().unwrap();
    assert_eq!(stored.name.as_str(), "renamed");
    let jobs = store.provision_jobs(first.id).await.unwrap();
    let queued: Vec<_> = jobs.iter().map(|j| (j.id, j.action, j.state)).collect();
    assert_eq!(
        queued,
        vec![(id, ProvisionAction::Update, ProvisionJobState::Pending)]
    );
    assert!(
        events_of(&store, first.id)
            .await
            .contains(&EventType::AgentUpdated.as_str().to_owned())
    );

    // An update the database refuses (the name is taken on the board) leaves no job.
    let mut clash = second.clone();
    clash.name = AgentName::parse("RENAMED", "name").unwrap();
    let refused = store
        .update_agent_with_job(
            &clash,
            &event(second.id, EventType::AgentUpdated),
            &job(second.id, ProvisionAction::Update),
        )
        .await
        .unwrap_err();
    assert!(matches!(
        refused,
        StoreError::Conflict(Constraint::AgentNameOnBoard)
    ));
    assert!(store.provision_jobs(second.id).await.unwrap().is_empty());
    assert_eq!(
        store.agent(second.id).await.unwrap().unwrap().name.as_str(),
        "second"
    );
    assert_eq!(
        events_of(&store, second.id).await,
        vec![EventType::AgentCreated.as_str().to_owned()]
    );

    // An agent that no longer exists: nothing is written.
    let gone = common::new_agent(gateway, Some(board), "gone");
    assert_eq!(
        store
            .update_agent_with_job(
                &gone,
                &event(gone.id, EventType::AgentUpdated),
                &job(gone.id, ProvisionAction::Update),
            )
            .await
            .unwrap(),
        None
    );
    assert!(store.provision_jobs(gone.id).await.unwrap().is_empty());
    assert!(events_of(&store, gone.id).await.is_empty());
}

async fn a_delete_job_is_queued_only_while_its_agent_exists(store: Arc<dyn Store>) {
    let agent = common::new_agent(gateway(&store).await, None, "doomed");
    store
        .insert_agent(
            &agent,
            None,
            None,
            &event(agent.id, EventType::AgentCreated),
        )
        .await
        .unwrap();
    let delete = NewProvisionJob {
        gateway_agent_id: Some("mc-doomed".into()),
        session_key: Some("agent:mc-doomed:main".into()),
        ..job(agent.id, ProvisionAction::Delete)
    };
    let id = store
        .queue_agent_delete(&delete)
        .await
        .unwrap()
        .expect("the agent exists");
    let jobs = store.provision_jobs(agent.id).await.unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(
        (jobs[0].id, jobs[0].action, jobs[0].state),
        (id, ProvisionAction::Delete, ProvisionJobState::Pending)
    );
    assert_eq!(jobs[0].gateway_agent_id.as_deref(), Some("mc-doomed"));
    assert_eq!(jobs[0].session_key.as_deref(), Some("agent:mc-doomed:main"));
    assert!(
        store.agent(agent.id).await.unwrap().is_some(),
        "the job removes the agent, not the request"
    );

    // Deleted meanwhile (e.g. by its board's deletion, which queues its own clean-up): no
    // job is left behind for it.
    store
        .delete_agent(agent.id, &event(agent.id, EventType::AgentDeleted))
        .await
        .unwrap();
    let before = store.provision_jobs(agent.id).await.unwrap().len();
    assert_eq!(store.queue_agent_delete(&delete).await.unwrap(), None);
    assert_eq!(store.provision_jobs(agent.id).await.unwrap().len(), before);
}

async fn a_board_is_deleted_with_the_clean_up_jobs_of_its_agents_or_neither_happens(
    store: Arc<dyn Store>,
) {
    let gateway = gateway(&store).await;
    let board = board(&store, gateway).await;
    let (first, other) = (
        common::new_agent(gateway, Some(board), "first"),
        common::new_agent(gateway, None, "elsewhere"),
    );
    for agent in [&first, &other] {
        store
            .insert_agent(agent, None, None, &event(agent.id, EventType::AgentCreated))
            .await
            .unwrap();
    }
    let cleanup = |agent: &mc_domain::agent::Agent| NewProvisionJob {
        gateway_id: gateway,
        gateway_agent_id: Some(format!("mc-{}", agent.id)),
        session_key: Some(format!("agent:mc-{}:main", agent.id)),
        ..job(agent.id, ProvisionAction::Delete)
    };

    // A board that does not exist: nothing is queued, recorded or deleted.
    let missing = mc_domain::ids::BoardId::new();
    assert_eq!(
        store
            .delete_board(
                missing,
                &[event(other.id, EventType::AgentDeleted)],
                &[cleanup(&other)],
            )
            .await
            .unwrap(),
        None
    );
    assert!(store.provision_jobs(other.id).await.unwrap().is_empty());
    assert_eq!(events_of(&store, other.id).await, ["agent.created"]);
    assert!(store.agent(other.id).await.unwrap().is_some());

    let deleted = store
        .delete_board(
            board,
            &[event(first.id, EventType::AgentDeleted)],
            &[cleanup(&first)],
        )
        .await
        .unwrap();
    assert_eq!(deleted, Some(vec![first.id]));
    assert_eq!(store.agent(first.id).await.unwrap(), None);
    assert_eq!(store.board(board).await.unwrap(), None);
    let jobs = store.provision_jobs(first.id).await.unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(
        (jobs[0].action, jobs[0].state, jobs[0].gateway_id),
        (ProvisionAction::Delete, ProvisionJobState::Pending, gateway)
    );
    assert_eq!(
        jobs[0].gateway_agent_id.as_deref(),
        Some(format!("mc-{}", first.id).as_str())
    );
    assert_eq!(
        jobs[0].session_key.as_deref(),
        Some(format!("agent:mc-{}:main", first.id).as_str())
    );

    // The queued event, recorded while the agent still existed, names it and its board.
    let events = recorded(&store, first.id).await;
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        types,
        ["agent.created", "agent.provision.queued", "agent.deleted"]
    );
    assert_eq!(events[1].data, Some(queued_data(jobs[0].id, "delete")));
    assert_eq!(events[1].board_id, Some(board));
    assert!(events[1].message.contains("first"), "{}", events[1].message);

    // The job runs without the agent's row.
    let claimed = claim(&store, now()).await;
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].id, jobs[0].id);
    store
        .record_provision_attempt(&outcome(&claimed[0], ProvisionJobState::Done))
        .await
        .unwrap();
    assert_eq!(
        store.provision_jobs(first.id).await.unwrap()[0].state,
        ProvisionJobState::Done
    );
    assert!(store.agent(other.id).await.unwrap().is_some());
}

/// Every event about `agent`, oldest first.
async fn recorded(store: &Arc<dyn Store>, agent: AgentId) -> Vec<ActivityEvent> {
    let mut events = store
        .list_activity(
            ActivityFilter {
                agent_id: Some(agent),
                board_id: None,
            },
            PageRequest::default(),
        )
        .await
        .unwrap()
        .items;
    events.reverse();
    events
}

/// The `agent.provision.*` events about `agent`, oldest first, as `(type, data)`.
async fn progress_of(store: &Arc<dyn Store>, agent: AgentId) -> Vec<(String, serde_json::Value)> {
    recorded(store, agent)
        .await
        .into_iter()
        .filter(|e| e.event_type.starts_with("agent.provision."))
        .map(|e| (e.event_type, e.data.unwrap_or_default()))
        .collect()
}

fn queued_data(job: i64, action: &str) -> serde_json::Value {
    json!({"job": job, "action": action, "attempt": 0})
}

async fn every_way_of_queueing_a_job_records_its_queued_event_with_it(store: Arc<dyn Store>) {
    let gateway = gateway(&store).await;
    let board = board(&store, gateway).await;
    let agent = common::new_agent(gateway, Some(board), "worker");
    let create = store
        .insert_agent_with_job(
            &agent,
            None,
            None,
            &event(agent.id, EventType::AgentCreated),
            &job(agent.id, ProvisionAction::Create),
        )
        .await
        .unwrap();
    let mut renamed = agent.clone();
    renamed.name = AgentName::parse("renamed", "name").unwrap();
    let update = store
        .update_agent_with_job(
            &renamed,
            &event(agent.id, EventType::AgentUpdated),
            &job(agent.id, ProvisionAction::Update),
        )
        .await
        .unwrap()
        .unwrap();
    let again = store
        .enqueue_provision_job(&job(agent.id, ProvisionAction::Update))
        .await
        .unwrap();
    let delete = store
        .queue_agent_delete(&job(agent.id, ProvisionAction::Delete))
        .await
        .unwrap()
        .unwrap();

    let events = recorded(&store, agent.id).await;
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        types,
        [
            "agent.created",
            "agent.provision.queued",
            "agent.updated",
            "agent.provision.queued",
            "agent.provision.queued",
            "agent.provision.queued",
        ],
        "each job's event right after the change that queued it"
    );
    let queued: Vec<&ActivityEvent> = events
        .iter()
        .filter(|e| e.event_type == "agent.provision.queued")
        .collect();
    let data: Vec<_> = queued.iter().map(|e| e.data.clone().unwrap()).collect();
    assert_eq!(
        data,
        [
            queued_data(create, "create"),
            queued_data(update, "update"),
            queued_data(again, "update"),
            queued_data(delete, "delete"),
        ]
    );
    for event in &queued {
        assert_eq!(event.board_id, Some(board), "on the agent's board");
        assert_eq!(event.created_at, now(), "when it was requested");
    }
    assert!(
        queued[0].message.contains("worker") && queued[1].message.contains("renamed"),
        "named as stored in the same transaction: {:?}",
        queued.iter().map(|e| &e.message).collect::<Vec<_>>()
    );
}

async fn each_recorded_attempt_records_its_progress_event_with_it(store: Arc<dyn Store>) {
    let gateway = gateway(&store).await;
    let board = board(&store, gateway).await;
    let agent = common::new_agent(gateway, Some(board), "worker");
    let id = store
        .insert_agent_with_job(
            &agent,
            None,
            None,
            &event(agent.id, EventType::AgentCreated),
            &job(agent.id, ProvisionAction::Create),
        )
        .await
        .unwrap();

    let claimed = claim(&store, now()).await;
    let mut retry = outcome(&claimed[0], ProvisionJobState::Pending);
    retry.error = Some("create failed, retrying: connection refused".into());
    retry.next_attempt_at = Some(now().plus_millis(5_000));
    store.record_provision_attempt(&retry).await.unwrap();

    let claimed = claim(&store, now().plus_millis(5_000)).await;
    let mut done = outcome(&claimed[0], ProvisionJobState::Done);
    done.attempted_at = now().plus_millis(6_000);
    done.placement = Some(AgentPlacement {
        gateway_agent_id: "mc-x".into(),
        workspace_path: "/ws/workspace-mc-x".into(),
        session_key: "agent:mc-x:main".into(),
    });
    store.record_provision_attempt(&done).await.unwrap();

    let update = store
        .enqueue_provision_job(&job(agent.id, ProvisionAction::Update))
        .await
        .unwrap();
    let claimed = claim(&store, now()).await;
    let mut failed = outcome(&claimed[0], ProvisionJobState::Failed);
    failed.error = Some("update failed: token rejected by the gateway".into());
    store.record_provision_attempt(&failed).await.unwrap();

    assert_eq!(
        progress_of(&store, agent.id).await,
        [
            (
                "agent.provision.queued".to_owned(),
                queued_data(id, "create")
            ),
            (
                "agent.provision.retrying".to_owned(),
                json!({
                    "job": id, "action": "create", "attempt": 1,
                    "error": "create failed, retrying: connection refused",
                    "next_attempt_at": now().plus_millis(5_000).to_rfc3339(),
                })
            ),
            (
                "agent.provision.done".to_owned(),
                json!({
                    "job": id, "action": "create", "attempt": 2,
                    "placement": {
                        "gateway_agent_id": "mc-x",
                        "workspace_path": "/ws/workspace-mc-x",
                        "openclaw_session_id": "agent:mc-x:main",
                    },
                })
            ),
            (
                "agent.provision.queued".to_owned(),
                queued_data(update, "update")
            ),
            (
                "agent.provision.failed".to_owned(),
                json!({
                    "job": update, "action": "update", "attempt": 1,
                    "error": "update failed: token rejected by the gateway",
                })
            ),
        ]
    );
    let events = recorded(&store, agent.id).await;
    let done_event = events
        .iter()
        .find(|e| e.event_type == "agent.provision.done")
        .unwrap();
    assert_eq!(
        done_event.created_at,
        now().plus_millis(6_000),
        "when it ended"
    );
    assert_eq!(done_event.board_id, Some(board));
    // The agent's row changed in the same transaction as each event.
    let stored = store.agent(agent.id).await.unwrap().unwrap();
    assert_eq!(stored.gateway_agent_id.as_deref(), Some("mc-x"));
    assert_eq!(stored.last_provision_error, failed.error);

    // A clean-up job that outlives its agent still reports, naming the agent by id.
    store
        .delete_agent(agent.id, &event(agent.id, EventType::AgentDeleted))
        .await
        .unwrap();
    let cleanup = store
        .enqueue_provision_job(&job(agent.id, ProvisionAction::Delete))
        .await
        .unwrap();
    let claimed = claim(&store, now()).await;
    store
        .record_provision_attempt(&outcome(&claimed[0], ProvisionJobState::Done))
        .await
        .unwrap();
    let last = recorded(&store, agent.id).await.pop().unwrap();
    assert_eq!(last.event_type, "agent.provision.done");
    assert_eq!(
        last.data,
        Some(json!({"job": cleanup, "action": "delete", "attempt": 1}))
    );
    assert!(
        last.message.contains(&agent.id.to_string()),
        "{}",
        last.message
    );
    assert_eq!(last.board_id, None);
}

async fn progress_events_are_published_on_the_feed_once_committed(store: Arc<dyn Store>) {
    let mut feed = store.subscribe_activity();
    let agent = AgentId::new();
    let id = store
        .enqueue_provision_job(&job(agent, ProvisionAction::Create))
        .await
        .unwrap();
    let claimed = claim(&store, now()).await;
    store
        .record_provision_attempt(&outcome(&claimed[0], ProvisionJobState::Done))
        .await
        .unwrap();
    let mut seen = Vec::new();
    for _ in 0..2 {
        let event = tokio::time::timeout(std::time::Duration::from_secs(10), feed.recv())
            .await
            .expect("the feed delivers within 10 s")
            .unwrap();
        assert_eq!(event.agent_id, Some(agent));
        seen.push((event.event_type, event.data.unwrap()["job"].clone()));
    }
    assert_eq!(
        seen,
        [
            ("agent.provision.queued".to_owned(), json!(id)),
            ("agent.provision.done".to_owned(), json!(id)),
        ]
    );
}

/// Whose token `digest` is, as stored.
async fn holder_of(store: &Arc<dyn Store>, digest: TokenDigest) -> Option<AgentId> {
    store
        .agent_by_token(digest)
        .await
        .unwrap()
        .map(|stored| stored.agent.id)
}

async fn a_token_rotation_is_stored_with_its_job_or_neither_is(store: Arc<dyn Store>) {
    let gateway = gateway(&store).await;
    let board = board(&store, gateway).await;
    let agent = common::new_agent(gateway, Some(board), "rotated");
    let other = common::new_agent(gateway, Some(board), "other");
    let (first, taken) = (
        TokenDigest::of("first token"),
        TokenDigest::of("taken token"),
    );
    for (a, digest) in [(&agent, first), (&other, taken)] {
        store
            .insert_agent(a, Some(digest), None, &event(a.id, EventType::AgentCreated))
            .await
            .unwrap();
    }

    let second = TokenDigest::of("second token");
    let rotated = event(agent.id, EventType::AgentTokenRotated);
    let update = job(agent.id, ProvisionAction::Update);
    let id = store
        .set_agent_token_with_job(agent.id, second, &rotated, &update)
        .await
        .unwrap()
        .expect("the agent exists");
    assert_eq!(holder_of(&store, second).await, Some(agent.id));
    assert_eq!(
        holder_of(&store, first).await,
        None,
        "the old token is dead"
    );
    let jobs = store.provision_jobs(agent.id).await.unwrap();
    let queued: Vec<_> = jobs.iter().map(|j| (j.id, j.action, j.state)).collect();
    assert_eq!(
        queued,
        vec![(id, ProvisionAction::Update, ProvisionJobState::Pending)]
    );
    assert_eq!(
        events_of(&store, agent.id).await[..2],
        ["agent.provision.queued", "agent.token_rotated"],
        "the rotation and its queued job are recorded together, newest first"
    );

    // A token the database refuses (another agent holds it) leaves neither the token nor
    // a job nor the event behind.
    let events_before = events_of(&store, agent.id).await;
    let refused = store
        .set_agent_token_with_job(agent.id, taken, &rotated, &update)
        .await
        .unwrap_err();
    assert!(matches!(
        refused,
        StoreError::Conflict(Constraint::TokenDigest)
    ));
    assert_eq!(holder_of(&store, second).await, Some(agent.id));
    assert_eq!(holder_of(&store, taken).await, Some(other.id));
    assert_eq!(store.provision_jobs(agent.id).await.unwrap().len(), 1);
    assert_eq!(events_of(&store, agent.id).await, events_before);

    // An agent that no longer exists: nothing is written.
    let gone = common::new_agent(gateway, Some(board), "gone");
    let fresh = TokenDigest::of("fresh token");
    assert_eq!(
        store
            .set_agent_token_with_job(
                gone.id,
                fresh,
                &event(gone.id, EventType::AgentTokenRotated),
                &job(gone.id, ProvisionAction::Update),
            )
            .await
            .unwrap(),
        None
    );
    assert!(store.provision_jobs(gone.id).await.unwrap().is_empty());
    assert!(events_of(&store, gone.id).await.is_empty());
    assert_eq!(holder_of(&store, fresh).await, None);
}

async fn a_jobs_first_attempt_is_recorded_once_and_kept_across_retries(store: Arc<dyn Store>) {
    let agent = AgentId::new();
    let id = store
        .enqueue_provision_job(&job(agent, ProvisionAction::Create))
        .await
        .unwrap();
    let claimed = claim(&store, now()).await;
    assert_eq!(claimed[0].id, id);
    assert_eq!(claimed[0].first_attempt_at, None, "queued, never attempted");

    let started = now().plus_millis(5_000);
    store.mark_provision_job_started(id, started).await.unwrap();
    store
        .mark_provision_job_started(id, started.plus_millis(1_000))
        .await
        .unwrap();
    let mut retry = outcome(&claimed[0], ProvisionJobState::Pending);
    retry.next_attempt_at = Some(now().plus_millis(10_000));
    store.record_provision_attempt(&retry).await.unwrap();

    let again = claim(&store, now().plus_millis(10_000)).await;
    assert_eq!(again[0].first_attempt_at, Some(started));
    assert_eq!(again[0].created_at, now());
    assert_eq!(
        store.provision_jobs(agent).await.unwrap()[0].first_attempt_at,
        Some(started)
    );
}

async fn a_retry_is_claimed_before_jobs_not_yet_started_that_were_due_earlier(
    store: Arc<dyn Store>,
) {
    // A burst of new jobs, all due now, and one job of it that has started and failed.
    let mut burst = Vec::new();
    for _ in 0..3 {
        let id = store
            .enqueue_provision_job(&job(AgentId::new(), ProvisionAction::Create))
            .await
            .unwrap();
        burst.push(id);
    }
    let started = store
        .claim_due_provision_jobs(now(), now().plus_millis(60_000), 1)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(started.id, burst[0]);
    store
        .mark_provision_job_started(started.id, now())
        .await
        .unwrap();
    let mut retry = outcome(&started, ProvisionJobState::Pending);
    retry.next_attempt_at = Some(now().plus_millis(1_000));
    store.record_provision_attempt(&retry).await.unwrap();

    // Its retry is due later than the others, and is claimed first all the same.
    let claimed = store
        .claim_due_provision_jobs(now().plus_millis(1_000), now().plus_millis(60_000), 1)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].id, started.id);
    let rest: Vec<i64> = claim(&store, now().plus_millis(1_000))
        .await
        .iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(rest, burst[1..]);
}
