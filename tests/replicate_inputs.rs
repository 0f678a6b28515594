//! Bad replication inputs with the real S3 server and the real binary: a
//! malformed `AWS_ENDPOINT_URL` (an error naming the variable in `run`,
//! every reader and `check-config`, never a panic), plain http without
//! `allow_http` (named), errors that retrying cannot heal (no retry loop;
//! `required = false` says replication is off), the file's `allow_http`
//! against `AWS_ALLOW_HTTP`, readers on a missing bucket, and URLs whose
//! prefix or bucket name cannot be used.

mod common;

use std::path::Path;
use std::time::Duration;

use common::daemon::{synthetic_config, write_config, Daemon};
use common::s3::{env_with, epochwal_env, S3Server};

const CHECKPOINT: &str = "every_epochs = 1\nsegment_bytes = 1048576\nkeep_records = 10";

fn config(url: &str, data: &Path, epochs: u64, replicate_extra: &str) -> String {
    format!(
        "{}[replicate]\nurl = \"{url}\"\n{replicate_extra}\n",
        synthetic_config(data, epochs, CHECKPOINT)
    )
}

/// Runs the daemon to its end with exactly `env`; exit code and log.
fn run(cfg: &Path, env: &[(String, String)]) -> (Option<i32>, String) {
    let mut cmd = std::process::Command::new(common::daemon::binary());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("AWS_") {
            cmd.env_remove(k);
        }
    }
    cmd.arg("run")
        .arg("--config")
        .arg(cfg)
        .env("RUST_LOG", "info,epochwal=debug")
        .env_remove("NOTIFY_SOCKET")
        .envs(env.iter().map(|(k, v)| (k, v)));
    let (status, lines) = Daemon::spawn_command(cmd).wait(Duration::from_secs(120));
    (status.code(), lines.join("\n"))
}

/// Trains one epoch into `data` without `[replicate]`: `required = false`
/// starts only on a directory that holds a checkpoint (an empty one could
/// fork a run the remote holds).
fn train_locally(dir: &Path, data: &Path) {
    let cfg = write_config(dir, "local.toml", &synthetic_config(data, 1, CHECKPOINT));
    let (code, log) = run(&cfg, &[]);
    assert_eq!(code, Some(0), "{log}");
}

fn no_panic(code: Option<i32>, text: &str) {
    assert_ne!(code, Some(101), "a panic: {text}");
    assert!(!text.contains("panicked"), "{text}");
}

#[test]
fn malformed_endpoint_url_is_an_error_naming_the_variable_everywhere() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let url = server.url("endpoint");
    let data = tmp.path().join("data");
    let cfg = write_config(
        tmp.path(),
        "c.toml",
        &config(&url, &data, 2, "allow_http = true"),
    );
    let cfg_s = cfg.to_str().unwrap();
    let pulled = tmp.path().join("pulled");
    let pulled_s = pulled.to_str().unwrap();
    let out = tmp.path().join("x.safetensors");
    let out_s = out.to_str().unwrap();
    let bad = [
        ("".to_string(), "is empty"),
        (
            format!("127.0.0.1:{}", server.port),
            "no http:// or https://",
        ),
        (format!(" {}", server.endpoint()), "spaces"),
    ];
    for (value, problem) in &bad {
        let env = env_with(&server, "AWS_ENDPOINT_URL", Some(value));
        let (code, log) = run(&cfg, &env);
        no_panic(code, &log);
        assert_eq!(code, Some(1), "AWS_ENDPOINT_URL={value:?}: {log}");
        assert!(
            log.contains("AWS_ENDPOINT_URL") && log.contains(problem),
            "AWS_ENDPOINT_URL={value:?}: {log}"
        );
        assert!(!log.contains("training started"), "{log}");
        for args in [
            vec!["tail", &url],
            vec!["inspect", &url],
            vec!["verify", &url],
            vec!["export", &url, "-o", out_s],
            vec!["pull", &url, pulled_s],
        ] {
            let (code, stdout, stderr) = epochwal_env(&env, &args);
            no_panic(Some(code), &stderr);
            assert_eq!(code, 1, "{args:?} with {value:?}: {stdout}{stderr}");
            assert!(
                stderr.contains("AWS_ENDPOINT_URL") && stderr.contains(problem),
                "{args:?} with {value:?}: {stderr}"
            );
        }
        let (code, stdout, stderr) = epochwal_env(&env, &["check-config", cfg_s]);
        assert_eq!(code, 1, "check-config with {value:?}: {stdout}{stderr}");
        assert!(stderr.contains("AWS_ENDPOINT_URL"), "{stderr}");
    }
}

