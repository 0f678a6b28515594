//! The `epochwal` binary: the command line of [`epochwal::cli`].

fn main() {
    std::process::exit(epochwal::cli::main_with_args(std::env::args_os()));
}
