//! Parallel gzip compression as a stage: blocks deflated on rayon's pool, emitted in order.

use std::collections::VecDeque;
use std::num::NonZeroUsize;

use bytes::{Bytes, BytesMut};
use tokio::sync::oneshot;
use weir_runtime::{BoxError, Emit, Transform};

use crate::codec::gzip::{
    compress_block, header, next_dictionary, CompressedBlock, GzipError, GzipLevel, Trailer,
    DEFAULT_BLOCK_SIZE, MIN_BLOCK_SIZE,
};

/// Settings of a [`Gzip`] stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GzipConfig {
    /// Deflate level, 0 (store) to 9 (smallest); default 6.
    pub level: u32,
    /// Uncompressed bytes per independently compressed block; default 128 KiB.
    pub block_size: usize,
    /// Blocks compressed at once; default the number of available cores.
    pub workers: usize,
}

impl Default for GzipConfig {
    fn default() -> Self {
        GzipConfig {
            level: GzipLevel::DEFAULT.get(),
            block_size: DEFAULT_BLOCK_SIZE,
            workers: std::thread::available_parallelism().map_or(1, NonZeroUsize::get),
        }
    }
}

type Job = oneshot::Receiver<Result<CompressedBlock, GzipError>>;

/// Compresses a byte stream into one gzip member, pigz-style: the input is cut into
/// blocks, up to `workers` blocks are deflated at once on rayon's thread pool (one thread per core), and the
/// pieces are emitted in input order.
///
/// # Memory
///
/// Before starting a block while `workers` are in flight, the stage waits for the oldest
/// one and sends its output downstream (where the channel's backpressure applies). So it
/// holds at most `workers` jobs, each with its block, its 32 KiB dictionary, its output
/// (at most `block_size` + 0.03%) and, while running, a deflate state of about 256 KiB;
/// plus the block being filled and the next dictionary. In all, at most about
/// `workers × (2 × block_size + 288 KiB) + block_size + 32 KiB`: 1.2 MiB with the
/// defaults on two cores.
///
/// # Cancel safety
///
/// Dropping the stage drops its jobs' handles; a block already being compressed runs
/// to its end on its thread and is then freed.
pub struct Gzip {
    level: GzipLevel,
    block_size: usize,
    workers: usize,
    filling: BytesMut,
    dictionary: Vec<u8>,
    in_flight: VecDeque<Job>,
    trailer: Trailer,
    header_sent: bool,
}

impl Gzip {
    pub fn new(config: GzipConfig) -> Result<Self, GzipError> {
        let level = GzipLevel::new(config.level)?;
        if config.block_size < MIN_BLOCK_SIZE {
            return Err(GzipError::BlockTooSmall(config.block_size));
        }
        if config.workers == 0 {
            return Err(GzipError::NoWorkers);
        }
        Ok(Gzip {
            level,
            block_size: config.block_size,
            workers: config.workers,
            filling: BytesMut::with_capacity(config.block_size),
            dictionary: Vec::new(),
            in_flight: VecDeque::with_capacity(config.workers),
            trailer: Trailer::new(),
            header_sent: false,
        })
    }

    async fn start(
        &mut self,
        block: Bytes,
        last: bool,
        out: &mut Emit<'_, Bytes>,
    ) -> Result<(), BoxError> {
        // Finished blocks go out now rather than when the queue is full: less latency.
        while self.in_flight.len() >= self.workers
            || self.in_flight.front().is_some_and(|job| !job.is_empty())
        {
            self.emit_oldest(out).await?;
        }
        let next = next_dictionary(&self.dictionary, &block);
        let dictionary = std::mem::replace(&mut self.dictionary, next);
        let level = self.level;
        let (done, job) = oneshot::channel();
        // rayon's pool has one thread per core and keeps them: tokio's blocking pool
        // would add threads under load, each growing the allocator's per-thread memory.
        rayon::spawn(move || {
            let compressed =
                std::panic::catch_unwind(|| compress_block(level, &dictionary, &block, last))
                    .unwrap_or(Err(GzipError::WorkerPanicked));
            let _ = done.send(compressed);
        });
        self.in_flight.push_back(job);
        Ok(())
    }

    async fn emit_oldest(&mut self, out: &mut Emit<'_, Bytes>) -> Result<(), BoxError> {
        let Some(job) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let block = job.await.map_err(|_| GzipError::WorkerCancelled)??;
        self.trailer.append(&block);
        if !self.header_sent {
            self.header_sent = true;
            out.send(Bytes::copy_from_slice(&header(self.level)))
                .await?;
        }
        out.send(Bytes::from(block.deflate)).await
    }
}

impl Transform for Gzip {
    type In = Bytes;
    type Out = Bytes;

