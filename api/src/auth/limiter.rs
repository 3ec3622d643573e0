//! Login throttling by failures, so that guessing passwords is slow without
//! letting strangers lock the real users out.
//!
//! Failures are counted under three keys: the source (an IPv4 address or an
//! IPv6 /64, the smallest block one attacker usually holds), the user name
//! from that source, and the user name from anywhere. Each key allows some
//! failures for free; after that every further failure doubles the wait
//! before the next attempt (1 s, 2 s, 4 s, ... up to a cap). An attempt
//! refused by the source's own wait, or by its wait for that user name,
//! counts against the source too, so a client that does not honour
//! `Retry-After` only waits longer.
//!
//! The per-user key is loose (many free failures, a short cap) and binds
//! only sources past their own allowance: those with more recent failures
//! than the per-source allowance, or than the per-(user, source) allowance
//! for that name. A source within its free failures, such as the real user
//! who mistyped a few times, is never refused because of what other sources
//! did, and a refusal by the account's delay alone is not counted against
//! the source it refused. A botnet spraying one account gets the
//! per-(user, source) allowance of guesses per address; past it, each
//! address waits for its own delay and for the account's.
//!
//! Replicas share their counts through the `login_failures` table
//! ([`LoginLimiter::sync`] before an attempt, [`LoginLimiter::share`] after
//! a failure), so that a limit hit on one replica holds on every one. Two
//! replicas failing the same key at the same moment may count one failure
//! instead of two; no more is lost.
//!
//! Time comes from tokio, so the tests run in virtual time.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use phoenix_backoff::Backoff;
use tokio::time::Instant;

/// How often [`LoginLimiter::prune`] should run.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(60);

/// A key with no failure for this long (and not waiting) is forgotten: its
/// failures no longer count, free or not.
pub const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);

/// The first delay once a key's free failures are spent.
const FIRST_DELAY: Duration = Duration::from_secs(1);

/// Cap of the per-user delay: it is shared by every source of an account
/// past its own allowance, so it stays short.
const USER_MAX_DELAY: Duration = Duration::from_secs(60);

/// Login attempts one source may have in flight at once: a burst of parallel
/// guesses would otherwise all pass the check before the first one fails.
const MAX_IN_FLIGHT_PER_SOURCE: u32 = 4;

/// Failures allowed before delays start, and the longest delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Failures of one user name from one source.
    pub per_user_source: u32,
    /// Failures from one source, whatever the user names.
    pub per_source: u32,
    /// Failures of one user name from all sources (loose); its delay binds
    /// only sources past `per_source` or `per_user_source`.
    pub per_user: u32,
    /// Longest wait for a source or a user name from one source; at least
    /// [`FIRST_DELAY`] and at most [`FORGET_AFTER`].
    pub max_delay: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            per_user_source: 5,
            per_source: 20,
            per_user: 100,
            max_delay: FORGET_AFTER,
        }
    }
}

/// Where an attempt comes from, as far as throttling is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    V4(Ipv4Addr),
    /// The upper 64 bits of an IPv6 address.
    V6Prefix(u64),
    /// No peer address (in-process tests only): all such attempts share one.
    Unknown,
}

impl Source {
    /// Its key in `login_failures`.
    fn key(&self) -> String {
        match self {
            Source::V4(ip) => format!("source:{ip}"),
            Source::V6Prefix(prefix) => format!("source:{prefix:016x}::/64"),
            Source::Unknown => "source:unknown".into(),
        }
    }

    fn of(ip: Option<IpAddr>) -> Source {
        match ip.map(crate::peer::source_block) {
            Some(IpAddr::V4(v4)) => Source::V4(v4),
            Some(IpAddr::V6(v6)) => Source::V6Prefix((u128::from(v6) >> 64) as u64),
            None => Source::Unknown,
        }
    }
}

/// Failures under one key.
#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    blocked_until: Instant,
}

impl Failures {
    fn new(now: Instant) -> Self {
        Failures {
            count: 0,
            last: now,
            blocked_until: now,
        }
    }

    fn wait(&self, now: Instant) -> Duration {
        self.blocked_until.saturating_duration_since(now)
    }

