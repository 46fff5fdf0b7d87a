//! Rows as they travel from a database cursor to an encoder: batches of typed values.

use std::sync::Arc;

use weir_runtime::Weighted;

/// One value of one column, already in the form every export format can render
/// without losing anything: exact decimals and timestamps arrive as text.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// Text, and values exported in their exact text form (numeric, timestamps, uuids).
    Text(String),
    Bytes(Vec<u8>),
    /// A JSON document, embedded as such in NDJSON.
    Json(String),
}

impl Value {
    /// Heap bytes this value holds, for the batch's weight.
    fn heap_bytes(&self) -> usize {
        match self {
            Value::Text(s) | Value::Json(s) => s.len(),
            Value::Bytes(b) => b.len(),
            _ => 0,
        }
    }
}

/// The column names of a result, shared by all its batches.
pub type Columns = Arc<[String]>;

/// Up to a batch's worth of rows, stored row after row.
#[derive(Debug, Clone)]
pub struct RowBatch {
    columns: Columns,
    values: Vec<Value>,
    weight: usize,
}

impl RowBatch {
    pub fn new(columns: Columns, rows: usize) -> Self {
        let values = Vec::with_capacity(rows * columns.len());
        RowBatch {
            columns,
            values,
            weight: 0,
        }
    }

    /// Appends the next value, row by row: a row is complete after one value per column.
    pub fn push(&mut self, value: Value) {
        self.weight += std::mem::size_of::<Value>() + value.heap_bytes();
        self.values.push(value);
    }

    pub fn columns(&self) -> &Columns {
        &self.columns
    }

    /// Complete rows held.
    pub fn len(&self) -> usize {
        self.values
            .len()
            .checked_div(self.columns.len())
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    pub fn rows(&self) -> impl Iterator<Item = &[Value]> {
        self.values.chunks_exact(self.columns.len().max(1))
    }
}

impl Weighted for RowBatch {
    fn weight(&self) -> usize {
        self.weight
    }
}

/// A float as the shortest text that reads back as the same value; the non-finite ones
/// by name, as no export format has a number for them.
pub fn float_text(f: f64, buf: &mut ryu::Buffer) -> &str {
    if f.is_nan() {
        "NaN"
    } else if f.is_infinite() {
        if f > 0.0 {
            "Infinity"
        } else {
            "-Infinity"
        }
    } else {
        buf.format_finite(f)
    }
}

/// Appends `micros` since the Unix epoch as RFC 3339 (`2024-05-01T12:30:00.25Z`), or
/// without the `Z` when `utc` is false (a timestamp that does not say its zone).
///
/// By hand (Hinnant's civil-from-days) because it runs once per timestamp cell of
/// multi-million-row exports, where a format-string formatter is the slowest part.
pub fn push_timestamp(out: &mut String, micros: i64, utc: bool) {
    let days = micros.div_euclid(86_400_000_000);
    let of_day = micros.rem_euclid(86_400_000_000);
    push_date(out, days);
    let secs = of_day / 1_000_000;
    let frac = of_day % 1_000_000;
    out.push('T');
    push_padded(out, secs / 3600, 2);
    out.push(':');
    push_padded(out, secs / 60 % 60, 2);
    out.push(':');
    push_padded(out, secs % 60, 2);
    if frac != 0 {
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(frac + 1_000_000);
        out.push('.');
        out.push_str(digits[1..].trim_end_matches('0'));
    }
    if utc {
        out.push('Z');
    }
}

/// Appends the date `days` after 1970-01-01 as `YYYY-MM-DD` (years past 9999 get more digits).
pub fn push_date(out: &mut String, days: i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    if year < 0 {
        out.push('-');
    }
    push_padded(out, year.abs(), 4);
    out.push('-');
    push_padded(out, month, 2);
    out.push('-');
    push_padded(out, day, 2);
}

fn push_padded(out: &mut String, n: i64, width: usize) {
    let mut buf = itoa::Buffer::new();
    let digits = buf.format(n);
    for _ in digits.len()..width {
        out.push('0');
    }
    out.push_str(digits);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(micros: i64, utc: bool) -> String {
        let mut s = String::new();
        push_timestamp(&mut s, micros, utc);
        s
    }

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(ts(0, true), "1970-01-01T00:00:00Z");
        assert_eq!(ts(1_714_566_600_250_000, true), "2024-05-01T12:30:00.25Z");
        assert_eq!(ts(951_782_400_000_001, false), "2000-02-29T00:00:00.000001");
        assert_eq!(ts(-1, true), "1969-12-31T23:59:59.999999Z");
        assert_eq!(ts(253_402_300_799_000_000, true), "9999-12-31T23:59:59Z");
    }

    #[test]
    fn dates_before_the_epoch_and_year_zero() {
        let mut s = String::new();
        push_date(&mut s, -719_528);
        assert_eq!(s, "0000-01-01");
        s.clear();
        push_date(&mut s, -25_567);
        assert_eq!(s, "1900-01-01");
    }

    #[test]
    fn a_batch_weighs_its_values_and_splits_into_rows() {
        let mut batch = RowBatch::new(Arc::from(vec!["a".to_string(), "b".to_string()]), 2);
        batch.push(Value::Int(1));
        batch.push(Value::Text("xyz".into()));
        batch.push(Value::Null);
        batch.push(Value::Bytes(vec![0; 10]));
        assert_eq!(batch.len(), 2);
        assert_eq!(batch.weight(), 4 * std::mem::size_of::<Value>() + 13);
        let rows: Vec<&[Value]> = batch.rows().collect();
        assert_eq!(rows[1], &[Value::Null, Value::Bytes(vec![0; 10])]);
    }
}
