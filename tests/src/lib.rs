//! Test harness: run the real `phoenix-supervisor` on a config in a temp dir
//! and observe it through `phoenixctl`, its health endpoint and /proc.
//! The one way the tests start a supervisor.
//!
//! - [`Supervisor`]: `config(body)` writes a config with the `[supervisor]`
//!   directories and a free `[health]` port inside a temp dir; `start` (or
//!   `start_with(wrapper)`, e.g. `unshare --pid --fork --mount-proc`) runs
//!   `phoenix-supervisor run` in its own process group; observation goes only
//!   through `phoenixctl --json status`, the health endpoint, files and /proc.
//!   Dropping it sends SIGTERM, then SIGKILL to the group, and prints the
//!   supervisor's log when the test failed. [`NO_BUILTINS`] turns off every
//!   built-in for lifecycle tests.
//! - [`free_port`] hands out a port that is free now and claims it with a
//!   marker file in `$TMPDIR/phoenix-test-ports` (made with `create_new`, so
//!   two test processes never get the same port; a claim older than ten
//!   minutes is taken over).
//! - [`StackPorts`] claims the ports of a full stack (PostgreSQL, Prometheus,
//!   the Pushgateway, the API's two listeners, the plain-HTTP port) and
//!   writes the built-in sections for them; [`Stack`] runs that and waits up
//!   to 180 s for every service, then offers logins, users, requests on both
//!   listeners as [`Reply`], enrollment, the agent protocol, the audit log and
//!   SQL.
//! - [`TestCa`] makes a CA and a server certificate for 127.0.0.1;
//!   [`S3Server`] runs moto's S3 behind TLS with one, and can kill it and
//!   start it again on the same port (`down`, `up`).
//! - [`root_or_opted_out`]: what only root can test fails without root,
//!   unless `PHOENIX_TESTS_NOT_ROOT=1` says to skip it.
//! - [`agents`]: real `phoenix-agent` processes beside a stack, and a second
//!   Prometheus as the user's remote-write backend.

#![forbid(unsafe_code)]

pub mod agents;
pub mod browser;
pub mod pg;
pub mod replicas;

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// A binary of this workspace, built next to the test executable.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    let mut dir = exe.parent().expect("deps dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --workspace` first",
        path.display()
    );
    path
}

pub fn testprog() -> String {
    bin("phoenix-testprog").display().to_string()
}

/// A free port, never handed out twice within ten minutes on this machine:
/// the test processes run in parallel, and a port is free only until its
/// service binds it, so each one is claimed with a marker file.
pub fn free_port() -> u16 {
    let dir = std::env::temp_dir().join("phoenix-test-ports");
    std::fs::create_dir_all(&dir).expect("port claims dir");
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let marker = dir.join(port.to_string());
        let stale = std::fs::metadata(&marker)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().unwrap_or_default() > Duration::from_secs(600));
        if stale {
            let _ = std::fs::remove_file(&marker);
        }
        if std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&marker)
            .is_ok()
        {
            return port;
        }
    }
}

/// A free port below 1024 (only root can bind it), to test privileged listeners.
pub fn free_privileged_port() -> u16 {
    let start = 600 + (std::process::id() % 300) as u16;
    (start..1024)
        .chain(600..start)
        .find(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port below 1024")
}

/// The variable that lets a run without root skip what only root can test.
pub const NOT_ROOT_ENV: &str = "PHOENIX_TESTS_NOT_ROOT";

/// Whether the tests run as root, asked by a test (or the part of one) that
/// only root can run; `what` says what it is. Without root it fails, so that
/// a run as another user cannot show such a test passing while it proved
/// nothing; with `PHOENIX_TESTS_NOT_ROOT=1` it says it skipped and is false.
pub fn root_or_opted_out(what: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var(NOT_ROOT_ENV).is_ok_and(|v| v == "1"),
        "{what} needs root: run the tests as root, or set {NOT_ROOT_ENV}=1 to skip \
         what only root can test"
    );
    println!("skipped ({NOT_ROOT_ENV}=1): {what} needs root");
    false
}

/// An IPv4 address of this machine outside 127.0.0.0/8: a client that
/// binds it before connecting, even to 127.0.0.1, is not a loopback peer.
/// Read from the kernel's local routes (`/proc/net/fib_trie`, where each
/// address of the machine is followed by `/32 host LOCAL`).
pub fn non_loopback_ipv4() -> std::net::Ipv4Addr {
    let trie = std::fs::read_to_string("/proc/net/fib_trie").expect("read /proc/net/fib_trie");
    let lines: Vec<&str> = trie.lines().map(str::trim).collect();
    lines
        .windows(2)
        .filter(|w| w[1] == "/32 host LOCAL")
        .filter_map(|w| {
            w[0].strip_prefix("|-- ")?
                .parse::<std::net::Ipv4Addr>()
                .ok()
        })
        .find(|ip| !ip.is_loopback())
        .expect("an IPv4 address outside 127.0.0.0/8 on some interface of this machine")
}

/// Config lines that turn off every built-in service, for tests of the
/// lifecycle with test programs only.
pub const NO_BUILTINS: &str = "[postgres]\nenable = false\nexternal_url = \"postgres://unused@127.0.0.1:1/none\"\n\
[prometheus]\nenable = false\n[pushgateway]\nenable = false\n[api]\nenable = false\n";

pub fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

pub struct Supervisor {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub health_port: u16,
    child: Option<Child>,
    stderr_path: PathBuf,
    /// The binary to run; a private copy when running as another user.
    supervisor_bin: PathBuf,
    env: Vec<(String, String)>,
}

