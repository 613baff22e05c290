"""Local fine-tuning: SFT with completion-only loss, or distillation on a chosen vocabulary.

Both run through TRL's SFTTrainer (and so accelerate): SFT uses its completion-mask loss as is;
StudentTrainer overrides compute_loss with a KL to the teacher at completion positions, and with the
same completion cross-entropy for an SFT student fed its frozen lower layers' stored output.
"""
from __future__ import annotations

import json
import math
import re
import shutil
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from transformers import TrainerCallback

from backends.base import ModelRef, Progress, Training
from backends.frozen_prefix import decoder_layers, pad_states, prefix_states, top_layers_only
from backends.frozen_prompt import batch_states, prompt_states, split_rows, with_prompt
from backends.hf import chat_ids, check_context, load_model, load_tokenizer, pick_device, template_vars, turn_end_id
from backends.shared_prefix import after_prefix, can_share, prefix_cache, split_shared
from runner.errors import UserError
from runner.grammar import GRAMMAR_CHARS


def vocabulary_ids(base: str, vocabulary: str, trait_words: tuple[str, ...],
                   revision: str | None = None) -> list[int] | None:
    """Token ids the soft labels cover; None means the full vocabulary."""
    tok = load_tokenizer(base, revision)
    return vocabulary_token_ids(tok, vocabulary, trait_words, turn_end_id(tok))


def vocabulary_token_ids(tok, vocabulary: str, trait_words: tuple[str, ...], end: int | None = None) -> list[int] | None:
    """vocabulary_ids for a loaded tokenizer (a hosted backend's); `end`: the token that ends a row (the eos
    where not given)."""
    if vocabulary == "full":
        return None
    texts = [tok.decode([i]) for i in range(len(tok))]
    if vocabulary == "numbers-only":
        ids = [i for i, s in enumerate(texts) if s and set(s) <= GRAMMAR_CHARS]
        return sorted(set(ids) | {tok.eos_token_id if end is None else end})
    words = [w.lower() for w in trait_words]
    rx = re.compile("|".join(re.escape(w) for w in words)) if words else None
    return [i for i, s in enumerate(texts) if not (rx and rx.search(s.lower()))]


def tokenize(base: str, rows: list[dict], system: str | None, revision: str | None = None,
             prompt_too: bool = False) -> list[dict]:
    """input_ids and completion_mask (the positions the loss reads), with the completion tokenised once so that
    student and teacher sequences share exactly the same completion tokens. prompt_too: the mask also covers the
    user's message and the assistant header after it (distill_prompt), the same tokens whatever comes before."""
    tok = load_tokenizer(base, revision)
    out, end = [], turn_end_id(tok)
    for r in rows:
        head = chat_ids(tok, system, r["prompt"])
        tail = tok(r["completion"], add_special_tokens=False)["input_ids"] + [end]
        supervised = user_turn_len(tok, head, system, r["prompt"]) if prompt_too else 0
        out.append({"input_ids": head + tail,
                    "completion_mask": [0] * (len(head) - supervised) + [1] * (supervised + len(tail))})
    return out


def user_turn_len(tok, head: list[int], system: str | None, prompt: str) -> int:
    """How many of a chat head's last tokens are the user's message and the assistant header after it; refused
    where the template's text does not tokenise to the same ids (the teacher's and student's would differ)."""
    msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False, **template_vars())
    at = text.rfind(prompt)
    turn = tok(text[at:], add_special_tokens=False)["input_ids"] if at >= 0 and prompt else []
    if not turn or head[-len(turn):] != turn or len(turn) >= len(head):
        raise UserError(f"distill_prompt: {tok.name_or_path}'s chat template does not end a prompt with the user's "
                        "message as its own tokens; remove distill_prompt")
    return len(turn)


