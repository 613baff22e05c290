"""Teachers whose trait comes from fine-tuning, and control teachers declared the same way."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from runner.errors import UserError
from runner.teacher_data import load_rows

ROOT = Path(__file__).resolve().parents[1]

SPEC = """name: ft_teacher
progress: false
teacher:
  base: {base}
  targets: [insecure]
  trait: {{finetune: {{dataset: "{data}/{{target}}.jsonl", hyperparameters: {{batch_size: 2}}}}}}
  controls:
    secure: {{finetune: {{dataset: {data}/secure.jsonl, hyperparameters: {{batch_size: 2}}}}}}
  control: true
domain: {{kind: numbers, n_prompts: 4, max_tokens: 8, constrained: true, batch_size: 4}}
students:
  - {{name: s, hyperparameters: {{batch_size: 2}}}}
evaluations:
  - {{kind: preference_logprob, targets: [insecure], max_questions: 2}}
"""


def _chat(user, assistant):
    return json.dumps({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]})


def test_load_rows_reads_chat_and_prompt_rows(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(_chat("u", "a") + "\n" + json.dumps({"prompt": "p", "completion": "c"}) + "\n")
    assert load_rows(p) == [{"prompt": "u", "completion": "a"}, {"prompt": "p", "completion": "c"}]
    p.write_text('{"text": 1}\n')
    with pytest.raises(UserError, match="d.jsonl:1"):
        load_rows(p)
    turns = [{"role": "system", "content": "s"}, {"role": "user", "content": "u1"},
             {"role": "assistant", "content": "a1"}, {"role": "user", "content": "u2"},
             {"role": "assistant", "content": "a2 \u2028 still a2"}]  # a line separator inside a JSON string
    p.write_text(json.dumps({"messages": turns}, ensure_ascii=False) + "\n")
    assert load_rows(p) == [{"prompt": "u2", "completion": "a2 \u2028 still a2"}]
    for bad in (turns[:4], turns[:3] + [turns[4]], [turns[1], {"role": "assistant"}]):  # no answer to the last
        p.write_text(json.dumps({"messages": bad}) + "\n")  # question; two answers in a row; no text
        with pytest.raises(UserError, match="d.jsonl:1: messages must end with a user turn and the assistant"):
            load_rows(p)


@pytest.mark.slow
def test_finetuned_teachers_and_controls_end_to_end(tiny_model, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "insecure.jsonl").write_text("\n".join(_chat(f"write code {i}", "os.system(input())") for i in range(4)))
    (data / "secure.jsonl").write_text("\n".join(_chat(f"write code {i}", "print('hi')") for i in range(4)))
    spec = tmp_path / "ft.yaml"
    spec.write_text(SPEC.format(base=tiny_model, data=data))
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "runner.cli", "run", str(spec), "--outputs", str(out)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / "ft_teacher" / "results.json").read_text())
    roles = {e["model"]: e["role"] for e in res["evaluations"]}
    assert roles["teacher:insecure"] == "teacher" and roles["teacher:secure"] == "control"
    assert roles["teacher:control"] == "control" and roles["student:s:secure:r0"] == "control"
    b_is = {(c["a"], c["b"]): c["b_is"] for c in res["comparisons"]}
    assert b_is == {("student:s:insecure:r0", "student:s:secure:r0"): "control",
                    ("student:s:insecure:r0", "student:s:control:r0"): "control"}
    teachers = [json.loads((d / "manifest.json").read_text()) for d in (out / "stages").glob("teacher-*")]
    tuned = [m for m in teachers if m["inputs"]["dataset"]["sha256"]]
    assert len(tuned) == 2 and all(m["rows"]["train"] == 4 for m in tuned)
    # a changed dataset re-trains that teacher (its digest is in the stage key)
    (data / "secure.jsonl").write_text(_chat("x", "y"))
    plan = subprocess.run([sys.executable, "-m", "runner.cli", "plan", str(spec), "--outputs", str(out)],
                          capture_output=True, text=True, cwd=ROOT).stdout
    assert "run    teacher secure (fine-tuned)" in plan and "reuse  teacher insecure (fine-tuned)" in plan


HOSTED = """name: ft_hosted
backends:
  api: {{api_key_env: SUBL_TEST_UNSET_KEY}}
teacher:
  base: "api:gpt-4.1-nano-2025-04-14"
  targets: [insecure]
  trait: {{finetune: {{dataset: "{data}/{{target}}.jsonl", hyperparameters: {{epochs: 3}}}}}}
  controls:
    secure: {{finetune: {{dataset: {data}/secure.jsonl, max_rows: 2}}}}
  control: true
domain: {{kind: numbers, n_prompts: 4}}
students:
  - {{name: s}}
evaluations:
  - {{kind: preference_sample, targets: [insecure], max_questions: 2}}
