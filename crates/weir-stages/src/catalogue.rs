//! The transforms known by name, written `name[:argument]` (on `weir run`'s command line
//! and in a pipeline's `transforms`), and how each is built.

use crate::codec::gunzip::GunzipLimits;
use crate::codec::sse::SseLimits;
use crate::transforms::gunzip::{Gunzip, GunzipConfig};
use crate::transforms::gzip::{Gzip, GzipConfig};
use crate::transforms::redact::Redact;
use crate::transforms::sse_decode::SseDecode;
use crate::transforms::sse_encode::{SseEncode, SseEncodeLimits};
use crate::transforms::{lines::Lines, pass::Pass, throttle::Throttle};
use bytes::Bytes;
use weir_runtime::{BoxError, Emit, Transform};

use weir_runtime::size::{parse_buffer, parse_size, SizeError};

use crate::codec::gunzip::GunzipError;
use crate::codec::gzip::GzipError;
use crate::codec::redact::RedactConfigError;

/// A transform written wrong, or one that could not be built; each names the stage.
#[derive(Debug, thiserror::Error)]
pub enum StageSpecError {
    #[error("{stage}: `{pair}` is not key=value (options: {options})")]
    NotKeyValue {
        stage: String,
        pair: String,
        options: String,
    },
    #[error("{stage}: unknown option `{key}` (options: {options})")]
    UnknownOption {
        stage: String,
        key: String,
        options: String,
    },
    /// `at` is the stage, and the option when there is one (`gunzip: max`).
    #[error("{at}: {error}")]
    Size { at: String, error: SizeError },
    #[error("stage `{stage}` takes no argument (got `{arg}`)")]
    TakesNoArgument { stage: String, arg: String },
    #[error("stage `throttle` needs a rate: throttle:RATE, e.g. throttle:1MB")]
    NoRate,
    #[error("throttle: the rate must be at least 1 byte/s")]
    ZeroRate,
    #[error("gzip: level `{0}` is not 0-9")]
    GzipLevel(String),
    #[error("gunzip: ratio `{0}` is not a positive integer")]
    GunzipRatio(String),
    #[error("`{0}` can only be the first stage (source) or the last (sink)")]
    SourceOrSinkOnly(String),
    #[error("unknown stage `{0}`; `weir run --help` lists the stages")]
    UnknownStage(String),
    #[error(transparent)]
    Gzip(#[from] GzipError),
    #[error(transparent)]
    Gunzip(#[from] GunzipError),
    #[error("redact: {0}")]
    Redact(RedactConfigError),
}

/// The catalogue shown by `weir run --help`.
pub const CATALOGUE: &str = r#"STAGES (written name[:argument]; the first is the source, the last the sink):
  -                    as source: standard input; as sink: standard output
  file:PATH            as source: read PATH; as sink: create or truncate PATH
  kafka:BROKERS/TOPIC[?group=GROUP]
                       as source: read every partition of TOPIC to its end as a member
                       of GROUP (default weir-run), a record per message, then commit
                       once the sink has finished; as sink: a message per record (per
                       line, from a file), acked by the broker (acks=all, idempotent).
                       Transforms then apply to each message's value on its own
  pass                 identity: passes every chunk on (measures the runtime itself)
  lines[:MAX]          regroup into whole lines; a line longer than MAX (default 1MiB)
                       is an error naming the line
  throttle:RATE        at most RATE bytes per second (e.g. 100KiB, 2MB); for demos and
                       for testing slow consumers
  gzip[:LEVEL]         gzip, LEVEL 0-9 (default 6). Blocks of 128KiB are compressed on
                       all cores at once, pigz-style; the output is one standard gzip
                       member that plain gunzip reads
  gunzip[:ratio=N,max=SIZE]
                       gunzip (concatenated members too). Output is produced 64KiB at a
                       time, so a small input that expands hugely cannot flood memory;
                       past N times the input (default 1000, checked after the first
                       1MiB) or past SIZE in all (default none) it stops with an error
  redact[:KIND,...]    masks PII in text: email, phone, card (Luhn-checked), iban
                       (mod-97-checked), ipv4, secret (sk-..., AKIA..., ghp_...,
                       Bearer ...); default all. A value split across chunks is
                       still found; only the shortest tail that could still grow into
                       a match is held back (at most 256 bytes)
  sse-decode[:max-line=SIZE,max-event=SIZE]
                       Server-Sent Events in, one JSON object per event per line out:
                       {"event": .., "data": .., "id": ..} (event/id null when unset,
                       id being the last event id in effect; "retry" when given).
                       Follows the WHATWG event-stream rules (CR, LF, CRLF, BOM,
                       comments, multi-line data). A line over max-line (default 64KiB)
                       or an event over max-event (default 1MiB) is an error.
  sse-encode[:max-line=SIZE]
                       the reverse: NDJSON lines {"data": "..", "event": .., "id": ..,
                       "retry": N} in, Server-Sent Events out; a line over max-line
                       (default 1MiB) or one that is not such an object is an error
                       naming the line

SIZES: a number with an optional unit: B, KB/MB/GB (powers of 1000),
KiB/MiB/GiB or k/m/g (powers of 1024). Example: 64KiB, 2MB, 1m."#;

/// A transform as written on the command line.
#[derive(Clone, Debug, PartialEq)]
pub enum TransformSpec {
    Pass,
    Lines { max_line: usize },
    Throttle { rate: u64 },
    SseDecode(SseLimits),
    SseEncode(SseEncodeLimits),
    Gzip { level: u32 },
    Gunzip(GunzipLimits),
    Redact { kinds: Vec<String> },
}

/// Parses `key=value,key=value` for stage `stage`, accepting only `keys`.
fn options<'a>(
    stage: &str,
    arg: Option<&'a str>,
    keys: &[&str],
) -> Result<Vec<(&'a str, &'a str)>, StageSpecError> {
    let Some(arg) = arg else {
        return Ok(Vec::new());
    };
    arg.split(',')
        .map(|pair| {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| StageSpecError::NotKeyValue {
                    stage: stage.into(),
                    pair: pair.into(),
                    options: keys.join(", "),
                })?;
            if keys.contains(&k) {
                Ok((k, v))
            } else {
                Err(StageSpecError::UnknownOption {
                    stage: stage.into(),
                    key: k.into(),
                    options: keys.join(", "),
                })
            }
        })
        .collect()
}

