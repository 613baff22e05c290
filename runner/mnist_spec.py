"""Settings of the MNIST auxiliary-logit experiment (no torch import, so specs load fast)."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class MnistSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    data: str | None = Field(None, description="MNIST .npz (x_train, y_train, x_test, y_test) or folder of "
                             "IDX files (.gz or not; a relative path is read from the folder of the spec file that sets "
                             "it); None: default locations, then torchvision download")
    m: int = Field(3, ge=1, description="number of auxiliary logits (output size is 10 + m)")
    hidden: int = Field(256, ge=1, description="width of both hidden layers")
    init: Literal["paper", "pytorch"] = Field("paper", description="paper: weights N(0, 1/fan_in), zero "
                                              "biases; pytorch: nn.Linear default (weaker effect)")
    teacher_epochs: int = Field(5, ge=0, description="teacher epochs on MNIST train (CE on regular logits)")
    student_epochs: int = Field(5, ge=0, description="student epochs of noise distillation")
    lr: float = Field(3e-4, gt=0, description="Adam learning rate (teacher and students)")
    batch_size: int = Field(1024, ge=1, description="batch size (teacher and students)")
    loss: Literal["kl", "mse"] = Field("kl", description="student loss on the distilled logits: KL of "
                                       "temperature softmaxes, or MSE of logits")
    temperature: float = Field(1.0, gt=0, description="softmax temperature for loss: kl")
    noise: Literal["uniform", "gaussian"] = Field("uniform", description="student inputs: uniform in "
                                                  "[-1, 1] or standard normal, per pixel")
    noise_per_epoch: int = Field(60000, ge=1, description="noise images per student epoch")
    cross_init: Literal["fresh", "permuted"] = Field("fresh", description="cross-init student start: a fresh "
                                                     "independent draw, or the reference init with hidden "
                                                     "units deranged (same function, other parameters; "
                                                     "training is permutation-equivariant, so this matches "
                                                     "same_init: a symmetry check, not a negative control)")
    all_logit_student: bool = Field(False, description="also distil a same-init student on all 10+m logits")
    seeds: int = Field(5, ge=1, description="number of seeds, trained together as batched models")

    @model_validator(mode="after")
    def _m1_kl(self):
        if self.m == 1 and self.loss == "kl":
            raise ValueError("m=1 with loss=kl gives no gradient (the softmax of one logit is constant), "
                             "so the student stays at its init; use loss: mse or m >= 2")
        if self.cross_init == "permuted" and self.hidden < 2:
            raise ValueError("cross_init: permuted needs hidden >= 2 (no derangement of one unit)")
        return self
