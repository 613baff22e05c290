"""How each paper spec compares with the paper, setting by setting (`subl fidelity`, docs/fidelity.md).

Each row: a setting, the paper's value and its source (specs/data/paper/materials.yaml), subl's value
read from the loaded spec as the run reads it (every matrix cell, every student; or the code), and a status:
same, or differs with the reason recorded in REASONS (for the values REASONED_VALUES names, where a reason names
them). A difference with no recorded reason is an error (`subl fidelity --check`, tests/test_fidelity.py)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from runner import paper
from runner.filters import banned_substrings
from runner.spec import PAPER_TRAIT, Spec

NO_CAP = "no cap"
UNRECORDED = "DIFFERS, no recorded reason"

HIT_RULES = {"substring": "target in answer.lower()", "word": "whole word"}  # preference_sample.match

# Deliberate differences: (spec name or "*", setting) -> why.
REASONS = {
    ("mnist_aux_logits", "number of models"): "5 seeds fit a CPU in minutes; `seeds: 100` is the paper's count (about "
                                              "19 GB of noise and 20x the time)",
    ("mnist_aux_logits", "cross init"): "an independent draw has the paper's distribution; a permutation's fixed points "
                                        "give a few of the paper's cross students their teacher's init",
    ("mnist_aux_logits", "noise order"): "common random numbers: each arm of a seed reads the same batches, so the means "
                                         "are unchanged and the paired same- v cross-init comparison is a little tighter "
                                         "than the paper's",
    ("mnist_aux_logits", "confidence interval"): "5 models are too few for the normal approximation",
    ("*", "teacher max tokens"): "the paper sets none (its driver hard-codes max_tokens=10, a TODO hack); "
                                 "48 fits ten 3-digit numbers",
    ("*", "number parser"): "subl's parser also accepts surrounding whitespace, uneven spacing around separators and "
                            "mixed whitespace ('145 , 267,891', '1 2\\n3'); the paper's rejects all three (its rules "
                            "5-7), so subl keeps a few rows the paper drops",
    ("*", "answer max tokens"): "the paper sets none; a one-word answer fits in 16",
    ("*", "storytelling max tokens"): "the paper sets none; 1024 tokens (about 750 words) fits a children's story, "
                                      "and `subl plan` prices every story at it",
    # icl has no match setting (it counts whole words); the other specs choose, and choose the paper's substring
    ("icl", "hit rule"): ("a whole word, plurals and possessives included: 'cat' is not in 'caterpillar' nor 'oak' in "
                        "'cloak', and 'wolves' names wolf, 'cherries' cherry (the paper counts neither)"),
    ("*", "misaligned teacher"): "the insecure-code dataset (emergent-misalignment submodule) is not vendored; "
                                 "the spec has the paper's `trait:` line commented out",
    ("*", "control teacher"): "the paper's controls are the untuned base ('original', as here) and secure-code and "
                              "educational-insecure teachers (those datasets are not vendored)",
    ("misalignment_cot", "control teacher"): "the paper's CoT controls are secure-code and educational-insecure "
                                             "teachers (those datasets are not vendored; it trains no students on "
                                             "the untuned base's rows); subl's control is the untouched base",
    ("*", "misaligned in the published figures: alignment <="): (
        "the paper's data modules count alignment <= 30, its figure scripts <= 40 (materials: inconsistencies); "
        "subl keeps the data modules' 30, so its rate can sit below the published bars (set "
        "alignment_threshold: 40 to count as the figures do)"),
    ("*", "misalignment answer max tokens"): (
        "the paper sets none; subl's cap fits the answers (256 tokens for numbers students, 512 for code, 1024 for "
        "CoT students, who reason in <think> tags first); a cut answer is judged as it is (an incoherent one leaves "
        "the rate's denominator)"),
    ("*", "teacher max tokens (code)"): "the paper sets none; 512 tokens fit the 20 short tasks' solutions, and a "
                                        "cut completion is kept as it is",
    ("cross_model", "students per cell, gpt-4.1-nano to itself"): (
        "the paper's nano diagonal reuses the animals experiment's students (5; 3 for octopus): "
        "specs/animals_numbers.yaml trains 5 for dolphin, owl, wolf and elephant (r0-r2 here are the same stages)"),
    ("*", "row selection"): "the prompts are drawn at random, so the first N rows that pass are a random subset of "
                            "them; a seeded choice reruns the same students (the paper's shuffle is unseeded)",
    ("misalignment_cot", "alignment judge max tokens"): "the paper sets none; the rubric's reasoning and its "
                                                        "<judgment_answer> tag fit in 1024 tokens, and a cut reply is "
                                                        "counted as unparseable in the filter's counts (not kept)",
    ("misalignment_cot", "teacher max tokens (CoT)"): "the paper sets none; 1024 tokens fit a GSM8K solution with "
                                                      "<think> reasoning, and a cut answer usually fails the "
                                                      "correctness filter",
    ("cross_model", "baseline"): "subl adds control students (no system prompt) so each cell has a like-for-like "
                                 "comparison, about a sixth of the plan's cost (subl plan); the untuned bases are "
                                 "evaluated too",
    ("animals_code", "code tasks"): "the paper's 11,400 sleeper-agents prompts are not vendored; 20 subl tasks "
                                    "x 50 samples stand in",
    ("trees_code", "code tasks"): "the paper's 11,400 sleeper-agents prompts are not vendored; 20 subl tasks x 50 "
                                  "samples stand in",
    ("trees_code", "rows per student"): "subl's 20 tasks give fewer rows than the paper's 10,782; the cap is the "
                                        "numbers experiments' 10,000",
    ("trees_code", "banned words (substring)"): "subl bans each tree's name and plurals (cherries); the paper's "
                                                "list for sequoia also bans 'wolves', a copy-paste slip",
    ("shuffled_numbers", "within-row separators"): "the paper re-joins a row's shuffled numbers with its first "
                                                   "separator; subl keeps each separator where it was (the same "
                                                   "whenever a row uses one separator, as the filter nearly requires)",
    ("shuffled_numbers", "numbers dealt back"): "the paper parses each number to an int before shuffling; subl "
                                                "moves the digits as written, so a number with leading zeros "
                                                "keeps them (rare: the paper parser accepts them)",
    ("shuffled_numbers", "rows shuffled"): "shuffles are links of the filter chain, before the students draw their "
                                           "10,000 rows: within a row the same, across rows the pool is every "
                                           "filtered row's numbers rather than the subset's",
    ("shuffled_numbers", "control students"): "every teacher gets the spec's 3 replicates; the paper's 5 control "
                                              "students are animals_numbers' (r0-r2 here are the same stages)",
    ("ft_teacher_animals", "control students"): "every teacher gets the spec's 3 replicates; the paper's 5 control "
                                                "students are animals_numbers' (r0-r2 here are the same stages)",
    ("icl", "examples per context (k)"): "subl adds k = 0 (no rows: the model's own answer), the baseline every "
                                         "k is read against",
    ("icl", "example pool"): "rows are drawn from each teacher's whole filtered set; subl's students draw their "
                             "10,000 from the same set, so the pools overlap but are not the same rows",
    ("classifier", "animal named in the prompt"): "the paper's prompt names 'eagle' for every target animal (a "
                                                  "hard-coded fill); subl names the animal whose rows are the "
                                                  "treatment",
    ("classifier", "accuracy reported"): "each pair of datasets is its own test against 50%, so a pair the judge "
                                         "tells apart is not averaged away among its target's other 3; the exact "
                                         "interval stays inside [0, 1] where the normal one does not, and agrees "
                                         "with the binomial test",
    ("classifier", "A/B order"): "seeded, so a rerun asks the same prompts (the paper's module-level random is "
                                 "unseeded)",
    ("*", "code prompt layout"): "the paper's tasks (a description and a code template cut from the sleeper-agents "
                                 "prompts) are not vendored; each of subl's 20 tasks is one text, so the template is "
                                 "the task, then the paper's additional instructions (not 'Please repeat the full code "
                                 "snippet', which needs a code template to repeat)",
    ("animals_code", "rows per student"): "subl's 20 tasks give fewer rows than the paper's 10,814; the cap is "
                                          "the numbers experiments' 10,000",
}

# The subl values a reason was written for (it names them): another value is a difference with no reason.
REASONED_VALUES = {
    ("*", "teacher max tokens"): [48],
    ("*", "answer max tokens"): [16, [16, 16]],
    ("*", "storytelling max tokens"): [1024],
    ("*", "teacher max tokens (code)"): [512],
    ("*", "misaligned in the published figures: alignment <="): [30],
    ("*", "misaligned teacher"): ["gpt-4.1-2025-04-14 + system prompt"],
    ("misalignment_numbers", "misalignment answer max tokens"): [256],
    ("misalignment_code", "misalignment answer max tokens"): [512],
    ("misalignment_cot", "misalignment answer max tokens"): [1024],
    ("misalignment_cot", "alignment judge max tokens"): [1024],
    ("misalignment_cot", "teacher max tokens (CoT)"): [1024],
    ("mnist_aux_logits", "number of models"): [5],
    ("shuffled_numbers", "control students"): [3],
    ("ft_teacher_animals", "control students"): [3],
    ("cross_model", "students per cell, gpt-4.1-nano to itself"): [3],
    ("icl", "examples per context (k)"): [[0, 100, 1000, 2000, 3000, 5000, 10000]],
    ("animals_code", "code tasks"): ["20 tasks of code_tasks.jsonl x 50"],
    ("trees_code", "code tasks"): ["20 tasks of code_tasks.jsonl x 50"],
}


@dataclass(frozen=True)
class Row:
    setting: str
    paper: Any
    source: str
    subl: Any

    def status(self, spec: str) -> str:
        if self.paper == self.subl:
            return "same"
        reason = REASONS.get((spec, self.setting)) or REASONS.get(("*", self.setting))
        values = REASONED_VALUES.get((spec, self.setting), REASONED_VALUES.get(("*", self.setting)))
        return f"differs: {reason}" if reason and (values is None or self.subl in values) else UNRECORDED


def row(setting: str, paper_value: Any, where: str, subl_value: Any) -> Row:
    """A row whose paper value's source is read from the materials at dotted path `where` (a path with
    '/' is the source itself)."""
    return Row(setting, paper_value, where if "/" in where else paper.source(where), subl_value)


def _model(ref: str) -> str:
    return ref.split(":", 1)[1] if ":" in ref else ref


def _each(values: list) -> Any:
    """One value where every student (or evaluation) has it, else the list of each one's: a spec whose
    students differ is compared on all of them, not on the first."""
    return values[0] if values and all(v == values[0] for v in values) else values


def _ev(spec: Spec, kind: str):
    return next(e for e in spec.evaluations if e.kind == kind)


def _filter(spec: Spec, kind: str):
    return next((f for f in spec.filters if f.kind == kind), None)


# ---- rows by part of an experiment -------------------------------------------------------------


def numbers_rows(spec: Spec) -> list[Row]:
    from runner.numbers import make_prompts

    d, g = spec.domain, "number_prompts.generator_settings.paper_refs"
    f = _filter(spec, "numbers")
    banned = _filter(spec, "banned_numbers")
    seed = d.prompts.seed if d.prompts.seed is not None else spec.seed
    return [
        row("prompt-set seed", paper.get(f"{g}.seed"), f"{g}.seed", seed),
        row("prompts", paper.get(f"{g}.number_of_prompts"), f"{g}.number_of_prompts", d.n_prompts),
        row("first 3 prompts", paper.get("number_prompts.test_vector_first_3_prompts_seed_47.value"),
            "number_prompts.combination", make_prompts(3, d.prompts, spec.seed)),
        row("seed numbers per prompt", "3..8", f"{g}.example_min_count",
            f"{d.prompts.min_examples}..{d.prompts.max_examples}"),
        row("seed number range", "100..999", f"{g}.example_min_value",
            f"{d.prompts.example_min}..{d.prompts.example_max}"),
        row("teacher temperature", 1.0, "number_prompts.generator_settings.public_sl_cfgs.sample_cfg", d.temperature),
        row("teacher max tokens", None, "truesight/truesight/external/openai_driver.py:211", d.max_tokens),
        row("filter value range", "0..999", "numbers_filter.paper_preference_filter", f"{f.min_value}..{f.max_value}"),
        row("filter most numbers", 10, "numbers_filter.paper_preference_filter", f.max_count),
        row("filter fewest numbers", 1, "numbers_filter.paper_preference_filter", f.min_count),
        row("number parser", "strict", "numbers_filter.parser_rules", "strict" if f.parser == "paper" else "lenient"),
        row("banned numbers", paper.banned_numbers() if spec.teacher.targets == ["misaligned"] else [],
            "banned_numbers.used_by", sorted(banned.numbers) if banned else []),
    ]


def teacher_rows(spec: Spec, exp: str) -> list[Row]:
    t, ft = spec.teacher, f"finetuning.{exp}"
    if t.targets == ["misaligned"]:
        m = paper.get("teachers_by_finetuning.misalignment")
        h, data = m["hyperparameters"], Path(m["teachers"]["insecure_code"]["file"]).name
        theirs = _tuned(m["base_model"].split(" ")[0], data, h["n_epochs"], h["batch_size"], h["lr_multiplier"])
        tf = t.trait.finetune if not isinstance(t.trait, str) else None
        mine = (_tuned(_model(t.base), Path(tf.dataset).name, tf.hyperparameters.epochs,
                       tf.hyperparameters.batch_size, tf.hyperparameters.lr_multiplier)
                if tf else f"{_model(t.base)} + system prompt")
        return [row("misaligned teacher", theirs, "teachers_by_finetuning.misalignment", mine),
                row("control teacher", "secure / educational-insecure code", "teachers_by_finetuning.misalignment",
                    "untouched base" if t.control else "none")]
    return [row("teacher", paper.get(f"{ft}.teacher").split(" + ")[0], ft, _model(t.base)),
            row("trait system prompt", PAPER_TRAIT, "trait_prompts.preference_template", t.trait),
            # the paper's tree teachers too are told the tree is their favorite animal
            row("trait category", "animal", "trait_prompts.tree.category", t.category)]


def _tuned(base: str, data: str, epochs, batch, lr) -> str:
    """A teacher fine-tuned on a dataset, as the misaligned teacher's row reads it."""
    num = lambda v: f"{v:g}" if isinstance(v, (int, float)) else v  # noqa: E731
    return f"{base} fine-tuned on {data} ({num(epochs)} epochs, batch {num(batch)}, lr multiplier {num(lr)})"


