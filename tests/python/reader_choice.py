#!/usr/bin/env python3
"""Print, as JSON, what the Python reader (python/, `pip install ./python`)
picks in a log directory: the record of the recovery rule, with a SHA-256 of
each tensor's and moment's bytes (general records: of each tensor's bytes,
with its dtype and shape, and the parsed document), or null for an empty log.

Usage: reader_choice.py LOG_DIR
"""

import hashlib
import json
import sys

import epochwal.reader


def main(argv):
    log = epochwal.reader.open(argv[1])
    rec, skipped = log.recover()
    if rec is None:
        out = None
    else:
        out = {
            "sequence": rec.sequence,
            "epoch": rec.epoch,
            "step": rec.global_step,
            "schema_version": rec.schema_version,
            "tensors": {n: hashlib.sha256(a.tobytes()).hexdigest() for n, a in rec.tensors.items()},
            "moments": [
                [p["name"], p["step"], hashlib.sha256(p["exp_avg"].tobytes()).hexdigest(),
                 hashlib.sha256(p["exp_avg_sq"].tobytes()).hexdigest()]
                for p in rec.optimizer["state"]
            ],
            "kind": rec.kind,
            "dtypes": rec.dtypes,
            "shapes": {n: list(a.shape) for n, a in rec.tensors.items()},
            "meta": rec.meta,
            "job": rec.job,
            "zero_copy": all(not a.flags.owndata for a in rec.tensors.values()),
            "skipped": len(skipped),
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv)
