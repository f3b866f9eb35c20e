"""``emomix models``: the table of registered models, one model's config, JSON, and errors."""

import json

import pytest

from emomix.cli import main
from emomix.models import list_models


def run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_the_table_lists_every_registered_model(capsys):
    code, out, _ = run(["models"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["name", "inputs", "batch", "paper", "description"]
    rows = {line.split()[0]: line for line in lines[2:-1]}
    assert set(rows) == set(list_models())
    assert rows["early_fusion_text"].split()[1:3] == ["text", "utterance"]
    assert rows["mister_e"].split()[1:3] == ["audio+text", "dialogue"]
    assert lines[-1].startswith(f"{len(list_models())} models")


def test_json_has_name_paper_inputs_batch_and_description(capsys):
    code, out, _ = run(["models", "--json"], capsys)
    assert code == 0
    records = {r["name"]: r for r in json.loads(out)}
    assert set(records) == set(list_models())
    tfn = records["tfn"]
    assert tfn["inputs"] == ["audio", "text"] and tfn["batch_kind"] == "utterance"
    assert "Tensor Fusion" in tfn["paper"] and tfn["description"]
    assert records["dual_routing_local"]["presets"] == {"routing": "local"}


def test_one_model_shows_its_config_with_the_variant_presets(capsys):
    code, out, _ = run(["models", "early_fusion_audio"], capsys)
    assert code == 0
    assert out.startswith("early_fusion_audio: ")
    assert "presets     modalities=['audio']" in out
    assert any(line.split() == ["hidden_dim", "128"] for line in out.splitlines())
    code, out, _ = run(["models", "speech_cnn", "--json"], capsys)
    record = json.loads(out)
    assert record["config"]["channels"] == [64, 64] and record["config"]["modalities"] == ["audio"]


def test_an_unknown_model_is_one_line_with_suggestions(capsys):
    code, out, err = run(["models", "early_fusio"], capsys)
    assert code == 2 and out == ""
    assert err.strip().count("\n") == 0 and "unknown model 'early_fusio' (did you mean early_fusion" in err
