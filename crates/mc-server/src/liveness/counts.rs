//! How many agents the registry holds: overall, per board, per gateway and per board on a
//! gateway. The agent listing's `total` and the dashboard's per-board counts read them in
//! O(1) instead of counting rows in the database (hundreds of milliseconds per request at
//! 100,000 agents) or scanning every agent in memory. The registry keeps them up to date
//! as it adds, moves and removes agents, so they count exactly the agents it holds.

use std::collections::HashMap;
use std::hash::Hash;

use mc_domain::agent::Agent;
use mc_domain::ids::{BoardId, GatewayId};
use mc_store::AgentFilter;

/// Where an agent is counted: its board (none for a gateway's main agent) and gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Placement {
    board: Option<BoardId>,
    gateway: GatewayId,
}

impl Placement {
    /// Where `agent` is placed now.
    pub(super) fn of(agent: &Agent) -> Self {
        Self {
            board: agent.board_id,
            gateway: agent.gateway_id,
        }
    }
}

/// Agent counts by placement. Keys whose count falls to zero are dropped, so deleted
/// boards and gateways leave nothing behind.
#[derive(Debug, Default)]
pub(super) struct AgentCounts {
    all: u64,
    by_board: HashMap<BoardId, u64>,
    by_gateway: HashMap<GatewayId, u64>,
    /// A board's agents normally share its gateway, but a board can move to another
    /// gateway without its agents: a listing filtered by both needs its own count.
    by_board_and_gateway: HashMap<(BoardId, GatewayId), u64>,
}

fn increment<K: Eq + Hash>(counts: &mut HashMap<K, u64>, key: K) {
    *counts.entry(key).or_insert(0) += 1;
}

fn decrement<K: Eq + Hash>(counts: &mut HashMap<K, u64>, key: K) {
    if let Some(count) = counts.get_mut(&key) {
        *count -= 1;
        if *count == 0 {
            counts.remove(&key);
        }
    }
}

impl AgentCounts {
    /// Counts an agent placed at `placement`.
    pub(super) fn add(&mut self, placement: Placement) {
        self.all += 1;
        increment(&mut self.by_gateway, placement.gateway);
        if let Some(board) = placement.board {
            increment(&mut self.by_board, board);
            increment(&mut self.by_board_and_gateway, (board, placement.gateway));
        }
    }

    /// Stops counting an agent that was counted at `placement`.
    pub(super) fn remove(&mut self, placement: Placement) {
        self.all = self.all.saturating_sub(1);
        decrement(&mut self.by_gateway, placement.gateway);
        if let Some(board) = placement.board {
            decrement(&mut self.by_board, board);
            decrement(&mut self.by_board_and_gateway, (board, placement.gateway));
        }
    }

    /// Moves an agent's count from `from` to `to`.
    pub(super) fn moved(&mut self, from: Placement, to: Placement) {
        if from != to {
            self.remove(from);
            self.add(to);
        }
    }