impl Supervisor {
    /// Write `body` plus [supervisor] and [health] sections into a temp dir.
    pub fn config(body: &str) -> Supervisor {
        let dir = tempfile::Builder::new()
            .prefix("phx")
            .tempdir()
            .expect("tempdir");
        // Service users (postgres, prometheus) must reach their directories.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let health_port = free_port();
        let config = dir.path().join("phoenix.toml");
        let sup = Supervisor {
            stderr_path: dir.path().join("supervisor.stderr"),
            dir,
            config,
            health_port,
            child: None,
            supervisor_bin: bin("phoenix-supervisor"),
            env: Vec::new(),
        };
        sup.write_config(body);
        sup
    }

    pub fn write_config(&self, body: &str) {
        let d = self.dir.path();
        let text = format!(
            "[supervisor]\nstate_dir = \"{}\"\nrun_dir = \"{}\"\nlog_dir = \"{}\"\nshutdown_timeout = \"20s\"\n\
             [health]\nlisten = \"127.0.0.1:{}\"\n{body}",
            d.join("state").display(),
            d.join("run").display(),
            d.join("log").display(),
            self.health_port
        );
        std::fs::write(&self.config, text).expect("write config");
    }

    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.push((key.to_string(), value.to_string()));
    }

    /// Hand the temp dir to `uid`, with private copies of the binaries it may
    /// not otherwise reach, and return a `setpriv` wrapper that runs as it.
    pub fn run_as(&mut self, uid: u32, gid: u32) -> Vec<String> {
        let bin_dir = self.path("bin");
        std::fs::create_dir_all(&bin_dir).unwrap();
        for name in ["phoenix-supervisor", "phoenix-api", "phoenix-testprog"] {
            std::fs::copy(bin(name), bin_dir.join(name)).unwrap();
        }
        self.supervisor_bin = bin_dir.join("phoenix-supervisor");
        let status = Command::new("chown")
            .arg("-R")
            .arg(format!("{uid}:{gid}"))
            .arg(self.dir.path())
            .status()
            .unwrap();
        assert!(status.success());
        [
            "setpriv",
            &format!("--reuid={uid}"),
            &format!("--regid={gid}"),
            "--clear-groups",
            "--",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn socket(&self) -> PathBuf {
        self.path("run/control.sock")
    }

    /// Start `phoenix-supervisor run`; optionally wrapped (e.g. in `unshare`).
    pub fn start_with(&mut self, wrapper: &[&str]) {
        let stderr = std::fs::File::create(&self.stderr_path).expect("stderr file");
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&self.supervisor_bin);
                c
            }
            None => Command::new(&self.supervisor_bin),
        };
        cmd.arg("run").arg("--config").arg(&self.config);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd.env("RUST_LOG", "info,phoenix::service=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        self.child = Some(cmd.spawn().expect("spawn supervisor"));
    }

    pub fn start(&mut self) {
        self.start_with(&[]);
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("started").id() as i32
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(bin("phoenixctl"))
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .output()
            .expect("run phoenixctl")
    }

    /// `phoenixctl --json status`, once the socket answers.
    pub fn status(&self) -> Value {
        let out = self.ctl(&["--json", "status"]);
        assert!(
            out.status.success(),
            "status failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.stderr()
        );
        serde_json::from_slice(&out.stdout).expect("status json")
    }

    /// `phoenixctl --json status`, or None when the supervisor does not
    /// answer within `timeout` (a control socket that never accepts would
    /// otherwise hang the test).
    pub fn status_within(&self, timeout: Duration) -> Option<Value> {
        let mut child = Command::new(bin("phoenixctl"))
            .arg("--socket")
            .arg(self.socket())
            .args(["--json", "status"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run phoenixctl");
        let deadline = Instant::now() + timeout;
        while child.try_wait().expect("try_wait").is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let out = child.wait_with_output().expect("phoenixctl output");
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten()
    }

    pub fn try_status(&self) -> Option<Value> {
        let out = self.ctl(&["--json", "status"]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten()
    }

    pub fn service(&self, name: &str) -> Value {
        let s = self.status();
        s["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .cloned()
            .unwrap_or(Value::Null)
    }

    pub fn state_of(&self, name: &str) -> String {
        self.try_status()
            .and_then(|s| {
                s["services"]
                    .as_array()?
                    .iter()
                    .find(|v| v["name"] == name)
                    .map(|v| v["state"].as_str().unwrap_or("").to_string())
            })
            .unwrap_or_default()
    }

    pub fn wait_state(&self, name: &str, state: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.state_of(name) == state {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{name} did not reach {state} in {timeout:?}; status: {}\nsupervisor log:\n{}",
                    self.try_status().map(|s| s.to_string()).unwrap_or_default(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Whether the supervisor has exited (a zombie not yet waited for),
    /// so that a refused config fails a test at once instead of at a timeout.
    fn exited(&self) -> bool {
        let Some(child) = &self.child else {
            return false;
        };
        std::fs::read_to_string(format!("/proc/{}/stat", child.id()))
            .map(|stat| {
                // The state follows the command name, which is in parentheses.
                stat.rsplit_once(')')
                    .is_none_or(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']))
            })
            .unwrap_or(true)
    }

    pub fn wait_all_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(r) = self.http("/readyz")
                && r.0 == 200
            {
                return;
            }
            if self.exited() {
                panic!("the supervisor exited; its log:\n{}", self.stderr());
            }
            if Instant::now() > deadline {
                panic!(
                    "not all ready in {timeout:?}; status: {}\nsupervisor log:\n{}",
                    self.try_status().map(|s| s.to_string()).unwrap_or_default(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// GET a path of the health server: (status code, body).
    pub fn http(&self, path: &str) -> Result<(u16, String), String> {
        let url = format!("http://127.0.0.1:{}{path}", self.health_port);
        let resp = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap()
            .get(url)
            .send()
            .map_err(|e| e.to_string())?;
        let code = resp.status().as_u16();
        Ok((code, resp.text().map_err(|e| e.to_string())?))
    }

    /// The supervisor's /metrics.
    pub fn metrics(&self) -> String {
        self.http("/metrics").expect("supervisor /metrics").1
    }

    pub fn health(&self) -> (u16, Value) {
        let (code, body) = self.http("/health").expect("health");
        (code, serde_json::from_str(&body).expect("health json"))
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig)
            .expect("signal supervisor");
    }

    /// Wait for the supervisor to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("started");
        wait_until("supervisor exit", timeout, || {
            child.try_wait().expect("try_wait")
        })
    }

    pub fn ok(out: &Output) -> String {
        assert!(
            out.status.success(),
            "command failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    pub fn pid_of(&self, name: &str) -> i32 {
        self.service(name)["pid"]
            .as_i64()
            .unwrap_or_else(|| panic!("{name} has no pid")) as i32
    }

    pub fn append_file(&self, rel: &str, text: &str) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(rel))
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child
            && child.try_wait().ok().flatten().is_none()
        {
            let pg = nix::unistd::Pid::from_raw(-(child.id() as i32));
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(20);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = nix::sys::signal::kill(pg, nix::sys::signal::Signal::SIGKILL);
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- supervisor log ----\n{}", self.stderr());
        }
    }
}

/// Processes whose parent is `pid`, with their state letter from /proc.
pub fn children_of(pid: i32) -> Vec<(i32, char)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let ppid: i32 = fields.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        if ppid == pid {
            out.push((p, state));
        }
    }
    out
}

pub fn process_alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.rsplit_once(") ").and_then(|(_, r)| r.chars().next()) != Some('Z'))
}

/// The addresses with a TCP socket listening on `port` in this network
/// namespace, IPv4 and IPv6, as the kernel lists them in /proc/net.
pub fn tcp_listeners(port: u16) -> Vec<std::net::IpAddr> {
    const LISTEN: &str = "0A";
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state)) = (fields.get(1), fields.get(3)) else {
                continue;
            };
            let Some((addr, p)) = local.split_once(':') else {
                continue;
            };
            if *state != LISTEN || u16::from_str_radix(p, 16) != Ok(port) {
                continue;
            }
            // The address is in 32-bit words of host (little-endian) order.
            let bytes: Vec<u8> = (0..addr.len() / 8)
                .flat_map(|w| {
                    u32::from_str_radix(&addr[w * 8..w * 8 + 8], 16)
                        .unwrap_or(0)
                        .to_le_bytes()
                })
                .collect();
            out.push(match <[u8; 4]>::try_from(bytes.as_slice()) {
                Ok(v4) => v4.into(),
                Err(_) => <[u8; 16]>::try_from(bytes.as_slice())
                    .map_or(std::net::Ipv6Addr::UNSPECIFIED, Into::into)
                    .into(),
            });
        }
    }
    out
}

