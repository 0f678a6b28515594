"""XXH3-64 with seed 0 and the default secret (FORMAT.md §3), in Python and
numpy. The long-input loop is vectorised over the stripes of a block, so a
payload is hashed at numpy speed; short inputs use plain integers."""

import numpy as np

M64 = (1 << 64) - 1
P32_1, P32_2, P32_3 = 0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D
P64_1, P64_2, P64_3 = 0x9E3779B185EBCA87, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9
P64_4, P64_5 = 0x85EBCA77C2B2AE63, 0x27D4EB2F165667C5
PRIME_MX1, PRIME_MX2 = 0x165667919E3779F9, 0x9FB21C651E98DF25

SECRET = bytes.fromhex(
    "b8fe6c3923a44bbe7c01812cf721ad1cded46de9839097db7240a4a4b7b3671f"
    "cb79e64eccc0e578825ad07dccff7221b8084674f743248ee03590e6813a264c"
    "3c2852bb91c300cb88d0658b1b532ea371644897a20df94e3819ef46a9deacd8"
    "a8fa763fe39c343ff9dcbbc7c70b4f1d8a51e04bcdb45931c89f7ec9d9787364"
    "eac5ac8334d3ebc3c581a0fffa1363eb170ddd51b7f0da49d3165526 29d4689e"
    "2b16be587d47a1fc8ff8b8d17ad031ce45cb3a8f95160428afd7fbcabb4b407e".replace(" ", "")
)
STRIPE = 64
STRIPES_PER_BLOCK = (len(SECRET) - STRIPE) // 8  # 16
BLOCK = STRIPE * STRIPES_PER_BLOCK  # 1024


def _r64(b, i):
    return int.from_bytes(b[i:i + 8], "little")


def _r32(b, i):
    return int.from_bytes(b[i:i + 4], "little")


def _mul_fold(a, b):
    p = a * b
    return (p ^ (p >> 64)) & M64


def _avalanche(h):
    h ^= h >> 37
    h = (h * PRIME_MX1) & M64
    return h ^ (h >> 32)


def _xxh64_avalanche(h):
    h ^= h >> 33
    h = (h * P64_2) & M64
    h ^= h >> 29
    h = (h * P64_3) & M64
    return h ^ (h >> 32)


def _rotl(x, r):
    return ((x << r) | (x >> (64 - r))) & M64


def _mix16(b, i, s):
    return _mul_fold(_r64(b, i) ^ _r64(SECRET, s), _r64(b, i + 8) ^ _r64(SECRET, s + 8))


def _short(b):
    n = len(b)
    if n == 0:
        return _xxh64_avalanche(_r64(SECRET, 56) ^ _r64(SECRET, 64))
    if n <= 3:
        combined = (b[0] << 16) | (b[n >> 1] << 24) | b[n - 1] | (n << 8)
        return _xxh64_avalanche(combined ^ (_r32(SECRET, 0) ^ _r32(SECRET, 4)))
    if n <= 8:
        x = (_r32(b, n - 4) + (_r32(b, 0) << 32)) ^ (_r64(SECRET, 8) ^ _r64(SECRET, 16))
        x ^= _rotl(x, 49) ^ _rotl(x, 24)
        x = (x * PRIME_MX2) & M64
        x ^= (x >> 35) + n
        x = (x * PRIME_MX2) & M64
        return x ^ (x >> 28)
    if n <= 16:
        lo = _r64(b, 0) ^ (_r64(SECRET, 24) ^ _r64(SECRET, 32))
        hi = _r64(b, n - 8) ^ (_r64(SECRET, 40) ^ _r64(SECRET, 48))
        swapped = int.from_bytes(lo.to_bytes(8, "little"), "big")
        return _avalanche((n + swapped + hi + _mul_fold(lo, hi)) & M64)
    if n <= 128:
        acc = (n * P64_1) & M64
        if n > 32:
            if n > 64:
                if n > 96:
                    acc += _mix16(b, 48, 96) + _mix16(b, n - 64, 112)
                acc += _mix16(b, 32, 64) + _mix16(b, n - 48, 80)
            acc += _mix16(b, 16, 32) + _mix16(b, n - 32, 48)
        acc += _mix16(b, 0, 0) + _mix16(b, n - 16, 16)
        return _avalanche(acc & M64)
    # 129..240
    acc = (n * P64_1) & M64
    for i in range(8):
        acc += _mix16(b, 16 * i, 16 * i)
    acc = _avalanche(acc & M64)
    for i in range(8, n // 16):
        acc += _mix16(b, 16 * i, 16 * (i - 8) + 3)
    acc += _mix16(b, n - 16, 136 - 17)
    return _avalanche(acc & M64)


_SECRET_U64 = np.frombuffer(SECRET, dtype="<u8")
# Key of stripe n, lane i: the secret read at byte 8n + 8i.
_KEYS = np.array(
    [[_r64(SECRET, 8 * n + 8 * i) for i in range(8)] for n in range(STRIPES_PER_BLOCK)],
    dtype=np.uint64,
)
_LOW32 = np.uint64(0xFFFFFFFF)
_SWAP = np.array([1, 0, 3, 2, 5, 4, 7, 6])


def _stripe_sums(data, keys):
    """Sum over stripes of what accumulate_512 adds to each lane."""
    dk = data ^ keys
    prod = (dk & _LOW32) * (dk >> np.uint64(32))
    return prod.sum(axis=-2, dtype=np.uint64) + data[..., _SWAP].sum(axis=-2, dtype=np.uint64)


def _scramble(acc):
    key = SECRET[len(SECRET) - STRIPE:]
    out = []
    for i, a in enumerate(acc):
        a ^= a >> 47
        a ^= _r64(key, 8 * i)
        out.append((a * P32_1) & M64)
    return out


def _long(b):
    n = len(b)
    acc = [P32_3, P64_1, P64_2, P64_3, P64_4, P32_2, P64_5, P32_1]
    nb_blocks = (n - 1) // BLOCK
    with np.errstate(over="ignore"):
        if nb_blocks:
            full = np.frombuffer(b, dtype="<u8", count=nb_blocks * BLOCK // 8)
            sums = _stripe_sums(full.reshape(nb_blocks, STRIPES_PER_BLOCK, 8), _KEYS)
            for blk in sums.tolist():
                acc = _scramble([(a + s) & M64 for a, s in zip(acc, blk)])
        start = nb_blocks * BLOCK
        nb_stripes = ((n - 1) - start) // STRIPE
        if nb_stripes:
            tail = np.frombuffer(b, dtype="<u8", count=nb_stripes * 8, offset=start)
            s = _stripe_sums(tail.reshape(nb_stripes, 8), _KEYS[:nb_stripes])
            acc = [(a + x) & M64 for a, x in zip(acc, s.tolist())]
        last = np.frombuffer(b, dtype="<u8", count=8, offset=n - STRIPE).reshape(1, 8)
        key = np.frombuffer(SECRET, dtype="<u8", count=8, offset=len(SECRET) - STRIPE - 7)
        s = _stripe_sums(last, key.reshape(1, 8))
        acc = [(a + x) & M64 for a, x in zip(acc, s.tolist())]
    result = (n * P64_1) & M64
    for i in range(4):
        result += _mul_fold(acc[2 * i] ^ _r64(SECRET, 11 + 16 * i), acc[2 * i + 1] ^ _r64(SECRET, 11 + 16 * i + 8))
    return _avalanche(result & M64)


def xxh3_64(data):
    """XXH3-64 (seed 0) of a bytes-like object."""
    b = memoryview(data).cast("B")
    if len(b) <= 240:
        return _short(bytes(b))
    return _long(b)
