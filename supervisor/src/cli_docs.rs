//! Shell completions and manual pages of `phoenix-supervisor` and
//! `phoenixctl`, made from their clap definitions, never written by hand.
//! Each binary takes the hidden subcommands of [`Docs`] and hands its own
//! `clap::Command` to [`Docs::run`]:
//!
//! - `completions SHELL` prints the completion script for bash, zsh, fish
//!   (or elvish, PowerShell) to standard output;
//! - `man DIR` writes one page per command and visible subcommand into DIR
//!   (`phoenixctl.1`, `phoenixctl-restore.1`, `phoenixctl-backup-now.1`,
//!   ...) and prints their paths.
//!
//! The Nix package runs both at install time. Hidden subcommands and
//! arguments (these two, `postgres-init`, `--imds`) are left out of both.
//! A binary's [`ExitCodes`] end its `--help` and are the EXIT STATUS
//! section of its page.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Command, Subcommand};
pub use clap_complete::Shell;
use roff::{Roff, bold, roman};

/// What each exit code of a binary means, one line each.
pub struct ExitCodes(pub &'static [(u8, &'static str)]);

impl ExitCodes {
    /// The text for `#[command(after_long_help = ...)]`.
    pub fn help(&self) -> String {
        let mut text = String::from("Exit status:");
        for (code, meaning) in self.0 {
            text.push_str(&format!("\n  {code}  {meaning}"));
        }
        text
    }

    /// The EXIT STATUS section of a manual page.
    fn roff(&self) -> String {
        let mut roff = Roff::new();
        roff.control("SH", ["EXIT STATUS"]);
        for (code, meaning) in self.0 {
            roff.control("TP", []);
            roff.text([bold(code.to_string())]);
            roff.text([roman(*meaning)]);
        }
        roff.to_roff()
    }
}

/// The two hidden subcommands that each binary flattens into its own.
#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum Docs {
    /// Print the shell completion script to standard output.
    #[command(hide = true)]
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Write the manual pages (section 1) into DIR, creating it.
    #[command(hide = true)]
    Man { dir: PathBuf },
}

impl Docs {
    /// Does it for the binary defined by `cmd` (its `CommandFactory::command()`),
    /// whose exit codes are `exit`: exit 0, or 1 with the reason on stderr.
    pub fn run(&self, cmd: Command, exit: &ExitCodes) -> ExitCode {
        let done = match self {
            Docs::Completions { shell } => {
                io::stdout().lock().write_all(&completions(&cmd, *shell))
            }
            Docs::Man { dir } => man_pages(cmd, exit, dir).and_then(|files| {
                let mut out = io::stdout().lock();
                files
                    .iter()
                    .try_for_each(|f| writeln!(out, "{}", f.display()))
            }),
        };
        match done {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        }
    }
}

/// The completion script of `cmd` for `shell`, invoked as `cmd`'s name.
pub fn completions(cmd: &Command, shell: Shell) -> Vec<u8> {
    let mut visible = visible(cmd);
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut visible, cmd.get_name(), &mut script);
    script
}

/// Writes the manual pages of `cmd` and of each visible subcommand, at any
/// depth, into `dir` as `<command>[-<subcommand>...].1`; returns their paths,
/// the command's first. Every page is of the command's version; the
/// command's own page has `exit` as its EXIT STATUS section.
pub fn man_pages(cmd: Command, exit: &ExitCodes, dir: &Path) -> io::Result<Vec<PathBuf>> {
    fn below(cmd: &Command, source: &str, dir: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            out.push(man_page(sub, source, None, dir)?);
            below(sub, source, dir, out)?;
        }
        Ok(())
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
    let source = format!(
        "{} {}",
        cmd.get_name(),
        cmd.get_version().unwrap_or_default()
    );
    // Built, each subcommand knows its full name (`phoenixctl-restore`) and
    // the global flags; `help` is no page of its own.
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let mut written = vec![man_page(&cmd, &source, Some(exit), dir)?];
    below(&cmd, &source, dir, &mut written)?;
    Ok(written)
}

/// One page: clap_mangen's, with the exit codes in place of its EXTRA
/// section (the after-help), before VERSION.
fn man_page(
    cmd: &Command,
    source: &str,
    exit: Option<&ExitCodes>,
    dir: &Path,
) -> io::Result<PathBuf> {
    // No date, so a page is the same in every build; the footer names the
    // binary and its version.
    let man = clap_mangen::Man::new(cmd.clone().after_long_help(None::<&str>)).source(source);
    let mut page = Vec::new();
    man.render(&mut page)?;
    let mut page = String::from_utf8(page).map_err(io::Error::other)?;
    if let Some(exit) = exit {
        let at = page.find("\n.SH VERSION\n").map_or(page.len(), |at| at + 1);
        page.insert_str(at, &exit.roff());
    }
    let path = dir.join(man.get_filename());
    std::fs::write(&path, page)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    Ok(path)
}

