#!/usr/bin/env python3
"""Regenerate the SmolLM2-135M-Instruct reference data from the GGUF file alone.

This script is deliberately independent of charter: it shares no code with the
Rust crates, and derives everything from the GGUF file with numpy, the
`tokenizers` package and jinja2. Its outputs are the files in
tests/reference/smollm2/ that charter's tests compare against.

Method
------
* GGUF: a small reader below parses the header (versions 2 and 3), the
  metadata key/value pairs, the tensor infos and the aligned data section.
  Every tensor is dequantised to float32 exactly as ggml defines its blocks:
  Q4_1 = f16 scale d, f16 min m, 16 bytes of nibbles (element j in the low
  nibble of byte j, element j+16 in the high nibble), value = d*q + m;
  Q8_0 = f16 scale d, 32 int8, value = d*q. (Q4_0, F16 and F32 are handled
  too, for completeness.)
* Forward pass: a plain llama decoder computed in float64 on the float32
  weights, one sequence, no batching: RMSNorm (eps from the metadata),
  grouped-query attention with a causal mask, SwiGLU FFN, final RMSNorm, and
  the LM head tied to token_embd.weight (the GGUF has no output.weight).
  llama.cpp's converter permutes the rows of the Q and K projections so that
  the two halves of each rotary pair end up adjacent; on those weights RoPE is
  therefore applied to interleaved pairs (2i, 2i+1), not to the two halves of
  the head. The rotary angles pos * base^(-2i/d) are computed in float64.
* Decoding: greedy, with a key/value cache, up to 64 new tokens, stopping
  after the end-of-turn id (tokenizer.ggml.eos_token_id, 2).
* Tokenizer: a byte-level BPE built with `tokenizers` from
  tokenizer.ggml.tokens and tokenizer.ggml.merges; pre-tokenizer
  Digits(individual_digits) then ByteLevel(add_prefix_space=False,
  use_regex=True); ByteLevel decoder; no normaliser; no BOS added. Tokens of
  type 3 (control) are registered as special tokens, so that the chat
  template's markers encode to their single ids.
* Chat template: tokenizer.chat_template rendered with jinja2 the way
  transformers does (trim_blocks, lstrip_blocks, sandboxed), with
  add_generation_prompt and no system message, so the template's default
  system prompt is used.

Usage
-----
    python3 tests/reference/regenerate.py [--gguf PATH] [--out DIR]
    python3 tests/reference/regenerate.py --check tests/reference/smollm2

--check regenerates into a temporary directory and compares with DIR: token
ids, texts and tokenizer cases exactly, logits within --tolerance (1e-3).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import mmap
import os
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the ocean.",
    "Explain what a CPU does in two sentences.",
]

TOKENIZER_TEXTS = [
    "Hello, world!",
    "The year 2024 had 365 days; π≈3.14159 and 1,000,000 people.",
    "  leading spaces and   multiple   gaps\ttabs\nnewline\n\n\ndouble",
    "I'm sure they'll say it's fine, but we've DON'T know.",
    "def foo(x):\n    return x**2  # comment\n",
    "Ünïcödé café naïve — “quotes” 😀👍🏽 中文测试 日本語 한국어",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "text<|im_end|>glued<|endoftext|> <repo_name>x",
    "   ",
    "a\r\nb\r\n",
    "https://example.com/path?q=1&x=y#frag",
    "12345678901234567890 0.5e-10 ١٢٣",
]

MAX_NEW_TOKENS = 64
TOP_K = 5


# --------------------------------------------------------------------------
# GGUF reader
# --------------------------------------------------------------------------

# Metadata value types: id -> struct format (scalars), 8 = string, 9 = array.
_SCALAR_FORMATS = {
    0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i",
    6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d",
}
_STRING, _ARRAY = 8, 9

# ggml tensor types handled here: id -> (name, values per block, bytes per block).
_GGML_TYPES = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 2 + 16),
    3: ("Q4_1", 32, 2 + 2 + 16),
    8: ("Q8_0", 32, 2 + 32),
}


class GGUFReader:
    """Parses a GGUF file (v2/v3) that is memory-mapped read-only."""

    def __init__(self, path: Path):
        self._file = open(path, "rb")
        self._buf = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        self._pos = 0

        if self._read(4) != b"GGUF":
            raise ValueError(f"{path}: not a GGUF file")
        self.version = self._scalar("<I")
        if self.version not in (2, 3):
            raise ValueError(f"{path}: GGUF version {self.version} is not supported (2 or 3)")
        n_tensors = self._scalar("<Q")
        n_kv = self._scalar("<Q")

        self.metadata: dict[str, object] = {}
        for _ in range(n_kv):
            key = self._string()
            self.metadata[key] = self._value(self._scalar("<I"))

        # Tensor infos: name, dims (innermost first), type, offset into the data section.
        self._infos: dict[str, tuple[tuple[int, ...], int, int]] = {}
        for _ in range(n_tensors):
            name = self._string()
            n_dims = self._scalar("<I")
            dims = tuple(self._scalar("<Q") for _ in range(n_dims))
            ggml_type = self._scalar("<I")
            offset = self._scalar("<Q")
            self._infos[name] = (dims, ggml_type, offset)

        alignment = int(self.metadata.get("general.alignment", 32))
        self._data_start = -(-self._pos // alignment) * alignment

    # -- primitive reads -------------------------------------------------
    def _read(self, n: int) -> bytes:
        if self._pos + n > len(self._buf):
            raise ValueError("GGUF file is truncated")
        out = self._buf[self._pos:self._pos + n]
        self._pos += n
        return out

    def _scalar(self, fmt: str):
        return struct.unpack(fmt, self._read(struct.calcsize(fmt)))[0]

    def _string(self) -> str:
        return self._read(self._scalar("<Q")).decode("utf-8")

    def _value(self, vtype: int):
        if vtype in _SCALAR_FORMATS:
            return self._scalar(_SCALAR_FORMATS[vtype])
        if vtype == _STRING:
            return self._string()
        if vtype == _ARRAY:
            item_type = self._scalar("<I")
            count = self._scalar("<Q")
            if item_type in _SCALAR_FORMATS:
                # Numeric arrays in one go (token_type has 49k entries).
                fmt = _SCALAR_FORMATS[item_type]
                size = struct.calcsize(fmt)
                values = np.frombuffer(self._read(size * count), dtype=np.dtype(fmt))
                return values.tolist()
            return [self._value(item_type) for _ in range(count)]
        raise ValueError(f"unknown GGUF metadata type {vtype}")

    # -- tensors ---------------------------------------------------------
    def has_tensor(self, name: str) -> bool:
        return name in self._infos

    def tensor(self, name: str) -> np.ndarray:
        """Returns the tensor dequantised to float32, numpy shape = reversed GGUF dims."""
        dims, ggml_type, offset = self._infos[name]
        if ggml_type not in _GGML_TYPES:
            raise ValueError(f"{name}: ggml type {ggml_type} is not supported")
        _, block_values, block_bytes = _GGML_TYPES[ggml_type]
        n = math.prod(dims)
        if n % block_values:
            raise ValueError(f"{name}: {n} values is not a whole number of blocks")
        n_blocks = n // block_values
        start = self._data_start + offset
        raw = np.frombuffer(self._buf, dtype=np.uint8, count=n_blocks * block_bytes, offset=start)
        values = _dequantise(ggml_type, raw.reshape(n_blocks, block_bytes))
        return values.reshape(tuple(reversed(dims)))


def _dequantise(ggml_type: int, blocks: np.ndarray) -> np.ndarray:
    """blocks: (n_blocks, block_bytes) uint8 -> flat float32 values."""
    def f16(col: slice) -> np.ndarray:  # one f16 per block -> (n_blocks, 1) float32
        return blocks[:, col].copy().view("<f2").astype(np.float32)

    def nibbles(b: np.ndarray) -> np.ndarray:
        # Byte j holds element j (low nibble) and element j + 16 (high nibble).
        return np.concatenate([b & 0x0F, b >> 4], axis=1).astype(np.float32)

    if ggml_type == 0:
        return blocks.copy().view("<f4").astype(np.float32).ravel()
    if ggml_type == 1:
        return blocks.copy().view("<f2").astype(np.float32).ravel()
    if ggml_type == 2:  # Q4_0: d * (q - 8)
        d = f16(slice(0, 2))
        return (d * (nibbles(blocks[:, 2:]) - 8.0)).ravel()
    if ggml_type == 3:  # Q4_1: d * q + m
        d, m = f16(slice(0, 2)), f16(slice(2, 4))
        return (d * nibbles(blocks[:, 4:]) + m).ravel()
    if ggml_type == 8:  # Q8_0: d * q
        d = f16(slice(0, 2))
        q = blocks[:, 2:].copy().view(np.int8).astype(np.float32)
        return (d * q).ravel()
    raise ValueError(f"ggml type {ggml_type} is not supported")


# --------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------

class Llama:
    """A plain llama decoder in float64 over float32-dequantised GGUF weights."""

    def __init__(self, gguf: GGUFReader):
        md = gguf.metadata
        arch = md["general.architecture"]
        if arch != "llama":
            raise ValueError(f"expected a llama model, got {arch!r}")
        self.n_layers = int(md["llama.block_count"])
        self.d_model = int(md["llama.embedding_length"])
        self.n_heads = int(md["llama.attention.head_count"])
        self.n_kv_heads = int(md.get("llama.attention.head_count_kv", self.n_heads))
        self.head_dim = self.d_model // self.n_heads
        self.eps = float(md["llama.attention.layer_norm_rms_epsilon"])
        self.rope_base = float(md.get("llama.rope.freq_base", 10000.0))

        def w(name: str) -> np.ndarray:
            return gguf.tensor(name).astype(np.float64)

        self.embed = w("token_embd.weight")  # (vocab, d_model)
        # Tied LM head when the file has no separate output matrix.
        self.lm_head = w("output.weight") if gguf.has_tensor("output.weight") else self.embed
        self.final_norm = w("output_norm.weight")
        self.layers = []
        for i in range(self.n_layers):
            p = f"blk.{i}."
            # GGUF matrices are (out, in) in numpy order; store transposed for x @ W.
            self.layers.append({
                "attn_norm": w(p + "attn_norm.weight"),
                "wq": np.ascontiguousarray(w(p + "attn_q.weight").T),
                "wk": np.ascontiguousarray(w(p + "attn_k.weight").T),
                "wv": np.ascontiguousarray(w(p + "attn_v.weight").T),
                "wo": np.ascontiguousarray(w(p + "attn_output.weight").T),
                "ffn_norm": w(p + "ffn_norm.weight"),
                "w_gate": np.ascontiguousarray(w(p + "ffn_gate.weight").T),
                "w_up": np.ascontiguousarray(w(p + "ffn_up.weight").T),
                "w_down": np.ascontiguousarray(w(p + "ffn_down.weight").T),
            })
        # Inverse frequencies for the interleaved pairs (2i, 2i+1), float64.
        half = self.head_dim // 2
        self.inv_freq = self.rope_base ** (-np.arange(half, dtype=np.float64) * 2.0 / self.head_dim)

    def _rmsnorm(self, x: np.ndarray, weight: np.ndarray) -> np.ndarray:
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * weight

    def _rope(self, x: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """x: (heads, T, head_dim); rotates each adjacent pair (2i, 2i+1)."""
        angles = positions[:, None].astype(np.float64) * self.inv_freq[None, :]  # (T, half)
        cos, sin = np.cos(angles), np.sin(angles)
        even, odd = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = even * cos - odd * sin
        out[..., 1::2] = even * sin + odd * cos
        return out

    def new_cache(self, capacity: int) -> dict:
        shape = (self.n_layers, self.n_kv_heads, capacity, self.head_dim)
        return {"k": np.zeros(shape), "v": np.zeros(shape), "len": 0}

    def forward(self, ids: list[int], cache: dict) -> np.ndarray:
        """Runs `ids` after the cached positions; returns the last position's logits."""
        start, t = cache["len"], len(ids)
        end = start + t
        positions = np.arange(start, end)
        hd, nh, nkv = self.head_dim, self.n_heads, self.n_kv_heads
        group = nh // nkv
        # Causal mask over [query t, key end]: query at position start+i sees keys <= start+i.
        mask = np.where(np.arange(end)[None, :] <= positions[:, None], 0.0, -np.inf)

        x = self.embed[ids]  # (T, d_model)
        for li, L in enumerate(self.layers):
            h = self._rmsnorm(x, L["attn_norm"])
            q = (h @ L["wq"]).reshape(t, nh, hd).transpose(1, 0, 2)
            k = (h @ L["wk"]).reshape(t, nkv, hd).transpose(1, 0, 2)
            v = (h @ L["wv"]).reshape(t, nkv, hd).transpose(1, 0, 2)
            q, k = self._rope(q, positions), self._rope(k, positions)
            cache["k"][li, :, start:end] = k
            cache["v"][li, :, start:end] = v
            keys = np.repeat(cache["k"][li, :, :end], group, axis=0)  # (nh, end, hd)
            vals = np.repeat(cache["v"][li, :, :end], group, axis=0)
            scores = q @ keys.transpose(0, 2, 1) / math.sqrt(hd) + mask  # (nh, T, end)
            scores -= scores.max(axis=-1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(axis=-1, keepdims=True)
            attn = (probs @ vals).transpose(1, 0, 2).reshape(t, nh * hd)
            x = x + attn @ L["wo"]

            h = self._rmsnorm(x, L["ffn_norm"])
            gate = h @ L["w_gate"]
            silu = gate / (1.0 + np.exp(-gate))
            x = x + (silu * (h @ L["w_up"])) @ L["w_down"]
        cache["len"] = end
        last = self._rmsnorm(x[-1], self.final_norm)
        return self.lm_head @ last


# --------------------------------------------------------------------------
# Tokenizer and chat template
# --------------------------------------------------------------------------

def build_tokenizer(md: dict):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    if md.get("tokenizer.ggml.model") != "gpt2":
        raise ValueError("expected a byte-level BPE ('gpt2') tokenizer")
    tokens: list[str] = md["tokenizer.ggml.tokens"]
    types: list[int] = md["tokenizer.ggml.token_type"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    merges = [tuple(m.split(" ", 1)) for m in md["tokenizer.ggml.merges"]]

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    # Control tokens (type 3) are matched whole in the input, as the chat template needs.
    specials = [AddedToken(t, special=True, normalized=False)
                for t, ty in zip(tokens, types) if ty == 3]
    tok.add_special_tokens(specials)
    for t in specials:  # they must keep their vocabulary ids
        assert tok.token_to_id(t.content) == vocab[t.content], t.content
    return tok


def render_chat(template: str, prompt: str) -> str:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(
        messages=[{"role": "user", "content": prompt}], add_generation_prompt=True)


# --------------------------------------------------------------------------
# Generation of the reference files
# --------------------------------------------------------------------------

def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_json(path: Path, value) -> None:
    # Matches the committed files: indent 1, raw UTF-8, no trailing newline.
    path.write_text(json.dumps(value, indent=1, ensure_ascii=False), encoding="utf-8")


def regenerate(gguf_path: Path, out: Path, log=print) -> None:
    t0 = time.perf_counter()
    gguf = GGUFReader(gguf_path)
    md = gguf.metadata
    tokenizer = build_tokenizer(md)
    template: str = md["tokenizer.chat_template"]
    eos = int(md["tokenizer.ggml.eos_token_id"])
    tokens: list[str] = md["tokenizer.ggml.tokens"]
    model = Llama(gguf)
    log(f"loaded {gguf_path.name} in {time.perf_counter() - t0:.1f}s")
    out.mkdir(parents=True, exist_ok=True)

    (out / "chat_template.jinja").write_text(template, encoding="utf-8")

    cases = []
    for text in TOKENIZER_TEXTS:
        enc = tokenizer.encode(text, add_special_tokens=False)
        cases.append({
            "text": text,
            "ids": enc.ids,
            "tokens": enc.tokens,
            "roundtrip": tokenizer.decode(enc.ids, skip_special_tokens=False) == text,
        })
    write_json(out / "tokenizer_cases.json", cases)

    results = []
    for n, prompt in enumerate(PROMPTS, start=1):
        t1 = time.perf_counter()
        prompt_ids = tokenizer.encode(render_chat(template, prompt), add_special_tokens=False).ids
        cache = model.new_cache(len(prompt_ids) + MAX_NEW_TOKENS)
        first = model.forward(prompt_ids, cache)
        first.astype("<f4").tofile(out / f"first_step_logits_prompt{n}.f32")
        # Stable sort so that equal logits keep ascending ids.
        top = [int(i) for i in np.argsort(-first, kind="stable")[:TOP_K]]

        greedy, logits = [], first
        while True:
            nxt = int(np.argmax(logits))
            greedy.append(nxt)
            if nxt == eos or len(greedy) == MAX_NEW_TOKENS:
                break
            logits = model.forward([nxt], cache)

        results.append({
            "prompt": prompt,
            "prompt_ids": prompt_ids,
            "top5_ids": top,
            "top5_logits": [float(first[i]) for i in top],
            "top5_tokens": [tokens[i] for i in top],
            "greedy_ids": greedy,
            "text": tokenizer.decode(greedy, skip_special_tokens=False),
        })
        log(f"prompt {n}: {len(prompt_ids)} prompt tokens, {len(greedy)} generated "
            f"in {time.perf_counter() - t1:.1f}s")
    write_json(out / "greedy_f32.json", results)


# --------------------------------------------------------------------------
# Comparison (--check)
# --------------------------------------------------------------------------

OUTPUT_FILES = [
    "greedy_f32.json",
    *(f"first_step_logits_prompt{n}.f32" for n in range(1, len(PROMPTS) + 1)),
    "tokenizer_cases.json",
    "chat_template.jinja",
]


def compare(new: Path, ref: Path, tol: float) -> list[str]:
    """Returns a list of mismatches between the regenerated files and `ref`; prints a summary."""
    problems: list[str] = []
    for name in OUTPUT_FILES:
        if not (ref / name).is_file():
            problems.append(f"{name}: missing from {ref}")
    if problems:
        return problems

    identical = [n for n in OUTPUT_FILES if (new / n).read_bytes() == (ref / n).read_bytes()]
    print(f"byte-identical: {len(identical)}/{len(OUTPUT_FILES)} "
          f"({', '.join(identical) if identical else 'none'})")

    if (new / "chat_template.jinja").read_bytes() != (ref / "chat_template.jinja").read_bytes():
        problems.append("chat_template.jinja differs")

    got = json.loads((new / "tokenizer_cases.json").read_text(encoding="utf-8"))
    want = json.loads((ref / "tokenizer_cases.json").read_text(encoding="utf-8"))
    if len(got) != len(want):
        problems.append(f"tokenizer_cases.json: {len(got)} cases, expected {len(want)}")
    for g, w in zip(got, want):
        if g != w:
            keys = [k for k in w if g.get(k) != w[k]]
            problems.append(f"tokenizer case {w['text']!r}: {', '.join(keys)} differ")
    print(f"tokenizer cases: {sum(g == w for g, w in zip(got, want))}/{len(want)} exact")

    got = json.loads((new / "greedy_f32.json").read_text(encoding="utf-8"))
    want = json.loads((ref / "greedy_f32.json").read_text(encoding="utf-8"))
    if len(got) != len(want):
        problems.append(f"greedy_f32.json: {len(got)} prompts, expected {len(want)}")
    for n, (g, w) in enumerate(zip(got, want), start=1):
        for key in ("prompt", "prompt_ids", "top5_ids", "top5_tokens", "greedy_ids", "text"):
            if g[key] != w[key]:
                problems.append(f"prompt {n}: {key} differs")
        top5 = max(abs(a - b) for a, b in zip(g["top5_logits"], w["top5_logits"]))
        if not top5 <= tol:
            problems.append(f"prompt {n}: top-5 logits differ by {top5:.3g} (> {tol:g})")

        a = np.fromfile(new / f"first_step_logits_prompt{n}.f32", dtype="<f4")
        b = np.fromfile(ref / f"first_step_logits_prompt{n}.f32", dtype="<f4")
        if a.shape != b.shape:
            problems.append(f"prompt {n}: first-step logits have {a.size} values, expected {b.size}")
            continue
        full = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
        if not full <= tol:
            problems.append(f"prompt {n}: first-step logits differ by {full:.3g} (> {tol:g})")
        same_ids = g["greedy_ids"] == w["greedy_ids"]
        print(f"prompt {n}: greedy ids {'match' if same_ids else 'DIFFER'} "
              f"({len(g['greedy_ids'])} vs {len(w['greedy_ids'])} tokens), "
              f"max |dlogit| top-5 {top5:.3g}, full {full:.3g}")
    return problems


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------

def main() -> int:
    home = Path(os.environ.get("CHARTER_HOME") or Path.home() / ".cache" / "charter")
    here = Path(__file__).resolve().parent
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gguf", type=Path, default=home / "models" / MODEL_FILE,
                    help="the GGUF file (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=here / "smollm2",
                    help="directory to write the reference files to (default: %(default)s)")
    ap.add_argument("--check", type=Path, metavar="DIR",
                    help="regenerate into a temporary directory and compare with DIR instead")
    ap.add_argument("--tolerance", type=float, default=1e-3,
                    help="max absolute logit difference accepted by --check (default: %(default)g)")
    ap.add_argument("--any-gguf", action="store_true",
                    help=f"accept a GGUF whose sha256 is not {MODEL_SHA256[:12]}...")
    args = ap.parse_args()

    if not args.gguf.is_file():
        print(f"error: {args.gguf} not found (scripts/setup downloads it)", file=sys.stderr)
        return 2
    digest = sha256_of(args.gguf)
    if digest != MODEL_SHA256:
        msg = f"{args.gguf}: sha256 {digest}, expected {MODEL_SHA256}"
        if not args.any_gguf:
            print(f"error: {msg} (pass --any-gguf to use it anyway)", file=sys.stderr)
            return 2
        print(f"warning: {msg}", file=sys.stderr)

    t0 = time.perf_counter()
    if args.check is None:
        regenerate(args.gguf, args.out)
        print(f"wrote {len(OUTPUT_FILES)} files to {args.out} in {time.perf_counter() - t0:.1f}s")
        return 0

    with tempfile.TemporaryDirectory(prefix="charter-reference-") as tmp:
        regenerate(args.gguf, Path(tmp))
        problems = compare(Path(tmp), args.check, args.tolerance)
    print(f"regenerated and compared in {time.perf_counter() - t0:.1f}s")
    if problems:
        print(f"MISMATCH against {args.check}:")
        for p in problems:
            print(f"  - {p}")
        return 1
    print(f"OK: matches {args.check}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
