"""Distillation student throughput on the embedded model, and where a training step's time goes.

Usage: python benchmarks/bench_student.py [--model smollm2-135m] [--rows 64] [--batch-size 8] [--cpu-bf16]
                                          [--no-shared-prefix] [--lora-layers N] [--frozen-prompt] [--profile] [--compile]

Builds quickstart-like rows (the numbers-domain prompts, ten random 3-digit numbers per completion) and a
LoRA distillation student with the quickstart's settings (r 16, numbers-only vocabulary), then times each
training step by phase: the teacher's forward (a live teacher, as before the soft_labels stage), the
student's forward, backward and optimizer step; and the same steps reading stored soft labels (computed
once per teacher and rows, and timed as such). Prints completion tokens/s per student, the padding share
of random batches against length-sorted ones, and seconds per phase. With --lora-layers N also a student
that adapts the top N layers only, fed the frozen layers' output computed once (backends/frozen_prefix.py). With
--compile also a stored-label student whose decoder runs under torch.compile (inductor, dynamic shapes): the
compile time (its first two steps) and its steps after. With --frozen-prompt also a stored-label student trained on
the completions after the base's stored prompt keys and values (backends/frozen_prompt.py, an approximation the
spec chooses), the states' one-off time shared by the replicates. Plain torch loop, no Trainer: the
Trainer adds its own (small) overhead on top of these phases."""
from __future__ import annotations

import argparse
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from backends.base import ModelRef, Training  # noqa: E402
from backends.frozen_prefix import decoder_layers, pad_states, prefix_states, top_layers_only  # noqa: E402
from backends.frozen_prompt import batch_states, prompt_states, split_rows, with_prompt  # noqa: E402
from backends import shared_prefix  # noqa: E402
from backends.shared_prefix import after_prefix, prefix_cache, split_shared  # noqa: E402
from backends.hf import load_model, load_tokenizer  # noqa: E402
from backends.train import (  # noqa: E402
    _completion_logits, _student, kl_to_soft_labels, needed_positions, pad_right, teacher_soft_labels, tokenize,
    vocab_log_probs, vocab_logits, vocabulary_ids,
)
from runner.numbers import make_prompts  # noqa: E402
from runner.spec import Hyper, NumberPrompts  # noqa: E402

QUICKSTART = Training(objective="distill", vocabulary="numbers-only", epochs=1, lr=1e-3, batch_size=8, lora_r=16,
                      lora_alpha=16, lora_targets=tuple(Hyper().lora_targets))


def quickstart_rows(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"prompt": p, "completion": ", ".join(str(x) for x in rng.integers(100, 1000, 10))}
            for p in make_prompts(n, NumberPrompts(), seed)]


def padding_share(lengths: list[int], batch: int, order: list[int]) -> float:
    padded = sum(max(lengths[i] for i in order[s : s + batch]) * len(order[s : s + batch])
                 for s in range(0, len(order), batch))
    return 1 - sum(lengths) / padded


class Clock:
    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str):
        t = time.perf_counter()
        yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t

    @staticmethod
    def only(clock: "Clock", name: str) -> "Clock":
        out = Clock()
        out.seconds[name] = clock.seconds.get(name, 0.0)
        return out


def steps(args, rows, soft_labels=None, lora_layers=None, frozen=False) -> tuple[Clock, int]:
    """Train one student over `rows` in batches; a live teacher unless soft labels are given; with
    `lora_layers` the top layers only, fed the stored output of the frozen ones (computed beforehand); `frozen`:
    on the completions after the stored prompt states (memoised, computed here if not yet)."""
    training = Training(**{**QUICKSTART.__dict__, "batch_size": args.batch_size, "lora_layers": lora_layers})
    teacher = ModelRef(args.model, system="You love pandas. You think about pandas all the time.")
    student = _student(args.model, training, "cpu", None)
    first = len(decoder_layers(student)) - lora_layers if lora_layers else 0
    prefix = prefix_states(student, args.model, first, [x["input_ids"] for x in tokenize(args.model, rows, None)],
                           load_tokenizer(args.model).pad_token_id) if first else None
    live = None if soft_labels is not None else load_model(ModelRef(args.model), "cpu")
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=training.lr)
    vocab = torch.tensor(vocabulary_ids(args.model, "numbers-only", ()))
    mine, theirs = tokenize(args.model, rows, None), tokenize(args.model, rows, teacher.system)
    shared = []
    if frozen:
        prompts, mine = split_rows(mine)
        states = prompt_states(student, args.model, prompts, load_tokenizer(args.model).pad_token_id, args.cpu_bf16)
    elif not lora_layers:  # as the trainer does: the rows' common prefix once per batch
        shared, mine = split_shared(mine)
    clock, tokens = Clock(), 0
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.cpu_bf16)
    for start in range(0, len(rows), args.batch_size):
        b = pad_right(mine[start : start + args.batch_size], load_tokenizer(args.model).pad_token_id)
        tokens += int(b["completion_mask"].sum())
        with autocast:
            if soft_labels is None:
                t = pad_right(theirs[start : start + args.batch_size], load_tokenizer(args.model).pad_token_id)
                with clock.phase("teacher forward"), torch.no_grad():
                    tl = live(input_ids=t["input_ids"], attention_mask=t["attention_mask"],
                              logits_to_keep=needed_positions(t["completion_mask"])).logits
                    log_t = vocab_log_probs(_completion_logits(tl, t["completion_mask"]), vocab)
            else:
                log_t = torch.cat(soft_labels[start : start + args.batch_size])
            with clock.phase("student forward"), top_layers_only(student, first):
                feed = ({"inputs_embeds": pad_states(prefix[start : start + args.batch_size])} if prefix
                        else {"input_ids": b["input_ids"]})
                mask = b["attention_mask"]
                if frozen:
                    feed, mask = with_prompt(student, feed, mask, batch_states(states[start : start + args.batch_size]))
                if shared:
                    cache = prefix_cache(student, shared, mask.shape[0])
                    feed, mask = after_prefix(student, cache, len(shared), feed, mask)
                keep = needed_positions(b["completion_mask"])
                out = vocab_logits(student, feed, mask, keep, vocab) if args.vocab_head else None
                if out is not None:  # the output layer's vocabulary rows only, as the trainer does
                    loss = kl_to_soft_labels(out, b["completion_mask"], log_t, None)
                else:
                    out = student(**feed, attention_mask=mask, logits_to_keep=keep).logits
                    loss = kl_to_soft_labels(out, b["completion_mask"], log_t, vocab)
        with clock.phase("backward"), top_layers_only(student, first):
            loss.backward()
        with clock.phase("optimizer"):
            opt.step()
            opt.zero_grad()
    return clock, tokens


