//! Repeated refusals summed into one audit entry per window, so that a
//! flood of bad credentials cannot fill the audit log.
//!
//! Refusals are grouped by source (the client's IP address; an IPv6
//! address by its /64, which one host usually holds whole), action,
//! outcome and reason, and by actor when the actor was authenticated (a
//! user refused a role): an attacker chooses the unauthenticated actor and
//! the path freely, so those do not start new groups. The first refusal of
//! a group is written at once, so an attack is visible immediately; the
//! repeats within [`WINDOW`] are counted and written as one entry with
//! `count` when the window ends, or at shutdown. At most [`MAX_GROUPS`]
//! groups are followed at a time; refusals beyond them are summed per
//! action, outcome and reason, whatever their source.
//!
//! Time is tokio's, so the windows are tested in virtual time.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

use super::{Event, MAX_TEXT_CHARS, Outcome, bounded};

/// How long repeats of a refusal are summed before they are written.
pub const WINDOW: Duration = Duration::from_secs(60);

/// Most groups followed at once.
pub const MAX_GROUPS: usize = 1024;

/// Distinct actors and targets named in a summed entry, at most.
const SAMPLES: usize = 5;

/// How often ended windows are looked for.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// Where refusals come from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Source {
    Ip(IpAddr),
    Unknown,
    /// Any source once [`MAX_GROUPS`] are followed.
    Many,
}

