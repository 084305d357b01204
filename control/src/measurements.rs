//! A rollout's measurement windows: checkpoints of the primary's and the canary's
//! cumulative measurements taken at ticks, windows as differences from them, and the
//! counters the fast-fail guard polls between ticks. Windows never reach back before the
//! canary's current traffic began: a restart of the measurements drops every checkpoint.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;
use weir_proxy::{VersionHandle, VersionSnapshot, Window};

use crate::checks::Counts;
use crate::guard::Guard;
use crate::spec::FastFail;

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

/// The windows of one rollout.
pub struct Measurements {
    primary: VersionHandle,
    /// None until the canary version exists (a primary-only service before a rollout).
    canary: Option<VersionHandle>,
    checkpoints: VecDeque<Checkpoint>,
    /// The fast-fail guard of the current run (its start, Unix ms), and whether it last
    /// looked at the canary's shadow traffic.
    guard: Option<(Option<u64>, bool, Guard)>,
}

/// The canary's and the primary's measurements over one window.
pub struct Windows {
    pub canary: Window,
    pub primary: Window,
}

impl Measurements {
    /// Windows over the primary's and the canary's measurements.
    pub fn new(primary: VersionHandle, canary: Option<VersionHandle>) -> Measurements {
        Measurements {
            primary,
            canary,
            checkpoints: VecDeque::new(),
            guard: None,
        }
    }

    /// The canary version came to exist.
    pub fn attach_canary(&mut self, canary: Option<VersionHandle>) {
        if self.canary.is_none() {
            self.canary = canary;
        }
    }

    fn canary_snapshot(&self, mirrored: bool) -> VersionSnapshot {
        match &self.canary {
            Some(c) => c.snapshot(mirrored),
            None => VersionSnapshot::empty("", ""),
        }
    }

    /// Takes a checkpoint; ones older than `keep` are dropped (but the last before it is
    /// kept, so a window of that length always has a start).
    pub fn checkpoint(&mut self, shadow: bool, keep: Duration) {
        let at = Instant::now();
        self.checkpoints.push_back(Checkpoint {
            at,
            primary: self.primary.snapshot(false),
            canary: self.canary_snapshot(false),
            shadow: shadow.then(|| self.canary_snapshot(true)),
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
        let canary_now = self.canary_snapshot(mirrored);
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

    /// One look of the fast-fail guard of run `run` (a new run starts a new guard): Some
    /// reason when the canary must be rolled back now.
    pub fn guard(
        &mut self,
        ff: &FastFail,
        run: Option<u64>,
        mirrored: bool,
        allowed: Option<f64>,
    ) -> Option<String> {
        let c = self.canary.as_ref().map_or((0, 0), |c| c.counts(mirrored));
        let p = self.primary.counts(false);
        let counts = |(requests, errors): (u64, u64)| Counts { requests, errors };
        let guard = match &mut self.guard {
            Some((r, m, g)) if *r == run => {
                if *m != mirrored {
                    // Other counters from here on: the next look starts a new batch.
                    *m = mirrored;
                    g.rebase();
                }
                g
            }
            _ => &mut self.guard.insert((run, mirrored, Guard::new(ff.alpha))).2,
        };
        let why = guard.look(counts(c), counts(p), allowed)?;
        (guard.canary_requests() >= ff.min_requests).then_some(why)
    }

    /// The guard's evidence so far in this run (0 before its first look).
    pub fn guard_evidence(&self) -> f64 {
        self.guard.as_ref().map_or(0.0, |(_, _, g)| g.evidence())
    }

    /// Forgets the guard (it is off, or the run is over).
    pub fn reset_guard(&mut self) {
        self.guard = None;
    }
}
