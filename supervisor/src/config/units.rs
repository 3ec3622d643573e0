//! Value types of the TOML file that carry their own validation, so that a bad
//! value is reported by the deserializer with its line and column.

use std::fmt;
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
