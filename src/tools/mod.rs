//! Operator commands (being written): tail, inspect, verify, export.

/// The operator subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum ToolCommand {
    /// Print the last records of a log.
    Tail {
        /// The log directory.
        dir: std::path::PathBuf,
    },
}

/// Runs a tool; returns the process exit code.
pub fn run(cmd: ToolCommand) -> anyhow::Result<i32> {
    match cmd {
        ToolCommand::Tail { dir } => {
            anyhow::bail!("{}: tail is not implemented yet", dir.display())
        }
    }
}
