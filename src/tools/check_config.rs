//! `epochwal check-config FILE [--running [--data-dir DIR]]`: would
//! `epochwal run` accept this file? In the spirit of `nginx -t` and
//! `sshd -t`. The unit runs it in `ExecReload=` before sending SIGHUP, so a
//! bad file fails `systemctl reload` with a non-zero exit and the daemon
//! keeps its settings.
//!
//! It checks what `run` checks when it reads the file (syntax, unknown and
//! ill-typed keys, ranges); it does not load the dataset or build the model.
//! With `--running` it also compares the file with the configuration the
//! daemon on that log directory runs with (the `RUNNING.toml` it writes
//! there) and prints a WARN line naming the keys a reload would not apply.
//!
//! Exit code: 0 valid (warnings included), 1 invalid (the message names the
//! file and the key), 2 usage.

use std::path::PathBuf;

use crate::config::Config;

/// Arguments of `epochwal check-config`.
#[derive(clap::Args, Debug)]
pub struct CheckConfigArgs {
    /// The configuration file to check.
    pub file: PathBuf,
    /// Also compare with the configuration the running daemon uses, and warn
    /// about changed keys that need a restart.
    #[arg(long)]
    pub running: bool,
    /// The daemon's log directory, as given to `epochwal run --data-dir`
    /// (default: the file's `data_dir`).
    #[arg(long, value_name = "DIR", requires = "running")]
    pub data_dir: Option<PathBuf>,
}

/// Runs `epochwal check-config`.
pub fn run(args: &CheckConfigArgs) -> anyhow::Result<i32> {
    let mut config = match Config::load(&args.file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("epochwal: error: {e}");
            eprintln!(
                "epochwal: {}: configuration is NOT valid",
                args.file.display()
            );
            return Ok(1);
        }
    };
    // `run` reads the endpoint and AWS_ALLOW_HTTP from the environment: a
    // value it would refuse makes the file unusable here too.
    if let Some(r) = &config.replicate {
        let checked = crate::replicate::RemoteUrl::parse(&r.url)
            .and_then(|u| crate::replicate::remote::check_environment(&u, r.allow_http));
        if let Err(e) = checked {
            eprintln!(
                "epochwal: error: {}: [replicate] url = {:?}: {e}",
                args.file.display(),
                r.url
            );
            eprintln!(
                "epochwal: {}: configuration is NOT valid in this environment",
                args.file.display()
            );
            return Ok(1);
        }
    }
    println!("epochwal: {}: configuration is valid", args.file.display());
    if !args.running {
        return Ok(0);
    }
    if let Some(dir) = &args.data_dir {
        config.data_dir = dir.clone();
    }
    config.make_paths_absolute();
    let running = match Config::read_running(&config.data_dir) {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "epochwal: WARN: cannot compare with the running daemon ({e}); \
                 it writes that file when it starts"
            );
            return Ok(0);
        }
    };
    let restart_only = config.restart_only_changes(&running);
    if !restart_only.is_empty() {
        eprintln!(
            "epochwal: WARN: {}: changed keys that take effect only after a restart \
             (a reload keeps the running values): {}",
            args.file.display(),
            restart_only.join(", ")
        );
    }
    let reloadable = config.checkpoint.changes_from(&running.checkpoint);
    if reloadable.is_empty() {
        println!("epochwal: a reload changes no [checkpoint] setting");
    } else {
        println!("epochwal: a reload applies: {}", reloadable.join(", "));
    }
    Ok(0)
}
