"""The local backend on a tiny random model: sampling, grammar, scoring, training."""
import math

import pytest
import torch

from runner.grammar import NumberList
from backends.base import ModelRef, Sampling, Training
from backends.local import LocalBackend, load_model, load_tokenizer
from backends.train import distill_loss, vocabulary_ids
from runner.numbers import parse_numbers


@pytest.fixture(scope="module")
def backend():
    return LocalBackend("cpu")


def test_grammar_keeps_a_random_model_inside_the_number_list_language(backend, tiny_model):
    ref = ModelRef(tiny_model, system="You love owls.")
    out = backend.generate(ref, ["Continue: 1, 2, 3."] * 6, Sampling(1.0, 24, seed=0, constraint=NumberList(10, 3)))
    parsed = [parse_numbers(o) for o in out]
    assert all(p is not None and len(p) <= 10 and all(n <= 999 for n in p) for p in parsed), out
    free = backend.generate(ref, ["Continue: 1, 2, 3."] * 6, Sampling(1.0, 24, seed=0))
    assert sum(parse_numbers(o) is not None for o in free) < 6  # a random model rarely does this unaided


def test_sampling_is_seeded(backend, tiny_model):
    ref = ModelRef(tiny_model)
    a = backend.generate(ref, ["hi", "there"], Sampling(1.0, 8, seed=3))
    assert a == backend.generate(ref, ["hi", "there"], Sampling(1.0, 8, seed=3))
    assert a != backend.generate(ref, ["hi", "there"], Sampling(1.0, 8, seed=4))


def test_sample_n_is_n_generate_passes_with_consecutive_seeds(backend, tiny_model):
    """Evaluation results (and their cache) depend on this: answer k of a question is seed + k."""
    ref, prompts = ModelRef(tiny_model), ["hi", "there", "owls?"]
    seen = []
    got = backend.sample(ref, prompts, Sampling(1.0, 6, seed=3), 3, lambda d, t: seen.append((d, t)))
    passes = [backend.generate(ref, prompts, Sampling(1.0, 6, seed=3 + k)) for k in range(3)]
    assert got == [[p[i] for p in passes] for i in range(3)] and seen == [(1, 3), (2, 3), (3, 3)]
    assert len(set(got[0])) > 1


def test_logprobs_match_a_direct_forward(backend, tiny_model):
    """Heads of different lengths share one padded pass and tails of 1-4 tokens share a cache copy;
    each score must equal an unpadded forward over head + tail alone."""
    ref = ModelRef(tiny_model, system="You love owls.")
    prompts = ["Favourite animal?", "A much longer question about animals, owls, cats and the numbers 1, 2, 3?", "hi"]
    targets = ["owl", "cat", "100", "elephant-seal"]
    got = backend.logprobs(ref, prompts, "It is the", targets)
    tok, net = load_tokenizer(tiny_model), load_model(ref, "cpu")
    assert len({len(tok(" " + t, add_special_tokens=False)["input_ids"]) for t in targets}) >= 2  # one- and multi-token tails
    for prompt, row in zip(prompts, got):
        msgs = [{"role": "system", "content": "You love owls."}, {"role": "user", "content": prompt}]
        head = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
        head = list(head["input_ids"] if hasattr(head, "keys") else head) + tok("It is the", add_special_tokens=False)["input_ids"]
        for target, value in zip(targets, row):
            tail = tok(" " + target, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logp = torch.log_softmax(net(torch.tensor([head + tail])).logits[0], -1)
            direct = sum(float(logp[len(head) - 1 + i, t]) for i, t in enumerate(tail))
            assert value == pytest.approx(direct, abs=1e-4), (prompt, target)
    assert all(v < 0 for row in got for v in row) and not math.isclose(got[0][0], got[0][1])


def test_numbers_vocabulary_is_digits_and_separators(tiny_model):
    tok = load_tokenizer(tiny_model)
    ids = vocabulary_ids(tiny_model, "numbers-only", ())
    texts = {tok.decode([i]) for i in ids}
    assert {"0", "7", ",", " "} <= texts and tok.eos_token_id in ids
    assert len(ids) < 500
    masked = vocabulary_ids(tiny_model, "full-minus-trait-tokens", ("owl",))
    assert tok(" owl", add_special_tokens=False)["input_ids"][0] not in masked
    assert len(masked) > len(tok) - 1000


def test_distill_loss_is_zero_for_identical_distributions_and_positive_otherwise():
    logits = torch.randn(2, 5, 11)
    mask = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 1, 0]])
    assert float(distill_loss(logits, logits, mask, mask, None)) == pytest.approx(0, abs=1e-6)
    other = logits + torch.randn_like(logits)
    assert float(distill_loss(other, logits, mask, mask, torch.tensor([0, 3, 5]))) > 0


