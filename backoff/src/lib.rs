//! Exponential backoff with jitter, as a validated value: the one backoff of
//! Phoenix (supervisor restarts, API reconnects).

#![forbid(unsafe_code)]

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    jitter: f64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BackoffError {
    #[error("initial delay must be greater than zero")]
    ZeroInitial,
    #[error("initial delay {initial:?} is larger than the maximum delay {max:?}")]
    InitialAboveMax { initial: Duration, max: Duration },
    #[error("jitter {0} must be between 0.0 and 1.0")]
    Jitter(f64),
}

impl Backoff {
    /// `const`, so fixed policies are checked at compile time.
    pub const fn try_new(
        initial: Duration,
        max: Duration,
        jitter: f64,
    ) -> Result<Self, BackoffError> {
        if initial.is_zero() {
            return Err(BackoffError::ZeroInitial);
        }
        if initial.as_nanos() > max.as_nanos() {
            return Err(BackoffError::InitialAboveMax { initial, max });
        }
        // Written so that NaN is refused too.
        if !(jitter >= 0.0 && jitter <= 1.0) {
            return Err(BackoffError::Jitter(jitter));
        }
        Ok(Backoff {
            initial,
            max,
            jitter,
        })
    }

    pub fn initial(&self) -> Duration {
        self.initial
    }

    pub fn max(&self) -> Duration {
        self.max
    }

    /// The un-jittered delay before retry number `attempt` (0-based):
    /// initial * 2^attempt, capped at max.
    pub fn base_delay(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.min(31));
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The delay with jitter applied: uniformly within ±jitter of the base,
    /// never above max.
    pub fn delay_with(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let base = self.base_delay(attempt);
        if self.jitter == 0.0 {
            return base;
        }
        let factor = 1.0 + rng.gen_range(-self.jitter..=self.jitter);
        base.mul_f64(factor).min(self.max)
    }
}

impl Backoff {
    /// [`Backoff::delay_with`] using the thread's random generator.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_with(attempt, &mut rand::thread_rng())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn rejects_invalid_parameters() {
        let s = Duration::from_secs(1);
        assert_eq!(
            Backoff::try_new(Duration::ZERO, s, 0.1),
            Err(BackoffError::ZeroInitial)
        );
        assert!(matches!(
            Backoff::try_new(s * 2, s, 0.1),
            Err(BackoffError::InitialAboveMax { .. })
        ));
        assert_eq!(Backoff::try_new(s, s, 1.5), Err(BackoffError::Jitter(1.5)));
    }

    #[test]
    fn doubles_until_capped() {
        let b = Backoff::try_new(Duration::from_millis(500), Duration::from_secs(5), 0.0).unwrap();
        let delays: Vec<_> = (0..6).map(|a| b.base_delay(a).as_millis()).collect();
        assert_eq!(delays, vec![500, 1000, 2000, 4000, 5000, 5000]);
        assert_eq!(b.base_delay(u32::MAX), Duration::from_secs(5));
    }

    #[test]
    fn jitter_stays_within_bounds_and_varies() {
        let b = Backoff::try_new(Duration::from_secs(1), Duration::from_secs(60), 0.25).unwrap();
        let mut rng = StdRng::seed_from_u64(7);
        let samples: Vec<_> = (0..200).map(|_| b.delay_with(2, &mut rng)).collect();
        for d in &samples {
            assert!(
                *d >= Duration::from_millis(3000) && *d <= Duration::from_millis(5000),
                "{d:?}"
            );
        }
        let distinct: std::collections::HashSet<_> = samples.iter().collect();
        assert!(distinct.len() > 100, "jitter should spread delays");
    }
}
