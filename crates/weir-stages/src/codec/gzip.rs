//! gzip encoding in independent blocks, pigz's way, so that blocks can be compressed in parallel.
//!
//! Each block is raw-deflated on its own, primed with the 32 KiB of input before it as a
//! preset dictionary and ended with a sync flush (the last one with a final block), so the
//! pieces concatenate into one ordinary deflate stream: [`header`], then every block's
//! [`CompressedBlock::deflate`] in input order, then [`Trailer::to_bytes`] make one gzip
//! member that plain `gunzip` reads.

use flate2::{Compress, CompressError, Compression, Crc, FlushCompress, Status};

/// Block size that keeps two cores busy with little loss of ratio against one stream.
pub const DEFAULT_BLOCK_SIZE: usize = 128 * 1024;
/// Smaller blocks would spend more on sync markers and block headers than they save.
pub const MIN_BLOCK_SIZE: usize = 1024;
/// How far back deflate can refer: the preset dictionary of each block.
pub const DICTIONARY_SIZE: usize = 32 * 1024;
pub const HEADER_LEN: usize = 10;
pub const TRAILER_LEN: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum GzipError {
    #[error(
        "gzip: compression level {0} is out of range; use 0 (store only) to 9 (smallest output)"
    )]
    InvalidLevel(u32),
    #[error("gzip: block size {0} is too small; use at least {MIN_BLOCK_SIZE} bytes")]
    BlockTooSmall(usize),
    #[error("gzip: workers must be at least 1")]
    NoWorkers,
    #[error("gzip: deflate failed: {0}")]
    Deflate(#[from] CompressError),
    #[error("gzip: a compression worker panicked")]
    WorkerPanicked,
    #[error("gzip: a compression worker was cancelled")]
    WorkerCancelled,
}

/// A deflate level known to be in 0..=9.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GzipLevel(u32);

impl GzipLevel {
    pub const DEFAULT: GzipLevel = GzipLevel(6);

