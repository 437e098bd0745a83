//! `mission-control agent` and the heartbeat loop of `mc-client`, against the real server.
//!
//! The loop's timing (backoff, interval, Retry-After) is observed in-process through a
//! loopback front ([`helpers::Front`]) that answers scripted errors and then forwards to
//! the server; the command line is exercised by running the built binary.

mod cli;
mod heartbeat_loop;
mod helpers;
