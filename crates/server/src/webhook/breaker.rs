//! The circuit breaker of one endpoint: a pure state machine over instants.
//!
//! Closed counts consecutive receiver failures; at the threshold it opens for a
//! pause. After the pause one request may go as a probe (half-open): its success
//! closes the breaker, its failure opens it again for another pause.
//!
//! Invariant: at most one probe is in flight while half-open.

use std::time::{Duration, Instant};

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    /// Requests flow; consecutive failures are counted.
    Closed {
        /// Receiver failures in a row.
        failures: u32,
    },
    /// No requests until the instant.
    Open {
        /// When a probe may go.
        until: Instant,
    },
    /// One probe may go (or is in flight).
    HalfOpen {
        /// Whether the probe is in flight.
        probing: bool,
    },
}

impl CircuitState {
    /// The metrics value: 0 closed, 1 half-open, 2 open.
    pub fn gauge(&self) -> i64 {
        match self {
            CircuitState::Closed { .. } => 0,
            CircuitState::HalfOpen { .. } => 1,
            CircuitState::Open { .. } => 2,
        }
    }

    /// The name shown to users: `closed`, `half_open` or `open`.
    pub fn name(&self) -> &'static str {
        match self {
            CircuitState::Closed { .. } => "closed",
            CircuitState::HalfOpen { .. } => "half_open",
            CircuitState::Open { .. } => "open",
        }
    }
}

/// Whether a request may go now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Send it.
    Go,
    /// Send it as the probe; report its result with [`Breaker::record`].
    Probe,
    /// Wait until this instant (open) or until the probe's result is recorded.
    Wait(Option<Instant>),
}

/// A circuit breaker.
#[derive(Debug, Clone)]
pub struct Breaker {
    state: CircuitState,
    failures_threshold: u32,
    pause: Duration,
}

impl Breaker {
    /// A closed breaker that opens after `failures_threshold` consecutive failures
    /// (at least 1) for `pause`.
    pub fn new(failures_threshold: u32, pause: Duration) -> Breaker {
        Breaker {
            state: CircuitState::Closed { failures: 0 },
            failures_threshold: failures_threshold.max(1),
            pause,
        }
    }

    /// The current state, after moving an expired open state to half-open.
    pub fn state(&mut self, now: Instant) -> CircuitState {
        if let CircuitState::Open { until } = self.state
            && now >= until
        {
            self.state = CircuitState::HalfOpen { probing: false };
        }
        self.state
    }

    /// Asks to send a request at `now`.
    pub fn admit(&mut self, now: Instant) -> Admission {
        match self.state(now) {
            CircuitState::Closed { .. } => Admission::Go,
            CircuitState::Open { until } => Admission::Wait(Some(until)),
            CircuitState::HalfOpen { probing: true } => Admission::Wait(None),
            CircuitState::HalfOpen { probing: false } => {
                self.state = CircuitState::HalfOpen { probing: true };
                Admission::Probe
            }
        }
    }

    /// Records a request's result: `failure` when the receiver failed it.
    /// `probe` says whether it was admitted as the probe.
    pub fn record(&mut self, failure: bool, probe: bool, now: Instant) {
        match (self.state, failure) {
            (CircuitState::HalfOpen { .. }, true) if probe => self.open(now),
            (CircuitState::HalfOpen { .. }, false) if probe => {
                self.state = CircuitState::Closed { failures: 0 };
            }
            (CircuitState::Closed { failures }, true) => {
                let failures = failures + 1;
                if failures >= self.failures_threshold {
                    self.open(now);
                } else {
                    self.state = CircuitState::Closed { failures };
                }
            }
            (CircuitState::Closed { .. }, false) => self.state = CircuitState::Closed { failures: 0 },
            // Results of requests admitted before the breaker opened change nothing.
            _ => {}
        }
    }

    /// Gives up a probe that was never sent (its delivery was cancelled).
    pub fn abandon_probe(&mut self) {
        if self.state == (CircuitState::HalfOpen { probing: true }) {
            self.state = CircuitState::HalfOpen { probing: false };
        }
    }

    fn open(&mut self, now: Instant) {
        self.state = CircuitState::Open {
            until: now + self.pause,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_opens_after_the_threshold_and_closes_after_a_good_probe() {
        // Goal: walk the whole cycle closed -> open -> half-open -> closed with a fake clock.
        let start = Instant::now();
        let pause = Duration::from_secs(10);
        let mut breaker = Breaker::new(3, pause);
        for _ in 0..2 {
            assert_eq!(breaker.admit(start), Admission::Go);
            breaker.record(true, false, start);
        }
        assert_eq!(breaker.state(start), CircuitState::Closed { failures: 2 });
        breaker.record(true, false, start);
        assert_eq!(breaker.admit(start), Admission::Wait(Some(start + pause)));
        assert_eq!(breaker.state(start).gauge(), 2);
        let later = start + pause;
        assert_eq!(breaker.admit(later), Admission::Probe);
        assert_eq!(
            breaker.admit(later),
            Admission::Wait(None),
            "only one probe at a time"
        );
        assert_eq!(breaker.state(later).gauge(), 1);
        breaker.record(false, true, later);
        assert_eq!(breaker.state(later), CircuitState::Closed { failures: 0 });
        assert_eq!(breaker.admit(later), Admission::Go);
    }

    #[test]
    fn failed_probe_reopens_and_success_resets_the_count() {
        // Goal: a failed probe opens again for a full pause; a success in between resets the count.
        let start = Instant::now();
        let pause = Duration::from_millis(50);
        let mut breaker = Breaker::new(2, pause);
        breaker.record(true, false, start);
        breaker.record(false, false, start);
        breaker.record(true, false, start);
        assert_eq!(breaker.state(start), CircuitState::Closed { failures: 1 });
        breaker.record(true, false, start);
        let later = start + pause;
        assert_eq!(breaker.admit(later), Admission::Probe);
        breaker.record(true, true, later);
        assert_eq!(breaker.admit(later), Admission::Wait(Some(later + pause)));
        // A late result of a request sent while closed does not close an open breaker.
        breaker.record(false, false, later);
        assert_eq!(breaker.state(later).name(), "open");
        let probe_time = later + pause;
        assert_eq!(breaker.admit(probe_time), Admission::Probe);
        breaker.abandon_probe();
        assert_eq!(breaker.admit(probe_time), Admission::Probe);
    }
}
