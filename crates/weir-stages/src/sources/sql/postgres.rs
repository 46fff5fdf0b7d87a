//! PostgreSQL cursor: a read-only transaction and a portal, fetched a batch per pull.
//!
//! # Backpressure
//!
//! The next `Execute` of the portal (`query_portal(max_rows)`) is sent only when the
//! pipeline asks this source for its next batch, that is when the encoder has taken the
//! previous one. Between fetches the backend waits, `idle in transaction`, holding the
//! portal; nothing is read ahead.
//!
//! # Cancel safety
//!
//! Dropped between fetches (the usual case: a slow client went away), the source drops
//! the transaction (tokio-postgres then sends `ROLLBACK`, which closes the portal) and
//! the pooled connection goes back to its pool. Dropped while the server works on a
//! request (a long sort before the first row), it sends the backend a cancel request and
//! closes the connection instead of pooling it, so that the cancel cannot reach the
//! query of the connection's next user.
//!
//! # Types
//!
//! Values are read in PostgreSQL's binary format and rendered exactly: integers and
//! floats as numbers, `numeric` digit by digit from its base-10000 form (a decimal type
//! such as `rust_decimal` holds 28 digits, `numeric` up to 16383 after the point),
//! timestamps as RFC 3339, `bytea` as bytes. A column of another type is refused before
//! the first row, naming it, so the query can cast it to text.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::BytesMut;
use deadpool_postgres::Object;
use futures::{Stream, StreamExt};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{Format, FromSql, IsNull, ToSql, Type};
use tokio_postgres::{NoTls, Row};
use weir_runtime::{BoxError, Source};

use super::rows::{push_date, push_timestamp, Columns, RowBatch, Value};
use super::{CursorSettings, FetchCounter, SqlError};

type Batches = Pin<Box<dyn Stream<Item = Result<RowBatch, SqlError>> + Send>>;

/// Rows of one PostgreSQL query, a batch per pull.
pub struct PostgresSource {
    batches: Batches,
    first: Option<RowBatch>,
}

impl PostgresSource {
    /// Starts `sql` (numbered `$N` parameters, sent as text for the server to parse as
    /// the type it infers) on `client` and waits for the first batch, so that a query
    /// that fails at once fails before any response.
    pub async fn start(
        client: Object,
        sql: String,
        params: Vec<String>,
        settings: CursorSettings,
        fetched: FetchCounter,
    ) -> Result<Self, SqlError> {
        let batch_rows = settings.batch_rows.clamp(1, i32::MAX as usize);
        let mut batches: Batches = Box::pin(cursor(client, sql, params, batch_rows, fetched));
        let first = batches.next().await.ok_or_else(|| {
            SqlError::Failed("the query ended without describing its columns".into())
        })??;
        Ok(PostgresSource {
            batches,
            first: Some(first),
        })
    }
}

impl Source for PostgresSource {
    type Item = RowBatch;

    async fn next(&mut self) -> Result<Option<RowBatch>, BoxError> {
        if let Some(first) = self.first.take() {
            return Ok(Some(first));
        }
        Ok(self.batches.next().await.transpose()?)
    }
}

/// The export's pooled connection, and whether the server is working on a request of it.
struct Lease {
    client: Option<Object>,
    busy: Arc<AtomicBool>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.busy.load(Ordering::Relaxed) {
            return;
        }
        if let Some(client) = self.client.take() {
            let token = client.cancel_token();
            drop(Object::take(client));
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let _ = token.cancel_query(NoTls).await;
                });
            }
        }
    }
}

