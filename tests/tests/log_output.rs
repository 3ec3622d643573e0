//! Log lines are plain text unless a person reads them at a terminal: no
//! colour codes in the journal or in files, and none with NO_COLOR.

use std::process::Command;
use std::time::Duration;

use phoenix_tests::{NO_BUILTINS, Supervisor, bin, testprog};

const ESCAPE: &str = "\x1b[";

/// Arguments that make `phoenix-api` log a few lines and exit: no database
/// answers on port 1.
const API_WITHOUT_DATABASE: [&str; 4] = [
    "--database-url",
    "postgres://phoenix@127.0.0.1:1/phoenix",
    "--database-connect-timeout",
    "1s",
];

/// Stdout and stderr of `program args` run on a pseudo-terminal (util-linux
/// `script`), with `NO_COLOR` set to `no_color` or unset.
fn at_a_terminal(program: &str, args: &[&str], no_color: Option<&str>) -> String {
    let line = std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let mut cmd = Command::new("script");
    cmd.args(["-qec", &line, "/dev/null"]);
    match no_color {
        Some(v) => cmd.env("NO_COLOR", v),
        None => cmd.env_remove("NO_COLOR"),
    };
    let out = cmd.output().expect("run script");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn log_lines_carry_no_colour_codes_when_stderr_is_not_a_terminal() {
    // A running supervisor, its stderr in a file, logging its services' lines.
    let mut s = Supervisor::config(&format!(
        "{NO_BUILTINS}[services.w]\ncommand = [\"{}\", \"run\"]\n",
        testprog()
    ));
    s.start();
    s.wait_all_ready(Duration::from_secs(10));
    let log = s.stderr();
    assert!(log.contains("INFO"), "{log}");
    assert!(!log.contains(ESCAPE), "{log:?}");

    // Both binaries with stderr to a pipe.
    let out = Command::new(bin("phoenix-supervisor"))
        .args(["run", "--config", "/nonexistent/phoenix.toml"])
        .env_remove("NO_COLOR")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ERROR"), "{err}");
    assert!(!err.contains(ESCAPE), "{err:?}");
    let out = Command::new(bin("phoenix-api"))
        .args(API_WITHOUT_DATABASE)
        .env_remove("NO_COLOR")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("WARN"), "{err}");
    assert!(!err.contains(ESCAPE), "{err:?}");
}

#[test]
fn no_color_turns_colour_off_at_a_terminal() {
    let supervisor = bin("phoenix-supervisor").display().to_string();
    let api = bin("phoenix-api").display().to_string();
    for (program, args) in [
        (
            supervisor.as_str(),
            &["run", "--config", "/nonexistent/phoenix.toml"][..],
        ),
        (api.as_str(), &API_WITHOUT_DATABASE[..]),
    ] {
        // At a terminal there is colour, also with an empty NO_COLOR
        // (no-color.org: only a non-empty value counts)...
        for no_color in [None, Some("")] {
            let shown = at_a_terminal(program, args, no_color);
            assert!(shown.contains(ESCAPE), "{program} {no_color:?}: {shown:?}");
        }
        // ...and none with NO_COLOR set.
        let shown = at_a_terminal(program, args, Some("1"));
        assert!(shown.contains("phoenix"), "{program}: {shown}");
        assert!(!shown.contains(ESCAPE), "{program}: {shown:?}");
    }
}
