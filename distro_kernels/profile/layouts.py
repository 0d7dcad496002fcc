"""Tensor layouts to profile: named models, single shapes, or a user's JSON list of shapes."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

MAX_TENSORS = 100_000
MAX_NDIM = 8
MAX_DIM = 1 << 40
MAX_JSON_BYTES = 16 << 20


@dataclass(frozen=True)
class Layout:
    name: str
    shapes: tuple[tuple[int, ...], ...]
    description: str = ""

    @property
    def numel(self) -> int:
        return sum(math.prod(s) for s in self.shapes)

    def summary(self) -> str:
        return f"{len(self.shapes)} tensors, {self.numel:,} parameters"


def tinyllama_1b() -> list[tuple[int, ...]]:
    """TinyLlama-1.1B's parameter shapes (Llama-2 architecture: d 2048, FFN 5632, 22 layers,
    32 query heads and 4 key/value heads of 64, vocabulary 32000, untied output head):
    1,100,048,384 parameters in 201 tensors, in the model's parameter order."""
    d, ffn, kv, layers, vocab = 2048, 5632, 256, 22, 32000
    block = [(d, d), (kv, d), (kv, d), (d, d), (ffn, d), (ffn, d), (d, ffn), (d,), (d,)]
    return [(vocab, d)] + block * layers + [(d,), (vocab, d)]


def _block() -> list[tuple[int, ...]]:
    return tinyllama_1b()[1:10]


NAMED = {
    "llama-1b": (tinyllama_1b, "TinyLlama-1.1B (Llama-2 architecture), every parameter"),
    "llama-1b-block": (_block, "one decoder block of TinyLlama-1.1B (attention, MLP, norms)"),
    # odd shapes for smoke runs and tests: a prime dim, 1-D tensors, a 3-D (stacked) tensor
    "tiny": (lambda: [(96, 64), (29, 48), (64,), (7,), (2, 16, 64)],
             "small odd shapes (prime dims, 1-D, 3-D): a smoke run, not a measurement"),
}

_SHAPE = re.compile(r"^\d+(x\d+)*$")


def _check_shape(shape, where: str) -> tuple[int, ...]:
    if not isinstance(shape, (list, tuple)) or not 1 <= len(shape) <= MAX_NDIM:
        raise ValueError(f"{where}: a shape is a list of 1 to {MAX_NDIM} positive integers, got {shape!r}")
    out = []
    for d in shape:
        if isinstance(d, bool) or not isinstance(d, int) or not 1 <= d < MAX_DIM:
            raise ValueError(f"{where}: dimension {d!r} is not an integer in [1, 2**40)")
        out.append(int(d))
    return tuple(out)


def parse_layout(spec: str) -> Layout:
    """A named layout (``llama-1b``, ``llama-1b-block``, ``tiny``) or one shape ``4096x4096``."""
    spec = spec.strip()
    if spec in NAMED:
        make, description = NAMED[spec]
        return Layout(spec, tuple(make()), description)
    if _SHAPE.match(spec):
        shape = _check_shape([int(d) for d in spec.split("x")], f"layout {spec!r}")
        return Layout(spec, (shape,), "one tensor")
    raise ValueError(f"unknown layout {spec!r}: use one of {sorted(NAMED)} or a shape like 4096x4096")


def parse_layouts(specs: list[str]) -> list[Layout]:
    out = []
    for spec in specs:
        out += [parse_layout(s) for s in spec.split(",") if s.strip()]
    if not out:
        raise ValueError("no layout given")
    return out


def load_layout_json(path: str | Path) -> Layout:
    """``[[4096, 4096], [2048]]`` or ``{"name": "...", "shapes": [...]}`` from a file."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as error:
        raise ValueError(f"layout file {path}: {error.strerror}") from None
    if size > MAX_JSON_BYTES:
        raise ValueError(f"layout file {path}: {size} bytes, over the {MAX_JSON_BYTES} limit")
    try:
        doc = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"layout file {path}: not JSON ({error})") from None
    name = path.stem
    if isinstance(doc, dict):
        name = doc.get("name", name)
        if not isinstance(name, str) or not name:
            raise ValueError(f"layout file {path}: name must be a non-empty string")
        doc = doc.get("shapes")
    if not isinstance(doc, list) or not doc:
        raise ValueError(f"layout file {path}: expected a non-empty list of shapes")
    if len(doc) > MAX_TENSORS:
        raise ValueError(f"layout file {path}: {len(doc)} tensors, over the {MAX_TENSORS} limit")
    shapes = tuple(_check_shape(s, f"layout file {path}, tensor {i}") for i, s in enumerate(doc))
    return Layout(name, shapes, f"from {path.name}")
