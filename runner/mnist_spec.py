"""Settings of the MNIST auxiliary-logit experiment (no torch import, so specs load fast)."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class MnistSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

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
    noise_set: Literal["fresh", "fixed"] = Field("fresh", description="fresh: new noise images every batch; "
                                                 "fixed (the paper's): each seed draws noise_per_epoch images once "
                                                 "from its noise generator and reuses them every epoch in a new "
                                                 "order, for every student arm; holds seeds x noise_per_epoch x 784 "
                                                 "floats (188 MB per seed at 60,000)")
    cross_init: Literal["fresh", "permuted"] = Field("fresh", description="cross-init student start: a fresh "
                                                     "independent draw, or the reference init with hidden "
                                                     "units deranged (same function, other parameters; "
                                                     "training is permutation-equivariant, so this matches "
                                                     "same_init: a symmetry check, not a negative control)")
    all_logit_student: bool = Field(False, description="also distil a same-init student on all 10+m logits")
    all_logit_cross_student: bool = Field(False, description="also distil a cross-init student on all 10+m "
                                          "logits (the paper's fourth arm)")
    seeds: int = Field(5, ge=1, description="number of seeds, trained together as batched models: the spec's seed "
                       "s runs seeds s..s+seeds-1, so a replication with new models starts at s+seeds or above "
                       "(seed: 1 shares four of seed: 0's five teachers, inits and students)")

    @model_validator(mode="after")
    def _m1_kl(self):
        if self.m == 1 and self.loss == "kl":
            raise ValueError("m=1 with loss=kl gives no gradient (the softmax of one logit is constant), "
                             "so the student stays at its init; use loss: mse or m >= 2")
        if self.cross_init == "permuted" and self.hidden < 2:
            raise ValueError("cross_init: permuted needs hidden >= 2 (no derangement of one unit)")
        return self


class TheoremSpec(BaseModel):
    """The one-step theorem measured on MNIST (experiment: theorem_mnist): for a teacher trained from a
    reference init, one small step of a student's auxiliary-logit distillation on noise, from the same
    init or another, compared with the teacher's parameter delta."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    data: str | None = Field(None, description="MNIST as for mnist.data (a relative path is read from the folder "
                             "of the spec file that sets it); None: the default locations")
    hidden: int = Field(256, ge=1, description="width of both hidden layers (the paper: 256)")
    m: int = Field(3, ge=1, description="auxiliary logits (the paper: 3)")
    init: Literal["paper", "pytorch"] = Field("paper", description="initialisation of reference and cross inits")
    teacher_steps: int = Field(300, ge=1, description="Adam steps of the teacher on MNIST (the paper's 5 epochs: "
                               "about 295); few steps keep it near its init, where the first-order argument holds")
    teacher_lr: float = Field(3e-4, gt=0, description="the teacher's Adam learning rate")
    batch_size: int = Field(1024, ge=1, description="teacher batch and student noise batch")
    heldout: int = Field(1000, ge=1, description="training images held out from the teacher for the imitation loss")
    objective: Literal["aux", "all"] = Field("aux", description="the student's loss: KL on the auxiliary logits "
                                             "(the paper's students) or on all logits")
    lr: float = Field(0.1, gt=0, description="the student's plain gradient step")
    lrs: list[Annotated[float, Field(gt=0)]] = Field([0.01, 0.1, 1.0, 3.0, 10.0, 30.0, 100.0], min_length=1,
                             description="step sizes of the sweep: where the first-order guarantee stops holding")
    seeds: int = Field(5, ge=2, description="seeds (reference init, cross init and teacher each): the spec's seed s "
                       "runs s..s+seeds-1, so a replication with new models starts at s+seeds or above")
    batches: int = Field(3, ge=1, description="noise batches per seed (averaged within a seed)")

    @model_validator(mode="after")
    def _m1_aux(self):
        if self.m == 1 and self.objective == "aux":
            raise ValueError("m=1 with objective: aux gives no gradient (the softmax of one logit is constant), so "
                             "both arms would read as 'no alignment'; use m >= 2 or objective: all")
        return self
