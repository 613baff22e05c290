"""The spending check (runner/budget.py): nothing hosted is sent until the plan's upper bound fits --max-usd."""
from __future__ import annotations

import json

import pytest
from rich.console import Console

from runner.display import usd
from tests.fake_openai import FakeOpenAI
from tests.test_hosted import ENV, KEY, NANO, ROOT, _cli

SPEC = f"""name: spend
progress: false
backends:
  openai: {{base_url: "{{url}}", api_key_env: {ENV}, concurrency: 4}}
teacher: {{base: {NANO}, targets: [owl], control: false}}
domain: {{kind: numbers, n_prompts: 6}}
students: []
evaluations:
  - {{kind: preference_sample, questions: animals, samples_per_question: 2, max_questions: 2}}
"""


@pytest.fixture
def server():
    s = FakeOpenAI(key=KEY).start()
    yield s
    s.stop()


def _spec(tmp_path, server, extra: str = ""):
    p = tmp_path / "spend.yaml"
    p.write_text(SPEC.replace("{url}", server.base_url) + extra)
    return p


def _paid(server) -> list:
    return [x for x in server.log if x[0] == "POST"]


def _bound(spec, out) -> float:
    from runner.budget import planned_usd

    return planned_usd(spec, out)


def test_a_hosted_run_without_a_budget_sends_nothing_and_says_what_it_may_cost(server, tmp_path):
    spec = _spec(tmp_path, server)
    r = _cli(["run", str(spec), "--outputs", str(tmp_path / "out")], {ENV: KEY, "SUBL_MAX_USD": ""})
    err = r.stderr.strip()
    assert r.returncode == 2 and len(err.splitlines()) == 1, err
    assert f"may cost up to {usd(_bound(spec, tmp_path / 'out'))}" in err and "--max-usd" in err
    assert _paid(server) == []


def test_a_budget_below_the_bound_sends_nothing_and_one_above_runs(server, tmp_path):
    spec, out = _spec(tmp_path, server), tmp_path / "out"
    bound = _bound(spec, out)
    assert 0 < bound < 0.01  # 6 rows and 2 x 2 answers per model on GPT-4.1 nano
    r = _cli(["run", str(spec), "--outputs", str(out), "--max-usd", f"{bound * 0.9:.6f}"], {ENV: KEY})
    assert r.returncode == 2 and "over --max-usd" in r.stderr and _paid(server) == [], r.stderr
    assert bound < 0.009  # so that the budget below is above it
    r = _cli(["run", str(spec), "--outputs", str(out), "--max-usd", "0.009"], {ENV: KEY})
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"spend: the hosted stages to run may cost up to {usd(bound)}" in r.stdout and _paid(server)
    assert "(--max-usd $0.009)" in r.stdout  # as given: not $0.01, more than it allows
    assert json.loads((out / "spend" / "results.json").read_text())["evaluations"]
    # finished stages cost nothing more: a rerun needs no budget
    assert _bound(spec, out) == 0
    assert _cli(["run", str(spec), "--outputs", str(out)], {ENV: KEY, "SUBL_MAX_USD": ""}).returncode == 0


def test_a_model_with_no_price_cannot_pass_the_check_until_the_spec_prices_it(server, tmp_path):
    from runner.budget import BudgetError

    spec = _spec(tmp_path, server, "")
    spec.write_text(spec.read_text().replace(NANO, "openai:my-own-model"))
    with pytest.raises(BudgetError, match="no price for openai:my-own-model"):
        _bound(spec, tmp_path / "out")
    spec.write_text(spec.read_text().replace("concurrency: 4", "concurrency: 4, prices: {my-own-model: [0, 0]}"))
    assert _bound(spec, tmp_path / "out") == 0