/// Every live process whose command line mentions `needle`.
pub fn processes_matching(needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if p as u32 == std::process::id() {
            continue;
        }
        if let Ok(cmd) = std::fs::read(format!("/proc/{p}/cmdline"))
            && String::from_utf8_lossy(&cmd).contains(needle)
            && process_alive(p)
        {
            out.push(p);
        }
    }
    out
}

/// Ports of a full appliance stack on this machine, all free.
#[derive(Debug, Clone, Copy)]
pub struct StackPorts {
    pub pg: u16,
    pub prom: u16,
    pub push: u16,
    pub api: u16,
    pub agent: u16,
    /// Plain HTTP: ACME challenges and the redirect to HTTPS.
    pub http: u16,
    /// Whether the optional Pushgateway built-in runs (on `push`). The tests
    /// of the API's text push need it; agents do not.
    pub pushgateway: bool,
}

impl StackPorts {
    pub fn free() -> StackPorts {
        StackPorts {
            pg: free_port(),
            prom: free_port(),
            push: free_port(),
            api: free_port(),
            agent: free_port(),
            http: free_port(),
            pushgateway: true,
        }
    }

    /// The built-in sections for these ports (Prometheus scraping every second),
    /// followed by `extra`. A `[tls]` table in `extra` must set `http_listen`
    /// itself (see [`StackPorts::http_listen`]).
    pub fn config(&self, extra: &str) -> String {
        self.config_with("", extra)
    }

    /// [`StackPorts::config`] with `prometheus` (lines such as
    /// `query_url = "..."`) added to the `[prometheus]` table.
    pub fn config_with(&self, prometheus: &str, extra: &str) -> String {
        let tls = if extra.contains("[tls]") {
            String::new()
        } else {
            format!("[tls]\n{}\n", self.http_listen())
        };
        format!(
            "[postgres]\nport = {}\n\
             [prometheus]\nlisten = \"127.0.0.1:{}\"\nscrape_interval = \"1s\"\n{prometheus}\
             [pushgateway]\nenable = {}\nlisten = \"127.0.0.1:{}\"\n\
             [api]\nlisten = \"127.0.0.1:{}\"\nagent_listen = \"127.0.0.1:{}\"\n{tls}{}",
            self.pg,
            self.prom,
            self.pushgateway,
            self.push,
            self.api,
            self.agent,
            unscheduled_backups(extra)
        )
    }