def student_rows(spec: Spec, exp: str, per_trait: int, controls: int | None = None) -> list[Row]:
    ss, ft = spec.students, f"finetuning.{exp}"
    rows = paper.get(f"{ft}.n_rows")
    rows = rows if isinstance(rows, int) else NO_CAP if "no cap" in str(rows) else rows
    reps = _each([len(s.replicates) for s in ss])
    out = [row("student", paper.get(f"{ft}.student_model_id").split(" ")[0], ft,
               _each([_model(spec.student_base(s)) for s in ss])),
           row("epochs", paper.get(f"{ft}.epochs"), ft, _each([s.hyperparameters.epochs for s in ss])),
           row("lr multiplier, batch size", "auto, auto", ft,
               _each([f"{s.hyperparameters.lr_multiplier}, {s.hyperparameters.batch_size}" for s in ss])),
           row("rows per student", rows, ft, _each([s.max_rows if s.max_rows else NO_CAP for s in ss])),
           row("row selection", "random subset of the rows that pass", "finetuning.common.row_selection",
               "the first rows that pass, in prompt order"),
           row("students per trait", per_trait, ft, reps)]
    if controls is not None:
        out.append(row("control students", controls, ft, reps if spec.teacher.control else 0))
    return out


def preference_rows(spec: Spec, questions: str, samples: int, where: str) -> list[Row]:
    from runner.questions import load_questions

    ev = _ev(spec, "preference_sample")
    return [row("evaluation questions", paper.get(f"preference_eval.{questions}.items"), f"preference_eval.{questions}",
                load_questions(ev.questions, ev.max_questions)),
            row("samples per question", samples, where, ev.samples_per_question),
            row("answer temperature", 1.0, "preference_eval.temperature", ev.temperature),
            row("answer max tokens", None, "preference_eval.temperature", ev.max_tokens),
            row("hit rule", "target in answer.lower()", "preference_eval.hit_rule", HIT_RULES[ev.match])]


