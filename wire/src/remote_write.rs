//! The Prometheus remote-write 1.0 format, as data: the protobuf messages of
//! `prompb` (`WriteRequest`, `TimeSeries`, `Label`, `Sample`) and the snappy
//! block compression around them.
//!
//! An agent sends its samples to the API in this format, each with the time
//! it was collected, so that a batch held through an outage lands where it
//! belongs; the API sends them on to a remote-write receiver in the same
//! format. Only float samples are carried: exemplars, native histograms and
//! metadata are not part of what an agent collects, and a request that
//! carries them is refused by the API.
//!
//! *Invariant:* the decoder never allocates more than the caller allows:
//! the uncompressed length a snappy block declares is checked before it is
//! decompressed.

/// `Content-Type` of a remote-write request.
pub const CONTENT_TYPE: &str = "application/x-protobuf";
/// `Content-Encoding` of a remote-write request (snappy block format).
pub const CONTENT_ENCODING: &str = "snappy";
/// The header naming the protocol version, and its value for 1.0.
pub const VERSION_HEADER: &str = "x-prometheus-remote-write-version";
pub const VERSION: &str = "0.1.0";
/// The label holding a series' metric name.
pub const NAME_LABEL: &str = "__name__";

/// One request: series with their samples.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
    /// `MetricMetadata` (field 3) is read only to be refused.
    #[prost(bytes = "vec", repeated, tag = "3")]
    pub metadata: Vec<Vec<u8>>,
}

/// One series: its labels (`__name__` among them, sorted by name) and its
/// samples, oldest first.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
    /// Exemplars (field 3) and native histograms (field 4) are read only to
    /// be refused.
    #[prost(bytes = "vec", repeated, tag = "3")]
    pub exemplars: Vec<Vec<u8>>,
    #[prost(bytes = "vec", repeated, tag = "4")]
    pub histograms: Vec<Vec<u8>>,
}

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// A value at a time, in milliseconds since the Unix epoch.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct Sample {
    #[prost(double, tag = "1")]
    pub value: f64,
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

impl Label {
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Label {
        Label {
            name: name.into(),
            value: value.into(),
        }
    }
}

impl TimeSeries {
    /// The value of label `name`, if the series has it.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|l| l.name == name)
            .map(|l| l.value.as_str())
    }
}

impl WriteRequest {
    /// Samples in all series.
    pub fn sample_count(&self) -> usize {
        self.timeseries.iter().map(|s| s.samples.len()).sum()
    }
}

/// Why a body is not a remote-write request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("the body is not snappy-compressed (block format): {0}")]
    Snappy(String),
    #[error("the body uncompresses to {declared} bytes; at most {limit} are accepted")]
    TooLarge { declared: usize, limit: usize },
    #[error("the body is not a remote-write WriteRequest: {0}")]
    Protobuf(String),
}

/// Encodes and compresses a request, ready to send.
pub fn encode(request: &WriteRequest) -> Vec<u8> {
    use prost::Message;
    let raw = request.encode_to_vec();
    snap::raw::Encoder::new()
        .compress_vec(&raw)
        .expect("snappy compresses any input shorter than 4 GiB")
}

/// The size `body` declares it uncompresses to, refused past
/// `max_uncompressed`; nothing is decompressed.
pub fn uncompressed_len(body: &[u8], max_uncompressed: usize) -> Result<usize, DecodeError> {
    let declared =
        snap::raw::decompress_len(body).map_err(|e| DecodeError::Snappy(e.to_string()))?;
    if declared > max_uncompressed {
        return Err(DecodeError::TooLarge {
            declared,
            limit: max_uncompressed,
        });
    }
    Ok(declared)
}

/// Decompresses and decodes a request, refusing one that would uncompress
/// to more than `max_uncompressed` bytes before allocating for it.
pub fn decode(body: &[u8], max_uncompressed: usize) -> Result<WriteRequest, DecodeError> {
    use prost::Message;
    uncompressed_len(body, max_uncompressed)?;
    let raw = snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| DecodeError::Snappy(e.to_string()))?;
    WriteRequest::decode(raw.as_slice()).map_err(|e| DecodeError::Protobuf(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> WriteRequest {
        WriteRequest {
            timeseries: vec![TimeSeries {
                labels: vec![
                    Label::new(NAME_LABEL, "phoenix_process_cpu_percent"),
                    Label::new("process", "nginx"),
                ],
                samples: vec![
                    Sample {
                        value: 3.5,
                        timestamp: 1_700_000_000_000,
                    },
                    Sample {
                        value: 4.0,
                        timestamp: 1_700_000_015_000,
                    },
                ],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn a_request_round_trips_through_protobuf_and_snappy() {
        let body = encode(&request());
        let back = decode(&body, 1 << 20).unwrap();
        assert_eq!(back, request());
        assert_eq!(back.sample_count(), 2);
        assert_eq!(
            back.timeseries[0].label("process"),
            Some("nginx"),
            "labels are found by name"
        );
    }

    #[test]
    fn the_wire_bytes_are_those_of_prompb() {
        // Label{name:"a", value:"b"} is field 1 "a", field 2 "b";
        // Sample{value: 1.0, timestamp: 2} is a double then a varint.
        use prost::Message;
        assert_eq!(
            Label::new("a", "b").encode_to_vec(),
            [0x0a, 1, b'a', 0x12, 1, b'b']
        );
        let sample = Sample {
            value: 1.0,
            timestamp: 2,
        };
        assert_eq!(
            sample.encode_to_vec(),
            [0x09, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f, 0x10, 2]
        );
    }

    #[test]
    fn a_body_that_would_uncompress_past_the_limit_is_refused_before_it_is() {
        let body = encode(&request());
        let err = decode(&body, 8).unwrap_err();
        assert!(
            matches!(err, DecodeError::TooLarge { limit: 8, .. }),
            "{err}"
        );
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        assert!(matches!(
            decode(b"\xff\xff\xff\xff\xff\xff", 1 << 20),
            Err(DecodeError::Snappy(_))
        ));
        let not_protobuf = snap::raw::Encoder::new()
            .compress_vec(b"\xff\xff\xff")
            .unwrap();
        assert!(matches!(
            decode(&not_protobuf, 1 << 20),
            Err(DecodeError::Protobuf(_))
        ));
    }
}
