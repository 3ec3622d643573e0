//! Property-based fuzzing of the whole documented API with schemathesis
//! (PyPI), driven from its OpenAPI document: no request may produce a 5xx.

use std::process::Command;

use phoenix_tests::Stack;

#[test]
fn schemathesis_finds_no_server_errors() {
    let s = Stack::start("");
    let admin = s.admin_token();
    let schema = s.ports.api_url("/api/v1/openapi.json");
    let out = Command::new("python3")
        .args(["-c", "import sys; from schemathesis.cli import schemathesis; sys.argv[0] = 'st'; sys.exit(schemathesis())"])
        .args(["run", &schema, "--url", &s.ports.api_url(""), "--tls-verify", "false"])
        .args(["--header", &format!("Authorization: Bearer {admin}")])
        // Logging out would end the fuzzer's own session halfway.
        .args(["--exclude-path", "/api/v1/auth/logout"])
        .args(["--checks", "not_a_server_error", "--max-examples", "25", "--request-timeout", "10"])
        // Its cache and reports go to the stack's temp dir, not the work tree.
        .current_dir(s.sup.dir.path())
        .output()
        .expect("run schemathesis (scripts/setup.sh installs it with pip)");
    let report = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !report.contains("No module named"),
        "schemathesis is not installed: run scripts/setup.sh\n{report}"
    );
    println!("{report}");
    assert!(
        out.status.success(),
        "schemathesis found failures:\n{report}\n--- supervisor log ---\n{}",
        s.sup.stderr()
    );
    assert!(report.contains("passed"), "{report}");
}