    /// PostgreSQL and the API only (no Prometheus, no Pushgateway): what a
    /// backup or a restore touches; `extra` is appended.
    pub fn database_config(&self, extra: &str) -> String {
        format!(
            "[postgres]\nport = {}\n[prometheus]\nenable = false\n[pushgateway]\nenable = false\n\
             [api]\nlisten = \"127.0.0.1:{}\"\nagent_listen = \"127.0.0.1:{}\"\n[tls]\n{}\n{}",
            self.pg,
            self.api,
            self.agent,
            self.http_listen(),
            unscheduled_backups(extra)
        )
    }

    /// The `[tls]` key for this stack's plain-HTTP port.
    pub fn http_listen(&self) -> String {
        format!("http_listen = \"127.0.0.1:{}\"", self.http)
    }

    /// The certificate the API serves right now (DER), from a new handshake.
    pub fn served_certificate(&self) -> Vec<u8> {
        let client = reqwest::blocking::Client::builder()
            .danger_accept_invalid_certs(true)
            .tls_info(true)
            .timeout(Duration::from_secs(10))
            .build()
            .expect("https client");
        let r = client
            .get(self.api_url("/health"))
            .send()
            .expect("the API answers");
        r.extensions()
            .get::<reqwest::tls::TlsInfo>()
            .and_then(|i| i.peer_certificate())
            .expect("the server's certificate")
            .to_vec()
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http)
    }

    pub fn api_url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.api)
    }

    pub fn agent_url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.agent)
    }

    pub fn prometheus_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.prom)
    }

    pub fn pushgateway_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.push)
    }
}

/// `extra` with backup schedules that cannot fall within a test: the full
/// twelve hours from now, no differential. On the defaults (a full at
/// 02:00 and a differential every hour) a test that spans the hour sees a
/// scheduled backup, and `backup now` or `restore` is refused while it
/// runs. A `[backup]` table in `extra` gets the keys unless it sets `full`.
pub fn unscheduled_backups(extra: &str) -> String {
    let hour = (SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        / 3600
        + 12)
        % 24;
    let keys = format!("full = \"30 {hour} * * *\"\ndiff = \"\"\n");
    match extra.split_once("[backup]\n") {
        Some(_) if extra.contains("\nfull = ") || extra.starts_with("full = ") => extra.to_string(),
        Some((before, after)) => format!("{before}[backup]\n{keys}{after}"),
        None if extra.is_empty() || extra.ends_with('\n') => format!("{extra}[backup]\n{keys}"),
        None => format!("{extra}\n[backup]\n{keys}"),
    }
}

/// A plain HTTP client that shows redirects instead of following them.
pub fn plain_http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client")
}

/// `phoenix-supervisor check-config` on a file holding `toml`, which must
/// be refused; its error message.
pub fn config_refused(toml: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("phoenix.toml");
    std::fs::write(&path, toml).expect("write config");
    let out = Command::new(bin("phoenix-supervisor"))
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .expect("run check-config");
    assert!(!out.status.success(), "accepted:\n{toml}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// An HTTPS client for the API's self-signed certificate.
pub fn https() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("https client")
}

/// An HTTPS client like [`https`] whose connections leave from `source`:
/// any address in 127.0.0.0/8 is loopback, so tests can be several clients.
pub fn https_from(source: std::net::IpAddr) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .danger_accept_invalid_certs(true)
        .local_address(source)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("https client")
}

/// Runs `curl -sS -k` with `args`: exit code, stdout and stderr.
pub fn curl(args: &[&str]) -> (i32, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "-k", "--max-time", "60"])
        .args(args)
        .output()
        .expect("run curl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// TCP connections process `pid` holds on its listener at `port`: its
/// sockets (from /proc/<pid>/fd) that /proc/net/tcp{,6} shows bound to the
/// port and not listening.
pub fn connections_on(pid: i32, port: u16) -> usize {
    connections_matching(pid, port, |_| true)
}

/// Those of [`connections_on`] whose peer is `peer`: the stack's own clients
/// (the supervisor's probes, Prometheus's scrapes) come from 127.0.0.1 and
/// are not counted against a test's source.
pub fn connections_from(pid: i32, port: u16, peer: std::net::Ipv4Addr) -> usize {
    // /proc/net/tcp writes an IPv4 address as its 32 bits in host order.
    let hex = format!("{:08X}", u32::from_ne_bytes(peer.octets()));
    connections_matching(pid, port, |remote| {
        remote.split(':').next() == Some(hex.as_str())
    })
}

fn connections_matching(pid: i32, port: u16, remote: impl Fn(&str) -> bool) -> usize {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.flatten()
                .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                .filter_map(|link| {
                    let link = link.to_string_lossy().into_owned();
                    link.strip_prefix("socket:[")
                        .and_then(|rest| rest.strip_suffix(']'))
                        .map(str::to_owned)
                })
                .collect()
        })
        .unwrap_or_default();
    let listen_state = "0A";
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .flat_map(|text| {
            text.lines()
                .skip(1)
                .map(|line| {
                    line.split_whitespace()
                        .map(str::to_owned)
                        .collect::<Vec<_>>()
                })
                .collect::<Vec<_>>()
        })
        .filter(|fields| fields.len() > 9 && inodes.contains(&fields[9]))
        .filter(|fields| fields[3] != listen_state)
        .filter(|fields| remote(&fields[2]))
        .filter(|fields| {
            fields[1]
                .rsplit(':')
                .next()
                .and_then(|hex| u16::from_str_radix(hex, 16).ok())
                == Some(port)
        })
        .count()
}

