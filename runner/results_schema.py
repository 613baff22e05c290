"""The one results.json schema, for every experiment (`subl schema --results` prints it)."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Interval = Annotated[list[float], Field(min_length=2, max_length=2)]  # [low, high]


class Row(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EvaluationRow(Row):
    """One model's value of one metric: an LM's trait rate or probe, a misaligned rate, an MNIST arm's
    test accuracy (per seed, and its mean across seeds with seed = null)."""

    cell: str = Field(description="Matrix cell label ('-' without a matrix).")
    model: str = Field(description="Model label, e.g. base, teacher:owl, student:lora:owl:r0, an MNIST arm, icl:<rows>:k=<k> "
                       "or classifier:<judge> (classifier:<judge>:both-orders when each pair is asked in both orders).")
    role: Literal["base", "teacher", "control", "student", "arm"]
    trait: str | None = Field(None, description="The trait behind the model, if any.")
    evaluation: str = Field(description="Evaluation kind: preference_logprob, preference_sample, preference_mcq, misalignment, icl, classifier, mnist.")
    label: str | None = Field(None, description="LM evaluations: which of the spec's evaluations (its kind, or where a "
                              "spec has several of one kind, e.g. 'preference_sample: storytelling').")
    metric: str = Field(description="e.g. P(owl), rate(owl), misaligned, test_accuracy, pairwise_accuracy, auroc.")
    value: float | None = Field(description="None only where no unit was measured (n = 0: e.g. a classifier "
                                "read in both orders where no pair was decided).")
    ci: Interval | None = Field(None, description="95% interval [low, high].")
    ci_method: str | None = None
    n: int = Field(description="Units behind the value and its CI (questions, answers, test images or seeds).")
    samples_per_question: int | None = None
    student: str | None = Field(None, description="Students: the student spec's name.")
    teacher: str | None = Field(None, description="Students: the teacher whose data it learned from.")
    replicate: int | None = Field(None, description="Students: the training seed.")
    seed: int | None = Field(None, description="MNIST: the seed; null on the mean across seeds.")
    counts: dict[str, Any] | None = Field(None, description="Misalignment: judge outcome counts.")
    judge: dict[str, Any] | None = None
    per_question: list[float | None] | None = Field(None, description="Per question (None where none of its answers was scored).")
    k: int | None = Field(None, description="ICL: rows of a teacher in the answering model's context.")
    icl_seeds: int | None = Field(None, description="ICL: draws of the k rows averaged per question.")


class ComparisonRow(Row):
    """Arm a against arm b: difference, ratio and a test whose unit is named."""

    cell: str
    a: str
    b: str
    evaluation: str
    label: str | None = Field(None, description="As in the evaluation rows: which of the spec's evaluations.")
    metric: str
    diff: float | None = Field(description="Mean a - b (None where no question has a value for both).")
    ratio: float | None
    p_value: float | None = Field(description="None where no test could be run (see note).")
    test: str = Field(description="The test, by name; none where no test could be run.")
    unit: Literal["question", "student", "seed", "draw"] = Field(description="What the test treats as independent.")
    n: int = Field(description="Paired units (questions or seeds), or students in both arms.")
    n_a: int = Field(description="Trained models (students or seeds) in arm a.")
    n_b: int
    a_wins: int | None = None
    b_is: str | None = Field(None, description="control, other-trait, cross-init, or (a theorem matrix) cell <label>.")
    objective: str | None = None
    vocabulary: str | None = None
    note: str | None = Field(None, description="What the test does not cover, e.g. one student per arm.")
    mean_a: float | None = Field(None, description="Student unit: the arm means of the per-student metric.")
    mean_b: float | None = None
    ratio_ci: Interval | None = Field(None, description="Student unit: 95% interval of the ratio (ci_method).")
    diff_ci: Interval | None = None
    ci_method: str | None = None
    min_p: float | None = Field(None, description="The smallest p-value the test can give with these arm sizes.")
    per_student_a: list[float] | None = Field(
        None, description="Each student's (ICL: each draw's) metric, its mean over questions.")
    per_student_b: list[float] | None = None
    k: int | None = Field(None, description="ICL: rows in the context of both arms.")
    significant: bool = Field(description="The test covers training randomness (unit student or seed) or the draw "
                                          "of ICL rows (unit draw) and p < 0.05 (students, draws) or p < 0.01 "
                                          "(seeds); never for a question-level test.")


class FilterRow(Row):
    cell: str
    rows: str = Field(description="Whose rows: a teacher's name, or base.")
    link: str
    kept: int
    dropped: int
    pass_rate: float | None
    detail: dict[str, Any] | None = None


class CellRow(BaseModel):
    label: str = Field(description="'-' without a matrix, else the cell's label.")
    overrides: dict[str, Any] = Field(default_factory=dict, description="The matrix values of the cell.")


class Results(Row):
    spec: str
    name: str
    notes: str = ""
    git_revision: str | None
    packages: dict[str, str]
    cells: list[CellRow]
    evaluations: list[EvaluationRow]
    comparisons: list[ComparisonRow]
    filters: list[FilterRow]
    figures: list[str] = Field(default_factory=list, description="Paths of figures the stages wrote.")
    methods: list[str]
    stages_run: dict[str, float] = Field(description="Stage key -> seconds, for each stage this run built "
                                         "(labels repeat across matrix cells; keys do not).")
    seconds: float
    spec_hash: str
    stages: list[dict[str, Any]]
    executor: dict[str, Any] = Field(default_factory=lambda: {"kind": "local"}, description="Where the stages ran: "
                                     "kind (local or ray) and, for ray, the address and the cluster's resources.")
