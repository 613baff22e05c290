"""Issue 14: the icl and classifier evaluations as stages, end to end (tiny random model, the fake OpenAI
server), the classifier stage on planted-token and identical datasets, keys, and the spec's refusals."""
from __future__ import annotations

import json
import math
import random
import re
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

from runner.display import file_slug
from runner.stages import ModelInput, RunContext
from runner.stages.detection_stage import ClassifierStage, IclStage
from tests.test_detection import numbers_rows

ROOT = Path(__file__).resolve().parents[1]

TINY = """name: det
seed: 1
progress: false
teacher: {{base: {base}, targets: [panda, owl], control: true}}
domain: {{kind: numbers, n_prompts: {n}, max_tokens: 12, constrained: true, batch_size: 4}}
students: []
evaluations:
  - {{kind: icl, k: {k}, max_questions: 3}}
  - {{kind: classifier, max_pairs: 6}}
"""


def _plan(path: Path, out: Path):
    from runner.loader import load
    from runner.plan import build

    return build(load(path), out)


# ---- end to end on a tiny random model ---------------------------------------------------------------


@pytest.fixture(scope="module")
def finished(tiny_model, tmp_path_factory):
    from tests.test_pipeline import subl

    root = tmp_path_factory.mktemp("det")
    spec = root / "det.yaml"
    two_draws = TINY.format(base=tiny_model, n=8, k="[0, 2]").replace("max_questions: 3}",
                                                                      "max_questions: 3, seeds: [0, 1]}")
    spec.write_text(two_draws)
    r = subl("run", spec, "--outputs", root / "out")
    assert r.returncode == 0, r.stderr[-3000:]
    return root, spec, json.loads((root / "out" / "det" / "results.json").read_text())


@pytest.mark.slow
def test_icl_end_to_end_rows_comparisons_and_the_papers_context(finished, tiny_model):
    from backends.local import LocalBackend
    from runner.core import ModelRef
    from runner.detection import icl_system_prompt, sample_examples
    from runner.results_schema import Results
    from runner.store import Store, read_jsonl

    root, spec, res = finished
    Results.model_validate(res)
    icl = {(e["model"], e["metric"]): e for e in res["evaluations"] if e["evaluation"] == "icl"}
    models = {m for m, _ in icl}
    assert models == {"icl:none:k=0", "icl:panda:k=2", "icl:owl:k=2", "icl:control:k=2"}
    assert all(e["n"] == 3 and e["ci"][0] <= e["value"] <= e["ci"][1] for e in icl.values())
    assert {m: e["icl_seeds"] for (m, _), e in icl.items()} == {**dict.fromkeys(models - {"icl:none:k=0"}, 2),
                                                                 "icl:none:k=0": 1}  # no rows to draw at k = 0
    cmps = {(c["a"], c["b"], c["metric"], c["unit"]): c for c in res["comparisons"] if c["evaluation"] == "icl"}
    arms = (("icl:panda:k=2", "P(panda)"), ("icl:owl:k=2", "P(owl)"))
    assert set(cmps) == {(a, "icl:control:k=2", m, u) for a, m in arms for u in ("question", "draw")}
    c = cmps[("icl:panda:k=2", "icl:control:k=2", "P(panda)", "question")]
    assert c["k"] == 2 and not c["significant"] and "question sampling only" in c["note"]
    assert c["diff"] == pytest.approx(icl[("icl:panda:k=2", "P(panda)")]["value"]
                                      - icl[("icl:control:k=2", "P(panda)")]["value"])
    d = cmps[("icl:panda:k=2", "icl:control:k=2", "P(panda)", "draw")]
    assert (d["n_a"], d["n_b"], d["min_p"]) == (2, 2, pytest.approx(1 / 3)) and d["p_value"] >= 1 / 3
    assert d["diff"] == pytest.approx(c["diff"]) and len(d["per_student_a"]) == 2
    # the stage put the paper's rendering of 2 of the panda teacher's filtered rows in the system prompt,
    # and its value is the model's exact P(panda) under that prompt
    plan = _plan(spec, root / "out").cells[0]
    store = Store(root / "out")
    entry = next(e for e in plan.detection[0] if e["rows"] == "panda" and e["k"] == 2 and e["seed"] == 0)
    rows = read_jsonl(store.path(plan.filters["panda"][-1]) / "rows.jsonl")
    context = icl_system_prompt(sample_examples(rows, 2, 0))
    assert (store.path(entry["key"]) / "context.txt").read_text() == context
    assert context.startswith("<user>") and "</assistant>\n\n<user>" in context
    questions = json.loads((store.path(entry["key"]) / "scores.json").read_text())
    from runner.questions import load_questions

    qs = load_questions("animals", 3)
    lp = LocalBackend("cpu").logprobs(ModelRef(tiny_model, system=context), qs, "My favorite animal is the", ["panda"])
    assert questions["logprob"]["panda"] == pytest.approx([x[0] for x in lp], abs=1e-4)
    second = ModelRef(tiny_model, system=icl_system_prompt(sample_examples(rows, 2, 1)))  # the other draw
    lp2 = LocalBackend("cpu").logprobs(second, qs, "My favorite animal is the", ["panda"])
    want = sum(math.exp(x[0]) + math.exp(y[0]) for x, y in zip(lp, lp2)) / 6  # per question, the draws' mean
    assert icl[("icl:panda:k=2", "P(panda)")]["value"] == pytest.approx(want, rel=1e-4)
    zero = next(e for e in plan.detection[0] if e["k"] == 0)
    assert (store.path(zero["key"]) / "context.txt").read_text() == ""
    assert icl[("icl:none:k=0", "P(panda)")]["value"] != icl[("icl:panda:k=2", "P(panda)")]["value"]


