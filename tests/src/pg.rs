//! A PostgreSQL 15 of the test's own, standing in for a managed database
//! (RDS): its own data directory and port, scram-sha-256 passwords, and
//! with TLS only `hostssl` connections, under a certificate from a CA of
//! the test's own. It runs as the `postgres` user that the Debian package
//! creates (PostgreSQL refuses root).

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{free_port, wait_until};

pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// The password of the `phoenix` role the API logs in as.
pub const PHOENIX_PASSWORD: &str = "external-db-password-7f3a";
const SUPERUSER_PASSWORD: &str = "external-superuser-password-91c2";

pub struct ExternalPostgres {
    dir: tempfile::TempDir,
    pub port: u16,
    child: Child,
    /// The CA that signed the server's certificate (with TLS).
    pub ca_file: PathBuf,
    /// Another CA, which did not: for the wrong-CA case.
    pub wrong_ca_file: PathBuf,
    /// The `phoenix` role's password, mode 0600.
    pub password_file: PathBuf,
}

fn postgres_ids() -> (nix::unistd::Uid, nix::unistd::Gid) {
    let user = nix::unistd::User::from_name("postgres")
        .unwrap()
        .expect("the postgres user (scripts/setup.sh installs postgresql-15)");
    (user.uid, user.gid)
}

fn as_postgres(program: &str) -> Command {
    let (uid, gid) = postgres_ids();
    let mut c = Command::new(Path::new(PG_BIN).join(program));
    c.uid(uid.as_raw()).gid(gid.as_raw());
    c
}

fn ca(name: &str) -> (rcgen::Certificate, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    (params.self_signed(&key).unwrap(), key)
}

impl ExternalPostgres {
    /// Starts it and creates the empty `phoenix` database owned by the
    /// `phoenix` role. `tls`: only TLS connections are admitted.
    pub fn start(tls: bool) -> ExternalPostgres {
        let dir = tempfile::Builder::new()
            .prefix("phx-extpg")
            .tempdir()
            .unwrap();
        let (uid, gid) = postgres_ids();
        std::os::unix::fs::chown(dir.path(), Some(uid.as_raw()), Some(gid.as_raw())).unwrap();
        // The API's user reads the CA and password files here.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let write = |name: &str, text: &str, mode: u32| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            std::os::unix::fs::chown(&p, Some(uid.as_raw()), Some(gid.as_raw())).unwrap();
            p
        };
        let superuser_pw = write("superuser-password", SUPERUSER_PASSWORD, 0o600);
        let password_file = dir.path().join("phoenix-password");
        std::fs::write(&password_file, PHOENIX_PASSWORD).unwrap();
        std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o644)).unwrap();

        let (ca_cert, ca_key) = ca("Phoenix test RDS CA");
        let (wrong, _) = ca("Some other CA");
        let server_key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        let server = params.signed_by(&server_key, &ca_cert, &ca_key).unwrap();
        let ca_file = write("ca.pem", &ca_cert.pem(), 0o644);
        let wrong_ca_file = write("wrong-ca.pem", &wrong.pem(), 0o644);
        write("server.crt", &server.pem(), 0o644);
        write("server.key", &server_key.serialize_pem(), 0o600);

        let data = dir.path().join("data");
        let out = as_postgres("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=scram-sha-256", "--encoding=UTF8"])
            .arg(format!("--pwfile={}", superuser_pw.display()))
            .stdout(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let host = if tls { "hostssl" } else { "host" };
        std::fs::write(
            data.join("pg_hba.conf"),
            format!(
                "local all postgres scram-sha-256\n{host} all all 127.0.0.1/32 scram-sha-256\n\
                 {host} all all ::1/128 scram-sha-256\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let mut cmd = as_postgres("postgres");
        cmd.arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-c", "listen_addresses=localhost"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", dir.path().display()));
        if tls {
            cmd.args(["-c", "ssl=on"])
                .arg("-c")
                .arg(format!(
                    "ssl_cert_file={}",
                    dir.path().join("server.crt").display()
                ))
                .arg("-c")
                .arg(format!(
                    "ssl_key_file={}",
                    dir.path().join("server.key").display()
                ));
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("postgres.log")).unwrap())
            .spawn()
            .unwrap();
        let pg = ExternalPostgres {
            dir,
            port,
            child,
            ca_file,
            wrong_ca_file,
            password_file,
        };
        wait_until(
            "the external PostgreSQL to accept connections",
            Duration::from_secs(30),
            || pg.try_psql("postgres", "SELECT 1").ok(),
        );
        pg.psql(
            "postgres",
            &format!("CREATE ROLE phoenix LOGIN PASSWORD '{PHOENIX_PASSWORD}'"),
        );
        pg.psql("postgres", "CREATE DATABASE phoenix OWNER phoenix");
        pg
    }

    /// The URL the appliance is given (no password: that is in a file).
    pub fn url(&self) -> String {
        format!("postgres://phoenix@localhost:{}/phoenix", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    /// Runs `sql` as the superuser over the socket; `Err` is psql's stderr.
    pub fn try_psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = as_postgres("psql")
            .args([
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-U",
                "postgres",
                "-d",
                db,
            ])
            .arg("-h")
            .arg(self.dir.path())
            .args(["-p", &self.port.to_string(), "-c", sql])
            .env("PGPASSWORD", SUPERUSER_PASSWORD)
            .output()
            .unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    pub fn psql(&self, db: &str, sql: &str) -> String {
        self.try_psql(db, sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}\n{}", self.log()))
    }
}

impl Drop for ExternalPostgres {
    fn drop(&mut self) {
        // SIGINT: fast shutdown.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let _ = self.child.wait();
    }
}
