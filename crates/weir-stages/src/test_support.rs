//! Plumbing shared by the stage tests: chunk source, collecting sink, pipeline runner, system gzip.

use std::collections::VecDeque;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use weir_runtime::{BoxError, Pipeline, PipelineError, Report, Sink, Source, Transform};

/// Emits the given chunks in order.
pub(crate) struct Chunks(VecDeque<Bytes>);

impl Chunks {
    /// One item per chunk given.
    pub(crate) fn new<C: AsRef<[u8]>>(chunks: impl IntoIterator<Item = C>) -> Self {
        Chunks(
            chunks
                .into_iter()
                .map(|c| Bytes::copy_from_slice(c.as_ref()))
                .collect(),
        )
    }

    /// `data` cut every `chunk` bytes (the last item may be shorter).
    pub(crate) fn of(data: &[u8], chunk: usize) -> Self {
        Self::new(data.chunks(chunk.max(1)))
    }
}

impl Source for Chunks {
    type Item = Bytes;
    async fn next(&mut self) -> Result<Option<Bytes>, BoxError> {
        Ok(self.0.pop_front())
    }
}

/// Collects every item where the test can see it, also after a failure; clones share
/// what was collected.
#[derive(Clone, Default)]
pub(crate) struct Collect(Arc<Mutex<Vec<Bytes>>>);

impl Sink for Collect {
    type Item = Bytes;
    async fn write(&mut self, item: Bytes) -> Result<(), BoxError> {
        self.0.lock().unwrap().push(item);
        Ok(())
    }
}

impl Collect {
    /// The items, as they came.
    pub(crate) fn items(&self) -> Vec<Bytes> {
        self.0.lock().unwrap().clone()
    }

    /// Each item as UTF-8 text (panics on invalid UTF-8).
    pub(crate) fn strings(&self) -> Vec<String> {
        self.items()
            .iter()
            .map(|b| String::from_utf8(b.to_vec()).unwrap())
            .collect()
    }

    /// All the items, concatenated.
    pub(crate) fn bytes(&self) -> Vec<u8> {
        self.0.lock().unwrap().concat()
    }

    /// The length of the largest item (0 when none).
    pub(crate) fn largest_item(&self) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(Bytes::len)
            .max()
            .unwrap_or(0)
    }
}

/// Runs `chunks -> stage (named `name`) -> collect` with 256 KiB channels, and returns
/// the pipeline's result with the sink holding what reached it.
pub(crate) async fn run_transform<X>(
    name: &str,
    stage: X,
    chunks: Chunks,
) -> (Result<Report, PipelineError>, Collect)
where
    X: Transform<In = Bytes, Out = Bytes>,
{
    let sink = Collect::default();
    let result = Pipeline::builder()
        .buffer(256 * 1024)
        .source("chunks", chunks)
        .transform(name, stage)
        .sink("collect", sink.clone())
        .run()
        .await;
    (result, sink)
}

/// `data` as one gzip member, compressed by flate2 at level 6.
pub(crate) fn gzip_flate2(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// Pipes `input` through the system `gzip` with `args` (e.g. `["-c"]`, `["-dc"]`), asserts
/// it succeeded and returns its output.
pub(crate) fn system_gzip(args: &[&str], input: &[u8]) -> Vec<u8> {
    let mut child = Command::new("gzip")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("gzip is installed");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input).unwrap());
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(
        output.status.success(),
        "gzip {} failed: {output:?}",
        args.join(" ")
    );
    output.stdout
}
