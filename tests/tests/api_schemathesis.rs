//! Property-based fuzzing of the whole documented API with schemathesis
//! (PyPI), driven from its OpenAPI document, on both listeners: no request
//! may produce a 5xx.

use std::process::Command;

use phoenix_tests::Stack;

/// Schemathesis's command line, with a strategy for the remote-write body,
/// a media type it has no serializer for: any bytes, which the API must
/// refuse with a 4xx whatever they are.
const SCHEMATHESIS: &str = "import sys\n\
import schemathesis\n\
from hypothesis import strategies as st\n\
from schemathesis.cli import schemathesis as cli\n\
schemathesis.openapi.media_type('application/x-protobuf', st.binary(max_size=4096))\n\
sys.argv[0] = 'st'\n\
sys.exit(cli())\n";

/// Run schemathesis against `base` for the operations `filter` selects.
fn schemathesis(s: &Stack, base: &str, credential: &str, filter: &[&str]) {
    let schema = s.ports.api_url("/api/v1/openapi.json");
    let out = Command::new("python3")
        .args(["-c", SCHEMATHESIS])
        .args(["run", &schema, "--url", base, "--tls-verify", "false"])
        .args(["--header", &format!("Authorization: Bearer {credential}")])
        .args(filter)
        .args([
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "25",
            "--request-timeout",
            "10",
        ])
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

#[test]
fn schemathesis_finds_no_server_errors_on_either_listener() {
    let s = Stack::start("");
    let admin = s.admin_token();

    // Agents first: fuzzing the user listener may disable the admin (once
    // it has made another) and so end the admin's token.
    let credential = s.enroll_one(&admin, "fuzz-agent").credential;
    // The agent listener's paths, with the agent's credential. The long
    // poll is left out: each call may hold for its whole wait.
    schemathesis(
        &s,
        &s.ports.agent_url(""),
        &credential,
        &[
            "--include-path-regex",
            "^/api/v1/agent/|^/api/v1/agents/enroll$",
            "--exclude-path",
            "/api/v1/agent/tasks",
        ],
    );

    // People and tools: everything but the agent listener's paths. Logging
    // out would end the fuzzer's own session halfway.
    schemathesis(
        &s,
        &s.ports.api_url(""),
        &admin,
        &[
            "--exclude-path-regex",
            "^/api/v1/agent/|^/api/v1/agents/enroll$",
            "--exclude-path",
            "/api/v1/auth/logout",
        ],
    );
}
