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

/// Decompresses `body`, refusing one that would uncompress to more than
/// `max_uncompressed` bytes before allocating for it.
pub fn decompress(body: &[u8], max_uncompressed: usize) -> Result<Vec<u8>, DecodeError> {
    uncompressed_len(body, max_uncompressed)?;
    snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| DecodeError::Snappy(e.to_string()))
}

/// Decodes an uncompressed request.
pub fn decode_raw(raw: &[u8]) -> Result<WriteRequest, DecodeError> {
    use prost::Message;
    WriteRequest::decode(raw).map_err(|e| DecodeError::Protobuf(e.to_string()))
}

/// Decompresses and decodes a request, refusing one that would uncompress
/// to more than `max_uncompressed` bytes before allocating for it.
pub fn decode(body: &[u8], max_uncompressed: usize) -> Result<WriteRequest, DecodeError> {
    decode_raw(&decompress(body, max_uncompressed)?)
}

/// What an uncompressed request holds, counted on its bytes without
/// decoding them: what decoding would allocate is known, and can be
/// refused, before it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shape {
    pub series: usize,
    pub labels: usize,
    pub samples: usize,
}

impl Shape {
    /// Counts the series, labels and samples of `raw`; fails only where
    /// [`decode_raw`] would (a message cut short, an unknown wire type).
    pub fn of(raw: &[u8]) -> Result<Shape, DecodeError> {
        let mut shape = Shape::default();
        for_each_field(raw, |field, value| {
            if let (1, Some(series)) = (field, value) {
                shape.series += 1;
                for_each_field(series, |field, _| {
                    match field {
                        1 => shape.labels += 1,
                        2 => shape.samples += 1,
                        _ => {}
                    }
                    Ok(())
                })?;
            }
            Ok(())
        })?;
        Ok(shape)
    }

    /// At most the bytes the decoded request takes for `raw` of `raw_len`
    /// bytes: its messages (twice: a vector grows by doubling) and its
    /// strings (no more than the raw bytes).
    pub fn decoded_bytes(&self, raw_len: usize) -> usize {
        use std::mem::size_of;
        let messages = self.series * size_of::<TimeSeries>()
            + self.labels * size_of::<Label>()
            + self.samples * size_of::<Sample>();
        2 * messages + raw_len
    }
}

fn truncated() -> DecodeError {
    DecodeError::Protobuf("a message is cut short".into())
}

fn varint(buf: &mut &[u8]) -> Result<u64, DecodeError> {
    let mut value = 0u64;
    for i in 0..10 {
        let (&byte, rest) = buf.split_first().ok_or_else(truncated)?;
        *buf = rest;
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            return Ok(value);
        }
    }
    Err(DecodeError::Protobuf(
        "a varint is longer than 10 bytes".into(),
    ))
}

/// Calls `f` with each field number of the message `buf` and, for a
/// length-delimited field, its bytes.
fn for_each_field<'a>(
    mut buf: &'a [u8],
    mut f: impl FnMut(u64, Option<&'a [u8]>) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        let (field, wire_type) = (key >> 3, key & 7);
        let value = match wire_type {
            0 => {
                varint(&mut buf)?;
                None
            }
            1 | 5 => {
                let n = if wire_type == 1 { 8 } else { 4 };
                buf = buf.get(n..).ok_or_else(truncated)?;
                None
            }
            2 => {
                let len = usize::try_from(varint(&mut buf)?).map_err(|_| truncated())?;
                let (value, rest) = buf.split_at_checked(len).ok_or_else(truncated)?;
                buf = rest;
                Some(value)
            }
            other => {
                return Err(DecodeError::Protobuf(format!(
                    "wire type {other} is not supported"
                )));
            }
        };
        f(field, value)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shape_counts_what_decoding_would_hold_and_fails_where_it_would() {
        use prost::Message;
        let raw = request().encode_to_vec();
        let decoded = decode_raw(&raw).unwrap();
        let shape = Shape::of(&raw).unwrap();
        assert_eq!(
            shape,
            Shape {
                series: decoded.timeseries.len(),
                labels: decoded.timeseries.iter().map(|s| s.labels.len()).sum(),
                samples: decoded.sample_count(),
            }
        );
        assert!(shape.series > 0 && shape.labels > shape.series && shape.samples > 0);
        // Cut anywhere inside, both refuse it.
        for cut in 1..raw.len() {
            let part = &raw[..cut];
            assert_eq!(
                Shape::of(part).is_err(),
                decode_raw(part).is_err(),
                "cut at {cut}"
            );
        }
        // 10 000 empty series: 20 000 bytes that decode to far more.
        let empty = [0x0a, 0x00].repeat(10_000);
        let shape = Shape::of(&empty).unwrap();
        assert_eq!(shape.series, 10_000);
        assert!(shape.decoded_bytes(empty.len()) >= 10_000 * std::mem::size_of::<TimeSeries>());
    }

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