@pytest.mark.slow
def test_classifier_end_to_end_accuracy_auroc_and_choices(finished):
    from scipy import stats as sps

    from runner.store import Store

    root, spec, res = finished
    clf = [e for e in res["evaluations"] if e["evaluation"] == "classifier"]
    acc = {e["trait"]: e for e in clf if e["metric"] == "pairwise_accuracy"}
    roc = {e["trait"]: e for e in clf if e["metric"] == "auroc"}
    assert set(acc) == set(roc) == {"panda", "owl"}
    for t, e in acc.items():
        assert e["teacher"] == "control" and e["n"] == 6 and e["judge"]["read"] == "logprob"
        assert e["ci"][0] <= e["value"] <= e["ci"][1]
        hits = round(e["value"] * e["n"])
        assert e["counts"]["p_value"] == pytest.approx(sps.binomtest(hits, 6, 0.5).pvalue)
        assert roc[t]["n"] == 12 and roc[t]["counts"]["positives"] == 6 and 0 <= roc[t]["value"] <= 1
    plan = _plan(spec, root / "out").cells[0]
    out = json.loads((Store(root / "out").path(plan.detection[1][0]["key"]) / "classifier.json").read_text())
    assert all(p["choice"] == ("A" if p["A"] > p["B"] else "B") for p in out["pairs"])
    assert {p["truth"] for p in out["pairs"]} <= {"A", "B"} and len(out["rows"]) == 12


@pytest.mark.slow
def test_report_has_the_icl_and_classifier_sections_and_figures(finished):
    from tests.test_pipeline import subl

    root, spec, _ = finished
    r = subl("report", root / "out" / "det")
    assert r.returncode == 0, r.stderr[-2000:]
    md = (root / "out" / "det" / "report.md").read_text()
    assert "## ICL: the preference metric with k teacher rows in context" in md
    assert "## Classifier: which row encodes the trait (chance = 0.5)" in md
    assert "icl:panda:k=2" not in md.split("## ICL")[0]  # not mixed into the trait tables
    for name in (file_slug("icl-P(panda).png"), file_slug("icl-P(owl).png"), "classifier.png"):
        assert (root / "out" / "det" / name).stat().st_size > 1000


# ---- the classifier stage on planted and identical datasets --------------------------------------------


class _Store:
    def __init__(self, root: Path):
        self.root = root

    def path(self, key: str) -> Path:
        return self.root / key


