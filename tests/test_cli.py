"""The command line: help, version, schemes, and every usage or user error as one line on stderr with
status 2 (never a traceback), both in-process and through the installed console script."""

import shutil
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import pytest
import typer

from emomix import __version__
from emomix.cli import main
from emomix.cli._errors import run_app

EMOMIX = Path(sys.executable).with_name("emomix")


def run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_help_lists_every_command(capsys):
    code, out, err = run(["--help"], capsys)
    assert code == 0 and err == ""
    for command in (
        "synth",
        "corpus",
        "folds",
        "extract",
        "store",
        "models",
        "train",
        "evaluate",
        "compare",
        "predict",
        "serve",
        "export",
        "export-check",
    ):
        assert f"\n  {command} " in out, command


def test_no_arguments_prints_the_help_and_exits_0(capsys):
    code, out, err = run([], capsys)
    assert code == 0 and err == ""
    assert out.startswith("Usage: emomix [OPTIONS] COMMAND") and "\n  predict " in out
    assert "`emomix` alone prints this help" in " ".join(out.split())


def test_version(capsys):
    code, out, err = run(["--version"], capsys)
    assert (code, out, err) == (0, f"emomix {__version__}\n", "")


USAGE_ERRORS = [
    (["bogus"], "No such command 'bogus'; see 'emomix --help'"),
    (["predict"], "Missing argument 'run'; see 'emomix predict --help'"),
    (["predict", "runs/x"], "give a SOURCE (an audio file, a folder or a manifest CSV), or --text"),
    (["train"], "Missing argument 'recipe'; see 'emomix train --help'"),
    (["corpus", "info"], "Missing argument 'reader'; see 'emomix corpus info --help'"),
    (["corpus", "bogus"], "No such command 'bogus'; see 'emomix corpus --help'"),
    (["predict", "--bogus", "x", "y"], "No such option: --bogus"),
    (["serve", "--port", "abc", "runs/x"], "Invalid value for '--port'"),
    (["train", "recipe.yaml", "--seeds"], "Option '--seeds' requires an argument"),
    (["models", "a", "b"], "unexpected extra argument"),
]


