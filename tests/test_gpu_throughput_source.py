"""`subl plan`'s GPU-hours: the throughput line says where each figure comes from (runner/throughput.py's
assumptions, or the spec's runtime.gpu_throughput or --throughput)."""
from runner.gpu import gpu_lines
from runner.stages import Estimate
from runner.throughput import SOURCE, parse


def _source_line(tp) -> str:
    (_, line) = gpu_lines([Estimate("local", "m", 1, 100, 10, 1000, 0.0, 1.0, "")], tp)
    return line


def test_the_throughput_line_names_where_its_figures_come_from():
    assert SOURCE in _source_line(parse("H200"))
    given = _source_line(parse("my-gpu,train=1000,prefill=4000,generate=200"))  # none of them assumed here
    assert "train, prefill, generate as given" in given and "runner/throughput.py" not in given
    mixed = _source_line(parse("H200,train=9000"))
    assert "train as given" in mixed and f"the others {SOURCE}" in mixed
