//! `weir run`: a one-off pipeline from the shell.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use weir_runtime::{Pipeline, Report, StageStats};

use super::Failure;
use super::{run_kafka, stages};
use weir_runtime::size::parse_buffer;
use weir_stages::catalogue::{self, CATALOGUE};

#[derive(Args, Debug)]
#[command(
    about = "Run a one-off pipeline: SOURCE [TRANSFORM...] SINK",
    long_about = "Run a one-off pipeline: SOURCE [TRANSFORM...] SINK.\n\n\
        Each stage runs concurrently; between two stages sits a buffer of at most \
        --buffer bytes, so memory stays bounded however slow the sink is: a slow \
        sink slows the source down instead.",
    after_help = "Run `weir run --help` for the list of stages and examples."
)]
pub struct RunArgs {
    /// The stages: a source, zero or more transforms, and a sink.
    #[arg(value_name = "STAGE", num_args = 2.., required = true)]
    pub stages: Vec<String>,

    /// Byte budget of the buffer before each stage.
    #[arg(long, value_name = "SIZE", default_value = "64KiB", value_parser = parse_buffer)]
    pub buffer: usize,

    /// Print the per-stage table (items, bytes, busy/blocked/starved time, peak
    /// buffered bytes) and the bottleneck on stderr at the end.
    #[arg(long)]
    pub stats: bool,

    /// Print the same figures as one JSON object on stderr at the end.
    #[arg(long)]
    pub stats_json: bool,

    /// Never show a progress bar (one is shown when stderr is a terminal and the
    /// input's size is known).
    #[arg(long)]
    pub no_progress: bool,
}

pub fn long_help() -> String {
    format!(
        "{CATALOGUE}\n\nEXAMPLES:\n  \
         weir run file:logs.ndjson gzip:6 file:logs.ndjson.gz\n  \
         cat stream.txt | weir run - sse-decode -\n  \
         weir run --stats file:big.log pass pass pass file:/dev/null\n  \
         weir run file:logs.ndjson.gz gunzip lines:64KiB throttle:1MB -\n\n\
         EXIT CODES: 0 success, 1 the pipeline failed (the message names the stage), \
         2 usage error."
    )
}

/// A pipeline built from stage specs, with the input's size when it is known.
pub struct Built {
    pub pipeline: Pipeline,
    pub input_len: Option<u64>,
}

/// Builds `SOURCE [TRANSFORM...] SINK` as written on the command line.
pub fn build(stages: &[String], buffer: usize) -> Result<Built, Failure> {
    let (first, rest) = stages.split_first().ok_or_else(|| usage("no stages"))?;
    let (last, middle) = rest
        .split_last()
        .ok_or_else(|| usage("a sink is missing"))?;
    let source_spec = stages::parse_source(first).map_err(usage)?;
    let sink_spec = stages::parse_sink(last).map_err(usage)?;
    let transforms = middle
        .iter()
        .map(|s| catalogue::parse_transform(s).and_then(|spec| spec.build()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(usage)?;

    let source = source_spec.open(buffer).map_err(failed)?;
    let input_len = source.size();
    let mut builder = Pipeline::builder()
        .buffer(buffer)
        .source(first.as_str(), source);
    for (transform, text) in transforms.into_iter().zip(middle) {
        builder = builder.transform(text.as_str(), transform);
    }
    let sink = sink_spec.open().map_err(failed)?;
    Ok(Built {
        pipeline: builder.sink(last.as_str(), sink),
        input_len,
    })
}

pub async fn run(args: RunArgs) -> Result<(), Failure> {
    let kafka = args.stages.first().is_some_and(|s| run_kafka::is_kafka(s))
        || args.stages.last().is_some_and(|s| run_kafka::is_kafka(s));
    let (
        Built {
            pipeline,
            input_len,
        },
        committer,
    ) = if kafka {
        // A broker that cannot be reached is retried, not fatal: say so while it lasts.
        super::serve::init_logs_at(super::serve::LogFormat::Text, "warn");
        run_kafka::build(&args.stages, args.buffer)?
    } else {
        (build(&args.stages, args.buffer)?, None)
    };
    let progress = match input_len {
        Some(len) if !args.no_progress && std::io::stderr().is_terminal() => {
            Some(show_progress(len, pipeline.stats()))
        }
        _ => None,
    };
    let result = pipeline.run().await;
    if let Some(p) = progress {
        p.abort();
    }
    if let Some(c) = committer {
        // Only what the sink finished with was acked: a failed run commits no further.
        c.close().await;
    }
    let report = result.map_err(|e| Failure::Pipeline(e.to_string()))?;
    print_report(&report, &args);
    Ok(())
}

fn usage(message: impl std::fmt::Display) -> Failure {
    Failure::Usage(message.to_string())
}

pub(super) fn failed(error: impl std::fmt::Display) -> Failure {
    Failure::Pipeline(error.to_string())
}

fn print_report(report: &Report, args: &RunArgs) {
    if args.stats {
        eprintln!("{report}");
    }
    if args.stats_json {
        match serde_json::to_string(report) {
            Ok(json) => eprintln!("{json}"),
            Err(e) => eprintln!("weir: cannot serialise the stats: {e}"),
        }
    }
}

fn show_progress(len: u64, stats: Vec<Arc<StageStats>>) -> tokio::task::JoinHandle<()> {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            if let Some(source) = stats.first() {
                bar.set_position(source.snapshot().bytes_out);
            }
            if bar.position() >= len {
                bar.finish_and_clear();
                return;
            }
        }
    })
}