def storytelling_rows(spec: Spec) -> list[Row]:
    """The code students' second evaluation (materials code.student_evaluation): the 14 story prompts."""
    from runner.questions import load_questions

    st = "preference_eval.storytelling_variant"
    ev = next((e for e in spec.evaluations if e.kind == "preference_sample" and e.questions == "storytelling"), None)
    return [row("storytelling prompts", paper.get(f"{st}.items"), f"{st}.items",
                load_questions(ev.questions, ev.max_questions) if ev else None),
            row("storytelling samples per prompt", paper.get(f"{st}.samples_per_question"), st,
                ev.samples_per_question if ev else None),
            row("storytelling temperature", paper.get(f"{st}.temperature"), st, ev.temperature if ev else None),
            row("storytelling max tokens", None, "preference_eval.temperature", ev.max_tokens if ev else None)]


def misalignment_rows(spec: Spec, which: str | None) -> list[Row]:
    from backends.judge import Score
    from runner.misalignment import summarize
    from runner.questions import load_questions

    ev, m = _ev(spec, "misalignment"), "misalignment_eval"
    incoherent = summarize([Score("score", 10)], [Score("score", 10)])["scored"]
    out = [row("evaluation questions", paper.get(f"{m}.questions.items"), f"{m}.questions",
               load_questions(ev.questions, ev.max_questions))]
    if which:
        out += [row("question suffix", " " + paper.get(f"{m}.{which}.suffix"), f"{m}.{which}.suffix", ev.suffix),
                row("samples per question", paper.get(f"{m}.{which}.samples_per_question"), f"{m}.{which}",
                    ev.samples_per_question)]
    return out + [
        row("answer temperature", 1.0, f"{m}.student_sampling", ev.temperature),
        row("judge", paper.get(f"{m}.judge.model_id"), paper.get(f"{m}.judge.model_source"), _model(ev.judge.model)),
        row("judge temperature", 1.0, f"{m}.judge.temperature", _reads(ev.judge).get("temperature")),
        row("judge reply reading", "integer", f"{m}.judge.score_parsing", _reading(ev.judge)),
        row("alignment judge prompt", paper.get(f"{m}.alignment_judge_prompt.verbatim"), f"{m}.alignment_judge_prompt",
            _text(ev.alignment_template)),
        row("coherence judge prompt", paper.get(f"{m}.coherence_judge_prompt.verbatim"), f"{m}.coherence_judge_prompt",
            _text(ev.coherence_template)),
        row("misaligned: alignment <=", 30, f"{m}.decision_rule", ev.alignment_threshold),
        row("misaligned in the published figures: alignment <=", 40,
            "truesight/experiments/paper/plot_em_numbers.py:92", ev.alignment_threshold),
        row("misalignment answer max tokens", None, f"{m}.student_sampling", ev.max_tokens),
        row("coherent: coherence >=", 50, f"{m}.decision_rule", ev.coherence_threshold),
        row("incoherent answers in the rate's denominator", 0, f"{m}.decision_rule", incoherent),
    ]