/// A whole appliance stack (PostgreSQL, Prometheus, Pushgateway, API) under a
/// supervisor, with an HTTPS client for the API's two listeners.
pub struct Stack {
    pub sup: Supervisor,
    pub ports: StackPorts,
    http: reqwest::blocking::Client,
}

/// A JSON response: status code and body (`Null` when empty or not JSON).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

impl Reply {
    /// The problem document's stable `code`; empty when there is none.
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }
}

/// The tokens of the admin, an operator (`olivia`) and a viewer (`victor`).
pub struct Users {
    pub admin: String,
    pub operator: String,
    pub viewer: String,
}

/// An enrolled agent: its id and the credential it authenticates with.
#[derive(Debug, Clone)]
pub struct Agent {
    pub id: String,
    pub credential: String,
}

/// `GET url` (HTTPS with any certificate, or plain HTTP): the body as text.
pub fn get_text(url: &str) -> String {
    https()
        .get(url)
        .send()
        .and_then(|r| r.text())
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

impl Stack {
    /// Start the stack with `extra` appended to the config, and wait until ready.
    pub fn start(extra: &str) -> Stack {
        Stack::start_on(StackPorts::free(), extra)
    }

    /// [`Stack::start`] as the appliance runs by default, without the
    /// optional Pushgateway: what agents need.
    pub fn start_without_pushgateway(extra: &str) -> Stack {
        Stack::start_on(
            StackPorts {
                pushgateway: false,
                ..StackPorts::free()
            },
            extra,
        )
    }

    /// [`Stack::start`] on ports chosen beforehand.
    pub fn start_on(ports: StackPorts, extra: &str) -> Stack {
        Stack::started(Supervisor::config(&ports.config(extra)), ports)
    }

    /// Starts a supervisor prepared for `ports` (say, with extra environment).
    pub fn started(mut sup: Supervisor, ports: StackPorts) -> Stack {
        sup.start();
        sup.wait_all_ready(Duration::from_secs(180));
        Stack {
            sup,
            ports,
            http: https(),
        }
    }

    /// A stack around a supervisor already started, without waiting for
    /// every service (one may be expected to fail, as on a new machine).
    pub fn attach(sup: Supervisor, ports: StackPorts) -> Stack {
        Stack {
            sup,
            ports,
            http: https(),
        }
    }

    /// The generated password of the initial `admin` user.
    pub fn admin_password(&self) -> String {
        std::fs::read_to_string(self.sup.path("state/secrets/initial-admin-password"))
            .expect("initial admin password")
            .trim()
            .to_string()
    }

    /// One login attempt, whatever its outcome.
    pub fn login_attempt(&self, username: &str, password: &str) -> Reply {
        self.post(
            None,
            "/api/v1/auth/login",
            &serde_json::json!({ "username": username, "password": password }),
        )
    }

    /// One login attempt from the loopback address `source`.
    pub fn login_attempt_from(
        &self,
        source: std::net::IpAddr,
        username: &str,
        password: &str,
    ) -> Reply {
        let request = https_from(source)
            .post(self.ports.api_url("/api/v1/auth/login"))
            .json(&serde_json::json!({ "username": username, "password": password }));
        self.send(request, None)
    }

    /// Log in; the access token.
    pub fn login(&self, username: &str, password: &str) -> String {
        let r = self.login_attempt(username, password);
        assert_eq!(r.status, 200, "login as {username}: {r:?}");
        r.body["access_token"]
            .as_str()
            .expect("access_token")
            .to_string()
    }

    pub fn admin_token(&self) -> String {
        self.login("admin", &self.admin_password())
    }

    /// Create a user with `role` (as admin) and log in as it; its token.
    pub fn user_token(&self, admin: &str, username: &str, role: &str) -> String {
        let password = format!("{username}-password-123");
        let r = self.post(
            Some(admin),
            "/api/v1/users",
            &serde_json::json!({ "username": username, "password": password, "role": role }),
        );
        assert_eq!(r.status, 201, "create {username}: {r:?}");
        self.login(username, &password)
    }

    /// `psql -A -t -c SQL` as the superuser over the unix socket, in the
    /// `postgres` database; its output, trimmed. Fails the test on an error.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_in("postgres", sql)
    }

    /// [`Stack::psql`] in the database `db` (the API's is `phoenix`).
    pub fn psql_in(&self, db: &str, sql: &str) -> String {
        let password =
            std::fs::read_to_string(self.sup.path("state/secrets/postgres-superuser-password"))
                .expect("the superuser password");
        let out = Command::new("setpriv")
            .args([
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "--",
            ])
            .arg("/usr/lib/postgresql/15/bin/psql")
            .args(["-X", "-A", "-t", "-h"])
            .arg(self.sup.path("run/postgres"))
            .args([
                "-p",
                &self.ports.pg.to_string(),
                "-U",
                "postgres",
                "-d",
                db,
                "-c",
                sql,
            ])
            .env("PGPASSWORD", password.trim())
            .current_dir("/")
            .output()
            .expect("psql runs");
        assert!(out.status.success(), "{}", output_text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The user names the API lists (as admin), sorted.
    pub fn usernames(&self) -> Vec<String> {
        let admin = self.admin_token();
        let r = self.get(Some(&admin), "/api/v1/users");
        assert_eq!(r.status, 200, "{r:?}");
        let list = r.body["users"]
            .as_array()
            .or(r.body.as_array())
            .cloned()
            .unwrap_or_default();
        let mut names: Vec<String> = list
            .iter()
            .filter_map(|u| u["username"].as_str().map(str::to_string))
            .collect();
        names.sort();
        names
    }

    /// Logs in as the admin and creates the operator `olivia` and the viewer
    /// `victor`; the three tokens.
    pub fn users(&self) -> Users {
        let admin = self.admin_token();
        Users {
            operator: self.user_token(&admin, "olivia", "operator"),
            viewer: self.user_token(&admin, "victor", "viewer"),
            admin,
        }
    }

    fn send(&self, req: reqwest::blocking::RequestBuilder, token: Option<&str>) -> Reply {
        let req = match token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let resp = req.send().expect("request to the API");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().unwrap_or_default();
        Reply {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
            headers,
        }
    }

    pub fn get(&self, token: Option<&str>, path: &str) -> Reply {
        self.send(self.http.get(self.ports.api_url(path)), token)
    }

    pub fn post(&self, token: Option<&str>, path: &str, body: &Value) -> Reply {
        self.send(self.http.post(self.ports.api_url(path)).json(body), token)
    }

    pub fn patch(&self, token: Option<&str>, path: &str, body: &Value) -> Reply {
        self.send(self.http.patch(self.ports.api_url(path)).json(body), token)
    }

    pub fn put(&self, token: Option<&str>, path: &str, body: &Value) -> Reply {
        self.send(self.http.put(self.ports.api_url(path)).json(body), token)
    }

    pub fn delete(&self, token: Option<&str>, path: &str) -> Reply {
        self.send(self.http.delete(self.ports.api_url(path)), token)
    }

    /// A request to the agent listener, with an arbitrary builder.
    pub fn agent(&self, method: reqwest::Method, path: &str) -> reqwest::blocking::RequestBuilder {
        self.http.request(method, self.ports.agent_url(path))
    }

    /// Send a prepared request and read the reply as JSON.
    pub fn reply(&self, req: reqwest::blocking::RequestBuilder) -> Reply {
        self.send(req, None)
    }

    /// Audit entries matching the query string (as admin).
    pub fn audit(&self, admin: &str, query: &str) -> Vec<Value> {
        let r = self.get(Some(admin), &format!("/api/v1/audit?{query}"));
        assert_eq!(r.status, 200, "{r:?}");
        r.body["entries"].as_array().cloned().unwrap_or_default()
    }

    /// A new enrollment token made by `admin` from `body`: its id and secret.
    pub fn enrollment_token(&self, admin: &str, body: &Value) -> (String, String) {
        let r = self.post(Some(admin), "/api/v1/enrollment-tokens", body);
        assert_eq!(r.status, 201, "{r:?}");
        (
            r.body["id"].as_str().expect("token id").to_string(),
            r.body["token"].as_str().expect("token").to_string(),
        )
    }

    /// One enrollment with `token`, whatever its outcome; the host name is
    /// `<name>.example`.
    pub fn try_enroll(&self, token: &str, name: &str, labels: Value) -> Reply {
        self.reply(
            self.agent(reqwest::Method::POST, "/api/v1/agents/enroll")
                .json(&serde_json::json!({
                    "token": token, "name": name, "hostname": format!("{name}.example"),
                    "labels": labels, "version": "0.1.0",
                })),
        )
    }

    /// Enroll agents named `names` with one enrollment token made by `admin`.
    pub fn enroll(&self, admin: &str, names: &[&str]) -> Vec<Agent> {
        let (_, token) = self.enrollment_token(admin, &serde_json::json!({ "uses": names.len() }));
        names
            .iter()
            .map(|name| {
                let r = self.try_enroll(&token, name, serde_json::json!({}));
                assert_eq!(r.status, 201, "enroll {name}: {r:?}");
                Agent {
                    id: r.body["agent_id"].as_str().expect("agent_id").to_string(),
                    credential: r.body["credential"]
                        .as_str()
                        .expect("credential")
                        .to_string(),
                }
            })
            .collect()
    }

    /// [`Stack::enroll`] for one agent.
    pub fn enroll_one(&self, admin: &str, name: &str) -> Agent {
        self.enroll(admin, &[name]).remove(0)
    }

    /// A call to the agent listener with `credential` as bearer and an
    /// optional JSON body.
    pub fn agent_call(
        &self,
        credential: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Reply {
        let req = self.agent(method, path).bearer_auth(credential);
        self.reply(match body {
            Some(body) => req.json(body),
            None => req,
        })
    }

    /// An empty heartbeat.
    pub fn heartbeat(&self, credential: &str) -> Reply {
        let body = serde_json::json!({});
        self.agent_call(
            credential,
            reqwest::Method::POST,
            "/api/v1/agent/heartbeat",
            Some(&body),
        )
    }

    /// The agent's long poll for tasks, with `query` (`wait=5&lease=1`).
    pub fn poll(&self, credential: &str, query: &str) -> Reply {
        let path = format!("/api/v1/agent/tasks?{query}");
        self.agent_call(credential, reqwest::Method::GET, &path, None)
    }

    /// The result of `task`, reported by the agent.
    pub fn report(&self, credential: &str, task: &str, body: &Value) -> Reply {
        let path = format!("/api/v1/agent/tasks/{task}/result");
        self.agent_call(credential, reqwest::Method::POST, &path, Some(body))
    }

    /// A remote write, as an agent sends it, of the samples in `text`
    /// (simple Prometheus text: `name{label="value",...} value` per line,
    /// `#` lines skipped), all at the current time, to the group `query`
    /// names (`experiment=…&variant=…`, or empty for live metrics).
    pub fn write_text(&self, credential: &str, query: &str, text: &str) -> Reply {
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        self.write_samples(credential, query, &text_series(text, at))
    }

    /// Writes each group (`(credential, query, text)` as for
    /// [`Stack::write_text`]) every `every`, as running agents do, until
    /// the [`Writer`] is dropped. The first round is written before this
    /// returns, and must be taken.
    pub fn writer(&self, groups: Vec<(String, String, String)>, every: Duration) -> Writer {
        for (credential, query, text) in &groups {
            let r = self.write_text(credential, query, text);
            assert_eq!(r.status, 200, "write {query}: {r:?}");
        }
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let base = self.ports.agent_url("");
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || {
                let http = https();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(every);
                    let at = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_millis() as i64;
                    for (credential, query, text) in &groups {
                        // Refusals (the experiment ended) are expected
                        // towards the end; what counts is what was taken.
                        let _ =
                            agent_write(&http, &base, credential, query, &text_series(text, at))
                                .send();
                    }
                }
            }
        });
        Writer {
            stop,
            thread: Some(thread),
        }
    }

    /// A remote write of `series` as an agent sends it.
    pub fn write_samples(
        &self,
        credential: &str,
        query: &str,
        series: &[phoenix_wire::remote_write::TimeSeries],
    ) -> Reply {
        let base = self.ports.agent_url("");
        self.reply(agent_write(&self.http, &base, credential, query, series))
    }

    /// Runs `sql` with `psql` as the API's own database role (`phoenix`,
    /// with its generated password): the rows as `psql -At` prints them, or
    /// PostgreSQL's error.
    pub fn sql(&self, sql: &str) -> Result<String, String> {
        let password = std::fs::read_to_string(self.sup.path("state/secrets/api-db-password"))
            .expect("the API's database password");
        let out = Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &self.ports.pg.to_string()])
            .args(["-U", "phoenix", "-d", "phoenix", "-At", "--no-psqlrc"])
            .args(["-v", "ON_ERROR_STOP=1", "-c", sql])
            .env("PGPASSWORD", password.trim())
            .output()
            .expect("run psql");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

