//! The storage conformance suite: what every backend must do. Each specification below is
//! one `async fn` taking a fresh store, and `on_every_backend!` runs it once per backend:
//! on SQLite in its own temporary database file, and on PostgreSQL in its own schema of
//! a throwaway server (see `mc-testpg`). Test names read `<specification>::<backend>`.

mod common;

use std::sync::Arc;

use common::now;
use mc_domain::activity::{EventType, NewActivity};
use mc_domain::agent::{Agent, AgentStatus, ReportedHealth};
use mc_domain::board::{Board, BoardRules, Slug};
use mc_domain::enrollment::{EnrollmentRefusal, EnrollmentToken};
use mc_domain::gateway::{Gateway, GatewayUrl};
use mc_domain::ids::{AgentId, BoardId, EnrollmentTokenId, GatewayId, OrganizationId, WebhookId};
use mc_domain::liveness::Checkin;
use mc_domain::page::PageRequest;
use mc_domain::time::Timestamp;
use mc_domain::token::{Secret, TokenDigest};
use mc_domain::webhook::{DeliveryState, EventSelection, Webhook, WebhookUrl};
use mc_store::{
    ActivityFilter, AgentFilter, Constraint, DeliveryAttempt, EnrollmentSpend, LivenessEvent,
    LivenessWrite, LogCompaction, PostgresStore, SeenWrite, SqliteStore, Store, StoreError,
    Transition,
};
use mc_testpg::TestPostgres;

on_every_backend!(
    the_default_organisation_is_created_once,
    agents_round_trip_with_every_field,
    agent_names_are_unique_per_board_case_insensitively,
    a_gateway_has_at_most_one_main_agent,
    board_slugs_are_unique_and_gateways_with_boards_cannot_be_deleted,
    an_enrollment_use_is_spent_with_the_create_or_not_at_all,
    revoking_is_scoped_to_the_board_and_idempotent,
    liveness_batches_write_fields_and_events_in_order,
    agent_pages_are_newest_first_then_by_id_and_filtered,
    deleting_a_board_deletes_its_agents_and_reports_them,
    a_liveness_batch_larger_than_one_statement_updates_every_agent,
    committed_events_are_published_in_id_order_and_readable_since_an_id,
    recorded_events_queue_deliveries_claimed_under_a_lease,
    check_in_deadlines_are_written_behind_and_read_back_at_start,
    the_provision_error_is_set_and_cleared_on_its_own,
    a_transition_is_recorded_once_when_two_replicas_both_see_it,
    an_older_liveness_write_never_moves_last_seen_back,
    agents_are_read_back_by_id_and_by_token_digest,
    a_store_keeps_the_leadership_it_took,
    a_store_knows_the_events_it_recorded,
    due_check_in_waits_are_read_back_earliest_first,
    logged_heartbeats_are_read_back_at_start_and_folded_into_the_rows,
    a_long_log_is_replayed_and_folded_whole,
    a_log_fold_never_moves_a_row_back_in_time_and_skips_deleted_agents,
    a_plain_heartbeat_is_written_with_the_transition_of_its_batch,
);

on_shared_backend!(
    shared_plain_heartbeats_carry_their_health_and_only_the_newest_applies,
    shared_a_newer_plain_heartbeat_ends_a_stored_check_in_wait_and_an_older_one_does_not,
);

/// Two stores on one fresh schema of the throwaway PostgreSQL server, as two replicas.
#[tokio::test]
async fn on_postgres_two_replicas_crossing_liveness_batches_never_deadlock() {
    let url = TestPostgres::shared().fresh_schema_url().await;
    let first = PostgresStore::open(&url).await.unwrap();
    let second = PostgresStore::open(&url).await.unwrap();
    two_replicas_crossing_liveness_batches_never_deadlock(Arc::new(first), Arc::new(second)).await;
}

