//! `phoenix-supervisor first-boot`: writes the appliance's one TOML file
//! when it does not exist yet, and otherwise does nothing — the file belongs
//! to the operator, and a restart, a rebuild or an upgrade never overwrites
//! an edit. The NixOS module runs it before every start of the service.
//!
//! The new file comes from the image's defaults, or with `--ec2-user-data`
//! from the instance's EC2 user data (read over IMDSv2) merged key by key
//! over those defaults, so that user data need not know the image's program
//! paths. User data is taken only when the merged result is a valid
//! configuration; otherwise it is kept next to the file as
//! `user-data.rejected` (0600), the reason is logged, and the defaults are
//! used.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::config::{self, LoadOptions};
use crate::fsafe::{self, write_atomic};

/// The instance metadata service of EC2.
pub const IMDS: &str = "http://169.254.169.254";

pub struct FirstBootOptions {
    pub config: PathBuf,
    pub defaults: PathBuf,
    /// The metadata endpoint to read user data from; None: defaults only.
    pub imds: Option<String>,
}

/// Where the written file came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Defaults,
    UserData,
}

/// Writes the file if it is missing; `None` when it was there already.
pub fn first_boot(opts: &FirstBootOptions) -> anyhow::Result<Option<Origin>> {
    if opts.config.symlink_metadata().is_ok() {
        return Ok(None);
    }
    let defaults = std::fs::read_to_string(&opts.defaults)
        .with_context(|| format!("the image's defaults {}", opts.defaults.display()))?;
    let dir = opts.config.parent().unwrap_or(Path::new("/"));
    fsafe::ensure_dir(dir, 0o755, None).with_context(|| format!("creating {}", dir.display()))?;

    let mut body = defaults.clone();
    let mut origin = Origin::Defaults;
    if let Some(imds) = &opts.imds {
        match fetch_user_data(imds) {
            Ok(user_data) => match merged(&defaults, &user_data, &opts.config) {
                Ok(text) => {
                    body = text;
                    origin = Origin::UserData;
                }
                Err(why) => {
                    let rejected = dir.join("user-data.rejected");
                    write_atomic(&rejected, user_data.as_bytes(), 0o600, None)
                        .with_context(|| format!("writing {}", rejected.display()))?;
                    tracing::warn!(
                        kept = %rejected.display(),
                        "the EC2 user data is not a valid Phoenix config; using the image's defaults: {why:#}"
                    );
                }
            },
            Err(why) => tracing::info!("{why:#}; using the image's defaults"),
        }
    }
    let from = match origin {
        Origin::Defaults => format!("the image's defaults ({})", opts.defaults.display()),
        Origin::UserData => "EC2 user data over the image's defaults".to_string(),
    };
    let config = opts.config.display();
    let text = format!(
        "# The Phoenix appliance's configuration, written at first boot from\n\
         # {from}.\n\
         # It is yours: rebuilds and upgrades never change it. Check an edit with\n\
         # 'phoenix-supervisor check-config --config {config}', apply it with\n\
         # 'phoenixctl reload'. The image's current defaults are in\n\
         # {dir}/phoenix.default.toml; every key is in docs/configuration.md.\n\n{body}",
        dir = dir.display()
    );
    write_atomic(&opts.config, text.as_bytes(), 0o600, None)
        .with_context(|| format!("writing {config}"))?;
    tracing::info!("wrote {config} from {from}");
    Ok(Some(origin))
}

/// The user data over the defaults, key by key (tables merge, everything
/// else is replaced), as TOML that passes `check-config` where it will live.
pub fn merged(defaults: &str, user_data: &str, config: &Path) -> anyhow::Result<String> {
    let mut base: toml::Table = defaults.parse().context("the image's defaults")?;
    let over: toml::Table = user_data.parse().context("the user data is not TOML")?;
    merge(&mut base, over);
    let text = toml::to_string(&base).context("writing the merged TOML")?;
    config::parse(&text, config, &LoadOptions::detect(false))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(text)
}

fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// The instance's user data over IMDSv2: a session token, then the data
/// with it. An error says why there is none to use.
pub fn fetch_user_data(imds: &str) -> anyhow::Result<String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("a runtime")?;
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10))
            .build()
            .context("an HTTP client")?;
        let mut token = None;
        for attempt in 0..3 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let sent = client
                .put(format!("{imds}/latest/api/token"))
                .header("X-aws-ec2-metadata-token-ttl-seconds", "60")
                .send()
                .await;
            if let Ok(r) = sent
                && r.status().is_success()
            {
                token = Some(r.text().await.context("the IMDSv2 token")?);
                break;
            }
        }
        let Some(token) = token else {
            bail!("no EC2 instance metadata service (IMDSv2) answered at {imds}; not on EC2?");
        };
        let r = client
            .get(format!("{imds}/latest/user-data"))
            .header("X-aws-ec2-metadata-token", token.trim())
            .send()
            .await
            .with_context(|| format!("reading EC2 user data from {imds}"))?;
        match r.status().as_u16() {
            200 => {
                let data = r.text().await.context("the EC2 user data")?;
                if data.trim().is_empty() {
                    bail!("the EC2 user data is empty");
                }
                Ok(data)
            }
            404 => bail!("no EC2 user data was given"),
            status => bail!("reading EC2 user data answered HTTP {status}"),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_merges_key_by_key_over_the_defaults() {
        let defaults = "[postgres]\nbin_dir = \"/pkgs/postgresql/bin\"\nport = 5432\n\
                        [prometheus]\nbin = \"/pkgs/prometheus\"\n";
        let user = "[postgres]\nport = 5433\n[tls]\nhostnames = [\"a.example.com\"]\n";
        let text = merged(defaults, user, Path::new("/etc/phoenix/phoenix.toml")).unwrap();
        let t: toml::Table = text.parse().unwrap();
        assert_eq!(t["postgres"]["port"].as_integer(), Some(5433));
        assert_eq!(
            t["postgres"]["bin_dir"].as_str(),
            Some("/pkgs/postgresql/bin")
        );
        assert_eq!(t["prometheus"]["bin"].as_str(), Some("/pkgs/prometheus"));
        assert_eq!(t["tls"]["hostnames"][0].as_str(), Some("a.example.com"));

        let err = merged(defaults, "[postgres]\nprot = 1\n", Path::new("/x.toml")).unwrap_err();
        assert!(format!("{err:#}").contains("postgres.prot"), "{err:#}");
        let err = merged(defaults, "not toml [", Path::new("/x.toml")).unwrap_err();
        assert!(format!("{err:#}").contains("not TOML"), "{err:#}");
    }
}
