//! The boot test: a small image built from Debian packages with
//! phoenix-supervisor as `init=`, booted in qemu (TCG), probed from the host
//! through forwarded ports: /health pass, an API login, an orderly power-off
//! on ctrl-alt-del with PostgreSQL shut down cleanly, and the data still
//! there at the next boot.
//!
//! The image comes from `tests/vm/build-image.sh` (needs root, qemu,
//! debootstrap; `scripts/setup.sh`); its `tests/vm/phoenix.toml` listens on
//! 0.0.0.0 and adds a `network` oneshot that the built-ins wait for, since
//! the supervisor is the only init. Checked: `/health` passes with no
//! `notes` (cgroup limits apply as PID 1 of a real kernel); ctrl-alt-del,
//! sent through the qemu monitor, powers the machine off after `database
//! system is shut down` and `all services stopped`; the second boot from the
//! same disk starts PostgreSQL without recovery and still has the user made
//! in the first.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use phoenix_tests::{bin, free_port, wait_until};
use serde_json::{Value, json};

const ADMIN_PASSWORD: &str = "vm-test-admin-password";

/// An HTTPS client for the guest. Without KVM every instruction is emulated:
/// a login's Argon2 hash and TLS handshake that take milliseconds on the host
/// take seconds in the guest, more while other tests load the host.
fn https() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(120))
        .build()
        .expect("https client")
}

struct Vm {
    child: Child,
    monitor: PathBuf,
    console: PathBuf,
    health: u16,
    api: u16,
    http: u16,
}

impl Vm {
    /// Boots the image on a machine of `memory_mib` and `cpus`: the
    /// instance type.
    fn boot(image: &Path, dir: &Path, name: &str, memory_mib: u32, cpus: u32) -> Vm {
        let (health, api, http) = (free_port(), free_port(), free_port());
        let monitor = dir.join(format!("{name}.monitor"));
        let console = dir.join(format!("{name}.console"));
        let child = Command::new("qemu-system-x86_64")
            .args(["-machine", "q35", "-cpu", "max", "-nographic", "-no-reboot"])
            .args(["-m", &memory_mib.to_string(), "-smp", &cpus.to_string()])
            .arg("-kernel")
            .arg(image.join("vmlinuz"))
            .arg("-initrd")
            .arg(image.join("initrd.img"))
            .args(["-append", "console=ttyS0 root=/dev/vda rw panic=-1 init=/usr/local/bin/phoenix-supervisor"])
            .arg("-drive")
            .arg(format!("file={},format=raw,if=virtio", image.join("root.ext4").display()))
            .args(["-netdev", &format!("user,id=n0,hostfwd=tcp:127.0.0.1:{health}-:8081,hostfwd=tcp:127.0.0.1:{api}-:443,hostfwd=tcp:127.0.0.1:{http}-:80")])
            .args(["-device", "virtio-net-pci,netdev=n0"])
            .arg("-monitor")
            .arg(format!("unix:{},server,nowait", monitor.display()))
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("qemu-system-x86_64 (scripts/setup.sh installs qemu-system-x86)");
        Vm {
            child,
            monitor,
            console,
            health,
            api,
            http,
        }
    }