async fn due_check_in_waits_are_read_back_earliest_first(store: Arc<dyn Store>) {
    let (_, gw, board) = seed(&store).await;
    let agents: Vec<Agent> = ["late", "early", "later", "none"]
        .iter()
        .map(|name| agent(gw, board, name))
        .collect();
    for a in &agents {
        store
            .insert_agent(a, None, None, &event(Some(a.id)))
            .await
            .unwrap();
    }
    let waiting = |a: &Agent, seconds: i64| LivenessWrite {
        agent_id: a.id,
        last_seen_at: None,
        reported_health: None,
        own_token_used: false,
        updated_at: now(),
        checkin: Some(Checkin::Awaiting {
            deadline: now().plus_seconds(seconds),
            wakes: 1,
        }),
    };
    store
        .apply_liveness(
            &[
                waiting(&agents[0], 20),
                waiting(&agents[1], 10),
                waiting(&agents[2], 60),
            ],
            &[],
            &[],
        )
        .await
        .unwrap();
    let due = store
        .checkins_due(now().plus_seconds(30), 10)
        .await
        .unwrap();
    let names: Vec<&str> = due.iter().map(|s| s.agent.name.as_str()).collect();
    assert_eq!(names, ["early", "late"]);
    assert_eq!(
        due[0].checkin,
        Some(Checkin::Awaiting {
            deadline: now().plus_seconds(10),
            wakes: 1
        })
    );
    assert_eq!(
        store
            .checkins_due(now().plus_seconds(30), 1)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(store.checkins_due(now(), 10).await.unwrap().is_empty());
}

/// A liveness transition event of `agent` from `from` to `to`.
fn transition(agent: AgentId, from: AgentStatus, to: AgentStatus) -> LivenessEvent {
    let mut activity = event(Some(agent));
    activity.event_type = EventType::AgentStatusChanged(to);
    LivenessEvent {
        activity,
        transition: Some(Transition {
            agent_id: agent,
            from,
            to,
        }),
    }
}

/// A liveness write of `agent` seen at `seen` reporting `health`.
fn seen_write(agent: AgentId, seen: Timestamp, health: ReportedHealth) -> LivenessWrite {
    LivenessWrite {
        agent_id: agent,
        last_seen_at: Some(seen),
        reported_health: Some(health),
        own_token_used: true,
        updated_at: seen,
        checkin: None,
    }
}

async fn a_transition_is_recorded_once_when_two_replicas_both_see_it(store: Arc<dyn Store>) {
    let (_, gw, board) = seed(&store).await;
    let (a, b) = (agent(gw, board, "a"), agent(gw, board, "b"));
    for agent in [&a, &b] {
        store
            .insert_agent(agent, None, None, &event(Some(agent.id)))
            .await
            .unwrap();
    }
    let first = store
        .apply_liveness(
            &[],
            &[],
            &[transition(
                a.id,
                AgentStatus::Provisioning,
                AgentStatus::Healthy,
            )],
        )
        .await
        .unwrap();
    assert_eq!(first.recorded.len(), 1);
    assert!(first.refused.is_empty());
    // A second replica records the same transition, and a first one for another agent:
    // only the other agent's is recorded.
    let second = store
        .apply_liveness(
            &[],
            &[],
            &[
                transition(a.id, AgentStatus::Provisioning, AgentStatus::Healthy),
                transition(b.id, AgentStatus::Provisioning, AgentStatus::Healthy),
            ],
        )
        .await
        .unwrap();
    assert_eq!(second.recorded.len(), 1);
    assert_eq!(second.recorded[0].agent_id, Some(b.id));
    assert_eq!(second.refused, [(a.id, Some(AgentStatus::Healthy))]);
    // Any other event of the batch is recorded all the same; a deleted agent's transition
    // is refused with no status.
    let mut other = event(None);
    other.event_type = EventType::AgentUpdated;
    let gone = AgentId::new();
    let third = store
        .apply_liveness(
            &[],
            &[],
            &[
                LivenessEvent {
                    activity: other,
                    transition: None,
                },
                transition(gone, AgentStatus::Healthy, AgentStatus::Offline),
            ],
        )
        .await
        .unwrap();
    assert_eq!(third.recorded.len(), 1);
    assert_eq!(third.refused, [(gone, None)]);
    let stored = store.agent(a.id).await.unwrap().unwrap();
    assert_eq!(stored.published_status, AgentStatus::Healthy);
}

async fn an_older_liveness_write_never_moves_last_seen_back(store: Arc<dyn Store>) {
    let (_, gw, board) = seed(&store).await;
    let a = agent(gw, board, "a");
    store
        .insert_agent(&a, None, None, &event(Some(a.id)))
        .await
        .unwrap();
    let newer = now().plus_seconds(20);
    store
        .apply_liveness(
            &[seen_write(a.id, newer, ReportedHealth::Degraded)],
            &[],
            &[],
        )
        .await
        .unwrap();
    // Another replica's write-behind of an earlier heartbeat arrives late.
    store
        .apply_liveness(
            &[seen_write(
                a.id,
                now().plus_seconds(10),
                ReportedHealth::Healthy,
            )],
            &[],
            &[],
        )
        .await
        .unwrap();
    let stored = store.agent(a.id).await.unwrap().unwrap();
    assert_eq!(stored.last_seen_at, Some(newer));
    assert_eq!(stored.reported_health, Some(ReportedHealth::Degraded));
    // A newer one moves it on.
    let newest = now().plus_seconds(30);
    store
        .apply_liveness(
            &[seen_write(a.id, newest, ReportedHealth::Healthy)],
            &[],
            &[],
        )
        .await
        .unwrap();
    let stored = store.agent(a.id).await.unwrap().unwrap();
    assert_eq!(stored.last_seen_at, Some(newest));
    assert_eq!(stored.reported_health, Some(ReportedHealth::Healthy));
}

async fn agents_are_read_back_by_id_and_by_token_digest(store: Arc<dyn Store>) {
    let (_, gw, board) = seed(&store).await;
    let (a, b) = (agent(gw, board, "a"), agent(gw, board, "b"));
    let digest = TokenDigest::of("a-token");
    store
        .insert_agent(&a, Some(digest), None, &event(Some(a.id)))
        .await
        .unwrap();
    store
        .insert_agent(&b, None, None, &event(Some(b.id)))
        .await
        .unwrap();
    let seen = now().plus_seconds(5);
    store
        .apply_liveness(&[seen_write(a.id, seen, ReportedHealth::Healthy)], &[], &[])
        .await
        .unwrap();
    let by_token = store.agent_by_token(digest).await.unwrap().unwrap();
    assert_eq!(by_token.agent.id, a.id);
    assert_eq!(by_token.token_digest, Some(digest));
    assert_eq!(by_token.agent.last_seen_at, Some(seen));
    assert!(
        store
            .agent_by_token(TokenDigest::of("unknown"))
            .await
            .unwrap()
            .is_none()
    );
    let mut ids: Vec<AgentId> = store
        .stored_agents(&[a.id, b.id, AgentId::new()])
        .await
        .unwrap()
        .iter()
        .map(|s| s.agent.id)
        .collect();
    ids.sort_unstable();
    let mut expected = vec![a.id, b.id];
    expected.sort_unstable();
    assert_eq!(ids, expected);
    assert!(store.stored_agents(&[]).await.unwrap().is_empty());
}

async fn a_store_keeps_the_leadership_it_took(store: Arc<dyn Store>) {
    assert!(store.hold_leadership().await.unwrap());
    assert!(
        store.hold_leadership().await.unwrap(),
        "confirmed, not lost"
    );
}

async fn a_store_knows_the_events_it_recorded(store: Arc<dyn Store>) {
    let (_, gw, board) = seed(&store).await;
    let a = agent(gw, board, "a");
    store
        .insert_agent(&a, None, None, &event(Some(a.id)))
        .await
        .unwrap();
    let recorded = store
        .apply_liveness(
            &[],
            &[],
            &[transition(
                a.id,
                AgentStatus::Provisioning,
                AgentStatus::Healthy,
            )],
        )
        .await
        .unwrap()
        .recorded;
    assert!(store.recorded_here(recorded[0].id));
}

#[tokio::test]
async fn on_postgres_a_store_tells_its_own_events_from_another_stores() {
    let url = TestPostgres::shared().fresh_schema_url().await;
    let (mine, theirs) = (
        PostgresStore::open(&url).await.unwrap(),
        PostgresStore::open(&url).await.unwrap(),
    );
    let org = mine.ensure_default_organization(now()).await.unwrap();
    let gateway = unmanaged_gateway(org);
    mine.insert_gateway(&gateway).await.unwrap();
    // Each store creates a gateway's main agent (one per gateway).
    let other = unmanaged_gateway(org);
    mine.insert_gateway(&other).await.unwrap();
    let mut feed = mine.subscribe_activity();
    let a = common::new_agent(gateway.id, None, "a");
    theirs
        .insert_agent(&a, None, None, &event(Some(a.id)))
        .await
        .unwrap();
    let b = common::new_agent(other.id, None, "b");
    mine.insert_agent(&b, None, None, &event(Some(b.id)))
        .await
        .unwrap();
    let first = feed.recv().await.unwrap();
    let second = feed.recv().await.unwrap();
    assert_eq!(first.agent_id, Some(a.id));
    assert!(!mine.recorded_here(first.id), "recorded by the other store");
    assert!(mine.recorded_here(second.id));
    assert!(!mine.recorded_here(second.id), "asked once");
}

#[tokio::test]
async fn on_postgres_one_store_of_a_schema_leads_and_a_survivor_takes_over() {
    let pg = TestPostgres::shared();
    let url = pg.fresh_schema_url().await;
    let first = PostgresStore::open(&url).await.unwrap();
    let second = PostgresStore::open(&url).await.unwrap();
    assert!(first.is_shared());
    assert!(first.hold_leadership().await.unwrap());
    assert!(!second.hold_leadership().await.unwrap());
    assert!(first.hold_leadership().await.unwrap());
    // Another schema on the same server has a leader of its own.
    let elsewhere = PostgresStore::open(&pg.fresh_schema_url().await)
        .await
        .unwrap();
    assert!(elsewhere.hold_leadership().await.unwrap());
    // The leader goes away (its session ends): the other store takes over.
    drop(first);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !second.hold_leadership().await.unwrap() {
        assert!(
            std::time::Instant::now() < deadline,
            "the survivor never took over"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn event(agent: Option<AgentId>) -> NewActivity {
    NewActivity {
        event_type: EventType::AgentCreated,
        message: "Created.".into(),
        agent_id: agent,
        board_id: None,
        data: None,
        created_at: now(),
    }
}

async fn seed(store: &Arc<dyn Store>) -> (OrganizationId, GatewayId, BoardId) {
    let org = store.ensure_default_organization(now()).await.unwrap();
    let gateway = Gateway {
        token: Some(Secret::new("gateway-secret")),
        ..unmanaged_gateway(org)
    };
    store.insert_gateway(&gateway).await.unwrap();
    let board = board(org, gateway.id, "ops");
    store.insert_board(&board).await.unwrap();
    (org, gateway.id, board.id)
}

/// The agent without a board is its gateway's main agent: a second one for the same
/// gateway (two replicas creating it at once) is refused, another gateway's is not.
async fn a_gateway_has_at_most_one_main_agent(store: Arc<dyn Store>) {
    let (org, gw, board) = seed(&store).await;
    let main = common::new_agent(gw, None, "gw main agent");
    store
        .insert_agent(&main, None, None, &event(Some(main.id)))
        .await
        .unwrap();
    let again = common::new_agent(gw, None, "gw main agent");
    let refused = store
        .insert_agent(&again, None, None, &event(Some(again.id)))
        .await
        .unwrap_err();
    assert!(
        matches!(refused, StoreError::Conflict(Constraint::GatewayMainAgent)),
        "{refused:?}"
    );
    assert!(store.agent(again.id).await.unwrap().is_none());
    // Agents on boards, and another gateway's main agent, are not affected.
    let worker = agent(gw, board, "worker");
    store
        .insert_agent(&worker, None, None, &event(Some(worker.id)))
        .await
        .unwrap();
    let other = unmanaged_gateway(org);
    store.insert_gateway(&other).await.unwrap();
    let other_main = common::new_agent(other.id, None, "other main agent");
    store
        .insert_agent(&other_main, None, None, &event(Some(other_main.id)))
        .await
        .unwrap();
}

/// A new gateway without a URL (unmanaged) or token.
fn unmanaged_gateway(org: OrganizationId) -> Gateway {
    Gateway {
        id: GatewayId::new(),
        organization_id: org,
        name: "gw".into(),
        url: GatewayUrl::parse("").unwrap(),
        token: None,
        workspace_root: String::new(),
        allow_insecure_tls: false,
        disable_device_pairing: false,
        created_at: now(),
        updated_at: now(),
    }
}

fn board(org: OrganizationId, gateway: GatewayId, slug: &str) -> Board {
    Board {
        id: BoardId::new(),
        organization_id: org,
        name: slug.to_uppercase(),
        slug: Slug::parse(slug).unwrap(),
        description: "d".into(),
        gateway_id: gateway,
        rules: BoardRules::default(),
        created_at: now(),
        updated_at: now(),
    }
}

fn agent(gateway: GatewayId, board: BoardId, name: &str) -> Agent {
    common::new_agent(gateway, Some(board), name)
}

/// Seeds a gateway and a board, and stores one agent on it per name.
async fn stored_agents<const N: usize>(store: &Arc<dyn Store>, names: [&str; N]) -> [Agent; N] {
    let (_, gw, board) = seed(store).await;
    let agents = names.map(|name| agent(gw, board, name));
    for x in &agents {
        store
            .insert_agent(x, None, None, &event(Some(x.id)))
            .await
            .unwrap();
    }
    agents
}

fn enrollment(board: BoardId, max_uses: Option<u32>) -> EnrollmentToken {
    EnrollmentToken {
        id: EnrollmentTokenId::new(),
        board_id: board,
        expires_at: now().plus_seconds(3600),
        max_uses,
        uses: 0,
        revoked_at: None,
        created_at: now(),
    }
}

async fn the_default_organisation_is_created_once(store: Arc<dyn Store>) {
    let a = store.ensure_default_organization(now()).await.unwrap();
    let b = store.ensure_default_organization(now()).await.unwrap();
    assert_eq!(a, b);
}

async fn agents_round_trip_with_every_field(store: Arc<dyn Store>) {
    let (_, gw, board) = seed(&store).await;
    let mut a = agent(gw, board, "Worker");
    a.identity_profile = Some([("role".to_owned(), "Lead".to_owned())].into());
    a.soul_template = Some("soul".into());
    let digest = TokenDigest::of("t");
    store
        .insert_agent(&a, Some(digest), None, &event(Some(a.id)))
        .await
        .unwrap();
    assert_eq!(store.agent(a.id).await.unwrap(), Some(a.clone()));
    let all = store.all_agents().await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].token_digest, Some(digest));
}

async fn agent_names_are_unique_per_board_case_insensitively(store: Arc<dyn Store>) {
    let (org, gw, board_id) = seed(&store).await;
    let first = agent(gw, board_id, "Worker");
    store
        .insert_agent(&first, None, None, &event(None))
        .await
        .unwrap();
    let clash = agent(gw, board_id, "WORKER");
    let err = store
        .insert_agent(&clash, None, None, &event(None))
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        StoreError::Conflict(Constraint::AgentNameOnBoard)
    ));
    let other = board(org, gw, "other");
    store.insert_board(&other).await.unwrap();
    store
        .insert_agent(&agent(gw, other.id, "worker"), None, None, &event(None))
        .await
        .unwrap();
    let found = store.agents_named("worker", None).await.unwrap();
    assert_eq!(found.len(), 2);
    let on_board = store.agents_named("worker", Some(board_id)).await.unwrap();
    assert_eq!(on_board.len(), 1);
}

