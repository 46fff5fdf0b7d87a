//! A message with its key, headers and where it came from: the item of queue-fed pipelines.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use weir_runtime::{AckToken, Weighted};

/// How each record becomes a line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LineFormat {
    /// The value as it is, then a newline.
    #[default]
    Value,
    /// One JSON object: value, key, headers, topic, partition, offset, timestamp.
    Ndjson,
}

/// What a record costs besides its bytes: the struct itself and its origin, counted so that
/// a channel of many small records is bounded by what it really holds.
const OVERHEAD: usize = 128;

/// One message: Kafka's key, value and headers, the position it was read from, and the
/// token its source waits on before committing that position.
#[derive(Debug, Default)]
pub struct Record {
    pub key: Option<Bytes>,
    pub value: Bytes,
    pub headers: Vec<(String, Bytes)>,
    pub origin: Option<Origin>,
    /// Milliseconds since the Unix epoch, when the source knows it.
    pub timestamp: Option<i64>,
    pub ack: AckToken,
}

/// Where a record was read: a topic's partition and the offset in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "topic {} partition {} offset {}",
            self.topic, self.partition, self.offset
        )
    }
}

impl Record {
    /// A record holding only `value` (a line of a file, say), tracked by `ack`.
    pub fn of_value(value: Bytes, ack: AckToken) -> Self {
        Record {
            value,
            ack,
            ..Record::default()
        }
    }

    /// Where it came from, for error messages: `topic t partition 0 offset 5`, or `a record`.
    pub fn describe(&self) -> String {
        match &self.origin {
            Some(o) => o.to_string(),
            None => "a record".to_string(),
        }
    }

    /// The same metadata and a share of the ack token, around another value.
    pub fn with_value(&self, value: Bytes) -> Record {
        Record {
            key: self.key.clone(),
            value,
            headers: self.headers.clone(),
            origin: self.origin.clone(),
            timestamp: self.timestamp,
            ack: self.ack.clone(),
        }
    }

    /// Appends the record as one line of `format`, newline included.
    pub fn append_line(&self, format: LineFormat, out: &mut Vec<u8>) {
        match format {
            LineFormat::Value => out.extend_from_slice(&self.value),
            LineFormat::Ndjson => self.to_ndjson(out),
        }
        out.push(b'\n');
    }

    /// One NDJSON line (without the newline): the value as text (or base64 when it is not
    /// UTF-8) with key, headers, topic, partition, offset and timestamp.
    pub fn to_ndjson(&self, out: &mut Vec<u8>) {
        use base64::Engine as _;
        let text = |b: &Bytes| match std::str::from_utf8(b) {
            Ok(s) => serde_json::Value::String(s.to_string()),
            Err(_) => serde_json::json!({
                "base64": base64::engine::general_purpose::STANDARD.encode(b)
            }),
        };
        let mut obj = serde_json::Map::new();
        obj.insert("value".into(), text(&self.value));
        obj.insert(
            "key".into(),
            self.key.as_ref().map_or(serde_json::Value::Null, text),
        );
        if !self.headers.is_empty() {
            let headers = self
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), text(v)))
                .collect::<serde_json::Map<_, _>>();
            obj.insert("headers".into(), headers.into());
        }
        if let Some(o) = &self.origin {
            obj.insert("topic".into(), o.topic.as_ref().into());
            obj.insert("partition".into(), o.partition.into());
            obj.insert("offset".into(), o.offset.into());
        }
        if let Some(ts) = self.timestamp {
            obj.insert("timestamp".into(), ts.into());
        }
        // Writing a Value into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, &serde_json::Value::Object(obj));
    }
}

impl Weighted for Record {
    fn weight(&self) -> usize {
        OVERHEAD
            + self.value.len()
            + self.key.as_ref().map_or(0, Bytes::len)
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ndjson_carries_value_key_and_origin() {
        let mut r = Record::of_value(Bytes::from_static(b"hi \"x\""), AckToken::none());
        r.key = Some(Bytes::from_static(b"k"));
        r.headers.push(("h".into(), Bytes::from_static(&[0xff])));
        r.origin = Some(Origin {
            topic: "in".into(),
            partition: 2,
            offset: 7,
        });
        let mut out = Vec::new();
        r.to_ndjson(&mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["value"], "hi \"x\"");
        assert_eq!(v["key"], "k");
        assert_eq!(v["headers"]["h"]["base64"], "/w==");
        assert_eq!(
            (v["partition"].as_i64(), v["offset"].as_i64()),
            (Some(2), Some(7))
        );
        assert_eq!(r.describe(), "topic in partition 2 offset 7");
    }
}
