#!/usr/bin/env python
"""Wire-format size and speed report for a ~1B-parameter layout.

Prints, per (k, value codec, index codec): bytes per step, bits per kept coefficient (split
into index, value and framing bits), bits per parameter, the ratio to DeMo's 96 bits
(int64 index + fp32 value) and Psyche's 17 bits (u16 index + sign bit) per coefficient, and
encode / parse speed in MB/s of wire bytes (best of ``--repeat``).

Indices are uniform random k-subsets of each chunk (what top-k of white noise gives; real
momentum is usually more concentrated, which only helps the entropy code); values are
Gaussian. Encode = ``Payload(...)`` (checks, rounding) + ``to_bytes()``; parse =
``Payload.from_bytes`` with every check.

    python benchmarks/wire_report.py                 # the 1.14B layout, k=32 and k=8
    python benchmarks/wire_report.py --layers 2      # quicker, smaller model
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from distro_kernels import wire  # noqa: E402

DEMO_BITS = 96  # int64 index + fp32 value
PSYCHE_BITS = 17  # u16 index + 1 sign bit


def model_shapes(layers: int = 16, d: int = 2048, ff: int = 8192, vocab: int = 32000):
    """A Llama-style decoder: embedding, per layer q/k/v/o (d x d), gate/up (ff x d),
    down (d x ff), two RMSNorm weights; a final norm. 16 layers: 1.14B parameters."""
    shapes = [(vocab, d)]
    for _ in range(layers):
        shapes += [(d, d)] * 4 + [(ff, d), (ff, d), (d, ff), (d,), (d,)]
    shapes.append((d,))
    return shapes


def random_indices(rng, rows: int, k: int, E: int) -> np.ndarray:
    if k == E:
        return np.tile(np.arange(E, dtype=np.int32), (rows, 1))
    if 4 * k > E:
        keys = rng.random((rows, E), dtype=np.float32)
        return np.sort(np.argpartition(keys, k - 1, axis=1)[:, :k], axis=1).astype(np.int32)
    idx = np.sort(rng.integers(0, E, (rows, k), dtype=np.int32), axis=1)
    while True:
        bad = (np.diff(idx, axis=1) == 0).any(axis=1)
        if not bad.any():
            return idx
        idx[bad] = np.sort(rng.integers(0, E, (int(bad.sum()), k), dtype=np.int32), axis=1)


def best_time(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=16, help="decoder layers (default 16: 1.14B)")
    ap.add_argument("--k", type=int, nargs="+", default=[32, 8], help="kept per chunk")
    ap.add_argument("--chunk", type=int, default=64, help="chunk target s")
    ap.add_argument("--values", nargs="+", default=["sign", "f32"],
                    choices=list(wire.VALUE_CODECS), help="value codecs")
    ap.add_argument("--indices", nargs="+", default=["fixed", "auto"],
                    choices=list(wire.INDEX_CODECS), help="index codecs")
    ap.add_argument("--repeat", type=int, default=3, help="timing repeats (best of)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    shapes = model_shapes(args.layers)
    print(f"# wire_report: {platform.node()} {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cpus, numpy {np.__version__}, python {platform.python_version()}")
    print(f"# layout: {len(shapes)} tensors, {sum(int(np.prod(s)) for s in shapes):,} "
          f"parameters, chunk {args.chunk}")
    print()
    hdr = (f"| {'k':>2} | {'values':6} | {'indices':7} | {'bytes/step':>12} | {'bits/coef':>9} "
           f"| {'idx':>6} | {'val':>5} | {'frame':>7} | {'bits/param':>10} | {'vs DeMo':>7} "
           f"| {'vs Psyche':>9} | {'enc MB/s':>8} | {'parse MB/s':>10} |")
    print(hdr)
    print("|" + "|".join("-" * (len(c)) for c in hdr.split("|")[1:-1]) + "|")
    rng = np.random.default_rng(args.seed)
    for k in args.k:
        layout = wire.Layout(shapes, args.chunk, k)
        idx = [random_indices(rng, nc, ke, E)
               for nc, ke, E in zip(layout.n_chunks, layout.k_effs, layout.elements)]
        vals = [rng.standard_normal(n, dtype=np.float32) for n in layout.kept]
        for vc in args.values:
            for ic in args.indices:
                def encode():
                    return wire.Payload(1, 0, 1, layout, idx, vals, vc, index_codec=ic).to_bytes()

                t_enc, data = best_time(encode, args.repeat)
                t_dec, parsed = best_time(lambda: wire.Payload.from_bytes(data, layout),
                                          args.repeat)
                assert parsed.to_bytes() == data  # exact round trip, canonical bytes
                st = wire.stats(data, layout)
                mb = len(data) / 1e6
                print(f"| {k:>2} | {vc:6} | {ic:7} | {len(data):>12,} | {st.bits_per_kept:>9.4f} "
                      f"| {st.index_bits_per_kept:>6.3f} | {st.value_bits_per_kept:>5.2f} "
                      f"| {st.framing_bits_per_kept:>7.5f} | {st.bits_per_param:>10.5f} "
                      f"| {DEMO_BITS / st.bits_per_kept:>6.2f}x "
                      f"| {PSYCHE_BITS / st.bits_per_kept:>8.2f}x "
                      f"| {mb / t_enc:>8.0f} | {mb / t_dec:>10.0f} |", flush=True)
        print(f"|    | (DeMo) | int64   | {layout.total_kept * DEMO_BITS // 8:>12,} "
              f"| {DEMO_BITS:>9.4f} | {64:>6} | {32:>5} |         |            |         "
              f"|           |          |            |")
        print(f"|    | (Psyche)| u16    | {layout.total_kept * PSYCHE_BITS // 8:>12,} "
              f"| {PSYCHE_BITS:>9.4f} | {16:>6} | {1:>5} |         |            |         "
              f"|           |          |            |")
        print(f"# k={k}: {layout.total_kept:,} kept coefficients per step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
