"""``emomix extract`` on Lightning Fabric (``--processes N``: DDP ranks, gloo on CPU) and with the
encoder specs recipes take (``name@level``, JSON, a YAML/JSON file, a whole features block)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from emomix.cache.store import FeatureStore
from test_extract import make_manifest_corpus, run_cli

# openSMILE starts fast (no librosa/numba warm-up) and its functionals are small.
FUNCTIONALS = "opensmile:eGeMAPSv02@functionals"


@pytest.fixture
def one_thread_ranks(monkeypatch):
    """One torch thread per rank: the ranks are forked (fast) whatever the machine's core count."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def stored(root) -> dict[str, dict[str, np.ndarray]]:
    """Every entry of a store, read through its own API."""
    with FeatureStore(root, create=False) as store:
        return {
            key: {k: np.asarray(v) for k, v in fields.items()} for key, fields in store.get_many(store.keys()).items()
        }


def assert_same_entries(got: dict, want: dict) -> None:
    assert want and set(got) == set(want)
    for key, fields in want.items():
        assert set(got[key]) == set(fields), key
        for name, array in fields.items():
            np.testing.assert_array_equal(got[key][name], array, err_msg=f"{key}/{name}")


def test_two_ranks_fill_the_store_a_single_process_does(tmp_path, capsys, one_thread_ranks):
    manifest = make_manifest_corpus(tmp_path / "corpus", 12)
    base = ["extract", "manifest", str(manifest), "--encoder", FUNCTIONALS, "--no-progress", "--json"]
    code, out, err = run_cli([*base, "--store", str(tmp_path / "one")], capsys)
    assert code == 0, err
    single = json.loads(out)

    code, out, err = run_cli([*base, "--store", str(tmp_path / "two"), "--processes", "2"], capsys)
    assert code == 0, err
    combined = json.loads(out)
    assert combined["workers"] == 2 and (combined["total"], combined["computed"], combined["failed"]) == (12, 12, 0)
    assert combined["namespace"] == single["namespace"]
    writers = {p.name.rsplit("-", 1)[0] for p in (tmp_path / "two" / "shards").glob("*/*.safetensors")}
    assert writers == {"rank-0-of-2", "rank-1-of-2"}, "each rank wrote its own shards"
    assert not list((tmp_path / "two" / "index-parts").glob("*.sqlite")), "rank 0 merged the index parts"
    assert_same_entries(stored(tmp_path / "two"), stored(tmp_path / "one"))
    with FeatureStore(tmp_path / "two", create=False) as opened:
        assert opened.verify().ok

    code, out, err = run_cli([*base, "--store", str(tmp_path / "two"), "--processes", "2"], capsys)
    assert code == 0, err
    again = json.loads(out)
    assert (again["cached"], again["computed"], again["entries_written"]) == (12, 0, 0), "a re-run is cache hits"


def test_a_failed_rank_is_reported_and_a_re_run_resumes(tmp_path, capsys, monkeypatch, one_thread_ranks):
    """Rank 1 cannot write (another process holds its writer lock); rank 0 finishes and merges, the
    command names the failed rank, and the same command resumes once the lock is free."""
    from emomix.cache.store import LOCK_WAIT_ENV, LOCKS_DIR, _try_lock, _unlock

    manifest = make_manifest_corpus(tmp_path / "corpus", 10)
    base = ["extract", "manifest", str(manifest), "--encoder", FUNCTIONALS, "--no-progress", "--json"]
    code, _, err = run_cli([*base, "--store", str(tmp_path / "reference")], capsys)
    assert code == 0, err

    store = tmp_path / "store"
    monkeypatch.setenv(LOCK_WAIT_ENV, "0")  # fail at once instead of waiting for the holder
    held = _try_lock(store / LOCKS_DIR / "rank-1-of-2.lock")
    assert held is not None
    try:
        code, out, err = run_cli([*base, "--store", str(store), "--processes", "2"], capsys)
    finally:
        _unlock(held)
    assert code == 2 and "1 of 2 extraction ranks failed" in err, err
    assert "rank 1: another process is writing" in err and "run the same command again to resume" in err
    finished = stored(store)
    assert 0 < len(finished) < 10, "rank 0's share is stored and merged, rank 1's is not"
    assert all(p.name.startswith("rank-0-of-2-") for p in (store / "shards").glob("*/*.safetensors"))

    code, out, err = run_cli([*base, "--store", str(store), "--processes", "2"], capsys)
    assert code == 0, err
    resumed = json.loads(out)
    assert (resumed["cached"], resumed["computed"]) == (len(finished), 10 - len(finished))
    assert not list((store / "index-parts").glob("*.sqlite")), "every part merged"
    assert_same_entries(stored(store), stored(tmp_path / "reference"))


