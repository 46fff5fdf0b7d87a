//! Runs a byte transform of the catalogue on each record's value, keeping its metadata.

use bytes::Bytes;
use weir_runtime::{BoxError, Emit, Transform};

use crate::catalogue::{AnyTransform, StageSpecError, TransformSpec};
use crate::record::Record;

/// Applies a catalogue transform to every record's value on its own: each value is a whole
/// input (a gzip member, a set of lines), so nothing of one record leaks into the next.
/// The output is one record, its value the transform's pieces joined, except for `lines`,
/// which splits: a record per line (without its newline), sharing the ack token. A value that becomes nothing
/// acks its token, so the source may commit past it.
pub struct PerRecord {
    spec: TransformSpec,
    /// Kept across records when its state is only a rate (throttle) or is reset by
    /// `finish` (lines, redact); built anew for each record otherwise.
    kept: Option<AnyTransform>,
}

impl PerRecord {
    pub fn new(spec: TransformSpec) -> Result<Self, StageSpecError> {
        let kept = match spec {
            TransformSpec::Pass
            | TransformSpec::Throttle { .. }
            | TransformSpec::Lines { .. }
            | TransformSpec::Redact { .. }
            | TransformSpec::SseEncode(_) => Some(spec.build()?),
            _ => {
                spec.build()?;
                None
            }
        };
        Ok(PerRecord { spec, kept })
    }
}

impl Transform for PerRecord {
    type In = Record;
    type Out = Record;

    async fn apply(
        &mut self,
        mut record: Record,
        out: &mut Emit<'_, Record>,
    ) -> Result<(), BoxError> {
        let mut pieces: Vec<Bytes> = Vec::new();
        let mut fresh = None;
        let inner = match &mut self.kept {
            Some(t) => t,
            None => fresh.insert(self.spec.build()?),
        };
        let value = std::mem::take(&mut record.value);
        let run = async {
            inner.apply(value, &mut Emit::collect(&mut pieces)).await?;
            inner.finish(&mut Emit::collect(&mut pieces)).await
        };
        run.await
            .map_err(|e| format!("{}: {e}", record.describe()))?;
        if pieces.len() > 1 {
            pieces = vec![Bytes::from(pieces.concat())];
        }
        if matches!(self.spec, TransformSpec::Lines { .. }) {
            if let Some(joined) = pieces.pop() {
                pieces = crate::codec::lines::split_lines(joined);
            }
        }
        let Some(last) = pieces.pop() else {
            std::mem::take(&mut record.ack).ack();
            return Ok(());
        };
        for piece in pieces {
            out.send(record.with_value(piece)).await?;
        }
        record.value = last;
        out.send(record).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalogue::parse_transform;
    use weir_runtime::{Ledger, Pipeline, Sink, Source};

    struct Values(std::vec::IntoIter<&'static str>, Ledger<u8>, i64);
    impl Source for Values {
        type Item = Record;
        async fn next(&mut self) -> Result<Option<Record>, BoxError> {
            self.2 += 1;
            Ok(self.0.next().map(|v| {
                Record::of_value(Bytes::from_static(v.as_bytes()), self.1.track(&0, self.2))
            }))
        }
    }
    struct Collect(std::sync::Arc<std::sync::Mutex<Vec<Bytes>>>);
    impl Sink for Collect {
        type Item = Record;
        async fn write(&mut self, r: Record) -> Result<(), BoxError> {
            self.0.lock().unwrap().push(r.value.clone());
            r.ack.ack();
            Ok(())
        }
    }

    async fn run(spec: &str, values: Vec<&'static str>) -> (Vec<Bytes>, Vec<(u8, i64)>) {
        let ledger = Ledger::new();
        let out = std::sync::Arc::default();
        Pipeline::builder()
            .source("values", Values(values.into_iter(), ledger.clone(), 0))
            .transform(
                spec,
                PerRecord::new(parse_transform(spec).unwrap()).unwrap(),
            )
            .sink("collect", Collect(std::sync::Arc::clone(&out)))
            .run()
            .await
            .unwrap();
        let got = out.lock().unwrap().clone();
        (got, ledger.advanced())
    }

    #[tokio::test]
    async fn lines_split_a_record_and_never_join_two() {
        let (out, marks) = run("lines", vec!["a\nb\n", "c", "d\n"]).await;
        assert_eq!(out, ["a", "b", "c", "d"]);
        assert_eq!(marks, vec![(0, 4)], "every part acked");
    }

    #[tokio::test]
    async fn gzip_makes_one_member_per_record() {
        let (out, marks) = run("gzip:1", vec!["first", "second"]).await;
        assert_eq!(out.len(), 2, "one record per record");
        let joined: Vec<u8> = out.concat();
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut flate2::read::MultiGzDecoder::new(&joined[..]),
            &mut text,
        )
        .unwrap();
        assert_eq!(text, "firstsecond");
        assert_eq!(marks, vec![(0, 3)]);
    }
}
