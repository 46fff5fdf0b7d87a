//! `weir`: bounded-memory streaming pipelines from the shell.

mod cli;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use cli::Failure;

#[derive(Parser)]
#[command(
    name = "weir",
    version,
    about = "Streaming pipelines whose memory stays bounded when the consumer is slower than the producer"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Run(cli::run::RunArgs),
    Demo(cli::demo::DemoArgs),
    Sample(cli::sample::SampleArgs),
    Serve(cli::serve::ServeArgs),
    Check(Box<cli::check::CheckArgs>),
    Top(cli::top::TopArgs),
    /// An upstream that streams like the OpenAI and Anthropic APIs, for demos and tests.
    MockLlm(weir_server::mock_llm::MockLlmArgs),
}

fn main() -> ExitCode {
    let mut command = Cli::command();
    command = command.mut_subcommand("run", |c| c.after_long_help(cli::run::long_help()));
    let matches = command.get_matches();
    let parsed = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    if matches!(parsed.command, Command::Serve(_) | Command::Demo(_)) {
        cap_malloc_arenas();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weir: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let outcome = runtime.block_on(async {
        match parsed.command {
            Command::Run(args) => cli::run::run(args).await,
            Command::Demo(args) => cli::demo::run(args).await,
            Command::Sample(args) => cli::sample::run(args),
            Command::Serve(args) => cli::serve::run(args).await,
            Command::Check(args) => cli::check::run(*args).await,
            Command::Top(args) => cli::top::run(args).await,
            Command::MockLlm(args) => weir_server::mock_llm::run_cli(args).await.map_err(|e| {
                if e.kind() == std::io::ErrorKind::InvalidInput {
                    Failure::Usage(e.to_string())
                } else {
                    Failure::Pipeline(e.to_string())
                }
            }),
        }
    });
    // Standard input may still be read by a blocking-pool thread; do not wait for it.
    runtime.shutdown_background();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(m)) => {
            eprintln!("weir: {m}");
            ExitCode::from(2)
        }
        Err(Failure::Pipeline(m)) => {
            eprintln!("weir: {m}");
            ExitCode::from(1)
        }
        Err(Failure::Exit(code)) => ExitCode::from(code),
    }
}

/// glibc gives every thread that allocates under contention an arena of its own and keeps
/// what each arena once held: a long export's RSS then climbs in steps for minutes (+6 to
/// +16 KB/s over 60 s measured) although no buffer grows; with two arenas it is flat
/// (+0.09 and +0.00 KB/s). Servers only: it cost `weir run … gzip:6` about 10%.
fn cap_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a tuning parameter of glibc's allocator, and it is called
    // before the runtime starts any thread, so no allocation can race with the change.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