def test_a_hosted_stage_with_no_estimate_is_never_taken_as_free(server, tmp_path, monkeypatch):
    from runner.budget import BudgetError
    from runner.stages.evaluation import AnswersStage

    monkeypatch.setattr(AnswersStage, "estimate", lambda self, ctx: [])
    with pytest.raises(BudgetError, match="cannot estimate what evaluate"):
        _bound(_spec(tmp_path, server), tmp_path / "out")


def test_reproduce_spends_one_budget_across_specs(tmp_path, monkeypatch):
    """Each hosted spec runs only if its bound fits what the ones before it left; the rest are skipped."""
    from runner import budget, reproduce, runs

    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.yaml").write_text(f"name: {name}\n")
    ran = []

    def run_spec(path, outputs, console, max_usd=None):
        if bounds[path.stem] > max_usd + 1e-9:
            raise budget.OverBudget("over --max-usd")
        ran.append(path.stem)
        return {"evaluations": [], "comparisons": []}

    bounds = {"a": 4.0, "b": 4.0, "c": 4.0}
    monkeypatch.setattr(budget, "planned_usd", lambda path, outputs: bounds[path.stem])
    monkeypatch.setattr(runs, "run_spec", run_spec)
    monkeypatch.setattr(reproduce, "missing_keys", lambda path: [])
    assert reproduce.reproduce([tmp_path], tmp_path / "out", Console(quiet=True), max_usd=10.0) == 0
    assert ran == ["a", "b"]  # c would bring the bounds to $12
    ran.clear()
    bounds.update(a=0.1, b=0.2, c=0.0)  # 0.1 + 0.2 fit 0.3 although 0.3 - 0.1 < 0.2 in floats
    assert reproduce.reproduce([tmp_path], tmp_path / "out", Console(quiet=True), max_usd=0.3) == 0
    assert ran == ["a", "b", "c"]


def test_reproduce_fails_a_spec_it_cannot_price_instead_of_skipping_it(tmp_path, monkeypatch):
    from runner import budget, reproduce

    (tmp_path / "a.yaml").write_text("name: a\n")

    def unpriced(path, outputs):
        raise budget.BudgetError("no price for openai:mine")

    monkeypatch.setattr(budget, "planned_usd", unpriced)
    monkeypatch.setattr(reproduce, "missing_keys", lambda path: [])
    assert reproduce.reproduce([tmp_path], tmp_path / "out", Console(quiet=True), max_usd=10.0) == 1


# ---- the bounds themselves: never below what the stages send --------------------------------------------


def _estimates(spec, out, kind: str) -> list:
    from runner.budget import pending
    from runner.loader import load
    from runner.plan import build
    from runner.store import Store

    plan = build(load(spec), out)
    ctx = plan.context()
    return [e for st in pending(plan, Store(out)) if st.KIND == kind for e in st.estimate(ctx)]


def test_a_fine_tuned_model_named_by_its_id_is_priced_as_fine_tuned():
    from runner.spec import HostedBackend
    from runner.stages.costs import chat_request

    def cost(model, tuned):
        return chat_request("openai", model, None, tuned, 10, 10**6, 10**6).cost

    nano = "gpt-4.1-nano-2025-04-14"
    assert cost(f"ft:{nano}:org::abc", False) == cost(nano, True) > cost(nano, False)
    priced = HostedBackend(prices={f"ft:{nano}:org::abc": [1.0, 2.0]})  # the spec prices that very model
    assert chat_request("openai", f"ft:{nano}:org::abc", priced, False, 10, 10**6, 10**6).cost == 3.0


def test_a_bound_below_a_cent_prints_as_a_cent_and_that_budget_passes(server, tmp_path):
    from runner.budget import OverBudget, check
    from runner.loader import load
    from runner.plan import build
    from runner.store import Store

    assert (usd(0.004), usd(0.01), usd(1234.561)) == ("$0.01", "$0.01", "$1,234.57")
    spec, store = _spec(tmp_path, server), Store(tmp_path / "out")
    plan = build(load(spec), store.root)
    with pytest.raises(OverBudget, match=r"up to \$0\.01 .*--max-usd") as e:
        check(plan, store, None)
    assert check(plan, store, 0.01)[0] <= 0.01  # the advice in the message works


