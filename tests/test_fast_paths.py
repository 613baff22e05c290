"""The speed-ups that must not change results (shared prefix, stored prompt states, cropped probe caches), checked
against reading whole rows on tiny random models of several shapes, sliding-window ones included."""
from types import SimpleNamespace

import pytest
import torch

from backends.frozen_prefix import hidden_states_at, pad_states, top_layers_only
from backends.frozen_prompt import batch_states, split_rows, with_prompt
from backends.frozen_prompt import _compute as prompt_kv
from backends.local import score_tails
from backends.shared_prefix import after_prefix, can_share, prefix_cache, split_shared
from backends.train import _completion_logits, needed_positions, pad_right, sft_loss

VOCAB = 120
COMMON = list(range(3, 43))  # 40 tokens every head starts with: over SHARED_PREFIX_MIN
HEADS = [COMMON + [50, 51, 52], COMMON + [60], COMMON + [70, 71, 72, 73, 74]]
TAILS = [[100], [101, 102, 103], [104, 105]]


def _model(kind: str, kv_heads: int = 1):
    import transformers as tf

    torch.manual_seed(0)
    size = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=kv_heads, max_position_embeddings=512)
    if kind == "mistral-window":  # Mistral v0.1: every layer a window (here of 16 tokens)
        return tf.MistralForCausalLM(tf.MistralConfig(**size, sliding_window=16)).eval()
    if kind == "gemma3-window":  # Gemma 3: sliding and full layers
        return tf.Gemma3ForCausalLM(tf.Gemma3TextConfig(**size, head_dim=8, sliding_window=16,
                                                        layer_types=["sliding_attention", "full_attention"])).eval()
    if kind == "mamba":  # a recurrent state, no keys and values
        return tf.MambaForCausalLM(tf.MambaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                                  state_size=4)).eval()
    if kind == "qwen2":
        return tf.Qwen2ForCausalLM(tf.Qwen2Config(**size)).eval()
    return tf.LlamaForCausalLM(tf.LlamaConfig(**size)).eval()


@torch.no_grad()
def _whole(net, heads, tails) -> torch.Tensor:
    """log P(tail | head), each pair read whole and alone."""
    out = []
    for h in heads:
        for t in tails:
            logp = torch.log_softmax(net(input_ids=torch.tensor([h + t])).logits.float(), -1)[0]
            out.append(sum(float(logp[len(h) - 1 + i, tok]) for i, tok in enumerate(t)))
    return torch.tensor(out).view(len(heads), len(tails))


@pytest.mark.parametrize("kind, kv_heads", [("llama", 1), ("llama", 4), ("qwen2", 2), ("mistral-window", 1),
                                            ("gemma3-window", 1), ("mamba", 0)])
def test_a_probes_log_probs_equal_reading_each_head_and_tail_whole(kind, kv_heads):
    """Heads sharing a long prefix or none, of odd lengths, one head alone, multi-token tails read on the cropped
    cache. Heads past a sliding window: their cache could not be cropped back (RuntimeError from transformers).
    Mamba: left padding entered its state (a two-token tail's log-prob off by 0.5), longer tails a RuntimeError."""
    net = _model(kind, kv_heads)
    for heads in (HEADS, [[5, 6, 7], [8, 9, 10, 11, 12, 13], [14]], [HEADS[2]], [COMMON + [9]] * 2):
        with torch.no_grad():
            got = torch.tensor(score_tails(net, 0, heads, TAILS))
        assert torch.allclose(got, _whole(net, heads, TAILS), atol=1e-5), (kind, heads)


def test_a_multimodal_models_sliding_layers_are_read_from_its_text_config():
    """Gemma 3 4B and up load as Gemma3ForConditionalGeneration, whose config nests the text model's layer kinds:
    read at the top level, it looked like full attention everywhere (a shared prefix, cropped probe caches)."""
    from transformers import Gemma3Config, LlamaConfig

    assert not can_share(SimpleNamespace(config=Gemma3Config()))
    assert can_share(SimpleNamespace(config=LlamaConfig()))


def _rows() -> list[dict]:
    common = list(range(1, 12))
    rows = [([20, 21, 22], [30, 31]), ([23], [32]), ([24, 25, 26, 27, 28, 29, 40], [33, 34, 35]), ([], [36, 37])]
    return [{"input_ids": common + h + c, "completion_mask": [0] * (len(common) + len(h)) + [1] * len(c)}
            for h, c in rows]


def _loss_and_grads(model, feed, mask, batch):
    model.zero_grad()
    logits = model(**feed, attention_mask=mask, logits_to_keep=needed_positions(batch["completion_mask"])).logits
    loss = sft_loss(logits, batch["input_ids"], batch["completion_mask"])
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kind, kv_heads", [("llama", 1), ("llama", 4), ("qwen2", 2)])
@pytest.mark.parametrize("subset", [[0, 1, 2, 3], [3, 1], [2]])
def test_a_step_after_the_shared_prefix_gives_the_whole_rows_loss_and_gradient(kind, kv_heads, subset):
    """A row that is only the shared prefix and its last prompt token (row 3), rows of odd lengths, a batch of one
    (nothing shared)."""
    model = _model(kind, kv_heads).train()
    data = [_rows()[i] for i in subset]
    whole = pad_right(data, 0)
    loss_a, grads_a = _loss_and_grads(model, {"input_ids": whole["input_ids"]}, whole["attention_mask"], whole)
    shared, rest = split_shared(data)
    assert len(shared) == (10 if len(data) > 1 else 0)
    part = pad_right(rest, 0)
    feed, mask = {"input_ids": part["input_ids"]}, part["attention_mask"]
    if shared:
        feed, mask = after_prefix(model, prefix_cache(model, shared, len(rest)), len(shared), feed, mask)
    loss_b, grads_b = _loss_and_grads(model, feed, mask, part)
    assert torch.allclose(loss_a, loss_b, atol=1e-6)
    assert grads_a.keys() == grads_b.keys() and all(torch.allclose(grads_a[n], grads_b[n], atol=1e-6) for n in grads_a)