    /// One more failure: past the free ones, the next attempt waits
    /// `FIRST_DELAY * 2^(failures beyond the free ones - 1)`, capped.
    fn add(&mut self, now: Instant, free: u32, delays: &Backoff) {
        if self.forgotten(now) {
            *self = Failures::new(now);
        }
        self.count = self.count.saturating_add(1);
        self.last = now;
        if self.count > free {
            self.blocked_until = now + delays.base_delay(self.count - free - 1);
        }
    }

    /// More recent failures than the `free` ones: the key's own allowance is
    /// spent (whether or not its wait is over).
    fn past(&self, now: Instant, free: u32) -> bool {
        !self.forgotten(now) && self.count > free
    }

    /// Takes in what another replica counted under the same key.
    fn merge(&mut self, other: Failures, now: Instant) {
        if self.forgotten(now) {
            *self = other;
        } else {
            self.count = self.count.max(other.count);
            self.last = self.last.max(other.last);
            self.blocked_until = self.blocked_until.max(other.blocked_until);
        }
    }

    /// Nothing to remember: no failure, or none recent and no wait left.
    fn forgotten(&self, now: Instant) -> bool {
        self.count == 0
            || (self.wait(now).is_zero()
                && now.saturating_duration_since(self.last) >= FORGET_AFTER)
    }
}

#[derive(Debug)]
struct SourceState {
    failures: Failures,
    in_flight: u32,
}

#[derive(Debug, Default)]
struct Keys {
    sources: HashMap<Source, SourceState>,
    pairs: HashMap<(String, Source), Failures>,
    users: HashMap<String, Failures>,
}

pub struct LoginLimiter {
    policy: Policy,
    /// Delays of a source and of a user name from one source.
    delays: Backoff,
    /// Delays of a user name from all sources.
    user_delays: Backoff,
    keys: Mutex<Keys>,
}

impl std::fmt::Debug for LoginLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginLimiter")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// Why an attempt was not even tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub retry_after: Duration,
}

impl Refused {
    /// Whole seconds for `Retry-After`, rounded up, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        let secs = self.retry_after.as_secs();
        let rounded = if self.retry_after.subsec_nanos() > 0 {
            secs + 1
        } else {
            secs
        };
        rounded.max(1)
    }
}

/// One admitted login attempt; say how it ended with [`Attempt::failed`] or
/// [`Attempt::succeeded`]. Dropped without either (the database failed),
/// nothing is counted.
#[derive(Debug)]
pub struct Attempt<'a> {
    limiter: &'a LoginLimiter,
    source: Source,
    user: String,
}

impl LoginLimiter {
    pub fn new(policy: Policy) -> anyhow::Result<Self> {
        anyhow::ensure!(
            policy.per_user_source > 0 && policy.per_source > 0 && policy.per_user > 0,
            "every login failure allowance must be at least 1"
        );
        anyhow::ensure!(
            (FIRST_DELAY..=FORGET_AFTER).contains(&policy.max_delay),
            "the longest login delay must be between {FIRST_DELAY:?} and {FORGET_AFTER:?}"
        );
        Ok(LoginLimiter {
            policy,
            delays: Backoff::try_new(FIRST_DELAY, policy.max_delay, 0.0)?,
            user_delays: Backoff::try_new(FIRST_DELAY, policy.max_delay.min(USER_MAX_DELAY), 0.0)?,
            keys: Mutex::new(Keys::default()),
        })
    }

