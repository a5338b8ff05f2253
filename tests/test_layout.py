"""docs/testing.md's layout, checked against the tree: every test folder mirrors a code
folder, every test file is named for a module of its folder or listed as a behaviour file,
and every module has a test file of its own or is listed with the file that tests it."""
import re

from smolsft.files import REPO_ROOT

TESTS = REPO_ROOT / "tests"
DOC = (REPO_ROOT / "docs" / "testing.md").read_text(encoding="utf-8")


def _section(title: str) -> str:
    start = DOC.index(title)
    return DOC[start:DOC.index("\n\n", DOC.index("|---", start))]


def _listed(title: str) -> dict:
    """First column of the table after ``title`` -> the rest of its row."""
    rows = re.findall(r"^\| `([^`]+)` \|(.*)\|$", _section(title), flags=re.M)
    return {name: rest for name, rest in rows}


BEHAVIOUR = _listed("Files named for a behaviour")
THROUGH = _listed("Modules without a test file of their own")


def _stems(folder, *suffixes) -> set:
    return {p.stem for p in folder.iterdir() if p.suffix in suffixes and p.stem not in ("__init__", "__main__")}


def _subpackages() -> list[str]:
    return sorted(p.parent.name for p in (REPO_ROOT / "smolsft").glob("*/__init__.py"))


def _code_of_folder() -> dict:
    """tests/<folder> -> the stems its test files may be named for."""
    code = {sub: _stems(REPO_ROOT / "smolsft" / sub, ".py") for sub in _subpackages()}
    code["course"] = _stems(REPO_ROOT, ".py")
    code["ifeval"] = _stems(REPO_ROOT / "ifeval", ".py") | {"run_sh"}
    code["scripts"] = {f"{s}_sh" for s in _stems(REPO_ROOT / "scripts", ".sh")} | set().union(
        *(_stems(REPO_ROOT / d, ".py") for d in ("scripts", "tools", "benchmarks")))
    code[""] = _stems(REPO_ROOT / "smolsft", ".py") | {"layout"}
    return code


def test_every_test_folder_mirrors_a_code_folder():
    folders = {p.name for p in TESTS.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders <= set(_subpackages()) | {"course", "ifeval", "scripts"}, folders
    for sub in set(_subpackages()) - folders:  # no folder: every module is listed with its tests
        for m in _stems(REPO_ROOT / "smolsft" / sub, ".py"):
            assert f"smolsft/{sub}/{m}.py" in THROUGH, f"smolsft/{sub}/{m}.py: no tests/{sub}/, not listed"


def test_every_test_file_is_named_for_a_module_or_listed_as_a_behaviour():
    code = _code_of_folder()
    for folder, stems in code.items():
        for t in sorted((TESTS / folder).glob("test_*.py")):
            rel = str(t.relative_to(REPO_ROOT))
            assert t.stem[5:] in stems or rel in BEHAVIOUR, f"{rel}: no module {t.stem[5:]} here, not in docs/testing.md"
    for rel in BEHAVIOUR:
        assert (REPO_ROOT / rel).is_file(), f"docs/testing.md lists {rel}, which does not exist"
        folder, name = rel.removeprefix("tests/").rpartition("/")[::2]
        assert name.removesuffix(".py")[5:] not in code[folder], f"{rel} is named for a module: not a behaviour file"


def test_every_module_has_its_own_test_file_or_is_listed_with_the_one_that_tests_it():
    for sub in _subpackages():
        for m in sorted(_stems(REPO_ROOT / "smolsft" / sub, ".py")):
            rel = f"smolsft/{sub}/{m}.py"
            own = (TESTS / sub / f"test_{m}.py").is_file()
            assert own != (rel in THROUGH), (f"{rel}: has tests/{sub}/test_{m}.py and is listed too" if own else
                                             f"{rel}: no tests/{sub}/test_{m}.py and not listed in docs/testing.md")
    for rel, where in THROUGH.items():
        assert (REPO_ROOT / rel).is_file(), f"docs/testing.md lists {rel}, which does not exist"
        files = re.findall(r"`(tests/[^`]+\.py)`", where)
        assert files, f"docs/testing.md: no test file named for {rel}"
        for f in files:
            assert (REPO_ROOT / f).is_file(), f"docs/testing.md: {f} (for {rel}) does not exist"
