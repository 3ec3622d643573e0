//! `phoenixctl restore`: asks what to restore when run bare in a terminal,
//! shows what will happen and asks for confirmation (unless `--yes`), then
//! has the supervisor do it, showing each step as it comes.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use phoenix_supervisor::backup::info::Inventory;
use phoenix_supervisor::backup::restore::{RestoreRequest, Target};
use phoenix_supervisor::control::{Request, Response, call, call_with_progress};

use crate::dialog::{confirm, fail, finish};

pub fn run(
    socket: &PathBuf,
    to: &Option<String>,
    backup: &Option<String>,
    latest: bool,
    from: &str,
    yes: bool,
) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let repo = if from == "s3" { 2 } else { 1 };
    let interactive = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let inventory = match runtime.block_on(call(socket, &Request::BackupList)) {
        Ok(Response::Backups(inv)) => *inv,
        Ok(Response::Error(e)) => return fail(&e),
        Ok(_) => return fail("unexpected reply to backup-list"),
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let target = match (to, backup, latest) {
        (Some(t), _, _) => Target::Time(t.clone()),
        (_, Some(b), _) => Target::Backup(b.clone()),
        (_, _, true) => Target::Latest,
        _ if interactive => match ask_target(&inventory, repo) {
            Some(t) => t,
            None => return fail("nothing chosen; nothing restored"),
        },
        _ => {
            return fail(
                "say what to restore to: --to TIME, --backup LABEL or --latest (or run it in a terminal to choose)",
            );
        }
    };
    let mut request = RestoreRequest {
        target,
        repo,
        dry_run: true,
    };
    // The supervisor's plan, before anything is asked or touched.
    let describe = match runtime.block_on(call(socket, &Request::Restore(request.clone()))) {
        Ok(Response::Ok(d)) => d,
        Ok(Response::Error(e)) => return fail(&e),
        Ok(_) => return fail("unexpected reply to restore"),
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    request.dry_run = false;
    println!("This restores {describe}.");
    println!(
        "The API and PostgreSQL stop until it is done; the current data directory is kept aside, not deleted."
    );
    if let Err(code) = confirm("restore", yes, interactive, "nothing restored") {
        return code;
    }
    let bar = indicatif::ProgressBar::new_spinner();
    if interactive {
        bar.enable_steady_tick(Duration::from_millis(120));
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let reply = runtime.block_on(call_with_progress(
        socket,
        &Request::Restore(request),
        |step| {
            if interactive {
                bar.set_message(step.to_string());
            }
            bar.println(format!("· {step}"));
            if !interactive {
                println!("· {step}");
            }
        },
    ));
    bar.finish_and_clear();
    finish(reply, "restore")
}

/// Lists the backups and the window, and reads the operator's choice.
fn ask_target(inventory: &Inventory, repo: u32) -> Option<Target> {
    let mine = Inventory {
        backups: inventory
            .backups
            .iter()
            .filter(|b| b.repo == repo)
            .cloned()
            .collect(),
        ..inventory.clone()
    };
    crate::print_backups(&mine);
    if let Some(oldest) = mine.backups.iter().map(|b| b.stopped_at).min() {
        let oldest = chrono::DateTime::<chrono::Utc>::from_timestamp(oldest, 0).unwrap_or_default();
        println!(
            "\nRestorable: any time from {} to now, a backup above, or the latest state.",
            oldest.format("%Y-%m-%d %H:%M:%S UTC")
        );
    }
    print!("Restore to (a time as \"YYYY-MM-DD HH:MM:SS\" UTC, a backup label, or \"latest\"): ");
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).ok()?;
    let line = line.trim();
    if line.is_empty() {
        return None;
    }
    Some(if line == "latest" {
        Target::Latest
    } else if mine.backups.iter().any(|b| b.label == line) {
        Target::Backup(line.to_string())
    } else {
        Target::Time(line.to_string())
    })
}
