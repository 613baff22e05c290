"""What each kind of backend can do: the one table that spec validation reads.

`logprob judge`: exact log-probs of the scores after an answer prefix; `top logprobs judge`: the first
reply token's top-N log-probs as a chat API returns them (OpenAI: at most 20).
`local` is the in-process backend; the others are `backends.<name>.kind` values. The README's
"Hosted open models" section shows the same table; a test checks that the two agree.
"""
from __future__ import annotations

FEATURES: dict[str, dict[str, bool]] = {
    "local": {
        "sample": True, "logprob probe": True, "logprob judge": True, "top logprobs judge": False,
        "constrained decoding": True, "sft": True, "distill": True, "distill teacher": True, "lora": True,
        "full fine-tuning": True, "lora alpha": True, "lr": True, "lr multiplier": False, "auto batch size": False,
        "fractional epochs": True, "lora layers": True, "frozen prompt": True,
    },
    "openai": {  # the provider picks the method (neither lora nor full is chosen) and the learning rate
        "sample": True, "logprob probe": False, "logprob judge": False, "top logprobs judge": True,
        "constrained decoding": False, "sft": True, "distill": False, "distill teacher": False, "lora": False,
        "full fine-tuning": False, "lora alpha": False, "lr": False, "lr multiplier": True, "auto batch size": True,
        "fractional epochs": False, "lora layers": False, "frozen prompt": False,
    },
    "tinker": {  # distill: on the teacher's top-k next tokens (see backends/tinker_api.py)
        "sample": True, "logprob probe": True, "logprob judge": True, "top logprobs judge": False,
        "constrained decoding": False, "sft": True, "distill": True, "distill teacher": True, "lora": True,
        "full fine-tuning": False, "lora alpha": False, "lr": True, "lr multiplier": False, "auto batch size": False,
        "fractional epochs": True, "lora layers": False, "frozen prompt": False,
    },
}


# Backends that adapt modules in whole groups (Tinker: attention, MLP, unembedding): lora_targets must list
# whole groups there, or the service would train more than the spec says
LORA_GROUPS: dict[str, tuple[frozenset[str], ...]] = {
    "tinker": (frozenset({"q_proj", "k_proj", "v_proj", "o_proj"}), frozenset({"gate_proj", "up_proj", "down_proj"}),
               frozenset({"lm_head"})),
}


def supports(kind: str, feature: str) -> bool:
    """Whether a backend kind offers a feature; an unknown feature name is a programming error."""
    return FEATURES[kind][feature]