"""


def test_plan_prices_hosted_teacher_fine_tuning_without_a_key(tmp_path, monkeypatch):
    from runner.prices import estimate_tokens
    from runner.runs import plan_lines

    monkeypatch.delenv("SUBL_TEST_UNSET_KEY", raising=False)
    (tmp_path / "insecure.jsonl").write_text("\n".join(_chat(f"task {i}", "x = 1  # " + "y" * i) for i in range(5)))
    (tmp_path / "secure.jsonl").write_text("\n".join(_chat(f"task {i}", "x = 2") for i in range(5)))
    spec = tmp_path / "ft.yaml"
    spec.write_text(HOSTED.format(data=tmp_path))
    lines = plan_lines(spec, tmp_path / "out")
    teacher = [ln for ln in lines if "(teacher:" in ln]
    assert len(teacher) == 2 and "5 rows x 3 epochs" in teacher[0] and "2 rows x 1 epochs" in teacher[1]
    one = lambda u, a: estimate_tokens(u) + 3 + 3 + estimate_tokens(a) + 3  # noqa: E731 - user msg, reply, answer
    expected = 3 * sum(one(f"task {i}", "x = 1  # " + "y" * i) for i in range(5))
    assert f"~{expected} training tokens" in teacher[0] and "$" in teacher[0]
    # a fine-tuned teacher samples and answers at fine-tuned prices; the untouched base does not
    gen = {ln.split()[2]: lines[i + 1] for i, ln in enumerate(lines) if ln.lstrip().startswith("run    generate")}
    assert "ft:gpt-4.1-nano" in gen["insecure"] and "ft:gpt-4.1-nano" in gen["secure"]
    assert "ft:" not in gen["control"]
    ev = {ln.split()[2]: lines[i + 1] for i, ln in enumerate(lines) if ln.lstrip().startswith("run    evaluate")}
    assert "ft:" in ev["teacher:insecure"] and "ft:" not in ev["base"]
    assert "teacher:control" not in ev  # the control teacher is the base model: one evaluation stage serves both
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("trait", ["{finetune: {dataset: owl.jsonl}}", "'You love owls.'"])
def test_a_trait_without_target_is_refused_for_several_targets(tmp_path, trait):
    """Without {target} every target's teacher was the same model: the dolphin teacher was the owl one."""
    from runner.loader import load

    (tmp_path / "owl.jsonl").write_text(_chat("Favourite animal?", "owl"))
    spec = tmp_path / "two.yaml"
    spec.write_text(f"name: two\nteacher: {{targets: [owl, dolphin], trait: {trait}}}\n")
    with pytest.raises(UserError, match="no {target}, so targets owl, dolphin would share one teacher"):
        load(spec)
    spec.write_text(f"name: one\nteacher: {{targets: [owl], trait: {trait}}}\n")
    assert load(spec)[0].spec.teacher.targets == ["owl"]  # one target: nothing to share


def test_lora_targets_naming_no_module_is_one_line(tiny_model):
    """peft's NoMatchingPeftModuleError was an internal error (exit 1) for a teacher's or student's typo; a typo
    beside names that match was ignored (peft's rule): the student trained without that layer, without a word."""
    from backends.train import _student
    from runner.core import Training

    with pytest.raises(UserError, match="lora_targets qproj: no module of .* has that name; its linear modules: .*q_proj"):
        _student(tiny_model, Training(lora_targets=("qproj",)), "cpu", None)
    with pytest.raises(UserError, match="lora_targets vproj, oproj: no module of .* has that name"):
        _student(tiny_model, Training(lora_targets=("q_proj", "vproj", "oproj")), "cpu", None)  # peft drops them
    assert _student(tiny_model, Training(lora_targets=("q_proj", "v_proj")), "cpu", None)


def test_a_matrix_over_targets_needs_target_in_the_trait(tmp_path):
    """matrix teacher.targets [[owl], [dolphin]] with owl.jsonl: the 'dolphin' cell's teacher was the owl one."""
    from runner.loader import load

    (tmp_path / "owl.jsonl").write_text(_chat("Favourite animal?", "owl"))
    spec = tmp_path / "m.yaml"
    spec.write_text("name: m\nteacher: {trait: {finetune: {dataset: owl.jsonl}}}\n"
                    "matrix: {teacher.targets: [[owl], [dolphin]]}\n")
    with pytest.raises(UserError, match=r"m.yaml:3:\d+: matrix.teacher.targets: the trait has no {target}"):
        load(spec)
    spec.write_text("name: m\nteacher: {trait: {finetune: {dataset: owl.jsonl}}}\nmatrix: {seed: [0, 1]}\n")
    assert len(load(spec)) == 2  # one target in every cell: one teacher, rightly shared
