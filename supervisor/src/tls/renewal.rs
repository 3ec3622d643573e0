//! The API's TLS certificate over time. In every mode the certificate is
//! read once a minute: its expiry feeds /health, and a file replaced on disk
//! (a new ACME certificate, or an operator's new one in mode = "files") is
//! announced to the event loop, which sends the API its reload signal. In
//! mode = "acme" the certificate is also obtained and renewed: when none
//! from the CA is there yet (the self-signed stand-in), when the names
//! changed, or when a third of its lifetime is left; failures are retried
//! with backoff while the current certificate keeps serving.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use phoenix_backoff::Backoff;
use tokio::sync::Notify;

use super::{CertInfo, Issued, inspect, install, key_matches, leaf_der};
use crate::config::TlsSettings;
use crate::process::RunAs;
use crate::status::{CertificateStatus, unix_ms};

/// How often the certificate file is read again, and the API asked which
/// certificate it serves; `PHOENIX_CERT_CHECK_INTERVAL` (humantime) sets
/// another, for tests.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(60);

fn check_interval() -> Duration {
    std::env::var("PHOENIX_CERT_CHECK_INTERVAL")
        .ok()
        .and_then(|v| humantime::parse_duration(&v).ok())
        .filter(|d| !d.is_zero())
        .unwrap_or(CHECK_INTERVAL)
}

/// The leaf certificate the API serves at `addr`, DER.
async fn served_leaf(client: &reqwest::Client, addr: std::net::SocketAddr) -> Option<Vec<u8>> {
    let response = client
        .get(format!("https://{addr}/health"))
        .send()
        .await
        .ok()?;
    response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()?
        .peer_certificate()
        .map(<[u8]>::to_vec)
}

/// Between failed ACME attempts: 1 min, doubling, at most 1 h (20 % jitter),
/// well inside Let's Encrypt's limit of 5 failed validations an hour.
pub const RETRY: Backoff =
    match Backoff::try_new(Duration::from_secs(60), Duration::from_secs(3600), 0.2) {
        Ok(b) => b,
        Err(_) => panic!("valid backoff"),
    };

/// When the next ACME order is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// At once, and why.
    Now(&'static str),
    At(SystemTime),
}

/// The renewal rule: no usable certificate from the CA, or names missing
/// from it, means now; otherwise when a third of its lifetime is left.
/// Names compare without regard to case, as DNS does.
pub fn renewal(cert: Option<&CertInfo>, hostnames: &[String]) -> Due {
    let Some(cert) = cert else {
        return Due::Now("no readable certificate");
    };
    if cert.self_signed {
        return Due::Now("the self-signed stand-in is serving");
    }
    if hostnames
        .iter()
        .any(|h| !cert.names.iter().any(|n| n.eq_ignore_ascii_case(h)))
    {
        return Due::Now("the hostnames changed");
    }
    let lifetime = cert
        .not_after
        .duration_since(cert.not_before)
        .unwrap_or_default();
    Due::At(cert.not_after - lifetime / 3)
}

/// Gets a new certificate chain and its key, both PEM.
pub trait Issuer {
    fn issue(&self) -> impl Future<Output = anyhow::Result<Issued>> + Send;
}

pub fn mode_name(tls: &TlsSettings) -> &'static str {
    match (&tls.acme, tls.self_signed) {
        (Some(_), _) => "acme",
        (None, true) => "self-signed",
        (None, false) => "files",
    }
}

/// The certificate and key files' contents, read together.
type Pair = (Vec<u8>, Vec<u8>);

fn read_pair(tls: &TlsSettings) -> std::io::Result<Pair> {
    Ok((std::fs::read(&tls.cert)?, std::fs::read(&tls.key)?))
}

