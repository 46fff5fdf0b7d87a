//! Rows to NDJSON: one JSON object per row, keys in column order, one line each.
//!
//! Integers and finite floats are JSON numbers; text (numeric and timestamps included,
//! so nothing is rounded) JSON strings; bytes base64 strings; JSON columns embedded as
//! they are; non-finite floats the strings `"NaN"`, `"Infinity"`, `"-Infinity"`.

use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use weir_runtime::{BoxError, Emit, Transform};

use crate::sources::sql::rows::float_text;
use crate::sources::sql::{Columns, RowBatch, Value};

/// Encodes row batches as NDJSON, one output chunk per batch.
#[derive(Debug, Default)]
pub struct NdjsonEncoder {
    /// `"name":` of each column, escaped once per result rather than once per row.
    keys: Vec<Vec<u8>>,
    keys_of: Option<Columns>,
}

impl NdjsonEncoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends one line per row of `batch` to `out`.
    pub fn encode(&mut self, batch: &RowBatch, out: &mut Vec<u8>) {
        if !self
            .keys_of
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(c, batch.columns()))
        {
            self.keys = batch
                .columns()
                .iter()
                .map(|name| {
                    let mut key = Vec::with_capacity(name.len() + 3);
                    push_json_str(&mut key, name);
                    key.push(b':');
                    key
                })
                .collect();
            self.keys_of = Some(Arc::clone(batch.columns()));
        }
        let mut itoa = itoa::Buffer::new();
        let mut ryu = ryu::Buffer::new();
        for row in batch.rows() {
            out.push(b'{');
            for (i, (value, key)) in row.iter().zip(&self.keys).enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(key);
                match value {
                    Value::Null => out.extend_from_slice(b"null"),
                    Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
                    Value::Int(n) => out.extend_from_slice(itoa.format(*n).as_bytes()),
                    Value::Float(f) if f.is_finite() => {
                        out.extend_from_slice(float_text(*f, &mut ryu).as_bytes())
                    }
                    Value::Float(f) => push_json_str(out, float_text(*f, &mut ryu)),
                    Value::Text(s) => push_json_str(out, s),
                    Value::Json(s) => out.extend_from_slice(s.as_bytes()),
                    Value::Bytes(b) => {
                        out.push(b'"');
                        out.extend_from_slice(
                            base64::engine::general_purpose::STANDARD
                                .encode(b)
                                .as_bytes(),
                        );
                        out.push(b'"');
                    }
                }
            }
            out.extend_from_slice(b"}\n");
        }
    }
}

fn push_json_str(out: &mut Vec<u8>, s: &str) {
    // Serialising a &str into memory cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

impl Transform for NdjsonEncoder {
    type In = RowBatch;
    type Out = Bytes;

    async fn apply(&mut self, batch: RowBatch, out: &mut Emit<'_, Bytes>) -> Result<(), BoxError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut text = Vec::with_capacity(batch.len() * 96);
        self.encode(&batch, &mut text);
        out.send(Bytes::from(text)).await
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn every_kind_of_value_round_trips_through_a_json_parser() {
        let columns: Vec<String> = [
            "id",
            "name \"q\"",
            "amount",
            "f",
            "nan",
            "raw",
            "doc",
            "ok",
            "none",
        ]
        .iter()
        .map(|c| c.to_string())
        .collect();
        let mut batch = RowBatch::new(Arc::from(columns), 1);
        for v in [
            Value::Int(i64::MIN),
            Value::Text("line\nbreak \u{1F600}".into()),
            Value::Text("12345678901234567890.000000000000000001".into()),
            Value::Float(0.1 + 0.2),
            Value::Float(f64::NAN),
            Value::Bytes(b"\x00\xffhi".to_vec()),
            Value::Json(r#"{"a":[1,2]}"#.into()),
            Value::Bool(false),
            Value::Null,
        ] {
            batch.push(v);
        }
        let mut out = Vec::new();
        let mut encoder = NdjsonEncoder::new();
        encoder.encode(&batch, &mut out);
        encoder.encode(&batch, &mut out);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let parsed: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(
            parsed,
            json!({
                "id": i64::MIN,
                "name \"q\"": "line\nbreak \u{1F600}",
                "amount": "12345678901234567890.000000000000000001",
                "f": 0.30000000000000004,
                "nan": "NaN",
                "raw": "AP9oaQ==",
                "doc": {"a": [1, 2]},
                "ok": false,
                "none": null
            })
        );
        let keys: Vec<&str> = parsed
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys.len(), 9);
    }
}
