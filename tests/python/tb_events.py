#!/usr/bin/env python3
"""Read TensorBoard event files with TensorBoard's own event reader and print
what they hold, for the Rust tests to compare with the log.

Usage: tb_events.py DIR

Prints one JSON document: {"files": [{"name": NAME, "events": [{"step": S,
"wall_time": T, "values": {TAG: VALUE}}...]}...]}, files in the order
TensorBoard reads them (sorted by name), events in file order; only events
that carry a summary. Needs the `tensorboard` package (pip install
tensorboard).
"""

import json
import os
import sys
from typing import Any, Dict, List

from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.util import tensor_util


def scalar(value: Any) -> float:
    """A summary value's scalar, as written (`simple_value`) or as
    TensorBoard's loader migrates it (a scalar tensor of the scalars plugin).

    >>> scalar(event.summary.value[0])  # doctest: +SKIP
    0.53
    """
    kind = value.WhichOneof("value")
    if kind == "simple_value":
        return float(value.simple_value)
    if kind == "tensor":
        return float(tensor_util.make_ndarray(value.tensor).item())
    raise ValueError(f"{value.tag}: not a scalar ({kind})")


def read_dir(path: str) -> Dict[str, Any]:
    """The summaries of every event file in `path`.

    >>> read_dir("/tmp/run")["files"][0]["events"][0]["values"]["loss/train"]  # doctest: +SKIP
    0.53
    """
    files: List[Dict[str, Any]] = []
    for name in sorted(os.listdir(path)):
        if "tfevents" not in name:
            continue
        events: List[Dict[str, Any]] = []
        for event in EventFileLoader(os.path.join(path, name)).Load():
            if not event.HasField("summary"):
                continue
            values = {v.tag: scalar(v) for v in event.summary.value}
            events.append({"step": event.step, "wall_time": event.wall_time, "values": values})
        files.append({"name": name, "events": events})
    return {"files": files}


def main(argv: List[str]) -> int:
    """Entry point: `tb_events.py DIR`."""
    if len(argv) != 2:
        print(f"usage: {argv[0]} DIR", file=sys.stderr)
        return 2
    print(json.dumps(read_dir(argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
