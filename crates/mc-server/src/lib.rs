//! The Mission Control server: the `/api/v1` REST API, the live dashboard, authentication,
//! the liveness engine and the OpenAPI document, assembled by [`startup::Server`].

pub mod api;
pub mod auth;
pub mod config;
pub mod dashboard;
pub mod error;
pub mod extract;
pub mod liveness;
pub mod metrics;
pub mod middleware;
pub mod provision;
pub mod services;
pub mod startup;
pub mod state;
pub mod webhooks;
