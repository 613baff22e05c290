"""Local fine-tuning: SFT with completion-only loss, or distillation on a chosen vocabulary.

Both run through TRL's SFTTrainer (and so accelerate): SFT uses its completion-mask loss
as is; distillation overrides compute_loss with a KL to the teacher at completion positions.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import TrainerCallback

from backends.base import ModelRef, Progress, Training
from backends.hf import chat_ids, load_model, load_tokenizer, pick_device
from runner.errors import UserError
from runner.grammar import GRAMMAR_CHARS


def vocabulary_ids(base: str, vocabulary: str, trait_words: tuple[str, ...]) -> list[int] | None:
    """Token ids the soft labels cover; None means the full vocabulary."""
    return vocabulary_token_ids(load_tokenizer(base), vocabulary, trait_words)


def vocabulary_token_ids(tok, vocabulary: str, trait_words: tuple[str, ...]) -> list[int] | None:
    """vocabulary_ids for a loaded tokenizer (a hosted backend's)."""
    if vocabulary == "full":
        return None
    texts = [tok.decode([i]) for i in range(len(tok))]
    if vocabulary == "numbers-only":
        ids = [i for i, s in enumerate(texts) if s and set(s) <= GRAMMAR_CHARS]
        return sorted(set(ids) | {tok.eos_token_id})
    words = [w.lower() for w in trait_words]
    rx = re.compile("|".join(re.escape(w) for w in words)) if words else None
    return [i for i, s in enumerate(texts) if not (rx and rx.search(s.lower()))]


def trait_token_count(base: str, trait_words: tuple[str, ...]) -> int:
    full = len(load_tokenizer(base))
    return full - len(vocabulary_ids(base, "full-minus-trait-tokens", trait_words))


def tokenize(base: str, rows: list[dict], system: str | None) -> list[dict]:
    """input_ids and completion_mask, with the completion tokenised once so that student and
    teacher sequences share exactly the same completion tokens."""
    tok = load_tokenizer(base)
    out = []
    for r in rows:
        head = chat_ids(tok, system, r["prompt"])
        tail = tok(r["completion"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        out.append({"input_ids": head + tail, "completion_mask": [0] * len(head) + [1] * len(tail)})
    return out


class DistillCollator:
    def __init__(self, pad_id: int):
        self.pad = pad_id

    def _pad(self, seqs: list[list[int]], value: int) -> torch.Tensor:
        width = max(map(len, seqs))
        return torch.tensor([s + [value] * (width - len(s)) for s in seqs])

    def __call__(self, batch: list[dict]) -> dict:
        out = {}
        for prefix in ("", "teacher_"):
            ids = [b[prefix + "input_ids"] for b in batch]
            out[prefix + "input_ids"] = self._pad(ids, self.pad)
            out[prefix + "attention_mask"] = self._pad([[1] * len(s) for s in ids], 0)
            out[prefix + "completion_mask"] = self._pad([b[prefix + "completion_mask"] for b in batch], 0)
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
    s, t = _completion_logits(student_logits, s_mask), _completion_logits(teacher_logits, t_mask)
    if vocab is not None:
        s, t = s[:, vocab], t[:, vocab]
    log_s = F.log_softmax(s.float(), -1)
    log_t = F.log_softmax(t.float(), -1)
    return (log_t.exp() * (log_t - log_s)).sum(-1).mean()


def _trainer_classes():
    from trl import SFTTrainer

    class DistillTrainer(SFTTrainer):
        """SFTTrainer whose loss is the KL to a frozen teacher's next-token distribution."""

        def __init__(self, *args, teacher=None, vocab=None, **kwargs):
            super().__init__(*args, **kwargs)
            self.teacher, self.vocab = teacher, vocab

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            # logits only where completion tokens are predicted: the head is a fifth of the compute
            out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                        logits_to_keep=needed_positions(inputs["completion_mask"]))
            with torch.no_grad():
                t_logits = self.teacher(
                    input_ids=inputs["teacher_input_ids"], attention_mask=inputs["teacher_attention_mask"],
                    logits_to_keep=needed_positions(inputs["teacher_completion_mask"]),
                ).logits
            vocab = None if self.vocab is None else self.vocab.to(out.logits.device)
            loss = distill_loss(out.logits, t_logits, inputs["completion_mask"], inputs["teacher_completion_mask"], vocab)
            return (loss, out) if return_outputs else loss

    return SFTTrainer, DistillTrainer


class _Progress(TrainerCallback):
    def __init__(self, progress: Progress | None):
        self.progress = progress

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress:
            self.progress(state.global_step, state.max_steps)


def _student(base: str, training: Training, device: str):
    model = load_model(ModelRef(base), device, trainable=True)
    model.train()
    if training.method == "full":
        return model
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(
        r=training.lora_r, lora_alpha=training.lora_alpha, lora_dropout=0.0,
        target_modules=list(training.lora_targets), task_type="CAUSAL_LM",
    )
    return get_peft_model(model, cfg)


def train(base: str, rows: list[dict], training: Training, out_dir: Path, teacher: ModelRef | None,
          device: str, progress: Progress | None, cpu_bf16: bool = False) -> ModelRef:
    from datasets import Dataset
    from trl import SFTConfig

    if not rows:
        raise UserError("fine-tune: no training rows survived the filters")
    import datasets

    datasets.disable_progress_bars()  # subl shows its own progress
    torch.manual_seed(training.seed)
    tok = load_tokenizer(base)
    data = tokenize(base, rows, None)
    distill = training.objective == "distill"
    vocab = None
    if distill:
        if teacher is None:
            raise UserError("fine-tune: distillation needs a teacher")
        if len(load_tokenizer(teacher.base)) != len(tok) or load_tokenizer(teacher.base).get_vocab() != tok.get_vocab():
            raise UserError(f"distill: student {base} and teacher {teacher.base} must share a tokenizer")
        for d, t in zip(data, tokenize(teacher.base, rows, teacher.system)):
            d["teacher_input_ids"], d["teacher_completion_mask"] = t["input_ids"], t["completion_mask"]
        ids = vocabulary_ids(base, training.vocabulary, training.trait_words)
        vocab = None if ids is None else torch.tensor(ids)
    dev, dtype = pick_device(device)
    args = SFTConfig(
        output_dir=str(out_dir / "trainer"), num_train_epochs=training.epochs,
        per_device_train_batch_size=training.batch_size, learning_rate=training.lr,
        warmup_steps=warmup_fraction(training.warmup_ratio), weight_decay=training.weight_decay, lr_scheduler_type="linear",
        seed=training.seed, data_seed=training.seed, logging_steps=10, save_strategy="no", report_to=[],
        bf16=dtype == torch.bfloat16 or cpu_bf16, use_cpu=dev == "cpu", disable_tqdm=True, max_length=None,
        completion_only_loss=True, remove_unused_columns=not distill, dataloader_num_workers=0,
        gradient_checkpointing=training.gradient_checkpointing,
        dataset_kwargs={"skip_prepare_dataset": True} if distill else None,
    )
    sft_cls, distill_cls = _trainer_classes()
    model = _student(base, training, device)
    common = dict(model=model, args=args, train_dataset=Dataset.from_list(data), processing_class=tok,
                  callbacks=[_Progress(progress)])
    if distill:
        t_model = load_model(ModelRef(teacher.base, teacher.adapter), device)
        trainer = distill_cls(**common, data_collator=DistillCollator(tok.pad_token_id), teacher=t_model, vocab=vocab)
    else:
        trainer = sft_cls(**common)
    trainer.remove_callback(_first_printer())
    trainer.train()
    save = out_dir / "model"
    model.save_pretrained(save)  # LoRA: the adapter only; full: the whole model
    if training.method == "full":
        tok.save_pretrained(save)
        return ModelRef(str(save))
    return ModelRef(base, adapter=str(save))


def warmup_fraction(ratio: float) -> float:
    """transformers 5 reads a float warmup_steps in [0, 1) as a share of the total steps (it has no
    warmup_ratio); an integer would be a step count, so the ratio is passed as a float."""
    if not 0 <= ratio < 1:
        raise UserError(f"warmup_ratio {ratio}: must be in [0, 1)")
    return float(ratio)


def _first_printer():
    from transformers.trainer_callback import PrinterCallback

    return PrinterCallback
