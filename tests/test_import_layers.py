"""The layer rule of ARCHITECTURE.md holds on the kit's own source, and the check catches each kind of breach."""
from pathlib import Path

import abaw_ce
from abaw_ce.tools import import_check

PACKAGE_ROOT = Path(abaw_ce.__file__).resolve().parent
ARCHITECTURE = PACKAGE_ROOT.parent / "ARCHITECTURE.md"


def test_the_kit_keeps_its_layer_order():
    problems = import_check.check(PACKAGE_ROOT)
    assert problems == [], "\n".join(problems)


def test_every_module_has_a_layer():
    modules, _ = import_check.collect_imports(PACKAGE_ROOT)
    for module in modules:
        assert import_check.layer_of(module) in import_check.LAYER_NAMES


def _write(root: Path, files: dict[str, str]) -> Path:
    package = root / "abaw_ce"
    for name, text in files.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return package


def test_each_kind_of_breach_is_reported_with_its_file_and_line(tmp_path):
    package = _write(tmp_path, {
        "__init__.py": "",
        "labels.py": "import os\nfrom abaw_ce.train import engine\n",  # core importing train: upward
        "data/__init__.py": "",
        "data/a.py": "from abaw_ce.data import b\n",
        "data/b.py": "from abaw_ce.data import a\n",  # a cycle inside one layer
        "data/lazy.py": "def f():\n    from abaw_ce import labels\n    return labels\n",
        "train/__init__.py": "",
        "train/engine.py": "def _resume():\n    return 0\n",
        "cexprnet/__init__.py": "",
        "cexprnet/train.py": "from abaw_ce.train.engine import _resume\n",  # private name across packages
        "cli/__init__.py": "",
        "cli/main.py": "def main():\n    from abaw_ce.cexprnet import train\n    return train\n",  # allowed here
    })
    problems = import_check.check(package)
    text = "\n".join(problems)
    assert len(problems) == 4, text
    assert f"{package / 'labels.py'}:2: abaw_ce.labels (core) imports abaw_ce.train.engine (train)" in text
    assert "import cycle among abaw_ce.data.a, abaw_ce.data.b" in text
    assert f"{package / 'data' / 'lazy.py'}:2: abaw_ce.data.lazy imports abaw_ce.labels inside a function" in text
    assert "imports the private name _resume from abaw_ce.train.engine" in text
    assert import_check.main(["--root", str(package)]) == 1


def test_a_clean_tree_passes(tmp_path, capsys):
    package = _write(tmp_path, {
        "__init__.py": "",
        "labels.py": "",
        "models/__init__.py": "",
        "models/vit.py": "from abaw_ce import labels\n",
        "experiments/__init__.py": "",
        "experiments/demo.py": "from abaw_ce.models.vit import labels\n",
    })
    assert import_check.main(["--root", str(package)]) == 0
    assert capsys.readouterr().out.strip().endswith("OK")


def test_architecture_md_shows_the_current_layer_graph():
    graph = import_check.layer_graph(PACKAGE_ROOT)
    assert graph in ARCHITECTURE.read_text(encoding="utf-8"), (
        "ARCHITECTURE.md's diagram is out of date: paste the output of "
        "`python -m abaw_ce.tools.import_check --graph`")
