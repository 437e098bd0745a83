//! Test support (feature `test-support`): a protocol-faithful fake gateway for fast tests and
//! a launcher for real OpenClaw gateways installed by `scripts/openclaw-gateway`.

pub mod fake;
pub mod real;

pub use fake::{FakeGateway, FakeGatewayOptions, Garbage, RecordedCall};
pub use real::{RealGateway, RealGatewayError};
