//! Value types of the TOML file that carry their own validation, so that a bad
//! value is reported by the deserializer with its line and column.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

/// A duration written as text: `"500ms"`, `"10s"`, `"1h 30m"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct HumanDuration(pub Duration);

impl TryFrom<String> for HumanDuration {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        humantime::parse_duration(&text)
            .map(HumanDuration)
            .map_err(|e| {
                format!("`{text}` is not a duration ({e}); write e.g. \"500ms\", \"10s\", \"5m\"")
            })
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

/// Milliseconds in the units that bounds are written with.
pub const MS: u64 = 1;
pub const SECOND: u64 = 1000 * MS;
pub const MINUTE: u64 = 60 * SECOND;
pub const HOUR: u64 = 60 * MINUTE;
pub const DAY: u64 = 24 * HOUR;

/// A duration that must lie within `MIN_MS..=MAX_MS` milliseconds. The
/// range is part of the key's type, so a value outside it is refused where
/// it is read, with its line and column, and the file's struct says what
/// each key allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct DurationIn<const MIN_MS: u64, const MAX_MS: u64>(pub Duration);

impl<const MIN_MS: u64, const MAX_MS: u64> TryFrom<String> for DurationIn<MIN_MS, MAX_MS> {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        let d = HumanDuration::try_from(text.clone())?.0;
        let (min, max) = (Duration::from_millis(MIN_MS), Duration::from_millis(MAX_MS));
        if (min..=max).contains(&d) {
            Ok(DurationIn(d))
        } else {
            Err(format!(
                "`{text}` is out of range: give a duration from {} to {}",
                HumanDuration(min),
                HumanDuration(max)
            ))
        }
    }
}

/// A whole number within `MIN..=MAX` (counts, ports, bursts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "i64")]
pub struct CountIn<const MIN: u64, const MAX: u64>(pub u64);

impl<const MIN: u64, const MAX: u64> TryFrom<i64> for CountIn<MIN, MAX> {
    type Error = String;
    fn try_from(n: i64) -> Result<Self, String> {
        match u64::try_from(n) {
            Ok(n) if (MIN..=MAX).contains(&n) => Ok(CountIn(n)),
            _ => Err(format!(
                "{n} is out of range: give a whole number from {MIN} to {MAX}"
            )),
        }
    }
}

/// A size within `MIN..=MAX` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "ByteSize")]
pub struct SizeIn<const MIN: u64, const MAX: u64>(pub u64);

impl<const MIN: u64, const MAX: u64> TryFrom<ByteSize> for SizeIn<MIN, MAX> {
    type Error = String;
    fn try_from(b: ByteSize) -> Result<Self, String> {
        if (MIN..=MAX).contains(&b.0) {
            Ok(SizeIn(b.0))
        } else {
            Err(format!(
                "{} is out of range: give a size from {} to {}",
                ByteSize(b.0),
                ByteSize(MIN),
                ByteSize(MAX)
            ))
        }
    }
}

pub const KIB: u64 = 1 << 10;
pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;
pub const TIB: u64 = 1 << 40;

/// A path key that must not be empty: `""` would otherwise resolve to the
/// config file's own directory.
pub fn path<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    let p = PathBuf::deserialize(d)?;
    if p.as_os_str().is_empty() {
        return Err(serde::de::Error::custom(
            "is empty: give a path, e.g. \"/var/lib/phoenix\"",
        ));
    }
    Ok(Some(p))
}

/// A listen address: port 0 would bind a random port that nothing (probes,
/// Prometheus, the API's clients) could find.
pub fn listen<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let addr = SocketAddr::deserialize(d)?;
    if addr.port() == 0 {
        return Err(serde::de::Error::custom(format!(
            "`{addr}` has port 0: give the port to listen on, e.g. \"{}\"",
            SocketAddr::new(addr.ip(), 8080)
        )));
    }
    Ok(Some(addr))
}

/// A memory size: `"512MiB"`, `"2GiB"`, or a plain number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "SizeText")]
pub struct ByteSize(pub u64);

#[derive(Deserialize)]
#[serde(untagged)]
enum SizeText {
    Bytes(u64),
    Text(String),
}

impl TryFrom<SizeText> for ByteSize {
    type Error = String;
    fn try_from(value: SizeText) -> Result<Self, String> {
        match value {
            SizeText::Bytes(n) => Ok(ByteSize(n)),
            SizeText::Text(text) => bytesize::ByteSize::from_str(text.trim())
                .map(|b| ByteSize(b.as_u64()))
                .map_err(|e| {
                    format!("`{text}` is not a size ({e}); write e.g. \"512MiB\" or \"2GiB\"")
                }),
        }
    }
}

impl fmt::Display for ByteSize {
    /// The largest binary unit that divides the size exactly: `4KiB`, `1GiB`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        match [(TIB, "TiB"), (GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")]
            .into_iter()
            .find(|(unit, _)| n != 0 && n.is_multiple_of(*unit))
        {
            Some((unit, name)) => write!(f, "{}{name}", n / unit),
            None => write!(f, "{n} bytes"),
        }
    }
}

/// A signal name such as `"SIGTERM"` or `"INT"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct SignalName(pub nix::sys::signal::Signal);

impl TryFrom<String> for SignalName {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        let upper = text.trim().to_ascii_uppercase();
        let full = if upper.starts_with("SIG") {
            upper
        } else {
            format!("SIG{upper}")
        };
        nix::sys::signal::Signal::from_str(&full)
            .map(SignalName)
            .map_err(|_| {
                format!("`{text}` is not a signal name; write e.g. \"SIGTERM\" or \"SIGINT\"")
            })
    }
}

impl fmt::Display for SignalName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_reject() {
        assert_eq!(
            HumanDuration::try_from("500ms".to_string()).unwrap().0,
            Duration::from_millis(500)
        );
        assert_eq!(
            HumanDuration::try_from("1m 30s".to_string()).unwrap().0,
            Duration::from_secs(90)
        );
        let err = HumanDuration::try_from("soon".to_string()).unwrap_err();
        assert!(err.contains("`soon` is not a duration"), "{err}");
    }

    #[test]
    fn sizes_parse_binary_units_and_bytes() {
        assert_eq!(
            ByteSize::try_from(SizeText::Text("1GiB".into())).unwrap().0,
            1 << 30
        );
        assert_eq!(
            ByteSize::try_from(SizeText::Text("512MiB".into()))
                .unwrap()
                .0,
            512 << 20
        );
        assert_eq!(ByteSize::try_from(SizeText::Bytes(4096)).unwrap().0, 4096);
        assert!(ByteSize::try_from(SizeText::Text("lots".into())).is_err());
    }

    #[test]
    fn signals_accept_short_and_long_names() {
        use nix::sys::signal::Signal;
        assert_eq!(
            SignalName::try_from("SIGINT".to_string()).unwrap().0,
            Signal::SIGINT
        );
        assert_eq!(
            SignalName::try_from("term".to_string()).unwrap().0,
            Signal::SIGTERM
        );
        assert!(SignalName::try_from("SIGNOPE".to_string()).is_err());
    }
}
