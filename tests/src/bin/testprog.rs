//! Tiny, predictable child programs for the supervisor's tests and benchmark.
//!
//! phoenix-testprog serve PORT [--delay-ms N] [--hang-after-ms N] [--log FILE --name NAME]
//!     listen on 127.0.0.1:PORT (after the delay), print "listening", answer
//!     every request with HTTP 200; after --hang-after-ms stop answering.
//! phoenix-testprog exit CODE [--after-ms N]       exit with CODE
//! phoenix-testprog run [--log FILE --name NAME] [--ignore-term]
//!     record start/stop lines in FILE; exit 0 on SIGTERM unless ignored
//! phoenix-testprog orphans COUNT LINGER_MS        leave COUNT children that outlive us
//! phoenix-testprog sleep MS                        sleep, then exit 0

#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn arg_after(args: &[String], flag: &str) -> Option<String> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn ms(v: Option<String>) -> Option<Duration> {
    v.map(|s| Duration::from_millis(s.parse().expect("milliseconds")))
}

fn record(args: &[String], what: &str) {
    if let (Some(file), Some(name)) = (arg_after(args, "--log"), arg_after(args, "--name")) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)
            .expect("log file");
        writeln!(f, "{what} {name} {}", std::process::id()).expect("write log");
    }
}

/// A flag set by SIGTERM. With `ignore`, SIGTERM is caught and dropped, so
/// only SIGKILL ends the program.
fn term_flag(ignore: bool) -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let target = if ignore {
        Arc::new(AtomicBool::new(false))
    } else {
        flag.clone()
    };
    signal_hook::flag::register(signal_hook::consts::SIGTERM, target).expect("SIGTERM handler");
    flag
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cmd = args.first().map(String::as_str).unwrap_or("");
    match cmd {
        "serve" => {
            let port: u16 = args[1].parse().expect("port");
            let stop = term_flag(false);
            if let Some(d) = ms(arg_after(&args, "--delay-ms")) {
                std::thread::sleep(d);
            }
            let hang_after = ms(arg_after(&args, "--hang-after-ms"));
            let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind");
            listener.set_nonblocking(true).expect("nonblocking");
            record(&args, "start");
            println!("listening on {port}");
            let started = Instant::now();
            while !stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        if hang_after.is_some_and(|h| started.elapsed() >= h) {
                            std::mem::forget(stream);
                            continue;
                        }
                        stream.set_nonblocking(false).ok();
                        stream
                            .set_read_timeout(Some(Duration::from_millis(200)))
                            .ok();
                        let mut buf = [0u8; 1024];
                        let _ = stream.read(&mut buf);
                        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n");
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
            record(&args, "stop");
        }
        "exit" => {
            let code: i32 = args[1].parse().expect("code");
            if let Some(d) = ms(arg_after(&args, "--after-ms")) {
                std::thread::sleep(d);
            }
            eprintln!("exiting with {code}");
            std::process::exit(code);
        }
        "run" => {
            let ignore = args.iter().any(|a| a == "--ignore-term");
            let stop = term_flag(ignore);
            record(&args, "start");
            println!("running");
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(5));
            }
            record(&args, "stop");
        }
        "orphans" => {
            let count: usize = args[1].parse().expect("count");
            let linger = &args[2];
            let me = std::env::current_exe().expect("exe");
            for _ in 0..count {
                // A group of their own, as daemons do, so they outlive the
                // group of the service and are inherited by the reaper.
                let mut cmd = std::process::Command::new(&me);
                cmd.args(["sleep", linger]);
                std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
                // Deliberately not waited for: these are the orphans.
                #[allow(clippy::zombie_processes)]
                cmd.spawn().expect("spawn");
            }
            println!("left {count} orphans");
        }
        "sleep" => std::thread::sleep(ms(args.get(1).cloned()).expect("ms")),
        _ => {
            eprintln!("usage: phoenix-testprog serve|exit|run|orphans|sleep ...");
            std::process::exit(64);
        }
    }
}
