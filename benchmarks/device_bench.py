"""Kept for old commands: the device timings are ``distro-kernels profile`` now.

    python benchmarks/device_bench.py [--quick] [--out DIR] [profile options...]
        = python -m distro_kernels profile --device cuda [--quick] --out DIR --csv --markdown
    python benchmarks/device_bench.py --tiny
        = TRITON_INTERPRET=1 python -m distro_kernels profile --device cpu --triton-interpreter
          --backends triton,reference --layout tiny --quick   (a smoke run of the GPU code path)
    python benchmarks/device_bench.py --accuracy
        SPEC 6's encode bar for each Triton dot precision (ieee, and tf32x3 on NVIDIA) on this
        device; a correctness figure, not a timing.

Any other option is passed to the profiler (see ``python -m distro_kernels profile --help``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def accuracy() -> int:
    """||X - X64|| / ||X64|| of the Triton encoder's DCT per dot precision (SPEC 6: < 1e-5)."""
    import torch

    from distro_kernels import reference
    from distro_kernels.basis import canonical_basis_np
    from distro_kernels.chunking import chunk_plan
    from distro_kernels.triton import impl as tb

    if not torch.cuda.is_available():
        sys.exit("--accuracy needs a GPU")
    device = torch.device("cuda")
    plan = chunk_plan((256, 1024), 64)
    x = torch.randn(plan.shape, device=device)
    cm = torch.from_numpy(canonical_basis_np(plan.cm).astype("float64"))
    cn = torch.from_numpy(canonical_basis_np(plan.cn).astype("float64"))
    exact = (cm @ reference.to_chunks(x.double().cpu(), plan) @ cn.T).reshape(plan.n_chunks, -1)
    precisions = ["ieee"] if torch.version.hip else ["ieee", "tf32x3"]
    worst = 0.0
    for prec in precisions:
        tb.DOT_PRECISION = prec
        rel = float((tb.dct(x, plan).double().cpu() - exact).norm() / exact.norm())
        worst = max(worst, rel)
        print(f"dct {prec}: ||X - X64|| / ||X64|| = {rel:.2e} (SPEC 6 fp32 bar 1e-5)")
    tb.DOT_PRECISION = precisions[0]
    return 0 if worst < 1e-5 else 1


def profile_argv(argv: list[str]) -> list[str]:
    """The profiler's arguments for this script's."""
    args = list(argv)
    if "--tiny" in args:
        args.remove("--tiny")
        base = ["--device", "cpu", "--triton-interpreter", "--backends", "triton,reference",
                "--layout", "tiny", "--quick"]
    else:
        base = ["--device", "cuda", "--csv", "--markdown"]
    if "--json" in args:  # the old flag named a file; the profiler names files by device key
        i = args.index("--json")
        args[i:i + 2] = ["--out", str(Path(args[i + 1]).parent)]
    return ["profile"] + base + args


def main(argv: list[str]) -> int:
    if "--accuracy" in argv:
        return accuracy()
    if "--tiny" in argv:
        os.environ["TRITON_INTERPRET"] = "1"  # before Triton is first imported
    sys.path.insert(0, str(ROOT))
    from distro_kernels.__main__ import main as cli

    return cli(profile_argv(argv))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
