"""Exit statuses of the command-line entry points: a user's mistake is one line and status 2; a defect of the kit
shows its traceback and status 1, never a one-line message that blames the user's input."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from abaw_ce.errors import read_text_lines
from abaw_ce.faces.detectors import make_detector
from abaw_ce.cli.common import guarded
from abaw_ce.cli.emotion import main_emotion

ROOT = Path(__file__).resolve().parents[1]


def _kit_defect() -> None:
    raise ValueError("an internal invariant broke")  # a plain ValueError: a defect, not bad input


def test_a_user_error_is_one_line_and_status_2(tmp_path, capsys):
    from abaw_ce.errors import run_command

    missing = tmp_path / "labels.txt"
    status = run_command(lambda: read_text_lines(missing), hint=lambda err: "check the path")
    assert status == 2
    assert capsys.readouterr().err == f"error: {missing}: file not found\nhint: check the path\n"


def test_a_detector_that_cannot_run_here_is_a_user_error(tmp_path, capsys):
    # The model file is the user's to install (or --detector opencv); it used to escape as a RuntimeError.
    assert guarded(lambda: make_detector("insightface", model_dir=tmp_path / "models")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: insightface face detector model not found") and err.count("\n") == 1


def test_the_command_status_passes_through_and_refusals_are_status_2(capsys):
    from abaw_ce.errors import run_command

    assert run_command(lambda: 1) == 1 and run_command(lambda: None) == 0

    def refuse() -> None:
        raise FileExistsError("out/ is not empty; refusing to overwrite it (pass --overwrite)")

    assert run_command(refuse) == 2
    assert capsys.readouterr().err == "error: out/ is not empty; refusing to overwrite it (pass --overwrite)\n"


@pytest.mark.parametrize("defect", [_kit_defect, lambda: {}["model"], lambda: len(None)],
                         ids=["ValueError", "KeyError", "TypeError"])
def test_a_kit_defect_propagates_instead_of_exit_2(defect, capsys):
    with pytest.raises((ValueError, KeyError, TypeError)):
        guarded(defect)
    assert capsys.readouterr().err == ""  # no 'error: ...' line blaming the input


def test_a_kit_defect_exits_1_with_its_traceback():
    script = textwrap.dedent("""
        import sys
        from abaw_ce.cli.common import guarded

        def stage():
            raise ValueError("an internal invariant broke")

        sys.exit(guarded(stage))
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.rstrip().endswith("ValueError: an internal invariant broke")
    assert "error: an internal invariant broke" not in result.stderr


def test_a_misspelt_dataset_key_is_one_line_from_the_emotion_stage(tmp_path, capsys):
    run = tmp_path / "run"
    status = main_emotion(["--demo", "model.encoder=none", f"output.dir={run}",
                           f"data.datasets=[{{format: rafdb_basic, root: {tmp_path}, colour: 1}}]"])
    err = capsys.readouterr().err
    assert status == 2, err
    assert err.startswith("error: data.datasets entry of format rafdb_basic: got an unexpected keyword argument "
                          "'colour'") and err.count("\n") == 1
    assert not run.exists()  # a refused setup leaves nothing behind


def test_atomic_writes_get_an_ordinary_file_mode_and_refuse_to_overwrite(tmp_path):
    import os
    import stat

    from abaw_ce import files

    path = files.atomic_write_text(tmp_path / "report.md", "x\n")
    if os.name != "nt":  # as open() would create it, not mkstemp's private 0600
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~files._UMASK
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        files.atomic_write_text(path, "y\n")
    assert path.read_text() == "x\n" and list(tmp_path.iterdir()) == [path]
