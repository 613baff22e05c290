"""The paper materials in the project and their accessors."""
from runner import paper


def test_the_project_copy_names_the_authors_commit_and_license():
    m = paper.materials()
    assert m["meta"]["commit"] == "db04f4150edf940559b5f3147f65d808e9313efd"
    assert (paper.MATERIALS_PATH.parent / "LICENSE").read_text().startswith("MIT License")


def test_banned_numbers_are_the_union_of_the_two_lists():
    union = paper.banned_numbers()
    assert union == paper.get("banned_numbers.union_sorted.values") and len(union) == 36 and 228 not in union


def test_source_is_the_sibling_source_else_the_nearest_one():
    assert paper.source("cot.alignment_filter.threshold") == "truesight/refs/paper/gsm8k_cot_em_refs.py:204-212"
    assert paper.source("finetuning.cot.epochs") == "truesight/refs/paper/gsm8k_cot_em_refs.py:188-251"
