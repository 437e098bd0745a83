//! Services: the business operations behind the handlers. Handlers parse input into
//! domain values and call one of these; these enforce the rules and keep the store and
//! the in-memory registry in step.

pub mod agents;
pub mod boards;
pub mod enrollment;
pub mod gateways;
pub mod heartbeats;
pub mod history;
