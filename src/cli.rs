//! The `epochwal` command line: `run` (the daemon) and the operator tools.
//!
//! One entry point, [`main_with_args`], shared by the `epochwal` binary
//! (`src/main.rs`) and the Python package's `epochwal` command
//! (`python -m epochwal`, bound in `python/src/lib.rs`), so that both are
//! the same program with the same exit codes.

use std::ffi::OsString;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "epochwal",
    version,
    about = "A trainer daemon whose training state survives crashes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Train, checkpointing every epoch into the log; resume after a crash.
    Run(crate::daemon::RunArgs),
    #[command(flatten)]
    Tool(crate::tools::ToolCommand),
}

/// Parses `args` (the program name first) and runs the command. Returns the
/// process's exit code: 0 success, 2 a usage error (printed by clap), and
/// otherwise the command's own code, 1 for an error, which is printed on
/// stderr as `epochwal: error: ...` with its causes.
pub fn main_with_args<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let usage = e.use_stderr();
            let _ = e.print();
            return if usage { 2 } else { 0 };
        }
    };
    let result = match cli.command {
        Command::Run(args) => crate::daemon::main(args),
        Command::Tool(cmd) => crate::tools::run(cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("epochwal: error: {}", error_chain(&e));
            1
        }
    }
}

/// The error and its causes joined by `: `, leaving out a cause whose text
/// the message already holds (our errors include their OS error in their
/// own text and also return it as their source).
fn error_chain(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let c = cause.to_string();
        if text.contains(&c) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&c);
    }
    text
}
