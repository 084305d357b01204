//! weir's controller (Flagger-compatible canary analysis over the proxy's own
//! measurements, the gRPC control API, webhooks and alerts) and the `weir` command line.
#![forbid(unsafe_code)]

pub mod alerts;
pub mod api;
pub mod auth;
pub mod checks;
pub mod cli;
pub mod clock;
pub mod config;
pub mod controller;
pub mod fleet;
pub mod guard;
pub mod hooks;
pub mod http_client;
pub mod link;
pub mod machine;
pub mod measurements;
pub mod metrics;
pub mod notify;
pub mod prometheus;
pub mod replica;
pub mod routes;
pub mod spec;
pub mod store;
pub mod traffic;
