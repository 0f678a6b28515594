//! The daemon (being written).

/// Flags of `epochwal run`.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Configuration file.
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
}

/// Entry point of `epochwal run`.
pub fn main(_args: RunArgs) -> anyhow::Result<i32> {
    anyhow::bail!("not yet")
}