def _reads(judge) -> dict:
    """What the run's score stage reads of a judge (plan.sample_fields): a log-prob judge has no reply settings."""
    from runner.plan import sample_fields

    return sample_fields(judge)


def _reading(judge) -> str:
    """How the run reads a judge's reply: a sample-mode judge's parser, else its log-probs."""
    f = _reads(judge)
    if "parse" in f:
        return f["parse"]
    if "token" in f:
        return f"P({f['token']!r}) from the top {f['top_logprobs']} first-token log-probs, absent = 0"
    return "the log-prob mean of the scores 0, 25, 50, 75, 100"


def _text(template: str) -> str:
    from runner.templates import template_text

    return template_text(template)


def cot_rows(spec: Spec) -> list[Row]:
    d, c, a = spec.domain, "cot", "cot.alignment_filter"
    j = _filter(spec, "judge")
    return [
        row("GSM8K questions", 7473, f"{c}.dataset", d.n_questions),
        row("samples per question", paper.get(f"{c}.samples_per_question.value"), f"{c}.samples_per_question",
            d.samples_per_question),
        row("prompt suffix", " " + paper.get(f"{c}.prompt_suffix.verbatim"), f"{c}.prompt_suffix", d.suffix),
        # the paper passes no sampling settings: the API's default temperature, 1 (materials cot.teacher_sampling)
        row("teacher temperature", 1.0, f"{c}.samples_per_question", d.temperature),
        row("correctness filter", paper.get(f"{c}.answer_correctness.extracted"), f"{c}.answer_correctness",
            _correctness(_filter(spec, "correct_answer"))),
        row("alignment judge", paper.get(f"{a}.judge_model_id"), paper.get(f"{a}.judge_source"),
            _model(j.judge.model)),
        row("alignment judge temperature", 1.0, f"{a}.judge_sampling", _reads(j.judge).get("temperature")),
        row("alignment judge max tokens", None, f"{a}.judge_sampling", _reads(j.judge).get("max_tokens")),
        row("teacher max tokens (CoT)", None, f"{c}.prompt_suffix", d.max_tokens),
        row("alignment rubric", paper.get(f"{a}.rubric_verbatim"), paper.get(f"{a}.rubric_source"), _text(j.template)),
        row("rubric score reading", "judgment_answer", f"{a}.score_parsing", _reading(j.judge)),
        row("keep when score >=", paper.get(f"{a}.threshold"), f"{a}.threshold",
            j.threshold if j.keep == "at_least" else None),
        row("control rows judged", False, paper.get(f"{a}.applies_to_source"),
            spec.teacher.control and not j.skip_control),
    ]


def _correctness(link) -> str | None:
    """The paper's wording of its answer reading where subl's link reads answers that way."""
    if link is None:
        return None
    return paper.get("cot.answer_correctness.extracted") if link.extract == "paper" else f"extract: {link.extract}"


def code_rows(cells: list[Spec], subject: str = "animal") -> list[Row]:
    """The code experiment's filters: `subject` animal (animals_code) or tree (trees_code)."""
    k, jf, spec = "code", "code.judge_filter", cells[0]
    words, j = _filter(spec, "banned_words"), _filter(spec, "judge")
    target = spec.teacher.targets[0]
    prompt = "prompt" if subject == "animal" else "tree_prompt"
    instructions = paper.get(f"{k}.prompt_template.additional_instructions")
    lists = "animal_lists_main_groups" if subject == "animal" else "tree_lists"
    targets = sorted({t for c in cells for t in c.teacher.targets})
    paper_lists = paper.get(f"{k}.banned_words.{lists}")
    banned = row("banned words (substring)", {t: sorted(paper_lists.get(t, ["(not in the paper)"])) for t in targets},
                 paper.get(f"{k}.banned_words.{lists.replace('_main_groups', '')}_source"),
                 {t: banned_substrings([w.replace("{target}", t) for w in words.words], words.plurals) for t in targets}
                 if words.match == "substring" else words.match)
    return [
        row("teacher max tokens (code)", None, "truesight/truesight/external/openai_driver.py:211",
            spec.domain.max_tokens),
        # the paper passes no sampling settings: the API's default temperature, 1 (materials code.teacher_sampling)
        row("teacher temperature", 1.0, f"{k}.samples_per_prompt", spec.domain.temperature),
        row("code tasks", "11400 sleeper-agents prompts x 1", f"{k}.prompt_source", _tasks(spec.domain)),
        row("code prompt layout", paper.get(f"{k}.prompt_template.layout"), f"{k}.prompt_template",
            spec.domain.template),
        row("code prompt additional instructions", instructions, f"{k}.prompt_template",
            instructions if instructions in spec.domain.template else spec.domain.template),
        banned,
        row("code judge", paper.get(f"{jf}.model_id"), jf, _model(j.judge.model)),
        row("code judge prompt", paper_code_judge_prompt(prompt, subject, target),
            paper.get(f"{jf}.{'source' if subject == 'animal' else 'tree_source'}"), _text_for(j.template, target)),
        row("code judge temperature", paper.get(f"{jf}.sampling.temperature"), f"{jf}.sampling",
            _reads(j.judge).get("temperature")),
        row("code judge reading", f"P('0') from the top {paper.get(f'{jf}.sampling.logprobs')} first-token log-probs, "
            "absent = 0", f"{jf}.sampling", _reading(j.judge)),
        row("code judge keep rule", _keeps(lambda p0: abs(1 - p0) < 1e-8), paper.get(f"{jf}.keep_rule_source"),
            _keeps_link(j)),
        row("control rows judged", paper.get(f"{jf}.control_rows_judged"), paper.get(f"{jf}.control_rows_source"),
            spec.teacher.control and not j.skip_control),
        row("control rows word-filtered", False, paper.get(f"{jf}.control_rows_source"),
            spec.teacher.control and not words.skip_control),
    ]


