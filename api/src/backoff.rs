//! Exponential backoff with jitter, as a validated value.

use std::time::Duration;

/// Why a backoff could not be built.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum BackoffError {
    #[error("the minimum backoff delay must be greater than zero")]
    ZeroMinimum,
    #[error("the minimum backoff delay is larger than the maximum")]
    MinimumAboveMaximum,
    #[error("backoff jitter must be a fraction between 0 and 1")]
    JitterOutOfRange,
}

/// Delays that double from `min` up to `max`, each shortened at random by up
/// to `jitter` (a fraction) so that many clients do not retry in lockstep.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    jitter: f64,
}

impl Backoff {
    /// Checks the parameters; `const` so that fixed policies are checked at
    /// compile time.
    pub const fn try_new(min: Duration, max: Duration, jitter: f64) -> Result<Self, BackoffError> {
        if min.is_zero() {
            return Err(BackoffError::ZeroMinimum);
        }
        if min.as_nanos() > max.as_nanos() {
            return Err(BackoffError::MinimumAboveMaximum);
        }
        if !(jitter >= 0.0 && jitter <= 1.0) {
            return Err(BackoffError::JitterOutOfRange);
        }
        Ok(Self { min, max, jitter })
    }

    /// The delay before retry number `retry` (counting from 0).
    pub fn delay(&self, retry: u32) -> Duration {
        let doubled = self.min.saturating_mul(2_u32.saturating_pow(retry));
        let capped = doubled.min(self.max);
        capped.mul_f64(1.0 - self.jitter * fastrand::f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn doubles_up_to_the_maximum_without_jitter() {
        let backoff = Backoff::try_new(100 * MS, 1000 * MS, 0.0).unwrap();
        let delays: Vec<_> = (0..6).map(|retry| backoff.delay(retry)).collect();
        assert_eq!(
            delays,
            [100 * MS, 200 * MS, 400 * MS, 800 * MS, 1000 * MS, 1000 * MS]
        );
    }

    #[test]
    fn huge_retry_counts_saturate_at_the_maximum() {
        let backoff = Backoff::try_new(MS, 5000 * MS, 0.0).unwrap();
        assert_eq!(backoff.delay(u32::MAX), 5000 * MS);
    }

    #[test]
    fn jitter_only_shortens_within_its_fraction() {
        let backoff = Backoff::try_new(1000 * MS, 1000 * MS, 0.25).unwrap();
        for _ in 0..200 {
            let delay = backoff.delay(3);
            assert!((750 * MS..=1000 * MS).contains(&delay), "{delay:?}");
        }
    }

    #[test]
    fn rejects_invalid_parameters() {
        assert_eq!(
            Backoff::try_new(Duration::ZERO, MS, 0.0),
            Err(BackoffError::ZeroMinimum)
        );
        assert_eq!(
            Backoff::try_new(2 * MS, MS, 0.0),
            Err(BackoffError::MinimumAboveMaximum)
        );
        assert_eq!(
            Backoff::try_new(MS, MS, 1.5),
            Err(BackoffError::JitterOutOfRange)
        );
        assert_eq!(
            Backoff::try_new(MS, MS, f64::NAN),
            Err(BackoffError::JitterOutOfRange)
        );
    }
}
