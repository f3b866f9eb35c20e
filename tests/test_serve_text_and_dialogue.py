"""The service without audio (a text-only model takes transcripts alone) and with
conversations (``POST /predict/dialogue``: each turn with its context, as
``Predictor.predict_dialogue``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from emomix.infer.predictor import Predictor
from emomix.serve.app import create_app
from synthetic_features import fold_test_items, with_context_card

LINES = ["I got the job, this is the best day ever!", "Why would you do that?", "Fine. Whatever."]


def _p(result, classes):
    return np.array([result["probabilities"][c] for c in classes])


@pytest.fixture(scope="module")
def text_client(text_only_checkpoint):
    predictor = Predictor.from_run(text_only_checkpoint, asr=False)
    with TestClient(create_app(predictor)) as client:
        yield client, predictor


def test_a_text_only_model_is_served_transcripts_alone(text_client):
    client, predictor = text_client
    response = client.post("/predict", data={"text": LINES[1], "speaker": "joey"})
    assert response.status_code == 200, response.text
    expected = predictor.predict(text=LINES[1], speaker="joey")
    assert _p(response.json(), predictor.classes) == pytest.approx(_p(expected, predictor.classes), abs=1e-6)
    assert response.json()["transcript"] == LINES[1]
    batch = client.post("/predict/batch", data={"texts": LINES[:2]})
    assert batch.status_code == 200, batch.text
    results = batch.json()["results"]
    assert [r["transcript"] for r in results] == LINES[:2]
    assert _p(results[1], predictor.classes) == pytest.approx(_p(expected, predictor.classes), abs=1e-5)
    # nothing to predict from: refused before any model work
    nothing = client.post("/predict", data={"speaker": "joey"})
    assert nothing.status_code == 422 and "send a file (audio), or a text" in nothing.json()["error"]["message"]
    blank = client.post("/predict/batch", data={"texts": [LINES[0], "  "]})
    assert blank.json()["results"][1]["error"]["type"] == "empty_text"


def test_an_audio_model_asks_for_the_recording(synthetic_predictor):
    with TestClient(create_app(synthetic_predictor)) as client:
        for path, data in (("/predict", {"text": LINES[0]}), ("/predict/dialogue", {"texts": LINES[:2]})):
            response = client.post(path, data=data)
            assert response.status_code == 422, path
            assert "reads audio; send the recording as a file" in response.json()["error"]["message"]


def test_a_conversation_is_predicted_with_its_context(trained_synthetic_run, synthetic_features, tmp_path):
    """Three synthetic turns with their recordings through a context model: the dialogue endpoint
    gives what predict_dialogue gives (later turns read their predecessors), the batch endpoint
    what predict gives; a corrupt recording fails the conversation, naming its turn."""
    run = with_context_card(trained_synthetic_run, tmp_path / "context")
    predictor = Predictor.from_run(run, asr=False)
    items, _ = fold_test_items(run, synthetic_features, "ses01", 3)
    files = [("files", (Path(i["audio"]).name, Path(i["audio"]).read_bytes(), "audio/wav")) for i in items]
    form = {"texts": [i["text"] for i in items], "speakers": [i["speaker"] for i in items]}
    conversation = predictor.predict_dialogue(items)
    with TestClient(create_app(predictor)) as client:
        assert client.get("/model").json()["reads_dialogue"] is True
        response = client.post("/predict/dialogue", files=files, data=form)
        assert response.status_code == 200, response.text
        served = response.json()["results"]
        separate = client.post("/predict/batch", files=files, data=form).json()["results"]
        broken = [files[0], ("files", ("t1.wav", b"RIFF\x00\x00garbage", "audio/wav")), files[2]]
        failed = client.post("/predict/dialogue", files=broken, data=form)
    assert len(served) == 3
    for got, expected in zip(served, conversation):
        assert _p(got, predictor.classes) == pytest.approx(_p(expected, predictor.classes), abs=1e-4)
    assert _p(separate[0], predictor.classes) == pytest.approx(_p(served[0], predictor.classes), abs=1e-4)
    assert not np.allclose(_p(separate[2], predictor.classes), _p(served[2], predictor.classes), atol=1e-4)
    assert failed.status_code == 422 and failed.json()["error"]["message"].startswith("turn 1: t1.wav")


def test_a_text_only_conversation(text_only_checkpoint, tmp_path):
    predictor = Predictor.from_run(with_context_card(text_only_checkpoint, tmp_path / "context"), asr=False)
    speakers = ["A", "B", "A"]
    alone = [predictor.predict(text=line, speaker=who) for line, who in zip(LINES, speakers)]
    with TestClient(create_app(predictor)) as client:
        response = client.post("/predict/dialogue", data={"texts": LINES, "speakers": speakers})
        mismatch = client.post("/predict/dialogue", data={"texts": LINES, "speakers": ["A"]})
    assert response.status_code == 200, response.text
    served = response.json()["results"]
    assert _p(served[0], predictor.classes) == pytest.approx(_p(alone[0], predictor.classes), abs=1e-5)
    assert not np.allclose(_p(served[2], predictor.classes), _p(alone[2], predictor.classes), atol=1e-5)
    assert mismatch.status_code == 422 and "1 speakers for 3 texts" in mismatch.json()["error"]["message"]