async fn board_slugs_are_unique_and_gateways_with_boards_cannot_be_deleted(store: Arc<dyn Store>) {
    let (org, gw, _) = seed(&store).await;
    let err = store
        .insert_board(&board(org, gw, "ops"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(Constraint::BoardSlug)));
    let err = store.delete_gateway(gw, &[]).await.unwrap_err();
    assert!(matches!(
        err,
        StoreError::Conflict(Constraint::GatewayHasBoards)
    ));
    assert!(store.gateway(gw).await.unwrap().is_some());
}

async fn an_enrollment_use_is_spent_with_the_create_or_not_at_all(store: Arc<dyn Store>) {
    let (_, gw, board) = seed(&store).await;
    let token = enrollment(board, Some(1));
    store
        .insert_enrollment_token(&token, TokenDigest::of("mce_x"))
        .await
        .unwrap();
    let spend = Some(EnrollmentSpend {
        token_id: token.id,
        now: now(),
    });
    store
        .insert_agent(&agent(gw, board, "a"), None, spend, &event(None))
        .await
        .unwrap();
    let second = agent(gw, board, "b");
    let err = store
        .insert_agent(&second, None, spend, &event(None))
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        StoreError::EnrollmentRefused(EnrollmentRefusal::UsedUp)
    ));
    assert_eq!(store.agent(second.id).await.unwrap(), None);
    let stored = store
        .enrollment_token_by_digest(TokenDigest::of("mce_x"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.uses, 1);
}

