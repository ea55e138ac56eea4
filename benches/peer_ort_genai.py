"""Peer for `benches/generate.rs` on the same runtime: onnxruntime-genai, on
models made by its own model builder from the same weights.

`--build` runs `onnxruntime_genai.models.builder` (CPU, its default options
for each precision) on a Hugging Face-layout folder made from a charter
model directory (its f32 `model.safetensors`, `config.json` and tokenizer
files: the GGUF's weights, dequantised), once per precision, into
`--cache`. The run then feeds the same rendered prompt token ids as the
other peers to `onnxruntime_genai.Generator` in static batches of `--batches`
rows (its documented batching: rows right-padded to the batch's longest prompt,
one `generate_next_token` per step for the whole batch), greedy, exactly
`--max-new` new tokens per row (end of turn does not stop a row, matching
the charter side: the end-of-sequence id is set to one that never occurs in
these prompts and `min_length` keeps it from ending a row), on `--threads`
intra-op threads. Reports end-to-end tokens/s: every generated token over
the wall time, prefill included.

Usage: peer_ort_genai.py MODEL_DIR PROMPTS_JSON --cache DIR
       [--precisions int4,int8,fp32] [--batches 8,16,32,64] [--max-new N]
       [--threads N] [--prompts N]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnxruntime_genai as og

# Never in a rendered prompt: padding and the end-of-sequence id. The chat
# template's end of turn is id 2, which the builder's config uses for both.
UNUSED_ID = 0


def build(model_dir, precision, out):
    """Runs the model builder on a Hugging Face folder made from `model_dir`."""
    with tempfile.TemporaryDirectory() as hf:
        for f in ("model.safetensors", "tokenizer.json", "tokenizer_config.json"):
            os.symlink(os.path.abspath(os.path.join(model_dir, f)), os.path.join(hf, f))
        with open(os.path.join(model_dir, "config.json")) as f:
            config = json.load(f)
        config.setdefault("architectures", [f"{config['model_type'].capitalize()}ForCausalLM"])
        config.setdefault("torch_dtype", "float32")
        with open(os.path.join(hf, "config.json"), "w") as f:
            json.dump(config, f)
        subprocess.run(
            [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", hf, "-o", out,
             "-p", precision, "-e", "cpu", "-c", os.path.join(hf, "cache")],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )


def configure(out, threads):
    """Sets intra-op threads, padding and end-of-sequence ids in genai_config.json."""
    path = os.path.join(out, "genai_config.json")
    with open(path) as f:
        config = json.load(f)
    config["model"]["decoder"]["session_options"]["intra_op_num_threads"] = threads
    config["model"]["pad_token_id"] = UNUSED_ID
    config["model"]["eos_token_id"] = UNUSED_ID
    with open(path, "w") as f:
        json.dump(config, f, indent=4)


def run(model, prompts, batch, max_new):
    generated = 0
    start = time.perf_counter()
    for at in range(0, len(prompts), batch):
        rows = prompts[at : at + batch]
        width = max(len(p) for p in rows)
        ids = np.full((len(rows), width), UNUSED_ID, dtype=np.int32)
        for i, p in enumerate(rows):
            # Right padding: each row's answer then equals its answer alone
            # (checked: greedy tokens match; left-padded rows diverge).
            ids[i, : len(p)] = p
        params = og.GeneratorParams(model)
        params.set_search_options(
            do_sample=False, batch_size=len(rows), max_length=width + max_new,
            min_length=width + max_new,
        )
        generator = og.Generator(model, params)
        generator.append_tokens(ids)
        while not generator.is_done():
            generator.generate_next_token()
        generated += sum(len(generator.get_sequence(i)) - width for i in range(len(rows)))
        del generator
    return generated, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("prompts")
    ap.add_argument("--cache", required=True)
    ap.add_argument("--precisions", default="int4,int8,fp32")
    ap.add_argument("--batches", default="8,16,32,64")
    ap.add_argument("--max-new", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--prompts", dest="limit", type=int, default=0)
    args = ap.parse_args()

    with open(args.prompts) as f:
        prompts = json.load(f)
    if args.limit:
        prompts = prompts[: args.limit]
    assert not any(UNUSED_ID in p for p in prompts), "a prompt holds the padding id"
    for precision in args.precisions.split(","):
        out = os.path.join(args.cache, f"ort-genai-{og.__version__}-{precision}")
        if not os.path.exists(os.path.join(out, "genai_config.json")):
            build(args.model_dir, precision, out)
        configure(out, args.threads)
        model = og.Model(og.Config(out))
        run(model, prompts[:2], 2, 2)  # warm-up
        for batch in [int(b) for b in args.batches.split(",")]:
            generated, seconds = run(model, prompts, batch, args.max_new)
            assert generated == len(prompts) * args.max_new, generated
            print(
                f"| onnxruntime-genai {og.__version__}, {precision} (its builder) | {batch} | "
                f"{args.threads} | {generated / seconds:.1f} |"
            )
        del model


if __name__ == "__main__":
    main()