    /// How many agents `filter` admits.
    pub(super) fn count(&self, filter: AgentFilter) -> u64 {
        let of = |count: Option<&u64>| count.copied().unwrap_or(0);
        match (filter.board_id, filter.gateway_id) {
            (None, None) => self.all,
            (Some(board), None) => of(self.by_board.get(&board)),
            (None, Some(gateway)) => of(self.by_gateway.get(&gateway)),
            (Some(board), Some(gateway)) => of(self.by_board_and_gateway.get(&(board, gateway))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::liveness::Registry;
    use mc_domain::agent::AgentName;
    use mc_domain::time::Timestamp;
    use mc_store::StoredAgent;

    fn agent_on(board: Option<BoardId>, gateway: GatewayId) -> Agent {
        let name = AgentName::parse("a", "name").unwrap();
        Agent::new(board, gateway, name, Timestamp::from_millis(0))
    }

    fn stored(agent: Agent) -> StoredAgent {
        StoredAgent {
            agent,
            token_digest: None,
            checkin: None,
        }
    }

    /// The registry's count under `filter`, checked against a scan of its agents.
    fn counted(
        registry: &Registry,
        board_id: Option<BoardId>,
        gateway_id: Option<GatewayId>,
    ) -> u64 {
        let scanned = registry
            .agents_where(|a| {
                board_id.is_none_or(|b| a.board_id == Some(b))
                    && gateway_id.is_none_or(|g| a.gateway_id == g)
            })
            .len();
        let count = registry.agent_count(filter(board_id, gateway_id));
        assert_eq!(
            count,
            u64::try_from(scanned).unwrap(),
            "{board_id:?} {gateway_id:?}"
        );
        count
    }

    fn filter(board_id: Option<BoardId>, gateway_id: Option<GatewayId>) -> AgentFilter {
        AgentFilter {
            board_id,
            gateway_id,
        }
    }

    #[test]
    fn counts_follow_adds_moves_and_removes_under_every_filter() {
        let (board, other_board) = (BoardId::new(), BoardId::new());
        let (gateway, other_gateway) = (GatewayId::new(), GatewayId::new());
        let worker = Placement {
            board: Some(board),
            gateway,
        };
        let main = Placement {
            board: None,
            gateway,
        };
        let mut counts = AgentCounts::default();
        counts.add(worker);
        counts.add(worker);
        counts.add(main);
        assert_eq!(counts.count(filter(None, None)), 3);
        assert_eq!(counts.count(filter(Some(board), None)), 2);
        assert_eq!(counts.count(filter(None, Some(gateway))), 3);
        assert_eq!(counts.count(filter(Some(board), Some(gateway))), 2);
        assert_eq!(counts.count(filter(Some(board), Some(other_gateway))), 0);

        let moved = Placement {
            board: Some(other_board),
            gateway: other_gateway,
        };
        counts.moved(worker, moved);
        assert_eq!(counts.count(filter(None, None)), 3);
        assert_eq!(counts.count(filter(Some(board), None)), 1);
        assert_eq!(counts.count(filter(Some(other_board), None)), 1);
        assert_eq!(counts.count(filter(None, Some(gateway))), 2);
        assert_eq!(counts.count(filter(None, Some(other_gateway))), 1);
        assert_eq!(
            counts.count(filter(Some(other_board), Some(other_gateway))),
            1
        );

        counts.remove(moved);
        counts.remove(worker);
        counts.remove(main);
        assert_eq!(counts.count(filter(None, None)), 0);
        assert!(counts.by_board.is_empty() && counts.by_gateway.is_empty());
        assert!(counts.by_board_and_gateway.is_empty());
    }

    #[test]
    fn the_registry_counts_each_agent_once_where_its_settings_place_it() {
        let (board, other_board) = (BoardId::new(), BoardId::new());
        let (gateway, other_gateway) = (GatewayId::new(), GatewayId::new());
        let registry = Registry::load(
            vec![stored(agent_on(Some(board), gateway))],
            Vec::new(),
            Timestamp::from_millis(0),
        );
        let worker = registry.insert(agent_on(Some(board), gateway), None);
        let main = registry.insert(agent_on(None, gateway), None);
        // The same agent again (from the feed and from a request at once): counted once.
        registry.insert(worker.profile().as_ref().clone(), None);
        assert_eq!(counted(&registry, None, None), 3);
        assert_eq!(counted(&registry, Some(board), None), 2);
        assert_eq!(counted(&registry, None, Some(gateway)), 3);

        let mut moved = worker.profile().as_ref().clone();
        moved.board_id = Some(other_board);
        moved.gateway_id = other_gateway;
        registry.update_profile(&worker, moved.clone());
        assert_eq!(counted(&registry, None, None), 3);
        assert_eq!(counted(&registry, Some(board), None), 1);
        assert_eq!(counted(&registry, Some(other_board), None), 1);
        assert_eq!(counted(&registry, None, Some(gateway)), 2);
        assert_eq!(
            counted(&registry, Some(other_board), Some(other_gateway)),
            1
        );
        assert_eq!(counted(&registry, Some(other_board), Some(gateway)), 0);

        // Moved back by another replica (read from the database).
        let mut back = moved.clone();
        back.board_id = Some(board);
        back.gateway_id = gateway;
        registry.upsert(stored(back));
        assert_eq!(counted(&registry, Some(board), None), 2);
        assert_eq!(counted(&registry, Some(other_board), None), 0);
        // A change of other settings keeps the count where it is.
        registry.follow_provision_error(worker.id(), "refused");
        assert_eq!(counted(&registry, Some(board), Some(gateway)), 2);

        registry.remove(worker.id());
        registry.remove(worker.id());
        assert_eq!(counted(&registry, None, None), 2);
        assert_eq!(counted(&registry, Some(board), None), 1);
        // Settings swapped into an agent already removed (a request still held it) do not
        // bring its count back.
        registry.update_profile(&worker, moved);
        assert_eq!(counted(&registry, None, None), 2);
        assert_eq!(counted(&registry, Some(other_board), None), 0);

        registry.remove(main.id());
        assert_eq!(counted(&registry, None, Some(gateway)), 1);
        assert_eq!(counted(&registry, Some(board), Some(gateway)), 1);
    }

    #[test]
    fn counts_stay_exact_while_agents_move_and_go_from_several_threads() {
        let boards = [BoardId::new(), BoardId::new(), BoardId::new()];
        let gateways = [GatewayId::new(), GatewayId::new()];
        let registry = Registry::default();
        let agents: Vec<_> = (0..64)
            .map(|i| registry.insert(agent_on(Some(boards[i % 3]), gateways[i % 2]), None))
            .collect();
        std::thread::scope(|scope| {
            for thread in 0..4_usize {
                let (registry, agents) = (&registry, &agents);
                scope.spawn(move || {
                    for round in 0..500_usize {
                        let agent = &agents[(thread * 7 + round * 13) % agents.len()];
                        let mut moved = agent.profile().as_ref().clone();
                        moved.board_id = Some(boards[(round + thread) % 3]);
                        moved.gateway_id = gateways[round % 2];
                        registry.update_profile(agent, moved);
                        if round % 50 == thread {
                            registry.remove(agent.id());
                        }
                    }
                });
            }
        });
        counted(&registry, None, None);
        for board in boards {
            counted(&registry, Some(board), None);
            for gateway in gateways {
                counted(&registry, None, Some(gateway));
                counted(&registry, Some(board), Some(gateway));
            }
        }
    }
}
