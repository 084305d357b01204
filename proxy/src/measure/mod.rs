//! Per-version measurements: status classes, upstream failures and latency, recorded once
//! per exchange when it ends, exported as Prometheus families and read by the controller
//! as snapshots and windows.

mod delta;
mod export;
mod families;
mod latency;
mod tally;
mod version;
mod window;

use std::sync::Arc;

use prometheus::IntGauge;

pub use delta::{DeltaCursor, DeltaError, MeasurementDelta};
pub use families::{counter_vec, gauge_vec, histogram_vec, register, Families, ENVOY_BUCKETS_MS};
pub(crate) use tally::Outcome;
pub use version::{envoy_cluster_name, VersionMetrics};
pub use window::{VersionSnapshot, Window};

/// Why a request that should have been mirrored was not (`weir_mirror_skipped_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MirrorSkip {
    /// The request body is larger than `maxBodyBytes`.
    BodyTooLarge,
    /// `maxInFlight` mirrors were already running.
    Saturated,
    /// The user's request never completed.
    Aborted,
}

impl MirrorSkip {
    pub(crate) const ALL: [MirrorSkip; 3] = [
        MirrorSkip::BodyTooLarge,
        MirrorSkip::Saturated,
        MirrorSkip::Aborted,
    ];

    pub(crate) const fn label(self) -> &'static str {
        match self {
            MirrorSkip::BodyTooLarge => "body_too_large",
            MirrorSkip::Saturated => "saturated",
            MirrorSkip::Aborted => "aborted",
        }
    }
}

/// How a shadow's answer compared with the user's (`weir_mirror_comparisons_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Comparison {
    Match,
    StatusMismatch,
    BodyMismatch,
}

impl Comparison {
    pub(crate) const ALL: [Comparison; 3] = [
        Comparison::Match,
        Comparison::StatusMismatch,
        Comparison::BodyMismatch,
    ];

    pub(crate) const fn label(self) -> &'static str {
        match self {
            Comparison::Match => "match",
            Comparison::StatusMismatch => "status_mismatch",
            Comparison::BodyMismatch => "body_mismatch",
        }
    }
}

/// The measurements of one version: its users' traffic and its shadow (mirrored) traffic.
/// It stays valid across reloads and weight changes while the version exists.
#[derive(Clone)]
pub struct VersionHandle {
    pub(crate) users: Arc<VersionMetrics>,
    pub(crate) shadow: Arc<VersionMetrics>,
    /// `weir_route_weight` of the version.
    pub(crate) weight: IntGauge,
}

impl VersionHandle {
    fn of(&self, mirrored: bool) -> &VersionMetrics {
        if mirrored {
            &self.shadow
        } else {
            &self.users
        }
    }

    /// Cumulative measurements of the users' (`mirrored: false`) or the shadow
    /// (`mirrored: true`) traffic.
    pub fn snapshot(&self, mirrored: bool) -> VersionSnapshot {
        self.of(mirrored).snapshot()
    }

    /// Cumulative (responses, 5xx responses), cheap enough to poll often.
    pub fn counts(&self, mirrored: bool) -> (u64, u64) {
        self.of(mirrored).counts()
    }
}