/// Watches (and in ACME mode renews) the certificate until the process
/// ends. `report(status, renewed)` is called after every look, and after
/// every ACME order, with the certificate's status; `renewed` when a new
/// certificate and key are in place (one installed here, or a pair
/// replaced by someone else that reads the same on two looks in a row and
/// whose key fits, so a certificate copied before its key is not announced
/// half done), or when the API still serves another certificate and should
/// be asked to reload again.
pub async fn run<I: Issuer>(
    tls: TlsSettings,
    issuer: Option<I>,
    renew_now: Arc<Notify>,
    report: impl Fn(CertificateStatus, bool),
) {
    let interval = check_interval();
    let mut watch = Watch::new(tls);
    loop {
        let look = watch.look(issuer.is_some(), interval).await;
        report(watch.status.clone(), look.announce);

        let forced = tokio::select! {
            () = tokio::time::sleep(look.wait) => false,
            () = renew_now.notified() => true,
        };
        let (Some(issuer), Some(due)) = (&issuer, look.due) else {
            continue;
        };
        if forced || watch.order_due(due) {
            watch.order(issuer, due, forced).await;
            report(watch.status.clone(), false);
        }
    }
}

/// What one look found.
struct Look {
    /// When the next ACME order is due; None without ACME.
    due: Option<Due>,
    /// How long until the next look.
    wait: Duration,
    /// Tell the API to load the certificate file.
    announce: bool,
}

/// The certificate task's memory from one look to the next.
struct Watch {
    tls: TlsSettings,
    /// Only for reading which certificate the API serves: never trusted.
    served_client: reqwest::Client,
    status: CertificateStatus,
    /// The pair the API was last told to load.
    announced: Option<Pair>,
    /// A pair someone else put in place, seen on one look so far.
    candidate: Option<Pair>,
    /// A pair was installed here since the last look.
    installed: bool,
    /// Looks in a row on which the API served another certificate.
    stale_looks: u32,
    /// ACME orders failed in a row, and when the next may be placed.
    failures: u32,
    retry_at: Option<tokio::time::Instant>,
}

