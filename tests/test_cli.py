"""The command line: help, schemes, and one-line errors with a non-zero exit."""

import subprocess
import sys

import pytest

from emomix.cli import main


def run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_help_lists_the_commands(capsys):
    code, out, _ = run(["--help"], capsys)
    assert code == 0
    for command in ("synth", "corpus", "folds"):
        assert command in out


def test_schemes_are_listed(capsys):
    code, out, _ = run(["corpus", "schemes"], capsys)
    assert code == 0
    assert "iemocap-4" in out and "angry, happy, neutral, sad" in out


def test_user_errors_print_one_line_without_traceback(tmp_path, capsys):
    code, out, err = run(["corpus", "info", "no-such-reader", str(tmp_path)], capsys)
    assert code == 2
    assert err.strip().count("\n") == 0 and "unknown corpus reader 'no-such-reader'" in err
    assert "Traceback" not in err
    code, _, err = run(["corpus", "info", "emodb", str(tmp_path / "missing")], capsys)
    assert code == 2 and "does not exist" in err


def test_console_script_exit_status(tmp_path):
    result = subprocess.run([sys.executable, "-m", "emomix.cli", "corpus", "info", "savee", str(tmp_path / "x")],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "does not exist" in result.stderr