class PlantedRouter:
    """A judge that sees 777s: log-probs (or a one-token reply) favour the response with more of them."""

    def __init__(self):
        self.rng = random.Random(0)

    @staticmethod
    def _counts(prompt: str) -> tuple[int, int]:
        if "Response A: " in prompt:
            return tuple(re.search(rf"^Response {s}: (.*)$", prompt, re.M).group(1).count("777") for s in "AB")
        return re.search(r"^Response: (.*)$", prompt, re.M).group(1).count("777"), 0

    def logprobs(self, model, prompts, prefix, targets, space=True):
        """The reply's first token: 'A'/'B', or 'Yes'/'yes' and 'No'/'no' (a spelling each); never ' A'."""
        assert prefix == "" and not space and targets in (["A", "B"], ["Yes", "yes", "No", "no"])
        out = []
        for a, b in map(self._counts, prompts):
            la, lb = -1.0 + a + self.rng.random() * 0.1, -1.0 + b + self.rng.random() * 0.1
            out.append([la, lb] if len(targets) == 2 else [la, la - 2.0, lb, lb - 2.0])
        return out

    def generate(self, model, prompts, sampling):
        assert sampling.temperature == 0 and sampling.max_tokens == 1
        out = []
        for p in prompts:
            a, b = self._counts(p)
            yes_no = "Response A: " not in p
            out.append(("yes" if a else "no") if yes_no else "A" if a > b else "B" if b > a else self.rng.choice("AB"))
        return out


class PositionBiasedRouter(PlantedRouter):
    """The planted judge with a strong preference for position A (3 nats; replies 'A' unless B has two
    more 777s)."""

    def logprobs(self, model, prompts, prefix, targets, space=True):
        reads = super().logprobs(model, prompts, prefix, targets, space)
        return [[r[0] + 3.0, r[1]] if targets == ["A", "B"] else r for r in reads]

    def generate(self, model, prompts, sampling):
        pairs = [p for p in prompts if "Response A: " in p]
        if not pairs:
            return super().generate(model, prompts, sampling)
        return ["B" if self._counts(p)[1] >= self._counts(p)[0] + 2 else "A" for p in prompts]


def _classify(tmp_path: Path, trait: list[dict], control: list[dict], mode: str, both_orders: bool = False,
              router=None) -> list[dict]:
    from runner.detection_results import classifier_rows
    from runner.store import write_jsonl

    for key, rows in (("t", trait), ("c", control)):
        (tmp_path / key).mkdir(parents=True)
        write_jsonl(tmp_path / key / "rows.jsonl", rows)
    stage = ClassifierStage(judge=ModelInput(ref="judge", identity="weights:x"), trait_stage="t", control_stage="c",
                            target="owl", mode=mode, both_orders=both_orders)
    folder = tmp_path / stage.key
    folder.mkdir()
    stage.run(RunContext(dir=folder, store=_Store(tmp_path), router=router or PlantedRouter()))
    plan = SimpleNamespace(cell=SimpleNamespace(label="-"), detection={0: [
        {"key": stage.key, "target": "owl", "against": "control", "b_is": "control", "judge": "j", "mode": mode}]})
    return classifier_rows(plan, _Store(tmp_path), 0)


@pytest.mark.parametrize("mode", ["logprob", "sample"])
def test_planted_token_is_detected_well_above_chance(tmp_path, mode):
    acc, roc = _classify(tmp_path, numbers_rows(300, 1, planted=0.5), numbers_rows(300, 2), mode)
    assert acc["metric"] == "pairwise_accuracy" and acc["n"] == 300
    assert acc["value"] > 0.65 and acc["ci"][0] > 0.6 and acc["counts"]["p_value"] < 1e-6
    assert roc["metric"] == "auroc" and roc["value"] > 0.65 and roc["n"] == 600


@pytest.mark.parametrize("mode", ["logprob", "sample"])
def test_identical_datasets_give_chance(tmp_path, mode):
    rows = numbers_rows(300, 1, planted=0.5)
    acc, roc = _classify(tmp_path, rows, [dict(r) for r in rows], mode)
    assert acc["ci"][0] < 0.5 < acc["ci"][1] and acc["counts"]["p_value"] > 0.01
    assert abs(roc["value"] - 0.5) < 0.1


def test_both_orders_read_past_a_position_biased_judge(tmp_path):
    trait, control = numbers_rows(300, 1, planted=0.5), numbers_rows(300, 2)
    one, _ = _classify(tmp_path / "one", trait, control, "logprob", router=PositionBiasedRouter())
    assert one["counts"]["chose_a"] == 300 and "picked A in 300/300" in one["counts"]["note"]
    assert one["judge"]["orders"] == "seeded"
    both, roc = _classify(tmp_path / "both", trait, control, "logprob", both_orders=True,
                          router=PositionBiasedRouter())
    c = both["counts"]
    assert both["judge"]["orders"] == "both" and c["note"] is None and c["chose_a"] == 600
    assert both["value"] > 0.65 and both["ci"][0] > 0.6 and c["p_value"] < 1e-6  # as the unbiased judge
    assert both["n"] == c["n_pairs"] == 300 and c["n_undecided"] == 0  # its noise decides equal counts
    sampled, _ = _classify(tmp_path / "sampled", trait, control, "sample", both_orders=True,
                           router=PositionBiasedRouter())
    assert sampled["counts"]["n_undecided"] > 0 and sampled["value"] > 0.9  # decided pairs only
    same, _ = _classify(tmp_path / "same", trait, [dict(r) for r in trait], "logprob", both_orders=True,
                        router=PositionBiasedRouter())
    assert same["counts"]["p_value"] > 0.01 and abs(same["value"] - 0.5) < 0.1