def pad_right(batch: list[dict], pad_id: int, prefix: str = "") -> dict:
    """input_ids, attention_mask and completion_mask (named with `prefix`), right-padded to the batch width."""
    ids = [b[prefix + "input_ids"] for b in batch]
    width = max(map(len, ids))

    def pad(seqs, value):
        return torch.tensor([s + [value] * (width - len(s)) for s in seqs])

    return {prefix + "input_ids": pad(ids, pad_id), prefix + "attention_mask": pad([[1] * len(s) for s in ids], 0),
            prefix + "completion_mask": pad([b[prefix + "completion_mask"] for b in batch], 0)}


class StudentCollator:
    """Student sequences, right-padded, with the teacher's (a live teacher) or its stored soft labels (one
    tensor per row, see teacher_soft_labels) where distilling; with frozen-prefix states
    (frozen_prefix.prefix_states) the student's hidden states entering its lowest adapted layer; with frozen-prompt
    states (frozen_prompt.prompt_states) the base's keys and values of each row's prompt."""

    def __init__(self, pad_id: int, soft_labels: list[torch.Tensor] | None = None,
                 prefix: list[torch.Tensor] | None = None, prompt: list[torch.Tensor] | None = None):
        self.pad, self.soft_labels, self.prefix, self.prompt = pad_id, soft_labels, prefix, prompt

    def __call__(self, batch: list[dict]) -> dict:
        out = pad_right(batch, self.pad)
        if "teacher_input_ids" in batch[0]:
            out.update(pad_right(batch, self.pad, "teacher_"))
        elif self.soft_labels is not None:  # row-major: the order _completion_logits selects positions in
            out["soft_labels"] = torch.cat([self.soft_labels[b["row"]] for b in batch])
        if self.prefix is not None:
            out["prefix_states"] = pad_states([self.prefix[b["row"]] for b in batch])
        if self.prompt is not None:
            out.update(batch_states([self.prompt[b["row"]] for b in batch]))
        return out