@pytest.mark.parametrize("n_prompts,batch_size,batched", [(60, 500, 0), (250, 100, 200), (250, 125, 250),
                                                         (1000, 64, 0)])
def test_the_batch_discount_covers_only_calls_the_batch_api_takes(server, tmp_path, n_prompts, batch_size, batched):
    """A call (one chunk of batch_size rows) goes through the Batch API only with >= 100 requests."""
    spec = _spec(tmp_path, server)
    spec.write_text(spec.read_text().replace("concurrency: 4", "concurrency: 4, batch_api: true")
                    .replace("n_prompts: 6", f"n_prompts: {n_prompts}, batch_size: {batch_size}"))
    parts = _estimates(spec, tmp_path / "out", "generate")
    assert sum(e.requests for e in parts if "Batch API" in e.note) == batched
    assert sum(e.requests for e in parts) == n_prompts


def test_a_rewrite_longer_than_the_rows_raises_what_students_train_on(server, tmp_path):
    spec = _spec(tmp_path, server)
    base = spec.read_text().replace("students: []", f"students: [{{name: s, base: {NANO}, hyperparameters: {{epochs: 2}}}}]")

    def trained(max_tokens: int) -> int:
        spec.write_text(base + f"filters: [{{kind: resample, model: {NANO}, max_tokens: {max_tokens}}}]\n")
        return sum(e.training_tokens for e in _estimates(spec, tmp_path / "out", "finetune"))

    assert trained(1024) - trained(512) == 6 * 512 * 2  # 6 rows, 512 more tokens each, 2 epochs


def test_the_plan_prints_the_bound_the_run_checks(server, tmp_path):
    """`subl plan`'s total, passed as --max-usd, must pass the check (it printed the bound rounded to the
    nearest cent, below the bound for $573.3106: --max-usd 573.31 was then refused)."""
    from runner.budget import check
    from runner.loader import load
    from runner.plan import build
    from runner.runs import plan_lines
    from runner.store import Store

    spec, store = _spec(tmp_path, server), Store(tmp_path / "out")
    total = next(ln for ln in plan_lines(spec, tmp_path / "out") if ln.startswith("hosted:"))
    printed = float(total.split("<= $")[1].split(";")[0].split()[0].replace(",", ""))
    assert check(build(load(spec), store.root), store, printed)[0] <= printed


# ---- from the money review: each failed before its fix ---------------------------------------------------


def test_a_bound_that_prints_as_whole_cents_fits_a_budget_of_those_cents(server, tmp_path, monkeypatch):
    """usd() drops float noise below 5e-9 dollars before rounding up: $573.31 printed for 573.31 + 4e-9. The run
    and reproduce then refused --max-usd 573.31 ('may cost up to $573.31, over --max-usd $573.31')."""
    from runner import budget, reproduce, runs
    from runner.loader import load
    from runner.plan import build
    from runner.stages import Estimate
    from runner.store import Store

    bound = 573.31 + 4e-9
    assert usd(bound) == "$573.31"
    spec, store = _spec(tmp_path, server), Store(tmp_path / "out")
    plan = build(load(spec), store.root)
    first = next(iter(plan.stages.values()))
    monkeypatch.setattr(budget, "pending", lambda plan, store: [first])
    monkeypatch.setattr(budget, "estimate_of", lambda st, ctx: [Estimate("openai", "m", 1, 1, 1, 0, bound)])
    assert budget.check(plan, store, 573.31)[0] == bound
    with pytest.raises(budget.OverBudget):
        budget.check(plan, store, 573.30)
    ran = []
    monkeypatch.setattr(budget, "planned_usd", lambda path, outputs: bound)
    monkeypatch.setattr(runs, "run_spec", lambda path, outputs, console, max_usd=None: ran.append(path.stem) or {})
    monkeypatch.setattr(reproduce, "missing_keys", lambda path: [])
    status = reproduce.run_one(spec, tmp_path / "out", Console(quiet=True), 573.31)
    assert status[0] == "ok" and ran == ["spend"], status


