//! Retry policy: how a delivery attempt's result is classified, how long to wait
//! before the next attempt, and when to give up. Pure functions, no I/O or clock.
//!
//! Invariant: a computed delay lies in `[base / 2, base]` where
//! `base = min(backoff_max, backoff_initial * 2^(attempt - 1))` ("equal jitter"),
//! unless the receiver asked for a longer pause with `Retry-After`.

use std::time::Duration;

/// The longest `Retry-After` honoured; a longer one is cut to this.
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(3600);

/// What one attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptResult {
    /// The receiver answered with this HTTP status (and maybe a `Retry-After`).
    Status {
        /// The HTTP status code.
        status: u16,
        /// The parsed `Retry-After` header, if any.
        retry_after: Option<Duration>,
    },
    /// No answer within the request timeout.
    Timeout,
    /// The connection failed or broke before an answer.
    Connection,
    /// The target was refused before connecting (a denied address, a bad URL).
    Refused,
}

/// What to do after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Delivered (2xx).
    Success,
    /// Worth trying again (timeouts, connection failures, 5xx, 408, 429).
    Retry,
    /// Never worth trying again (other 3xx and 4xx, refused targets).
    Permanent,
}

impl AttemptResult {
    /// The verdict on this result.
    pub fn verdict(&self) -> Verdict {
        match *self {
            AttemptResult::Status { status, .. } => match status {
                200..=299 => Verdict::Success,
                408 | 429 => Verdict::Retry,
                500..=599 => Verdict::Retry,
                _ => Verdict::Permanent,
            },
            AttemptResult::Timeout | AttemptResult::Connection => Verdict::Retry,
            AttemptResult::Refused => Verdict::Permanent,
        }
    }

    /// The metrics class: `2xx`, `3xx`, `4xx`, `5xx`, `timeout` or `connection`.
    pub fn status_class(&self) -> &'static str {
        match *self {
            AttemptResult::Status { status, .. } => match status {
                200..=299 => "2xx",
                300..=399 => "3xx",
                400..=499 => "4xx",
                _ => "5xx",
            },
            AttemptResult::Timeout => "timeout",
            AttemptResult::Connection | AttemptResult::Refused => "connection",
        }
    }

    /// The HTTP status, or 0 when there was none.
    pub fn status_code(&self) -> u16 {
        match *self {
            AttemptResult::Status { status, .. } => status,
            _ => 0,
        }
    }

    /// Whether this result counts as a failure of the receiver for the circuit
    /// breaker: the same results that are retried.
    pub fn is_receiver_failure(&self) -> bool {
        self.verdict() == Verdict::Retry
    }
}

/// The bounds of retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per event before it is dead-lettered (at least 1).
    pub attempts_max: u32,
    /// Time since the first attempt after which a failing event is dead-lettered.
    pub age_max: Duration,
    /// The delay before the second attempt, before jitter.
    pub backoff_initial: Duration,
    /// The cap on the delay before jitter.
    pub backoff_max: Duration,
}

impl RetryPolicy {
    /// The delay before attempt `attempt + 1`, after `attempt` (from 1) failed
    /// with `result`. `random_fraction` in `[0, 1)` picks the jitter.
    pub fn delay(&self, attempt: u32, result: &AttemptResult, random_fraction: f64) -> Duration {
        if let AttemptResult::Status {
            status: 429 | 503,
            retry_after: Some(retry_after),
        } = *result
        {
            return retry_after.min(RETRY_AFTER_MAX);
        }
        let base = self.backoff_base(attempt);
        let half = base / 2;
        half + (base - half).mul_f64(random_fraction.clamp(0.0, 1.0))
    }

    /// The delay before jitter after `attempt` (from 1) failed.
    pub fn backoff_base(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(32);
        self.backoff_initial
            .saturating_mul(1u32 << doublings.min(31))
            .min(self.backoff_max)
    }

    /// Whether a retryable failure after `attempts` attempts, `elapsed` after the
    /// first, ends the event's delivery (it is dead-lettered).
    pub fn exhausted(&self, attempts: u32, elapsed: Duration) -> bool {
        attempts >= self.attempts_max || elapsed >= self.age_max
    }
}

/// Parses a `Retry-After` value: delay-seconds, or an HTTP date relative to
/// `now_unix_s`. `None` when malformed.
pub fn parse_retry_after(value: &str, now_unix_s: u64) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = parse_http_date(value)?;
    Some(Duration::from_secs(at.saturating_sub(now_unix_s)))
}

