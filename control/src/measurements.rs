//! A rollout's measurement windows: checkpoints of the primary's and the canary's
//! cumulative measurements taken at ticks, windows as differences from them, and the
//! counters the fast-fail guard polls between ticks. Windows never reach back before the
//! canary's current traffic began: a restart of the measurements drops every checkpoint.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;
use weir_proxy::{VersionHandle, VersionSnapshot, Window};

use crate::checks::Counts;

/// Cumulative measurements of both versions at one instant.
struct Checkpoint {
    at: Instant,
    primary: VersionSnapshot,
    canary: VersionSnapshot,
    /// The canary's shadow traffic, when the analysis mirrors.
    shadow: Option<VersionSnapshot>,
}

impl Checkpoint {
    /// The canary's snapshot: its shadow traffic in mirrored phases, else its users'.
    fn canary(&self, mirrored: bool) -> Option<&VersionSnapshot> {
        if mirrored {
            self.shadow.as_ref()
        } else {
            Some(&self.canary)
        }
    }
}

/// Counters polled by the guard: (responses, 5xx) of each version.
struct GuardMark {
    at: Instant,
    primary: (u64, u64),
    canary: (u64, u64),
}

/// The windows of one rollout.
pub struct Measurements {
    primary: VersionHandle,
    canary: VersionHandle,
    checkpoints: VecDeque<Checkpoint>,
    guard: VecDeque<GuardMark>,
}

/// The canary's and the primary's measurements over one window.
pub struct Windows {
    pub canary: Window,
    pub primary: Window,
}

impl Measurements {
    /// Windows over the primary's and the canary's measurements.
    pub fn new(primary: VersionHandle, canary: VersionHandle) -> Measurements {
        Measurements {
            primary,
            canary,
            checkpoints: VecDeque::new(),
            guard: VecDeque::new(),
        }
    }

    /// Takes a checkpoint; ones older than `keep` are dropped (but the last before it is
    /// kept, so a window of that length always has a start).
    pub fn checkpoint(&mut self, shadow: bool, keep: Duration) {
        let at = Instant::now();
        self.checkpoints.push_back(Checkpoint {
            at,
            primary: self.primary.snapshot(false),
            canary: self.canary.snapshot(false),
            shadow: shadow.then(|| self.canary.snapshot(true)),
        });
        let horizon = at.checked_sub(keep).unwrap_or(at);
        while self.checkpoints.len() > 1 && self.checkpoints.get(1).is_some_and(|c| c.at <= horizon)
        {
            self.checkpoints.pop_front();
        }
    }

    /// Drops every measurement from before now: the canary's current traffic starts here.
    pub fn restart(&mut self, shadow: bool, keep: Duration) {
        self.checkpoints.clear();
        self.guard.clear();
        self.checkpoint(shadow, keep);
    }

    /// The last `length` of traffic (from the latest checkpoint at least that old, or the
    /// oldest there is), up to now.
    pub fn window(&self, length: Duration, mirrored: bool) -> Windows {
        let now = Instant::now();
        let start = now.checked_sub(length).unwrap_or(now);
        let from = self
            .checkpoints
            .iter()
            .rev()
            .find(|c| c.at <= start)
            .or_else(|| self.checkpoints.front());
        self.since(from, mirrored)
    }

    /// Everything since the measurements (re)started.
    pub fn since_start(&self, mirrored: bool) -> Windows {
        self.since(self.checkpoints.front(), mirrored)
    }

    fn since(&self, from: Option<&Checkpoint>, mirrored: bool) -> Windows {
        let canary_now = self.canary.snapshot(mirrored);
        let primary_now = self.primary.snapshot(false);
        match from {
            Some(c) => Windows {
                canary: c
                    .canary(mirrored)
                    .map(|then| canary_now.since(then))
                    .unwrap_or_else(|| canary_now.total()),
                primary: primary_now.since(&c.primary),
            },
            None => Windows {
                canary: canary_now.total(),
                primary: primary_now.total(),
            },
        }
    }

    /// Records the guard's counters now and returns the (canary, primary) counts over the
    /// last `window`.
    pub fn guard_counts(&mut self, mirrored: bool, window: Duration) -> (Counts, Counts) {
        let now = Instant::now();
        let primary = self.primary.counts(false);
        let canary = self.canary.counts(mirrored);
        self.guard.push_back(GuardMark {
            at: now,
            primary,
            canary,
        });
        let horizon = now.checked_sub(window).unwrap_or(now);
        while self.guard.len() > 1 && self.guard.front().is_some_and(|g| g.at < horizon) {
            self.guard.pop_front();
        }
        let first = self.guard.front().expect("pushed above");
        let diff = |now: (u64, u64), then: (u64, u64)| Counts {
            requests: now.0.saturating_sub(then.0),
            errors: now.1.saturating_sub(then.1),
        };
        (diff(canary, first.canary), diff(primary, first.primary))
    }

    /// Forgets the guard's history (the guard is off).
    pub fn reset_guard(&mut self) {
        self.guard.clear();
    }
}