def test_what_is_left_of_a_budget_never_reads_as_more_than_it_is(tmp_path, monkeypatch):
    """$10 less a $4.004 spec leaves $5.996: a $5.9995 spec is skipped, and the reason said 'up to $6.00, and only
    $6.00 of --max-usd is left' (the budget rounded to the nearest cent, the bound up)."""
    import io

    from runner import budget, reproduce, runs

    for name in ("a", "b"):
        (tmp_path / f"{name}.yaml").write_text(f"name: {name}\n")
    bounds = {"a": 4.004, "b": 5.9995}
    monkeypatch.setattr(budget, "planned_usd", lambda path, outputs: bounds[path.stem])
    monkeypatch.setattr(runs, "run_spec", lambda path, outputs, console, max_usd=None: {})
    monkeypatch.setattr(reproduce, "missing_keys", lambda path: [])
    text = io.StringIO()
    assert reproduce.reproduce([tmp_path], tmp_path / "out", Console(file=text, width=300), max_usd=10.0) == 0
    said = next(ln for ln in text.getvalue().splitlines() if ln.startswith("skip"))
    assert "up to $6.00, and only $5.996 of --max-usd is left" in said, said


def test_the_refusal_of_an_unpriced_model_names_the_entry_that_prices_it(server, tmp_path):
    """A model the table does not know, fine-tuned and then evaluated, needs its training price and its fine-tuned
    models' prices. The refusal advised `[0, 0]`, after which it refused again in the same words; following the
    advice it gives now passes the check."""
    import re

    from runner.budget import BudgetError

    spec = _spec(tmp_path, server)
    text = spec.read_text().replace(NANO, "openai:my-own-model").replace(
        "students: []", "students: [{name: s, base: openai:my-own-model, hyperparameters: {epochs: 1}}]")
    spec.write_text(text)
    with pytest.raises(BudgetError) as e:
        _bound(spec, tmp_path / "out")
    entry = re.search(r"backends\.openai\.prices\.my-own-model: \[([a-z_, ]+)\]", str(e.value))
    assert entry and entry.group(1) == "input, output, training, ft_input, ft_output", str(e.value)
    zeros = ", ".join("0" for _ in entry.group(1).split(","))
    spec.write_text(text.replace("concurrency: 4", f"concurrency: 4, prices: {{my-own-model: [{zeros}]}}"))
    assert _bound(spec, tmp_path / "out") == 0


def test_an_override_of_an_alias_does_not_price_a_snapshot_the_table_prices_apart():
    """gpt-4o-2024-05-13 costs twice gpt-4o's input price; an override of gpt-4o (say, to give a new training
    price) priced that snapshot at the alias's prices, below the table's, so the bound undercounted it."""
    from runner.prices import TABLE, Price, price_for

    ours = {"gpt-4o": [2.5, 10.0, 30.0]}
    assert price_for("gpt-4o-2024-05-13", ours) == TABLE["gpt-4o-2024-05-13"]
    assert price_for("gpt-4o-2024-08-06", ours).training == 30.0  # a snapshot the table does not price apart
    assert price_for("gpt-4o-2024-05-13", {"gpt-4o-2024-05-13": [6, 18]}) == Price(6, 18)  # named itself: it wins