@pytest.mark.parametrize("argv, message", USAGE_ERRORS, ids=[" ".join(a) for a, _ in USAGE_ERRORS])
def test_a_usage_error_is_one_line_with_status_2(argv, message, capsys):
    code, out, err = run(argv, capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("emomix: error: ") and message in err, err
    assert "Traceback" not in err


def test_user_errors_print_one_line_without_traceback(tmp_path, capsys):
    code, _out, err = run(["corpus", "info", "no-such-reader", str(tmp_path)], capsys)
    assert code == 2
    assert (
        err.count("\n") == 1 and err.startswith("emomix: error: ") and "unknown corpus reader 'no-such-reader'" in err
    )
    assert "Traceback" not in err
    code, _, err = run(["corpus", "info", "emodb", str(tmp_path / "missing")], capsys)
    assert code == 2 and "does not exist" in err


def test_schemes_are_listed(capsys):
    code, out, _ = run(["corpus", "schemes"], capsys)
    assert code == 0
    assert "iemocap-4" in out and "angry, happy, neutral, sad" in out


def test_help_shows_flags_without_bool_and_defaults_in_words(capsys):
    code, out, _ = run(["train", "--help"], capsys)
    assert code == 0
    assert "<bool>" not in out
    assert "(default: runs/<recipe name>)" in out  # the --out default, not eaten as markup
    assert any(line.split()[:1] == ["--restart"] for line in out.splitlines())
    code, out, _ = run(["serve", "--help"], capsys)
    assert "--threads" in out and "--workers-threads" not in out  # the old spelling is a hidden alias
    for command in (["extract"], ["export"], ["predict"], ["store", "verify"]):
        code, out, _ = run([*command, "--help"], capsys)
        assert code == 0 and "<bool>" not in out, command


def test_ctrl_c_is_one_line_with_status_130(capsys):
    demo = typer.Typer()

    @demo.command()
    def slow() -> None:
        raise KeyboardInterrupt

    assert run_app(demo, []) == 130
    assert capsys.readouterr().err == "emomix: interrupted\n"


def test_a_command_exit_status_is_kept():
    """`emomix store verify` exits 1 when an entry is bad: typer.Exit's status reaches the shell."""
    demo = typer.Typer()

    @demo.command()
    def failing() -> None:
        raise typer.Exit(1)

    assert run_app(demo, []) == 1


def test_predict_prints_each_note_once(monkeypatch, tmp_path, capsys):
    import emomix.infer.predictor as predictor_module

    clips = tmp_path / "clips"
    clips.mkdir()
    for name in ("a.wav", "b.wav", "c.wav"):
        (clips / name).write_bytes(b"")
    synthetic = "trained on the synthetic corpus: its labels are not meaningful on real speech"

    class StandIn:
        classes: ClassVar[list[str]] = ["happy", "sad"]
        checkpoint = tmp_path
        reads_dialogue = False

        def info(self):
            return {"name": "stand_in", "training": {"fold": "f1", "seed": 0}}

        def predict_many(self, items, batch_size=16):
            return [
                {
                    "label": "happy",
                    "probabilities": {"happy": 0.9, "sad": 0.1},
                    "notes": [synthetic]
                    + (["no speech found: whole clip used"] if item["audio"].endswith("b.wav") else []),
                }
                for item in items
            ]

    monkeypatch.setattr(predictor_module.Predictor, "from_run", classmethod(lambda cls, *a, **k: StandIn()))
    code, out, err = run(["predict", str(tmp_path), str(clips), "-q"], capsys)
    assert code == 0 and len(out.splitlines()) == 3
    assert err.count(f"note: {synthetic}\n") == 1
    assert "note: no speech found: whole clip used (1 of 3 inputs)" in err


@pytest.mark.skipif(
    not EMOMIX.exists() and shutil.which("emomix") is None, reason="the console script is not installed"
)
@pytest.mark.parametrize(
    "argv, status, stream, text",
    [
        (["--version"], 0, "stdout", f"emomix {__version__}"),
        (["bogus"], 2, "stderr", "emomix: error: No such command 'bogus'"),
        (["predict"], 2, "stderr", "emomix: error: Missing argument 'run'"),
    ],
)
def test_the_console_script(argv, status, stream, text):
    script = str(EMOMIX) if EMOMIX.exists() else shutil.which("emomix")
    result = subprocess.run([script, *argv], capture_output=True, text=True, timeout=120)
    assert result.returncode == status
    output = getattr(result, stream)
    assert output.splitlines() == [text] if status == 0 else (output.count("\n") == 1 and output.startswith(text))
    assert "Traceback" not in result.stderr


def test_python_dash_m_emomix_runs_the_same_command(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "emomix", "corpus", "info", "savee", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "does not exist" in result.stderr


def test_predict_human_summary_names_aux_readings_in_words():
    """The terminal summary of a prediction says what the aux readings are, never their raw keys."""
    from emomix.cli.predict import human_summary

    lines = human_summary(
        [
            {
                "input": "clip.wav",
                "label": "sad",
                "probabilities": {"sad": 0.7, "happy": 0.3},
                "aux": {"route_audio": [0.25, 0.75], "vad_fallback": 1},
            },
            {"input": "bad.wav", "error": "bad.wav could not be read as audio"},
        ]
    )
    assert lines[0] == "clip.wav: sad (0.70)"
    assert any("local 0.250" in line and "global 0.750" in line for line in lines)
    joined = "\n".join(lines)
    assert "route_audio" not in joined and "vad_fallback" not in joined
    assert lines[-1] == "bad.wav: failed: bad.wav could not be read as audio"


@pytest.mark.parametrize(
    ("text", "seeds"), [("3", [0, 1, 2]), ("1", [0]), ("0,7", [0, 7]), ("7,", [7]), (" 2 , 5 ", [2, 5])]
)
def test_seeds_are_a_count_or_a_comma_list(text, seeds):
    from emomix.cli.train import parse_seeds

    assert parse_seeds(text) == seeds


def test_seeds_zero_says_how_to_ask_for_seed_zero():
    from emomix.cli.train import parse_seeds
    from emomix.errors import ConfigError

    with pytest.raises(ConfigError, match=r"--seeds 0,"):
        parse_seeds("0")
    with pytest.raises(ConfigError, match="a count or a comma list"):
        parse_seeds("zero")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("-2", "cannot be negative"),
        ("-1,3", "whole numbers from 0"),
        ("1,1", "names a seed twice"),
        (",", "names no seed"),
    ],
)
def test_impossible_seeds_are_refused(text, message):
    from emomix.cli.train import parse_seeds
    from emomix.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        parse_seeds(text)