impl Watch {
    fn new(tls: TlsSettings) -> Self {
        let served_client = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .tls_info(true)
            // A new handshake each time: a kept connection shows the
            // certificate of its own handshake, not the one served now.
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(5))
            .build()
            .expect("an HTTP client");
        Watch {
            announced: read_pair(&tls).ok(),
            tls,
            served_client,
            status: CertificateStatus::default(),
            candidate: None,
            installed: false,
            stale_looks: 0,
            failures: 0,
            retry_at: None,
        }
    }

    /// Reads the files (renewing a self-signed certificate that is due),
    /// asks the API which certificate it serves, and updates the status.
    async fn look(&mut self, acme: bool, interval: Duration) -> Look {
        let tls = &self.tls;
        // The self-signed certificate is renewed here too, 30 days ahead.
        if !acme && tls.self_signed && super::expires_within(&tls.cert, super::RENEW_BEFORE) {
            let owner = tls.key_owner.as_deref().and_then(|n| RunAs::lookup(n).ok());
            match super::ensure_self_signed(tls, owner.as_ref()) {
                Ok(()) => self.installed = true,
                Err(e) => tracing::warn!(
                    error = format!("{e:#}"),
                    "could not renew the self-signed certificate"
                ),
            }
        }
        let (info, renewed) = self.read();
        let due = acme.then(|| renewal(info.as_ref().ok(), &self.tls.hostnames));
        let now = SystemTime::now();
        // The API should serve the file's certificate: once it did not on
        // two looks in a row (a reload it refused), say so.
        if renewed {
            self.stale_looks = 0;
        }
        let served = if renewed {
            None
        } else {
            self.served_elsewhere().await
        };
        let wait = self.wait(due, now, interval);
        self.record(&info, due, now, served.as_deref());
        let cert = self.tls.cert.display();
        if renewed {
            tracing::info!(%cert, "the TLS certificate changed");
        } else if self.stale_looks >= 2 {
            // Ask again: a reload the API refused (a key it could not read,
            // say) succeeds once the cause is fixed.
            tracing::warn!(
                %cert,
                "the API does not serve the certificate file; asking it to reload again"
            );
        }
        Look {
            due,
            wait,
            announce: renewed || self.stale_looks >= 2,
        }
    }

    /// Reads the pair; `true` when a new one is to be announced.
    fn read(&mut self) -> (anyhow::Result<CertInfo>, bool) {
        let pair = read_pair(&self.tls);
        let mut renewed = false;
        match &pair {
            Ok(now) if self.announced.as_ref() != Some(now) => {
                let settled = self.installed || self.candidate.as_ref() == Some(now);
                if settled && key_matches(&now.0, &now.1) != Some(false) {
                    self.announced = Some(now.clone());
                    self.candidate = None;
                    renewed = true;
                } else {
                    self.candidate = Some(now.clone());
                }
            }
            _ => self.candidate = None,
        }
        self.installed = false;
        let tls = &self.tls;
        let info = pair
            .as_ref()
            .map_err(|e| anyhow::anyhow!("{} or {}: {e}", tls.cert.display(), tls.key.display()))
            .and_then(|(cert, _)| inspect(cert));
        (info, renewed)
    }

    /// The certificate the API serves (DER) when it is not the one last
    /// announced (the API was told to load it), counting such looks in a
    /// row; None when it is, or when the API does not answer (its own state
    /// shows that).
    async fn served_elsewhere(&mut self) -> Option<Vec<u8>> {
        let (Some(addr), Some((cert, _))) = (self.tls.api_local, &self.announced) else {
            return None;
        };
        let der = served_leaf(&self.served_client, addr).await?;
        if Some(&der) == leaf_der(cert).as_ref() {
            self.stale_looks = 0;
            None
        } else {
            self.stale_looks += 1;
            Some(der)
        }
    }

    /// Until the next look: the check interval, or sooner when an order is
    /// due (and not held back by a failed one).
    fn wait(&self, due: Option<Due>, now: SystemTime, interval: Duration) -> Duration {
        let Some(due) = due else {
            return interval;
        };
        let until_due = match due {
            Due::Now(_) => Duration::ZERO,
            Due::At(t) => t.duration_since(now).unwrap_or_default(),
        };
        let until_retry = self
            .retry_at
            .map(|r| r.saturating_duration_since(tokio::time::Instant::now()))
            .unwrap_or_default();
        until_due.max(until_retry).min(interval)
    }

    /// What this look saw, into the status.
    fn record(
        &mut self,
        info: &anyhow::Result<CertInfo>,
        due: Option<Due>,
        now: SystemTime,
        served: Option<&[u8]>,
    ) {
        let tls = &self.tls;
        let s = &mut self.status;
        s.mode = mode_name(tls).to_string();
        s.path = tls.cert.display().to_string();
        match info {
            Ok(i) => {
                s.names = i.names.clone();
                s.issuer = Some(i.issuer.clone());
                s.self_signed = i.self_signed;
                s.not_after_ms = Some(unix_ms(i.not_after));
                if self.failures == 0 {
                    s.error = None;
                }
            }
            Err(e) => {
                s.names.clear();
                s.issuer = None;
                s.not_after_ms = None;
                s.error = Some(format!("{e:#}"));
            }
        }
        s.renew_at_ms = due.map(|d| match d {
            Due::Now(_) => unix_ms(now),
            Due::At(t) => unix_ms(t),
        });
        s.failures = self.failures;
        s.served_error = match (served, self.stale_looks >= 2) {
            (Some(der), true) => {
                let expires = x509_parser::parse_x509_certificate(der)
                    .ok()
                    .map(|(_, c)| c.validity().not_after.to_string())
                    .unwrap_or_else(|| "unknown".into());
                Some(format!(
                    "the API still serves another certificate (expires {expires}) than {}: \
                     its reload failed; see the API's log",
                    tls.cert.display()
                ))
            }
            _ => None,
        };
    }

    /// Due, and not held back by the backoff after a failed order.
    fn order_due(&self, due: Due) -> bool {
        let retry_passed = self
            .retry_at
            .is_none_or(|r| tokio::time::Instant::now() >= r);
        let due_now = match due {
            Due::Now(_) => true,
            Due::At(t) => SystemTime::now() >= t,
        };
        due_now && retry_passed
    }

    /// Orders a certificate and installs it; a failure backs off and keeps
    /// the current one serving.
    async fn order(&mut self, issuer: &impl Issuer, due: Due, forced: bool) {
        let tls = &self.tls;
        let why = match due {
            Due::Now(why) => why,
            _ if forced => "renewal asked for",
            _ => "a third of the lifetime is left",
        };
        tracing::info!(names = ?tls.hostnames, reason = why, "ordering a TLS certificate over ACME");
        let result = match issuer.issue().await {
            Ok(issued) => install(tls, &issued),
            Err(e) => Err(e),
        };
        // What was installed must not be due again at once (names the CA
        // left out, or a clock far off): that would order in a loop.
        let result = result.and_then(|info| {
            self.installed = true;
            match renewal(Some(&info), &tls.hostnames) {
                Due::At(t) if t > SystemTime::now() => Ok(()),
                Due::At(_) => anyhow::bail!(
                    "the new certificate is already due for renewal: is this machine's clock right?"
                ),
                Due::Now(why) => anyhow::bail!(
                    "the CA's certificate is still due for renewal ({why}): it names {:?}, {:?} were asked for",
                    info.names,
                    tls.hostnames
                ),
            }
        });
        match result {
            Ok(()) => {
                self.failures = 0;
                self.retry_at = None;
                self.status.renewed_at_ms = Some(unix_ms(SystemTime::now()));
                self.status.error = None;
                tracing::info!(cert = %tls.cert.display(), "obtained a TLS certificate over ACME");
            }
            Err(e) => {
                let delay = RETRY.delay(self.failures);
                self.failures = self.failures.saturating_add(1);
                self.retry_at = Some(tokio::time::Instant::now() + delay);
                self.status.error = Some(format!("{e:#}"));
                tracing::warn!(
                    error = format!("{e:#}"),
                    failures = self.failures,
                    retry_in = %humantime::format_duration(Duration::from_secs(delay.as_secs())),
                    "could not obtain a TLS certificate over ACME; the current one keeps serving"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Keeps the last status the task reported.
    fn keep_last(last: Arc<Mutex<CertificateStatus>>) -> impl Fn(CertificateStatus, bool) {
        move |status, _| *last.lock().unwrap() = status
    }

    fn info(days_valid: u64, age_days: u64, self_signed: bool, names: &[&str]) -> CertInfo {
        let day = Duration::from_secs(86_400);
        let not_before = SystemTime::now() - day * age_days as u32;
        CertInfo {
            names: names.iter().map(|n| n.to_string()).collect(),
            issuer: "CN=test".into(),
            self_signed,
            not_before,
            not_after: not_before + day * days_valid as u32,
        }
    }

    #[test]
    fn renewal_when_a_third_of_the_lifetime_is_left_or_at_once() {
        let names = vec!["phoenix.example.com".to_string()];
        assert_eq!(renewal(None, &names), Due::Now("no readable certificate"));
        let stand_in = info(397, 0, true, &["phoenix.example.com"]);
        assert!(matches!(renewal(Some(&stand_in), &names), Due::Now(_)));
        let other = info(90, 0, false, &["old.example.com"]);
        assert_eq!(
            renewal(Some(&other), &names),
            Due::Now("the hostnames changed")
        );
        let fresh = info(90, 0, false, &["phoenix.example.com", "www.example.com"]);
        assert_eq!(
            renewal(Some(&fresh), &names),
            Due::At(fresh.not_before + Duration::from_secs(60 * 86_400))
        );
    }

    /// A CA for the tests and a certificate from it valid for `days`.
    fn issued(days: i64) -> Issued {
        issued_for("phoenix.example.com", days)
    }

    fn issued_for(name: &str, days: i64) -> Issued {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "test CA");
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now;
        params.not_after = now + time::Duration::days(days);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        Issued {
            chain_pem: cert.pem() + &ca.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// Fails `failing` times, then issues; remembers when it was called.
    struct Flaky {
        failing: u32,
        calls: AtomicU32,
        at: Mutex<Vec<tokio::time::Instant>>,
    }

    impl Issuer for Arc<Flaky> {
        async fn issue(&self) -> anyhow::Result<Issued> {
            self.at.lock().unwrap().push(tokio::time::Instant::now());
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            if n < self.failing {
                anyhow::bail!("the CA is down (attempt {})", n + 1)
            }
            Ok(issued(90))
        }
    }

    fn settings(dir: &std::path::Path) -> TlsSettings {
        TlsSettings {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            self_signed: true,
            hostnames: vec!["phoenix.example.com".into()],
            key_owner: None,
            acme: Some(crate::config::AcmeSettings {
                directory: "https://ca.invalid/directory".into(),
                email: None,
                ca: None,
                account_file: dir.join("account.json"),
            }),
            http_listen: None,
            https_port: 443,
            api_local: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failed_orders_back_off_then_the_new_certificate_is_announced() {
        let dir = tempfile::tempdir().unwrap();
        let tls = settings(dir.path());
        crate::tls::ensure_self_signed(&tls, None).unwrap();
        let stand_in = std::fs::read(&tls.cert).unwrap();
        let flaky = Arc::new(Flaky {
            failing: 3,
            calls: AtomicU32::new(0),
            at: Mutex::new(Vec::new()),
        });
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let start = tokio::time::Instant::now();
        let task = tokio::spawn(run(
            tls.clone(),
            Some(flaky.clone()),
            Arc::new(Notify::new()),
            move |status, renewed| {
                let _ = tx.send((status, renewed));
            },
        ));
        // Looks until the file changes.
        let status = loop {
            let (status, renewed) = rx.recv().await.unwrap();
            if renewed {
                break status;
            }
        };
        task.abort();

        let at: Vec<Duration> = flaky
            .at
            .lock()
            .unwrap()
            .iter()
            .map(|t| *t - start)
            .collect();
        assert_eq!(at.len(), 4, "{at:?}");
        assert_eq!(at[0], Duration::ZERO, "the stand-in is replaced at once");
        // 1, 2 and 4 minutes apart, each within 20 % jitter.
        for (i, want) in [(1, 60.0), (2, 120.0), (3, 240.0)] {
            let gap = (at[i] - at[i - 1]).as_secs_f64();
            assert!(
                (want * 0.8..=want * 1.2 + 1.0).contains(&gap),
                "attempt {i} came {gap} s after the one before, want about {want} s: {at:?}"
            );
        }
        assert_ne!(std::fs::read(&tls.cert).unwrap(), stand_in);
        assert_eq!(status.failures, 0);
        assert_eq!(status.error, None);
        assert_eq!(status.names, ["phoenix.example.com"]);
        assert_eq!(status.issuer.as_deref(), Some("CN=test CA"));
        assert!(status.renewed_at_ms.is_some());
        let key_mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&tls.key).unwrap().permissions(),
        );
        assert_eq!(key_mode & 0o777, 0o600);
        // Next order when 30 of the 90 days are left.
        let renew_at = status.renew_at_ms.unwrap();
        let in_days = (renew_at - unix_ms(SystemTime::now())) as f64 / 86_400_000.0;
        assert!((59.9..=60.0).contains(&in_days), "{in_days}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_keeps_the_certificate_and_reports_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let tls = settings(dir.path());
        crate::tls::ensure_self_signed(&tls, None).unwrap();
        let before = std::fs::read(&tls.cert).unwrap();
        let flaky = Arc::new(Flaky {
            failing: u32::MAX,
            calls: AtomicU32::new(0),
            at: Mutex::new(Vec::new()),
        });
        let last = Arc::new(Mutex::new(CertificateStatus::default()));
        let keep = keep_last(last.clone());
        let task = tokio::spawn(run(
            tls.clone(),
            Some(flaky.clone()),
            Arc::new(Notify::new()),
            move |status, renewed| {
                assert!(!renewed, "nothing was installed");
                keep(status, renewed);
            },
        ));
        // Six hours of virtual time: attempts thin out to one an hour.
        tokio::time::sleep(Duration::from_secs(6 * 3600)).await;
        task.abort();
        let calls = flaky.calls.load(Ordering::SeqCst);
        assert!((8..=14).contains(&calls), "{calls} attempts in 6 h");
        let status = last.lock().unwrap().clone();
        assert_eq!(status.failures, calls);
        assert!(
            status.error.as_deref().unwrap().contains("the CA is down"),
            "{status:?}"
        );
        assert_eq!(std::fs::read(&tls.cert).unwrap(), before);
    }

    /// Always issues a certificate for another name.
    struct WrongName(AtomicU32);

    impl Issuer for Arc<WrongName> {
        async fn issue(&self) -> anyhow::Result<Issued> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(issued_for("other.example.com", 90))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_certificate_without_the_names_backs_off_instead_of_ordering_in_a_loop() {
        let dir = tempfile::tempdir().unwrap();
        let tls = settings(dir.path());
        crate::tls::ensure_self_signed(&tls, None).unwrap();
        let issuer = Arc::new(WrongName(AtomicU32::new(0)));
        let last = Arc::new(Mutex::new(CertificateStatus::default()));
        let task = tokio::spawn(run(
            tls,
            Some(issuer.clone()),
            Arc::new(Notify::new()),
            keep_last(last.clone()),
        ));
        tokio::time::sleep(Duration::from_secs(10 * 60)).await;
        task.abort();
        // At once, then 1, 2 and 4 minutes later (±20 %): 3 or 4 in 10 min.
        let orders = issuer.0.load(Ordering::SeqCst);
        assert!((3..=4).contains(&orders), "{orders} orders in 10 minutes");
        let status = last.lock().unwrap().clone();
        let error = status.error.unwrap();
        assert!(error.contains("other.example.com"), "{error}");
        assert_eq!(status.failures, orders);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pair_replaced_by_someone_else_is_announced_once_whole_and_settled() {
        let dir = tempfile::tempdir().unwrap();
        let mut tls = settings(dir.path());
        tls.acme = None;
        tls.self_signed = false;
        let first = issued(90);
        std::fs::write(&tls.cert, &first.chain_pem).unwrap();
        std::fs::write(&tls.key, &first.key_pem).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(run::<Arc<Flaky>>(
            tls.clone(),
            None,
            Arc::new(Notify::new()),
            move |_, renewed| {
                let _ = tx.send(renewed);
            },
        ));
        assert!(
            !rx.recv().await.unwrap(),
            "the first look announces nothing"
        );
        // The certificate is copied, its key not yet: not announced.
        let second = issued(90);
        std::fs::write(&tls.cert, &second.chain_pem).unwrap();
        assert!(!rx.recv().await.unwrap());
        assert!(
            !rx.recv().await.unwrap(),
            "a key that does not fit is not announced"
        );
        // The key follows: announced after it reads the same twice.
        std::fs::write(&tls.key, &second.key_pem).unwrap();
        assert!(!rx.recv().await.unwrap());
        assert!(rx.recv().await.unwrap());
        assert!(!rx.recv().await.unwrap(), "and only once");
        task.abort();
    }

    #[test]
    fn keys_are_matched_to_their_certificates() {
        let (a, b) = (issued(30), issued(30));
        assert_eq!(
            key_matches(a.chain_pem.as_bytes(), a.key_pem.as_bytes()),
            Some(true)
        );
        assert_eq!(
            key_matches(a.chain_pem.as_bytes(), b.key_pem.as_bytes()),
            Some(false)
        );
        assert_eq!(key_matches(a.chain_pem.as_bytes(), b"not a key"), None);
        let upper = vec!["PHOENIX.example.com".to_string()];
        let info = inspect(a.chain_pem.as_bytes()).unwrap();
        assert!(matches!(renewal(Some(&info), &upper), Due::At(_)));
    }

    #[test]
    fn inspect_reads_names_issuer_and_validity() {
        let i = inspect(issued(30).chain_pem.as_bytes()).unwrap();
        assert_eq!(i.names, ["phoenix.example.com"]);
        assert!(!i.self_signed);
        let days = i.not_after.duration_since(i.not_before).unwrap().as_secs() / 86_400;
        assert_eq!(days, 30);
        assert!(inspect(b"not a certificate").is_err());
    }
}
