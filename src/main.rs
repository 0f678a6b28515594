//! The `epochwal` command line: `run` (the daemon) and the operator tools.

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
    Run(epochwal::daemon::RunArgs),
    #[command(flatten)]
    Tool(epochwal::tools::ToolCommand),
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let usage = e.use_stderr();
            let _ = e.print();
            std::process::exit(if usage { 2 } else { 0 });
        }
    };
    let result = match cli.command {
        Command::Run(args) => epochwal::daemon::main(args),
        Command::Tool(cmd) => epochwal::tools::run(cmd),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("epochwal: error: {}", error_chain(&e));
            std::process::exit(1);
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