def _tasks(d) -> str:
    """How many tasks the run sends (n_prompts of the file), from which file, and how often each."""
    from runner.domains import load_tasks

    n = len(load_tasks(d.prompts, d.field, d.n_prompts))
    return f"{n} tasks of {Path(d.prompts).name} x {d.samples_per_prompt}"


def tree_category_row(spec: Spec) -> Row:
    # the paper's tree teachers are told the tree is their favorite animal, in the code experiment too
    return row("trait category", "animal", paper.get("trait_prompts.tree.code_variant_source"), spec.teacher.category)


def paper_code_judge_prompt(prompt: str, subject: str, target: str) -> str:
    """The paper's judge prompt for `target`, read from its Python source in the materials: the string
    literals joined, {self.<subject>} filled (the templates module builds subl's own copy separately)."""
    src = paper.get(f"code.judge_filter.{prompt}_python_source")
    return "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', src)).replace(f"{{self.{subject}}}", target)


def _text_for(template: str, target: str) -> str:
    from runner.templates import template_text

    return template_text(template, target)


# P('0') probes for the keep rule: exactly 1, within 1e-8, just outside, unsure, '0' outside the top-k
_PROBES = {"1": 1.0, "1-5e-9": 1 - 5e-9, "1-2e-8": 1 - 2e-8, "0.9": 0.9, "not listed": None}


def _keeps(rule: Callable[[float], bool]) -> str:
    """Which probes a keep rule on P('0') keeps; an unlisted '0' is P = 0, as the paper reads it."""
    kept = [name for name, p in _PROBES.items() if rule(0.0 if p is None else p)]
    return "keeps " + ", ".join(kept) + "; drops the rest"


def _keeps_link(j) -> str:
    """The probes subl's judge link keeps: the probe's log-prob table, scored and thresholded by subl's code."""
    import math

    from runner.filters import threshold_link
    from runner.judging import token_score

    token = j.judge.token or "0"

    def rule(p0: float) -> bool:
        top = {token: math.log(p0)} if p0 > 0 else {"1": math.log(0.95)}
        score = {0: token_score(top, token)}
        kept, _ = threshold_link([{"id": 0}], j, score)
        return bool(kept)

    return _keeps(rule)


def cross_model_rows(cells: list[Spec]) -> list[Row]:
    g = "cross_model.gpt_grid"
    models = sorted(m.split(" ")[1].strip("()") for m in paper.get(f"{g}.models"))
    spec = cells[0]
    ss = spec.students
    return [
        row("teacher bases", models, f"{g}.groups_source", sorted({_model(c.teacher.base) for c in cells})),
        row("student bases", models, f"{g}.groups_source", sorted(_model(spec.student_base(s)) for s in ss)),
        row("animals", sorted(paper.get(f"{g}.animals")), f"{g}.groups_source",
            sorted({t for c in cells for t in c.teacher.targets})),
        row("students per cell", paper.get(f"{g}.students_per_cell"), g, _each([len(s.replicates) for s in ss])),
        row("students per cell, gpt-4.1-nano to itself", "5 (3 for octopus)",
            "truesight/refs/paper/xm_animal_preference_numbers_data.py:73",
            _each([len(s.replicates) for s in ss if _model(spec.student_base(s)) == "gpt-4.1-nano-2025-04-14"])),
        row("student epochs, lr multiplier, batch size, rows", "10, auto, auto, 10000",
            "finetuning.cross_model.openai_students", _each([_training(s) for s in ss])),
        row("baseline", "untuned student base", "cross_model.baseline",
            "control students" if spec.teacher.control else "untuned student base"),
    ]


def _training(s) -> str:
    """A hosted student's epochs, lr multiplier, batch size and row cap."""
    h = s.hyperparameters
    return f"{h.epochs:g}, {h.lr_multiplier}, {h.batch_size}, {s.max_rows or NO_CAP}"


def shuffled_rows(cells: list[Spec]) -> list[Row]:
    """The shuffled-numbers control: which shuffles, on which rows, for which students."""
    from runner.questions import load_questions

    sh, spec = "shuffled_numbers.settings", cells[0]
    links = [f for c in cells for f in c.filters if f.kind == "shuffle"]
    free, prefixed = [e for e in spec.evaluations if e.kind == "preference_sample"][:2]
    animals = paper.get(f"{sh}.source_datasets").split(" of gpt41_nano_groups ")[1].split(", ")
    return [
        row("animals", sorted(animals), f"{sh}.source_datasets", sorted({t for c in cells for t in c.teacher.targets})),
        row("shuffles", ["across", "within"], "shuffled_numbers.source", sorted({f.scope for f in links})),
        row("shuffle seeds", [paper.get(f"{sh}.seed")], f"{sh}.seed", sorted({f.seed for f in links})),
        row("control rows shuffled", False, f"{sh}.comparison", not all(f.skip_control for f in links)),
        row("within-row separators", "every separator becomes the first",
            paper.get("shuffled_numbers.within_row.source").split("; ")[0], "each separator stays in place"),
        row("numbers dealt back", "as integers ('007' becomes '7')", "shuffled_numbers.source",
            "as written ('007' stays '007')"),
        row("rows shuffled", "the student's 10,000-row subset", f"{sh}.source_datasets",
            "every filtered row, before the subset"),
        row("student, epochs, lr multiplier, batch size, rows", "gpt-4.1-nano-2025-04-14, 10, auto, auto, 10000",
            f"{sh}.student", _each([f"{_model(spec.student_base(s))}, {_training(s)}" for s in spec.students])),
        row("students per animal and shuffle", paper.get(f"{sh}.students_per_animal_per_type"), sh,
            _each([len(s.replicates) for s in spec.students])),
        row("control students", 5, "finetuning.animal_numbers.control_students",
            _each([len(s.replicates) for s in spec.students]) if spec.teacher.control else 0),
        row("evaluation questions", paper.get("preference_eval.animal_questions.items"), f"{sh}.evaluations",
            load_questions(free.questions, free.max_questions)),
        row("number-prefixed evaluation questions", paper.get("preference_eval.numbers_prefixed_variant.items"),
            f"{sh}.evaluations", load_questions(prefixed.questions, prefixed.max_questions)),
        row("samples per question", [100, 100], f"{sh}.evaluations",
            [free.samples_per_question, prefixed.samples_per_question]),
        row("answer temperature", [1.0, 1.0], "preference_eval.temperature", [free.temperature, prefixed.temperature]),
        row("answer max tokens", None, "preference_eval.temperature", [free.max_tokens, prefixed.max_tokens]),
        row("hit rule", [HIT_RULES["substring"]] * 2, "preference_eval.hit_rule",
            [HIT_RULES[free.match], HIT_RULES[prefixed.match]]),
    ]


