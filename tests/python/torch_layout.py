#!/usr/bin/env python3
"""The README's lines that rebuild `optimizer.state_dict()` from an export,
run with numpy in place of torch (CI has no torch), compared with the
structure torch.optim.Adam.state_dict() has (tests/fixtures/
torch-adam-state-dict.json). The same lines with framework="pt" were run
against torch 2.15.

Usage: torch_layout.py FILE.safetensors FIXTURE.json
Exits 0 when the structure matches, 1 naming the difference.
"""

import json
import sys

from safetensors import safe_open


def main(path, fixture_path):
    # --- the README's lines (framework="pt" there) ---
    with safe_open(path, framework="numpy") as f:
        state = {}
        for key in f.keys():
            if key.startswith("optimizer.state."):
                index, field = key.removeprefix("optimizer.state.").split(".")
                state.setdefault(int(index), {})[field] = f.get_tensor(key)
        groups = json.loads(f.metadata()["optimizer.param_groups"])
    for g in groups:
        g["betas"] = tuple(g["betas"])  # torch keeps betas as a tuple
    state_dict = {"state": state, "param_groups": groups}
    # --- end ---
    with open(fixture_path, encoding="utf-8") as f:
        fixture = json.load(f)
    got_state = {
        str(i): {k: ["float32" if str(v.dtype) == "float32" else str(v.dtype), list(v.shape)]
                 for k, v in s.items()}
        for i, s in state_dict["state"].items()
    }
    if got_state != fixture["state"]:
        print(f"state differs:\n{got_state}\n{fixture['state']}", file=sys.stderr)
        return 1
    want = fixture["param_groups"]
    got = [dict(g, betas=list(g["betas"])) for g in state_dict["param_groups"]]
    if got != want:
        print(f"param_groups differ:\n{got}\n{want}", file=sys.stderr)
        return 1
    if not all(isinstance(i, int) for i in state_dict["state"]):
        print("state keys are not ints", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
