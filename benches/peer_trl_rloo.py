"""The peer of `charter train rl`: TRL's RLOOTrainer on CPU, on the same
model directory, prompts, shapes and reward.

Shapes as charter's defaults: each iteration samples 4 answers to each of
8 prompts (temperature 1, at most 64 new tokens), then takes 8 optimizer
steps of 4 answers (clip 0.2, KL weight 0.05 against the starting model,
AdamW at 1e-5). The reward is the rule `contains:TEXT` (1 when the answer
contains TEXT), so both sides spend their time on sampling and updates,
not on a reward model.

Prints one JSON line: seconds per iteration (every iteration after the
first, which also loads and warms up), answer tokens sampled, mean reward.

Run: python benches/peer_trl_rloo.py --model DIR --prompts PROMPTS.parquet
     [--iterations 3] [--contains the] [--threads 2]
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch
from datasets import Dataset
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import RLOOConfig, RLOOTrainer

PROMPTS, SAMPLES, STEPS, BATCH = 8, 4, 8, 4


class Clock(TrainerCallback):
    """Wall time at the end of every optimizer step."""

    def __init__(self):
        self.ends = []

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--contains", default="the")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    d = Path(a.model)

    config = AutoConfig.from_pretrained(d)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(load_file(d / "model.safetensors"), strict=False)
    missing = [m for m in missing if m != "lm_head.weight"]
    assert not missing and not unexpected, (missing, unexpected)
    if config.tie_word_embeddings:
        model.tie_weights()
    tokenizer = AutoTokenizer.from_pretrained(d)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    texts = pq.read_table(a.prompts, columns=["text"]).column("text").to_pylist()
    texts = texts[: PROMPTS * a.iterations]
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": t}]} for t in texts])

    rewards = []

    def contains(completions, **kwargs):
        out = [float(a.contains in c[0]["content"]) for c in completions]
        rewards.extend(out)
        return out

    clock = Clock()
    with tempfile.TemporaryDirectory() as out:
        # TRL loads its reference model from the policy's directory: write
        # the weights in transformers' own layout first.
        hf = Path(out) / "model"
        model.save_pretrained(hf)
        tokenizer.save_pretrained(hf)
        args = RLOOConfig(
            output_dir=out,
            use_cpu=True,
            bf16=False,
            seed=0,
            learning_rate=1e-5,
            lr_scheduler_type="cosine",
            per_device_train_batch_size=BATCH,
            gradient_accumulation_steps=1,
            steps_per_generation=STEPS,
            num_generations=SAMPLES,
            max_completion_length=64,
            temperature=1.0,
            top_p=1.0,
            beta=0.05,
            epsilon=0.2,
            num_iterations=1,
            max_steps=STEPS * a.iterations,
            logging_steps=STEPS,
            save_strategy="no",
            report_to=[],
            shuffle_dataset=False,
        )
        trainer = RLOOTrainer(
            model=str(hf),
            reward_funcs=contains,
            args=args,
            train_dataset=data,
            processing_class=tokenizer,
            callbacks=[clock],
        )
        started = time.perf_counter()
        trainer.train()
    ends = [started] + clock.ends
    per_iteration = [ends[(i + 1) * STEPS] - ends[i * STEPS] for i in range(a.iterations)]
    print(
        json.dumps(
            {
                "peer": f"trl {__import__('trl').__version__} RLOOTrainer, torch {torch.__version__}",
                "threads": a.threads,
                "iterations": a.iterations,
                "iteration_s": per_iteration,
                "steady_iteration_s": sum(per_iteration[1:]) / max(1, len(per_iteration) - 1),
                "mean_reward": sum(rewards) / max(1, len(rewards)),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