fn cursor(
    client: Object,
    sql: String,
    params: Vec<String>,
    batch_rows: usize,
    fetched: FetchCounter,
) -> impl Stream<Item = Result<RowBatch, SqlError>> + Send {
    async_stream::try_stream! {
        let busy = Arc::new(AtomicBool::new(true));
        let mut lease = Lease { client: Some(client), busy: Arc::clone(&busy) };
        let client = lease
            .client
            .as_mut()
            .ok_or_else(|| SqlError::Failed("the connection was already given back".into()))?;
        let tx = client
            .build_transaction()
            .read_only(true)
            .start()
            .await
            .map_err(classify)?;
        let statement = tx.prepare(&sql).await.map_err(classify)?;
        let columns: Columns = statement.columns().iter().map(|c| c.name().to_string()).collect();
        let kinds = statement
            .columns()
            .iter()
            .map(|c| Kind::of(c.type_()).ok_or_else(|| unsupported(c.name(), c.type_())))
            .collect::<Result<Vec<Kind>, SqlError>>()?;
        let texts: Vec<TextParam> = params.into_iter().map(TextParam).collect();
        let refs: Vec<&(dyn ToSql + Sync)> = texts.iter().map(|t| t as &(dyn ToSql + Sync)).collect();
        let portal = tx.bind(&statement, &refs).await.map_err(classify)?;
        let mut first = true;
        loop {
            let rows = tx
                .query_portal(&portal, batch_rows as i32)
                .await
                .map_err(classify)?;
            let done = rows.len() < batch_rows;
            if !rows.is_empty() || first {
                let batch = decode(&columns, &kinds, &rows)?;
                fetched.fetch_add(rows.len() as u64, Ordering::Relaxed);
                first = false;
                busy.store(false, Ordering::Relaxed);
                yield batch;
                busy.store(true, Ordering::Relaxed);
            }
            if done {
                break;
            }
        }
        drop(portal);
        tx.commit().await.map_err(classify)?;
        busy.store(false, Ordering::Relaxed);
    }
}

fn unsupported(column: &str, ty: &Type) -> SqlError {
    SqlError::Failed(format!(
        "column `{column}` has type {ty}, which weir does not export yet: \
         cast it in the query (`{column}::text`)"
    ))
}

/// A client's value for the database to parse: sent in text format so that `"10"` can
/// become an `integer`, a `numeric` or a `date`, whichever the query's context infers.
#[derive(Debug)]
struct TextParam(String);

impl ToSql for TextParam {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    fn encode_format(&self, _ty: &Type) -> Format {
        Format::Text
    }

    tokio_postgres::types::to_sql_checked!();
}

/// A value as the server sent it, before decoding: lets one decoder pick by column type.
struct Raw<'a>(Option<&'a [u8]>);

impl<'a> FromSql<'a> for Raw<'a> {
    fn from_sql(
        _ty: &Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(Some(raw)))
    }

    fn from_sql_null(_ty: &Type) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(None))
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }
}

/// How a column's binary values are read.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Bool,
    Int2,
    Int4,
    Int8,
    Oid,
    Float4,
    Float8,
    Text,
    Bytea,
    Numeric,
    Timestamp,
    TimestampTz,
    Date,
    Uuid,
    Json,
    Jsonb,
}

impl Kind {
    fn of(ty: &Type) -> Option<Kind> {
        Some(match *ty {
            Type::BOOL => Kind::Bool,
            Type::INT2 => Kind::Int2,
            Type::INT4 => Kind::Int4,
            Type::INT8 => Kind::Int8,
            Type::OID => Kind::Oid,
            Type::FLOAT4 => Kind::Float4,
            Type::FLOAT8 => Kind::Float8,
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => Kind::Text,
            Type::BYTEA => Kind::Bytea,
            Type::NUMERIC => Kind::Numeric,
            Type::TIMESTAMP => Kind::Timestamp,
            Type::TIMESTAMPTZ => Kind::TimestampTz,
            Type::DATE => Kind::Date,
            Type::UUID => Kind::Uuid,
            Type::JSON => Kind::Json,
            Type::JSONB => Kind::Jsonb,
            _ => return None,
        })
    }
}