def test_ranks_are_forked_only_when_they_run_one_thread(monkeypatch):
    from emomix.cache.distributed import rank_start_method

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert rank_start_method("cpu", 2) == "ddp_fork"
    assert rank_start_method("cuda", 2) == "ddp_spawn"
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert rank_start_method("cpu", 2) == "ddp_spawn", "a thread pool does not survive fork"


@pytest.mark.slow
def test_spawned_ranks_fill_the_same_store(tmp_path, capsys, monkeypatch):
    """Ranks with several threads each are spawned (fresh interpreters); the store is the same."""
    from emomix.cache.distributed import rank_start_method

    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert rank_start_method("cpu", 2) == "ddp_spawn"
    manifest = make_manifest_corpus(tmp_path / "corpus", 8)
    base = ["extract", "manifest", str(manifest), "--encoder", FUNCTIONALS, "--no-progress", "--json"]
    for name, extra in (("one", []), ("two", ["--processes", "2"])):
        code, out, err = run_cli([*base, "--store", str(tmp_path / name), *extra], capsys)
        assert code == 0 and json.loads(out)["computed"] == 8, err
    assert_same_entries(stored(tmp_path / "two"), stored(tmp_path / "one"))
    assert not list((tmp_path / "two" / "index-parts").glob("*.sqlite"))


def test_process_and_shard_options_are_checked(tmp_path, capsys):
    manifest = make_manifest_corpus(tmp_path / "corpus", 2)
    base = ["extract", "manifest", str(manifest), "--encoder", "mfcc", "--store", str(tmp_path / "s")]
    for extra, message in (
        (["--num-shards", "2"], "--shard-index and --num-shards go together"),
        (["--shard-index", "0", "--num-shards", "2", "--processes", "2"], "cannot be combined with --processes"),
        (["--processes", "0"], "--processes and --num-nodes must be at least 1"),
        (["--devices", "tpu:0"], "--devices expects cpu, cuda or a list"),
        (["--devices", "cuda:0,cuda:1", "--processes", "3"], "names 2 GPU(s) but --processes is 3"),
    ):
        code, _, err = run_cli([*base, *extra], capsys)
        assert code == 2 and message in err, (extra, err)
    assert not (tmp_path / "s").exists(), "nothing was written"


# ---------------------------------------------------------------------------- encoder specs


def extract_with(tmp_path, capsys, manifest, spec: str) -> dict:
    """The summary (with its utterance -> key map) of `emomix extract --encoder SPEC`."""
    summary = tmp_path / "summary.json"
    code, _, err = run_cli(
        [
            "extract",
            "manifest",
            str(manifest),
            "--encoder",
            spec,
            "--store",
            str(tmp_path / "store"),
            "--no-progress",
            "--summary-json",
            str(summary),
        ],
        capsys,
    )
    assert code == 0, err
    return json.loads(summary.read_text())


def test_name_at_level_json_and_yaml_specs_are_one_encoder(tmp_path, capsys):
    manifest = make_manifest_corpus(tmp_path / "corpus", 3)
    spec = {"name": "opensmile:eGeMAPSv02", "level": "functionals"}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    shorthand = extract_with(tmp_path, capsys, manifest, FUNCTIONALS)
    assert shorthand["computed"] == 3
    for text in (json.dumps(spec), str(tmp_path / "spec.yaml"), str(tmp_path / "spec.json")):
        again = extract_with(tmp_path, capsys, manifest, text)
        assert again["namespace"] == shorthand["namespace"] and (again["cached"], again["computed"]) == (3, 0), text
    frames = extract_with(tmp_path, capsys, manifest, "opensmile:eGeMAPSv02@lld")
    assert frames["namespace"] != shorthand["namespace"] and frames["computed"] == 3, "the level is part of the key"
    with FeatureStore(tmp_path / "store", create=False) as store:
        shapes = {np.asarray(f["states"]).shape[0] for f in store.get_many(shorthand["keys"].values()).values()}
    assert shapes == {1}, "functionals: one vector per utterance"


