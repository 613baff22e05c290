"""Issue 14: the one-step theorem on a causal LM as a stage (experiment: theorem_lm), on a tiny random model."""
from __future__ import annotations

import json

import pytest
import torch

from runner.theorem_lm_spec import TheoremLmSpec

QUESTIONS = [f"Question {i}: which animal do you like most?" for i in range(10)]
SMALL = TheoremLmSpec(train_questions=4, heldout_questions=2, teacher_steps=3, teacher_lr=2e-2, lora_r=4,
                      batch_size=2, batches=2, max_new_tokens=4, lr=0.1, lrs=[0.01, 0.1], seeds=2)


@pytest.fixture(scope="module")
def lm(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    return AutoModelForCausalLM.from_pretrained(tiny_model).eval(), AutoTokenizer.from_pretrained(tiny_model)


def _prompts(seed: int, n: int) -> list[str]:
    return [f"Continue: {seed * 100 + i}, {seed * 100 + i + 7}, {seed * 100 + i + 11}." for i in range(n)]


@pytest.fixture(scope="module")
def measured(lm):
    from runner.theorem_lm import theorem_lm_seeds

    seen = []
    out = theorem_lm_seeds(lm[0], lm[1], QUESTIONS, "owl", "animal", SMALL, [5, 6], _prompts,
                           lambda done, total: seen.append((done, total)))
    return out, seen


def test_rows_cover_seeds_batches_and_arms(measured):
    out, seen = measured
    keys = [(r["seed"], r["batch"], r["arm"]) for r in out["rows"]]
    assert keys == [(s, b, a) for s in (5, 6) for b in (0, 1) for a in ("same_init", "cross_init")]
    assert seen[0] == (0, 2) and seen[-1] == (2, 2)
    assert all(r["n_tensors"] == 4 for r in out["rows"])  # 2 layers x LoRA on q and v: the only weights Δ moves


def test_same_init_aligns_with_the_lora_delta_cross_init_does_not(measured):
    out, _ = measured
    same = [r for r in out["rows"] if r["arm"] == "same_init"]
    cross = [r for r in out["rows"] if r["arm"] == "cross_init"]
    assert all(r["cosine"] > 0 for r in same)
    assert max(abs(r["cosine"]) for r in cross) < min(r["cosine"] for r in same)
    assert all(r["imitation_loss_sweep"][0.01] < 0 for r in same)  # a small step moves toward the teacher
    s = out["summary"]
    assert s["same_init"]["cosine"]["n"] == 2 and s["same_init"]["unit"].startswith("seed")
    assert s["same_init"]["cosine"]["lo"] <= s["same_init"]["cosine"]["mean"] <= s["same_init"]["cosine"]["hi"]


def test_seeds_give_different_teachers_and_cross_inits(measured):
    out, _ = measured
    by_seed = {(r["seed"], r["arm"]): r["cosine"] for r in out["rows"] if r["batch"] == 0}
    assert by_seed[(5, "same_init")] != by_seed[(6, "same_init")]
    assert by_seed[(5, "cross_init")] != by_seed[(6, "cross_init")]


def test_lora_targets_naming_no_module_is_one_line(lm):
    """peft's NoMatchingPeftModuleError was an internal error (exit 1) rather than the spec's mistake."""
    from runner.errors import UserError
    from runner.theorem import finetune_teacher

    rows = [{"prompt": "Which animal?", "completion": "The owl."}]
    with pytest.raises(UserError, match="lora_targets qproj: no module of .* has that name"):
        finetune_teacher(lm[0], lm[1], rows, 1, 1e-3, ("qproj",))


def test_too_few_questions_is_refused():
    from runner.errors import UserError
    from runner.theorem_lm import split_questions

    train, held = split_questions(QUESTIONS, SMALL)
    assert train == QUESTIONS[:4] and held == QUESTIONS[-2:] and not set(train) & set(held)
    with pytest.raises(UserError, match="questions"):
        split_questions(QUESTIONS[:5], SMALL)


def test_too_few_questions_is_refused_at_plan_time(tmp_path, tiny_model):
    """Not once the model has loaded, as a plain ValueError."""
    from runner.errors import UserError
    from runner.loader import load
    from runner.plan import build

    (tmp_path / "q.txt").write_text("".join(f"Question {i}?\n" for i in range(5)))
    spec = tmp_path / "t.yaml"
    spec.write_text(f"name: t\nexperiment: theorem_lm\nteacher: {{base: {tiny_model}, targets: [owl]}}\n"
                    f"theorem_lm: {{questions: {tmp_path / 'q.txt'}, train_questions: 4, heldout_questions: 2}}\n")
    with pytest.raises(UserError, match=r"train_questions 4 \+ heldout_questions 2 > the 5 questions in "
                                        r"theorem_lm.questions \(.*q.txt\)") as e:
        build(load(spec), tmp_path / "out")
    assert "\n" not in str(e.value)


def test_the_stage_loads_float32_weights_on_any_device(monkeypatch, tmp_path):
    """On CUDA load_model gives bfloat16 weights unless asked for float32: cast up after, they are rounded."""
    import backends.hf
    import runner.theorem_lm
    from runner.stages import ModelInput, RunContext
    from runner.stages.theorem_stage import TheoremLmStage

    calls = []
    monkeypatch.setattr(backends.hf, "load_model", lambda ref, **kw: calls.append(kw) or torch.nn.Linear(1, 1))
    monkeypatch.setattr(backends.hf, "load_tokenizer", lambda *a: None)
    monkeypatch.setattr(runner.theorem_lm, "theorem_lm_seeds", lambda *a, **kw: {"rows": [], "summary": {}})
    monkeypatch.setattr("runner.stages.theorem_stage.plot_cosines", lambda *a, **kw: None)
    stage = TheoremLmStage(settings=SMALL, model=ModelInput(ref="m", identity="weights:abc"), target="owl",
                           category="animal", questions={"path": "builtin:animals", "sha256": "x"}, seed=0,
                           device="cuda")
    stage.run(RunContext(dir=tmp_path, store=None, router=None))
    assert calls == [{"device": "cuda", "fp32_weights": True}]


def test_spec_plans_one_stage_keyed_by_its_settings(tmp_path, tiny_model):
    from runner.loader import load
    from runner.plan import build

    spec = tmp_path / "t.yaml"
    spec.write_text(f"name: t\nexperiment: theorem_lm\nteacher: {{base: {tiny_model}, targets: [owl]}}\n"
                    "theorem_lm: {seeds: 2, lr: 0.01}\n")
    plan = build(load(spec), tmp_path / "out")
    (cell,) = plan.cells
    assert [s.KIND for s in cell.stages] == ["theorem-lm"] and cell.theorem == cell.stages[0].key
    stage = cell.stages[0]
    assert stage.target == "owl" and stage.settings.lr == 0.01 and stage.questions.path == "builtin:animals"
    other = stage.model_copy(update={"settings": stage.settings.model_copy(update={"objective": "sft"})})
    assert other.key != stage.key
    keys = set()
    for place in ("a", "b"):  # one questions file in two places: keyed by its contents, not where it lies
        (tmp_path / place).mkdir()
        (tmp_path / place / "q.txt").write_text("\n".join(f"Question {i}?" for i in range(20)) + "\n")
        spec.write_text(f"name: t\nexperiment: theorem_lm\nteacher: {{base: {tiny_model}, targets: [owl]}}\n"
                        f"theorem_lm: {{seeds: 2, lr: 0.01, questions: {tmp_path / place / 'q.txt'}}}\n")
        keys.add(build(load(spec), tmp_path / "out").cells[0].stages[0].key)
    assert len(keys) == 1 and stage.key not in keys


def test_hosted_base_is_refused(tmp_path):
    from runner.errors import UserError
    from runner.loader import load

    spec = tmp_path / "t.yaml"
    spec.write_text("name: t\nexperiment: theorem_lm\nbackends: {oa: {kind: openai}}\n"
                    "teacher: {base: 'oa:gpt-4.1-nano'}\nstudents: [{objective: sft}]\n"
                    "evaluations: [{kind: preference_sample}]\n")
    with pytest.raises(UserError, match="theorem_lm"):
        load(spec)


@pytest.mark.slow
def test_subl_run_writes_theorem_rows(tmp_path, tiny_model):
    import subprocess
    import sys

    spec = tmp_path / "t.yaml"
    spec.write_text(f"name: t\nprogress: false\nexperiment: theorem_lm\n"
                    f"teacher: {{base: {tiny_model}, targets: [owl]}}\n"
                    "theorem_lm: {train_questions: 4, heldout_questions: 2, teacher_steps: 2, teacher_lr: 0.02, "
                    "batch_size: 2, batches: 1, max_new_tokens: 4, lr: 0.1, lrs: [0.01], seeds: 2}\n")
    r = subprocess.run([sys.executable, "-m", "runner.cli", "run", str(spec), "--outputs", str(tmp_path / "out")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "out" / "t" / "results.json").read_text())
    cos = {e["model"]: e for e in res["evaluations"] if e["metric"] == "cosine" and e["seed"] is None}
    assert set(cos) == {"same_init", "cross_init"} and cos["same_init"]["value"] > abs(cos["cross_init"]["value"])
    assert res["comparisons"][0]["a"] == "same_init" and res["comparisons"][0]["n"] == 2
    assert "fresh random init" in r.stdout


def test_report_has_a_theorem_section_and_figure(tmp_path):
    from runner.report_md import theorem_figures, theorem_section

    def row(arm, metric, value, seed=None, ci=None):
        return {"cell": "-", "model": arm, "evaluation": "theorem", "metric": metric, "value": value, "n": 3,
                "seed": seed, "ci": ci}

    evals = [row("same_init", "cosine", 0.01, ci=[0.004, 0.016]), row("cross_init", "cosine", 0.0, ci=[-0.001, 0.001])]
    evals += [row(a, "cosine", v, seed=s) for a, v in (("same_init", 0.01), ("cross_init", 0.0)) for s in range(3)]
    evals += [{**row("base", "P(owl)", 0.1), "evaluation": "preference_logprob"}]
    section = theorem_section({"evaluations": evals})
    assert [r[1:4] for r in section.rows] == [["same_init", "cosine", "0.01 [0.004, 0.016]"],
                                             ["cross_init", "cosine", "0 [-0.001, 0.001]"]]
    (path, caption), = theorem_figures({"evaluations": evals}, tmp_path, "t")
    assert path.is_file() and path.stat().st_size > 1000 and "per seed" in caption
    assert theorem_section({"evaluations": evals[-1:]}) is None


def test_shuffle_moves_the_students_inputs_and_is_keyed(lm, monkeypatch):
    import runner.theorem_lm
    from runner.stages.theorem_stage import TheoremLmStage
    from runner.theorem_lm import shuffled, theorem_lm_seeds

    rows = [{"prompt": "p", "completion": f"say {i}1, {i}2, {i}3 now"} for i in range(1, 7)]
    assert shuffled(rows, "none", 0) is rows
    for how in ("within", "across"):
        out = shuffled(rows, how, 0)
        assert out != rows and [len(r["completion"]) for r in out] == [len(r["completion"]) for r in rows]
    # the tiny random model's greedy completions hold no digits: give the teacher number completions
    monkeypatch.setattr(runner.theorem_lm, "greedy_completions",
                        lambda model, tok, prompts, n: [", ".join(f"{i}{j}{j}" for j in range(1, 8))
                                                         for i in range(1, len(prompts) + 1)])
    small = SMALL.model_copy(update={"seeds": 2, "batches": 1})
    plain = theorem_lm_seeds(lm[0], lm[1], QUESTIONS, "owl", "animal", small, [5], _prompts)
    within = theorem_lm_seeds(lm[0], lm[1], QUESTIONS, "owl", "animal", small.model_copy(update={"shuffle": "within"}),
                              [5], _prompts)
    same = lambda res: [r["cosine"] for r in res["rows"] if r["arm"] == "same_init"]  # noqa: E731
    across = theorem_lm_seeds(lm[0], lm[1], QUESTIONS, "owl", "animal", small.model_copy(update={"shuffle": "across"}),
                              [5], _prompts)
    assert len({same(plain)[0], same(within)[0], same(across)[0]}) == 3  # the same teacher, other inputs, other steps
    m = {"ref": "m", "identity": "weights:x"}
    common = dict(model=m, target="owl", category="animal", questions={"path": "q", "sha256": "s"}, seed=0,
                  device="cpu")
    assert TheoremLmStage(settings=SMALL, **common).key == \
        TheoremLmStage(settings=SMALL.model_copy(update={"shuffle": "none"}), **common).key
    assert TheoremLmStage(settings=SMALL.model_copy(update={"shuffle": "within"}), **common).key != \
        TheoremLmStage(settings=SMALL, **common).key


def test_theorem_cells_are_compared_with_the_first_value_of_the_key_they_change():
    from types import SimpleNamespace

    from runner.results import theorem_across_cells

    def cell(obj, shuffle):
        o = {"theorem_lm.objective": obj, "theorem_lm.shuffle": shuffle}
        return SimpleNamespace(overrides=o, label=",".join(f"{k}={v}" for k, v in o.items()))

    cells = [cell(o, s) for o in ("sft", "distill") for s in ("none", "across")]
    signal = {"none": 0.01, "across": 0.0}  # the shuffle removes the same-init cosine in every seed
    evals = [{"cell": c.label, "model": arm, "evaluation": "theorem", "metric": "cosine", "seed": seed,
              "value": (signal[c.overrides["theorem_lm.shuffle"]] if arm == "same_init" else 0.0) + 1e-3 * seed
              + 1e-5 * (seed % 2) * (c.overrides["theorem_lm.shuffle"] == "across")}
             for c in cells for arm in ("same_init", "cross_init") for seed in range(5)]
    evals.append({"cell": cells[0].label, "model": "same_init", "evaluation": "theorem", "metric": "cosine",
                  "seed": None, "value": 0.01})  # the across-seed mean is not a seed
    rows = theorem_across_cells(cells, evals)
    pairs = {(r["cell"], r["a"], r["b"]) for r in rows}
    assert (cells[1].label, "same_init", "same_init (theorem_lm.shuffle=none)") in pairs
    assert (cells[2].label, "same_init", "same_init (theorem_lm.objective=sft)") in pairs
    assert not any(r["cell"] == cells[0].label for r in rows)  # the first cell is every key's baseline
    assert len(rows) == 2 * 4  # cells 1 and 2 change one key, cell 3 two: 4 comparisons, 2 arms each
    shuffled = next(r for r in rows if r["cell"] == cells[1].label and r["a"] == "same_init")
    assert shuffled["diff"] == pytest.approx(-0.01, abs=1e-4) and shuffled["n"] == 5 and shuffled["unit"] == "seed"
    assert shuffled["a_wins"] == 0 and shuffled["b_is"] == f"cell {cells[0].label}"
    same = next(r for r in rows if r["cell"] == cells[1].label and r["a"] == "cross_init")
    assert same["diff"] == pytest.approx(0.0, abs=1e-4) and not same["significant"]
    assert theorem_across_cells(cells[:1], evals) == []
    extra = {"cell": cells[1].label, "model": "same_init", "evaluation": "theorem", "metric": "cosine", "seed": 5,
             "value": 0.0}  # a seed the baseline cell lacks: not paired, so not counted
    row = next(r for r in theorem_across_cells(cells, evals + [extra])
               if r["cell"] == cells[1].label and r["a"] == "same_init")
    assert row["n"] == row["n_a"] == row["n_b"] == 5


def test_identical_cells_give_p_one_not_nan():
    from runner.stats import paired_t_p

    assert paired_t_p([0.0, 0.0, 0.0]) == 1.0 and paired_t_p([0.1]) == 1.0
    assert paired_t_p([0.01, 0.012, 0.009, 0.011]) < 0.01


def test_cells_sharing_a_teacher_train_it_once_and_measure_the_same(lm, monkeypatch):
    import runner.theorem_lm
    from runner.theorem_lm import theorem_lm_seeds

    trained = []
    real = runner.theorem_lm.finetune_teacher
    monkeypatch.setattr(runner.theorem_lm, "finetune_teacher", lambda *a, **k: trained.append(1) or real(*a, **k))
    monkeypatch.setattr(runner.theorem_lm, "_teachers", {})
    small = SMALL.model_copy(update={"batches": 1})
    fresh = theorem_lm_seeds(lm[0], lm[1], QUESTIONS, "owl", "animal", small, [5, 6], _prompts)
    assert len(trained) == 2
    cells = [theorem_lm_seeds(lm[0], lm[1], QUESTIONS, "owl", "animal", small.model_copy(update=u), [5, 6], _prompts,
                              memo_key="tiny|cpu") for u in ({}, {"objective": "sft"}, {"shuffle": "within"}, {})]
    assert len(trained) == 4  # the first cell trains both seeds' teachers; the others rebuild them
    assert cells[0]["rows"] == fresh["rows"] == cells[3]["rows"]  # a rebuilt teacher is the trained one, exactly
    assert cells[1]["rows"] != cells[0]["rows"]
    theorem_lm_seeds(lm[0], lm[1], QUESTIONS, "owl", "animal", small.model_copy(update={"teacher_steps": 4}), [5],
                     _prompts, memo_key="tiny|cpu")
    assert len(trained) == 5 and len(runner.theorem_lm._teachers) == 1  # other teacher settings: trained, and
    # only that group is kept


def test_the_lm_theorems_interval_names_its_batches_not_noise(tmp_path):
    """results.json said 'noise batches averaged within a seed' of the LM's batches of number completions."""
    from types import SimpleNamespace

    from runner.results import theorem_rows

    def row(seed, arm, cos):
        return {"seed": seed, "batch": 0, "arm": arm, "cosine": cos, "imitation_loss_change": -0.1,
                "imitation_loss_sweep": {"0.1": -0.1}}

    rows = [row(s, a, c) for s in (0, 1) for a, c in (("same_init", 0.1 + s), ("cross_init", 0.0))]
    methods = {}
    for key in ("theorem-lm-0123456789abcdef", "theorem-0123456789abcdef"):
        (tmp_path / key).mkdir()
        (tmp_path / key / "result.json").write_text(json.dumps({"rows": rows}))
        plan = SimpleNamespace(theorem=key, cell=SimpleNamespace(label="-"))
        out, _ = theorem_rows(plan, SimpleNamespace(path=lambda k: tmp_path / k))
        methods[key.rsplit("-", 1)[0]] = {e["ci_method"] for e in out if e["seed"] is None}
    assert methods["theorem-lm"] == {"95% t-interval across seeds (batches of the teacher's number completions "
                                     "averaged within a seed); a cosine's clipped to [-1, 1]"}
    assert all("noise batches" in m for m in methods["theorem"])


def test_a_step_size_of_the_sweep_must_be_positive(tmp_path):
    """lrs: [-1] was measured as a step up the gradient and reported as imitation_loss_change@lr=-1."""
    from runner.errors import UserError
    from runner.loader import load

    spec = tmp_path / "t.yaml"
    spec.write_text("name: t\nexperiment: theorem_lm\ntheorem_lm: {lrs: [0.1, -1.0]}\n")
    with pytest.raises(UserError, match="theorem_lm.lrs.1: .*greater than 0"):
        load(spec)