fn decode(columns: &Columns, kinds: &[Kind], rows: &[Row]) -> Result<RowBatch, SqlError> {
    let mut batch = RowBatch::new(Arc::clone(columns), rows.len());
    for row in rows {
        for (i, &kind) in kinds.iter().enumerate() {
            let raw: Raw<'_> = row
                .try_get(i)
                .map_err(|e| SqlError::Failed(format!("column `{}`: {e}", columns[i])))?;
            let value = match raw.0 {
                None => Value::Null,
                Some(bytes) => decode_value(kind, bytes).map_err(|e| {
                    SqlError::Failed(format!(
                        "column `{}`: cannot decode a value: {e}",
                        columns[i]
                    ))
                })?,
            };
            batch.push(value);
        }
    }
    Ok(batch)
}

type DecodeError = Box<dyn std::error::Error + Sync + Send>;

/// Microseconds from 1970-01-01 to PostgreSQL's epoch, 2000-01-01.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
const PG_EPOCH_DAYS: i64 = 10_957;

fn decode_value(kind: Kind, raw: &[u8]) -> Result<Value, DecodeError> {
    Ok(match kind {
        Kind::Bool => Value::Bool(bool::from_sql(&Type::BOOL, raw)?),
        Kind::Int2 => Value::Int(i16::from_sql(&Type::INT2, raw)?.into()),
        Kind::Int4 => Value::Int(i32::from_sql(&Type::INT4, raw)?.into()),
        Kind::Int8 => Value::Int(i64::from_sql(&Type::INT8, raw)?),
        Kind::Oid => Value::Int(u32::from_sql(&Type::OID, raw)?.into()),
        Kind::Float4 => Value::Float(f32::from_sql(&Type::FLOAT4, raw)?.into()),
        Kind::Float8 => Value::Float(f64::from_sql(&Type::FLOAT8, raw)?),
        Kind::Text => Value::Text(std::str::from_utf8(raw)?.to_string()),
        Kind::Bytea => Value::Bytes(raw.to_vec()),
        Kind::Numeric => Value::Text(numeric_text(raw)?),
        Kind::Timestamp | Kind::TimestampTz => {
            let micros = i64::from_sql(&Type::INT8, raw)?;
            let utc = matches!(kind, Kind::TimestampTz);
            Value::Text(match micros {
                i64::MAX => "infinity".to_string(),
                i64::MIN => "-infinity".to_string(),
                m => {
                    let mut text = String::with_capacity(32);
                    let unix = m
                        .checked_add(PG_EPOCH_MICROS)
                        .ok_or("timestamp out of range")?;
                    push_timestamp(&mut text, unix, utc);
                    text
                }
            })
        }
        Kind::Date => {
            let days = i32::from_sql(&Type::INT4, raw)?;
            Value::Text(match days {
                i32::MAX => "infinity".to_string(),
                i32::MIN => "-infinity".to_string(),
                d => {
                    let mut text = String::with_capacity(10);
                    push_date(&mut text, i64::from(d) + PG_EPOCH_DAYS);
                    text
                }
            })
        }
        Kind::Uuid => {
            let b: [u8; 16] = raw.try_into().map_err(|_| "a uuid is 16 bytes")?;
            let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
            Value::Text(format!(
                "{}-{}-{}-{}-{}",
                &hex[..8],
                &hex[8..12],
                &hex[12..16],
                &hex[16..20],
                &hex[20..]
            ))
        }
        Kind::Json => Value::Json(std::str::from_utf8(raw)?.to_string()),
        Kind::Jsonb => match raw.split_first() {
            Some((1, text)) => Value::Json(std::str::from_utf8(text)?.to_string()),
            _ => return Err("unknown jsonb format version".into()),
        },
    })
}

