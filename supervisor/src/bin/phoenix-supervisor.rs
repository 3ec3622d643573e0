//! Exit codes: 0 stopped cleanly (or config valid); 1 bad config or start-up
//! failure; 2 the shutdown timeout ran out and remaining processes were killed.

#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use phoenix_supervisor::cli_docs::{Docs, ExitCodes};
use phoenix_supervisor::config::{self, DEFAULT_CONFIG_PATH, LoadOptions};
use phoenix_supervisor::firstboot;
use phoenix_supervisor::pginit::{InitOptions, postgres_init};
use phoenix_supervisor::pid1;
use phoenix_supervisor::run::{RunOptions, run};
use phoenix_supervisor::supervisor::Outcome;

/// The exit codes, for `--help` and the manual page (docs/supervisor.md has the table).
const EXIT_CODES: ExitCodes = ExitCodes(&[
    (
        0,
        "run: every service stopped in order; check-config: the file is valid; alert-rules: printed; first-boot: written, or there already.",
    ),
    (
        1,
        "an invalid config or a start-up failure; check-config: an invalid file; alert-rules: an invalid file, or no rules; first-boot: failed.",
    ),
    (
        2,
        "run: the shutdown timeout ran out and the remaining processes were killed; an invalid command line.",
    ),
]);

#[derive(Parser)]
#[command(
    name = "phoenix-supervisor",
    version,
    about = "Runs the Phoenix appliance from one TOML file",
    long_about = "Runs the Phoenix appliance from one TOML file.\n\n\
                  Without a subcommand it runs; as PID 1 it runs whatever the arguments, \
                  and as the machine's init it powers off instead of exiting.",
    after_long_help = EXIT_CODES.help()
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Start and supervise every service (the default as PID 1).
    Run {
        #[arg(long, env = "PHOENIX_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Development mode: state in ./.phoenix-dev, loopback and unprivileged ports.
        #[arg(long)]
        dev: bool,
    },
    /// Validate the config file without starting anything.
    CheckConfig {
        #[arg(long, env = "PHOENIX_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        #[arg(long)]
        dev: bool,
    },
    /// Print the alert rules the managed Prometheus evaluates with this
    /// config file (its generated rules.yml), for `promtool` or a look.
    AlertRules {
        #[arg(long, env = "PHOENIX_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        #[arg(long)]
        dev: bool,
    },
    /// Write the config file from the image's defaults, and with
    /// --ec2-user-data from EC2 user data over them, unless it exists.
    FirstBoot {
        #[arg(long, env = "PHOENIX_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// The image's default settings (TOML).
        #[arg(long)]
        defaults: PathBuf,
        /// Read EC2 user data over IMDSv2 and merge it over the defaults.
        #[arg(long)]
        ec2_user_data: bool,
        /// The instance metadata service.
        #[arg(long, env = "PHOENIX_IMDS_ENDPOINT", default_value = firstboot::IMDS, hide = true)]
        imds: String,
    },
    /// Initialise the PostgreSQL data directory once (run by the postgres-init service).
    #[command(hide = true)]
    PostgresInit {
        #[arg(long)]
        bin_dir: PathBuf,
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        superuser: String,
        #[arg(long)]
        superuser_password_file: PathBuf,
    },
    #[command(flatten)]
    Docs(Docs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal, and never with NO_COLOR
        // (no-color.org): the journal and log files keep plain text.
        .with_ansi(
            std::io::stderr().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .init();
    let pid1 = pid1::is_pid1();
    // As PID 1 the kernel passes unknown boot parameters as arguments: run anyway.
    let command = match Cli::try_parse() {
        Ok(cli) => cli.command,
        Err(e) if pid1 => {
            tracing::warn!(error = %e.to_string().lines().next().unwrap_or(""), "ignoring init arguments");
            None
        }
        Err(e) => e.exit(),
    };
    let command = command.unwrap_or_else(|| Command::Run {
        config: std::env::var_os("PHOENIX_CONFIG")
            .map_or_else(|| DEFAULT_CONFIG_PATH.into(), PathBuf::from),
        dev: false,
    });
    let code = match command {
        Command::Run { config, dev } => run_supervisor(config, dev),
        Command::CheckConfig { config, dev } => {
            match config::load(&config, &LoadOptions::detect(dev)) {
                Ok(c) => {
                    let names: Vec<_> = c.services.iter().map(|s| s.name.as_str()).collect();
                    println!(
                        "{}: ok ({} services: {})",
                        config.display(),
                        names.len(),
                        names.join(", ")
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::AlertRules { config, dev } => {
            match config::load(&config, &LoadOptions::detect(dev)) {
                Ok(c) => {
                    let rules = c
                        .services
                        .iter()
                        .filter(|s| s.name == "prometheus")
                        .flat_map(|s| &s.files)
                        .find(|f| f.path.file_name().is_some_and(|n| n == "rules.yml"));
                    match rules {
                        Some(file) => {
                            print!("{}", file.contents);
                            ExitCode::SUCCESS
                        }
                        None => {
                            eprintln!(
                                "error: {}: no alert rules: [prometheus] or [alerts] is off",
                                config.display()
                            );
                            ExitCode::from(1)
                        }
                    }
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::FirstBoot {
            config,
            defaults,
            ec2_user_data,
            imds,
        } => match firstboot::first_boot(&firstboot::FirstBootOptions {
            config,
            defaults,
            imds: ec2_user_data.then_some(imds),
        }) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(1)
            }
        },
        Command::PostgresInit {
            bin_dir,
            data_dir,
            superuser,
            superuser_password_file,
        } => {
            match postgres_init(&InitOptions {
                bin_dir,
                data_dir,
                superuser,
                superuser_password_file,
            }) {
                Ok(true) => {
                    println!("initialised a new PostgreSQL cluster");
                    ExitCode::SUCCESS
                }
                Ok(false) => {
                    println!("PostgreSQL cluster already initialised");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Docs(docs) => docs.run(Cli::command(), &EXIT_CODES),
    };
    if pid1::is_machine_init() {
        if code != ExitCode::SUCCESS {
            // Leave the reason on the console long enough to be read.
            eprintln!("phoenix-supervisor: stopped with an error (above); powering off in 30 s");
            std::thread::sleep(std::time::Duration::from_secs(30));
        }
        pid1::power_off();
    }
    code
}

fn run_supervisor(config: PathBuf, dev: bool) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(run(RunOptions { config, dev }));
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(Outcome::Clean) => ExitCode::SUCCESS,
        Ok(Outcome::TimedOut) => ExitCode::from(2),
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
