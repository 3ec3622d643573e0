//! Login rate limits per source IP and per user name, so that guessing
//! passwords is slow from one place and against one account.

use std::net::IpAddr;
use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

pub struct LoginLimiter {
    by_ip: DefaultKeyedRateLimiter<IpAddr>,
    by_user: DefaultKeyedRateLimiter<String>,
}

impl std::fmt::Debug for LoginLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LoginLimiter(..)")
    }
}

impl LoginLimiter {
    /// `per_ip` and `per_user` attempts per minute (each also the burst).
    pub fn new(per_ip: u32, per_user: u32) -> Self {
        let quota = |n: u32| Quota::per_minute(NonZeroU32::new(n.max(1)).expect("at least 1"));
        LoginLimiter {
            by_ip: RateLimiter::keyed(quota(per_ip)),
            by_user: RateLimiter::keyed(quota(per_user)),
        }
    }

    /// `Err(seconds to wait)` when either limit is spent.
    pub fn check(&self, ip: Option<IpAddr>, username: &str) -> Result<(), u64> {
        let clock = DefaultClock::default();
        let wait = |not_until: governor::NotUntil<_>| {
            not_until.wait_time_from(clock.now()).as_secs().max(1)
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
}