    fn console(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.console).unwrap_or_default()).to_string()
    }

    fn health(&self) -> Option<Value> {
        let r = reqwest::blocking::Client::new()
            .get(format!("http://127.0.0.1:{}/health", self.health))
            .timeout(Duration::from_secs(5))
            .send()
            .ok()?;
        r.json().ok()
    }

    fn wait_healthy(&self) -> Duration {
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs(900);
        loop {
            if self.health().is_some_and(|h| h["status"] == "pass") {
                return t0.elapsed();
            }
            assert!(
                Instant::now() < deadline,
                "not healthy in time; console:\n{}",
                self.console()
            );
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    fn api(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.api)
    }

    fn login(&self) -> String {
        let r = https()
            .post(self.api("/api/v1/auth/login"))
            .json(&json!({ "username": "admin", "password": ADMIN_PASSWORD }))
            .send()
            .expect("login request");
        assert_eq!(r.status().as_u16(), 200, "login");
        r.json::<Value>().unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Press ctrl-alt-del (the kernel sends SIGINT to PID 1) and wait for the
    /// machine to power itself off.
    fn ctrl_alt_del(&mut self) -> Duration {
        let t0 = Instant::now();
        let mut m = UnixStream::connect(&self.monitor).expect("qemu monitor");
        m.write_all(b"sendkey ctrl-alt-delete\n").unwrap();
        let status = wait_until("power off", Duration::from_secs(600), || {
            self.child.try_wait().unwrap()
        });
        assert!(status.success(), "qemu exited with {status}");
        t0.elapsed()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn boots_serves_powers_off_cleanly_and_keeps_data() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the boot test builds a root file system and needs root"
    );
    let dir = tempfile::Builder::new().prefix("phx-vm").tempdir().unwrap();
    let image = dir.path().join("image");
    let bins = bin("phoenix-supervisor").parent().unwrap().to_path_buf();
    let t0 = Instant::now();
    let status = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("vm/build-image.sh"))
        .arg(&image)
        .arg(&bins)
        .arg(ADMIN_PASSWORD)
        .status()
        .unwrap();
    assert!(status.success(), "building the image failed");
    println!("image built in {:.0} s", t0.elapsed().as_secs_f64());

    let mut vm = Vm::boot(&image, dir.path(), "first", 2048, 2);
    let healthy = vm.wait_healthy();
    println!(
        "first boot: healthy {:.1} s after qemu started",
        healthy.as_secs_f64()
    );
    let health = vm.health().unwrap();
    assert!(
        health.get("notes").is_none(),
        "cgroup v2 limits apply as PID 1 of a real kernel: {health}"
    );
    assert_eq!(
        health["checks"]["tls:certificate"][0]["status"], "pass",
        "{health}"
    );
    // Port 80, bound by the supervisor as root: plain HTTP goes to HTTPS.
    let plain = phoenix_tests::plain_http();
    let r = plain
        .get(format!(
            "http://127.0.0.1:{}/api/v1/openapi.json?x=1",
            vm.http
        ))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 308);
    assert_eq!(
        r.headers()["location"],
        "https://127.0.0.1/api/v1/openapi.json?x=1"
    );
    let token = vm.login();
    let r = https()
        .post(vm.api("/api/v1/users"))
        .bearer_auth(&token)
        .json(&json!({ "username": "persisted", "password": "persisted-password-1", "role": "viewer" }))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);

    let off = vm.ctrl_alt_del();
    println!(
        "first boot: powered off {:.1} s after ctrl-alt-del",
        off.as_secs_f64()
    );
    let console = vm.console();
    let first_console = console.clone();
    assert!(
        console.contains("database system is shut down"),
        "postgres stopped cleanly:\n{console}"
    );
    assert!(console.contains("all services stopped"), "{console}");
    drop(vm);

    // Phase 1 of the growth path: a new instance type, no edit of the config.
    let vm = Vm::boot(&image, dir.path(), "second", 3072, 1);
    let healthy = vm.wait_healthy();
    println!(
        "second boot: healthy {:.1} s after qemu started",
        healthy.as_secs_f64()
    );
    let console = vm.console();
    assert!(
        console.contains("database system was shut down at"),
        "clean start, no recovery:\n{console}"
    );
    assert!(!console.contains("redo starts"), "{console}");
    // The built-ins' limits are shares of the machine, so they followed it.
    let (first_pg, second_pg) = (postgres_limits(&first_console), postgres_limits(&console));
    println!("postgres limits: {first_pg:?} on 2 GiB / 2 CPUs, {second_pg:?} on 3 GiB / 1 CPU");
    assert!(
        second_pg.0 > first_pg.0 * 5 / 4 && second_pg.1 < first_pg.1,
        "memory up by half, CPUs halved: {first_pg:?} -> {second_pg:?}"
    );
    let token = vm.login();
    let users: Value = https()
        .get(vm.api("/api/v1/users"))
        .bearer_auth(&token)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(
        users
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["username"] == "persisted"),
        "{users}"
    );
}

/// The image's config passes `check-config` on the host, so a change to the
/// built-ins that the file no longer fits fails here in a second rather than
/// in the guest after minutes of boot.
#[test]
fn the_image_config_passes_check_config() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("vm/phoenix.toml");
    let out = Command::new(bin("phoenix-supervisor"))
        .args(["check-config", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    for service in ["network", "postgres", "prometheus", "api"] {
        assert!(
            text.contains(service),
            "{service} runs in the image: {text}"
        );
    }
}

/// PostgreSQL's memory (MiB) and CPUs, from the supervisor's first line
/// (`limits=postgres 491MiB 1cpu, prometheus ...`).
fn postgres_limits(console: &str) -> (u64, f64) {
    let line = console
        .lines()
        .find(|l| l.contains("phoenix-supervisor starting"))
        .unwrap_or_else(|| panic!("no start line:\n{console}"));
    // The serial console is a terminal: the log has colours.
    let mut plain = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|c| *c == 'm');
        } else {
            plain.push(c);
        }
    }
    let entry = plain
        .split(['=', ','])
        .map(|part| part.trim().trim_matches('"'))
        .find(|part| part.starts_with("postgres ") && part.contains("MiB"))
        .unwrap_or_else(|| panic!("no postgres limits in: {line}"));
    let words: Vec<&str> = entry.split_whitespace().collect();
    let memory = words[1].strip_suffix("MiB").unwrap();
    let cpus = words[2].strip_suffix("cpu").unwrap();
    (memory.parse().unwrap(), cpus.parse().unwrap())
}
