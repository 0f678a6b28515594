"""Read epochwal checkpoint logs in pure Python, written from FORMAT.md alone.

    import epochwal.reader
    log = epochwal.reader.open("epochwal-data")
    rec = log.latest()                 # the record recovery would choose
    rec.tensors["0.weight"]            # numpy view of the file mapping, no copy
    rec.optimizer["state"][0]["exp_avg"], rec.epoch, rec.global_step
    rec.kind                           # "trainer" or "general" (schema 3)
    rec.meta                           # a general record's JSON document, parsed

This module is the proof that FORMAT.md is enough to read a log: it shares no
code with the Rust log that `epochwal.Checkpointer` binds.

Every header checksum, payload checksum (XXH3-64) and payload validation rule
of FORMAT.md is applied; `latest()` follows the recovery rule (§5), so it
picks the same record as `epochwal verify` and the daemon.
"""

import errno
import json
import mmap
import os
import re
import struct
from typing import List, Optional

import numpy as np

from ._xxh3 import xxh3_64

__all__ = ["open", "Log", "Record", "FormatError", "UnsupportedSchema", "xxh3_64"]

PAGE = 4096
FORMAT_VERSION = 1
SEGMENT_MAGIC = b"EPWALSEG"
RECORD_MAGIC = b"EPWALREC"
SEGMENT_HEADER_LEN = 64
RECORD_HEADER_LEN = 128
MAX_PAYLOAD = 1 << 40
SCHEMA_VERSIONS = (1, 2, 3)
_NAME = re.compile(r"^[0-9]{20}\.wal$")


class FormatError(Exception):
    """A header or payload that breaks a rule of FORMAT.md."""


class UnsupportedSchema(Exception):
    """A record of a schema version this reader does not know (§4.4): not
    damage, recovery stops."""


def _u32(b, o):
    return struct.unpack_from("<I", b, o)[0]


def _u64(b, o):
    return struct.unpack_from("<Q", b, o)[0]


def _i64(b, o):
    return struct.unpack_from("<q", b, o)[0]


def _f32(b, o):
    return struct.unpack_from("<f", b, o)[0]


def _f64(b, o):
    return struct.unpack_from("<d", b, o)[0]


def _check_frame(b, length, magic):
    b = bytes(b[:length])
    if not any(b):
        return "zeroed"
    if b[:8] != magic:
        raise FormatError("bad magic (not an epochwal header)")
    if xxh3_64(b[: length - 8]) != _u64(b, length - 8):
        raise FormatError("header checksum mismatch")
    version = _u32(b, 8)
    if version != FORMAT_VERSION:
        raise FormatError(f"unknown format version {version}")
    if _u32(b, 12) != length:
        raise FormatError("invalid header field: header length")
    return None


def decode_segment_header(b):
    """§4.1. Returns a dict, None for an all-zero header; raises FormatError."""
    if len(b) < SEGMENT_HEADER_LEN:
        raise FormatError("segment header shorter than 64 bytes")
    if _check_frame(b, SEGMENT_HEADER_LEN, SEGMENT_MAGIC) == "zeroed":
        raise FormatError("zeroed (nothing written)")
    h = {
        "log_id": int.from_bytes(bytes(b[16:32]), "little"),
        "segment_no": _u64(b, 32),
        "segment_bytes": _u64(b, 40),
        "created_unix_ns": _u64(b, 48),
    }
    if h["segment_bytes"] < 2 * PAGE or h["segment_bytes"] % PAGE:
        raise FormatError("invalid header field: segment size")
    return h


