//! Rows to CSV: a header row, then one record per row, quoted as RFC 4180 says.
//!
//! Records end in CRLF. A field is quoted when it holds a comma, a quote, CR or LF,
//! with quotes doubled. NULL is an empty field and the empty string a quoted empty
//! field (`""`), empty bytes too, so the two stay apart, as in PostgreSQL's `COPY … CSV`. Bytes are
//! base64, booleans `true`/`false`, floats the shortest text that reads back the same.

use base64::Engine as _;
use bytes::Bytes;
use weir_runtime::{BoxError, Emit, Transform};

use crate::sources::sql::rows::float_text;
use crate::sources::sql::{RowBatch, Value};

/// Encodes row batches as CSV text, one output chunk per batch.
#[derive(Debug, Default)]
pub struct CsvEncoder {
    header_sent: bool,
}

impl CsvEncoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `batch` as CSV records to `out`, preceded by the header row the first time.
    pub fn encode(&mut self, batch: &RowBatch, out: &mut Vec<u8>) {
        if !self.header_sent {
            self.header_sent = true;
            for (i, name) in batch.columns().iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                push_field(out, name.as_bytes(), false);
            }
            out.extend_from_slice(b"\r\n");
        }
        let mut itoa = itoa::Buffer::new();
        let mut ryu = ryu::Buffer::new();
        for row in batch.rows() {
            for (i, value) in row.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                match value {
                    Value::Null => {}
                    Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
                    Value::Int(n) => out.extend_from_slice(itoa.format(*n).as_bytes()),
                    Value::Float(f) => out.extend_from_slice(float_text(*f, &mut ryu).as_bytes()),
                    Value::Text(s) | Value::Json(s) => push_field(out, s.as_bytes(), true),
                    Value::Bytes(b) if b.is_empty() => out.extend_from_slice(b"\"\""),
                    Value::Bytes(b) => {
                        out.extend_from_slice(
                            base64::engine::general_purpose::STANDARD
                                .encode(b)
                                .as_bytes(),
                        );
                    }
                }
            }
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// One field, quoted when it must be (or when empty and `quote_empty`, to tell it from NULL).
fn push_field(out: &mut Vec<u8>, field: &[u8], quote_empty: bool) {
    let needs_quotes = (quote_empty && field.is_empty())
        || field
            .iter()
            .any(|&c| matches!(c, b',' | b'"' | b'\r' | b'\n'));
    if !needs_quotes {
        out.extend_from_slice(field);
        return;
    }
    out.push(b'"');
    for piece in field.split_inclusive(|&c| c == b'"') {
        out.extend_from_slice(piece);
        if piece.last() == Some(&b'"') {
            out.push(b'"');
        }
    }
    out.push(b'"');
}

impl Transform for CsvEncoder {
    type In = RowBatch;
    type Out = Bytes;

    async fn apply(&mut self, batch: RowBatch, out: &mut Emit<'_, Bytes>) -> Result<(), BoxError> {
        let mut text = Vec::with_capacity(batch.len() * 64 + 256);
        self.encode(&batch, &mut text);
        if text.is_empty() {
            return Ok(());
        }
        out.send(Bytes::from(text)).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn batch(columns: &[&str], values: Vec<Value>) -> RowBatch {
        let columns: Vec<String> = columns.iter().map(|c| c.to_string()).collect();
        let mut b = RowBatch::new(Arc::from(columns), 1);
        for v in values {
            b.push(v);
        }
        b
    }

    fn csv(batches: &[RowBatch]) -> String {
        let mut encoder = CsvEncoder::new();
        let mut out = Vec::new();
        for b in batches {
            encoder.encode(b, &mut out);
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn quotes_only_what_rfc_4180_requires() {
        let b = batch(
            &["id", "note, with comma"],
            vec![
                Value::Int(1),
                Value::Text("plain".into()),
                Value::Int(-2),
                Value::Text("say \"hi\", then\r\nleave".into()),
                Value::Int(3),
                Value::Text("'single' quotes and ; stay".into()),
            ],
        );
        assert_eq!(
            csv(&[b]),
            "id,\"note, with comma\"\r\n1,plain\r\n-2,\"say \"\"hi\"\", then\r\nleave\"\r\n\
             3,'single' quotes and ; stay\r\n"
        );
    }

    #[test]
    fn null_empty_bytes_floats_and_booleans() {
        let b = batch(
            &["n", "e", "b", "f", "g", "t"],
            vec![
                Value::Null,
                Value::Text(String::new()),
                Value::Bytes(vec![0, 1, 2, 254, 255]),
                Value::Float(0.1),
                Value::Float(f64::NEG_INFINITY),
                Value::Bool(true),
            ],
        );
        assert_eq!(
            csv(&[b]),
            "n,e,b,f,g,t\r\n,\"\",AAEC/v8=,0.1,-Infinity,true\r\n"
        );
    }

    #[test]
    fn the_header_comes_once_even_for_no_rows() {
        let empty = batch(&["a", "b"], vec![]);
        assert_eq!(csv(std::slice::from_ref(&empty)), "a,b\r\n");
        let one = batch(&["a", "b"], vec![Value::Int(1), Value::Int(2)]);
        assert_eq!(csv(&[empty, one.clone(), one]), "a,b\r\n1,2\r\n1,2\r\n");
    }
}
