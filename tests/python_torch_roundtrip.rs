//! Round trips with real torch across two processes
//! (`tests/python/torch_roundtrip.py`): one process trains a little and
//! saves, a second builds everything from other seeds and loads. Every CPU
//! dtype (float32/16/64, bfloat16, int64/32/16/8, uint8, bool, with negative
//! zero, infinities, NaN payloads, subnormals and integer extremes) comes
//! back byte-exact, as model buffers and as non-contiguous extra tensors;
//! SGD with momentum, Adam (amsgrad), AdamW and RMSprop (centered), each with
//! two param_groups of different hyperparameters, a MultiStepLR scheduler,
//! an enabled CPU GradScaler and the torch, numpy and Python RNG states come
//! back equal, and two more training steps give the same bits in both
//! processes.
//!
//! Needs python3 with torch and the package installed (`.ci/run`); see
//! tests/common/torch.rs for the skip rule.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::torch::{available, run_ok};

fn read(path: &Path) -> BTreeMap<String, String> {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn every_dtype_optimizer_scheduler_scaler_and_rng_round_trip_across_processes() {
    if !available("every_dtype_optimizer_scheduler_scaler_and_rng_round_trip_across_processes") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let logs = tmp.path().join("logs");
    let (saved, loaded) = (
        tmp.path().join("saved.json"),
        tmp.path().join("loaded.json"),
    );
    let arg = |p: &Path| p.to_str().unwrap().to_string();
    run_ok("torch_roundtrip.py", &["save", &arg(&logs), &arg(&saved)]);
    run_ok("torch_roundtrip.py", &["load", &arg(&logs), &arg(&loaded)]);
    let (a, b) = (read(&saved), read(&loaded));
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "the loaded state has other names"
    );
    let differing: Vec<&String> = a.keys().filter(|k| a[*k] != b[*k]).collect();
    assert!(
        differing.is_empty(),
        "differ after the round trip: {differing:?}"
    );
    for opt in ["sgd", "adam", "adamw", "rmsprop"] {
        for dtype in [
            "float32", "float16", "float64", "bfloat16", "int64", "int32", "int16", "int8",
            "uint8", "bool",
        ] {
            assert!(
                a.contains_key(&format!("{opt}.model.buf_{dtype}")),
                "{opt} {dtype}"
            );
        }
        assert!(
            a.keys()
                .any(|k| k.starts_with(&format!("{opt}.optimizer.state."))),
            "{opt} has no optimizer state"
        );
    }
}
