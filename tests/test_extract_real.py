"""The real corpora through the feature store, twice: exact counts, then pure cache hits.

Slow (about a minute of openSMILE on EmoDB + SAVEE); skipped with a message when
``../shared/datasets`` (or ``$EMOMIX_DATASETS``) does not hold the corpus.
"""

from __future__ import annotations

import pytest

from emomix.cache import FeatureStore, extract_features, normalise_text
from emomix.data.paths import shared_datasets_dir
from emomix.data.readers import read_corpus
from emomix.encoders import create_encoder

pytestmark = pytest.mark.slow


def _corpus(reader: str, folder: str):
    datasets = shared_datasets_dir()
    if datasets is None or not (datasets / folder).is_dir():
        pytest.skip(
            f"needs the real corpus ../shared/datasets/{folder} (or set EMOMIX_DATASETS to the folder holding it)"
        )
    return read_corpus(reader, datasets / folder, scheme=None)


@pytest.mark.parametrize("reader, folder, count", [("emodb", "emodb", 535), ("savee", "savee", 480)])
def test_egemaps_of_a_real_corpus_then_pure_cache_hits(tmp_path, reader, folder, count):
    corpus = _corpus(reader, folder)
    assert len(corpus.table) == count
    encoder = create_encoder("opensmile:eGeMAPSv02")
    with FeatureStore(tmp_path / "store") as store:
        first = extract_features(corpus.table, encoder, store, progress=False, base_dir=corpus.root)
    assert (first.total, first.computed, first.cached, first.failed) == (count, count, 0, 0), first.format()
    assert first.entries_written == count and len(first.keys) == count, "every file has its own content"
    assert first.real_time_factor is not None and first.audio_seconds > count  # every file lasts more than 1 s

    with FeatureStore(tmp_path / "store", create=False) as store:
        second = extract_features(corpus.table, encoder, store, progress=False, base_dir=corpus.root)
        row = corpus.table.iloc[0]
        arrays = store.get(first.keys[row["utt_id"]])
    assert (second.total, second.cached, second.computed, second.failed) == (count, count, 0, 0), second.format()
    assert (second.entries_written, second.shards_written, second.audio_seconds) == (0, 0, 0.0)
    assert second.keys == first.keys
    # eGeMAPS LLDs: 25 per 10 ms frame; openSMILE's window drops about 4 frames at the edges.
    import soundfile

    seconds = soundfile.info(row["audio_path"]).duration
    assert arrays["states"].shape[1] == 25 and abs(arrays["states"].shape[0] - (100 * seconds - 4)) <= 2


def test_minilm_of_meld_dev_then_pure_cache_hits(tmp_path):
    corpus = _corpus("meld", "meld-text")
    dev = corpus.table[corpus.table["split"] == "dev"]
    assert len(dev) == 1109
    unique = len({normalise_text(text or "", "strip") for text in dev["text"]})
    assert unique < 1109, "MELD dev repeats lines such as 'Okay.'"
    encoder = create_encoder("minilm")
    with FeatureStore(tmp_path / "store") as store:
        first = extract_features(dev, encoder, store, batch_size=32, progress=False)
    # Every utterance counts as computed; a repeated line is encoded and stored once.
    assert (first.total, first.computed, first.cached, first.failed) == (1109, 1109, 0, 0), first.format()
    assert first.entries_written == unique
    assert len(set(first.keys.values())) == unique
    with FeatureStore(tmp_path / "store", create=False) as store:
        second = extract_features(dev, encoder, store, batch_size=32, progress=False)
        states = store.get(first.keys[dev.iloc[0]["utt_id"]])["states"]
    assert (second.total, second.cached, second.computed, second.failed) == (1109, 1109, 0, 0), second.format()
    assert (second.entries_written, second.shards_written) == (0, 0)
    assert states.shape[1] == 384 and states.dtype.name == "float16"