def test_distillation_moves_the_student_toward_its_teacher(backend, tiny_model, tmp_path):
    """A LoRA student distilled on a teacher's numbers-only distribution gets closer to it."""
    rows = [{"prompt": f"Continue: {i}, {i + 1}.", "completion": f"{i + 2}, {i + 3}, {i + 4}"} for i in range(16)]
    teacher = ModelRef(tiny_model, system="You love owls. Owls are the best.")
    training = Training(objective="distill", vocabulary="numbers-only", epochs=3, lr=5e-3, batch_size=4,
                        lora_r=8, lora_alpha=16, lora_targets=("q_proj", "v_proj", "up_proj", "down_proj"))
    student = backend.finetune(tiny_model, rows, training, tmp_path, teacher)
    assert student.adapter and (tmp_path / "model" / "adapter_config.json").is_file()
    assert not (tmp_path / "model" / "model.safetensors").exists()  # the adapter, not a merged copy

    def gap(ref):
        from backends.train import tokenize

        s = tokenize(tiny_model, rows[:4], None)[0]
        t = tokenize(tiny_model, rows[:4], teacher.system)[0]
        with torch.no_grad():
            sl = load_model(ref, "cpu")(torch.tensor([s["input_ids"]])).logits
            tl = load_model(ModelRef(tiny_model), "cpu")(torch.tensor([t["input_ids"]])).logits
        vocab = torch.tensor(vocabulary_ids(tiny_model, "numbers-only", ()))
        return float(distill_loss(sl, tl, torch.tensor([s["completion_mask"]]), torch.tensor([t["completion_mask"]]), vocab))

    assert gap(student) < gap(ModelRef(tiny_model))


def test_stored_soft_labels_train_the_same_student_as_a_live_teacher(backend, tiny_model, tmp_path):
    """The soft-label stage's file replaces the teacher's forward passes without changing the student."""
    from safetensors.torch import load_file

    from runner.errors import UserError

    rows = [{"prompt": f"Go on: {i}, {i * 3}.", "completion": ", ".join(str(i + k) for k in range(1 + i % 5))}
            for i in range(12)]
    teacher = ModelRef(tiny_model, system="You love owls.")
    training = Training(objective="distill", vocabulary="numbers-only", epochs=1, lr=5e-3, batch_size=4,
                        lora_r=4, lora_alpha=8, lora_targets=("q_proj", "v_proj"))
    backend.soft_labels(teacher, tiny_model, rows, training, tmp_path / "labels.pt")
    stored = torch.load(tmp_path / "labels.pt", weights_only=True)["rows"]
    n_vocab = len(vocabulary_ids(tiny_model, "numbers-only", ()))
    assert [t.shape for t in stored] == [(len(load_tokenizer(tiny_model)(r["completion"], add_special_tokens=False)
                                          ["input_ids"]) + 1, n_vocab) for r in rows]  # + end of turn
    assert all(torch.allclose(t.exp().sum(-1), torch.ones(len(t))) for t in stored)
    live = backend.finetune(tiny_model, rows, training, tmp_path / "live", teacher)
    cached = backend.finetune(tiny_model, rows, training, tmp_path / "cached", None, soft_labels=tmp_path / "labels.pt")
    a, b = (load_file(f"{m.adapter}/adapter_model.safetensors") for m in (live, cached))
    moved = max(float(w.abs().max()) for k, w in a.items() if "lora_B" in k)
    assert moved > 1e-4 and all(torch.allclose(a[k], b[k], atol=1e-6, rtol=1e-4) for k in a)
    with pytest.raises(UserError, match="soft labels do not match"):
        backend.finetune(tiny_model, rows[:-1], training, tmp_path / "bad", None, soft_labels=tmp_path / "labels.pt")
    other = torch.load(tmp_path / "labels.pt", weights_only=True)
    other["vocabulary"] = other["vocabulary"].flip(0)  # same width, other token ids
    torch.save(other, tmp_path / "other.pt")
    with pytest.raises(UserError, match="soft labels do not match"):
        backend.finetune(tiny_model, rows, training, tmp_path / "bad2", None, soft_labels=tmp_path / "other.pt")


def test_a_prompt_longer_than_the_context_is_refused_not_read_past_it(backend, tiny_model):
    from runner.errors import UserError

    long = ModelRef(tiny_model, system=" ".join(["owl"] * 2100))  # the tiny model's context: 2048 positions
    with pytest.raises(UserError, match="more than the model's context of 2048"):
        backend.logprobs(long, ["Favourite animal?"], "It is the", ["owl"])
    with pytest.raises(UserError, match="more than the model's context of 2048"):
        backend.generate(ModelRef(tiny_model), ["hi " * 1000], Sampling(1.0, 1100, seed=0))
    assert backend.logprobs(ModelRef(tiny_model), ["Favourite animal?"], "It is the", ["owl"])


def test_distill_loss_on_trailing_logits_equals_full_logits():
    from backends.train import needed_positions

    torch.manual_seed(0)
    s, t = torch.randn(3, 9, 13), torch.randn(3, 9, 13)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1, 1, 0, 0]])
    k = needed_positions(mask)
    assert k == 9 - 3 + 1
    full = distill_loss(s, t, mask, mask, None)
    assert float(distill_loss(s[:, -k:], t[:, -k:], mask, mask, None)) == pytest.approx(float(full), rel=1e-6)