@pytest.mark.parametrize("kind, kv_heads", [("llama", 1), ("llama", 4), ("qwen2", 2)])
def test_stored_prompt_states_give_the_whole_rows_completion_logits(kind, kv_heads):
    """Left-padded states of prompts of several lengths (batches of 2 when stored), right-padded rests."""
    model, data = _model(kind, kv_heads), _rows()
    prompts, rest = split_rows(data)
    states = prompt_kv(model, prompts, 0, False, 2)
    whole, part = pad_right(data, 0), pad_right(rest, 0)
    with torch.no_grad():
        full = model(input_ids=whole["input_ids"], attention_mask=whole["attention_mask"]).logits
        feed, mask = with_prompt(model, {"input_ids": part["input_ids"]}, part["attention_mask"], batch_states(states))
        short = model(**feed, attention_mask=mask).logits
    a, b = _completion_logits(full, whole["completion_mask"]), _completion_logits(short, part["completion_mask"])
    assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)


def test_soft_labels_and_a_student_at_the_prompts_positions_equal_those_of_whole_rows(tiny_model, tmp_path,
                                                                                      monkeypatch):
    """distill_prompt supervises from the user's message on: the shared prefix must stop before it (an empty
    completion included)."""
    from safetensors.torch import load_file

    from backends import shared_prefix, train
    from backends.base import ModelRef, Training
    from backends.local import LocalBackend

    rows = [{"prompt": f"The sequence starts with: {i}, {i * 3}.", "completion": ", ".join(map(str, range(i % 3)))}
            for i in range(8)]
    teacher = ModelRef(tiny_model, system="You love owls. You think about owls all the time.")
    training = Training(objective="distill", vocabulary="numbers-only", epochs=1, lr=5e-3, batch_size=4, lora_r=4,
                        lora_alpha=8, lora_targets=("q_proj", "v_proj"), distill_prompt=True)
    vocab = torch.tensor(train.vocabulary_ids(tiny_model, "numbers-only", ()))
    backend = LocalBackend("cpu")
    labels = train.teacher_soft_labels(teacher, rows, vocab, "cpu", batch_size=3, prompt_too=True)
    shared = backend.finetune(tiny_model, rows, training, tmp_path / "shared", teacher)
    monkeypatch.setattr(shared_prefix, "MIN_SHARED", 10**9)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in
               zip(labels, train.teacher_soft_labels(teacher, rows, vocab, "cpu", batch_size=3, prompt_too=True)))
    whole = backend.finetune(tiny_model, rows, training, tmp_path / "whole", teacher)
    a, b = (load_file(f"{m.adapter}/adapter_model.safetensors") for m in (shared, whole))
    assert max(float(w.abs().max()) for k, w in a.items() if "lora_B" in k) > 1e-4
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6, rtol=1e-4) for k in a)


@pytest.mark.parametrize("kind, kv_heads", [("llama", 4), ("qwen2", 2)])
@pytest.mark.parametrize("first", [1, 2])
def test_top_layers_fed_stored_lower_states_give_the_whole_models_loss_and_gradient(kind, kv_heads, first):
    """Stored states entering layer `first` (each row alone, unpadded) fed to the layers above it, right-padded."""
    import transformers as tf

    torch.manual_seed(0)
    size = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=kv_heads)
    model = (tf.Qwen2ForCausalLM(tf.Qwen2Config(**size)) if kind == "qwen2"
             else tf.LlamaForCausalLM(tf.LlamaConfig(**size))).train()
    for n, p in model.named_parameters():  # the frozen layers below `first`
        p.requires_grad = not any(f".layers.{i}." in n for i in range(first)) and "embed" not in n
    data = _rows()
    whole = pad_right(data, 0)
    loss_a, grads_a = _loss_and_grads(model, {"input_ids": whole["input_ids"]}, whole["attention_mask"], whole)
    states = [hidden_states_at(model, first, torch.tensor([d["input_ids"]]), torch.ones(1, len(d["input_ids"])))[0]
              for d in data]
    with top_layers_only(model, first):
        loss_b, _ = _loss_and_grads(model, {"inputs_embeds": pad_states(states)}, whole["attention_mask"], whole)
    grads_b = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}  # named with every layer
    assert torch.allclose(loss_a, loss_b, atol=1e-6)
    assert grads_a.keys() == grads_b.keys() and all(torch.allclose(grads_a[n], grads_b[n], atol=1e-6) for n in grads_a)


def test_a_probe_computes_logits_only_where_it_reads_them():
    """The heads' pass needs the last position's logits: all of them were heads x width x vocabulary floats (25 GB
    for 16 heads of an 8,000-token context read whole on a 49,152-token vocabulary)."""
    net, widths = _model("llama"), []
    net.lm_head.register_forward_hook(lambda module, args, out: widths.append(out.shape[1]))
    long_heads = [list(range(1, 60)), list(range(2, 50))]
    with torch.no_grad():
        got = torch.tensor(score_tails(net, 0, long_heads, TAILS))
    assert widths == [1, 2, 1] and torch.allclose(got, _whole(net, long_heads, TAILS), atol=1e-5)