fn size_option(stage: &str, key: &str, value: &str) -> Result<usize, StageSpecError> {
    parse_buffer(value).map_err(|error| StageSpecError::Size {
        at: format!("{stage}: {key}"),
        error,
    })
}

/// `name:argument` as `(name, Some(argument))`.
pub fn split(spec: &str) -> (&str, Option<&str>) {
    match spec.split_once(':') {
        Some((name, arg)) => (name, Some(arg)),
        None => (spec, None),
    }
}

pub fn parse_transform(spec: &str) -> Result<TransformSpec, StageSpecError> {
    let (name, arg) = split(spec);
    let no_arg = |t: TransformSpec| match arg {
        None => Ok(t),
        Some(a) => Err(StageSpecError::TakesNoArgument {
            stage: name.into(),
            arg: a.into(),
        }),
    };
    let size_error = |at: &str| {
        let at = at.to_string();
        move |error| StageSpecError::Size { at, error }
    };
    match name {
        "pass" => no_arg(TransformSpec::Pass),
        "lines" => Ok(TransformSpec::Lines {
            max_line: match arg {
                Some(a) => parse_buffer(a).map_err(size_error("lines"))?,
                None => crate::transforms::lines::DEFAULT_MAX_LINE,
            },
        }),
        "throttle" => {
            let a = arg.ok_or(StageSpecError::NoRate)?;
            let rate = parse_size(a).map_err(size_error("throttle"))?;
            if rate == 0 {
                return Err(StageSpecError::ZeroRate);
            }
            Ok(TransformSpec::Throttle { rate })
        }
        "gzip" => Ok(TransformSpec::Gzip {
            level: match arg {
                None => GzipConfig::default().level,
                Some(a) => a
                    .parse()
                    .ok()
                    .filter(|l| *l <= 9)
                    .ok_or_else(|| StageSpecError::GzipLevel(a.into()))?,
            },
        }),
        "gunzip" => {
            let mut limits = GunzipLimits::default();
            for (k, v) in options(name, arg, &["ratio", "max"])? {
                match k {
                    "ratio" => {
                        limits.max_ratio = v
                            .parse()
                            .ok()
                            .filter(|r| *r > 0)
                            .ok_or_else(|| StageSpecError::GunzipRatio(v.into()))?
                    }
                    _ => limits.max_output = Some(size_option(name, k, v)? as u64),
                }
            }
            Ok(TransformSpec::Gunzip(limits))
        }
        "redact" => Ok(TransformSpec::Redact {
            kinds: match arg {
                None => ["email", "phone", "card", "iban", "ipv4", "secret"]
                    .map(String::from)
                    .to_vec(),
                Some(a) => a.split(',').map(String::from).collect(),
            },
        }),
        "sse-decode" => {
            let mut limits = SseLimits::default();
            for (k, v) in options(name, arg, &["max-line", "max-event"])? {
                let n = size_option(name, k, v)?;
                match k {
                    "max-line" => limits.max_line = n,
                    _ => limits.max_event = n,
                }
            }
            Ok(TransformSpec::SseDecode(limits))
        }
        "sse-encode" => {
            let mut limits = SseEncodeLimits::default();
            for (k, v) in options(name, arg, &["max-line"])? {
                limits.max_line = size_option(name, k, v)?;
            }
            Ok(TransformSpec::SseEncode(limits))
        }
        "file" | "-" => Err(StageSpecError::SourceOrSinkOnly(spec.into())),
        _ => Err(StageSpecError::UnknownStage(name.into())),
    }
}