    fn keys(&self) -> MutexGuard<'_, Keys> {
        // Every update leaves the maps consistent, so a panic elsewhere while
        // holding the lock does not make them unusable.
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits an attempt, or refuses it with the time to wait. A refusal by
    /// the source's own wait or its wait for this user name counts as a
    /// failure of both; a refusal by the user name's delay alone counts as
    /// nothing.
    pub fn begin(&self, ip: Option<IpAddr>, username: &str) -> Result<Attempt<'_>, Refused> {
        let now = Instant::now();
        let source = Source::of(ip);
        let user = username.to_lowercase();
        let policy = self.policy;
        let mut keys = self.keys();
        let Keys {
            sources,
            pairs,
            users,
        } = &mut *keys;
        let source_state = sources.entry(source).or_insert_with(|| SourceState {
            failures: Failures::new(now),
            in_flight: 0,
        });
        let pair_key = (user.clone(), source);
        let pair = pairs.get(&pair_key);
        let own_wait = source_state
            .failures
            .wait(now)
            .max(pair.map_or(Duration::ZERO, |f| f.wait(now)));
        // Only a source past its own allowance waits for the account's delay.
        let past_allowance = source_state.failures.past(now, policy.per_source)
            || pair.is_some_and(|f| f.past(now, policy.per_user_source));
        let user_wait = match users.get(&user) {
            Some(failures) if past_allowance => failures.wait(now),
            _ => Duration::ZERO,
        };
        if !own_wait.is_zero() {
            source_state
                .failures
                .add(now, policy.per_source, &self.delays);
            let pair = pairs.entry(pair_key).or_insert_with(|| Failures::new(now));
            pair.add(now, policy.per_user_source, &self.delays);
            let retry_after = source_state
                .failures
                .wait(now)
                .max(pair.wait(now))
                .max(user_wait);
            return Err(Refused { retry_after });
        }
        if !user_wait.is_zero() {
            // The source honoured its own waits: the rest is the account's.
            return Err(Refused {
                retry_after: user_wait,
            });
        }
        if source_state.in_flight >= MAX_IN_FLIGHT_PER_SOURCE {
            return Err(Refused {
                retry_after: FIRST_DELAY,
            });
        }
        source_state.in_flight += 1;
        Ok(Attempt {
            limiter: self,
            source,
            user,
        })
    }

    /// Forgets the keys without recent failures.
    pub fn prune(&self) {
        let now = Instant::now();
        let mut keys = self.keys();
        keys.sources
            .retain(|_, s| s.in_flight > 0 || !s.failures.forgotten(now));
        keys.pairs.retain(|_, f| !f.forgotten(now));
        keys.users.retain(|_, f| !f.forgotten(now));
        keys.sources.shrink_to_fit();
        keys.pairs.shrink_to_fit();
        keys.users.shrink_to_fit();
    }

    /// Keys remembered (sources, user names per source, user names).
    pub fn len(&self) -> usize {
        let keys = self.keys();
        keys.sources.len() + keys.pairs.len() + keys.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Attempt<'_> {
    /// A wrong password, an unknown or a disabled user: counts under all
    /// three keys.
    pub fn failed(self) {
        let now = Instant::now();
        let limiter = self.limiter;
        let policy = limiter.policy;
        let mut keys = limiter.keys();
        if let Some(source) = keys.sources.get_mut(&self.source) {
            source.failures.add(now, policy.per_source, &limiter.delays);
        }
        keys.pairs
            .entry((self.user.clone(), self.source))
            .or_insert_with(|| Failures::new(now))
            .add(now, policy.per_user_source, &limiter.delays);
        keys.users
            .entry(self.user.clone())
            .or_insert_with(|| Failures::new(now))
            .add(now, policy.per_user, &limiter.user_delays);
    }

    /// The right password: this source's failures for this user name are
    /// forgotten. Its failures for other names stay, so a valid account does
    /// not launder guesses against another.
    pub fn succeeded(self) {
        self.limiter
            .keys()
            .pairs
            .remove(&(self.user.clone(), self.source));
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if let Some(source) = self.limiter.keys().sources.get_mut(&self.source) {
            source.in_flight = source.in_flight.saturating_sub(1);
        }
    }
}

/// An attempt's source and lowercased user name, and its three keys in
/// `login_failures`: the source's, the pair's and the user name's.
struct SharedKeys {
    source: Source,
    user: String,
    names: [String; 3],
}

impl SharedKeys {
    fn of(ip: Option<IpAddr>, username: &str) -> SharedKeys {
        let (source, user) = (Source::of(ip), username.to_lowercase());
        let source_key = source.key();
        let names = [
            source_key.clone(),
            format!("pair:{user}\n{source_key}"),
            format!("user:{user}"),
        ];
        SharedKeys {
            source,
            user,
            names,
        }
    }
}

fn seconds(s: f64) -> Duration {
    Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::ZERO)
}