def decode_record_header(b):
    """§4.2. Returns a dict, None for an all-zero header; raises FormatError."""
    if _check_frame(b, RECORD_HEADER_LEN, RECORD_MAGIC) == "zeroed":
        return None
    if any(bytes(b[108:112])):
        raise FormatError("invalid header field: reserved bytes are not zero")
    h = {
        "log_id": int.from_bytes(bytes(b[16:32]), "little"),
        "segment_no": _u64(b, 32),
        "sequence": _u64(b, 40),
        "epoch": _u64(b, 48),
        "step": _u64(b, 56),
        "offset": _u64(b, 64),
        "payload_len": _u64(b, 72),
        "payload_checksum": _u64(b, 80),
        "unix_ns": _u64(b, 88),
        "loss": _f64(b, 96),
        "schema_version": _u32(b, 104) or 1,
        # Bytes 112..120 all zero: no validation figures.
        "validation": None
        if not any(bytes(b[112:120]))
        else {
            "loss": _f32(b, 112),
            "accuracy": None if _f32(b, 116) != _f32(b, 116) else _f32(b, 116),
        },
    }
    if h["offset"] % PAGE or h["offset"] < PAGE:
        raise FormatError("invalid header field: record offset")
    if h["payload_len"] == 0 or h["payload_len"] > MAX_PAYLOAD:
        raise FormatError("invalid header field: payload length")
    if h["sequence"] == 0:
        raise FormatError("invalid header field: sequence number 0")
    return h