/// Any transform of the catalogue, so a list of them can form one typed pipeline.
pub enum AnyTransform {
    Pass(Pass),
    Lines(Lines),
    Throttle(Throttle),
    SseDecode(SseDecode),
    SseEncode(SseEncode),
    Gzip(Gzip),
    Gunzip(Gunzip),
    Redact(Redact),
}

impl TransformSpec {
    pub fn build(&self) -> Result<AnyTransform, StageSpecError> {
        Ok(match self {
            TransformSpec::Pass => AnyTransform::Pass(Pass),
            TransformSpec::Lines { max_line } => AnyTransform::Lines(Lines::new(*max_line)),
            TransformSpec::Throttle { rate } => AnyTransform::Throttle(Throttle::new(*rate)),
            TransformSpec::SseDecode(limits) => AnyTransform::SseDecode(SseDecode::new(*limits)),
            TransformSpec::SseEncode(limits) => AnyTransform::SseEncode(SseEncode::new(*limits)),
            TransformSpec::Gzip { level } => AnyTransform::Gzip(Gzip::new(GzipConfig {
                level: *level,
                ..GzipConfig::default()
            })?),
            TransformSpec::Redact { kinds } => {
                let kinds: Vec<&str> = kinds.iter().map(String::as_str).collect();
                AnyTransform::Redact(Redact::new(&kinds, &[]).map_err(StageSpecError::Redact)?)
            }
            TransformSpec::Gunzip(limits) => AnyTransform::Gunzip(Gunzip::new(GunzipConfig {
                limits: *limits,
                ..GunzipConfig::default()
            })?),
        })
    }
}

impl Transform for AnyTransform {
    type In = Bytes;
    type Out = Bytes;

    async fn apply(&mut self, item: Bytes, out: &mut Emit<'_, Bytes>) -> Result<(), BoxError> {
        match self {
            AnyTransform::Pass(t) => t.apply(item, out).await,
            AnyTransform::Lines(t) => t.apply(item, out).await,
            AnyTransform::Throttle(t) => t.apply(item, out).await,
            AnyTransform::SseDecode(t) => t.apply(item, out).await,
            AnyTransform::SseEncode(t) => t.apply(item, out).await,
            AnyTransform::Gzip(t) => t.apply(item, out).await,
            AnyTransform::Gunzip(t) => t.apply(item, out).await,
            AnyTransform::Redact(t) => t.apply(item, out).await,
        }
    }

    async fn finish(&mut self, out: &mut Emit<'_, Bytes>) -> Result<(), BoxError> {
        match self {
            AnyTransform::Pass(t) => t.finish(out).await,
            AnyTransform::Lines(t) => t.finish(out).await,
            AnyTransform::Throttle(t) => t.finish(out).await,
            AnyTransform::SseDecode(t) => t.finish(out).await,
            AnyTransform::SseEncode(t) => t.finish(out).await,
            AnyTransform::Gzip(t) => t.finish(out).await,
            AnyTransform::Gunzip(t) => t.finish(out).await,
            AnyTransform::Redact(t) => t.finish(out).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transforms_parse_with_their_arguments() {
        assert_eq!(parse_transform("pass").unwrap(), (TransformSpec::Pass));
        assert_eq!(
            parse_transform("lines:4KiB").unwrap(),
            (TransformSpec::Lines { max_line: 4096 })
        );
        assert_eq!(
            parse_transform("throttle:2MB").unwrap(),
            (TransformSpec::Throttle { rate: 2_000_000 })
        );
        assert_eq!(
            parse_transform("gunzip:ratio=50,max=1MiB").unwrap(),
            (TransformSpec::Gunzip(GunzipLimits {
                max_ratio: 50,
                max_output: Some(1 << 20)
            }))
        );
        assert_eq!(
            parse_transform("gzip:1").unwrap(),
            (TransformSpec::Gzip { level: 1 })
        );
        assert_eq!(
            parse_transform("sse-decode:max-line=1KiB,max-event=2KiB").unwrap(),
            (TransformSpec::SseDecode(SseLimits {
                max_line: 1024,
                max_event: 2048
            }))
        );
    }

    #[test]
    fn mistakes_are_named() {
        assert!(parse_transform("gzipp")
            .unwrap_err()
            .to_string()
            .contains("unknown stage `gzipp`"));
        assert!(parse_transform("pass:1")
            .unwrap_err()
            .to_string()
            .contains("takes no argument"));
        assert!(parse_transform("throttle")
            .unwrap_err()
            .to_string()
            .contains("needs a rate"));
        assert!(parse_transform("file:x")
            .unwrap_err()
            .to_string()
            .contains("source"));
        assert!(parse_transform("sse-decode:max-line")
            .unwrap_err()
            .to_string()
            .contains("not key=value"));
        assert!(parse_transform("sse-decode:maxline=1")
            .unwrap_err()
            .to_string()
            .contains("unknown option `maxline`"));
        assert!(parse_transform("gzip:10")
            .unwrap_err()
            .to_string()
            .contains("not 0-9"));
        assert!(parse_transform("gunzip:ratio=0")
            .unwrap_err()
            .to_string()
            .contains("positive"));
    }
}