/// `numeric`'s binary form as exact decimal text: `ndigits`, `weight` (of the first
/// base-10000 digit), `sign`, `dscale` (digits after the point), then the digits.
fn numeric_text(raw: &[u8]) -> Result<String, DecodeError> {
    let word = |i: usize| -> Result<u16, DecodeError> {
        raw.get(i..i + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| "truncated numeric".into())
    };
    let ndigits = usize::from(word(0)?);
    let weight = i64::from(word(2)? as i16);
    let sign = word(4)?;
    let dscale = i64::from(word(6)?);
    match sign {
        0x0000 | 0x4000 => {}
        0xC000 => return Ok("NaN".to_string()),
        0xD000 => return Ok("Infinity".to_string()),
        0xF000 => return Ok("-Infinity".to_string()),
        _ => return Err(format!("unknown numeric sign {sign:#x}").into()),
    }
    let digits = (0..ndigits)
        .map(|k| word(8 + 2 * k))
        .collect::<Result<Vec<u16>, _>>()?;
    // Digit k is worth 10000^(weight - k).
    let digit_at = |power: i64| -> u16 {
        let k = weight - power;
        usize::try_from(k)
            .ok()
            .and_then(|k| digits.get(k).copied())
            .unwrap_or(0)
    };
    let mut text = String::with_capacity(ndigits * 4 + 4);
    if sign == 0x4000 {
        text.push('-');
    }
    if weight < 0 {
        text.push('0');
    } else {
        text.push_str(&digit_at(weight).to_string());
        for power in (0..weight).rev() {
            text.push_str(&format!("{:04}", digit_at(power)));
        }
    }
    if dscale > 0 {
        text.push('.');
        let mut left = dscale;
        let mut power = -1;
        while left > 0 {
            let group = format!("{:04}", digit_at(power));
            let take = left.min(4) as usize;
            text.push_str(&group[..take]);
            left -= take as i64;
            power -= 1;
        }
    }
    Ok(text)
}

/// Sorts a driver error into the client's fault, the database's absence, or a failure.
fn classify(e: tokio_postgres::Error) -> SqlError {
    if e.is_closed() {
        return SqlError::Unavailable(format!("database connection lost: {e}"));
    }
    match e.as_db_error() {
        Some(db) => {
            let text = format!("{}: {}", db.severity(), db.message());
            let class = &db.code().code()[..2];
            if class == "22" || db.code() == &SqlState::INVALID_TEXT_REPRESENTATION {
                SqlError::BadParameter(text)
            } else if matches!(class, "08" | "53" | "57") {
                SqlError::Unavailable(text)
            } else {
                SqlError::Failed(text)
            }
        }
        None => SqlError::Failed(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric(ndigits: u16, weight: i16, sign: u16, dscale: u16, digits: &[u16]) -> String {
        let mut raw = Vec::new();
        for w in [ndigits, weight as u16, sign, dscale].iter().chain(digits) {
            raw.extend_from_slice(&w.to_be_bytes());
        }
        numeric_text(&raw).unwrap()
    }

    #[test]
    fn numeric_is_exact() {
        // 12345678.9012 = 1234|5678.9012
        assert_eq!(numeric(3, 1, 0, 4, &[1234, 5678, 9012]), "12345678.9012");
        assert_eq!(numeric(1, -1, 0x4000, 4, &[1]), "-0.0001");
        assert_eq!(numeric(0, 0, 0, 0, &[]), "0");
        assert_eq!(numeric(0, 0, 0, 3, &[]), "0.000");
        // 1e-20 with scale 25: weight -5 (10000^-5), digit 1 -> 0.0000000000000000000100000
        assert_eq!(numeric(1, -5, 0, 25, &[1]), "0.0000000000000000000100000");
        // 10^8 = 1 0000 0000: trailing zero digits are not sent
        assert_eq!(numeric(1, 2, 0, 0, &[1]), "100000000");
        assert_eq!(numeric(0, 0, 0xC000, 0, &[]), "NaN");
        assert!(numeric_text(&[0, 1]).is_err());
    }
}