impl Source {
    fn of(ip: Option<IpAddr>) -> Self {
        match ip {
            Some(ip) => Source::Ip(crate::peer::source_block(ip)),
            None => Source::Unknown,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Group {
    source: Source,
    /// Only for an authenticated actor.
    actor: Option<String>,
    action: String,
    outcome: Outcome,
    reason: Option<String>,
}

/// The repeats of one group within its window.
#[derive(Debug)]
struct Window {
    ends: Instant,
    /// The first repeat, the model of the summed entry.
    first: Option<Event>,
    repeats: u64,
    first_at: DateTime<Utc>,
    last_at: DateTime<Utc>,
    actors: BTreeSet<String>,
    targets: BTreeSet<String>,
}

impl Window {
    fn new(ends: Instant) -> Self {
        let now = Utc::now();
        Window {
            ends,
            first: None,
            repeats: 0,
            first_at: now,
            last_at: now,
            actors: BTreeSet::new(),
            targets: BTreeSet::new(),
        }
    }

    fn add(&mut self, event: Event) {
        let now = Utc::now();
        if self.repeats == 0 {
            self.first_at = now;
        }
        self.last_at = now;
        self.repeats += 1;
        for (samples, text) in [
            (&mut self.actors, &event.actor),
            (&mut self.targets, &event.target),
        ] {
            if samples.len() < SAMPLES {
                samples.insert(bounded(text, MAX_TEXT_CHARS).into_owned());
            }
        }
        if self.first.is_none() {
            self.first = Some(event);
        }
    }

    /// The summed entry, when there were repeats.
    fn summed(self) -> Option<Event> {
        let mut event = self.first?;
        let mut details = match event.details {
            serde_json::Value::Object(map) => map,
            _ => serde_json::Map::new(),
        };
        details.insert(
            "aggregated".into(),
            serde_json::json!({
                "window_secs": WINDOW.as_secs(),
                "first_at": self.first_at,
                "last_at": self.last_at,
                "actors": self.actors,
                "targets": self.targets,
            }),
        );
        event.details = serde_json::Value::Object(details);
        event.count = self.repeats;
        Some(event)
    }
}

/// The refusals being summed.
#[derive(Debug, Default)]
pub struct Refusals {
    windows: Mutex<HashMap<Group, Window>>,
}

impl Refusals {
    fn lock(&self) -> MutexGuard<'_, HashMap<Group, Window>> {
        // Every critical section leaves the map consistent; a panic in one
        // (there is none to expect) must not stop the audit log.
        self.windows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes a refusal: `Some` (to write now) when it opens a window,
    /// `None` when it is a repeat, counted until the window ends.
    pub fn admit(&self, event: Event) -> Option<Event> {
        let event = event.bounded();
        let mut group = Group {
            source: Source::of(event.source_ip),
            actor: event.authenticated.then(|| event.actor.clone()),
            action: event.action.clone(),
            outcome: event.outcome,
            reason: event.details["reason"].as_str().map(str::to_owned),
        };
        let mut windows = self.lock();
        if !windows.contains_key(&group) && windows.len() >= MAX_GROUPS {
            group.source = Source::Many;
            group.actor = None;
        }
        match windows.get_mut(&group) {
            Some(window) => {
                window.add(event);
                None
            }
            None => {
                windows.insert(group, Window::new(Instant::now() + WINDOW));
                Some(event)
            }
        }
    }

    /// Closes the windows that have ended; the summed entries to write.
    pub fn due(&self) -> Vec<Event> {
        let now = Instant::now();
        let mut windows = self.lock();
        let ended: Vec<Group> = windows
            .iter()
            .filter(|(_, w)| w.ends <= now)
            .map(|(g, _)| g.clone())
            .collect();
        ended
            .into_iter()
            .filter_map(|g| windows.remove(&g).and_then(Window::summed))
            .collect()
    }

    /// Closes every window, ended or not; the summed entries to write.
    pub fn drain(&self) -> Vec<Event> {
        self.lock()
            .drain()
            .filter_map(|(_, w)| w.summed())
            .collect()
    }
}

/// Writes the summed entries of ended windows with `write` until `stop`
/// resolves. What is still open then is left for [`Refusals::drain`].
pub async fn run<W: Future<Output = ()>>(
    refusals: &Refusals,
    stop: impl Future<Output = ()>,
    write: impl Fn(Event) -> W,
) {
    let mut ticker = tokio::time::interval(FLUSH_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            biased;
            () = &mut stop => return,
            _ = ticker.tick() => {}
        }
        for event in refusals.due() {
            write(event).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use std::sync::Arc;

    fn refused_token(ip: [u8; 4], path: &str) -> Event {
        Event::new("anonymous", "auth.token", path, Some(IpAddr::from(ip)))
            .outcome(Outcome::Denied)
            .details(serde_json::json!({ "reason": "token_invalid" }))
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_is_one_entry_at_once_and_one_summed_at_the_window_end() {
        let refusals = Refusals::default();
        let long_path = format!("/api/v1/agents/{}", "x".repeat(60_000));
        let first = refusals
            .admit(refused_token([192, 0, 2, 7], &long_path))
            .expect("the first refusal is written at once");
        assert!(first.target.chars().count() <= MAX_TEXT_CHARS);
        assert!(first.target.ends_with("…[60015 chars]"), "{}", first.target);
        for i in 0..999 {
            let path = format!("/api/v1/agents/{i}");
            assert!(
                refusals
                    .admit(refused_token([192, 0, 2, 7], &path))
                    .is_none()
            );
        }
        tokio::time::advance(WINDOW - Duration::from_secs(1)).await;
        assert!(refusals.due().is_empty(), "the window is still open");
        tokio::time::advance(Duration::from_secs(1)).await;
        let summed = refusals.due();
        assert_eq!(summed.len(), 1, "{summed:?}");
        assert_eq!(summed[0].count, 999);
        assert_eq!(summed[0].details["reason"], "token_invalid");
        let aggregated = &summed[0].details["aggregated"];
        assert_eq!(aggregated["targets"].as_array().unwrap().len(), SAMPLES);
        assert_eq!(aggregated["actors"], serde_json::json!(["anonymous"]));
        assert!(refusals.due().is_empty(), "written once");
        // The next refusal opens a new window, written at once again.
        assert!(refusals.admit(refused_token([192, 0, 2, 7], "/")).is_some());
        // No repeat, nothing to sum.
        tokio::time::advance(WINDOW).await;
        assert!(refusals.due().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn groups_are_per_source_action_and_reason_and_authenticated_actor() {
        let refusals = Refusals::default();
        assert!(
            refusals
                .admit(refused_token([192, 0, 2, 7], "/a"))
                .is_some()
        );
        assert!(
            refusals
                .admit(refused_token([192, 0, 2, 8], "/a"))
                .is_some(),
            "another source"
        );
        let expired = refused_token([192, 0, 2, 7], "/a")
            .details(serde_json::json!({ "reason": "token_expired" }));
        assert!(refusals.admit(expired).is_some(), "another reason");
        let role = |user: &str| {
            Event::new(
                format!("user:{user}"),
                "users.list",
                "-",
                Some(IpAddr::from([192, 0, 2, 7])),
            )
            .authenticated()
            .outcome(Outcome::Denied)
            .details(serde_json::json!({ "reason": "role" }))
        };
        assert!(refusals.admit(role("olivia")).is_some());
        assert!(
            refusals.admit(role("victor")).is_some(),
            "another authenticated actor"
        );
        assert!(refusals.admit(role("olivia")).is_none());
        // Unauthenticated actors are chosen by the request: one group.
        let agent = |id: u32| {
            Event::new(
                format!("agent:{id}"),
                "agent.auth",
                "/",
                Some(IpAddr::from([192, 0, 2, 7])),
            )
            .outcome(Outcome::Denied)
            .details(serde_json::json!({ "reason": "invalid_credential" }))
        };
        assert!(refusals.admit(agent(1)).is_some());
        assert!(refusals.admit(agent(2)).is_none());
        // One IPv6 host usually holds a whole /64.
        let v6 = |last: u16| {
            let ip = IpAddr::from([0x2001, 0xdb8, 0, 1, 0, 0, 0, last]);
            Event {
                source_ip: Some(ip),
                ..refused_token([0; 4], "/")
            }
        };
        assert!(refusals.admit(v6(1)).is_some());
        assert!(refusals.admit(v6(2)).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn sources_beyond_the_limit_share_one_group() {
        let refusals = Refusals::default();
        let mut written = 0;
        for i in 0..(MAX_GROUPS as u32 + 500) {
            let ip = Ipv4Addr::from(0x0a00_0000 + i);
            if refusals.admit(refused_token(ip.octets(), "/")).is_some() {
                written += 1;
            }
        }
        assert_eq!(written, MAX_GROUPS + 1, "one more for all the others");
        tokio::time::advance(WINDOW).await;
        let summed = refusals.due();
        assert_eq!(summed.len(), 1);
        assert_eq!(summed[0].count, 499);
    }

    #[tokio::test(start_paused = true)]
    async fn the_writer_flushes_ended_windows_and_leaves_the_rest_for_the_drain() {
        let refusals = Arc::new(Refusals::default());
        let written = Arc::new(Mutex::new(Vec::<Event>::new()));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let writer = tokio::spawn({
            let (refusals, written) = (refusals.clone(), written.clone());
            async move {
                let write = |e: Event| {
                    written.lock().unwrap().push(e);
                    std::future::ready(())
                };
                run(&refusals, async { stopped.await.unwrap_or(()) }, write).await;
            }
        });
        for _ in 0..3 {
            refusals.admit(refused_token([192, 0, 2, 7], "/"));
        }
        tokio::time::sleep(WINDOW / 2).await;
        for _ in 0..2 {
            refusals.admit(refused_token([192, 0, 2, 9], "/"));
        }
        tokio::time::sleep(WINDOW / 2 + FLUSH_INTERVAL).await;
        let counts: Vec<u64> = written.lock().unwrap().iter().map(|e| e.count).collect();
        assert_eq!(counts, [2], "the first window was written when it ended");
        stop.send(()).unwrap();
        writer.await.unwrap();
        let rest: Vec<u64> = refusals.drain().iter().map(|e| e.count).collect();
        assert_eq!(rest, [1], "the open window is written at shutdown");
    }
}