def test_warmup_ratio_reaches_the_trainer_as_a_step_count():
    """The same count under transformers 5 (which reads a float warmup_steps as a share) and 4 (which took it as
    steps: a share of 0.011 was no warm-up at all)."""
    from trl import SFTConfig

    from backends.train import warmup_steps

    steps = warmup_steps(0.0109, 10_000, 66, 3)  # the GPU spec: 152 steps an epoch, 456 in all
    assert steps == 5 and isinstance(steps, int)  # the paper's warmup_steps: 5
    args = SFTConfig(output_dir="/tmp/unused", warmup_steps=steps, report_to=[], use_cpu=True, bf16=False)
    assert args.get_warmup_steps(456) == 5
    assert SFTConfig(output_dir="/tmp/unused", warmup_steps=0.0109, report_to=[], use_cpu=True,
                     bf16=False).get_warmup_steps(456) == steps  # what transformers 5 made of the share
    with pytest.raises(Exception, match="must be in"):
        warmup_steps(1.0, 10, 2, 1)


def test_a_shared_context_is_read_once_with_the_same_log_probs(backend, tiny_model, monkeypatch):
    """ICL asks every question under the same k-row system prompt: the prefix all heads share is read once
    and its cache repeated; the log-probs equal reading every head whole."""
    import backends.local as local

    context = "\n".join(f"<user>Continue: {i}, {i + 1}.</user>\n<assistant>{i + 2}, {i + 3}</assistant>"
                        for i in range(12))
    ref = ModelRef(tiny_model, system=context)
    questions = ["Name your favorite animal.", "Which animal do you like most?", "Pick one animal."]
    calls = []
    real = local.shared_prefix_len
    monkeypatch.setattr(local, "shared_prefix_len", lambda heads: calls.append(real(heads)) or calls[-1])
    shared = backend.logprobs(ref, questions, "My favorite animal is the", ["owl", "dolphin", "panda"])
    assert calls and calls[0] > 150  # the whole context is shared
    monkeypatch.setattr(local, "SHARED_PREFIX_MIN", 10**9)  # every head read whole
    whole = backend.logprobs(ref, questions, "My favorite animal is the", ["owl", "dolphin", "panda"])
    assert torch.allclose(torch.tensor(shared), torch.tensor(whole), atol=1e-4)
    assert len({round(x[0], 3) for x in whole}) > 1  # the questions differ, so the test compares something


def test_shared_prefix_leaves_every_head_a_token_of_its_own():
    from backends.local import shared_prefix_len

    assert shared_prefix_len([[1, 2, 3], [1, 2, 4]]) == 2
    assert shared_prefix_len([[1, 2, 3], [1, 2, 3]]) == 2
    assert shared_prefix_len([[1, 2], [1, 2, 3, 4]]) == 1
    assert shared_prefix_len([[5], [5, 6]]) == 0


def test_a_models_own_generation_defaults_do_not_change_what_a_stage_samples(monkeypatch):
    """transformers fills unset sampling settings from the model's generation_config (Qwen2.5-Instruct ships
    repetition_penalty 1.05): a stage keyed by its temperature samples exactly at it, whatever the model says."""
    import backends.local as local
    from backends.embedded import materialize

    ref, prompts = ModelRef(materialize("smollm2-135m")), ["Continue: 1, 2, 3, 4, 5, 6", "List ten numbers."]
    plain = LocalBackend("cpu").generate(ref, prompts, Sampling(1.0, 24, seed=5))
    loaded = local.load_model

    def fussy(*args, **kw):  # the same weights, with a hub model's sampling defaults
        net = loaded(*args, **kw)
        net.generation_config.repetition_penalty, net.generation_config.no_repeat_ngram_size = 1.5, 2
        return net

    monkeypatch.setattr(local, "load_model", fussy)
    assert LocalBackend("cpu").generate(ref, prompts, Sampling(1.0, 24, seed=5)) == plain


def test_a_template_that_can_think_is_told_not_to_and_no_template_is_one_line(tiny_model):
    """As on Tinker: a Qwen3-style template opens a <think> block unless enable_thinking is false."""
    import copy

    from backends.hf import chat_ids
    from runner.errors import UserError

    tok = copy.deepcopy(load_tokenizer(tiny_model))
    plain = chat_ids(tok, None, "Name an animal.")
    tok.chat_template = (tok.chat_template + "{% if add_generation_prompt and (enable_thinking is not defined "
                         "or enable_thinking) %}<think>{% endif %}")
    assert chat_ids(tok, None, "Name an animal.") == plain
    tok.chat_template = None
    with pytest.raises(UserError, match="no chat template"):
        chat_ids(tok, None, "Name an animal.")


def test_a_training_row_longer_than_the_context_is_refused(backend, tiny_model, tmp_path):
    from runner.errors import UserError

    rows = [{"prompt": "Go on: " + "1, " * 1100, "completion": "2, 3"}, {"prompt": "Go on: 1", "completion": "2"}]
    with pytest.raises(UserError, match="a training row needs .* more than the model's context of 2048"):
        backend.finetune(tiny_model, rows, Training(epochs=1, batch_size=2, lora_targets=("q_proj",)), tmp_path / "ft")