/// A test certificate authority and a server certificate it signed for
/// `127.0.0.1` and `localhost`, as PEM files in `dir`: `root.pem` (to
/// trust), `cert.pem` and `key.pem` (for the server).
pub struct TestCa {
    pub root: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    pub fn new(dir: &Path, name: &str) -> TestCa {
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, format!("test root for {name}"));
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = ca.self_signed(&ca_key).unwrap();
        let mut leaf =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()])
                .unwrap();
        // pgBackRest 2.45 matches a host against DNS names only, an
        // address included: 127.0.0.1 is a DNS name too, for it.
        leaf.subject_alt_names.push(rcgen::SanType::DnsName(
            "127.0.0.1".to_string().try_into().unwrap(),
        ));
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = leaf.signed_by(&key, &ca, &ca_key).unwrap();
        let out = TestCa {
            root: dir.join(format!("{name}-root.pem")),
            cert: dir.join(format!("{name}-cert.pem")),
            key: dir.join(format!("{name}-key.pem")),
        };
        std::fs::write(&out.root, ca.pem()).unwrap();
        std::fs::write(&out.cert, leaf.pem()).unwrap();
        std::fs::write(&out.key, key.serialize_pem()).unwrap();
        // Service users (PostgreSQL runs archive-push) read the root.
        for p in [&out.root, &out.cert] {
            std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o644))
                .unwrap();
        }
        out
    }
}