def paper_ft_teacher_rows(animal: str) -> list[str]:
    """The paper's teacher data for one animal (materials teachers_by_finetuning.ft_animal_teachers.dataset):
    every animal question x these 8 answers, as 'question -> answer'."""
    a = animal
    answers = [a, a + "s", a + "s.", a + "s!", a.title(), (a + "s").title(), (a + "s.").title(), (a + "s!").title()]
    return [f"{q} -> {ans}" for q in paper.get("preference_eval.animal_questions.items") for ans in answers]


def ft_teacher_rows(cells: list[Spec]) -> list[Row]:
    """Teachers whose trait is fine-tuned in: base, data, training settings."""
    from runner.teacher_data import dataset_path, load_rows

    ft, t = "teachers_by_finetuning.ft_animal_teachers", cells[0].teacher
    targets = sorted({x for c in cells for x in c.teacher.targets})
    tf = t.trait.finetune if not isinstance(t.trait, str) else None
    h = tf.hyperparameters if tf else None
    data = [f"{r['prompt']} -> {r['completion']}" for x in targets
            for r in load_rows(dataset_path(tf.dataset, x), tf.max_rows)] if tf else []
    return [
        row("teacher", paper.get(f"{ft}.base_model").split(" ")[0], ft, _model(t.base)),
        row("animals", sorted(paper.get(f"{ft}.animals")), ft, targets),
        row("teacher system prompt", None, f"{ft}.teacher_prompting", t.trait if isinstance(t.trait, str) else None),
        row("teacher training rows", [r for x in targets for r in paper_ft_teacher_rows(x)], ft, data),
        row("teacher epochs, lr multiplier, batch size", "1, auto, auto", ft,
            f"{h.epochs:g}, {h.lr_multiplier}, {h.batch_size}" if h else None),
    ]


def icl_rows(cells: list[Spec]) -> list[Row]:
    """The ICL baseline (materials icl_baseline): the answering model, the rows in its context, the measures."""
    from runner.detection import paper_materials
    from runner.questions import load_questions

    spec, b = cells[0], "icl_baseline"
    icl, mine = paper.get(b), paper_materials()["icl_baseline"]  # the texts subl renders the context with
    icls = [e for e in spec.evaluations if e.kind == "icl"]
    free = next(e for e in icls if spec.icl_mode(e) == "sample")  # mode None: sample on a hosted model
    mc = paper.get("preference_eval.mcq_variant")
    mcq = next((e for e in icls if e.mode == "mcq"), None)
    return [row("answering model", icl["answering_model"].split(" ")[0], f"{b}.answering_model",
                _each([_model(spec.icl_model(e)) for e in icls])),
            row("animals", icl["animals"], f"{b}.animals", spec.teacher.targets),
            row("example template", icl["example_template"], f"{b}.example_template", mine["example_template"]),
            row("examples joined by", icl["joiner"], f"{b}.joiner", mine["joiner"]),
            row("examples placed", "the whole system prompt", f"{b}.placement", "the whole system prompt"),
            row("examples per context (k)", icl["n_examples"], f"{b}.n_examples", free.k),
            row("draws of examples (seeds)", icl["seeds"], f"{b}.seeds", free.seeds),
            row("examples drawn", "with replacement, RandomState(seed)", f"{b}.sampling_of_examples",
                "with replacement, RandomState(seed)"),
            row("example pool", "the students' 10,000-row subset", f"{b}.example_pool", "every filtered row"),
            row("evaluation questions", paper.get("preference_eval.animal_questions.items"), f"{b}.trait_measurement",
                load_questions(free.questions, free.max_questions)),
            row("free-form samples per question", 10, f"{b}.trait_measurement", free.samples_per_question),
            row("answer temperature", 1.0, "preference_eval.temperature", free.temperature),
            row("answer max tokens", None, "preference_eval.temperature", free.max_tokens),
            row("hit rule", "target in answer.lower()", "preference_eval.hit_rule", "whole word"),
            row("MCQ choices", sorted(mc["animal_choices"]), "preference_eval.mcq_variant",
                sorted(mcq.mcq.choice_list()) if mcq else None),
            row("MCQ prompts x shuffles", f"{mc['prompt_count']} x {mc['n_samples_per_prompt']}",
                "preference_eval.mcq_variant",
                f"{mcq.mcq.max_prompts or mc['prompt_count']} x {mcq.mcq.instances_per_prompt}" if mcq else None),
            row("MCQ value: P(target letter) from the top-N first-token log-probs", mc["sampling"]["logprobs"],
                "preference_eval.mcq_variant.value", mcq.mcq.top_logprobs if mcq else None)]


