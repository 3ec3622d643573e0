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

/// A share of this machine, written `"25%"`: a fraction in (0, 1]. Limits
/// written as shares follow the instance, so a resize needs no edit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Share(pub f64);

impl Share {
    /// `Some` for text ending in `%`; `Err` when the number is not a
    /// share (zero, negative, over 100 %).
    fn parse(text: &str, of: &str) -> Option<Result<Share, String>> {
        let number = text.trim().strip_suffix('%')?;
        Some(match number.trim().parse::<f64>() {
            Ok(p) if p > 0.0 && p <= 100.0 => Ok(Share(p / 100.0)),
            Ok(p) if p > 100.0 => Err(format!(
                "`{text}` is over 100 %: a share is of this machine's {of}; write e.g. \"25%\""
            )),
            _ => Err(format!(
                "`{text}` is not a share: give a percentage above 0 and up to 100, e.g. \"25%\""
            )),
        })
    }
}

impl fmt::Display for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.0 * 100.0)
    }
}

/// `memory = "512MiB"`, a number of bytes, or `"25%"` of the machine's memory.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(try_from = "SizeText")]
pub enum MemoryLimit {
    Size(SizeIn<MIB, { 16 * TIB }>),
    Share(Share),
}

impl TryFrom<SizeText> for MemoryLimit {
    type Error = String;
    fn try_from(value: SizeText) -> Result<Self, String> {
        if let SizeText::Text(text) = &value
            && let Some(share) = Share::parse(text, "memory")
        {
            return share.map(MemoryLimit::Share);
        }
        SizeIn::try_from(ByteSize::try_from(value)?).map(MemoryLimit::Size)
    }
}

/// `cpus = 1.5`, or `"50%"` of the machine's CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(try_from = "CpuText")]
pub enum CpuLimit {
    Cpus(f64),
    Share(Share),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum CpuText {
    Number(f64),
    Text(String),
}

impl TryFrom<CpuText> for CpuLimit {
    type Error = String;
    fn try_from(value: CpuText) -> Result<Self, String> {
        match value {
            CpuText::Number(n) => Ok(CpuLimit::Cpus(n)),
            CpuText::Text(text) => Share::parse(&text, "CPUs")
                .unwrap_or_else(|| {
                    Err(format!(
                        "`{text}` is not a number of CPUs or a share; write e.g. 1.5 or \"50%\""
                    ))
                })
                .map(CpuLimit::Share),
        }
    }
}

/// What shares are shares of: this machine's memory and CPUs, read at
/// every start, so the same file fits a bigger instance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Machine {
    /// Bytes of RAM (`MemTotal`).
    pub memory: u64,
    /// CPUs this process may run on.
    pub cpus: u32,
}

impl Machine {
    pub fn detect() -> Machine {
        let memory = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().strip_suffix("kB"))
                    .and_then(|kb| kb.trim().parse::<u64>().ok())
            })
            .map_or(GIB, |kb| kb * KIB);
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        Machine { memory, cpus }
    }

    /// `share` of the memory, in whole MiB, at least 1 MiB.
    pub fn memory_share(&self, share: Share) -> u64 {
        ((self.memory as f64 * share.0) as u64 / MIB).max(1) * MIB
    }

    /// `share` of the CPUs, to the hundredth, at least 0.01.
    pub fn cpu_share(&self, share: Share) -> f64 {
        ((f64::from(self.cpus) * share.0 * 100.0).round() / 100.0).max(0.01)
    }
}

impl fmt::Display for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} MiB of memory and {} CPU{}",
            self.memory / MIB,
            self.cpus,
            if self.cpus == 1 { "" } else { "s" }
        )
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
    fn limits_take_sizes_counts_and_shares() {
        let mem = |t: &str| MemoryLimit::try_from(SizeText::Text(t.into()));
        assert_eq!(mem("25%").unwrap(), MemoryLimit::Share(Share(0.25)));
        assert_eq!(mem("1GiB").unwrap(), MemoryLimit::Size(SizeIn(GIB)));
        let over = mem("150%").unwrap_err();
        assert!(over.contains("over 100 %"), "{over}");
        assert!(mem("0%").unwrap_err().contains("not a share"));
        assert!(mem("-5%").is_err());
        assert!(mem("1KiB").unwrap_err().contains("out of range"));
        let cpu = |t: &str| CpuLimit::try_from(CpuText::Text(t.into()));
        assert_eq!(cpu("50%").unwrap(), CpuLimit::Share(Share(0.5)));
        assert!(cpu("101%").unwrap_err().contains("over 100 %"));
        assert!(cpu("lots").unwrap_err().contains("not a number of CPUs"));
        assert_eq!(
            CpuLimit::try_from(CpuText::Number(1.5)).unwrap(),
            CpuLimit::Cpus(1.5)
        );
    }

    #[test]
    fn shares_resolve_against_the_machine() {
        let small = Machine {
            memory: 2 * GIB,
            cpus: 2,
        };
        let big = Machine {
            memory: 16 * GIB,
            cpus: 8,
        };
        assert_eq!(small.memory_share(Share(0.25)), 512 * MIB);
        assert_eq!(big.memory_share(Share(0.25)), 4 * GIB);
        assert_eq!(small.cpu_share(Share(0.5)), 1.0);
        assert_eq!(big.cpu_share(Share(0.75)), 6.0);
        let tiny = Machine {
            memory: 3 * MIB,
            cpus: 1,
        };
        assert_eq!(tiny.memory_share(Share(0.01)), MIB, "at least 1 MiB");
        assert_eq!(tiny.cpu_share(Share(0.001)), 0.01, "at least 0.01");
        assert_eq!(small.to_string(), "2048 MiB of memory and 2 CPUs");
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