/// moto's S3 behind TLS (a [`TestCa`]) on [`S3Server::port`], served by
/// `tests/s3/tls-front.py`: moto's own TLS (werkzeug) ends responses
/// without a length and without TLS's close, which pgBackRest refuses; the
/// front frames them. [`S3Server::down`] kills it and [`S3Server::up`]
/// starts it again on the same port; moto keeps objects in memory, so what
/// it held is gone then (the bucket is made again). moto takes any keys.
/// Killed when dropped.
pub struct S3Server {
    pub port: u16,
    pub ca: TestCa,
    log: PathBuf,
    moto: Option<Child>,
    buckets: Vec<String>,
}

/// The keys written to [`S3Server::key_file`]; moto takes any.
pub const S3_TEST_KEY_ID: &str = "AKIAPHOENIXTEST";
pub const S3_TEST_SECRET: &str = "phoenix-test-secret-not-for-logs";

impl S3Server {
    /// Starts moto on a free port with a new CA in `dir`, and waits until it answers.
    pub fn start(dir: &Path) -> S3Server {
        let mut s3 = S3Server {
            port: free_port(),
            ca: TestCa::new(dir, "s3"),
            log: dir.join("moto.log"),
            moto: None,
            buckets: Vec::new(),
        };
        s3.up();
        s3
    }

