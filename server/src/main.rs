//! The `lowbit` binary: parses the command line and reports errors without panicking.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = lowbit::cli::Cli::parse();
    // The server logs its requests; the tools only warnings. RUST_LOG overrides both.
    let (default_filter, json) = match &cli.command {
        lowbit::cli::Command::Serve(a) => (
            "warn,lowbit=info,lowbit::device=info,tower_http=warn",
            a.log_format == lowbit::cli::serve::LogFormat::Json,
        ),
        // Which device a command runs on is worth one line.
        _ => ("warn,lowbit::device=info", false),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| default_filter.into());
    use std::io::IsTerminal;
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if json {
        logs.json().init();
    } else {
        logs.init();
    }
    match lowbit::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // `lowbit info | head` closes the pipe early: that is not a failure.
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
