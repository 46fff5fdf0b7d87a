//! `weir sample`: deterministic NDJSON log lines, semi-compressible like real logs.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;

use super::Failure;
use weir_runtime::size::parse_size;

#[derive(Args, Debug)]
#[command(about = "Write deterministic NDJSON log lines (the same seed gives the same file)")]
pub struct SampleArgs {
    /// Where to write (`-` for stdout).
    pub out: PathBuf,

    /// How many bytes to write (the last line is cut to fit).
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = parse_size)]
    pub size: u64,

    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

const LEVELS: [&str; 7] = ["info", "info", "info", "info", "debug", "warn", "error"];
const SERVICES: [&str; 6] = ["api-gw", "auth", "billing", "search", "orders", "inventory"];
const METHODS: [&str; 6] = ["GET", "GET", "GET", "POST", "PUT", "DELETE"];
const PATHS: [&str; 5] = [
    "/v1/users/",
    "/v1/orders/",
    "/v1/items/",
    "/v1/search?q=",
    "/healthz/",
];
const STATUS: [u16; 10] = [200, 200, 200, 200, 201, 204, 301, 400, 404, 500];
const MESSAGES: [&str; 6] = [
    "request completed",
    "cache miss",
    "upstream timeout, retrying",
    "user authenticated",
    "rate limit applied",
    "payload validated",
];
const AGENTS: [&str; 4] = [
    "Mozilla/5.0 (X11; Linux x86_64)",
    "curl/8.4.0",
    "okhttp/4.12.0",
    "python-requests/2.31",
];

/// splitmix64: tiny, fast and the same on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// Appends one log line to `out`; `millis` is the running timestamp.
fn line(rng: &mut Rng, millis: &mut u64, out: &mut Vec<u8>) {
    *millis += rng.below(50);
    let (secs, ms) = (*millis / 1000, *millis % 1000);
    let (h, m, s) = (secs / 3600 % 24, secs / 60 % 60, secs % 60);
    let day = 1 + secs / 86_400 % 28;
    let req_id = rng.next();
    let _ = writeln!(
        out,
        "{{\"ts\":\"2024-01-{day:02}T{h:02}:{m:02}:{s:02}.{ms:03}Z\",\"level\":\"{}\",\"service\":\"{}\",\
         \"host\":\"node-{}\",\"req_id\":\"{req_id:016x}\",\"method\":\"{}\",\"path\":\"{}{}\",\
         \"status\":{},\"latency_ms\":{}.{:02},\"bytes\":{},\"ua\":\"{}\",\"msg\":\"{}\"}}",
        rng.pick(&LEVELS),
        rng.pick(&SERVICES),
        rng.below(64),
        rng.pick(&METHODS),
        rng.pick(&PATHS),
        rng.below(100_000),
        rng.pick(&STATUS),
        rng.below(500),
        rng.below(100),
        rng.below(65_536),
        rng.pick(&AGENTS),
        rng.pick(&MESSAGES),
    );
}

/// Writes `size` bytes of log lines made from `seed` to `out`.
pub fn write_sample(out: &mut impl Write, size: u64, seed: u64) -> std::io::Result<()> {
    let mut rng = Rng(seed);
    let mut millis = 0;
    let mut block = Vec::with_capacity(1 << 20);
    let mut written = 0;
    while written < size {
        block.clear();
        while block.len() < 1 << 20 {
            line(&mut rng, &mut millis, &mut block);
        }
        let take = block
            .len()
            .min(usize::try_from(size - written).unwrap_or(usize::MAX));
        out.write_all(&block[..take])?;
        written += take as u64;
    }
    out.flush()
}

pub fn run(args: SampleArgs) -> Result<(), Failure> {
    let result = if args.out.as_os_str() == "-" {
        write_sample(&mut std::io::stdout().lock(), args.size, args.seed)
    } else {
        std::fs::File::create(&args.out)
            .and_then(|f| write_sample(&mut std::io::BufWriter::new(f), args.size, args.seed))
    };
    result.map_err(|e| Failure::Pipeline(format!("writing {}: {e}", args.out.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_bytes_and_exact_size() {
        let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
        write_sample(&mut a, 3_000_000, 42).unwrap();
        write_sample(&mut b, 3_000_000, 42).unwrap();
        write_sample(&mut c, 3_000_000, 7).unwrap();
        assert_eq!(a.len(), 3_000_000);
        assert_eq!(a, b);
        assert_ne!(a, c);
        let first = a.split(|&b| b == b'\n').next().unwrap();
        let v: serde_json::Value = serde_json::from_slice(first).unwrap();
        assert!(v["req_id"].as_str().is_some_and(|s| s.len() == 16));
    }
}
