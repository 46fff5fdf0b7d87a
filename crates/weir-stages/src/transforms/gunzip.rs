//! gzip decompression as a stage, in fixed-size output buffers and within a ratio and size limit.

use bytes::Bytes;
use weir_runtime::{BoxError, Emit, Transform};

use crate::codec::gunzip::{GunzipDecoder, GunzipError, GunzipLimits};

pub const DEFAULT_BUFFER_SIZE: usize = 64 * 1024;

/// Settings of a [`Gunzip`] stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GunzipConfig {
    /// Ratio limit (default 1000x) and output limit (default none).
    pub limits: GunzipLimits,
    /// Largest emitted item, in bytes (0 is taken as 1); default 64 KiB.
    pub buffer_size: usize,
}

impl Default for GunzipConfig {
    fn default() -> Self {
        GunzipConfig {
            limits: GunzipLimits::default(),
            buffer_size: DEFAULT_BUFFER_SIZE,
        }
    }
}

/// Decompresses gzip data (several concatenated members too, zero padding after them
/// ignored, as `gunzip` does).
///
/// # Memory
///
/// Output is decoded into one `buffer_size` buffer at a time, which is sent downstream
/// (waiting on backpressure) before more is decoded, so however much an input chunk
/// expands, the stage holds one input item, one output buffer and the inflate state
/// (about 40 KiB). The limits stop a decompression bomb with an error.
pub struct Gunzip {
    decoder: GunzipDecoder,
    buffer_size: usize,
}

impl Gunzip {
    pub fn new(config: GunzipConfig) -> Result<Self, GunzipError> {
        Ok(Gunzip {
            decoder: GunzipDecoder::new(config.limits)?,
            buffer_size: config.buffer_size.max(1),
        })
    }
}

impl Transform for Gunzip {
    type In = Bytes;
    type Out = Bytes;

    async fn apply(&mut self, item: Bytes, out: &mut Emit<'_, Bytes>) -> Result<(), BoxError> {
        let mut input = &item[..];
        loop {
            let mut buffer = Vec::with_capacity(self.buffer_size);
            let used = self.decoder.decode(input, &mut buffer)?;
            input = &input[used..];
            // A full buffer may leave output inside the decoder even with no input left.
            let full = buffer.len() == buffer.capacity();
            if !full {
                // Channels count an item by its length: it must not pin a whole buffer.
                buffer.shrink_to_fit();
            }
            if !buffer.is_empty() {
                out.send(Bytes::from(buffer)).await?;
            }
            if input.is_empty() && !full {
                return Ok(());
            }
        }
    }

    async fn finish(&mut self, _out: &mut Emit<'_, Bytes>) -> Result<(), BoxError> {
        Ok(self.decoder.finish()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{gzip_flate2, run_transform, Chunks};
    use crate::transforms::gzip::tests::ndjson;
    use crate::transforms::gzip::{Gzip, GzipConfig};
    use weir_runtime::FailureKind;

    fn error_text(result: Result<weir_runtime::Report, weir_runtime::PipelineError>) -> String {
        let err = result.unwrap_err();
        match &err.kind {
            FailureKind::Failed(e) => e.to_string(),
            other => panic!("expected a stage failure, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn round_trips_with_the_gzip_stage() {
        let data = ndjson(700_000);
        let gzip = Gzip::new(GzipConfig {
            block_size: 50_000,
            ..GzipConfig::default()
        })
        .unwrap();
        let (result, compressed) = run_transform("gzip", gzip, Chunks::of(&data, 30_000)).await;
        result.unwrap();
        for chunk in [1, 999, 1 << 20] {
            let source = Chunks::of(&compressed.bytes()[..], chunk);
            let gunzip = Gunzip::new(GunzipConfig::default()).unwrap();
            let (result, sink) = run_transform("gunzip", gunzip, source).await;
            result.unwrap();
            assert_eq!(sink.bytes(), data, "chunk {chunk}");
            assert!(sink.largest_item() <= DEFAULT_BUFFER_SIZE);
        }
    }

    #[tokio::test]
    async fn decodes_concatenated_members() {
        let mut input = gzip_flate2(b"one\n");
        input.extend(gzip_flate2(b"two\n"));
        input.extend([0; 16]);
        let (result, sink) = run_transform(
            "gunzip",
            Gunzip::new(GunzipConfig::default()).unwrap(),
            Chunks::of(&input, 5),
        )
        .await;
        result.unwrap();
        assert_eq!(sink.bytes(), b"one\ntwo\n");
    }

    #[tokio::test]
    async fn bomb_stops_at_the_ratio_limit_in_bounded_items() {
        let bomb = gzip_flate2(&vec![0u8; 10_000_000]);
        let config = GunzipConfig {
            limits: GunzipLimits {
                max_ratio: 100,
                max_output: None,
            },
            buffer_size: DEFAULT_BUFFER_SIZE,
        };
        // One chunk holding the whole bomb: its expansion must still come out in buffers.
        let (result, sink) = run_transform(
            "gunzip",
            Gunzip::new(config).unwrap(),
            Chunks::of(&bomb, bomb.len()),
        )
        .await;
        let message = error_text(result);
        assert!(
            message.starts_with("gunzip: output exceeds 100x the input ("),
            "{message}"
        );
        assert!(
            sink.largest_item() <= DEFAULT_BUFFER_SIZE,
            "{}",
            sink.largest_item()
        );
        assert!(sink.bytes().len() <= 2 << 20, "{}", sink.bytes().len());
    }

    #[tokio::test]
    async fn output_limit_names_itself() {
        let data = ndjson(300_000);
        let config = GunzipConfig {
            limits: GunzipLimits {
                max_output: Some(100_000),
                ..GunzipLimits::default()
            },
            buffer_size: 4096,
        };
        let (result, sink) = run_transform(
            "gunzip",
            Gunzip::new(config).unwrap(),
            Chunks::of(&gzip_flate2(&data), 8192),
        )
        .await;
        let message = error_text(result);
        assert!(message.contains("limit of 100.0 kB"), "{message}");
        assert!(sink.bytes().len() <= 100_000);
    }

    #[tokio::test]
    async fn truncated_and_corrupt_input_fail() {
        let gz = gzip_flate2(&ndjson(100_000));
        let (result, _) = run_transform(
            "gunzip",
            Gunzip::new(GunzipConfig::default()).unwrap(),
            Chunks::of(&gz[..gz.len() - 3], 4096),
        )
        .await;
        let message = error_text(result);
        assert!(message.contains("truncated"), "{message}");

        let mut corrupt = gz.clone();
        corrupt[20] ^= 0x55;
        corrupt[21] ^= 0xaa;
        let (result, _) = run_transform(
            "gunzip",
            Gunzip::new(GunzipConfig::default()).unwrap(),
            Chunks::of(&corrupt, 4096),
        )
        .await;
        let message = error_text(result);
        assert!(
            message.starts_with("gunzip: corrupt gzip data at compressed byte "),
            "{message}"
        );
    }

    #[test]
    fn zero_ratio_is_rejected() {
        let config = GunzipConfig {
            limits: GunzipLimits {
                max_ratio: 0,
                max_output: None,
            },
            ..GunzipConfig::default()
        };
        assert!(matches!(Gunzip::new(config), Err(GunzipError::ZeroRatio)));
    }
}