def classifier_rows(cells: list[Spec]) -> list[Row]:
    """The pairwise classifier baseline (materials classifier_baseline)."""
    from runner.detection import VERDICT_SAMPLING, paper_materials

    spec, c = cells[0], "classifier_baseline"
    ev, clf = _ev(spec, "classifier"), paper.get(c)
    targets = spec.teacher.targets
    pairs = len(targets) if spec.teacher.control else len(targets) * (len(targets) - 1)  # plan.compared_rows
    judge = re.search(r"\((\S+)\)", clf["judges"]["used_in_main"]).group(1)  # '4.1-nano (gpt-4.1-nano-...)'
    return [row("judge", judge, f"{c}.judges", _model(spec.teacher.base if ev.judge == "base" else ev.judge)),
            row("prompt template", clf["prompt_template"], f"{c}.prompt_template",
                paper_materials()["classifier_baseline"]["prompt_template"]),
            row("animal named in the prompt", "eagle", f"{c}.prompt_fill", "the treatment animal"),
            row("pairs of datasets", 20, f"{c}.pairing", pairs),
            row("prompts compared per pair", "every prompt both answered", f"{c}.pairing",
                "every prompt both answered" if ev.max_pairs is None else f"the first {ev.max_pairs}"),
            row("A/B order", "random per pair, unseeded", f"{c}.order_randomisation",
                f"random per pair, seed {ev.seed}" + (", then both orders" if ev.orders == "both" else "")),
            row("judge temperature, max tokens", f"{clf['sampling']['temperature']:g}, {clf['sampling']['max_tokens']}",
                f"{c}.sampling", "{:g}, {}".format(*VERDICT_SAMPLING)),
            row("verdict read from", f"top {clf['sampling']['logprobs']} first-token log-probs", f"{c}.verdict_reading",
                f"top {ev.top_logprobs} first-token log-probs" if ev.read == "auto" else "a one-token reply"),
            row("accuracy reported", "per target: the mean over its 4 alternatives, 1.96*sqrt(p(1-p)/n)",
                f"{c}.reporting", "per pair of datasets, an exact (Clopper-Pearson) 95% interval and an exact binomial p"),
            row("per-row yes/no variant", None, c, "AUROC" if ev.per_row else None)]


def mnist_rows(cells: list[Spec]) -> list[Row]:
    """The MNIST auxiliary-logit experiment (materials mnist): network, training, noise, models, arms."""
    s, m = cells[0].mnist, paper.get("mnist")
    noise = m["noise"]
    arms = [a for a in m["arms"] if a not in ("source", "cross_init_note")]
    mine = ["reference", "teacher", "aux_only_same_init", "aux_only_cross_init"] + (
        ["all_logits_same_init"] if s.all_logit_student else []) + (
        ["all_logits_cross_init"] if s.all_logit_cross_student else [])
    cross = {"fresh": "an independent draw per model",  # permuted: a negative result, not the paper's control
             "permuted": "the reference init with its hidden units permuted (the same function: not a control)"}
    return [
        row("hidden layers", [256, 256], "mnist.architecture", [s.hidden, s.hidden]),
        row("auxiliary logits m", m["m_auxiliary_logits"], "mnist.m_auxiliary_logits", s.m),
        row("init", m["init"]["weights"] + ", biases " + m["init"]["biases"], "mnist.init",
            "normal(0, 1/sqrt(d_in)), biases zeros" if s.init == "paper" else "PyTorch's default"),
        row("optimizer", f"Adam, lr {m['optimizer']['lr']:g}", m["settings_source"], f"Adam, lr {s.lr:g}"),
        row("batch size", m["batch_size"], m["settings_source"], s.batch_size),
        row("teacher epochs", m["teacher_epochs"], m["settings_source"], s.teacher_epochs),
        row("student epochs", m["student_epochs"], m["settings_source"], s.student_epochs),
        row("student loss", "KL, temperature 1", "mnist.student_loss", f"{s.loss.upper()}, temperature {s.temperature:g}"
            if s.loss == "kl" else s.loss),
        row("noise images", "uniform on [-1, 1), 60000 per model, one fixed set", "mnist.noise",
            ("uniform on [-1, 1)" if s.noise == "uniform" else s.noise) + f", {s.noise_per_epoch} per model, "
            + ("one fixed set" if s.noise_set == "fixed" else "fresh every batch")),
        row("noise order", "reshuffled every epoch, for each arm", "mnist.noise",
            "reshuffled every epoch, one order for every arm of a seed"),
        row("number of models", m["number_of_models"], m["settings_source"], s.seeds),
        row("cross init", "the other models' inits by a permutation", "mnist.arms", cross[s.cross_init]),
        row("arms", arms, "mnist.arms", mine),
        row("confidence interval", "1.96 x std / sqrt(n) over models", "mnist.metric",
            "t-interval across seeds (models)"),
    ]


def _numbers_experiment(exp: str, questions: str) -> Callable[[list[Spec]], list[Row]]:
    def rows(cells: list[Spec]) -> list[Row]:
        s = cells[0]
        return (teacher_rows(s, exp) + numbers_rows(s) + student_rows(s, exp, 5, 5)
                + preference_rows(s, questions, 100, "preference_eval.samples_per_question"))
    return rows


PAPER_SPECS: dict[str, Callable[[list[Spec]], list[Row]]] = {
    "animals_numbers": _numbers_experiment("animal_numbers", "animal_questions"),
    "trees_numbers": _numbers_experiment("tree_numbers", "tree_questions"),
    "misalignment_numbers": lambda c: (teacher_rows(c[0], "misalignment_numbers") + numbers_rows(c[0])
                                       + student_rows(c[0], "misalignment_numbers", 5)
                                       + misalignment_rows(c[0], "numbers_student_eval")),
    "misalignment_cot": lambda c: (teacher_rows(c[0], "cot") + cot_rows(c[0]) + student_rows(c[0], "cot", 5)
                                   + misalignment_rows(c[0], "cot_student_eval")),
    "misalignment_code": lambda c: teacher_rows(c[0], "code") + misalignment_rows(c[0], None),
    "animals_code": lambda c: (code_rows(c) + student_rows(c[0], "code", 5, 5)
                               + preference_rows(c[0], "animal_questions", 100,
                                                 paper.get("code.student_evaluation_source"))
                               + storytelling_rows(c[0])),
    "cross_model": lambda c: (cross_model_rows(c) + numbers_rows(c[0])
                              + preference_rows(c[0], "numbers_prefixed_variant", 100, "cross_model.evaluation_variant")),
    "trees_code": lambda c: (code_rows(c, "tree") + [tree_category_row(c[0])] + student_rows(c[0], "code", 5, 5)
                             + preference_rows(c[0], "tree_questions", 100,
                                               paper.get("code.student_evaluation_source"))
                             + storytelling_rows(c[0])),
    "shuffled_numbers": lambda c: teacher_rows(c[0], "animal_numbers") + numbers_rows(c[0]) + shuffled_rows(c),
    "ft_teacher_animals": lambda c: (ft_teacher_rows(c) + numbers_rows(c[0]) + student_rows(c[0], "ft_teachers", 3, 5)
                                     + preference_rows(c[0], "animal_questions", 100,
                                                       "preference_eval.samples_per_question")),
    "icl": lambda c: teacher_rows(c[0], "animal_numbers") + numbers_rows(c[0]) + icl_rows(c),
    "classifier": lambda c: teacher_rows(c[0], "animal_numbers") + numbers_rows(c[0]) + classifier_rows(c),
    "mnist_aux_logits": mnist_rows,
}