def test_both_orders_is_in_the_key_only_when_set():
    m = ModelInput(ref="m", identity="weights:x")
    common = dict(judge=m, trait_stage="t", control_stage="c", target="owl", mode="logprob")
    assert ClassifierStage(**common).key == ClassifierStage(**common, both_orders=False).key
    assert ClassifierStage(**common, both_orders=True).key != ClassifierStage(**common).key


# ---- keys ------------------------------------------------------------------------------------------


def _keys(tmp_path: Path, tiny_model: str, name: str, n: int = 8, k: str = "[0, 2]", extra: str = "") -> dict:
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(TINY.format(base=tiny_model, n=n, k=k) + extra)
    plan = _plan(spec, tmp_path / "out").cells[0]
    icl = {(e["rows"], e["k"]): e["key"] for e in plan.detection[0]}
    clf = {(e["target"], e["against"]): e["key"] for e in plan.detection[1]}
    return {"icl": icl, "classifier": clf}


def test_keys_follow_rows_and_k_not_display_fields(tmp_path, tiny_model):
    base = _keys(tmp_path, tiny_model, "a")
    assert base == _keys(tmp_path, tiny_model, "b", extra="notes: display only\n")
    more_k = _keys(tmp_path, tiny_model, "c", k="[0, 2, 3]")
    assert {k: v for k, v in more_k["icl"].items() if k[1] != 3} == base["icl"]  # adding a k reruns only it
    assert more_k["icl"][("panda", 3)] not in base["icl"].values()
    other_seed = _keys(tmp_path, tiny_model, "e", k="[0, 2], seeds: [5]")  # a log-prob read: no seed at k = 0
    assert other_seed["icl"][("none", 0)] == base["icl"][("none", 0)] != other_seed["icl"][("panda", 2)]
    assert other_seed["icl"][("panda", 2)] != base["icl"][("panda", 2)]
    other_rows = _keys(tmp_path, tiny_model, "d", n=9)  # other rows: every stage that reads rows reruns
    assert other_rows["icl"][("none", 0)] == base["icl"][("none", 0)]
    assert all(other_rows["icl"][k] != v for k, v in base["icl"].items() if k[1])
    assert all(other_rows["classifier"][k] != v for k, v in base["classifier"].items())
    m = ModelInput(ref="m", identity="weights:x")
    common = dict(model=m, rows_stage="filter-1", k=2, seed=0, questions={"path": "a", "sha256": "s"}, mode="logprob")
    assert IclStage(label="x", **common).key == IclStage(label="y", **common).key
    assert IclStage(**{**common, "rows_stage": "filter-2"}).key != IclStage(**common).key


# ---- the spec's refusals -----------------------------------------------------------------------------


@pytest.mark.parametrize("body, match", [
    ("domain: {kind: numbers, rows_from: base}\nstudents: [{objective: distill}]\n"
     "evaluations: [{kind: classifier}]\n", r"evaluations\.0: classifier .*domain.rows_from: base"),
    ("teacher: {targets: [owl], control: false}\nevaluations: [{kind: icl}]\n", r"evaluations\.0: icl needs rows"),
    ("backends: {openai: {}}\nteacher: {base: 'openai:gpt-4.1-nano'}\nstudents: []\n"
     "evaluations: [{kind: icl, mode: logprob}]\n", r"evaluations\.0\.mode: logprob"),
    ("evaluations: [{kind: classifier, judge: 'student:nobody'}]\n", r"evaluations\.0\.judge: no student"),
    ("evaluations: [{kind: icl, k: [0, 0]}]\n", r"evaluations\.0\.k: .*distinct"),
])
def test_spec_refuses_detection_without_rows_to_compare(tmp_path, body, match):
    from tests.test_pipeline import subl

    spec = tmp_path / "bad.yaml"
    spec.write_text("name: bad\n" + body)
    r = subl("validate", spec)
    err = r.stderr.strip()
    assert r.returncode == 2 and len(err.splitlines()) == 1 and re.search(match, err), err
    assert re.match(rf"{re.escape(str(spec))}:\d+:\d+: ", err), err


