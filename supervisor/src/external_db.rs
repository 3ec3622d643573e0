//! `[postgres] url`: whether the external database answers, for /health.
//!
//! Every [`INTERVAL`] the supervisor connects to the database's host and
//! port, sends PostgreSQL's `SSLRequest`, and completes a TLS handshake
//! that verifies the certificate against `ca_file` (or the public web
//! roots, as the API's driver does) and the host name: what the API will
//! do, short of logging in. The API's own `/health` checks the login.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::config::ExternalDatabase;
pub use crate::status::ExternalDatabaseStatus;

pub const INTERVAL: Duration = Duration::from_secs(15);
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// PostgreSQL's `SSLRequest`: length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// One look: `Ok(elapsed)` when the database accepted a connection and,
/// with TLS, presented a certificate that verifies for its name.
pub async fn probe(db: &ExternalDatabase) -> Result<Duration, String> {
    let start = Instant::now();
    let address = format!("{}:{}", bracketed(&db.host), db.port);
    let connect = async {
        let mut stream = TcpStream::connect(&address)
            .await
            .map_err(|e| format!("cannot connect to {address}: {e}"))?;
        if !db.tls {
            return Ok(());
        }
        let config = client_config(db)?;
        stream
            .write_all(&SSL_REQUEST)
            .await
            .map_err(|e| format!("{address}: {e}"))?;
        let mut answer = [0u8; 1];
        stream
            .read_exact(&mut answer)
            .await
            .map_err(|e| format!("{address} closed the connection: {e}"))?;
        if answer[0] != b'S' {
            return Err(format!(
                "{address} does not offer TLS (answered {:?} to SSLRequest): turn on ssl in \
                 the database, or is this PostgreSQL at all?",
                answer[0] as char
            ));
        }
        let name = ServerName::try_from(db.host.clone())
            .map_err(|e| format!("`{}` is not a server name: {e}", db.host))?;
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, stream)
            .await
            .map_err(|e| {
                format!(
                    "TLS with {address} failed: {e}; {}",
                    match &db.ca_file {
                        Some(ca) =>
                            format!("is {} the CA that signed its certificate?", ca.display()),
                        None => "name its CA bundle in [postgres] ca_file".into(),
                    }
                )
            })?;
        Ok(())
    };
    match tokio::time::timeout(TIMEOUT, connect).await {
        Ok(Ok(())) => Ok(start.elapsed()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!(
            "{address} did not answer within {} s",
            TIMEOUT.as_secs()
        )),
    }
}

fn bracketed(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

fn client_config(db: &ExternalDatabase) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    match &db.ca_file {
        Some(path) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<_, _>>())
                .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!("ca_file {} holds no certificate", path.display()));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Looks every [`INTERVAL`] while the config names an external database,
/// and at once when a reload changes it; `report` gets each result.
pub async fn run(
    mut database: watch::Receiver<Option<ExternalDatabase>>,
    report: impl Fn(Option<ExternalDatabaseStatus>),
) {
    loop {
        let current = database.borrow_and_update().clone();
        match current {
            None => report(None),
            Some(db) => {
                let result = probe(&db).await;
                if let Err(e) = &result {
                    tracing::warn!(error = %e, "the external database does not answer");
                }
                report(Some(ExternalDatabaseStatus {
                    address: format!("{}:{}", bracketed(&db.host), db.port),
                    tls: db.tls,
                    checked_ms: crate::status::now_ms(),
                    latency_ms: result.as_ref().ok().map(|d| d.as_millis() as u64),
                    error: result.err(),
                }));
            }
        }
        let probing = database.borrow().is_some();
        let wait = async {
            if probing {
                tokio::time::sleep(INTERVAL).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            _ = wait => {}
            changed = database.changed() => if changed.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(port: u16, tls: bool) -> ExternalDatabase {
        ExternalDatabase {
            api_url: String::new(),
            host: "127.0.0.1".into(),
            port,
            tls,
            ca_file: None,
        }
    }

    #[tokio::test]
    async fn a_closed_port_is_reported_with_its_address() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let e = probe(&db(port, false)).await.unwrap_err();
        assert!(
            e.starts_with(&format!("cannot connect to 127.0.0.1:{port}")),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_server_without_tls_is_named() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut req = [0u8; 8];
            s.read_exact(&mut req).await.unwrap();
            assert_eq!(req, SSL_REQUEST);
            s.write_all(b"N").await.unwrap();
        });
        let e = probe(&db(port, true)).await.unwrap_err();
        assert!(e.contains("does not offer TLS"), "{e}");
    }

    #[tokio::test(start_paused = true)]
    async fn probes_repeat_each_interval_and_stop_when_the_url_goes() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                drop(s);
            }
        });
        let (tx, rx) = watch::channel(Some(db(port, false)));
        let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(run(rx, move |s| {
            let _ = seen_tx.send(s);
        }));
        let first = seen.recv().await.unwrap().unwrap();
        assert_eq!(first.error, None);
        assert_eq!(first.address, format!("127.0.0.1:{port}"));
        tokio::time::advance(INTERVAL).await;
        assert!(seen.recv().await.unwrap().is_some(), "probed again");
        tx.send(None).unwrap();
        assert_eq!(seen.recv().await.unwrap(), None, "cleared on reload");
    }
}
