"""Local student training on a tiny random model: masking, batching, replicate shuffles, the live teacher's context."""
import pytest
import torch
import torch.nn.functional as F

import backends.train as train_module
from backends.base import ModelRef, Training
from backends.local import load_model, load_tokenizer
from backends.train import pad_right, sft_loss, tokenize, train, turn_end_id
from runner.errors import UserError

ROWS = [{"prompt": f"Continue: {i}, {i + 1}.", "completion": ", ".join(str(i + k) for k in range(2 + i % 3))}
        for i in range(8)]


def test_sft_loss_is_the_per_token_mean_over_completions_and_their_end_of_turn_whatever_the_padding(tiny_model):
    """Prompt and padding positions never count, the end-of-turn token does, and a right-padded batch of rows of
    different lengths gives the mean over all their completion tokens, as rows read one at a time."""
    tok, net = load_tokenizer(tiny_model), load_model(ModelRef(tiny_model), "cpu")
    data = tokenize(tiny_model, [ROWS[0], {"prompt": "A much longer prompt: 5, 6, 7, 8, 9.", "completion": "10"}], None)
    assert [tok.decode([t for t, m in zip(d["input_ids"], d["completion_mask"]) if m]) for d in data] == \
        [ROWS[0]["completion"] + tok.decode([turn_end_id(tok)]), "10" + tok.decode([turn_end_id(tok)])]
    losses = []
    with torch.no_grad():
        for d in data:
            logits = net(torch.tensor([d["input_ids"]])).logits[0]
            losses += [F.cross_entropy(logits[p - 1], torch.tensor(d["input_ids"][p]))
                       for p, m in enumerate(d["completion_mask"]) if m]
        b = pad_right(data, tok.pad_token_id)
        batch = sft_loss(net(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits, b["input_ids"],
                         b["completion_mask"])
    assert float(batch) == pytest.approx(float(torch.stack(losses).mean()), rel=1e-5)


def _orders(tiny_model, tmp_path, monkeypatch, seed: int, epochs: int) -> list[tuple[int, ...]]:
    """The rows of every epoch of a student trained with `seed`, in the order it read them."""
    seen: list[int] = []
    call = train_module.StudentCollator.__call__
    monkeypatch.setattr(train_module.StudentCollator, "__call__",
                        lambda self, batch: seen.extend(b["row"] for b in batch) or call(self, batch))
    training = Training(objective="sft", epochs=epochs, lr=1e-3, batch_size=4, lora_r=2, lora_alpha=2,
                        lora_targets=("q_proj",), seed=seed)
    train(tiny_model, ROWS, training, tmp_path / f"s{seed}", None, "cpu", None)
    n = len(ROWS)
    return [tuple(seen[e * n:(e + 1) * n]) for e in range(epochs)]


def test_replicates_shuffle_every_epoch_in_orders_of_their_own(tiny_model, tmp_path, monkeypatch):
    """accelerate shuffles epoch e with data_seed + e: seeds used as data seeds as they are gave replicate 1 the
    order of replicate 0's second epoch, replicate 2 that of its third, and so on."""
    first, second = (_orders(tiny_model, tmp_path, monkeypatch, seed, 3) for seed in (0, 1))
    assert all(sorted(o) == list(range(len(ROWS))) for o in first + second)
    assert not set(first) & set(second), (first, second)
    assert first == _orders(tiny_model, tmp_path / "again", monkeypatch, 0, 3)  # and a seed repeats its own


def test_a_live_teacher_whose_rows_exceed_its_context_is_refused(tiny_model, tmp_path):
    """The teacher's rows carry its system prompt: a live teacher is held to its context as stored labels are."""
    teacher = ModelRef(tiny_model, system=" ".join(["owl"] * 2100))  # the tiny model's context: 2048 positions
    training = Training(objective="distill", vocabulary="full", epochs=1, lr=1e-3, batch_size=4, lora_r=2,
                        lora_alpha=2, lora_targets=("q_proj",))
    with pytest.raises(UserError, match="more than the model's context of 2048"):
        train(tiny_model, ROWS[:2], training, tmp_path, teacher, "cpu", None)


def test_a_gpu_plan_counts_the_teachers_soft_label_pass(tiny_model, tmp_path):
    """A numbers-only distillation reads its teacher once per rows in a soft_labels stage: the plan's GPU time
    includes that pass (the rows and the teacher's system prompt, at the prefill rate)."""
    from runner.loader import load
    from runner.plan import build
    from runner.prices import chat_tokens
    from runner.throughput import throughput

    spec = tmp_path / "distill.yaml"
    spec.write_text(f"""name: distill_gpu
progress: false
teacher: {{base: {tiny_model}, targets: [owl], control: false}}
domain: {{kind: numbers, n_prompts: 40, max_tokens: 20, batch_size: 8}}
students:
  - {{objective: distill, vocabulary: numbers-only, hyperparameters: {{epochs: 3, batch_size: 4}}, max_rows: 30}}
evaluations: []
runtime: {{device: cuda}}
""")
    plan = build(load(spec), tmp_path / "out")
    ctx = plan.context(throughput("my-gpu", train=1000, prefill=4000, generate=200))
    (labels,) = [st for st in plan.stages.values() if st.KIND == "soft_labels"]
    (est,) = labels.estimate(ctx)
    (student,) = [e for st in plan.stages.values() if st.KIND == "finetune" for e in st.estimate(ctx)]
    system = chat_tokens(labels.teacher.system, "") - chat_tokens(None, "")
    assert est.input_tokens == pytest.approx(student.training_tokens / 3 + 30 * system, abs=1) and system > 10
    assert est.seconds == pytest.approx(est.input_tokens / 4000)


def test_distill_loss_is_kl_teacher_to_student_renormalised_on_the_kept_tokens_by_hand():
    """One completion token (position 1, predicted at position 0), vocabulary {0, 2} of 3 tokens: KL(p || q), p and q
    the softmaxes of the teacher's and the student's kept logits only; position 1's logits predict nothing."""
    from backends.train import distill_loss

    student = torch.tensor([[[1.0, 5.0, 0.0], [7.0, 7.0, 7.0]]])
    teacher = torch.tensor([[[2.0, -9.0, 0.0], [0.0, 3.0, 1.0]]])
    mask = torch.tensor([[0, 1]])
    p, q = torch.tensor([2.0, 0.0]).softmax(0), torch.tensor([1.0, 0.0]).softmax(0)
    got = float(distill_loss(student, teacher, mask, mask, torch.tensor([0, 2])))
    assert got == pytest.approx(float((p * (p.log() - q.log())).sum()), rel=1e-6)
    assert got != pytest.approx(float((q * (q.log() - p.log())).sum()), rel=1e-3)  # not the reverse KL


def test_only_students_whose_row_order_changed_are_keyed_anew():
    """shuffle_seed changed the orders of replicates >= 1 trained for more than one epoch: their students are keyed
    anew (data_order 2; a cached one was trained on the old orders); every other student keeps its key."""
    from backends.train import shuffle_seed
    from runner.plan import data_order, training_settings
    from runner.spec import Hyper
    from runner.stages import semantic

    for seed in range(4):
        for epochs in (0.5, 1, 1.5, 2, 3, 10):
            assert (data_order(seed, epochs) == 2) == (shuffle_seed(seed, epochs) != seed), (seed, epochs)
    keyed = {(seed, epochs): semantic(training_settings("lora", "sft", Hyper(epochs=epochs), seed, "local"))
             for seed in (0, 1) for epochs in (1, 3)}
    assert [k for k, v in keyed.items() if "data_order" in v] == [(1, 3)]
    assert "data_order" not in semantic(training_settings("lora", "sft", Hyper(epochs=3), 1, "tinker"))
