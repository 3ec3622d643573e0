//! What `restore` and `migrate-database` share: asking the operator to
//! confirm by typing a word, and turning the supervisor's reply into output
//! and an exit code.

use std::io::{BufRead, Write};
use std::process::ExitCode;

use phoenix_supervisor::control::Response;

pub fn fail(why: &str) -> ExitCode {
    eprintln!("error: {why}");
    ExitCode::from(1)
}

/// Goes on when `yes`, or when the operator types `word` in a terminal;
/// otherwise the exit code, having said why nothing was done (`nothing` is
/// what was not done, e.g. "nothing restored").
pub fn confirm(word: &str, yes: bool, interactive: bool, nothing: &str) -> Result<(), ExitCode> {
    if yes {
        return Ok(());
    }
    if !interactive {
        return Err(fail(&format!(
            "add --yes to {word} without a terminal to confirm in"
        )));
    }
    print!("Type \"{word}\" to go on: ");
    let _ = std::io::stdout().flush();
    let mut answer = String::new();
    let _ = std::io::stdin().lock().read_line(&mut answer);
    if answer.trim() != word {
        return Err(fail(&format!("not confirmed; {nothing}")));
    }
    Ok(())
}

/// Prints the final reply to `command` and gives its exit code: 0 done, 1
/// refused or failed, 2 the supervisor could not be reached.
pub fn finish(reply: anyhow::Result<Response>, command: &str) -> ExitCode {
    match reply {
        Ok(Response::Ok(done)) => {
            println!("{done}");
            ExitCode::SUCCESS
        }
        Ok(Response::Error(e)) => fail(&e),
        Ok(_) => fail(&format!("unexpected reply to {command}")),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
