//! Login rate limits per source IP and per user name, so that guessing
//! passwords is slow from one place and against one account.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

type Keyed<K, C> =
    RateLimiter<K, DefaultKeyedStateStore<K>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// How often [`LoginLimiter::prune`] should run: each key is forgotten once
/// its allowance is whole again (within a minute), so without pruning every
/// address and user name ever tried would stay in memory.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(60);

pub struct LoginLimiter<C: Clock = DefaultClock> {
    clock: C,
    by_ip: Keyed<IpAddr, C>,
    by_user: Keyed<String, C>,
}

impl<C: Clock> std::fmt::Debug for LoginLimiter<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LoginLimiter(..)")
    }
}

impl LoginLimiter {
    /// `per_ip` and `per_user` attempts per minute (each also the burst).
    pub fn new(per_ip: u32, per_user: u32) -> Self {
        Self::with_clock(per_ip, per_user, DefaultClock::default())
    }
}

impl<C: Clock + Clone> LoginLimiter<C> {
    pub fn with_clock(per_ip: u32, per_user: u32, clock: C) -> Self {
        let quota = |n: u32| Quota::per_minute(NonZeroU32::new(n.max(1)).expect("at least 1"));
        LoginLimiter {
            by_ip: RateLimiter::new(
                quota(per_ip),
                DefaultKeyedStateStore::default(),
                clock.clone(),
            ),
            by_user: RateLimiter::new(
                quota(per_user),
                DefaultKeyedStateStore::default(),
                clock.clone(),
            ),
            clock,
        }
    }

    /// `Err(seconds to wait)` when either limit is spent.
    pub fn check(&self, ip: Option<IpAddr>, username: &str) -> Result<(), u64> {
        let now = self.clock.now();
        let wait = |not_until: governor::NotUntil<C::Instant>| {
            not_until.wait_time_from(now).as_secs().max(1)
        };
        // The user limit first: an attempt it refuses does not also spend
        // the address's allowance.
        self.by_user
            .check_key(&username.to_lowercase())
            .map_err(wait)?;
        if let Some(ip) = ip {
            self.by_ip.check_key(&ip).map_err(wait)?;
        }
        Ok(())
    }

    /// Forgets the addresses and user names whose allowance is whole again
    /// (they would be admitted as if never seen).
    pub fn prune(&self) {
        self.by_ip.retain_recent();
        self.by_ip.shrink_to_fit();
        self.by_user.retain_recent();
        self.by_user.shrink_to_fit();
    }

    /// Addresses and user names remembered.
    pub fn len(&self) -> usize {
        self.by_ip.len() + self.by_user.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_apply_per_user_and_per_ip() {
        let l = LoginLimiter::new(5, 3);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            assert!(l.check(Some(ip), "alice").is_ok());
        }
        assert!(
            l.check(Some(ip), "ALICE").is_err(),
            "user names are case-insensitive"
        );
        assert!(l.check(Some(ip), "bob").is_ok());
        assert!(l.check(Some(ip), "carol").is_ok());
        let wait = l.check(Some(ip), "dave").unwrap_err();
        assert!(wait >= 1, "the IP's five attempts are spent");
        assert!(l.check(Some("192.0.2.2".parse().unwrap()), "dave").is_ok());
    }

    #[test]
    fn pruning_forgets_keys_once_their_allowance_is_whole() {
        let clock = governor::clock::FakeRelativeClock::default();
        // One attempt comes back after 12 s per address and 20 s per user;
        // a key is forgotten one such interval after its allowance is whole.
        let l = LoginLimiter::with_clock(5, 3, clock.clone());
        for i in 0..100u8 {
            let ip = IpAddr::from([198, 51, 100, i]);
            assert!(l.check(Some(ip), &format!("user-{i}")).is_ok());
        }
        assert!(
            l.check(Some("192.0.2.9".parse().unwrap()), "user-0")
                .is_ok()
        );
        assert_eq!(l.len(), 201);

        clock.advance(Duration::from_secs(10));
        l.prune();
        assert_eq!(l.len(), 201, "nothing is whole yet");

        clock.advance(Duration::from_secs(20));
        l.prune();
        assert_eq!(l.len(), 100, "the addresses went at 24 s, the users stay");

        clock.advance(Duration::from_secs(15));
        l.prune();
        assert_eq!(l.len(), 1, "user-0 tried twice: it stays until 60 s");

        // A spent limit is not forgotten while it is spent.
        let mallory = Some("192.0.2.10".parse().unwrap());
        for _ in 0..3 {
            assert!(l.check(mallory, "mallory").is_ok());
        }
        assert!(l.check(mallory, "mallory").is_err());
        clock.advance(Duration::from_secs(20));
        l.prune();
        assert_eq!(l.len(), 2, "mallory and her address");

        clock.advance(Duration::from_secs(61));
        l.prune();
        assert!(l.is_empty());
        assert!(l.check(mallory, "mallory").is_ok());
    }
}