impl LoginLimiter {
    /// Takes in the failures other replicas counted under this attempt's
    /// three keys, before [`LoginLimiter::begin`] judges it.
    pub async fn sync(
        &self,
        pool: &sqlx::PgPool,
        ip: Option<IpAddr>,
        username: &str,
    ) -> Result<(), sqlx::Error> {
        let SharedKeys {
            source,
            user,
            names,
        } = SharedKeys::of(ip, username);
        let rows: Vec<(String, i32, f64, f64)> = sqlx::query_as(
            "SELECT key, failures, \
                    extract(epoch FROM now() - last_failure)::float8, \
                    extract(epoch FROM blocked_until - now())::float8 \
             FROM login_failures WHERE key = ANY($1)",
        )
        .bind(&names[..])
        .fetch_all(pool)
        .await?;
        let now = Instant::now();
        let mut keys = self.keys();
        for (key, count, ago, left) in rows {
            let shared = Failures {
                count: count.max(0) as u32,
                last: now.checked_sub(seconds(ago)).unwrap_or(now),
                blocked_until: now + seconds(left),
            };
            if shared.forgotten(now) {
                continue;
            }
            let local = if key == names[0] {
                &mut keys
                    .sources
                    .entry(source)
                    .or_insert_with(|| SourceState {
                        failures: Failures::new(now),
                        in_flight: 0,
                    })
                    .failures
            } else if key == names[1] {
                keys.pairs
                    .entry((user.clone(), source))
                    .or_insert_with(|| Failures::new(now))
            } else {
                keys.users
                    .entry(user.clone())
                    .or_insert_with(|| Failures::new(now))
            };
            local.merge(shared, now);
        }
        Ok(())
    }

    /// Writes this replica's counts of the attempt's three keys, after a
    /// failure or a refusal that counted as one.
    pub async fn share(
        &self,
        pool: &sqlx::PgPool,
        ip: Option<IpAddr>,
        username: &str,
    ) -> Result<(), sqlx::Error> {
        let SharedKeys {
            source,
            user,
            names,
        } = SharedKeys::of(ip, username);
        let now = Instant::now();
        let (mut key, mut failures, mut ago, mut left) = (vec![], vec![], vec![], vec![]);
        {
            let keys = self.keys();
            let found = [
                keys.sources.get(&source).map(|s| s.failures),
                keys.pairs.get(&(user.clone(), source)).copied(),
                keys.users.get(&user).copied(),
            ];
            for (name, f) in names.iter().zip(found) {
                let Some(f) = f.filter(|f| !f.forgotten(now)) else {
                    continue;
                };
                key.push(name.clone());
                failures.push(i32::try_from(f.count).unwrap_or(i32::MAX));
                ago.push(now.saturating_duration_since(f.last).as_secs_f64());
                left.push(f.wait(now).as_secs_f64());
            }
        }
        if key.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO login_failures (key, failures, last_failure, blocked_until) \
             SELECT k, f, now() - make_interval(secs => a), now() + make_interval(secs => l) \
             FROM unnest($1::text[], $2::int[], $3::float8[], $4::float8[]) AS t(k, f, a, l) \
             ON CONFLICT (key) DO UPDATE SET \
               failures = CASE WHEN login_failures.blocked_until < now() \
                                AND login_failures.last_failure < now() - make_interval(secs => $5) \
                          THEN EXCLUDED.failures \
                          ELSE GREATEST(login_failures.failures, EXCLUDED.failures) END, \
               last_failure = GREATEST(login_failures.last_failure, EXCLUDED.last_failure), \
               blocked_until = GREATEST(login_failures.blocked_until, EXCLUDED.blocked_until)",
        )
        .bind(&key)
        .bind(&failures)
        .bind(&ago)
        .bind(&left)
        .bind(FORGET_AFTER.as_secs_f64())
        .execute(pool)
        .await?;
        Ok(())
    }

    /// The right password: this source's failures for the name are
    /// forgotten on every replica.
    pub async fn forget_shared(
        &self,
        pool: &sqlx::PgPool,
        ip: Option<IpAddr>,
        username: &str,
    ) -> Result<(), sqlx::Error> {
        let [_, pair, _] = SharedKeys::of(ip, username).names;
        sqlx::query("DELETE FROM login_failures WHERE key = $1")
            .bind(pair)
            .execute(pool)
            .await?;
        Ok(())
    }
}

