//! weir's controller (Flagger-compatible canary analysis over the proxy's own
//! measurements, the gRPC control API, webhooks and alerts) and the `weir` command line.
#![forbid(unsafe_code)]
//!
//! Public: the command line (the binary's), and the pure rollout core the benchmarks
//! replay (`spec`, `machine`, `checks`, `guard`). Everything else is the crate's own.

pub(crate) mod alerts;
pub(crate) mod api;
pub(crate) mod auth;
pub(crate) mod canary_object;
pub mod checks;
pub mod cli;
pub(crate) mod clock;
pub(crate) mod config;
pub(crate) mod controller;
pub(crate) mod dashboard;
pub(crate) mod fleet;
pub mod guard;
pub(crate) mod hooks;
pub(crate) mod http_client;
pub(crate) mod link;
pub mod machine;
pub(crate) mod measurements;
pub(crate) mod metrics;
pub(crate) mod notify;
pub(crate) mod prometheus;
pub(crate) mod replica;
pub(crate) mod routes;
pub mod spec;
pub(crate) mod status;
pub(crate) mod store;
pub(crate) mod traffic;
pub(crate) mod xds;

#[cfg(test)]
mod fences;