/// Parses an HTTP date (IMF-fixdate, and the obsolete RFC 850 and asctime forms
/// RFC 9110 asks recipients to accept) to Unix seconds, with `httpdate`.
fn parse_http_date(value: &str) -> Option<u64> {
    let at = httpdate::parse_http_date(value).ok()?;
    at.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|since| since.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            attempts_max: 5,
            age_max: Duration::from_secs(60),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_millis(1000),
        }
    }

    #[test]
    fn statuses_are_classified_as_the_issue_states() {
        // Goal: 2xx succeeds, 408/429/5xx and transport failures retry, other 3xx/4xx are permanent.
        let status = |status| AttemptResult::Status {
            status,
            retry_after: None,
        };
        assert_eq!(status(200).verdict(), Verdict::Success);
        assert_eq!(status(204).verdict(), Verdict::Success);
        assert_eq!(status(301).verdict(), Verdict::Permanent);
        assert_eq!(status(400).verdict(), Verdict::Permanent);
        assert_eq!(status(404).verdict(), Verdict::Permanent);
        assert_eq!(status(408).verdict(), Verdict::Retry);
        assert_eq!(status(429).verdict(), Verdict::Retry);
        assert_eq!(status(500).verdict(), Verdict::Retry);
        assert_eq!(status(503).verdict(), Verdict::Retry);
        assert_eq!(AttemptResult::Timeout.verdict(), Verdict::Retry);
        assert_eq!(AttemptResult::Connection.verdict(), Verdict::Retry);
        assert_eq!(AttemptResult::Refused.verdict(), Verdict::Permanent);
        assert_eq!(status(503).status_class(), "5xx");
        assert_eq!(AttemptResult::Timeout.status_class(), "timeout");
    }

    #[test]
    fn backoff_doubles_within_jitter_bounds_up_to_the_cap() {
        // Goal: every delay lies in [base/2, base] and base doubles up to the cap.
        let policy = policy();
        let failure = AttemptResult::Status {
            status: 500,
            retry_after: None,
        };
        for (attempt, base_ms) in [(1, 100), (2, 200), (3, 400), (4, 800), (5, 1000), (40, 1000)] {
            assert_eq!(policy.backoff_base(attempt), Duration::from_millis(base_ms));
            for fraction in [0.0, 0.3, 0.999] {
                let delay = policy.delay(attempt, &failure, fraction);
                assert!(delay >= Duration::from_millis(base_ms / 2), "{delay:?}");
                assert!(delay <= Duration::from_millis(base_ms), "{delay:?}");
            }
        }
    }

    #[test]
    fn retry_after_is_honoured_for_429_and_503_only() {
        // Goal: Retry-After replaces the backoff for 429 and 503, capped, and is ignored otherwise.
        let policy = policy();
        let with = |status, seconds| AttemptResult::Status {
            status,
            retry_after: Some(Duration::from_secs(seconds)),
        };
        assert_eq!(policy.delay(1, &with(429, 7), 0.5), Duration::from_secs(7));
        assert_eq!(policy.delay(1, &with(503, 2), 0.5), Duration::from_secs(2));
        assert_eq!(policy.delay(1, &with(503, 99_999), 0.5), RETRY_AFTER_MAX);
        assert!(policy.delay(1, &with(500, 7), 0.5) <= Duration::from_millis(100));
    }

    #[test]
    fn exhaustion_follows_attempts_or_age() {
        // Goal: the event gives up at the attempt limit or the age limit, whichever comes first.
        let policy = policy();
        assert!(!policy.exhausted(4, Duration::from_secs(1)));
        assert!(policy.exhausted(5, Duration::from_secs(1)));
        assert!(policy.exhausted(1, Duration::from_secs(60)));
    }

    #[test]
    fn retry_after_parses_seconds_and_http_dates() {
        // Goal: both forms of RFC 9110 Retry-After parse; garbage does not.
        assert_eq!(parse_retry_after("3", 0), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", 784_111_770),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", 784_111_800),
            Some(Duration::ZERO)
        );
        // The obsolete forms RFC 9110 section 5.6.7 asks recipients to accept.
        assert_eq!(
            parse_retry_after("Sunday, 06-Nov-94 08:49:37 GMT", 784_111_770),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            parse_retry_after("Sun Nov  6 08:49:37 1994", 784_111_770),
            Some(Duration::from_secs(7))
        );
        assert_eq!(parse_retry_after("soon", 0), None);
        assert_eq!(parse_retry_after("Sun, 32 Nov 1994 08:49:37 GMT", 0), None);
    }
}
