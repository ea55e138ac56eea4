"""The strongest local peer for `benches/generate.rs`: llama.cpp's own batched
decoding (as its server and `batched` example run it), through
llama-cpp-python's low-level API on the same GGUF.

Each of `--slots` sequences gets a sequence id; one `llama_decode` call per
step carries every busy slot's next token and, for a slot that has just
been given a prompt, that prompt's tokens (logits only at its last one),
so joining prompts are prefilled while the others decode. A slot whose
answer reaches `--max-new` tokens (greedy; end-of-turn does not stop it,
matching the charter side) is cleared and refilled from the queue.
Reports end-to-end tokens/s: every generated token over the wall time.

Usage: peer_llama_cpp_batched.py GGUF PROMPTS_JSON [--max-new N]
       [--threads N] [--slots 8,16,32,64] [--prompts N]
"""

import argparse
import json
import time

import llama_cpp as L
import numpy as np


def first(*names):
    """The first of `names` this llama-cpp-python has (the API was renamed over time)."""
    for n in names:
        f = getattr(L, n, None)
        if f is not None:
            return f
    raise AttributeError(f"llama_cpp has none of {names}")


def run(model, vocab_size, prompts, slots, max_new, threads):
    longest = max(len(p) for p in prompts)
    params = L.llama_context_default_params()
    params.n_ctx = slots * (longest + max_new + 1)
    params.n_batch = slots * (longest + 1)  # every slot may take a whole prompt in one step
    params.n_ubatch = params.n_batch
    params.n_seq_max = slots
    params.n_threads = threads
    params.n_threads_batch = threads
    ctx = first("llama_init_from_model", "llama_new_context_with_model")(model, params)
    clear = first("llama_memory_seq_rm", "llama_kv_self_seq_rm", "llama_kv_cache_seq_rm")
    memory = L.llama_get_memory(ctx) if hasattr(L, "llama_get_memory") else ctx
    batch = L.llama_batch_init(params.n_batch, 0, 1)

    queue = list(range(len(prompts)))
    # Per slot: [prompt index, position, tokens generated, next token or None]
    busy = {}
    generated = 0
    start = time.perf_counter()
    while queue or busy:
        n = 0
        rows = []  # (slot, index in the batch) of entries with logits

        def add(token, pos, slot, logits):
            nonlocal n
            batch.token[n] = token
            batch.pos[n] = pos
            batch.n_seq_id[n] = 1
            batch.seq_id[n][0] = slot
            batch.logits[n] = logits
            if logits:
                rows.append((slot, n))
            n += 1

        for slot in range(slots):
            if slot not in busy and queue:
                i = queue.pop(0)
                p = prompts[i]
                for k, t in enumerate(p):
                    add(t, k, slot, k == len(p) - 1)
                busy[slot] = [i, len(p), 0, None]
            elif slot in busy and busy[slot][3] is not None:
                state = busy[slot]
                add(state[3], state[1], slot, True)
                state[1] += 1
        batch.n_tokens = n
        if L.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")
        for slot, at in rows:
            logits = np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, at), shape=(vocab_size,))
            state = busy[slot]
            state[2] += 1
            generated += 1
            if state[2] == max_new:
                clear(memory, slot, -1, -1)
                del busy[slot]
            else:
                state[3] = int(np.argmax(logits))
    seconds = time.perf_counter() - start
    L.llama_batch_free(batch)
    L.llama_free(ctx)
    return generated, seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("gguf")
    ap.add_argument("prompts")
    ap.add_argument("--max-new", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--slots", default="8,16,32,64")
    ap.add_argument("--prompts", dest="limit", type=int, default=0)
    args = ap.parse_args()

    with open(args.prompts) as f:
        prompts = json.load(f)
    if args.limit:
        prompts = prompts[: args.limit]
    L.llama_backend_init()
    model = first("llama_model_load_from_file", "llama_load_model_from_file")(
        args.gguf.encode(), L.llama_model_default_params()
    )
    vocab_size = L.llama_vocab_n_tokens(L.llama_model_get_vocab(model))
    run(model, vocab_size, prompts[:2], 2, 2, args.threads)  # warm-up
    for slots in [int(s) for s in args.slots.split(",")]:
        generated, seconds = run(model, vocab_size, prompts, slots, args.max_new, args.threads)
        print(
            f"| llama.cpp batched (llama-cpp-python {L.__version__}, Q4_1 GGUF) | {slots} slots | "
            f"{args.threads} | {generated / seconds:.1f} |"
        )
    L.llama_model_free(model) if hasattr(L, "llama_model_free") else L.llama_free_model(model)


if __name__ == "__main__":
    main()