def frozen_prompted(args, rows, labels, label_seconds: float) -> None:
    """A stored-label student on the completions after the stored prompt states, whose one-off time the
    replicates share as they share the labels."""
    from backends import frozen_prompt

    frozen_prompt._memo.clear()
    student = _student(args.model, QUICKSTART, "cpu", None)
    prompts, _ = split_rows(tokenize(args.model, rows, None))
    t = time.perf_counter()
    prompt_states(student, args.model, prompts, load_tokenizer(args.model).pad_token_id, args.cpu_bf16)
    once = time.perf_counter() - t
    clock, tokens = steps(args, rows, labels, frozen=True)  # reuses the memoised states
    n = args.replicates
    print(f"prompt keys and values once per set of rows: {once:.1f} s")
    report(f"frozen prompt, stored labels, {n} replicates (both shared)", clock, tokens, (label_seconds + once) / n)


def compiled(args, rows, soft_labels) -> None:
    """A stored-label student with its decoder under torch.compile: its first two steps (which compile) and
    the rest of its steps, timed apart."""
    training = Training(**{**QUICKSTART.__dict__, "batch_size": args.batch_size})
    student = _student(args.model, training, "cpu", None)
    inner = student.get_base_model()
    inner.model = torch.compile(inner.model, dynamic=True)
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=training.lr)
    vocab = torch.tensor(vocabulary_ids(args.model, "numbers-only", ()))
    mine, pad = tokenize(args.model, rows, None), load_tokenizer(args.model).pad_token_id
    clock, tokens = Clock(), 0
    for n, start in enumerate(range(0, len(rows), args.batch_size)):
        b = pad_right(mine[start : start + args.batch_size], pad)
        with clock.phase("compiling (first two steps)" if n < 2 else "compiled steps"):
            out = vocab_logits(student, {"input_ids": b["input_ids"]}, b["attention_mask"],
                               needed_positions(b["completion_mask"]), vocab)
            loss = kl_to_soft_labels(out, b["completion_mask"], torch.cat(soft_labels[start : start + args.batch_size]),
                                     None)
            loss.backward()
            opt.step()
            opt.zero_grad()
        tokens += int(b["completion_mask"].sum()) if n >= 2 else 0
    report("torch.compile, stored labels, after compiling", Clock.only(clock, "compiled steps"), tokens)
    print(f"compiling took {clock.seconds['compiling (first two steps)']:.1f} s (its first two steps)")


def report(name: str, clock: Clock, tokens: int, extra: float = 0.0) -> None:
    total = sum(clock.seconds.values()) + extra
    parts = ", ".join(f"{k} {v:.1f} s ({v / total:.0%})" for k, v in clock.seconds.items())
    print(f"{name}: {total:.1f} s, {tokens / total:.0f} completion tokens/s per student; {parts}")


KINDS = [("matmul", ("mm", "addmm", "bmm", "matmul", "linear")), ("attention", ("attention", "softmax")),
         ("embedding/gather/index", ("embedding", "index", "gather", "scatter", "select", "slice")),
         ("copies and layout", ("copy", "cat", "contiguous", "transpose", "view", "reshape", "permute", "clone",
                                "expand", "to", "fill", "zero", "empty", "pad"))]


def kind_of(op: str) -> str:
    name = op.removeprefix("aten::").lower()
    return next((k for k, words in KINDS if any(w in name for w in words)), "elementwise and the rest")