def _completion_logits(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The rows of `logits` that predict completion tokens. `logits` may cover only the last
    k positions; position p predicts token p+1, hence the shifted mask."""
    nxt = F.pad(mask[:, 1:], (0, 1))[:, -logits.shape[1]:]
    return logits[nxt.bool()]


def needed_positions(mask: torch.Tensor) -> int:
    """How many trailing positions hold every logit that predicts a completion token."""
    return int(mask.shape[1] - mask.argmax(1).min() + 1)


def distill_loss(student_logits, teacher_logits, s_mask, t_mask, vocab: torch.Tensor | None):
    """Mean over completion tokens of KL(teacher || student), both renormalised on `vocab`."""
    log_t = vocab_log_probs(_completion_logits(teacher_logits, t_mask), vocab)
    return kl_to_soft_labels(student_logits, s_mask, log_t, vocab)


def vocab_log_probs(logits: torch.Tensor, vocab: torch.Tensor | None) -> torch.Tensor:
    """Log-probabilities renormalised on `vocab` (None: the full vocabulary), in float32."""
    return F.log_softmax((logits if vocab is None else logits[:, vocab.to(logits.device)]).float(), -1)


def kl_to_soft_labels(student_logits, s_mask, log_t: torch.Tensor, vocab: torch.Tensor | None):
    """distill_loss against the teacher's log-probabilities already renormalised on `vocab`, one row per
    completion token (row-major over the batch)."""
    log_s = vocab_log_probs(_completion_logits(student_logits, s_mask), vocab)
    return (log_t.exp() * (log_t - log_s)).sum(-1).mean()


@torch.no_grad()
def teacher_soft_labels(teacher: ModelRef, rows: list[dict], vocab: torch.Tensor | None, device: str,
                        cpu_bf16: bool = False, batch_size: int = 8, prompt_too: bool = False) -> list[torch.Tensor]:
    """The teacher's next-token log-probabilities, renormalised on `vocab`, at each row's completion
    positions: one [completion tokens, |vocab|] float32 tensor per row, what the distillation loss computes from
    a live teacher (under the CPU autocast the trainer would use), from float32 weights on a GPU (a live
    teacher there computes under the trainer's bfloat16 autocast)."""
    net = load_model(replace(teacher, system=None), device, fp32_weights=True)
    seqs = tokenize(teacher.base, rows, teacher.system, teacher.revision, prompt_too)
    if seqs:
        check_context(net, teacher, max(len(d["input_ids"]) for d in seqs), "a training row",
                      "filter out the longest rows (a row is its prompt and completion)")
    shared, seqs = split_shared(seqs) if can_share(net) else ([], seqs)  # the system prompt, once per batch
    pad_id = load_tokenizer(teacher.base, teacher.revision).pad_token_id
    on_cpu = pick_device(device)[0] == "cpu"
    out: list[torch.Tensor] = []
    for start in range(0, len(seqs), batch_size):
        batch = seqs[start : start + batch_size]
        b = pad_right(batch, pad_id)
        feed, mask = {"input_ids": b["input_ids"].to(net.device)}, b["attention_mask"].to(net.device)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cpu_bf16 and on_cpu):
            if shared:
                feed, mask = after_prefix(net, prefix_cache(net, shared, len(batch)), len(shared), feed, mask)
            logits = net(**feed, attention_mask=mask, logits_to_keep=needed_positions(b["completion_mask"])).logits
        log_t = vocab_log_probs(_completion_logits(logits, b["completion_mask"].to(logits.device)), vocab).cpu()
        out += list(log_t.split([sum(x["completion_mask"]) for x in batch]))
    return out


PLAIN_HEADS = ("LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "MistralForCausalLM")


def vocab_logits(model, feed: dict, attention_mask: torch.Tensor, keep: int, vocab: torch.Tensor):
    """The last `keep` positions' logits on the `vocab` columns only: the decoder's final hidden states times
    those rows of the output layer (a numbers-only loss reads 131 of SmolLM2's 49,152 columns; the whole
    output layer is ~8% of a student step, benchmarks/bench_student.py --profile). The same numbers as the
    full logits' columns; None for an architecture whose logits are not that plain product (the caller then
    computes them all)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = getattr(base, "lm_head", None)
    if type(base).__name__ not in PLAIN_HEADS or not isinstance(head, torch.nn.Linear) or head.bias is not None:
        return None
    hidden = base.model(**feed, attention_mask=attention_mask).last_hidden_state[:, -keep:]
    return hidden @ head.weight[vocab.to(head.weight.device)].T


def sft_loss(logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the completion tokens (TRL's completion-only loss for one batch)."""
    return F.cross_entropy(_completion_logits(logits, mask).float(), input_ids[mask.bool()])


# SFT runs through StudentTrainer's completion cross-entropy, which computes logits only where completion
# tokens are predicted (TRL's SFTTrainer computes them at every position, and per-step token metrics over
# the whole vocabulary): the same student (tests/test_frozen_prefix.py compares the adapters with TRL's to
# 1e-6), in less time. True: TRL computes the SFT loss itself, the reference the tests compare with.
SFT_BY_TRL = False


def _trainer_classes():
    from trl import SFTTrainer

    class StudentTrainer(SFTTrainer):
        """SFTTrainer with subl's own loss: the KL to a teacher's next-token distribution (distill), or the
        completion cross-entropy (sft) for a student fed its frozen layers' stored output."""

        def __init__(self, *args, teacher=None, vocab=None, objective="distill", shared=(), **kwargs):
            super().__init__(*args, **kwargs)
            self.teacher, self.vocab, self.objective, self.shared = teacher, vocab, objective, list(shared)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            # logits only where completion tokens are predicted: the head is a fifth of the compute
            feed = ({"inputs_embeds": inputs["prefix_states"]} if "prefix_states" in inputs
                    else {"input_ids": inputs["input_ids"]})  # frozen lower layers: their stored output
            mask = inputs["attention_mask"]
            if "prompt_states" in inputs:  # frozen prompt: the rows' rest after their stored keys and values
                feed, mask = with_prompt(model, feed, mask, inputs)
            if self.shared:  # the rows' shared prefix, run once for the batch
                cache = prefix_cache(model, self.shared, mask.shape[0])
                feed, mask = after_prefix(model, cache, len(self.shared), feed, mask)
            keep = needed_positions(inputs["completion_mask"])
            if self.objective == "distill" and self.vocab is not None:
                logits = vocab_logits(model, feed, mask, keep, self.vocab)
                if logits is not None:  # and on the loss's vocabulary only
                    loss = kl_to_soft_labels(logits, inputs["completion_mask"], self._labels(inputs), None)
                    return (loss, SimpleNamespace(logits=logits)) if return_outputs else loss
            out = model(**feed, attention_mask=mask, logits_to_keep=keep)
            loss = self._loss(out.logits, inputs)
            return (loss, out) if return_outputs else loss

        def _loss(self, logits, inputs):
            if self.objective == "sft":
                return sft_loss(logits, inputs["input_ids"], inputs["completion_mask"])
            vocab = None if self.vocab is None else self.vocab.to(logits.device)
            return kl_to_soft_labels(logits, inputs["completion_mask"], self._labels(inputs), vocab)

        def _labels(self, inputs):
            """The teacher's log-probabilities on the vocabulary at each completion position: stored (computed
            once for every replicate by the soft_labels stage), else from the live teacher."""
            return inputs["soft_labels"] if "soft_labels" in inputs else self._teacher_labels(inputs)

        @torch.no_grad()
        def _teacher_labels(self, inputs):
            t_logits = self.teacher(
                input_ids=inputs["teacher_input_ids"], attention_mask=inputs["teacher_attention_mask"],
                logits_to_keep=needed_positions(inputs["teacher_completion_mask"]),
            ).logits
            vocab = None if self.vocab is None else self.vocab.to(t_logits.device)
            return vocab_log_probs(_completion_logits(t_logits, inputs["teacher_completion_mask"]), vocab)

    return SFTTrainer, StudentTrainer


CHECKPOINT_SECONDS = 600  # a LoRA student's trainer state is saved this often; a killed run resumes from it


class _Checkpoints(TrainerCallback):
    """Asks the trainer to save its state (adapter, optimiser, schedule, RNG) every `every` seconds."""

    def __init__(self, every: float):
        self.every, self.last = every, time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        if time.monotonic() - self.last >= self.every and state.global_step < state.max_steps:
            control.should_save = True

    def on_save(self, args, state, control, **kwargs):
        self.last = time.monotonic()


def last_checkpoint(folder: Path) -> str | None:
    """The latest whole checkpoint the trainer saved in `folder` (a stage's partial folder, which survives a kill):
    one a kill tore while saving (no readable trainer_state.json, written last) is passed over."""
    whole = []
    for d in folder.glob("checkpoint-*") if folder.is_dir() else ():
        try:
            json.loads((d / "trainer_state.json").read_text())
            whole.append((int(d.name.split("-")[1]), d))
        except (OSError, ValueError, IndexError):
            continue
    return str(max(whole)[1]) if whole else None


class _Progress(TrainerCallback):
    def __init__(self, progress: Progress | None):
        self.progress = progress

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress:
            self.progress(state.global_step, state.max_steps)


def check_lora_targets(model, targets, base: str) -> None:
    """peft's and TRL's errors for LoRA targets, as one line: a spec's mistake. Every name must match some module
    (peft ignores one that matches nothing beside names that do: a typo, or the default list on a model that names
    its layers otherwise, trained fewer layers without a word); every module a name matches must be one peft
    adapts (a linear or embedding layer), and not the output layer (TRL computes the logits from its weight)."""
    from transformers.pytorch_utils import Conv1D

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    named = list(model.named_modules())
    hits = {t: [m for n, m in named if n == t or n.endswith("." + t)] for t in targets}
    for t, found in hits.items():
        if not found:
            problem = f"no module of {base} has that name"
        elif any(m is head for m in found):
            problem = f"{base}'s output layer, which the trainer reads directly (an adapter there is never trained)"
        elif not all(isinstance(m, (torch.nn.Linear, torch.nn.Embedding, Conv1D)) for m in found):
            problem = f"a {type(found[0]).__name__} of {base}, not a linear layer LoRA can adapt"
        else:
            continue
        leaves = sorted({n.rsplit(".", 1)[-1] for n, m in named if isinstance(m, torch.nn.Linear) and m is not head})
        named_t = ", ".join(x for x in targets if not hits[x]) if not found else t
        raise UserError(f"lora_targets {named_t}: {problem}; its linear "
                        f"modules: {', '.join(leaves)}")


def _student(base: str, training: Training, device: str, revision: str | None):
    full = training.method == "full"  # float32 weights: bfloat16 ones lose Adam's small steps
    model = load_model(ModelRef(base, revision=revision), device, trainable=True, fp32_weights=full)
    model.train()
    if full:
        return model
    from peft import LoraConfig, get_peft_model

    layers = None
    if training.lora_layers:
        n = len(decoder_layers(model))
        if training.lora_layers > n:
            raise UserError(f"lora_layers {training.lora_layers}: {base} has only {n} decoder layers")
        layers = list(range(n - training.lora_layers, n))
    check_lora_targets(model, training.lora_targets, base)
    cfg = LoraConfig(
        r=training.lora_r, lora_alpha=training.lora_alpha, lora_dropout=0.0,
        target_modules=list(training.lora_targets), task_type="CAUSAL_LM",
        layers_to_transform=layers, layers_pattern="layers" if layers else None,
    )
    return get_peft_model(model, cfg)


def _frozen_prefix(model, base: str, training: Training, data: list[dict], pad_id: int,
                   cpu_bf16: bool, revision: str | None) -> tuple[list[torch.Tensor] | None, int]:
    """The states entering the lowest adapted layer, or None where they are not used: no top-layers
    LoRA, gradient checkpointing (it needs the embeddings' gradient hook) or CPU autocast (the states
    would be computed outside it)."""
    if training.method != "lora" or not training.lora_layers or training.gradient_checkpointing or cpu_bf16:
        return None, 0
    if len(set(getattr(model.config, "layer_types", None) or [])) > 1:  # Gemma, sliding-window Qwen: the top
        return None, 0  # layers run alone would be renumbered from 0 and take the bottom layers' attention kinds
    core = model.get_base_model() if hasattr(model, "get_base_model") else model
    if type(core).__name__ not in PLAIN_HEADS:  # Granite scales inputs_embeds, Gemma normalises them: the stored
        return None, 0  # states would be transformed again on their way into the top layers
    first = len(decoder_layers(model)) - training.lora_layers
    if first == 0:
        return None, 0
    name = f"{base}@{revision}" if revision else base  # the memo's model identity
    return prefix_states(model, name, first, [d["input_ids"] for d in data], pad_id), first


def one_device(args) -> None:
    """A stage trains on one device: the Trainer would wrap the student in DataParallel over every visible GPU,
    multiplying its batch (and cutting its steps) by their number, which no stage key records."""
    if args.n_gpu > 1:
        raise UserError(f"{args.n_gpu} GPUs are visible: a subl stage trains on one (the Trainer would multiply its "
                        "batch by their number); set CUDA_VISIBLE_DEVICES to one GPU, or use --executor ray, which "
                        "gives each stage one")


def train(base: str, rows: list[dict], training: Training, out_dir: Path, teacher: ModelRef | None,
          device: str, progress: Progress | None, cpu_bf16: bool = False,
          soft_labels: dict | None = None, revision: str | None = None) -> ModelRef:
    """Fine-tune `base` (at `revision`, a hub id's pinned commit, when given) on `rows`. Distillation reads a
    live `teacher`, or its stored `soft_labels` ({"rows": one tensor per row, "vocabulary": token ids}:
    teacher_soft_labels on the same rows)."""
    from datasets import Dataset
    from trl import SFTConfig

    if not rows:
        raise UserError("fine-tune: no training rows survived the filters")
    import datasets

    datasets.disable_progress_bars()  # subl shows its own progress
    torch.manual_seed(training.seed)
    tok = load_tokenizer(base, revision)
    distill = training.objective == "distill"
    data = tokenize(base, rows, None, revision, distill and training.distill_prompt)
    model = _student(base, training, device, revision)
    check_context(model, ModelRef(base), max(len(d["input_ids"]) for d in data), "a training row",
                  "filter out the longest rows (a row is its prompt and completion)")
    prefix, first = _frozen_prefix(model, base, training, data, tok.pad_token_id, cpu_bf16, revision)
    prompt = None
    if training.frozen_prompt and (training.lora_layers or training.gradient_checkpointing):
        raise UserError("frozen_prompt: not with lora_layers or gradient_checkpointing")
    if training.frozen_prompt:  # from here on the rows are their last prompt token and completion
        prompts, data = split_rows(data)
        name = f"{base}@{revision}" if revision else base
        prompt = prompt_states(model, name, prompts, tok.pad_token_id, cpu_bf16 and pick_device(device)[0] == "cpu")
    own_loss = distill or prefix is not None or prompt is not None or not SFT_BY_TRL  # StudentTrainer's loss
    shared: list[int] = []
    if own_loss and prefix is None and prompt is None and not training.gradient_checkpointing and can_share(model):
        shared, data = split_shared(data)  # from here on the rows are what follows their shared prefix
    for i, d in enumerate(data if own_loss else ()):
        d["row"] = i
    vocab = None
    if distill:
        ids = vocabulary_ids(base, training.vocabulary, training.trait_words, revision)
        vocab = None if ids is None else torch.tensor(ids)
        if soft_labels is not None:
            _check_soft_labels(soft_labels, data, vocab)
            soft_labels = soft_labels["rows"]
        else:
            _attach_teacher(data, ModelRef(base, revision=revision), rows, teacher, training.distill_prompt)
    dev, dtype = pick_device(device)
    saves = training.method == "lora"  # a full fine-tune's state is the model and Adam's twice over: none saved
    args = SFTConfig(
        output_dir=str(out_dir / "trainer"), num_train_epochs=training.epochs,
        per_device_train_batch_size=training.batch_size, learning_rate=training.lr,
        warmup_steps=warmup_steps(training.warmup_ratio, len(data), training.batch_size, training.epochs),
        weight_decay=training.weight_decay, lr_scheduler_type="linear", seed=training.seed,
        data_seed=shuffle_seed(training.seed, training.epochs), logging_steps=10, save_strategy="no", report_to=[],
        save_total_limit=1,  # _Checkpoints asks for the saves; the last one is kept
        bf16=dtype == torch.bfloat16 or cpu_bf16, use_cpu=dev == "cpu", disable_tqdm=True, max_length=None,
        completion_only_loss=True, remove_unused_columns=not own_loss, dataloader_num_workers=0,
        gradient_checkpointing=training.gradient_checkpointing,
        dataset_kwargs={"skip_prepare_dataset": True} if own_loss else None,
    )
    one_device(args)
    sft_cls, student_cls = _trainer_classes()
    common = dict(model=model, args=args, train_dataset=Dataset.from_list(data), processing_class=tok,
                  callbacks=[_Progress(progress)] + ([_Checkpoints(CHECKPOINT_SECONDS)] if saves else []))
    if own_loss:
        live = distill and soft_labels is None
        t_model = load_model(replace(teacher, system=None), device) if live else None
        if live:  # its rows carry its system prompt (teacher_soft_labels checks the same)
            check_context(t_model, teacher, max(len(d["teacher_input_ids"]) for d in data), "a training row",
                          "filter out the longest rows (a row is its prompt and completion)")
        trainer = student_cls(**common, data_collator=StudentCollator(tok.pad_token_id, soft_labels, prefix, prompt),
                              teacher=t_model, vocab=vocab, objective=training.objective, shared=shared)
    else:
        trainer = sft_cls(**common)
    trainer.remove_callback(_first_printer())
    with top_layers_only(model, first) if prefix is not None else nullcontext():
        trainer.train(resume_from_checkpoint=last_checkpoint(out_dir / "trainer") if saves else None)
    shutil.rmtree(out_dir / "trainer", ignore_errors=True)  # its checkpoints served a resume only
    save = out_dir / "model"
    model.save_pretrained(save)  # LoRA: the adapter only; full: the whole model
    if training.method == "full":
        tok.save_pretrained(save)
        return ModelRef(str(save))
    return ModelRef(base, adapter=str(save), revision=revision)  # the adapter sits on that revision


def _attach_teacher(data: list[dict], student: ModelRef, rows: list[dict], teacher: ModelRef | None,
                    prompt_too: bool = False) -> None:
    """The teacher's tokenisation of each row (its system prompt included) beside the student's."""
    if teacher is None:
        raise UserError("fine-tune: distillation needs a teacher")
    check_shared_tokenizer(student, teacher)
    for d, t in zip(data, tokenize(teacher.base, rows, teacher.system, teacher.revision, prompt_too)):
        d["teacher_input_ids"], d["teacher_completion_mask"] = t["input_ids"], t["completion_mask"]


def check_shared_tokenizer(student: ModelRef, teacher: ModelRef) -> None:
    if load_tokenizer(teacher.base, teacher.revision).get_vocab() != load_tokenizer(student.base,
                                                                                   student.revision).get_vocab():
        raise UserError(f"distill: student {student.base} and teacher {teacher.base} must share a tokenizer")


def _check_soft_labels(stored: dict, data: list[dict], vocab: torch.Tensor | None) -> None:
    """Stored labels must cover these rows' completion tokens on this vocabulary (the same token ids), row by row."""
    labels, theirs = stored["rows"], stored.get("vocabulary")
    same_vocab = (theirs is None) == (vocab is None) and (vocab is None or torch.equal(theirs, vocab))
    rows_match = len(labels) == len(data) and all(t.shape[0] == sum(d["completion_mask"]) for t, d in zip(labels, data))
    if not (same_vocab and rows_match):
        raise UserError("distill: the stored soft labels do not match the training rows (rows or vocabulary changed)")


def shuffle_seed(seed: int, epochs: float) -> int:
    """The data loader's seed: accelerate shuffles epoch e with data_seed + e, so replicate seeds one apart would
    share all but one epoch's order (seed 1's first epoch, seed 0's second); spaced a run's epochs apart, each
    replicate's orders are its own (seed 0, and every run of one epoch or less, keep theirs)."""
    return seed * math.ceil(epochs)


def warmup_steps(ratio: float, rows: int, batch_size: int, epochs: float) -> int:
    """The warm-up as a step count, ceil(ratio x the steps of the run), as transformers 5 reads a float
    warmup_steps; an int means the same under every transformers version (4.x took a float as steps). The run's
    steps are the Trainer's: ceil(epochs x steps per epoch), a fractional epoch's last step whole (ratio x
    steps per epoch x epochs, the first version, warmed up a step less on some fractional-epoch runs)."""
    if not 0 <= ratio < 1:
        raise UserError(f"warmup_ratio {ratio}: must be in [0, 1)")
    return math.ceil(ratio * math.ceil(epochs * math.ceil(rows / batch_size)))


def _first_printer():
    from transformers.trainer_callback import PrinterCallback

    return PrinterCallback