    async fn apply(&mut self, mut item: Bytes, out: &mut Emit<'_, Bytes>) -> Result<(), BoxError> {
        while !item.is_empty() {
            let take = (self.block_size - self.filling.len()).min(item.len());
            self.filling.extend_from_slice(&item.split_to(take));
            if self.filling.len() == self.block_size {
                let full = BytesMut::with_capacity(self.block_size);
                let block = std::mem::replace(&mut self.filling, full).freeze();
                self.start(block, false, out).await?;
            }
        }
        Ok(())
    }

    async fn finish(&mut self, out: &mut Emit<'_, Bytes>) -> Result<(), BoxError> {
        let rest = std::mem::take(&mut self.filling).freeze();
        self.start(rest, true, out).await?;
        while !self.in_flight.is_empty() {
            self.emit_oldest(out).await?;
        }
        out.send(Bytes::copy_from_slice(&self.trailer.to_bytes()))
            .await
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::test_support::{run_transform, system_gzip, Chunks};
    use std::io::Read;

    fn gunzip(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(data)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    pub(crate) fn ndjson(len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 100);
        let mut n = 0u64;
        while out.len() < len {
            n += 1;
            let id = n.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40;
            out.extend_from_slice(
                format!("{{\"n\":{n},\"id\":\"{id:06x}\",\"msg\":\"request completed\"}}\n")
                    .as_bytes(),
            );
        }
        out.truncate(len);
        out
    }

    fn config(level: u32, block_size: usize, workers: usize) -> GzipConfig {
        GzipConfig {
            level,
            block_size,
            workers,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn round_trips_around_block_boundaries() {
        let block = 4096;
        let data = ndjson(5 * block + 3);
        for level in [0, 1, 6, 9] {
            for len in [0, 1, block - 1, block, block + 1, 3 * block, 5 * block + 3] {
                for chunk in [1000, block, 3 * block] {
                    let gzip = Gzip::new(config(level, block, 2)).unwrap();
                    let (result, sink) =
                        run_transform("gzip", gzip, Chunks::of(&data[..len], chunk)).await;
                    result.unwrap();
                    assert_eq!(
                        gunzip(&sink.bytes()),
                        &data[..len],
                        "level {level}, {len} bytes in {chunk}-byte chunks"
                    );
                }
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn system_gunzip_reads_the_output() {
        let data = ndjson(1_000_000);
        for (block, workers) in [(DEFAULT_BLOCK_SIZE, 2), (40_000, 1), (MIN_BLOCK_SIZE, 4)] {
            let gzip = Gzip::new(config(6, block, workers)).unwrap();
            let (result, sink) = run_transform("gzip", gzip, Chunks::of(&data, 65536)).await;
            result.unwrap();
            assert_eq!(system_gzip(&["-dc"], &sink.bytes()), data, "block {block}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn output_does_not_depend_on_the_number_of_workers() {
        let data = ndjson(1_500_000);
        let mut outputs = Vec::new();
        for workers in [1, 2, 5] {
            let gzip = Gzip::new(config(6, 64 * 1024, workers)).unwrap();
            let (result, sink) = run_transform("gzip", gzip, Chunks::of(&data, 10_000)).await;
            result.unwrap();
            outputs.push(sink.bytes());
        }
        assert_eq!(outputs[0], outputs[1]);
        assert_eq!(outputs[0], outputs[2]);
    }

    #[tokio::test]
    async fn empty_input_is_a_valid_gzip_file() {
        let (result, sink) = run_transform(
            "gzip",
            Gzip::new(GzipConfig::default()).unwrap(),
            Chunks::new(Vec::<Bytes>::new()),
        )
        .await;
        result.unwrap();
        assert_eq!(sink.bytes().len(), 20);
        assert_eq!(system_gzip(&["-dc"], &sink.bytes()), b"");
    }

    #[tokio::test]
    async fn items_stay_within_one_block_of_output() {
        let data = ndjson(2_000_000);
        let gzip = Gzip::new(config(0, 16_384, 2)).unwrap();
        let (result, sink) = run_transform("gzip", gzip, Chunks::of(&data, 1 << 20)).await;
        result.unwrap();
        assert!(
            sink.largest_item() <= 16_384 + 64,
            "{}",
            sink.largest_item()
        );
        assert_eq!(gunzip(&sink.bytes()), data);
    }

    #[test]
    fn invalid_settings_are_errors() {
        let err = Gzip::new(config(10, DEFAULT_BLOCK_SIZE, 1)).err().unwrap();
        assert_eq!(
            err.to_string(),
            "gzip: compression level 10 is out of range; use 0 (store only) to 9 (smallest output)"
        );
        assert!(matches!(
            Gzip::new(config(6, 100, 1)),
            Err(GzipError::BlockTooSmall(100))
        ));
        assert!(matches!(
            Gzip::new(config(6, DEFAULT_BLOCK_SIZE, 0)),
            Err(GzipError::NoWorkers)
        ));
        assert!(GzipConfig::default().workers >= 1);
    }
}
