//! The Nix side of the appliance: every Nix file parses
//! (`nix-instantiate --parse`), is formatted (`nixpkgs-fmt --check`) and has
//! no dead code (`deadnix --fail`); flake.lock pins nixpkgs;
//! modules/phoenix.nix evaluates with `lib.evalModules` (nixpkgs' lib from
//! NIXPKGS_LIB, else `../shared/nixpkgs-lib`) against stubs and its
//! settings pass `check-config`; and the module's first-boot
//! step (`phoenix-supervisor first-boot`) writes /etc/phoenix/phoenix.toml
//! once, from EC2 user data (IMDSv2) when that is valid.
//! modules/phoenix-agent.nix evaluates likewise, its agent.toml passes
//! `phoenix-agent check`, and its unit matches packaging/phoenix-agent.service,
//! which `systemd-analyze verify` accepts. `scripts/setup.sh` installs the
//! tools.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use phoenix_tests::{bin, output_text as text};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// Every `*.nix` file of the repository, outside build output and hidden
/// directories.
fn nix_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("readable directory") {
            let path = entry.expect("directory entry").path();
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if path.is_dir() {
                if !name.starts_with('.') && name != "target" {
                    walk(&path, out);
                }
            } else if name.ends_with(".nix") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&repo(), &mut files);
    files.sort();
    for expected in [
        "flake.nix",
        "modules/phoenix.nix",
        "modules/phoenix-agent.nix",
        "tests/nix/eval-module.nix",
        "tests/nix/eval-agent-module.nix",
    ] {
        assert!(
            files.contains(&repo().join(expected)),
            "{expected} was not found"
        );
    }
    files
}

/// A command of a tool that scripts/setup.sh installs, or a clear failure.
fn tool(program: &str) -> Command {
    let found = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{program} is not installed: run scripts/setup.sh (it installs nix-bin, nixpkgs-fmt and deadnix)"
    );
    let mut command = Command::new(program);
    // Debian's Nix names a build group that only a Nix daemon set-up has.
    command.env("NIX_CONFIG", "build-users-group =");
    command
}

fn run(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"))
}

#[test]
fn nix_files_parse() {
    let failures: Vec<String> = nix_files()
        .iter()
        .filter_map(|file| {
            let out = run(tool("nix-instantiate").arg("--parse").arg(file));
            (!out.status.success()).then(|| format!("{}:\n{}", file.display(), text(&out)))
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn nix_files_are_formatted() {
    let out = run(tool("nixpkgs-fmt").arg("--check").args(nix_files()));
    assert!(
        out.status.success(),
        "run `nixpkgs-fmt` on these files:\n{}",
        text(&out)
    );
}

#[test]
fn nix_files_have_no_dead_code() {
    let out = run(tool("deadnix").arg("--fail").args(nix_files()));
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn flake_lock_pins_the_nixpkgs_branch_of_flake_nix() {
    let flake = std::fs::read_to_string(repo().join("flake.nix")).unwrap();
    let url = flake
        .lines()
        .find_map(|line| line.trim().strip_prefix("inputs.nixpkgs.url = \""))
        .and_then(|rest| rest.strip_suffix("\";"))
        .expect("flake.nix has inputs.nixpkgs.url");
    let branch = url
        .strip_prefix("github:NixOS/nixpkgs/")
        .expect("nixpkgs comes from github:NixOS/nixpkgs");

    let lock: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("flake.lock")).unwrap()).unwrap();
    assert_eq!(lock["version"], 7);
    assert_eq!(lock["nodes"]["root"]["inputs"]["nixpkgs"], "nixpkgs");
    let node = &lock["nodes"]["nixpkgs"];
    assert_eq!(node["original"]["ref"], branch);
    assert_eq!(node["original"]["owner"], "NixOS");
    let locked = &node["locked"];
    assert_eq!(locked["type"], "github");
    assert_eq!(locked["owner"], "NixOS");
    assert_eq!(locked["repo"], "nixpkgs");
    let rev = locked["rev"].as_str().expect("a locked rev");
    assert!(
        rev.len() == 40 && rev.bytes().all(|b| b.is_ascii_hexdigit()),
        "{rev}"
    );
    let nar_hash = locked["narHash"].as_str().expect("a narHash");
    assert!(
        nar_hash.starts_with("sha256-") && nar_hash.len() == 51,
        "{nar_hash}"
    );
    assert!(locked["lastModified"].as_u64().is_some());
}

/// The nixpkgs lib to evaluate modules with: `NIXPKGS_LIB`, else the copy of
/// nixpkgs' `lib/` kept in `shared/nixpkgs-lib` beside the repository.
fn nixpkgs_lib() -> Option<std::ffi::OsString> {
    if let Some(lib) = std::env::var_os("NIXPKGS_LIB") {
        return Some(lib);
    }
    let beside = repo().join("../shared/nixpkgs-lib");
    beside
        .join("lib/default.nix")
        .exists()
        .then(|| beside.into_os_string())
}

/// One of tests/nix/eval-*.nix evaluated with nixpkgs' lib, its `failures`
/// checked empty; `None` (the test skips) without a lib outside CI.
fn evaluate(file: &str) -> Option<serde_json::Value> {
    let Some(lib) = nixpkgs_lib() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must evaluate the modules: set NIXPKGS_LIB, or keep ../shared/nixpkgs-lib beside the clone"
        );
        println!(
            "skipped: NIXPKGS_LIB not set and no ../shared/nixpkgs-lib; set it to a nixpkgs \
             (or nixpkgs.lib) checkout to evaluate {file} with lib.evalModules"
        );
        return None;
    };
    let out = run(tool("nix-instantiate")
        .args(["--eval", "--strict", "--json"])
        .arg(repo().join(file))
        .arg("--argstr")
        .arg("nixpkgsLib")
        .arg(&lib));
    assert!(out.status.success(), "{}", text(&out));
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let failures = result["failures"].as_array().expect("failures");
    assert!(
        failures.is_empty(),
        "{file}: {}",
        serde_json::to_string_pretty(failures).unwrap()
    );
    Some(result)
}