@pytest.mark.parametrize("student,per_token", [("tk:Qwen/Qwen3-8B", 3), (NANO, 1)])
def test_a_reader_that_splits_digits_bounds_rows_an_o200k_model_wrote_at_three_tokens_a_token(
        server, tmp_path, student, per_token):
    """An OpenAI teacher's completion holds up to max_tokens o200k tokens, each up to three digits, which a Tinker
    student (Qwen's tokenizer: a token a digit) trains on as up to three tokens each; the bound gave it max_tokens, a
    third of what a row of numbers may cost there. A student on the teacher's own tokenizer keeps max_tokens."""
    spec = _spec(tmp_path, server)
    base = spec.read_text().replace("concurrency: 4}", "concurrency: 4}\n  tk: {kind: tinker}").replace(
        "students: []", f"students: [{{name: s, base: {student}, hyperparameters: {{epochs: 1}}}}]")

    def trained(max_tokens: int) -> int:
        from runner.budget import pending
        from runner.loader import load
        from runner.plan import build
        from runner.stages.costs import estimate_of  # as the check counts: in the reading model's tokens
        from runner.store import Store

        spec.write_text(base.replace("n_prompts: 6", f"n_prompts: 6, max_tokens: {max_tokens}"))
        plan = build(load(spec), tmp_path / "out")
        finetunes = [st for st in pending(plan, Store(tmp_path / "out")) if st.KIND == "finetune"]
        return sum(e.training_tokens for st in finetunes for e in estimate_of(st, plan.context()))

    assert trained(96) - trained(48) == 6 * 48 * per_token


def test_a_budget_that_is_not_a_number_allows_nothing(server, tmp_path):
    """The command line refuses --max-usd nan; a NaN reaching check() from the API passed it (every comparison with
    NaN is false, so 'total > max_usd' never held)."""
    from runner.budget import OverBudget, check
    from runner.loader import load
    from runner.plan import build
    from runner.store import Store

    spec, store = _spec(tmp_path, server), Store(tmp_path / "out")
    with pytest.raises(OverBudget):
        check(build(load(spec), store.root), store, float("nan"))
    r = _cli(["run", str(spec), "--outputs", str(tmp_path / "out"), "--max-usd", "nan"], {ENV: KEY})
    assert r.returncode == 2 and _paid(server) == [], r.stderr


def test_a_stated_rate_limit_that_splits_sampled_answers_raises_the_bound_before_they_are_sent(server, tmp_path):
    """100 answers per question under a 1,000-token-per-minute limit go out in calls of ~60, each sending the
    question again; the bound counted one call per question (input tokens below what was sent). The limit is
    learned at preflight, so the check runs again then, with the calls the backend will make."""
    server.tpm_limit = 1000
    out = tmp_path / "out"
    first = _spec(tmp_path, server).read_text()
    rows_only = tmp_path / "rows.yaml"
    rows_only.write_text(first.replace("evaluations:\n", "evaluations: []\n").split("  - {kind: preference_sample")[0])
    assert _cli(["run", str(rows_only), "--outputs", str(out), "--max-usd", "1"], {ENV: KEY}).returncode == 0
    spec = _spec(tmp_path, server).parent / "answers.yaml"
    spec.write_text(first.replace("samples_per_question: 2", "samples_per_question: 100"))
    before = server.counts["chat"]
    r = _cli(["run", str(spec), "--outputs", str(out), "--max-usd", "1"], {ENV: KEY})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "spend: with the tokens-per-minute limits the servers state, up to $" in r.stdout, r.stdout

    from runner.loader import load
    from runner.plan import build
    from runner.stages.costs import estimate_of
    from runner.store import Store
    from backends.openai_api import LEARNED_TPM, hosted_endpoint, redact

    cells = load(spec)
    LEARNED_TPM.setdefault(redact(hosted_endpoint(cells[0].spec.backends["openai"])), {})["gpt-4.1-nano"] = 1000
    plan = build(cells, Store(tmp_path / "empty").root)
    answers = [s for s in plan.stages.values() if s.KIND == "answers"]
    planned = sum(e.requests for s in answers for e in estimate_of(s, plan.context()))
    sent = server.counts["chat"] - before - 1  # less preflight's rate-limit probe
    assert planned == sent > 2 * 2  # two questions per model, each split into calls