    pub fn new(level: u32) -> Result<Self, GzipError> {
        if level <= 9 {
            Ok(GzipLevel(level))
        } else {
            Err(GzipError::InvalidLevel(level))
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

impl Default for GzipLevel {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The 10-byte gzip member header: deflate, no name, no time stamp.
pub fn header(level: GzipLevel) -> [u8; HEADER_LEN] {
    // XFL as gzip sets it: 2 = slowest/smallest, 4 = fastest.
    let xfl = match level.0 {
        9 => 2,
        1 => 4,
        _ => 0,
    };
    // OS 255: unknown; the member is the same on every platform.
    [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, 255]
}

/// One block's deflate piece and the CRC-32 of its uncompressed bytes.
#[derive(Debug)]
pub struct CompressedBlock {
    pub deflate: Vec<u8>,
    pub crc: Crc,
    pub input_len: usize,
}

/// Raw-deflates `input` as if it followed `dictionary` (at most its last 32 KiB are used),
/// ending with a sync flush, or with a final block when `last`.
pub fn compress_block(
    level: GzipLevel,
    dictionary: &[u8],
    input: &[u8],
    last: bool,
) -> Result<CompressedBlock, GzipError> {
    let mut crc = Crc::new();
    crc.update(input);
    // A fresh state per block, not a reset one: zlib-rs' reset keeps stale hash chains,
    // which would make the output depend on which worker compressed the block before.
    let mut compress = Compress::new(Compression::new(level.0), false);
    let dictionary = &dictionary[dictionary.len().saturating_sub(DICTIONARY_SIZE)..];
    if !dictionary.is_empty() {
        compress.set_dictionary(dictionary)?;
    }
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    let mut deflate = Vec::with_capacity(deflate_bound(input.len()));
    loop {
        let consumed = compress.total_in() as usize;
        let status = compress.compress_vec(&input[consumed..], &mut deflate, flush)?;
        let done = match status {
            Status::StreamEnd => true,
            // A sync flush is complete once deflate stops short of filling the output.
            Status::Ok | Status::BufError => {
                !last
                    && compress.total_in() as usize == input.len()
                    && deflate.len() < deflate.capacity()
            }
        };
        if done {
            break;
        }
        if deflate.len() == deflate.capacity() {
            deflate.reserve(deflate.capacity() / 2 + 64);
        }
    }
    // Channels count an item by its length: it must not pin a block-sized allocation.
    deflate.shrink_to_fit();
    Ok(CompressedBlock {
        deflate,
        crc,
        input_len: input.len(),
    })
}

/// Worst case of one block's deflate output: zlib's stored-block bound plus the flush marker.
fn deflate_bound(len: usize) -> usize {
    len + (len >> 12) + (len >> 14) + (len >> 25) + 32
}

/// The CRC-32 and length of everything compressed so far, for the gzip trailer.
#[derive(Debug, Default)]
pub struct Trailer {
    crc: Crc,
    input_len: u64,
}

impl Trailer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Accounts for the next block in input order.
    pub fn append(&mut self, block: &CompressedBlock) {
        self.crc.combine(&block.crc);
        self.input_len += block.input_len as u64;
    }

    /// CRC-32 then ISIZE (the length modulo 2^32), little-endian.
    pub fn to_bytes(&self) -> [u8; TRAILER_LEN] {
        let mut bytes = [0; TRAILER_LEN];
        bytes[..4].copy_from_slice(&self.crc.sum().to_le_bytes());
        bytes[4..].copy_from_slice(&(self.input_len as u32).to_le_bytes());
        bytes
    }
}

/// The dictionary for the block after `block`: the last 32 KiB of input up to its end.
pub fn next_dictionary(dictionary: &[u8], block: &[u8]) -> Vec<u8> {
    let from_block = block.len().min(DICTIONARY_SIZE);
    let from_dictionary = (DICTIONARY_SIZE - from_block).min(dictionary.len());
    let mut next = Vec::with_capacity(from_dictionary + from_block);
    next.extend_from_slice(&dictionary[dictionary.len() - from_dictionary..]);
    next.extend_from_slice(&block[block.len() - from_block..]);
    next
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::system_gzip;
    use std::io::{Read, Write};

    /// Sequential use of the pieces, as the gzip stage does it in parallel.
    fn gzip(level: u32, block_size: usize, input: &[u8]) -> Vec<u8> {
        let level = GzipLevel::new(level).unwrap();
        let mut out = header(level).to_vec();
        let mut trailer = Trailer::new();
        let mut dictionary = Vec::new();
        let mut blocks: Vec<&[u8]> = input.chunks(block_size).collect();
        if blocks.len() * block_size == input.len() {
            blocks.push(&[]);
        }
        let count = blocks.len();
        for (i, block) in blocks.into_iter().enumerate() {
            let compressed = compress_block(level, &dictionary, block, i + 1 == count).unwrap();
            trailer.append(&compressed);
            out.extend_from_slice(&compressed.deflate);
            dictionary = next_dictionary(&dictionary, block);
        }
        out.extend_from_slice(&trailer.to_bytes());
        out
    }

    fn gunzip_flate2(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(data)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    pub(crate) fn sample(len: usize) -> Vec<u8> {
        let mut state = 0x2545_f491_u32;
        let mut out = Vec::with_capacity(len + 100);
        let mut n = 0u32;
        while out.len() < len {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            n += 1;
            out.extend_from_slice(
                format!(
                    "{{\"n\":{n},\"level\":\"{}\",\"id\":\"{state:08x}\",\"msg\":\"request done\"}}\n",
                    ["info", "warn", "debug"][(state % 3) as usize]
                )
                .as_bytes(),
            );
        }
        out.truncate(len);
        out
    }

    #[test]
    fn round_trips_at_every_level_and_around_block_boundaries() {
        let block = MIN_BLOCK_SIZE;
        let data = sample(10 * block + 1);
        for level in 0..=9 {
            for len in [0, 1, block - 1, block, block + 1, 2 * block, 3 * block + 7] {
                let gz = gzip(level, block, &data[..len]);
                assert_eq!(
                    gunzip_flate2(&gz),
                    &data[..len],
                    "level {level}, {len} bytes"
                );
            }
        }
    }

    #[test]
    fn round_trips_across_block_sizes() {
        let data = sample(600_000);
        for block in [
            MIN_BLOCK_SIZE,
            5000,
            DICTIONARY_SIZE,
            100_000,
            DEFAULT_BLOCK_SIZE,
        ] {
            let gz = gzip(6, block, &data);
            assert_eq!(gunzip_flate2(&gz), data, "block size {block}");
        }
    }

    #[test]
    fn dictionary_keeps_the_ratio_of_one_stream() {
        let data = sample(1 << 20);
        let blocks = gzip(6, DEFAULT_BLOCK_SIZE, &data).len();
        let mut one = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        one.write_all(&data).unwrap();
        let one = one.finish().unwrap().len();
        assert!(
            blocks <= one + one / 50,
            "blocks {blocks} vs one stream {one}"
        );
    }

    #[test]
    fn empty_input_is_a_valid_gzip_file() {
        let gz = gzip(6, DEFAULT_BLOCK_SIZE, b"");
        assert_eq!(system_gzip(&["-dc"], &gz), b"");
    }

    #[test]
    fn system_gunzip_reads_the_output() {
        let data = sample(300_000);
        for level in [0, 1, 6, 9] {
            let gz = gzip(level, 64 * 1024, &data);
            assert_eq!(system_gzip(&["-dc"], &gz), data, "level {level}");
        }
    }

    #[test]
    fn header_and_trailer_follow_rfc_1952() {
        assert_eq!(
            header(GzipLevel::new(9).unwrap()),
            [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 255]
        );
        let block = compress_block(GzipLevel::DEFAULT, b"", b"hello", true).unwrap();
        let mut trailer = Trailer::new();
        trailer.append(&block);
        // CRC-32 of "hello" is 0x3610a686.
        assert_eq!(trailer.to_bytes(), [0x86, 0xa6, 0x10, 0x36, 5, 0, 0, 0]);
    }

    #[test]
    fn level_out_of_range_is_an_error() {
        let err = GzipLevel::new(10).unwrap_err();
        assert!(
            err.to_string().contains("level 10 is out of range"),
            "{err}"
        );
    }

    #[test]
    fn next_dictionary_keeps_the_last_window() {
        assert_eq!(next_dictionary(b"abc", b"de"), b"abcde");
        let big = vec![7u8; DICTIONARY_SIZE + 10];
        assert_eq!(next_dictionary(b"abc", &big).len(), DICTIONARY_SIZE);
        let dict = next_dictionary(&big, b"xy");
        assert_eq!(dict.len(), DICTIONARY_SIZE);
        assert_eq!(&dict[DICTIONARY_SIZE - 2..], b"xy");
    }
}
