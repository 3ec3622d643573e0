//! Shell completions and manual pages as the Nix package installs them:
//! `completions SHELL` and `man DIR`, the hidden subcommands of
//! `phoenixctl` and `phoenix-supervisor`, run on the built binaries. No
//! supervisor runs: neither needs one.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use phoenix_tests::bin;

fn run(binary: &str, args: &[&str]) -> Output {
    let out = Command::new(bin(binary))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {binary}: {e}"));
    assert!(
        out.status.success(),
        "{binary} {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn completions(binary: &str, shell: &str) -> String {
    let script = String::from_utf8(run(binary, &["completions", shell]).stdout).unwrap();
    assert!(!script.trim().is_empty(), "{binary}: empty {shell} script");
    script
}

fn assert_has(text: &str, what: &str, wanted: &[&str]) {
    for w in wanted {
        assert!(text.contains(w), "{what} has no {w}:\n{text}");
    }
}

fn assert_lacks(text: &str, what: &str, unwanted: &[&str]) {
    for u in unwanted {
        assert!(!text.contains(u), "{what} offers {u}:\n{text}");
    }
}

#[test]
fn phoenixctl_completions_offer_its_subcommands_and_flags() {
    let bash = completions("phoenixctl", "bash");
    assert_has(
        &bash,
        "bash",
        &[
            "complete -F _phoenixctl",
            "restore",
            "--latest",
            "--to",
            "--from",
            "local s3",
            "backup",
            "verify",
            "certs",
            "--socket",
        ],
    );
    let zsh = completions("phoenixctl", "zsh");
    assert!(zsh.starts_with("#compdef phoenixctl"), "{zsh}");
    assert_has(
        &zsh,
        "zsh",
        &["restore", "--latest", "backup", "verify", "scaling"],
    );
    let fish = completions("phoenixctl", "fish");
    assert_has(
        &fish,
        "fish",
        &[
            "complete -c phoenixctl",
            "restore",
            "-l latest",
            "backup",
            "verify",
        ],
    );
    // The generators' own subcommands are hidden, and not offered.
    for (shell, script) in [("bash", &bash), ("zsh", &zsh), ("fish", &fish)] {
        assert_lacks(script, shell, &["completions", "__subcmd__man", "man)"]);
    }
}

#[test]
fn phoenix_supervisor_completions_leave_out_the_hidden_parts() {
    for shell in ["bash", "zsh", "fish"] {
        let script = completions("phoenix-supervisor", shell);
        assert_has(&script, shell, &["check-config", "first-boot", "config"]);
        assert_lacks(
            &script,
            shell,
            &["postgres-init", "--imds", "-l imds", "completions"],
        );
    }
}

/// Roff writes `-` as `\-`; the text as a reader sees it.
fn page(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .replace("\\-", "-")
}

#[test]
fn manual_pages_one_per_command_and_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let man = dir.path().join("man");
    let man_arg = man.to_str().unwrap();
    let mut listed: Vec<PathBuf> = Vec::new();
    for binary in ["phoenixctl", "phoenix-supervisor"] {
        let out = String::from_utf8(run(binary, &["man", man_arg]).stdout).unwrap();
        listed.extend(out.lines().map(PathBuf::from));
    }
    let on_disk: BTreeSet<String> = std::fs::read_dir(&man)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let printed: BTreeSet<String> = listed
        .iter()
        .map(|p| {
            assert_eq!(p.parent(), Some(man.as_path()), "{}", p.display());
            p.file_name().unwrap().to_string_lossy().into_owned()
        })
        .collect();
    assert_eq!(printed, on_disk, "each page written is printed");
    for expected in [
        "phoenixctl.1",
        "phoenixctl-status.1",
        "phoenixctl-health.1",
        "phoenixctl-restore.1",
        "phoenixctl-backup.1",
        "phoenixctl-backup-now.1",
        "phoenixctl-backup-verify.1",
        "phoenixctl-certs-renew.1",
        "phoenix-supervisor.1",
        "phoenix-supervisor-run.1",
        "phoenix-supervisor-check-config.1",
        "phoenix-supervisor-first-boot.1",
    ] {
        assert!(on_disk.contains(expected), "no {expected} in {on_disk:?}");
    }
    for name in &on_disk {
        assert!(name.ends_with(".1"), "{name}");
        for hidden in ["postgres-init", "completions", "-man", "help"] {
            assert!(
                !name.contains(hidden),
                "a page for a hidden command: {name}"
            );
        }
    }

    let restore = page(&man, "phoenixctl-restore.1");
    assert!(restore.starts_with(".ie "), "roff:\n{restore}");
    assert_has(
        &restore,
        "phoenixctl-restore.1",
        &[
            ".TH phoenixctl-restore 1",
            "phoenixctl restore",
            "--to",
            "RFC 3339",
            "--backup",
            "--latest",
            "--from",
            "s3",
            "--yes",
        ],
    );
    let ctl = page(&man, "phoenixctl.1");
    assert_has(
        &ctl,
        "phoenixctl.1",
        &[
            "--socket",
            "PHOENIX_SOCKET",
            "phoenixctl-restore(1)",
            "phoenixctl-backup(1)",
            ".SH \"EXIT STATUS\"",
            "the supervisor cannot be reached",
        ],
    );
    let supervisor = page(&man, "phoenix-supervisor.1");
    assert_has(
        &supervisor,
        "phoenix-supervisor.1",
        &[
            "phoenix-supervisor-check-config(1)",
            ".SH \"EXIT STATUS\"",
            "shutdown timeout",
        ],
    );
    assert_lacks(&supervisor, "phoenix-supervisor.1", &["postgres-init"]);
    assert_has(
        &page(&man, "phoenix-supervisor-first-boot.1"),
        "first-boot page",
        &["--defaults", "--ec2-user-data"],
    );
    assert_lacks(
        &page(&man, "phoenix-supervisor-first-boot.1"),
        "first-boot page",
        &["--imds"],
    );
}

#[test]
fn manual_pages_into_a_place_that_cannot_be_a_directory_fail_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-directory");
    std::fs::write(&file, "").unwrap();
    let target = file.join("man1");
    let out = Command::new(bin("phoenixctl"))
        .arg("man")
        .arg(&target)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not-a-directory/man1"),
        "the path is named: {stderr}"
    );
}
