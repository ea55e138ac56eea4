"""The peer of `cargo bench -p charter-train --bench train_step`: the same SFT
and DPO training steps in PyTorch on CPU, through HuggingFace transformers'
llama implementation, on the same model directory, shapes and token ids.

SFT step: forward, cross-entropy on the answer tokens (the last three
quarters of each row), backward, AdamW. DPO step: forward of every A and
every B, summed answer log-probabilities, soft-label logistic loss against
zero reference log-probs with beta 0.1 and p_a 0.75, backward, AdamW.

Prints one JSON line per objective, as the Rust benchmark does.

Run: python benches/peer_torch_train.py --model DIR [--objective sft,dpo]
     [--batch 8] [--seq 256] [--steps 3] [--warmup 1] [--threads 2]
"""

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM


def rows(count, seq, vocab):
    ids = [[(r * 7919 + j * 104729) % vocab for j in range(seq)] for r in range(count)]
    return torch.tensor(ids, dtype=torch.long)


def answer_logps(model, ids, prompt_len):
    logits = model(input_ids=ids).logits[:, :-1, :]
    logp = torch.log_softmax(logits.float(), dim=-1)
    picked = logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return picked[:, prompt_len - 1 :]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--objective", default="sft,dpo")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    d = Path(a.model)
    for objective in a.objective.split(","):
        config = AutoConfig.from_pretrained(d)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        missing, unexpected = model.load_state_dict(load_file(d / "model.safetensors"), strict=False)
        missing = [m for m in missing if m != "lm_head.weight"]
        assert not missing and not unexpected, (missing, unexpected)
        if config.tie_word_embeddings:
            model.tie_weights()
        model.train()
        params = sum(p.numel() for p in model.parameters())
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0)
        prompt_len = a.seq // 4
        sides = 2 if objective == "dpo" else 1
        ids = rows(a.batch * sides, a.seq, config.vocab_size)
        if objective == "dpo":
            ids = torch.cat([ids[0::2], ids[1::2]])
        seconds, losses = [], []
        for step in range(a.warmup + a.steps):
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            logp = answer_logps(model, ids, prompt_len)
            if objective == "sft":
                loss = -logp.sum() / logp.numel()
            else:
                per_row = logp.sum(-1)
                z = 0.1 * (per_row[: a.batch] - per_row[a.batch :])
                p = 0.75
                loss = -(p * F.logsigmoid(z) + (1 - p) * F.logsigmoid(-z)).mean()
            assert torch.isfinite(loss), loss
            losses.append(loss.item())
            loss.backward()
            opt.step()
            if step >= a.warmup:
                seconds.append(time.perf_counter() - t0)
        tokens = a.batch * sides * a.seq
        mean = sum(seconds) / len(seconds)
        print(
            json.dumps(
                {
                    "peer": f"pytorch {torch.__version__} (transformers, {model.config._attn_implementation} attention)",
                    "objective": objective,
                    "batch": a.batch,
                    "seq": a.seq,
                    "params": params,
                    "losses": losses,
                    "step_seconds": seconds,
                    "tokens_per_s": [tokens / s for s in seconds],
                    "mean_tokens_per_s": tokens / mean,
                    "model_gflop_per_s": 6.0 * params * tokens / mean / 1e9,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