/// tests/nix/eval-module.nix: lib.evalModules on modules/phoenix.nix with
/// stubs; the settings of each scenario must pass the real check-config.
#[test]
fn module_evaluates_against_stubs_and_its_settings_pass_check_config() {
    let Some(result) = evaluate("tests/nix/eval-module.nix") else {
        return;
    };
    let configs = result["configs"].as_object().expect("configs");
    assert!(configs.contains_key("defaults"));
    let dir = tempfile::tempdir().unwrap();
    for (scenario, toml) in configs {
        let path = dir.path().join(format!("{scenario}.toml"));
        std::fs::write(&path, toml.as_str().expect("TOML text")).unwrap();
        let out = run(Command::new(bin("phoenix-supervisor"))
            .arg("check-config")
            .arg("--config")
            .arg(&path));
        assert!(
            out.status.success(),
            "settings of scenario {scenario}:\n{}\n{}",
            toml.as_str().unwrap(),
            text(&out)
        );
    }
}

// The agent's packaging: modules/phoenix-agent.nix and
// packaging/phoenix-agent.service.

/// tests/nix/eval-agent-module.nix: lib.evalModules on
/// modules/phoenix-agent.nix with stubs; the agent.toml of each scenario
/// must pass the real `phoenix-agent check` and say where it goes.
#[test]
fn agent_module_evaluates_against_stubs_and_its_file_passes_phoenix_agent_check() {
    let Some(result) = evaluate("tests/nix/eval-agent-module.nix") else {
        return;
    };
    let configs = result["configs"].as_object().expect("configs");
    let dir = tempfile::tempdir().unwrap();
    for (scenario, state_dir) in [
        ("defaults", "/var/lib/phoenix-agent"),
        ("custom", "/srv/phoenix-agent"),
    ] {
        let toml = configs[scenario].as_str().expect("TOML text");
        let path = dir.path().join(format!("{scenario}.toml"));
        std::fs::write(&path, toml).unwrap();
        let out = run(Command::new(bin("phoenix-agent"))
            .arg("check")
            .arg("--config")
            .arg(&path));
        let expected = format!("valid (api https://phoenix.example.com:6700/, state {state_dir})");
        assert!(
            out.status.success() && text(&out).contains(&expected),
            "agent.toml of scenario {scenario}:\n{toml}\n{}",
            text(&out)
        );
    }

    let unit = &result["unit"];
    assert_eq!(unit["RestartPreventExitStatus"], serde_json::json!(["78"]));
    assert_eq!(unit["User"], serde_json::json!(["phoenix-agent"]));
    assert_eq!(unit["StateDirectory"], serde_json::json!(["phoenix-agent"]));
}

const AGENT_UNIT: &str = "packaging/phoenix-agent.service";

