//! What a reload changes, decided without touching a process: `plan`
//! compares the running services with the new config and returns the
//! steps, which the loop then carries out (`Supervisor::apply_reload`).

use nix::sys::signal::Signal;

use crate::config::{Config, ServiceSpec};
use crate::status::State;

/// A service's runtime as the plan sees it.
#[derive(Debug, Clone, Copy)]
pub struct Current<'a> {
    /// The spec it runs (or last ran) with.
    pub spec: &'a ServiceSpec,
    pub state: State,
    /// It has a process.
    pub running: bool,
    /// Not stopped by the operator or for good.
    pub wanted: bool,
    /// Stopping to be dropped: an earlier reload removed it.
    pub removing: bool,
}

/// What a reload does.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// `[supervisor]` changed: the running settings are kept until the
    /// next start of the supervisor, and the reply says so.
    pub keep_supervisor_settings: bool,
    /// One step per service of the new config, in its order (each after
    /// its dependencies); the services are sorted into this order.
    pub steps: Vec<Step>,
    /// Services the new config no longer has, in their running order:
    /// stopped, then dropped.
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub name: String,
    pub action: Action,
    /// An earlier reload removed it and it is still stopping: once it has
    /// stopped it is kept (with the new spec), not dropped.
    pub cancel_removal: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// New: added, and started once its dependencies are up.
    Add(ServiceSpec),
    /// Unchanged: left alone.
    Keep,
    /// Unchanged, but serves the TLS certificate, which changed: sent
    /// this signal (its reload signal) to load it.
    SignalCertificate(Signal),
    /// Running, and differs only in its generated files: they are
    /// written and the service gets its reload signal.
    RewriteFiles { spec: ServiceSpec, signal: Signal },
    /// Running, wanted, with another spec: stopped, then started fresh
    /// with the new one.
    Restart(ServiceSpec),
    /// Not running: takes the new spec now, as at a fresh start (start
    /// history and backoff cleared); `unpark`: it was parked as failed and
    /// becomes stopped, so it starts again.
    Update { spec: ServiceSpec, unpark: bool },
    /// Running but not wanted (stopping for the operator, or for a
    /// removal): the new spec waits for its next start.
    Defer(ServiceSpec),
}

/// Compares what runs (`current`, in the loop's order, with the specs it
/// runs) with the `new` config. `old` is the running config;
/// `certificate_changed` when the certificate file's bytes differ from
/// before the reload.
pub fn plan(old: &Config, new: &Config, current: &[Current], certificate_changed: bool) -> Plan {
    let steps = new
        .services
        .iter()
        .map(|spec| {
            let now = current.iter().find(|c| c.spec.name == spec.name);
            Step {
                name: spec.name.clone(),
                action: match now {
                    Some(now) => change(now, spec, certificate_changed),
                    None => Action::Add(spec.clone()),
                },
                cancel_removal: now.is_some_and(|c| c.removing),
            }
        })
        .collect();
    let remove = current
        .iter()
        .filter(|c| new.service(&c.spec.name).is_none())
        .map(|c| c.spec.name.clone())
        .collect();
    Plan {
        keep_supervisor_settings: new.supervisor != old.supervisor,
        steps,
        remove,
    }
}

fn change(now: &Current, spec: &ServiceSpec, certificate_changed: bool) -> Action {
    if now.spec == spec {
        match certificate_signal(now.spec, now.running) {
            Some(signal) if certificate_changed => Action::SignalCertificate(signal),
            _ => Action::Keep,
        }
    } else if now.spec.differs_only_in_files(spec)
        && let Some(signal) = now.spec.reload_signal
        && now.running
    {
        Action::RewriteFiles {
            spec: spec.clone(),
            signal,
        }
    } else if now.running && now.wanted {
        Action::Restart(spec.clone())
    } else if now.running {
        Action::Defer(spec.clone())
    } else {
        Action::Update {
            spec: spec.clone(),
            unpark: now.state == State::Failed,
        }
    }
}

/// The signal that makes a running service load a new TLS certificate:
/// its reload signal, when it serves the certificate (the built-in API).
pub fn certificate_signal(spec: &ServiceSpec, running: bool) -> Option<Signal> {
    spec.reload_signal.filter(|_| spec.tls_reload && running)
}

/// What the operator is told when a service was sent `signal` for a new
/// certificate.
pub fn certificate_note(name: &str, signal: Signal) -> String {
    format!("{name}: sent {} (new TLS certificate)", signal.as_str())
}

