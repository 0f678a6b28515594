#!/usr/bin/env python3
"""Check a file written by `epochwal export` with the reference safetensors
implementation (the one PyTorch users load it with).

Usage: check_export.py FILE.safetensors EXPECTED.json

EXPECTED.json is either
  * written by a test: {"tensors": [{"name", "shape", "values"}...],
    "metadata": {key: value...}} -- values are compared bit for bit as float32;
  * or the output of `epochwal inspect --json`: its "tensors" entries carry
    "name", "shape", "min", "max", "mean" -- compared exactly (min/max) and to
    float32 accuracy (mean); the header fields are checked against the
    metadata.

Exits 0 when everything matches, 1 with a message naming the problem.
Needs `safetensors` and `numpy` (pip install safetensors numpy).
"""

import json
import sys

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file

OPTIMIZER_PREFIX = "optimizer.state."


def fail(msg):
    print(f"check_export: {msg}", file=sys.stderr)
    sys.exit(1)


def main(argv):
    if len(argv) != 3:
        fail(f"usage: {argv[0]} FILE.safetensors EXPECTED.json")
    path, expected_path = argv[1], argv[2]
    tensors = load_file(path)
    with safe_open(path, framework="numpy") as f:
        metadata = f.metadata() or {}
    with open(expected_path, encoding="utf-8") as f:
        expected = json.load(f)

    want = expected["tensors"]
    want_names = {t["name"] for t in want}
    model_names = {n for n in tensors if not n.startswith(OPTIMIZER_PREFIX)}
    if not want_names <= set(tensors):
        fail(f"{path}: missing tensors {sorted(want_names - set(tensors))}")
    if "values" not in (want[0] if want else {}) and model_names != want_names:
        fail(f"{path}: model tensors {sorted(model_names)} != {sorted(want_names)}")

    for t in want:
        name = t["name"]
        arr = tensors[name]
        if arr.dtype != np.float32:
            fail(f"{path}: {name} has dtype {arr.dtype}, expected float32")
        if list(arr.shape) != list(t["shape"]):
            fail(f"{path}: {name} has shape {list(arr.shape)}, expected {t['shape']}")
        if "values" in t:
            exp = np.array(t["values"], dtype=np.float32).reshape(arr.shape)
            if not np.array_equal(arr.view(np.uint32), exp.view(np.uint32)):
                bad = int(np.argmax(arr.view(np.uint32).ravel() != exp.view(np.uint32).ravel()))
                fail(f"{path}: {name} differs at flat index {bad}: "
                     f"{arr.ravel()[bad]!r} != {exp.ravel()[bad]!r}")
        if "min" in t and arr.size:
            if float(arr.min()) != t["min"] or float(arr.max()) != t["max"]:
                fail(f"{path}: {name} min/max {arr.min()}/{arr.max()} != {t['min']}/{t['max']}")
            mean = float(arr.astype(np.float64).mean())
            if not np.isclose(mean, t["mean"], rtol=1e-6, atol=1e-12):
                fail(f"{path}: {name} mean {mean} != {t['mean']}")

    want_meta = dict(expected.get("metadata", {}))
    # `epochwal inspect --json`: header fields that the export metadata repeats.
    for key, meta_key in (("sequence", "sequence"), ("epoch", "epoch"),
                          ("global_step", "global_step"),
                          ("step_in_epoch", "step_in_epoch")):
        if key in expected:
            want_meta[meta_key] = str(expected[key])
    for key, value in want_meta.items():
        if metadata.get(key) != value:
            fail(f"{path}: metadata {key}={metadata.get(key)!r}, expected {value!r}")

    # The optimizer state, when present, pairs up with the parameters.
    for name in model_names:
        avg = OPTIMIZER_PREFIX + name + ".exp_avg"
        if avg in tensors:
            for suffix in (".exp_avg", ".exp_avg_sq"):
                if tensors[OPTIMIZER_PREFIX + name + suffix].shape != tensors[name].shape:
                    fail(f"{path}: {name}{suffix} shape differs from the parameter")
            step = tensors[OPTIMIZER_PREFIX + name + ".step"]
            if step.shape != () or step.dtype != np.float32:
                fail(f"{path}: {name}.step must be a 0-dim float32 tensor, got "
                     f"{step.shape} {step.dtype}")

    print(f"check_export: {path}: {len(tensors)} tensors OK")


if __name__ == "__main__":
    main(sys.argv)