/// The unit file's keys, each as its words; a key given on several lines
/// has the words of all of them, as systemd reads lists.
fn unit_file_words(text: &str) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut keys = std::collections::BTreeMap::<String, Vec<String>>::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with('[') {
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("{AGENT_UNIT}: not a key=value line: {line}"));
        keys.entry(key.to_owned())
            .or_default()
            .extend(value.split_whitespace().map(str::to_owned));
    }
    keys
}

/// The NixOS module's service and the unit for hosts without Nix set the
/// same keys to the same values; only the program's path differs.
#[test]
fn the_agent_unit_file_and_the_nixos_module_agree() {
    let Some(result) = evaluate("tests/nix/eval-agent-module.nix") else {
        return;
    };
    let mut module: std::collections::BTreeMap<String, Vec<String>> =
        serde_json::from_value(result["unit"].clone()).unwrap();
    let mut file = unit_file_words(&std::fs::read_to_string(repo().join(AGENT_UNIT)).unwrap());

    let module_exec = module.remove("ExecStart").expect("the module's ExecStart");
    let file_exec = file.remove("ExecStart").expect("the unit's ExecStart");
    assert_eq!(module_exec[1..], file_exec[1..], "ExecStart arguments");
    assert!(
        module_exec[0].ends_with("/bin/phoenix-agent") && file_exec[0] == "/usr/bin/phoenix-agent",
        "{module_exec:?} {file_exec:?}"
    );
    assert_eq!(
        file.get("RestartPreventExitStatus"),
        Some(&vec!["78".to_owned()])
    );

    let keys: std::collections::BTreeSet<&String> = module.keys().chain(file.keys()).collect();
    let differ: Vec<String> = keys
        .into_iter()
        .filter(|key| module.get(*key) != file.get(*key))
        .map(|key| {
            format!(
                "{key}: module {:?}, {AGENT_UNIT} {:?}",
                module.get(key),
                file.get(key)
            )
        })
        .collect();
    assert!(differ.is_empty(), "{}", differ.join("\n"));
}

/// `systemd-analyze verify` loads the unit without a warning (with
/// ExecStart pointed at the built binary, which it checks exists).
#[test]
fn the_agent_unit_file_passes_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(repo().join(AGENT_UNIT)).unwrap();
    let built = bin("phoenix-agent");
    let here = unit.replace(
        "ExecStart=/usr/bin/phoenix-agent ",
        &format!("ExecStart={} ", built.display()),
    );
    assert_ne!(here, unit, "{AGENT_UNIT} starts /usr/bin/phoenix-agent");
    let path = dir.path().join("phoenix-agent.service");
    std::fs::write(&path, here).unwrap();
    let out = run(tool("systemd-analyze").arg("verify").arg(&path));
    // Only its own warnings: the host's units may have some of theirs.
    let warnings: Vec<&str> = std::str::from_utf8(&out.stderr)
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains("phoenix-agent"))
        .collect();
    assert!(
        out.status.success() && warnings.is_empty(),
        "{}",
        text(&out)
    );
}

// The first-boot step, with the module's default settings.

const DEFAULT_TOML: &str = "[postgres]\nbin_dir = \"/etc/phoenix/pkgs/postgresql/bin\"\n\n\
    [prometheus]\nbin = \"/etc/phoenix/pkgs/prometheus/bin/prometheus\"\n\n\
    [pushgateway]\nbin = \"/etc/phoenix/pkgs/pushgateway/bin/pushgateway\"\n";

struct FirstBoot {
    dir: tempfile::TempDir,
}

impl FirstBoot {
    fn new() -> FirstBoot {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("default.toml"), DEFAULT_TOML).unwrap();
        FirstBoot { dir }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("etc/phoenix/phoenix.toml")
    }

    /// `phoenix-supervisor first-boot`, as the NixOS module runs it before
    /// every start; `imds` is the metadata endpoint for --ec2-user-data.
    fn run(&self, imds: Option<&str>) -> Output {
        let mut command = Command::new(bin("phoenix-supervisor"));
        command
            .arg("first-boot")
            .arg("--config")
            .arg(self.config())
            .arg("--defaults")
            .arg(self.dir.path().join("default.toml"));
        if let Some(url) = imds {
            command
                .arg("--ec2-user-data")
                .env("PHOENIX_IMDS_ENDPOINT", url);
        }
        let out = run(&mut command);
        assert!(out.status.success(), "{}", text(&out));
        out
    }

    fn written(&self) -> String {
        let config = self.config();
        let mode = std::fs::symlink_metadata(&config)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{} mode", config.display());
        std::fs::read_to_string(config).unwrap()
    }

    fn check_config(&self) -> String {
        let out = run(Command::new(bin("phoenix-supervisor"))
            .arg("check-config")
            .arg("--config")
            .arg(self.config()));
        assert!(out.status.success(), "{}", text(&out));
        text(&out)
    }
}