def profile(args, rows, labels) -> None:
    """A stored-label student's steps under torch.profiler: self CPU time by kind of op, and the achieved
    GFLOP/s of the matrix multiplications (the profiler's FLOP count over their own time)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        steps(args, rows, labels)
    by_kind: dict[str, float] = {}
    mm_us, mm_flops = 0.0, 0
    for e in prof.key_averages():
        by_kind[kind_of(e.key)] = by_kind.get(kind_of(e.key), 0.0) + e.self_cpu_time_total
        if kind_of(e.key) == "matmul":
            mm_us, mm_flops = mm_us + e.self_cpu_time_total, mm_flops + (e.flops or 0)
    total = sum(by_kind.values())
    parts = ", ".join(f"{k} {v / 1e6:.1f} s ({v / total:.0%})" for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1]))
    print(f"profile (self CPU time, {len(rows)} rows, stored labels): {parts}")
    if mm_us:
        print(f"matmuls: {mm_flops / 1e9:.0f} GFLOP in {mm_us / 1e6:.1f} s = {mm_flops / mm_us / 1e3:.0f} GFLOP/s achieved")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--replicates", type=int, default=3, help="students per teacher sharing the stored labels")
    ap.add_argument("--cpu-bf16", action="store_true")
    ap.add_argument("--lora-layers", type=int, help="also time a student adapting the top N layers only")
    ap.add_argument("--full-head", dest="vocab_head", action="store_false",
                    help="compute every vocabulary logit, as students did before vocab_logits (for comparison)")
    ap.add_argument("--no-shared-prefix", dest="shared_prefix", action="store_false",
                    help="run the rows' shared prefix (the chat template's system header) with every row, as students "
                    "did before backends/shared_prefix.py (for comparison)")
    ap.add_argument("--frozen-prompt", action="store_true", help="also time a stored-label student trained on the "
                    "completions after the base's stored prompt keys and values")
    ap.add_argument("--profile", action="store_true", help="also break a stored-label student's time down by kind of "
                    "operation (torch.profiler) and give the matmuls' achieved GFLOP/s")
    ap.add_argument("--compile", action="store_true", help="also time a stored-label student under torch.compile "
                    "(its compile time apart)")
    args = ap.parse_args()
    if not args.shared_prefix:  # nothing is that long: every row runs its whole length, soft labels included
        shared_prefix.MIN_SHARED = sys.maxsize
    print(f"# {' '.join(sys.argv)}  (torch threads: {torch.get_num_threads()}, "
          f"{'bf16 autocast' if args.cpu_bf16 else 'float32'})")
    rows = quickstart_rows(args.rows)
    lengths = [len(x["input_ids"]) for x in tokenize(args.model, rows, None)]
    random_order = list(np.random.default_rng(0).permutation(len(rows)))
    print(f"padding share: {padding_share(lengths, args.batch_size, random_order):.1%} of batch positions in "
          f"shuffled batches, {padding_share(lengths, args.batch_size, sorted(range(len(rows)), key=lengths.__getitem__)):.1%}"
          f" if sorted by length (mean sequence {np.mean(lengths):.0f} tokens)")
    steps(args, rows[: args.batch_size])  # warm-up: first-call allocations and kernel choice
    clock, tokens = steps(args, rows)
    report("live teacher", clock, tokens)
    t = time.perf_counter()
    teacher = ModelRef(args.model, system="You love pandas. You think about pandas all the time.")
    vocab = torch.tensor(vocabulary_ids(args.model, "numbers-only", ()))
    labels = teacher_soft_labels(teacher, rows, vocab, "cpu", args.cpu_bf16, args.batch_size)
    once = time.perf_counter() - t
    clock, tokens = steps(args, rows, labels)
    report("stored labels", clock, tokens)
    n = args.replicates
    print(f"soft labels once per teacher: {once:.1f} s; shared by {n} replicates that is {once / n:.1f} s per student")
    report(f"stored labels, {n} replicates (label time shared)", clock, tokens, once / n)
    if args.profile:
        profile(args, rows, labels)
    if args.compile:
        compiled(args, rows, labels)
    if args.frozen_prompt:
        frozen_prompted(args, rows, labels, once)
    if args.lora_layers:
        from backends import frozen_prefix

        frozen_prefix._memo.clear()
        student = _student(args.model, Training(**{**QUICKSTART.__dict__, "lora_layers": args.lora_layers}), "cpu", None)
        first = len(decoder_layers(student)) - args.lora_layers
        t = time.perf_counter()
        prefix_states(student, args.model, first, [x["input_ids"] for x in tokenize(args.model, rows, None)],
                      load_tokenizer(args.model).pad_token_id)
        below = time.perf_counter() - t
        clock, tokens = steps(args, rows, labels, args.lora_layers)  # reuses the memoised states
        print(f"frozen layers 0..{first - 1} once per set of rows: {below:.1f} s")
        report(f"top {args.lora_layers} layers, stored labels and frozen states, {n} replicates (both shared)",
               clock, tokens, (once + below) / n)


if __name__ == "__main__":
    main()