/// Deletes the shared counts no replica needs any more (run by the
/// replica holding the singleton lock); how many.
pub async fn prune_shared(pool: &sqlx::PgPool) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM login_failures WHERE blocked_until < now() \
         AND last_failure < now() - make_interval(secs => $1)",
    )
    .bind(FORGET_AFTER.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    fn fail(l: &LoginLimiter, from: Option<IpAddr>, user: &str) {
        l.begin(from, user).expect("admitted").failed();
    }

    fn waits(l: &LoginLimiter, from: Option<IpAddr>, user: &str) -> u64 {
        l.begin(from, user).expect_err("refused").retry_after_secs()
    }

    #[tokio::test(start_paused = true)]
    async fn shared_counts_merge_into_a_replicas_own() {
        let now = Instant::now();
        let mut mine = Failures::new(now);
        mine.add(
            now,
            2,
            &Backoff::try_new(FIRST_DELAY, FORGET_AFTER, 0.0).unwrap(),
        );
        let theirs = Failures {
            count: 4,
            last: now,
            blocked_until: now + Duration::from_secs(4),
        };
        mine.merge(theirs, now);
        assert_eq!(mine.count, 4);
        assert_eq!(mine.wait(now), Duration::from_secs(4));
        // What this replica has forgotten is replaced, not added to.
        tokio::time::advance(FORGET_AFTER + Duration::from_secs(5)).await;
        let later = Instant::now();
        let fresh = Failures {
            count: 1,
            last: later,
            blocked_until: later,
        };
        mine.merge(fresh, later);
        assert_eq!(mine.count, 1);
        assert_eq!(
            SharedKeys::of(ip("192.0.2.7"), "Admin").names,
            [
                "source:192.0.2.7".to_string(),
                "pair:admin\nsource:192.0.2.7".into(),
                "user:admin".into()
            ]
        );
    }

    fn tight() -> LoginLimiter {
        LoginLimiter::new(Policy {
            per_user_source: 3,
            per_source: 10,
            per_user: 5,
            max_delay: Duration::from_secs(60),
        })
        .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_from_one_source_never_locks_out_a_clean_source() {
        let l = tight();
        let attacker = ip("192.0.2.66");
        for _ in 0..3 {
            fail(&l, attacker, "admin");
        }
        // The fourth failure starts the delays; each refused retry doubles them.
        fail(&l, attacker, "admin");
        assert_eq!(waits(&l, attacker, "admin"), 2);
        assert_eq!(waits(&l, attacker, "Admin"), 4, "user names ignore case");
        assert_eq!(waits(&l, attacker, "admin"), 8);
        // Keep flooding, far past the loose per-user allowance.
        for _ in 0..50 {
            tokio::time::advance(Duration::from_secs(61)).await;
            fail(&l, attacker, "admin");
        }
        assert_eq!(waits(&l, attacker, "admin"), 60, "capped");
        // The real admin at another address is admitted at once.
        let admin = l.begin(ip("198.51.100.7"), "admin").expect("admitted");
        admin.succeeded();
        // So is a clean address from another IPv6 /64 ...
        assert!(l.begin(ip("2001:db8:1::1"), "admin").is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_source_within_its_allowance_is_never_held_by_the_accounts_delay() {
        let l = tight();
        // The real admin mistypes once ...
        let home = ip("198.51.100.7");
        fail(&l, home, "admin");
        // ... while a botnet sprays the account far past its loose allowance,
        // one failure per address.
        for i in 0..40u8 {
            fail(&l, Some(IpAddr::from([203, 0, 113, i])), "admin");
        }
        // Each address of the botnet is still within its own allowance ...
        assert!(l.begin(ip("203.0.113.1"), "admin").is_ok());
        // ... and so is the admin, who may mistype up to it and still log in.
        fail(&l, home, "admin");
        fail(&l, home, "admin");
        l.begin(home, "admin")
            .expect("within its own allowance")
            .succeeded();
        fail(&l, home, "admin");
        assert!(
            l.begin(home, "admin").is_ok(),
            "the success forgot the pair"
        );
        // A clean address, of course.
        assert!(l.begin(ip("198.51.100.8"), "admin").is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn the_accounts_delay_holds_sources_past_their_allowance_without_counting_against_them() {
        let l = tight();
        // A botnet: each address fails once; the account waits 1 s.
        for i in 0..6u8 {
            fail(&l, Some(IpAddr::from([203, 0, 113, i])), "admin");
        }
        let sprayer = ip("192.0.2.7");
        for _ in 0..3 {
            fail(&l, sprayer, "admin");
        }
        // Its three free failures spent, not exceeded: not held (the account
        // now waits 8 s).
        assert!(l.begin(sprayer, "admin").is_ok());
        // Its fourth failure: it waits 1 s itself, the account 16 s, and now
        // the account's delay holds it too.
        fail(&l, sprayer, "admin");
        assert_eq!(waits(&l, sprayer, "admin"), 16);
        // That refusal counted (it did not wait its own second): 2 s now.
        tokio::time::advance(Duration::from_secs(2)).await;
        // Only the account's delay is left; refusals by it count for nothing.
        for _ in 0..5 {
            assert_eq!(waits(&l, sprayer, "admin"), 14);
        }
        // Its allowance for other names is untouched.
        assert!(l.begin(sprayer, "alice").is_ok());
        tokio::time::advance(Duration::from_secs(14)).await;
        // Admitted at once: the five refusals did not grow its own wait.
        fail(&l, sprayer, "admin");
        // Its own wait doubles on (6th failure: 4 s), the account's too (32 s).
        assert_eq!(waits(&l, sprayer, "admin"), 32);
        // The botnet's addresses, each within its allowance, are not held.
        assert!(l.begin(ip("203.0.113.2"), "admin").is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_source_spraying_user_names_is_slowed_down() {
        let l = tight();
        let sprayer = ip("192.0.2.9");
        for i in 0..10 {
            fail(&l, sprayer, &format!("user-{i}"));
        }
        fail(&l, sprayer, "user-10");
        assert_eq!(waits(&l, sprayer, "user-11"), 2);
        // All of its /64 is one source.
        let v6 = ip("2001:db8::1");
        for i in 0..11 {
            fail(&l, v6, &format!("user-{i}"));
        }
        assert_eq!(waits(&l, ip("2001:db8::ffff:1"), "someone"), 2);
        assert!(l.begin(ip("2001:db8:0:1::1"), "someone").is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn success_forgets_the_pair_and_time_forgets_everything() {
        let l = tight();
        let home = ip("198.51.100.1");
        for _ in 0..2 {
            fail(&l, home, "alice");
        }
        l.begin(home, "alice").unwrap().succeeded();
        for _ in 0..3 {
            fail(&l, home, "alice");
        }
        assert!(l.begin(home, "alice").is_ok(), "the count started over");

        fail(&l, home, "alice");
        assert!(l.begin(home, "alice").is_err());
        assert_eq!(l.len(), 3);
        tokio::time::advance(FORGET_AFTER - Duration::from_secs(1)).await;
        l.prune();
        assert_eq!(l.len(), 3, "failures stay recent for 15 minutes");
        tokio::time::advance(Duration::from_secs(1)).await;
        l.prune();
        assert!(l.is_empty());
        for _ in 0..3 {
            fail(&l, home, "alice");
        }
        assert!(l.begin(home, "alice").is_ok(), "free failures again");
    }

    #[tokio::test(start_paused = true)]
    async fn parallel_attempts_from_one_source_are_bounded() {
        let l = tight();
        let burst = ip("192.0.2.50");
        let admitted: Vec<_> = (0..MAX_IN_FLIGHT_PER_SOURCE)
            .map(|_| l.begin(burst, "admin").unwrap())
            .collect();
        assert_eq!(waits(&l, burst, "admin"), 1);
        assert!(l.begin(ip("192.0.2.51"), "admin").is_ok());
        drop(admitted);
        assert!(l.begin(burst, "admin").is_ok());
    }

    #[test]
    fn policies_out_of_range_are_refused() {
        let with = |f: fn(&mut Policy)| {
            let mut p = Policy::default();
            f(&mut p);
            LoginLimiter::new(p)
        };
        assert!(with(|_| {}).is_ok());
        assert!(with(|p| p.per_user = 0).is_err());
        assert!(with(|p| p.max_delay = Duration::from_millis(10)).is_err());
        assert!(with(|p| p.max_delay = Duration::from_secs(3600)).is_err());
    }
}