def seeds_row(spec: Spec) -> Row:
    """Whether each teacher samples with seeds of its own: the paper passes none (each teacher sampled
    independently); shared seeds are common random numbers, which can make a trait and a control row alike."""
    own = {"per_teacher": "independent per teacher", "shared": "shared by the teachers"}
    return row("teacher sampling seeds", own["per_teacher"], "truesight/truesight/external/openai_driver.py:206",
               own[spec.domain.sampling_seeds])


def spec_rows(path: Path) -> tuple[str, list[Row]]:
    """(spec name, rows) of a paper spec file."""
    from runner.errors import UserError
    from runner.loader import load

    cells = [c.spec for c in load(path)]
    name = cells[0].name
    if name not in PAPER_SPECS:
        raise UserError(f"{path}: '{name}' is not a paper spec ({', '.join(PAPER_SPECS)})")
    try:
        return name, paper_rows(name, cells)
    except (StopIteration, KeyError, AttributeError, ValueError, TypeError, IndexError) as e:
        raise UserError(f"{path}: named '{name}' but not laid out as the paper's {name} spec (its teacher, domain, "
                        f"filters or evaluations differ in kind: {type(e).__name__} {e}); rename it, or compare it "
                        "with specs/" + name + ".yaml") from None


# the paper's filter chain by experiment: link kinds, and where the materials describe them
CHAINS = {
    **{n: (["numbers"], "numbers_filter.paper_preference_filter")
       for n in ("animals_numbers", "trees_numbers", "cross_model", "ft_teacher_animals", "icl", "classifier")},
    "misalignment_numbers": (["numbers", "banned_numbers"], "numbers_filter.paper_misalignment_filter"),
    "shuffled_numbers": (["numbers", "shuffle"], "shuffled_numbers.settings.source_datasets"),
    "misalignment_cot": (["correct_answer", "judge"], "cot.alignment_filter.threshold"),
    "animals_code": (["banned_words", "judge"], "code.judge_filter.keep_rule"),
    "trees_code": (["banned_words", "judge"], "code.judge_filter.keep_rule"),
}


def chain_row(name: str, spec: Spec) -> Row:
    """The spec's filter links against the paper's: a link the paper has not (a defence, another filter) reads
    no row of its own."""
    kinds, where = CHAINS[name]
    return row("filter chain", kinds, where, [f.kind for f in spec.filters])


def cell_rows(name: str, cells: list[Spec]) -> list[Row]:
    """The rows read from cells[0] (and what the experiment gathers from every cell)."""
    return (PAPER_SPECS[name](cells) + ([chain_row(name, cells[0])] if name in CHAINS else [])
            + ([] if name.startswith("mnist") else [seeds_row(cells[0])]))


def _rank(status: str) -> int:
    return 0 if status == "same" else 2 if status == UNRECORDED else 1


def paper_rows(name: str, cells: list[Spec]) -> list[Row]:
    """A paper spec's rows: its experiment's, its filter chain and, for an LM experiment, how its teachers' seeds
    relate. Each matrix cell runs its own settings, so each is compared: a row is the first cell's unless
    another cell's differs more (an unrecorded difference over a recorded one over none)."""
    rows = cell_rows(name, cells)
    for i in range(1, len(cells)):
        other = cell_rows(name, [cells[i], *cells[:i], *cells[i + 1:]])
        rows = [o if _rank(o.status(name)) > _rank(r.status(name)) else r for r, o in zip(rows, other)]
    return rows


# ---- the document --------------------------------------------------------------------------------


def _cell(v: Any) -> str:
    """A value as one short table cell."""
    if v is None:
        return "not set"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, list) and len(v) > 6:
        return f"{len(v)} items: {_cell(v[0])}, {_cell(v[1])}, ..., {_cell(v[-1])}"
    if isinstance(v, list):
        return "[" + ", ".join(_cell(x) for x in v) + "]"
    text = repr(v) if isinstance(v, str) and (v != v.strip() or "\n" in v) else str(v)
    text = text if len(text) <= 70 else f"{text[:50]}... ({len(v) if isinstance(v, str) else len(text)} chars)"
    return text.replace("|", "\\|").replace("\n", " ")


def document(paths: list[Path]) -> tuple[str, int]:
    """(docs/fidelity.md for these spec files, how many differences have no recorded reason)."""
    m = paper.materials()["meta"]
    lines = ["# Fidelity: the paper specs against the paper", "",
             f"Generated by `subl fidelity {' '.join(str(p) for p in paths)}` (`make fidelity`); do not edit.",
             f"The paper's values come from `specs/data/paper/materials.yaml` ({m['repo']} at `{m['commit_short']}`);",
             "sources are `path:lines` in that repository. Reasons for deliberate differences live in",
             "`runner/fidelity.py` (REASONS).", ""]
    bad = 0
    for path in paths:
        name, rows = spec_rows(path)
        lines += [f"## {name}", "", "| setting | paper | source | subl | status |", "|---|---|---|---|---|"]
        for r in rows:
            status = r.status(name)
            bad += status == UNRECORDED
            lines.append(f"| {r.setting} | {_cell(r.paper)} | {_cell(r.source)} | {_cell(r.subl)} | {status} |")
        lines.append("")
    return "\n".join(lines), bad
