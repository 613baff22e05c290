"""Local backend generation throughput against a naive one-prompt-at-a-time generate loop.

Usage: python benchmarks/bench_generation.py [--model smollm2-135m] [--prompts 32] [--max-tokens 32]
Prints generated tokens per second for both, and their ratio, measured in one run on the
same model, prompts and sampling settings (free sampling, no grammar)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from backends.base import ModelRef, Sampling  # noqa: E402
from backends.local import LocalBackend, chat_ids, load_tokenizer  # noqa: E402
from runner.numbers import make_prompts  # noqa: E402
from runner.spec import NumberPrompts  # noqa: E402


def count_tokens(tok, texts: list[str]) -> int:
    return sum(len(tok(t, add_special_tokens=False)["input_ids"]) + 1 for t in texts)  # +1: end of turn


def naive(backend: LocalBackend, ref: ModelRef, prompts: list[str], max_tokens: int) -> list[str]:
    tok, net = load_tokenizer(ref.base), backend._model(ref)
    out = []
    torch.manual_seed(0)
    for p in prompts:
        ids = torch.tensor([chat_ids(tok, ref.system, p)])
        gen = net.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                           do_sample=True, temperature=1.0, top_p=None, top_k=None, pad_token_id=tok.pad_token_id)
        out.append(tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--cpu-bf16", action="store_true")
    a = ap.parse_args()
    print(f"# {' '.join(sys.argv)}  (torch threads: {torch.get_num_threads()})")
    backend = LocalBackend("auto", a.cpu_bf16)
    ref = ModelRef(a.model)
    tok = load_tokenizer(a.model)
    prompts = make_prompts(a.prompts, NumberPrompts(), 0)
    backend.generate(ref, prompts[:2], Sampling(1.0, 4, seed=0))  # warm-up
    t = time.time()
    batched = backend.generate(ref, prompts, Sampling(1.0, a.max_tokens, seed=0))
    tb = time.time() - t
    t = time.time()
    loop = naive(backend, ref, prompts, a.max_tokens)
    tl = time.time() - t
    nb, nl = count_tokens(tok, batched), count_tokens(tok, loop)
    print(f"batched backend : {nb} tokens in {tb:.1f} s = {nb / tb:.1f} tokens/s")
    print(f"naive loop      : {nl} tokens in {tl:.1f} s = {nl / tl:.1f} tokens/s")
    print(f"ratio           : {(nb / tb) / (nl / tl):.2f}x (goal >= 3x)")


if __name__ == "__main__":
    main()