def test_bad_specs_name_the_problem(tmp_path, capsys):
    manifest = make_manifest_corpus(tmp_path / "corpus", 2)
    (tmp_path / "list.yaml").write_text("- mfcc\n")
    (tmp_path / "broken.yaml").write_text("encoder: [mfcc\n")
    cases = (
        ('{"name": "opensmile:eGeMAPSv02", "levle": "functionals"}', "has no option 'levle'"),
        (
            '{"encoder": "mfcc", "preproces": {"vad": "webrtc"}}',
            "unknown key(s) 'preproces' (did you mean 'preprocess'?)",
        ),
        ('{"encoder": "mfcc", "preprocess": {"vad": "nope"}}', "preprocess.vad must be one of"),
        ('{"name": "mfcc",', "is not valid JSON"),
        ('{"level": "lld"}', "needs 'name'"),
        ("mfcc@lld", "encoder 'mfcc' has no option 'level'"),
        ("opensmile:eGeMAPSv02@both@lld", "unknown openSMILE feature set 'eGeMAPSv02@both'"),
        (str(tmp_path / "missing.yaml"), "does not exist"),
        (str(tmp_path / "list.yaml"), "must be an encoder name or a mapping"),
        (str(tmp_path / "broken.yaml"), "line 2"),
    )
    for spec, message in cases:
        code, _, err = run_cli(
            ["extract", "manifest", str(manifest), "--encoder", spec, "--store", str(tmp_path / "s")], capsys
        )
        assert code == 2 and message in err, (spec, err)
    code, _, err = run_cli(
        [
            "extract",
            "manifest",
            str(manifest),
            "--encoder",
            '{"encoder": "mfcc", "preprocess": {"vad_mode": "trim", "vad": "webrtc"}}',
            "--vad",
            "silero",
            "--store",
            str(tmp_path / "s"),
        ],
        capsys,
    )
    assert code == 2 and "--vad 'silero' disagrees with the spec's preprocess.vad 'webrtc'" in err


def test_a_command_line_extraction_is_a_cache_hit_for_the_recipe(tmp_path, capsys, one_thread_ranks):
    """A recipe's modality block given to `emomix extract` stores the entries training looks up:
    the frame encoder with its preprocessing, and the utterance encoder with its own."""
    from emomix.data.readers import read_corpus
    from emomix.features import build_features, parse_feature_specs

    manifest = make_manifest_corpus(tmp_path / "corpus", 6)
    block = {
        "encoder": {"name": "opensmile:eGeMAPSv02", "level": "lld"},
        "preprocess": {"normalise_loudness": True},
        "utterance": {"name": "opensmile:eGeMAPSv02", "level": "functionals"},
        "frame_stride": 2,  # acts at training time: accepted, changes nothing stored
    }
    (tmp_path / "audio.yaml").write_text(yaml.safe_dump(block))
    store = tmp_path / "store"
    code, out, err = run_cli(
        [
            "extract",
            "manifest",
            str(manifest),
            "--encoder",
            str(tmp_path / "audio.yaml"),
            "--store",
            str(store),
            "--no-progress",
            "--json",
            "--processes",
            "2",
        ],
        capsys,
    )
    assert code == 0, err
    frames = json.loads(out)
    pooled = frames["utterance"]
    assert (frames["computed"], pooled["computed"]) == (6, 6) and frames["namespace"] != pooled["namespace"]

    corpus = read_corpus("manifest", manifest)
    with FeatureStore(store) as opened:
        features = build_features(
            corpus.table, parse_feature_specs({"audio": block}), opened, base_dir=corpus.root, progress=False
        )
    for role, cli in (("audio", frames), ("audio_pooled", pooled)):
        summary = features.summaries[role]
        assert (summary["cached"], summary["computed"]) == (6, 0), role
        assert summary["namespace"] == cli["namespace"]
    with FeatureStore(store, create=False) as opened:
        assert len(opened.keys()) == 12, "the recipe added nothing"


def test_name_at_level_is_the_level_option_everywhere(tmp_path):
    """The shorthand lives in create_encoder, so recipes and the command line read it alike."""
    from emomix.encoders.registry import create_encoder, split_level
    from emomix.errors import ConfigError
    from emomix.features import parse_feature_specs

    spec = {"name": "opensmile:eGeMAPSv02", "level": "functionals"}
    assert create_encoder(FUNCTIONALS).identity() == create_encoder(spec).identity()
    assert create_encoder(FUNCTIONALS).identity() != create_encoder("opensmile:eGeMAPSv02").identity()
    recipe = parse_feature_specs({"audio": {"encoder": FUNCTIONALS}})["audio"]
    assert create_encoder(recipe.encoder).identity() == create_encoder(spec).identity()
    assert split_level(FUNCTIONALS, {"level": "functionals"}) == ("opensmile:eGeMAPSv02", {"level": "functionals"})
    with pytest.raises(ConfigError, match="also sets level 'lld'"):
        create_encoder({"name": FUNCTIONALS, "level": "lld"})
    folder = tmp_path / "wavlm@v2"
    folder.mkdir()
    assert split_level(f"speech:{folder}") == (f"speech:{folder}", {}), "an existing path keeps its '@'"
    assert split_level("speech:org/model@main-branch") == ("speech:org/model@main-branch", {}), "not a plain word"