async fn revoking_is_scoped_to_the_board_and_idempotent(store: Arc<dyn Store>) {
    let (_, _, board) = seed(&store).await;
    let token = enrollment(board, None);
    store
        .insert_enrollment_token(&token, TokenDigest::of("mce_y"))
        .await
        .unwrap();
    assert!(
        store
            .revoke_enrollment_token(BoardId::new(), token.id, now())
            .await
            .unwrap()
            .is_none()
    );
    let first = store
        .revoke_enrollment_token(board, token.id, now())
        .await
        .unwrap()
        .unwrap();
    let again = store
        .revoke_enrollment_token(board, token.id, now().plus_seconds(5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.revoked_at, Some(now()));
    assert_eq!(again.revoked_at, Some(now()));
}

async fn liveness_batches_write_fields_and_events_in_order(store: Arc<dyn Store>) {
    let (_, gw, board) = seed(&store).await;
    let a = agent(gw, board, "a");
    store
        .insert_agent(&a, None, None, &event(Some(a.id)))
        .await
        .unwrap();
    let seen = now().plus_seconds(10);
    let write = LivenessWrite {
        agent_id: a.id,
        last_seen_at: Some(seen),
        reported_health: Some(ReportedHealth::Degraded),
        own_token_used: true,
        updated_at: seen,
        checkin: None,
    };
    let recorded = store
        .apply_liveness(
            &[write],
            &[],
            &[
                transition(a.id, AgentStatus::Provisioning, AgentStatus::Healthy),
                transition(a.id, AgentStatus::Healthy, AgentStatus::Degraded),
            ],
        )
        .await
        .unwrap()
        .recorded;
    assert!(recorded[0].id < recorded[1].id);
    assert_eq!(recorded[1].event_type, "agent.degraded");
    let stored = store.agent(a.id).await.unwrap().unwrap();
    assert_eq!(stored.last_seen_at, Some(seen));
    assert_eq!(stored.reported_health, Some(ReportedHealth::Degraded));
    assert_eq!(stored.published_status, AgentStatus::Degraded);
    assert!(stored.own_token_used);
    let page = store
        .list_activity(
            ActivityFilter {
                agent_id: Some(a.id),
                board_id: None,
            },
            PageRequest::default(),
        )
        .await
        .unwrap();
    assert_eq!(page.total, 3);
    assert!(page.items.windows(2).all(|w| w[0].id > w[1].id));
}

async fn agent_pages_are_newest_first_then_by_id_and_filtered(store: Arc<dyn Store>) {
    let (org, gw, board) = seed(&store).await;
    let mut on_board = Vec::new();
    for i in 0..5 {
        let mut a = agent(gw, board, &format!("a{i}"));
        a.created_at = now().plus_seconds(i);
        on_board.push(a);
    }
    // Two created in the same instant: the larger id comes first.
    for name in ["twin1", "twin2"] {
        let mut a = agent(gw, board, name);
        a.created_at = now().plus_seconds(10);
        on_board.push(a);
    }
    let other_gateway = Gateway {
        id: GatewayId::new(),
        name: "gw2".into(),
        ..store.gateway(gw).await.unwrap().unwrap()
    };
    store.insert_gateway(&other_gateway).await.unwrap();
    let other_board = self::board(org, other_gateway.id, "other");
    store.insert_board(&other_board).await.unwrap();
    let elsewhere = agent(other_gateway.id, other_board.id, "elsewhere");
    let mut main = common::new_agent(gw, None, "main");
    main.created_at = now().plus_seconds(-1);
    for a in on_board.iter().chain([&elsewhere, &main]) {
        store
            .insert_agent(a, None, None, &event(Some(a.id)))
            .await
            .unwrap();
    }
    let (twin_first, twin_second) = if on_board[5].id > on_board[6].id {
        (on_board[5].name.as_str(), on_board[6].name.as_str())
    } else {
        (on_board[6].name.as_str(), on_board[5].name.as_str())
    };
    let names = |page: Vec<Agent>| -> Vec<String> {
        page.iter().map(|a| a.name.as_str().to_owned()).collect()
    };
    let list = |board_id, gateway_id, limit, offset| {
        let store = Arc::clone(&store);
        async move {
            store
                .list_agents(
                    AgentFilter {
                        board_id,
                        gateway_id,
                    },
                    PageRequest::parse(Some(limit), Some(offset)).unwrap(),
                )
                .await
                .unwrap()
        }
    };

    assert_eq!(
        names(list(Some(board), None, 4, 1).await),
        [twin_second, "a4", "a3", "a2"]
    );
    assert_eq!(
        names(list(Some(board), None, 2, 0).await),
        [twin_first, twin_second]
    );
    assert_eq!(names(list(None, Some(gw), 200, 6).await), ["a0", "main"]);
    assert_eq!(
        names(list(Some(board), Some(other_gateway.id), 200, 0).await),
        Vec::<String>::new()
    );
    assert_eq!(
        names(list(Some(other_board.id), Some(other_gateway.id), 200, 0).await),
        ["elsewhere"]
    );
    assert_eq!(list(None, None, 200, 0).await.len(), 9);
    assert!(list(None, None, 200, 9).await.is_empty());
    // The ids alone come in the same order, under every filter.
    for (board_id, gateway_id, offset) in [
        (None, None, 0),
        (None, None, 3),
        (Some(board), None, 1),
        (None, Some(gw), 0),
        (Some(other_board.id), Some(other_gateway.id), 0),
    ] {
        let ids = store
            .list_agent_ids(
                AgentFilter {
                    board_id,
                    gateway_id,
                },
                PageRequest::parse(Some(4), Some(offset)).unwrap(),
            )
            .await
            .unwrap();
        let listed: Vec<AgentId> = list(board_id, gateway_id, 4, offset)
            .await
            .iter()
            .map(|a| a.id)
            .collect();
        assert_eq!(ids, listed, "{board_id:?} {gateway_id:?} {offset}");
    }
    // A listed agent reads as it does by id (its liveness row included).
    let listed = list(None, Some(other_gateway.id), 1, 0).await;
    assert_eq!(listed, [store.agent(elsewhere.id).await.unwrap().unwrap()]);
}

async fn deleting_a_board_deletes_its_agents_and_reports_them(store: Arc<dyn Store>) {
    let (_, gw, board) = seed(&store).await;
    let a = agent(gw, board, "a");
    store
        .insert_agent(&a, None, None, &event(None))
        .await
        .unwrap();
    let deleted = store.delete_board(board, &[], &[]).await.unwrap();
    assert_eq!(deleted, Some(vec![a.id]));
    assert_eq!(store.agent(a.id).await.unwrap(), None);
    assert_eq!(store.delete_board(board, &[], &[]).await.unwrap(), None);
    assert_eq!(store.delete_gateway(gw, &[]).await.unwrap(), Some(vec![]));
}

#[tokio::test]
async fn a_mistyped_url_is_an_error_never_a_new_database() {
    let dir = tempfile::tempdir().unwrap();
    let missing = format!("sqlite://{}", dir.path().join("typo.db").display());
    assert!(matches!(
        mc_store::open(&missing, false).await,
        Err(StoreError::Config(_))
    ));
    assert!(!dir.path().join("typo.db").exists());
    assert!(matches!(
        mc_store::open("sqllite://x.db", true).await,
        Err(StoreError::Config(_))
    ));
    let url = format!("sqlite://{}", dir.path().join("mc.db").display());
    SqliteStore::migrate(&url).await.unwrap();
    SqliteStore::migrate(&url).await.unwrap();
}

async fn a_liveness_batch_larger_than_one_statement_updates_every_agent(store: Arc<dyn Store>) {
    let (_, gw, board) = seed(&store).await;
    let mut writes = Vec::new();
    for i in 0..2_345 {
        let a = agent(gw, board, &format!("a{i}"));
        store
            .insert_agent(&a, None, None, &event(None))
            .await
            .unwrap();
        writes.push(LivenessWrite {
            agent_id: a.id,
            last_seen_at: Some(now().plus_millis(i)),
            reported_health: Some(ReportedHealth::Healthy),
            own_token_used: false,
            updated_at: now().plus_millis(i),
            checkin: None,
        });
    }
    store.apply_liveness(&writes, &[], &[]).await.unwrap();
    for (i, stored) in store.all_agents().await.unwrap().iter().enumerate() {
        let expected = writes
            .iter()
            .find(|w| w.agent_id == stored.agent.id)
            .unwrap_or_else(|| panic!("agent {i} missing"));
        assert_eq!(stored.agent.last_seen_at, expected.last_seen_at);
        assert_eq!(stored.agent.reported_health, Some(ReportedHealth::Healthy));
    }
}

#[tokio::test]
async fn a_postgres_url_must_name_an_existing_database_and_other_schemes_are_refused() {
    let pg = TestPostgres::shared();
    match mc_store::open(&pg.url("no_such_database"), true).await {
        Err(StoreError::Config(message)) => {
            assert!(message.contains("no_such_database"), "{message}");
        }
        Err(other) => panic!("expected a configuration error, got {other:?}"),
        Ok(_) => panic!("a missing PostgreSQL database must not be created"),
    }
    for url in ["mysql://mc@localhost/mc", "mc.db"] {
        match mc_store::open(url, true).await {
            Err(StoreError::Config(message)) => {
                assert!(message.contains("postgres://"), "{message}");
                assert!(message.contains("sqlite:"), "{message}");
            }
            Err(other) => panic!("expected a configuration error for {url}, got {other:?}"),
            Ok(_) => panic!("{url} must be refused"),
        }
    }
    let url = pg.fresh_schema_url().await;
    mc_store::migrate(&url).await.unwrap();
    mc_store::migrate(&url).await.unwrap();
    let store = mc_store::open(&url, false).await.unwrap();
    store.ping().await.unwrap();
}

#[tokio::test]
async fn a_lost_postgres_is_unavailable_and_its_return_is_picked_up_without_reopening() {
    let pg = TestPostgres::start();
    let store = PostgresStore::open(&pg.fresh_schema_url().await)
        .await
        .unwrap();
    let org = store.ensure_default_organization(now()).await.unwrap();

    pg.stop();
    assert!(matches!(
        store.ping().await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(matches!(
        store.ensure_default_organization(now()).await,
        Err(StoreError::Unavailable(_))
    ));

    pg.resume();
    store.ping().await.unwrap();
    assert_eq!(store.ensure_default_organization(now()).await.unwrap(), org);
}

async fn committed_events_are_published_in_id_order_and_readable_since_an_id(
    store: Arc<dyn Store>,
) {
    let (_, gw, board) = seed(&store).await;
    let before = store.latest_activity_id().await.unwrap();
    let mut feed = store.subscribe_activity();
    let mut ids = Vec::new();
    for name in ["a", "b", "c"] {
        let a = agent(gw, board, name);
        store
            .insert_agent(&a, None, None, &event(Some(a.id)))
            .await
            .unwrap();
        ids.push(feed.recv().await.unwrap().id);
    }
    assert!(
        before < ids[0] && ids.windows(2).all(|w| w[0] < w[1]),
        "{ids:?}"
    );
    assert_eq!(store.latest_activity_id().await.unwrap(), ids[2]);
    let since = store
        .activity_since(ids[0], ActivityFilter::default(), 10)
        .await
        .unwrap();
    assert_eq!(since.iter().map(|e| e.id).collect::<Vec<_>>(), ids[1..]);
    let limited = store
        .activity_since(0, ActivityFilter::default(), 2)
        .await
        .unwrap();
    assert_eq!(limited.iter().map(|e| e.id).collect::<Vec<_>>(), ids[..2]);
    // A failed write publishes nothing.
    let duplicate = agent(gw, board, "A");
    assert!(
        store
            .insert_agent(&duplicate, None, None, &event(Some(duplicate.id)))
            .await
            .is_err()
    );
    assert!(feed.try_recv().is_err());
    assert_eq!(store.latest_activity_id().await.unwrap(), ids[2]);
}

async fn recorded_events_queue_deliveries_claimed_under_a_lease(store: Arc<dyn Store>) {
    let (org, gw, board) = seed(&store).await;
    let wanted = Webhook {
        id: WebhookId::new(),
        organization_id: org,
        url: WebhookUrl::parse("http://127.0.0.1:9/hook").unwrap(),
        event_types: EventSelection::parse(&["agent.created".into()]).unwrap(),
        secret: Secret::new("0123456789abcdef"),
        enabled: true,
        created_at: now(),
        updated_at: now(),
    };
    let disabled = Webhook {
        id: WebhookId::new(),
        enabled: false,
        event_types: EventSelection::default(),
        ..wanted.clone()
    };
    store.insert_webhook(&wanted).await.unwrap();
    store.insert_webhook(&disabled).await.unwrap();
    let a = agent(gw, board, "a");
    store
        .insert_agent(&a, None, None, &event(Some(a.id)))
        .await
        .unwrap();
    let mut rotated = event(Some(a.id));
    rotated.event_type = EventType::AgentTokenRotated;
    store
        .set_agent_token(a.id, TokenDigest::of("t"), &rotated)
        .await
        .unwrap();
    assert_eq!(
        store.pending_deliveries().await.unwrap(),
        1,
        "only the wanted type, only enabled"
    );
    assert_eq!(store.next_delivery_due().await.unwrap(), Some(now()));

    let lease = now().plus_seconds(30);
    let claimed = store.claim_due_deliveries(now(), lease, 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].event.event_type, "agent.created");
    assert_eq!(claimed[0].url, wanted.url);
    assert_eq!(claimed[0].secret.expose(), "0123456789abcdef");
    assert!(
        store
            .claim_due_deliveries(now(), lease, 10)
            .await
            .unwrap()
            .is_empty(),
        "claimed under a lease"
    );
    let after_lease = lease.plus_seconds(1);
    let reclaimed = store
        .claim_due_deliveries(after_lease, after_lease.plus_seconds(30), 10)
        .await
        .unwrap();
    assert_eq!(reclaimed.len(), 1, "a lapsed claim is due again");

    let delivery_id = reclaimed[0].delivery.id;
    store
        .record_delivery_attempt(&DeliveryAttempt {
            delivery_id,
            attempted_at: after_lease,
            state: DeliveryState::Pending,
            status_code: Some(503),
            error: Some("the receiver answered HTTP 503".into()),
            next_attempt_at: Some(after_lease.plus_seconds(60)),
        })
        .await
        .unwrap();
    assert!(
        store
            .claim_due_deliveries(after_lease, lease, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let log = store
        .list_deliveries(wanted.id, PageRequest::default())
        .await
        .unwrap();
    assert_eq!(log.items[0].attempts, 1);
    assert_eq!(log.items[0].last_status_code, Some(503));
    store
        .record_delivery_attempt(&DeliveryAttempt {
            delivery_id,
            attempted_at: after_lease,
            state: DeliveryState::Delivered,
            status_code: Some(200),
            error: None,
            next_attempt_at: None,
        })
        .await
        .unwrap();
    assert_eq!(store.pending_deliveries().await.unwrap(), 0);
    assert_eq!(store.next_delivery_due().await.unwrap(), None);

    assert!(store.delete_webhook(wanted.id).await.unwrap());
    assert!(
        store
            .list_deliveries(wanted.id, PageRequest::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert!(!store.delete_webhook(wanted.id).await.unwrap());
}

async fn check_in_deadlines_are_written_behind_and_read_back_at_start(store: Arc<dyn Store>) {
    let (_, gw, board) = seed(&store).await;
    let (awaited, gave_up) = (agent(gw, board, "awaited"), agent(gw, board, "gave-up"));
    for a in [&awaited, &gave_up] {
        store
            .insert_agent(a, None, None, &event(Some(a.id)))
            .await
            .unwrap();
    }
    let checkin_of = |stored: &[mc_store::StoredAgent], id: AgentId| {
        stored.iter().find(|s| s.agent.id == id).unwrap().checkin
    };
    let stored = store.all_agents().await.unwrap();
    assert_eq!(
        checkin_of(&stored, awaited.id),
        None,
        "none until one is set"
    );

    let deadline = now().plus_seconds(30);
    let write = |agent: &Agent, checkin| LivenessWrite {
        agent_id: agent.id,
        last_seen_at: None,
        reported_health: None,
        own_token_used: false,
        updated_at: now(),
        checkin,
    };
    let awaiting = Some(Checkin::Awaiting { deadline, wakes: 2 });
    store
        .apply_liveness(
            &[
                write(&awaited, awaiting),
                write(&gave_up, Some(Checkin::GaveUp)),
            ],
            &[],
            &[],
        )
        .await
        .unwrap();
    let stored = store.all_agents().await.unwrap();
    assert_eq!(checkin_of(&stored, awaited.id), awaiting);
    assert_eq!(checkin_of(&stored, gave_up.id), Some(Checkin::GaveUp));

    // A heartbeat clears the wait.
    store
        .apply_liveness(&[write(&awaited, None)], &[], &[])
        .await
        .unwrap();
    let stored = store.all_agents().await.unwrap();
    assert_eq!(checkin_of(&stored, awaited.id), None);
}

async fn the_provision_error_is_set_and_cleared_on_its_own(store: Arc<dyn Store>) {
    let (_, gw, board) = seed(&store).await;
    let a = agent(gw, board, "a");
    store
        .insert_agent(&a, None, None, &event(Some(a.id)))
        .await
        .unwrap();
    let reason = "never checked in: woken 3 times, no heartbeat within 30 s of each wake";
    assert!(store.set_provision_error(a.id, Some(reason)).await.unwrap());
    let stored = store.agent(a.id).await.unwrap().unwrap();
    assert_eq!(stored.last_provision_error.as_deref(), Some(reason));
    assert_eq!(stored.name, a.name, "nothing else changes");
    assert!(store.set_provision_error(a.id, None).await.unwrap());
    assert_eq!(
        store
            .agent(a.id)
            .await
            .unwrap()
            .unwrap()
            .last_provision_error,
        None
    );
    assert!(
        !store
            .set_provision_error(AgentId::new(), None)
            .await
            .unwrap()
    );
}

fn seen(agent: &Agent, at: mc_domain::time::Timestamp) -> SeenWrite {
    seen_reporting(agent.id, at, ReportedHealth::Healthy)
}

/// A plain heartbeat of `agent` at `at` (health `health`, as the replica knows it).
fn seen_reporting(agent: AgentId, at: Timestamp, health: ReportedHealth) -> SeenWrite {
    SeenWrite {
        agent_id: agent,
        last_seen_at: at,
        reported_health: Some(health),
        updated_at: at,
    }
}

async fn logged_heartbeats_are_read_back_at_start_and_folded_into_the_rows(store: Arc<dyn Store>) {
    let [a, b] = stored_agents(&store, ["a", "b"]).await;
    let (t1, t2, t3) = (
        now().plus_seconds(1),
        now().plus_seconds(2),
        now().plus_seconds(3),
    );
    store
        .apply_liveness(&[], &[seen(&a, t1), seen(&b, t1)], &[])
        .await
        .unwrap();
    store
        .apply_liveness(&[], &[seen(&a, t3)], &[])
        .await
        .unwrap();
    store
        .apply_liveness(&[], &[seen(&b, t2)], &[])
        .await
        .unwrap();
    let last_seen = |stored: &[mc_store::StoredAgent], id: AgentId| {
        let agent = &stored.iter().find(|s| s.agent.id == id).unwrap().agent;
        (agent.last_seen_at, agent.updated_at)
    };
    // Before the fold: the start-up read replays the log; the rows are untouched, except
    // on a shared store, which writes the rows at once (other replicas read them).
    let row_before_fold = if store.is_shared() { Some(t3) } else { None };
    assert_eq!(
        store.agent(a.id).await.unwrap().unwrap().last_seen_at,
        row_before_fold
    );
    let stored = store.all_agents().await.unwrap();
    assert_eq!(last_seen(&stored, a.id), (Some(t3), t3));
    assert_eq!(last_seen(&stored, b.id), (Some(t2), t2));

    let folded = store.compact_liveness_log().await.unwrap();
    let expected = if store.is_shared() {
        LogCompaction::default()
    } else {
        LogCompaction {
            batches: 3,
            entries: 4,
            agents: 2,
        }
    };
    assert_eq!(folded, expected);
    assert_eq!(
        store.agent(a.id).await.unwrap().unwrap().last_seen_at,
        Some(t3)
    );
    assert_eq!(
        store.agent(b.id).await.unwrap().unwrap().last_seen_at,
        Some(t2)
    );
    let stored = store.all_agents().await.unwrap();
    assert_eq!(last_seen(&stored, a.id), (Some(t3), t3));
    assert_eq!(
        store.compact_liveness_log().await.unwrap(),
        LogCompaction::default(),
        "the folded rows are gone"
    );
}

/// A log of many batches (more than one read of the log takes) is replayed and folded
/// whole: the newest heartbeat of an agent stands in the first batch, of another in the
/// last.
async fn a_long_log_is_replayed_and_folded_whole(store: Arc<dyn Store>) {
    let [first, last] = stored_agents(&store, ["first", "last"]).await;
    const BATCHES: i64 = 100;
    let start = now();
    store
        .apply_liveness(&[], &[seen(&first, start.plus_seconds(BATCHES))], &[])
        .await
        .unwrap();
    for batch in 1..BATCHES {
        store
            .apply_liveness(&[], &[seen(&last, start.plus_seconds(batch))], &[])
            .await
            .unwrap();
    }
    let newest = |stored: &[mc_store::StoredAgent], id: AgentId| {
        stored
            .iter()
            .find(|s| s.agent.id == id)
            .unwrap()
            .agent
            .last_seen_at
    };
    let stored = store.all_agents().await.unwrap();
    assert_eq!(newest(&stored, first.id), Some(start.plus_seconds(BATCHES)));
    assert_eq!(
        newest(&stored, last.id),
        Some(start.plus_seconds(BATCHES - 1))
    );

    let folded = store.compact_liveness_log().await.unwrap();
    if !store.is_shared() {
        assert_eq!(
            (folded.batches, folded.entries, folded.agents),
            (100, 100, 2)
        );
    }
    for (id, at) in [(first.id, BATCHES), (last.id, BATCHES - 1)] {
        assert_eq!(
            store.agent(id).await.unwrap().unwrap().last_seen_at,
            Some(start.plus_seconds(at))
        );
    }
}

async fn a_log_fold_never_moves_a_row_back_in_time_and_skips_deleted_agents(store: Arc<dyn Store>) {
    let [a, gone] = stored_agents(&store, ["a", "gone"]).await;
    let (early, late) = (now().plus_seconds(1), now().plus_seconds(5));
    store
        .apply_liveness(&[], &[seen(&a, early), seen(&gone, early)], &[])
        .await
        .unwrap();
    // A later change of more than the times writes the row directly.
    let write = LivenessWrite {
        agent_id: a.id,
        last_seen_at: Some(late),
        reported_health: Some(ReportedHealth::Degraded),
        own_token_used: true,
        updated_at: late,
        checkin: None,
    };
    store.apply_liveness(&[write], &[], &[]).await.unwrap();
    assert!(store.delete_agent(gone.id, &event(None)).await.unwrap());
    let stored = store.all_agents().await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].agent.last_seen_at, Some(late));

    let folded = store.compact_liveness_log().await.unwrap();
    let expected = if store.is_shared() { (0, 0) } else { (2, 1) };
    assert_eq!((folded.entries, folded.agents), expected);
    let row = store.agent(a.id).await.unwrap().unwrap();
    assert_eq!(row.last_seen_at, Some(late));
    assert_eq!(row.updated_at, late);
    assert_eq!(row.reported_health, Some(ReportedHealth::Degraded));
}

async fn a_plain_heartbeat_is_written_with_the_transition_of_its_batch(store: Arc<dyn Store>) {
    let (_, gw, board) = seed(&store).await;
    let a = agent(gw, board, "a");
    store
        .insert_agent(&a, None, None, &event(Some(a.id)))
        .await
        .unwrap();
    // Offline and back within one write-behind window: the row fields end as they were
    // written, so the heartbeat is a plain one, in the batch of the transitions.
    let t1 = now().plus_seconds(1);
    let outcome = store
        .apply_liveness(
            &[],
            &[seen(&a, t1)],
            &[transition(
                a.id,
                AgentStatus::Provisioning,
                AgentStatus::Healthy,
            )],
        )
        .await
        .unwrap();
    assert_eq!(outcome.recorded.len(), 1);
    assert!(outcome.refused.is_empty());
    let stored = store.all_agents().await.unwrap();
    assert_eq!(stored[0].agent.last_seen_at, Some(t1));
    assert_eq!(stored[0].agent.published_status, AgentStatus::Healthy);
}

async fn shared_plain_heartbeats_carry_their_health_and_only_the_newest_applies(
    store: Arc<dyn Store>,
) {
    let (_, gw, board) = seed(&store).await;
    let a = agent(gw, board, "a");
    store
        .insert_agent(&a, None, None, &event(Some(a.id)))
        .await
        .unwrap();
    let (t10, t20, t30) = (
        now().plus_seconds(10),
        now().plus_seconds(20),
        now().plus_seconds(30),
    );
    // Replica B wrote a degraded heartbeat of t20; replica A's plain heartbeat of t10
    // (healthy as A knows the agent) arrives after it.
    store
        .apply_liveness(&[seen_write(a.id, t20, ReportedHealth::Degraded)], &[], &[])
        .await
        .unwrap();
    plain_heartbeat(&store, a.id, t10, ReportedHealth::Healthy).await;
    assert_eq!(
        seen_as_stored(&store, a.id).await,
        (Some(t20), Some(ReportedHealth::Degraded), t20)
    );
    // A's next plain heartbeat is the newest: its health replaces B's.
    plain_heartbeat(&store, a.id, t30, ReportedHealth::Healthy).await;
    assert_eq!(
        seen_as_stored(&store, a.id).await,
        (Some(t30), Some(ReportedHealth::Healthy), t30)
    );
    // And B's plain heartbeat of t20, late, changes nothing.
    plain_heartbeat(&store, a.id, t20, ReportedHealth::Degraded).await;
    assert_eq!(
        seen_as_stored(&store, a.id).await,
        (Some(t30), Some(ReportedHealth::Healthy), t30)
    );
}

/// Writes one plain heartbeat of `agent` at `at`, alone in its batch.
async fn plain_heartbeat(
    store: &Arc<dyn Store>,
    agent: AgentId,
    at: Timestamp,
    health: ReportedHealth,
) {
    store
        .apply_liveness(&[], &[seen_reporting(agent, at, health)], &[])
        .await
        .unwrap();
}

/// The stored agent's `last_seen_at`, `reported_health` and `updated_at`.
async fn seen_as_stored(
    store: &Arc<dyn Store>,
    agent: AgentId,
) -> (Option<Timestamp>, Option<ReportedHealth>, Timestamp) {
    let stored = store.agent(agent).await.unwrap().unwrap();
    (
        stored.last_seen_at,
        stored.reported_health,
        stored.updated_at,
    )
}

async fn shared_a_newer_plain_heartbeat_ends_a_stored_check_in_wait_and_an_older_one_does_not(
    store: Arc<dyn Store>,
) {
    let [waiting, gave_up] = stored_agents(&store, ["waiting", "gave-up"]).await;
    let (t5, t10, t20) = (
        now().plus_seconds(5),
        now().plus_seconds(10),
        now().plus_seconds(20),
    );
    // Another replica woke the agents after their heartbeat of t10 (it knew of it).
    let wait = |id, checkin| LivenessWrite {
        checkin: Some(checkin),
        ..seen_write(id, t10, ReportedHealth::Healthy)
    };
    let awaiting = Checkin::Awaiting {
        deadline: now().plus_seconds(40),
        wakes: 1,
    };
    store
        .apply_liveness(
            &[
                wait(waiting.id, awaiting),
                wait(gave_up.id, Checkin::GaveUp),
            ],
            &[],
            &[],
        )
        .await
        .unwrap();
    let checkins = |store: Arc<dyn Store>| async move {
        let stored = store
            .stored_agents(&[waiting.id, gave_up.id])
            .await
            .unwrap();
        let of = |id| stored.iter().find(|s| s.agent.id == id).unwrap().checkin;
        (of(waiting.id), of(gave_up.id))
    };
    // This replica's plain heartbeats of t5 and of t10 again (it was marked to write
    // for another reason) do not end a wait that started after them.
    for at in [t5, t10] {
        store
            .apply_liveness(
                &[],
                &[
                    seen_reporting(waiting.id, at, ReportedHealth::Healthy),
                    seen_reporting(gave_up.id, at, ReportedHealth::Healthy),
                ],
                &[],
            )
            .await
            .unwrap();
        assert_eq!(
            checkins(Arc::clone(&store)).await,
            (Some(awaiting), Some(Checkin::GaveUp))
        );
    }
    // A heartbeat after them is the check-in.
    store
        .apply_liveness(
            &[],
            &[
                seen_reporting(waiting.id, t20, ReportedHealth::Healthy),
                seen_reporting(gave_up.id, t20, ReportedHealth::Healthy),
            ],
            &[],
        )
        .await
        .unwrap();
    assert_eq!(checkins(Arc::clone(&store)).await, (None, None));
    assert!(
        store
            .checkins_due(now().plus_seconds(60), 10)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Two replicas write behind the same agents at the same time, each with the full writes
/// the other has as plain heartbeats, and in turns a transition (whose batch reads and locks
/// its rows first): every batch commits, none is chosen as a deadlock victim, and the
/// newest heartbeat wins each row. The agents are stored in the reverse of their id order,
/// so that a write taking the rows in the table's physical order would cross one taking
/// them in id order.
async fn two_replicas_crossing_liveness_batches_never_deadlock(
    first: Arc<dyn Store>,
    second: Arc<dyn Store>,
) {
    let (_, gw, board) = seed(&first).await;
    let mut agents: Vec<Agent> = (0..1_000)
        .map(|i| agent(gw, board, &format!("a{i}")))
        .collect();
    agents.sort_by_key(|a| std::cmp::Reverse(a.id));
    for a in &agents {
        first
            .insert_agent(a, None, None, &event(Some(a.id)))
            .await
            .unwrap();
    }
    let ids: Vec<AgentId> = agents.iter().map(|a| a.id).collect();
    // The agent whose transition the round records (by replica `turn + 1`).
    let turn = |round: i64| if round % 2 == 1 { 0 } else { 1 };
    // Replica 1 writes the odd agents in full and the even ones plainly; replica 2 the
    // other way round, one millisecond later. In odd rounds replica 1 records a transition
    // of agent 0, in even rounds replica 2 one of agent 1: each of an agent it writes
    // plainly and the other in full.
    let batch = |replica: usize, round: i64, from: AgentStatus, to: AgentStatus| {
        let at = now()
            .plus_seconds(round)
            .plus_millis(i64::try_from(replica).unwrap());
        let health = if replica == 1 {
            ReportedHealth::Healthy
        } else {
            ReportedHealth::Degraded
        };
        let mut writes = Vec::new();
        let mut seen = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            if replica % 2 == i % 2 {
                writes.push(seen_write(*id, at, health));
            } else {
                seen.push(seen_reporting(*id, at, health));
            }
        }
        let events = if replica == turn(round) + 1 {
            vec![transition(ids[turn(round)], from, to)]
        } else {
            Vec::new()
        };
        (writes, seen, events)
    };
    let mut status = [AgentStatus::Provisioning; 2];
    for round in 1..=8 {
        let from = status[turn(round)];
        let to = if from == AgentStatus::Healthy {
            AgentStatus::Degraded
        } else {
            AgentStatus::Healthy
        };
        let (w1, s1, e1) = batch(1, round, from, to);
        let (w2, s2, e2) = batch(2, round, from, to);
        let (one, two) = tokio::join!(
            first.apply_liveness(&w1, &s1, &e1),
            second.apply_liveness(&w2, &s2, &e2),
        );
        let one = one.unwrap_or_else(|e| panic!("replica 1, round {round}: {e}"));
        let two = two.unwrap_or_else(|e| panic!("replica 2, round {round}: {e}"));
        assert_eq!(one.recorded.len() + two.recorded.len(), 1, "round {round}");
        status[turn(round)] = to;
    }
    let newest = now().plus_seconds(8).plus_millis(2);
    for stored in first.all_agents().await.unwrap() {
        assert_eq!(stored.agent.last_seen_at, Some(newest));
        assert_eq!(stored.agent.reported_health, Some(ReportedHealth::Degraded));
    }
}

/// A fold of more agents than one of its transactions takes (2,000) fails in its second
/// transaction (a trigger refuses one agent's row): the first transaction's rows stay
/// written, the log keeps every row, so nothing is lost; batches written before the next
/// fold are newer, and that fold completes without moving any row back.
#[tokio::test]
async fn on_sqlite_a_fold_that_fails_part_way_keeps_its_log_and_the_next_one_completes_it() {
    use sqlx::Connection as _;

    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("mc.db").display());
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&url, true).await.unwrap());
    let (_, gw, board) = seed(&store).await;
    let mut ids = Vec::new();
    for i in 0..2_500 {
        let a = agent(gw, board, &format!("a{i}"));
        store
            .insert_agent(&a, None, None, &event(None))
            .await
            .unwrap();
        ids.push(a.id);
    }
    ids.sort();
    let (t1, t2, t3) = (
        now().plus_seconds(1),
        now().plus_seconds(2),
        now().plus_seconds(3),
    );
    let plain = |at: Timestamp| -> Vec<SeenWrite> {
        ids.iter()
            .map(|id| seen_reporting(*id, at, ReportedHealth::Healthy))
            .collect()
    };
    store.apply_liveness(&[], &plain(t1), &[]).await.unwrap();
    // The last agent (by id, so in the second transaction) heartbeated once more, at a
    // time its row refuses.
    let refused = now().plus_millis(1_500);
    let last = *ids.last().unwrap();
    store
        .apply_liveness(
            &[],
            &[seen_reporting(last, refused, ReportedHealth::Healthy)],
            &[],
        )
        .await
        .unwrap();
    let mut admin = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query(&format!(
        "CREATE TRIGGER refuse_one BEFORE UPDATE OF last_seen_at ON agent_liveness
         WHEN NEW.last_seen_at = {} BEGIN SELECT RAISE(ABORT, 'refused'); END",
        refused.as_millis()
    ))
    .execute(&mut admin)
    .await
    .unwrap();
    let count_log = "SELECT count(*) FROM agent_liveness_log";

    assert!(store.compact_liveness_log().await.is_err());
    let log_rows: i64 = sqlx::query_scalar(count_log)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert_eq!(log_rows, 2, "the log is kept");
    let rows = store.stored_agents(&ids).await.unwrap();
    let row_of = |rows: &[mc_store::StoredAgent], id: AgentId| {
        rows.iter()
            .find(|s| s.agent.id == id)
            .unwrap()
            .agent
            .last_seen_at
    };
    assert_eq!(row_of(&rows, ids[0]), Some(t1), "first transaction written");
    assert_eq!(row_of(&rows, last), None, "second transaction undone");
    for stored in store.all_agents().await.unwrap() {
        let expected = if stored.agent.id == last { refused } else { t1 };
        assert_eq!(stored.agent.last_seen_at, Some(expected));
    }

    // Newer heartbeats meanwhile: plain ones of everyone, a full write of the first agent.
    store
        .apply_liveness(
            &[seen_write(ids[0], t3, ReportedHealth::Degraded)],
            &plain(t2)[1..],
            &[],
        )
        .await
        .unwrap();
    sqlx::query("DROP TRIGGER refuse_one")
        .execute(&mut admin)
        .await
        .unwrap();
    let folded = store.compact_liveness_log().await.unwrap();
    assert_eq!((folded.batches, folded.agents), (3, 2_500));
    let log_rows: i64 = sqlx::query_scalar(count_log)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert_eq!(log_rows, 0);
    let rows = store.stored_agents(&ids).await.unwrap();
    assert_eq!(row_of(&rows, ids[0]), Some(t3), "never moved back");
    for id in &ids[1..] {
        assert_eq!(row_of(&rows, *id), Some(t2));
    }
}