impl Plan {
    /// The reply to the operator: one note per change, or "no changes".
    pub fn summary(&self) -> String {
        let mut notes = Vec::new();
        if self.keep_supervisor_settings {
            notes.push(
                "[supervisor] shutdown_timeout and log settings take effect at the next start"
                    .to_string(),
            );
        }
        for Step { name, action, .. } in &self.steps {
            notes.push(match action {
                Action::Keep => continue,
                Action::Add(_) => format!("{name}: added"),
                Action::SignalCertificate(signal) => certificate_note(name, *signal),
                Action::RewriteFiles { signal, .. } => format!("{name}: sent {}", signal.as_str()),
                Action::Restart(_) => format!("{name}: restarting"),
                Action::Update { .. } | Action::Defer(_) => format!("{name}: updated"),
            });
        }
        notes.extend(self.remove.iter().map(|name| format!("{name}: removed")));
        if notes.is_empty() {
            notes.push("no changes".into());
        }
        notes.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use crate::config::{GeneratedFile, LoadOptions};

    /// Two services, `db` and `web` after it, and `extra` on top.
    fn config(extra: &str) -> Config {
        let text = [
            "[supervisor]\nstate_dir = \"/tmp/s\"\nrun_dir = \"/tmp/r\"\nlog_dir = \"/tmp/l\"\n",
            "[postgres]\nenable = false\nexternal_url = \"postgres://x@h/x\"\n",
            "[prometheus]\nenable = false\n[pushgateway]\nenable = false\n[api]\nenable = false\n",
            "[services.db]\ncommand = [\"/bin/sleep\", \"3600\"]\n",
            "[services.web]\ncommand = [\"/bin/sleep\", \"3600\"]\ndepends_on = [\"db\"]\n",
            extra,
        ]
        .concat();
        let opts = LoadOptions {
            dev: false,
            root: false,
            cwd: "/tmp".into(),
            exe_dir: "/nonexistent".into(),
            users: None,
            key_files: None,
            machine: crate::config::Machine {
                memory: 4 << 30,
                cpus: 2,
            },
        };
        crate::config::parse(&text, Path::new("test.toml"), &opts).unwrap()
    }

    /// Every service of `config` ready.
    fn running(config: &Config) -> Vec<Current<'_>> {
        config
            .services
            .iter()
            .map(|spec| Current {
                spec,
                state: State::Ready,
                running: true,
                wanted: true,
                removing: false,
            })
            .collect()
    }

    fn actions(plan: &Plan) -> Vec<(&str, &Action)> {
        plan.steps
            .iter()
            .map(|s| (s.name.as_str(), &s.action))
            .collect()
    }

    #[test]
    fn the_same_file_again_touches_nothing() {
        let old = config("");
        let plan = plan(&old, &config(""), &running(&old), false);
        assert_eq!(
            actions(&plan),
            [("db", &Action::Keep), ("web", &Action::Keep)]
        );
        assert!(plan.remove.is_empty());
        assert!(!plan.keep_supervisor_settings);
        assert!(plan.steps.iter().all(|s| !s.cancel_removal));
        assert_eq!(plan.summary(), "no changes");
    }

    #[test]
    fn a_changed_command_restarts_that_service_and_only_it() {
        let old = config("");
        let mut new = config("");
        new.services[1].command = vec!["/bin/sleep".into(), "60".into()];
        let plan = plan(&old, &new, &running(&old), false);
        assert_eq!(
            actions(&plan),
            [
                ("db", &Action::Keep),
                ("web", &Action::Restart(new.services[1].clone()))
            ]
        );
        assert_eq!(plan.summary(), "web: restarting");
    }

    #[test]
    fn a_removed_service_is_stopped_and_an_added_one_comes_after_its_dependencies() {
        let old = config("[services.gone]\ncommand = [\"/bin/true\"]\n");
        let new = config("[services.cache]\ncommand = [\"/bin/true\"]\ndepends_on = [\"web\"]\n");
        let plan = plan(&old, &new, &running(&old), false);
        assert_eq!(plan.remove, ["gone"]);
        let cache = new.service("cache").unwrap().clone();
        assert_eq!(
            actions(&plan),
            [
                ("db", &Action::Keep),
                ("web", &Action::Keep),
                ("cache", &Action::Add(cache))
            ]
        );
        assert_eq!(plan.summary(), "cache: added; gone: removed");
    }

