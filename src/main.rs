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
            eprintln!("epochwal: error: {e:#}");
            std::process::exit(1);
        }
    }
}