/// A fake EC2 instance metadata service speaking IMDSv2: a token for a PUT
/// with a TTL header, user data only for that token. `None`: answers 404.
fn imds(user_data: Option<&'static str>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            let mut headers = Vec::new();
            reader.read_line(&mut request).unwrap_or_default();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                    break;
                }
                headers.push(line.trim().to_ascii_lowercase());
            }
            let has = |header: &str| headers.iter().any(|h| h.starts_with(header));
            let (status, body) = match request.split_whitespace().take(2).collect::<Vec<_>>()[..] {
                ["PUT", "/latest/api/token"] if has("x-aws-ec2-metadata-token-ttl-seconds:") => {
                    ("200 OK", "token-1")
                }
                ["GET", "/latest/user-data"] if has("x-aws-ec2-metadata-token: token-1") => {
                    match user_data {
                        Some(data) => ("200 OK", data),
                        None => ("404 Not Found", ""),
                    }
                }
                _ => ("401 Unauthorized", ""),
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    url
}

#[test]
fn first_boot_writes_the_defaults_once_and_never_overwrites_an_edit() {
    let boot = FirstBoot::new();
    boot.run(None);
    let written = boot.written();
    assert!(written.starts_with("# "), "a header comment:\n{written}");
    assert!(written.ends_with(DEFAULT_TOML), "{written}");
    let dir_mode = std::fs::metadata(boot.config().parent().unwrap())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o777, 0o755);
    assert!(boot.check_config().contains("ok (6 services"));

    let edited = format!("{written}\n[api]\nprice_per_series_month = 0.08\n");
    std::fs::write(boot.config(), &edited).unwrap();
    boot.run(None);
    boot.run(Some(&imds(Some("[api]\nprice_per_series_month = 0.01\n"))));
    assert_eq!(std::fs::read_to_string(boot.config()).unwrap(), edited);
    let leftovers: Vec<_> = std::fs::read_dir(boot.config().parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(leftovers, ["phoenix.toml"]);
}

#[test]
fn first_boot_takes_valid_ec2_user_data_over_the_defaults() {
    let boot = FirstBoot::new();
    let out = boot.run(Some(&imds(Some(
        "[postgres]\nport = 5433\n\n[api]\nlisten = \"0.0.0.0:8443\"\n\n\
         [services.worker]\ncommand = [\"/bin/sleep\", \"infinity\"]\n",
    ))));
    assert!(text(&out).contains("from EC2 user data"), "{}", text(&out));
    let written = boot.written();
    for expected in [
        "port = 5433",
        "listen = \"0.0.0.0:8443\"",
        "bin_dir = \"/etc/phoenix/pkgs/postgresql/bin\"",
        "bin = \"/etc/phoenix/pkgs/pushgateway/bin/pushgateway\"",
        "[services.worker]",
    ] {
        assert!(written.contains(expected), "{expected} in:\n{written}");
    }
    assert!(boot.check_config().contains("worker"));
}

#[test]
fn first_boot_refuses_invalid_ec2_user_data_and_keeps_it_aside() {
    let boot = FirstBoot::new();
    let user_data = "[postgres]\nprot = 5433\n";
    let out = boot.run(Some(&imds(Some(user_data))));
    let log = text(&out);
    assert!(log.contains("not a valid Phoenix config"), "{log}");
    assert!(log.contains("postgres.prot"), "the reason is logged: {log}");
    assert!(boot.written().ends_with(DEFAULT_TOML));
    let rejected = boot.config().with_file_name("user-data.rejected");
    assert_eq!(std::fs::read_to_string(&rejected).unwrap(), user_data);
    let mode = std::fs::metadata(&rejected).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn first_boot_without_user_data_or_metadata_service_uses_the_defaults() {
    let boot = FirstBoot::new();
    let out = boot.run(Some(&imds(None)));
    assert!(text(&out).contains("no EC2 user data"), "{}", text(&out));
    assert!(boot.written().ends_with(DEFAULT_TOML));

    let boot = FirstBoot::new();
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let out = boot.run(Some(&closed));
    assert!(
        text(&out).contains("no EC2 instance metadata service"),
        "{}",
        text(&out)
    );
    assert!(boot.written().ends_with(DEFAULT_TOML));
}