    #[test]
    fn a_service_not_running_takes_its_new_spec_now_and_a_parked_one_is_unparked() {
        let old = config("");
        let mut new = config("");
        for spec in &mut new.services {
            spec.env.insert("GREETING".into(), "salut".into());
        }
        let mut current = running(&old);
        current[0].state = State::Failed;
        current[0].running = false;
        current[1].state = State::Stopped;
        current[1].running = false;
        let (db, web) = (new.services[0].clone(), new.services[1].clone());
        let plan = plan(&old, &new, &current, false);
        assert_eq!(
            actions(&plan),
            [
                (
                    "db",
                    &Action::Update {
                        spec: db,
                        unpark: true
                    }
                ),
                (
                    "web",
                    &Action::Update {
                        spec: web,
                        unpark: false
                    }
                )
            ]
        );
        assert_eq!(plan.summary(), "db: updated; web: updated");
    }

    #[test]
    fn a_service_stopping_for_the_operator_gets_its_new_spec_at_the_next_start() {
        let old = config("");
        let mut new = config("");
        new.services[1]
            .env
            .insert("GREETING".into(), "salut".into());
        let mut current = running(&old);
        current[1].state = State::Stopping;
        current[1].wanted = false;
        let plan = plan(&old, &new, &current, false);
        assert_eq!(plan.steps[1].action, Action::Defer(new.services[1].clone()));
        assert_eq!(plan.summary(), "web: updated");
    }

    #[test]
    fn changed_generated_files_alone_send_the_reload_signal_to_a_running_service() {
        let mut old = config("");
        old.services[1].reload_signal = Some(Signal::SIGHUP);
        old.services[1].files = vec![GeneratedFile {
            path: "/tmp/web.yml".into(),
            contents: "scrape_interval: 15s\n".into(),
        }];
        let mut new = old.clone();
        new.services[1].files[0].contents = "scrape_interval: 30s\n".into();
        let web = new.services[1].clone();

        let plan_for = |current: &[Current]| plan(&old, &new, current, false);
        let rewrite = plan_for(&running(&old));
        assert_eq!(
            rewrite.steps[1].action,
            Action::RewriteFiles {
                spec: web.clone(),
                signal: Signal::SIGHUP
            }
        );
        assert_eq!(rewrite.summary(), "web: sent SIGHUP");
        // Not running: nothing to signal, the files are written at its start.
        let mut current = running(&old);
        current[1].running = false;
        current[1].state = State::Backoff;
        assert_eq!(
            plan_for(&current).steps[1].action,
            Action::Update {
                spec: web.clone(),
                unpark: false
            }
        );
        // Without a reload signal it restarts.
        let mut quiet = old.clone();
        quiet.services[1].reload_signal = None;
        let mut new = new.clone();
        new.services[1].reload_signal = None;
        let restart = plan(&old, &new, &running(&quiet), false);
        assert_eq!(
            restart.steps[1].action,
            Action::Restart(new.services[1].clone())
        );
    }

    #[test]
    fn a_new_certificate_signals_the_running_services_that_serve_it() {
        let mut old = config("");
        old.services[1].tls_reload = true;
        old.services[1].reload_signal = Some(Signal::SIGHUP);
        let new = old.clone();
        let plan_for = |current: &[Current], changed| plan(&old, &new, current, changed);

        let signalled = plan_for(&running(&old), true);
        assert_eq!(
            actions(&signalled),
            [
                ("db", &Action::Keep),
                ("web", &Action::SignalCertificate(Signal::SIGHUP))
            ]
        );
        assert_eq!(
            signalled.summary(),
            "web: sent SIGHUP (new TLS certificate)"
        );
        assert_eq!(plan_for(&running(&old), false).summary(), "no changes");
        let mut current = running(&old);
        current[1].running = false;
        assert_eq!(plan_for(&current, true).steps[1].action, Action::Keep);
    }

    #[test]
    fn changed_supervisor_settings_are_kept_until_the_next_start() {
        let old = config("");
        let mut new = config("");
        new.supervisor.shutdown_timeout = Duration::from_secs(5);
        let plan = plan(&old, &new, &running(&old), false);
        assert!(plan.keep_supervisor_settings);
        assert_eq!(
            plan.summary(),
            "[supervisor] shutdown_timeout and log settings take effect at the next start"
        );
    }

    #[test]
    fn a_service_added_back_while_it_stops_for_its_removal_is_kept() {
        let old = config("");
        let mut current = running(&old);
        current[1].state = State::Stopping;
        current[1].wanted = false;
        current[1].removing = true;
        let plan = plan(&old, &config(""), &current, false);
        assert_eq!(
            plan.steps
                .iter()
                .map(|s| (s.name.as_str(), s.cancel_removal))
                .collect::<Vec<_>>(),
            [("db", false), ("web", true)]
        );
        assert_eq!(plan.steps[1].action, Action::Keep);
    }
}