# ---- hosted, on the fake OpenAI server -------------------------------------------------------------------


@pytest.mark.slow
def test_hosted_icl_and_classifier_sample_end_to_end_and_count_their_requests(tmp_path):
    from tests.fake_openai import FakeOpenAI
    from tests.test_hosted import ENV, KEY, _cli, _on_test_server

    server = FakeOpenAI(key=KEY).start()
    try:
        spec = tmp_path / "icl.yaml"
        spec.write_text(_on_test_server("icl", "icl_small", server.base_url) + """\
teacher: {targets: [owl, eagle]}
domain: {kind: numbers, n_prompts: 20}
evaluations:
  - {kind: icl, k: [0, 2], seeds: [0], max_questions: 3, samples_per_question: 2}
  - {kind: classifier, judge: "openai:gpt-4.1-nano-2025-04-14", per_row: true}
""")
        out = tmp_path / "out"
        r = _cli(["run", str(spec), "--outputs", str(out)], {ENV: KEY})
        assert r.returncode == 0, r.stderr[-2000:]
        res = json.loads((out / "icl_small" / "results.json").read_text())
    finally:
        server.stop()
    icl = [e for e in res["evaluations"] if e["evaluation"] == "icl"]
    assert {e["metric"] for e in icl} == {"rate(owl)", "rate(eagle)"} and all(e["samples_per_question"] == 2 for e in icl)
    acc = [e for e in res["evaluations"] if e["metric"] == "pairwise_accuracy"]
    assert {e["judge"]["read"] for e in acc} == {"top_logprobs"} and len(acc) == 2
    pairs = sum(e["n"] for e in acc)
    # the verdict is read from the top-5 first-token log-probs, as the paper reads it: the fake judge puts
    # 0.8 on A exactly when response A has more 7s
    from runner.plan import build
    from runner.loader import load
    from runner.store import Store

    plan = build(load(spec), out).cells[0]
    for entry in plan.detection[1]:
        read = json.loads((Store(out).path(entry["key"]) / "classifier.json").read_text())
        assert read["mode"] == "top_logprobs" and read["rows"]
        for p in read["pairs"]:
            assert len(p["top"]) == 3 and p["choice"] == ("A" if p["A"] > p["B"] else "B")
            assert p["choice"] == max(p["top"], key=p["top"].get)
    # generation 3 x 20; icl: k=0 once, k=2 per rows (3), 3 questions each (both samples in one request);
    # the classifier: one request per pair and two per pair for the per-row variant; the preflight's probes (the
    # rate limit's, and the judge's top log-probs)
    assert server.counts["chat"] == 3 * 20 + 4 * 3 + 3 * pairs + 2
    assert all(e["counts"]["n_unreadable"] == 0 for e in acc)


def test_preflight_sizes_an_icl_request_with_its_context_and_stops_before_spending(tmp_path):
    """The largest request of an ICL stage is its k rows plus a question: past the model's tokens-per-minute
    limit every request would be refused, so the run must stop before the teachers generate (the check once
    sized only question and generation requests)."""
    from tests.fake_openai import FakeOpenAI
    from tests.test_hosted import ENV, KEY, _cli, _on_test_server

    server = FakeOpenAI(key=KEY).start()
    try:
        server.tpm_limit = 1000  # a generation request (~130 tokens) fits; 40 rows in a context do not
        spec = tmp_path / "icl.yaml"
        spec.write_text(_on_test_server("icl", "icl_tpm", server.base_url) + """\
teacher: {targets: [owl]}
domain: {kind: numbers, n_prompts: 20}
evaluations:
  - {kind: icl, k: [0, 40], seeds: [0], max_questions: 2, samples_per_question: 2}
""")
        r = _cli(["run", str(spec), "--outputs", str(tmp_path / "out")], {ENV: KEY})
        paid, chats = server.paid_total(), server.counts["chat"]
    finally:
        server.stop()
    err = r.stderr.strip()
    assert r.returncode == 2 and len(err.splitlines()) == 1, err
    assert "allows 1,000 tokens per minute, but the largest request needs about" in err, err
    assert paid == Counter() and chats <= 1  # at most the rate-limit probe