def _record_end(h):
    return h["offset"] + PAGE + -(-h["payload_len"] // PAGE) * PAGE


# ---- payload layouts (FORMAT.md §4.3) -------------------------------------
# A field is (name, offset, kind); kinds: "u32" "u64" "f32" "f64" "string",
# ("vec", element), ("struct", layout), ("u64x", n), ("u8x", n).
# A layout is (size, align, fields). Vec elements: "u64", "f32" or a layout.

TENSOR = (48, 8, [("name", 0, "string"), ("shape", 16, ("vec", "u64")), ("data", 32, ("vec", "f32"))])
ADAM_PARAM = (56, 8, [("name", 0, "string"), ("step", 16, "u64"),
                      ("exp_avg", 24, ("vec", "f32")), ("exp_avg_sq", 40, ("vec", "f32"))])
ADAM = (56, 8, [("lr", 0, "f64"), ("beta1", 8, "f64"), ("beta2", 16, "f64"), ("eps", 24, "f64"),
                ("weight_decay", 32, "f64"), ("params", 40, ("vec", ADAM_PARAM))])
DATA = (48, 8, [("seed", 0, "u64"), ("dataset_len", 8, "u64"), ("rng", 16, ("u64x", 4))])
MODEL_V1 = (40, 8, [("fingerprint", 0, "u64"), ("description", 8, "string"),
                    ("tensors", 24, ("vec", TENSOR))])
MODEL_V2 = (56, 8, MODEL_V1[2] + [("architecture", 40, "string")])
SCALING = (64, 8, [("input_mean", 0, ("vec", "f32")), ("input_std", 16, ("vec", "f32")),
                   ("target_mean", 32, ("vec", "f32")), ("target_std", 48, ("vec", "f32"))])
IMPORT = (48, 8, [("sha256", 0, ("u8x", 32)), ("source", 32, "string")])
STATE_V1 = (200, 8, [("schema_version", 0, "u32"), ("epoch", 8, "u64"), ("global_step", 16, "u64"),
                     ("step_in_epoch", 24, "u64"), ("model", 32, ("struct", MODEL_V1)),
                     ("optimizer", 72, ("struct", ADAM)), ("data", 128, ("struct", DATA)),
                     ("last_loss", 176, "f32"), ("wall_clock_unix_ns", 184, "u64"),
                     ("train_time_ms", 192, "u64")])
STATE_V2 = (328, 8, [("schema_version", 0, "u32"), ("epoch", 8, "u64"), ("global_step", 16, "u64"),
                     ("step_in_epoch", 24, "u64"), ("model", 32, ("struct", MODEL_V2)),
                     ("optimizer", 88, ("struct", ADAM)), ("data", 144, ("struct", DATA)),
                     ("last_loss", 192, "f32"), ("wall_clock_unix_ns", 200, "u64"),
                     ("train_time_ms", 208, "u64"), ("scaling", 216, ("struct", SCALING)),
                     ("import", 280, ("struct", IMPORT))])
NAMED_TENSOR = (64, 8, [("name", 0, "string"), ("dtype", 16, "string"),
                        ("shape", 32, ("vec", "u64")), ("data", 48, ("vec", "u8"))])
GENERAL = (56, 8, [("tensors", 0, ("vec", NAMED_TENSOR)), ("meta", 16, "string"),
                   ("job_id", 32, "string"), ("world_size", 48, "u32"), ("rank", 52, "u32")])
STATE_V3 = (392, 8, STATE_V2[2] + [("kind", 328, "u32"), ("general", 336, ("struct", GENERAL))])
ROOTS = {1: STATE_V1, 2: STATE_V2, 3: STATE_V3}
_PRIM = {"u64": (8, 8, "<u8"), "f32": (4, 4, "<f4"), "u8": (1, 1, "u1")}
KIND_TRAINER, KIND_GENERAL = 0, 1
# §4.3: element size of each dtype, and the numpy type its bytes are viewed
# as (numpy has no bfloat16 or float8: their raw bits are shown as unsigned).
DTYPES = {"BOOL": (1, "?"), "U8": (1, "u1"), "I8": (1, "i1"), "F8_E4M3": (1, "u1"),
          "F8_E5M2": (1, "u1"), "I16": (2, "<i2"), "U16": (2, "<u2"), "F16": (2, "<f2"),
          "BF16": (2, "<u2"), "I32": (4, "<i4"), "U32": (4, "<u4"), "F32": (4, "<f4"),
          "I64": (8, "<i8"), "U64": (8, "<u8"), "F64": (8, "<f8")}


class _Decoder:
    """Validates and decodes a payload by the rules of FORMAT.md §4.3
    (rkyv's): every pointed-to range lies inside the current subtree range
    and is aligned; while an object's contents are checked the range ends at
    the object; after an object the range starts at its end."""

    def __init__(self, buf, base):
        self.buf = buf  # the whole segment mapping
        self.base = base  # payload offset in it
        self.start = base
        self.end = None

    def enter(self, pos, size, align, what):
        if pos < self.start or pos + size > self.end:
            raise FormatError(f"{what}: pointer to {pos - self.base}..{pos + size - self.base} "
                              f"outside the allowed range {self.start - self.base}.."
                              f"{self.end - self.base}")
        if pos % align:
            raise FormatError(f"{what}: pointer {pos - self.base} not aligned to {align}")
        saved = (pos + size, self.end)
        self.end = pos
        return saved

    def leave(self, saved):
        self.start, self.end = saved

    def string(self, at, what):
        b = self.buf
        if (b[at] & 0xC0) != 0x80:
            raw = bytes(b[at:at + 16])
            n = raw.find(b"\xff")
            raw = raw if n < 0 else raw[:n]
        else:
            enc = _u64(b, at)
            n = (enc & 0x3F) | ((enc & ~0xFF & ((1 << 64) - 1)) >> 2)
            if n <= 16:
                raise FormatError(f"{what}: out-of-line string of length {n} <= 16")
            pos = at + _i64(b, at + 8)
            saved = self.enter(pos, n, 1, what)
            raw = bytes(b[pos:pos + n])
            self.leave(saved)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise FormatError(f"{what}: not UTF-8 ({e})") from None

    def vec(self, at, elem, what):
        b = self.buf
        pos = at + _i64(b, at)
        n = _u64(b, at + 8)
        if isinstance(elem, str):
            size, align, dtype = _PRIM[elem]
        else:
            size, align, _ = elem
        if n * size > (1 << 63) - 1:
            raise FormatError(f"{what}: {n} elements do not fit")
        saved = self.enter(pos, n * size, align, what)
        if isinstance(elem, str):
            out = np.frombuffer(self.buf, dtype=dtype, count=n, offset=pos)
        else:
            out = [self.struct(pos + i * size, elem, f"{what}[{i}]") for i in range(n)]
        self.leave(saved)
        return out

    def struct(self, at, layout, what):
        b = self.buf
        out = {}
        for name, off, kind in layout[2]:
            p = at + off
            w = f"{what}.{name}"
            if kind == "u32":
                out[name] = _u32(b, p)
            elif kind == "u64":
                out[name] = _u64(b, p)
            elif kind == "f32":
                out[name] = _f32(b, p)
            elif kind == "f64":
                out[name] = _f64(b, p)
            elif kind == "string":
                out[name] = self.string(p, w)
            elif kind[0] == "vec":
                out[name] = self.vec(p, kind[1], w)
            elif kind[0] == "struct":
                out[name] = self.struct(p, kind[1], w)
            elif kind[0] == "u64x":
                out[name] = list(struct.unpack_from(f"<{kind[1]}Q", b, p))
            elif kind[0] == "u8x":
                out[name] = bytes(b[p:p + kind[1]])
        return out

    def root(self, length, layout):
        size, align, _ = layout
        self.end = self.base + length
        pos = self.base + max(length - size, 0)
        saved = self.enter(pos, size, align, "root")
        out = self.struct(pos, layout, "root")
        self.leave(saved)
        return out


def _fnv1a64(text):
    h = 0xCBF29CE484222325
    for c in text.encode("utf-8"):
        h = ((h ^ c) * 0x100000001B3) & ((1 << 64) - 1)
    return h


def _check_general(s):
    """FORMAT.md §5 step 4, schema 3: the record kind, and a general
    record's tensors and document."""
    g = s["general"]
    kind = s["kind"]
    if kind == KIND_TRAINER:
        if len(g["tensors"]) or g["meta"] or g["job_id"] or g["world_size"] or g["rank"]:
            raise FormatError("a trainer record has general tensors or metadata")
        return
    if kind != KIND_GENERAL:
        raise FormatError(f"unknown record kind {kind}")
    if len(s["model"]["tensors"]) or len(s["optimizer"]["params"]):
        raise FormatError("a general record has trainer tensors")
    world, rank = g["world_size"], g["rank"]
    if (world == 0 and rank != 0) or (world != 0 and rank >= world):
        raise FormatError(f"rank {rank} is not below world size {world}")
    names = set()
    for i, t in enumerate(g["tensors"]):
        if t["dtype"] not in DTYPES:
            raise FormatError(f"tensor {i} ({t['name']}) has unknown dtype {t['dtype']!r}")
        # Left to right from the element size (§5.4).
        n = _running_product(DTYPES[t["dtype"]][0], t["shape"].tolist())
        if n is None or n != len(t["data"]):
            raise FormatError(f"tensor {i} ({t['name']}) has shape {t['shape'].tolist()} of "
                              f"{t['dtype']} but {len(t['data'])} bytes")
        if t["name"] in names:
            raise FormatError(f"tensor name {t['name']} appears twice")
        names.add(t["name"])
    try:
        meta = json.loads(g["meta"])
    except ValueError as e:
        raise FormatError(f"the metadata document is not JSON: {e}") from None
    if not isinstance(meta, dict):
        raise FormatError("the metadata document is not a JSON object")


def _running_product(start: int, shape: List[int]) -> Optional[int]:
    """`start` times the dimensions of `shape`, left to right, or None when
    the running product reaches 2**64 at any step (FORMAT.md §5.4):
    [2**33, 2**33, 0] is invalid although its product is 0.

        _running_product(4, [2, 3])  # 24
    """
    n = start
    for d in shape:
        n *= d
        if n >= 1 << 64:
            return None
    return n


def _check_consistency(s):
    """FORMAT.md §5.4: the payload agrees with itself."""
    if "kind" in s:
        _check_general(s)
    tensors = s["model"]["tensors"]
    names = set()
    for i, t in enumerate(tensors):
        prod = _running_product(1, t["shape"].tolist())
        if prod is None or prod != len(t["data"]):
            raise FormatError(f"tensor {i} ({t['name']}) has shape {t['shape'].tolist()} "
                              f"but {len(t['data'])} values")
        if t["name"] in names:
            raise FormatError(f"tensor name {t['name']} appears twice")
        names.add(t["name"])
    arch = s["model"].get("architecture", "")
    if arch:
        if _fnv1a64(arch) != s["model"]["fingerprint"]:
            raise FormatError("model fingerprint is not the hash of its architecture")
        lines = [ln for ln in arch.split("\n") if ln.startswith("tensor=")]
        want = ["tensor=%s:[%s]" % (t["name"], ", ".join(str(d) for d in t["shape"].tolist()))
                for t in tensors]
        if lines != want:
            raise FormatError("the architecture's tensor lines disagree with the tensors")
    params = s["optimizer"]["params"]
    if len(params) != len(tensors):
        raise FormatError(f"optimizer has state for {len(params)} parameters, "
                          f"the model has {len(tensors)} tensors")
    for i, (p, t) in enumerate(zip(params, tensors)):
        if p["name"] != t["name"]:
            raise FormatError(f"optimizer entry {i} is named {p['name']}, tensor {i} is {t['name']}")
        n = len(t["data"])
        if len(p["exp_avg"]) != n or len(p["exp_avg_sq"]) != n:
            raise FormatError(f"Adam moments of {t['name']} do not match the tensor")


class Record:
    """One validated record. Arrays are read-only numpy views of the mapping
    of its segment (no copy); they stay valid while the record is alive."""

    def __init__(self, path, header, state):
        self.path = path
        self.segment = os.path.basename(path)
        self.header = header
        self.sequence = header["sequence"]
        self.offset = header["offset"]
        self.loss = header["loss"]
        self.schema_version = header["schema_version"]
        self.state = state
        self.epoch = state["epoch"]
        self.global_step = state["global_step"]
        self.step = state["global_step"]
        self.step_in_epoch = state["step_in_epoch"]
        model = state["model"]
        self.fingerprint = model["fingerprint"]
        self.description = model["description"]
        self.tensors = {t["name"]: t["data"].reshape(t["shape"].tolist()) for t in model["tensors"]}
        opt = state["optimizer"]
        self.optimizer = {
            "lr": opt["lr"], "betas": (opt["beta1"], opt["beta2"]), "eps": opt["eps"],
            "weight_decay": opt["weight_decay"],
            "state": [
                {"name": p["name"], "step": p["step"],
                 "exp_avg": p["exp_avg"].reshape(self.tensors[p["name"]].shape),
                 "exp_avg_sq": p["exp_avg_sq"].reshape(self.tensors[p["name"]].shape)}
                for p in opt["params"]
            ],
        }
        self.hyperparameters = {k: v for k, v in self.optimizer.items() if k != "state"}
        empty = np.zeros(0, dtype="<f4")
        sc = state.get("scaling", {})
        self.scaling = {k: sc.get(k, empty) for k in ("input_mean", "input_std", "target_mean", "target_std")}
        imp = state.get("import", {"sha256": bytes(32), "source": ""})
        self.import_sha256 = imp["sha256"].hex() if any(imp["sha256"]) else None
        self.import_source = imp["source"] or None
        # Schema 3: a general record holds typed tensors and a document.
        self.kind = "general" if state.get("kind") == KIND_GENERAL else "trainer"
        self.meta = None
        self.job = None
        if self.kind == "general":
            g = state["general"]
            self.tensors = {
                t["name"]: t["data"].view(DTYPES[t["dtype"]][1]).reshape(t["shape"].tolist())
                for t in g["tensors"]
            }
            self.dtypes = {t["name"]: t["dtype"] for t in g["tensors"]}
            self.meta = json.loads(g["meta"])
            if g["world_size"]:
                self.job = {"job_id": g["job_id"], "world_size": g["world_size"], "rank": g["rank"]}
        else:
            self.dtypes = {name: "F32" for name in self.tensors}

    def __repr__(self):
        return (f"<epochwal.Record seq={self.sequence} epoch={self.epoch} step={self.global_step} "
                f"{self.segment}@{self.offset}>")


class _Segment:
    def __init__(self, path, number):
        self.path = path
        self.number = number
        self.header = None
        self.log_id = None
        self.file_len = 0
        self.records = []
        self.problems = []
        self._map = None

    def mapping(self):
        if self._map is None:
            with builtins_open(self.path, "rb") as f:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return self._map


builtins_open = __builtins__["open"] if isinstance(__builtins__, dict) else __builtins__.open


def _scan(path, number):
    """§5 steps 2-3: the segment header and the walk of record headers."""
    seg = _Segment(path, number)
    try:
        with builtins_open(path, "rb") as f:
            seg.file_len = os.fstat(f.fileno()).st_size
            head = f.read(SEGMENT_HEADER_LEN)
            if len(head) < SEGMENT_HEADER_LEN:
                seg.problems.append((path, 0, "shorter than a segment header"))
                return seg
            try:
                h = decode_segment_header(head)
            except FormatError as e:
                # §5.2: a damaged segment header hides nothing; its records
                # are walked all the same (each names its log and segment),
                # and the first one walked gives the segment's log id. A
                # header of an unknown format version is a newer format.
                seg.problems.append((path, 0, f"segment header: {e}"))
                if str(e).startswith("unknown format version"):
                    return seg
                h = None
            if h is not None:
                if h["segment_no"] != number:
                    seg.problems.append((path, 0, "segment number differs from the file name"))
                    return seg
                seg.header = h
                seg.log_id = h["log_id"]
                if seg.file_len != h["segment_bytes"]:
                    seg.problems.append((path, 0, "segment is not the size its header says"))
            limit = seg.file_len if h is None else min(seg.file_len, h["segment_bytes"])
            offset, last_seq = PAGE, 0
            # Where no valid header starts, the following pages holding data
            # are searched for one (§5 step 3); gaps = (offset, reason or
            # None for a zero page, records before it).
            gaps, searching, data_end = [], False, 0
            while offset + PAGE <= limit:
                if searching and offset >= data_end:
                    try:
                        start = os.lseek(f.fileno(), offset, os.SEEK_DATA)
                        data_end = os.lseek(f.fileno(), start, os.SEEK_HOLE)
                    except OSError as e:
                        if e.errno == errno.ENXIO:
                            break
                        if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                            raise
                        start, data_end = offset, limit
                    offset = max(offset, -(-start // PAGE) * PAGE)
                    continue
                # pread: lseek(SEEK_DATA) above moves the descriptor's offset
                # behind the buffered reader's back.
                b = os.pread(f.fileno(), RECORD_HEADER_LEN, offset)
                if len(b) < RECORD_HEADER_LEN:
                    break
                try:
                    r = decode_record_header(b)
                    failed = None if r is not None else "zero"
                except FormatError as e:
                    r, failed = None, f"record header: {e}"
                if r is None:
                    if not searching:
                        gaps.append((offset, None if failed == "zero" else failed, len(seg.records)))
                        searching, data_end = True, 0
                    offset += PAGE
                    continue
                bad = None
                if seg.log_id is not None and r["log_id"] != seg.log_id:
                    bad = "record belongs to another log"
                elif r["segment_no"] != number:
                    bad = "record header names another segment"
                elif r["offset"] != offset:
                    bad = "record header offset differs from where it was found"
                elif _record_end(r) > limit:
                    bad = "record extends past the end of the segment"
                elif r["sequence"] <= last_seq:
                    bad = "sequence does not increase"
                if bad:
                    if searching:
                        seg.problems.append((path, offset, bad))
                    else:
                        gaps.append((offset, bad, len(seg.records)))
                        searching, data_end = True, 0
                    offset += PAGE
                    continue
                searching = False
                last_seq = r["sequence"]
                if seg.log_id is None:
                    seg.log_id = r["log_id"]
                seg.records.append(r)
                offset = _record_end(r)
            for at, why, before in gaps:
                after = len(seg.records) - before
                if why is not None or after:
                    what = why or "zeroed record header page where a record should start"
                    if after:
                        what += f"; {after} record(s) after it"
                    seg.problems.append((path, at, what))
    except FileNotFoundError as e:
        seg.problems.append((path, 0, f"cannot read: {e}"))
    # Any other OSError propagates: a read error is not damage (§5 step 6).
    return seg


def load_record(seg, h):
    """§5 step 4: checksum, validation with the header's schema version's
    layout, agreement with the header and with itself."""
    if h["schema_version"] not in SCHEMA_VERSIONS:
        raise UnsupportedSchema(
            f"{seg.path} at offset {h['offset']}: record {h['sequence']} has schema version "
            f"{h['schema_version']}; this reader reads {SCHEMA_VERSIONS}")
    buf = seg.mapping()
    start = h["offset"] + PAGE
    end = start + h["payload_len"]
    if end > len(buf):
        raise FormatError("payload extends past the end of the file")
    payload = memoryview(buf)[start:end]
    if xxh3_64(payload) != h["payload_checksum"]:
        raise FormatError("payload checksum mismatch")
    state = _Decoder(buf, start).root(h["payload_len"], ROOTS[h["schema_version"]])
    if state["schema_version"] != h["schema_version"]:
        raise FormatError("payload schema version disagrees with the header")
    if state["epoch"] != h["epoch"] or state["global_step"] != h["step"]:
        raise FormatError("payload epoch/step disagree with the header")
    _check_consistency(state)
    return Record(seg.path, h, state)


def builtins_listdir(d):
    return os.listdir(d)


class Log:
    """A log directory, read-only. Never writes or locks anything."""

    def __init__(self, directory):
        self.dir = os.fspath(directory)
        if not os.path.isdir(self.dir):
            raise FileNotFoundError(f"{self.dir}: no such log directory")

    def segments(self):
        # §2: a 20-digit name above 2**64 - 1 is not a segment name.
        names = sorted(n for n in builtins_listdir(self.dir)
                       if _NAME.match(n) and int(n[:20]) < 1 << 64)
        return [_scan(os.path.join(self.dir, n), int(n[:20])) for n in names]

    def recover(self):
        """§5: (record or None, skipped), skipped = [(file, offset, reason)]."""
        skipped = []
        log_id = None
        undecided = []
        for seg in reversed(self.segments()):
            skipped.extend(seg.problems)
            if seg.log_id is None:
                continue
            sid = seg.log_id
            if log_id is None:
                if not seg.records:
                    undecided.append(seg)
                    continue
                log_id = sid
                skipped.extend((s.path, 0, "segment belongs to another log")
                               for s in undecided if s.log_id != sid)
            elif sid != log_id:
                skipped.append((seg.path, 0, "segment belongs to another log"))
                continue
            for h in reversed(seg.records):
                try:
                    return load_record(seg, h), skipped
                except FormatError as e:
                    skipped.append((seg.path, h["offset"], f"record {h['sequence']}: {e}"))
        return None, skipped

    def latest(self):
        """The record recovery chooses (None for an empty log)."""
        return self.recover()[0]

    def _headers(self):
        for seg in self.segments():
            for h in seg.records:
                yield seg, h

    def by_sequence(self, sequence):
        for seg, h in self._headers():
            if h["sequence"] == sequence:
                return load_record(seg, h)
        raise KeyError(f"{self.dir}: no record with sequence {sequence}")

    def by_epoch(self, epoch):
        """The newest valid record of `epoch`."""
        found = [(seg, h) for seg, h in self._headers() if h["epoch"] == epoch]
        for seg, h in reversed(found):
            try:
                return load_record(seg, h)
            except FormatError:
                continue
        raise KeyError(f"{self.dir}: no valid record of epoch {epoch}")


def open(directory):  # noqa: A001 - the documented entry point
    """Opens a log directory for reading."""
    return Log(directory)
