//! weir's controller (Flagger-compatible canary analysis over the proxy's own
//! measurements, the gRPC control API, webhooks and alerts) and the `weir` command line.
#![forbid(unsafe_code)]

pub mod alerts;
pub mod analysis;
pub mod api;
pub mod checks;
pub mod cli;
pub mod controller;
pub mod ctl;
pub mod demo;
pub mod hooks;
pub mod run;
pub mod spec;
pub mod store;
