//! `phoenixctl migrate-database`: checks the target and says what would
//! move, asks for confirmation (unless `--yes`), then has the supervisor
//! move the database, showing each step as it comes.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use phoenix_supervisor::backup::migrate::MigrateRequest;
use phoenix_supervisor::control::{Request, Response, call_with_progress};

use crate::dialog::{confirm, fail, finish};

pub fn run(
    socket: &PathBuf,
    to: &str,
    password_file: &Path,
    ca_file: &Option<PathBuf>,
    dry_run: bool,
    yes: bool,
) -> ExitCode {
    // Read here, by the operator's own process: the supervisor never opens
    // a path given on a command line.
    let password = match std::fs::read_to_string(password_file) {
        Ok(p) if !p.trim().is_empty() => p.trim_end_matches(['\n', '\r']).to_string(),
        Ok(_) => return fail(&format!("{} is empty", password_file.display())),
        Err(e) => return fail(&format!("{}: {e}", password_file.display())),
    };
    let ca_file = match ca_file {
        Some(ca) => match std::path::absolute(ca) {
            Ok(ca) => Some(ca),
            Err(e) => return fail(&format!("{}: {e}", ca.display())),
        },
        None => None,
    };
    let mut request = MigrateRequest {
        url: to.to_string(),
        password,
        ca_file,
        dry_run: true,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let ask = |request: &MigrateRequest, show: &dyn Fn(&str)| {
        runtime.block_on(call_with_progress(
            socket,
            &Request::MigrateDatabase(request.clone()),
            show,
        ))
    };
    let plan = match ask(&request, &|_| {}) {
        Ok(Response::Ok(plan)) => plan,
        Ok(Response::Error(e)) => return fail(&e),
        Ok(_) => return fail("unexpected reply to migrate-database"),
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    println!("{plan}.");
    if dry_run {
        return ExitCode::SUCCESS;
    }
    println!(
        "The API stops while the database is copied; the built-in PostgreSQL then stops, its data kept."
    );
    let interactive = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    if let Err(code) = confirm("migrate", yes, interactive, "nothing moved") {
        return code;
    }
    request.dry_run = false;
    finish(
        ask(&request, &|step| println!("· {step}")),
        "migrate-database",
    )
}
