//! HTTP integration tests: the wire contract of `docs/api-contract.md`, proven against the
//! real server bound to `127.0.0.1:0`, each test with its own temporary database.

mod agents;
mod boards_gateways;
mod browser;
mod creates;
mod dashboard;
mod enrollment;
mod gateway_cleanup;
mod gateway_fixtures;
mod heartbeat;
mod helpers;
mod lifecycle;
mod liveness;
mod metrics;
mod outage;
mod provision_events;
mod provisioning;
mod real_gateway_provisioning;
mod reprovision;
mod sse;
mod streams;
mod templates_sync;
mod webhooks;
mod wire;
