"""The peer for `benches/generate.rs`: llama-cpp-python on the same GGUF.

Runs the same rendered prompts (token ids written by
`cargo bench --bench generate -- --dump-prompts FILE`) one stream at a time,
as llama-cpp-python's users run it: greedy, a fixed number of new tokens per
prompt (end-of-turn tokens do not stop it, matching the charter side), and
reports prefill tokens/s, decode tokens/s (tokens after the first over the
time after the first) and end-to-end tokens/s (every generated token over
the whole time, prefill included).

Usage: peer_llama_cpp.py GGUF PROMPTS_JSON [--max-new N] [--threads N] [--prompts N]
"""

import argparse
import json
import time

import llama_cpp


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("gguf")
    ap.add_argument("prompts")
    ap.add_argument("--max-new", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--prompts", dest="limit", type=int, default=0)
    args = ap.parse_args()

    with open(args.prompts) as f:
        prompts = json.load(f)
    if args.limit:
        prompts = prompts[: args.limit]
    llm = llama_cpp.Llama(
        model_path=args.gguf,
        n_ctx=2048,
        n_batch=512,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        verbose=False,
    )
    # Warm up once so one-time allocation does not count.
    for _ in zip(range(2), llm.generate(prompts[0], temp=0.0)):
        pass

    prefill_tokens = prefill_secs = decode_tokens = decode_secs = 0.0
    for tokens in prompts:
        llm.reset()
        start = time.perf_counter()
        first = None
        n = 0
        for _ in llm.generate(tokens, temp=0.0, top_k=1, reset=True):
            n += 1
            if first is None:
                first = time.perf_counter()
            if n == args.max_new:
                break
        end = time.perf_counter()
        prefill_tokens += len(tokens)
        prefill_secs += first - start
        decode_tokens += n - 1
        decode_secs += end - first
    generated = decode_tokens + len(prompts)
    print(
        f"| llama-cpp-python {llama_cpp.__version__} (Q4_1 GGUF) | 1 | "
        f"{prefill_tokens / prefill_secs:.0f} | {decode_tokens / decode_secs:.1f} | "
        f"{generated / (prefill_secs + decode_secs):.1f} |"
    )


if __name__ == "__main__":
    main()