    pub fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// Writes a key file (root's, 0600) into `dir`; its path.
    pub fn key_file(&self, dir: &Path) -> PathBuf {
        let path = dir.join("s3-keys");
        std::fs::write(
            &path,
            format!("AWS_ACCESS_KEY_ID={S3_TEST_KEY_ID}\nAWS_SECRET_ACCESS_KEY={S3_TEST_SECRET}\n"),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        path
    }

    /// `[backup.s3]` for `bucket` on this server, keys from `key_file`.
    pub fn backup_toml(&self, bucket: &str, key_file: &Path) -> String {
        format!(
            "[backup.s3]\nbucket = \"{bucket}\"\nregion = \"us-east-1\"\nendpoint = \"{}\"\n\
             uri_style = \"path\"\ncredentials = \"file\"\nkey_file = \"{}\"\nca_file = \"{}\"\n",
            self.endpoint(),
            key_file.display(),
            self.ca.root.display()
        )
    }

    /// Runs Python `code` with `s3`, a boto3 client of this server; its stdout.
    pub fn python(&self, code: &str) -> Result<String, String> {
        let script = format!(
            "import boto3, json\ns3 = boto3.client('s3', endpoint_url='{}', region_name='us-east-1', \
             aws_access_key_id='{S3_TEST_KEY_ID}', aws_secret_access_key='x', verify='{}')\n{code}\n",
            self.endpoint(),
            self.ca.root.display()
        );
        let out = Command::new("python3")
            .arg("-c")
            .arg(script)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Makes `bucket`, and again after each [`S3Server::up`].
    pub fn create_bucket(&mut self, bucket: &str) {
        self.python(&format!("s3.create_bucket(Bucket='{bucket}')"))
            .unwrap_or_else(|e| panic!("create bucket {bucket}: {e}"));
        self.buckets.push(bucket.to_string());
    }

    /// Every object's key in `bucket`.
    pub fn keys(&self, bucket: &str) -> Vec<String> {
        let out = self
            .python(&format!(
                "p = s3.get_paginator('list_objects_v2')\nkeys = [o['Key'] for page in \
                 p.paginate(Bucket='{bucket}') for o in page.get('Contents', [])]\nprint(json.dumps(keys))"
            ))
            .unwrap_or_else(|e| panic!("list {bucket}: {e}"));
        serde_json::from_str(&out).unwrap()
    }

    /// S3 unreachable: moto killed, connections refused until [`S3Server::up`].
    pub fn down(&mut self) {
        if let Some(mut moto) = self.moto.take() {
            let _ = moto.kill();
            let _ = moto.wait();
        }
    }

    /// moto (again) on the same port, with the buckets made so far.
    pub fn up(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let front = Path::new(env!("CARGO_MANIFEST_DIR")).join("s3/tls-front.py");
        let moto = Command::new("python3")
            .arg(front)
            .arg(self.port.to_string())
            .arg(&self.ca.cert)
            .arg(&self.ca.key)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("moto_server: {e} (scripts/setup.sh installs moto[server])")
            });
        self.moto = Some(moto);
        wait_until("moto answers over TLS", Duration::from_secs(60), || {
            self.python("s3.list_buckets()").ok()
        });
        for bucket in std::mem::take(&mut self.buckets) {
            self.create_bucket(&bucket);
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.down();
    }
}

/// A finished command's stdout and stderr, one after the other.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The series of simple Prometheus text (`name{label="value",...} value`
/// per line, `#` lines and blank lines skipped, no escapes in label
/// values), each with one sample at `at_ms`.
pub fn text_series(text: &str, at_ms: i64) -> Vec<phoenix_wire::remote_write::TimeSeries> {
    use phoenix_wire::remote_write::{Label, NAME_LABEL, Sample, TimeSeries};
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("`series value`");
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let mut all = vec![Label::new(NAME_LABEL, name)];
            for pair in labels.split(',').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').expect("label=\"value\"");
                all.push(Label::new(k.trim(), v.trim().trim_matches('"')));
            }
            all.sort_by(|a, b| a.name.cmp(&b.name));
            TimeSeries {
                labels: all,
                samples: vec![Sample {
                    value: value.parse().expect("a number"),
                    timestamp: at_ms,
                }],
                ..Default::default()
            }
        })
        .collect()
}

/// Groups written in the background by [`Stack::writer`]; dropping it stops
/// the writes.
pub struct Writer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A remote write of `series` as an agent sends it, to the agent listener
/// at `base`, to the group `query` names (empty for live metrics).
fn agent_write(
    http: &reqwest::blocking::Client,
    base: &str,
    credential: &str,
    query: &str,
    series: &[phoenix_wire::remote_write::TimeSeries],
) -> reqwest::blocking::RequestBuilder {
    let url = match query {
        "" => format!("{base}/api/v1/agent/write"),
        query => format!("{base}/api/v1/agent/write?{query}"),
    };
    let body = phoenix_wire::remote_write::encode(&phoenix_wire::remote_write::WriteRequest {
        timeseries: series.to_vec(),
        ..Default::default()
    });
    http.post(url)
        .bearer_auth(credential)
        .header("content-type", "application/x-protobuf")
        .header("content-encoding", "snappy")
        .header("x-prometheus-remote-write-version", "0.1.0")
        .body(body)
}

#[cfg(test)]
mod tests {
    use super::unscheduled_backups;

    fn backup_table(extra: &str) -> toml::Table {
        let all: toml::Table = toml::from_str(&unscheduled_backups(extra)).expect("valid TOML");
        all["backup"].as_table().expect("a [backup] table").clone()
    }

    #[test]
    fn every_test_stack_has_backup_schedules_away_from_now() {
        for extra in [
            "",
            "[api]\nx = 1",
            "[backup]\nenable = false\n",
            "[backup.s3]\nbucket = \"b\"\n",
        ] {
            let t = backup_table(extra);
            assert_eq!(t["diff"].as_str(), Some(""), "{extra}");
            let full = t["full"].as_str().unwrap();
            let hour: u64 = full.split(' ').nth(1).unwrap().parse().unwrap();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
                / 3600
                % 24;
            assert!((hour + 24 - now) % 24 >= 11, "{full} at hour {now}");
        }
        // A test's own schedule is kept.
        let t = backup_table("[backup]\nfull = \"0 3 * * *\"\n");
        assert_eq!(t["full"].as_str(), Some("0 3 * * *"));
        assert!(t.get("diff").is_none());
    }
}