/// `cmd` without its hidden subcommands and arguments, at any depth:
/// clap_complete would offer them, and clap has no way to remove one, so
/// the command is put together again from what is visible. Only what the
/// completion scripts read is kept (names, help, version, arguments).
fn visible(cmd: &Command) -> Command {
    let mut out = Command::new(cmd.get_name().to_string());
    if let Some(about) = cmd.get_about() {
        out = out.about(about.clone());
    }
    if let Some(version) = cmd.get_version() {
        out = out.version(version.to_string());
    }
    out.args(cmd.get_arguments().filter(|a| !a.is_hide_set()).cloned())
        .subcommands(
            cmd.get_subcommands()
                .filter(|s| !s.is_hide_set())
                .map(visible),
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, ArgAction};

    const EXIT: ExitCodes = ExitCodes(&[(0, "fine."), (3, "check-config failed.")]);

    fn example() -> Command {
        Command::new("tool")
            .version("1.2.3")
            .about("A tool")
            .arg(
                Arg::new("json")
                    .long("json")
                    .global(true)
                    .action(ArgAction::SetTrue),
            )
            .arg(Arg::new("secret-flag").long("secret-flag").hide(true))
            .subcommand(
                Command::new("shown")
                    .about("Shown to people")
                    .arg(Arg::new("latest").long("latest").action(ArgAction::SetTrue))
                    .arg(Arg::new("internal-knob").long("internal-knob").hide(true))
                    .subcommand(Command::new("deeper").about("One level down")),
            )
            .subcommand(Command::new("secret-command").hide(true))
    }

    #[test]
    fn completions_offer_what_is_visible_and_nothing_hidden() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let script = String::from_utf8(completions(&example(), shell)).unwrap();
            for wanted in ["shown", "latest", "deeper", "json"] {
                assert!(script.contains(wanted), "{shell}: no {wanted}:\n{script}");
            }
            for hidden in ["secret-flag", "secret-command", "internal-knob"] {
                assert!(
                    !script.contains(hidden),
                    "{shell}: offers {hidden}:\n{script}"
                );
            }
        }
    }

    #[test]
    fn man_pages_one_per_visible_command_with_their_options() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("new/man1");
        let written = man_pages(example(), &EXIT, &out).unwrap();
        let names: Vec<_> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["tool.1", "tool-shown.1", "tool-shown-deeper.1"]);
        let mut listed: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        listed.sort();
        assert_eq!(listed, ["tool-shown-deeper.1", "tool-shown.1", "tool.1"]);
        let page = std::fs::read_to_string(out.join("tool-shown.1")).unwrap();
        assert!(page.starts_with(".ie \\n(.g .ds Aq"), "roff:\n{page}");
        assert!(page.contains("latest"), "{page}");
        assert!(page.contains("json"), "global flags on every page:\n{page}");
        assert!(!page.contains("internal"), "{page}");
        assert!(
            !page.contains("EXIT STATUS"),
            "only the command's own page:\n{page}"
        );
        assert!(
            page.contains("tool 1.2.3"),
            "the command's version:\n{page}"
        );

        let root = std::fs::read_to_string(out.join("tool.1")).unwrap();
        let exit = root.find(".SH \"EXIT STATUS\"\n").expect(&root);
        let version = root.find(".SH VERSION").expect(&root);
        assert!(exit < version, "{root}");
        assert!(
            root[exit..].starts_with(
                ".SH \"EXIT STATUS\"\n.TP\n\\fB0\\fR\nfine.\n.TP\n\\fB3\\fR\ncheck\\-config failed.\n"
            ),
            "{root}"
        );
        assert!(!root.contains("Exit status:"), "no EXTRA copy:\n{root}");
    }

    #[test]
    fn exit_codes_end_the_long_help() {
        let mut cmd = example().after_long_help(EXIT.help());
        let help = cmd.render_long_help().to_string();
        assert!(
            help.ends_with("Exit status:\n  0  fine.\n  3  check-config failed.\n"),
            "{help}"
        );
    }

    #[test]
    fn man_pages_into_an_unwritable_place_name_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, "").unwrap();
        let e = man_pages(example(), &EXIT, &file.join("man1")).unwrap_err();
        assert!(e.to_string().contains("a-file/man1"), "{e}");
    }
}
