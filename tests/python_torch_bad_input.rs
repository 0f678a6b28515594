//! Bad input to the `epochwal` package with real torch
//! (`tests/python/torch_bad_input.py`): each case is refused with an error
//! naming the cause, and the durable record made before it is still the one
//! recovery chooses, byte for byte, and still loads. A model whose names,
//! shapes or dtypes differ from the record (and the model is left as it
//! was); a meta, a sparse, a quantized tensor; a non-contiguous one is
//! stored contiguous instead; a non-string dict key, a value that cannot be
//! stored; a closed log; a second process on the directory; a full disk (a
//! small tmpfs); a read-only directory (a tmpfs remounted read-only).
//!
//! Needs python3 with torch and the package installed (`.ci/run`); see
//! tests/common/torch.rs for the skip rule. The full-disk and read-only
//! cases mount a tmpfs (root, as CI runs); without root they fail unless
//! EPOCHWAL_SKIP_MOUNT_TESTS=1 is set.

mod common;

use std::path::Path;
use std::process::Command;

use common::torch::{available, run_ok};
use common::Mount;

fn case(name: &str) {
    if !available(&format!("python_torch_bad_input {name}")) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let out = run_ok("torch_bad_input.py", &[name, dir.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("ok {name}:")), "{text}");
    common::systemd::notice(&format!("python_torch_bad_input {}", text.trim()));
}

fn mounted(tmp: &Path, size: &str) -> Option<Mount> {
    let m = Mount::tmpfs(&tmp.join("mnt"), size);
    if m.is_none() {
        if std::env::var_os("EPOCHWAL_SKIP_MOUNT_TESTS").is_some() {
            println!("skipped: cannot mount a tmpfs (needs root)");
            return None;
        }
        panic!("cannot mount a size-limited tmpfs; run as root or set EPOCHWAL_SKIP_MOUNT_TESTS=1");
    }
    m
}

#[test]
fn a_model_with_other_names_is_refused_naming_the_tensor() {
    case("names");
}

#[test]
fn a_model_with_other_shapes_is_refused_naming_the_tensor() {
    case("shapes");
}

#[test]
fn a_model_with_other_dtypes_is_refused_naming_the_tensor() {
    case("dtypes");
}

#[test]
fn a_meta_tensor_is_refused() {
    case("meta");
}

#[test]
fn a_sparse_tensor_is_refused() {
    case("sparse");
}

#[test]
fn a_quantized_tensor_is_refused() {
    case("quantized");
}

#[test]
fn a_non_contiguous_tensor_is_stored_contiguous() {
    case("noncontiguous");
}

#[test]
fn a_non_string_dict_key_is_refused_naming_it() {
    case("nonstring_key");
}

#[test]
fn a_value_that_cannot_be_stored_is_refused_naming_it() {
    case("unstorable_value");
}

#[test]
fn a_closed_log_refuses_save_and_load() {
    case("closed");
}

#[test]
fn a_second_process_on_the_directory_is_refused_naming_the_lock_holder() {
    case("second_process");
}

#[test]
fn a_full_disk_fails_the_save_loudly_and_keeps_the_durable_record() {
    let test = "a_full_disk_fails_the_save_loudly_and_keeps_the_durable_record";
    if !available(test) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let Some(_m) = mounted(tmp.path(), "24m") else {
        return;
    };
    let mnt = tmp.path().join("mnt");
    // 8 MiB to be freed later; the log gets the rest, less than the state.
    std::fs::write(mnt.join("FILLER"), vec![1u8; 8 << 20]).unwrap();
    let dir = mnt.join("log");
    let out = run_ok("torch_bad_input.py", &["full_disk", dir.to_str().unwrap()]);
    common::systemd::notice(&format!(
        "python_torch_bad_input {}",
        String::from_utf8_lossy(&out.stdout).trim()
    ));
}

#[test]
fn a_read_only_directory_refuses_a_writer_and_still_reads() {
    let test = "a_read_only_directory_refuses_a_writer_and_still_reads";
    if !available(test) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let Some(_m) = mounted(tmp.path(), "32m") else {
        return;
    };
    let mnt = tmp.path().join("mnt");
    let dir = mnt.join("log");
    run_ok(
        "torch_bad_input.py",
        &["readonly_setup", dir.to_str().unwrap()],
    );
    let remount = |mode: &str| {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,{mode}")])
            .arg(&mnt)
            .status()
            .unwrap();
        assert!(st.success(), "mount -o remount,{mode} {}", mnt.display());
    };
    remount("ro");
    let out = Command::new(common::torch::python())
        .arg(common::torch::script("torch_bad_input.py"))
        .args(["readonly", dir.to_str().unwrap()])
        .output()
        .unwrap();
    remount("rw");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    common::systemd::notice(&format!(
        "python_torch_bad_input {}",
        String::from_utf8_lossy(&out.stdout).trim()
    ));
}