#[test]
fn plain_http_without_allow_http_names_allow_http_and_never_retries() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let url = server.url("http");
    let data = tmp.path().join("data");
    let env = env_with(&server, "AWS_ALLOW_HTTP", None);
    let cfg = write_config(tmp.path(), "c.toml", &config(&url, &data, 2, ""));
    let (code, log) = run(&cfg, &env);
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("allow_http"), "{log}");
    assert!(!log.contains("set required = false"), "{log}");
    let (code, _, stderr) = epochwal_env(&env, &["check-config", cfg.to_str().unwrap()]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("allow_http"), "{stderr}");
    let (code, _, stderr) = epochwal_env(&env, &["verify", &url]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("AWS_ALLOW_HTTP"), "{stderr}");

    // With required = false (on a directory with a checkpoint): trains,
    // says loudly that replication is off, and does not retry an error
    // that cannot heal.
    train_locally(tmp.path(), &data);
    let cfg = write_config(
        tmp.path(),
        "lenient.toml",
        &config(&url, &data, 2, "required = false\nretry_max_seconds = 1"),
    );
    let (code, log) = run(&cfg, &env);
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("REPLICATION OFF"), "{log}");
    assert!(log.contains("allow_http"), "{log}");
    assert!(!log.contains("will retry"), "{log}");
    assert!(server.pointer("http").is_none());
}

#[test]
fn rejected_credentials_with_required_false_turn_replication_off_without_retrying() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let url = server.url("creds");
    let data = tmp.path().join("data");
    train_locally(tmp.path(), &data);
    let cfg = write_config(
        tmp.path(),
        "c.toml",
        &config(
            &url,
            &data,
            3,
            "allow_http = true\nrequired = false\nretry_max_seconds = 1",
        ),
    );
    let env = env_with(&server, "AWS_SECRET_ACCESS_KEY", Some("wrong"));
    let (code, log) = run(&cfg, &env);
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("REPLICATION OFF"), "{log}");
    assert!(log.contains("access denied"), "{log}");
    assert!(!log.contains("will retry"), "{log}");
    assert!(!log.contains("waiting for the final checkpoint"), "{log}");

    // A bucket that does not exist: the same.
    train_locally(tmp.path(), &tmp.path().join("data2"));
    let cfg = write_config(
        tmp.path(),
        "nobucket.toml",
        &config(
            "s3://no-such-bucket/x",
            &tmp.path().join("data2"),
            2,
            "allow_http = true\nrequired = false\nretry_max_seconds = 1",
        ),
    );
    let (code, log) = run(&cfg, &server.env());
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("REPLICATION OFF"), "{log}");
    assert!(log.contains("the bucket does not exist"), "{log}");
    assert!(!log.contains("will retry"), "{log}");
}

#[test]
fn allow_http_false_in_the_file_is_not_overridden_by_the_environment() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let url = server.url("conflict");
    let data = tmp.path().join("data");
    let cfg = write_config(
        tmp.path(),
        "c.toml",
        &config(&url, &data, 2, "allow_http = false"),
    );
    // server.env() has AWS_ALLOW_HTTP=true.
    let (code, log) = run(&cfg, &server.env());
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("allow_http = false") && log.contains("AWS_ALLOW_HTTP=true"),
        "{log}"
    );
    assert!(server.pointer("conflict").is_none());
    let (code, _, stderr) = epochwal_env(&server.env(), &["check-config", cfg.to_str().unwrap()]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("AWS_ALLOW_HTTP"), "{stderr}");
}

#[test]
fn readers_on_a_missing_bucket_say_the_bucket_does_not_exist() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let url = "s3://no-such-bucket/x";
    let out = tmp.path().join("x.safetensors");
    let pulled = tmp.path().join("pulled");
    for args in [
        vec!["tail", url],
        vec!["inspect", url],
        vec!["verify", url],
        vec!["export", url, "-o", out.to_str().unwrap()],
        vec!["pull", url, pulled.to_str().unwrap()],
    ] {
        let (code, stdout, stderr) = epochwal_env(&server.env(), &args);
        assert_eq!(code, 1, "{args:?}: {stdout}{stderr}");
        assert!(
            stderr.contains("the bucket does not exist"),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("nothing has been replicated"), "{stderr}");
    }
}

#[test]
fn urls_with_dot_segments_or_bad_bucket_names_are_refused_by_check_config() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    for (url, needle) in [
        ("s3://ckpt/../x", "\"..\""),
        ("s3://ckpt/a/./x", "\".\""),
        ("s3://CK_PT!/x", "bucket name"),
        ("s3://ab/x", "bucket name"),
        ("s3://-ckpt/x", "bucket name"),
    ] {
        let cfg = write_config(tmp.path(), "c.toml", &config(url, &data, 1, ""));
        let (code, stdout, stderr) = epochwal_env(&[], &["check-config", cfg.to_str().unwrap()]);
        assert_eq!(code, 1, "{url}: {stdout}{stderr}");
        assert!(
            stderr.contains("replicate.url") && stderr.contains(needle),
            "{url}: {stderr}"
        );
        // The readers refuse it as a usage error before any contact.
        let (code, _, stderr) = epochwal_env(&[], &["verify", url]);
        assert_eq!(code, 2, "{url}: {stderr}");
        assert!(stderr.contains(needle), "{url}: {stderr}");
    }
}