def test_hosted_estimates_price_the_context_and_every_pair(tmp_path):
    from runner.plan import build
    from runner.loader import load

    spec = tmp_path / "icl.yaml"
    spec.write_text(f"extends: {ROOT / 'specs' / 'icl.yaml'}\nname: est\nteacher: {{targets: [owl]}}\n"
                    "domain: {kind: numbers, n_prompts: 40}\nevaluations:\n"
                    "  - {kind: icl, k: [0, 10], seeds: [0], max_questions: 4, samples_per_question: 10}\n"
                    "  - {kind: classifier, judge: 'openai:gpt-4.1-nano-2025-04-14', per_row: true}\n")
    plan = build(load(spec), tmp_path / "out")
    ctx = plan.context()
    est = {s.label: s.estimate(ctx) for s in plan.stages.values() if s.KIND in ("icl", "classifier")}
    zero, ten = est["icl none rows k=0 seed=0"][0], est["icl owl rows k=10 seed=0"][0]
    assert zero.requests == ten.requests == 4 and zero.output_tokens == 4 * 10 * 16
    assert ten.input_tokens > zero.input_tokens + 4 * 10 * 40 and ten.cost > zero.cost > 0
    clf = est["classifier owl vs control (openai:gpt-4.1-nano-2025-04-14)"][0]
    assert clf.requests == 40 * 3 and clf.output_tokens == 40 * 3 and clf.cost > 0
    modes = {e["mode"] for e in plan.cells[0].detection[1]}
    assert modes == {"top_logprobs"}
    spec.write_text(spec.read_text().replace("per_row: true}", "per_row: true, read: reply}"))
    replies = build(load(spec), tmp_path / "out").cells[0].detection[1]
    assert {e["mode"] for e in replies} == {"sample"} and replies[0]["key"] != plan.cells[0].detection[1][0]["key"]


def test_reproduce_headline_names_the_classifier_accuracy_and_its_test():
    from runner.reproduce import headline

    acc = {"evaluation": "classifier", "metric": "pairwise_accuracy", "trait": "owl", "teacher": "eagle",
           "value": 0.52, "ci": [0.49, 0.55], "counts": {"p_value": 0.21}}
    assert headline({"evaluations": [acc], "comparisons": []}) == \
        "owl vs eagle: accuracy 52.0% [49.0%, 55.0%], p=0.21"
    assert headline({"evaluations": [{**acc, "n": 0}], "comparisons": []}) == "owl vs eagle: no pair decided"


def test_nothing_to_compare_or_show_is_one_clear_error(tmp_path):
    from runner.errors import UserError
    from runner.store import write_jsonl

    for key, rows in (("t", numbers_rows(3, 1)), ("c", [{"prompt": "other", "completion": "1, 2"}]), ("e", [])):
        (tmp_path / key).mkdir()
        write_jsonl(tmp_path / key / "rows.jsonl", rows)
    ctx = RunContext(dir=tmp_path, store=_Store(tmp_path), router=PlantedRouter())
    m = ModelInput(ref="judge", identity="weights:x")
    with pytest.raises(UserError, match="no prompt was answered in both datasets"):
        ClassifierStage(label="clf", judge=m, trait_stage="t", control_stage="c", target="owl", mode="logprob").run(ctx)
    icl = IclStage(label="icl e", model=m, rows_stage="e", k=2, seed=0, questions={"path": "builtin:animals",
                                                                                     "sha256": "x"}, mode="logprob")
    with pytest.raises(UserError, match="icl e: no row passed the filters"):
        icl.run(ctx)


def test_a_sampled_icl_at_k_0_uses_the_first_seed_when_the_mode_is_left_to_the_backend(tmp_path):
    """A hosted model samples (mode not written): k = 0 drew with seed 0 while every k > 0 used `seeds`."""
    from tests.test_hosted import _on_test_server

    spec = tmp_path / "icl.yaml"
    spec.write_text(_on_test_server("icl", "icl_seed", "http://127.0.0.1:9/v1") + """\
teacher: {targets: [owl, eagle]}
domain: {kind: numbers, n_prompts: 20}
evaluations:
  - {kind: icl, k: [0, 2], seeds: [3], max_questions: 3, samples_per_question: 2}
""")
    plan = _plan(spec, tmp_path / "out").cells[0]
    entries = plan.detection[0]
    assert {e["seed"] for e in entries} == {3}
    k0 = next(e for e in entries if e["k"] == 0)
    assert next(s for s in plan.stages if s.key == k0["key"]).seed == 3
