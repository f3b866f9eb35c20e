"""The web page in a real browser: the system Chromium (headless) driven by Selenium against the
real service (uvicorn in a thread) and the real Predictor of a trained synthetic run. Part of the
``e2e`` suite (``make test-e2e``).

Chromium and chromedriver are Debian's (``apt-get install chromium chromium-driver``, done by
scripts/setup.sh as root); the driver path is given explicitly, so Selenium Manager never
downloads anything. Skipped with a message when either binary or selenium is missing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from emomix.serve.app import ServiceLimits, create_app

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WAIT_S = 60  # generous: the CI machine is shared and a prediction can queue behind other jobs


def _missing() -> str | None:
    for binary in (CHROMIUM, CHROMEDRIVER):
        if not binary.exists():
            return (
                f"{binary} is missing: install Debian's chromium and chromium-driver "
                "(scripts/setup.sh does this when run as root with apt-get)"
            )
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed: pip install -e '.[dev]'"
    return None


pytestmark = [pytest.mark.e2e, pytest.mark.skipif(_missing() is not None, reason=_missing() or "")]


@pytest.fixture(scope="module")
def server(synthetic_predictor, background_server, one_thread):
    url = background_server(create_app(synthetic_predictor, ServiceLimits(timeout_s=WAIT_S)))
    return url, synthetic_predictor.info()["classes"]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1000,1400",
        "--disable-extensions",
        "--no-first-run",
        # a fake microphone (a beeping tone) that needs no permission prompt
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(WAIT_S)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def clip(synthetic_features):
    row = synthetic_features.table.sort_values("utt_id").iloc[0]
    return synthetic_features.root / row["audio_path"], row["text"]


def wait_for(driver, condition, message: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S, poll_frequency=0.1).until(condition, message)


def visible(driver, element_id: str) -> bool:
    element = driver.find_element("id", element_id)
    return element.is_displayed()


def bar_names(driver, container_id: str) -> list[str]:
    return [e.text for e in driver.find_elements("css selector", f"#{container_id} .bar-row .bar-name")]


def submit_with_keyboard(driver) -> None:
    from selenium.webdriver.common.keys import Keys

    driver.find_element("id", "submit-button").send_keys(Keys.ENTER)


def test_upload_a_clip_with_its_transcript_and_see_the_bars(server, browser, clip):
    url, classes = server
    path, text = clip
    browser.get(url + "/")
    wait_for(
        browser,
        lambda d: "dual_routing" in d.find_element("id", "model-line").text,
        "the model line never showed the model",
    )
    assert not visible(browser, "preview"), "no empty audio player before a file is chosen"
    browser.find_element("id", "audio-file").send_keys(str(path))
    wait_for(browser, lambda d: visible(d, "preview"), "the chosen file's player never appeared")
    transcript = browser.find_element("id", "transcript")
    transcript.clear()
    transcript.send_keys(text)
    submit_with_keyboard(browser)
    wait_for(
        browser,
        lambda d: visible(d, "result") and len(bar_names(d, "probabilities")) == len(classes),
        "the probability bars never appeared",
    )
    label = browser.find_element("id", "label").text
    assert label in classes
    assert sorted(bar_names(browser, "probabilities")) == sorted(classes)
    assert bar_names(browser, "probabilities")[0] == label, "bars are sorted, the predicted class first"
    values = [
        float(m.get_attribute("aria-valuenow"))
        for m in browser.find_elements("css selector", "#probabilities [role=meter]")
    ]
    assert abs(sum(values) - 1) < 1e-3 and values == sorted(values, reverse=True)
    assert visible(browser, "aux-section")
    groups = {
        g.get_attribute("data-name"): g for g in browser.find_elements("css selector", "#aux .aux-group[data-name]")
    }
    assert {"route_audio", "route_text"} <= set(groups)
    # human labels, not the machine names
    assert groups["route_audio"].find_element("tag name", "h4").text == "audio routing: local / global"
    assert "route_" not in browser.find_element("id", "aux").text
    flags = {f.get_attribute("data-name"): f.text for f in browser.find_elements("css selector", "#aux .flag-row")}
    assert "vad_fallback" in flags and flags["vad_fallback"].startswith("no speech found: whole clip used")
    assert flags["vad_fallback"].split()[-1] in ("yes", "no")
    # a model trained on the synthetic corpus says so: a banner and a note on the result
    assert visible(browser, "model-warning") and "synthetic corpus" in browser.find_element("id", "model-warning").text
    assert any("synthetic corpus" in n.text for n in browser.find_elements("css selector", "#notes li"))
    route = groups["route_audio"]
    assert [e.text for e in route.find_elements("css selector", ".bar-name")] == ["local", "global"]
    shares = [float(m.get_attribute("aria-valuenow")) for m in route.find_elements("css selector", "[role=meter]")]
    assert abs(sum(shares) - 1) < 1e-3
    assert not visible(browser, "error")


def test_a_corrupt_file_shows_the_error_message(server, browser, tmp_path):
    url, _ = server
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(256)) * 4)
    browser.get(url + "/")
    browser.find_element("id", "submit-button").click()
    wait_for(browser, lambda d: visible(d, "error"), "no error without a chosen file")
    assert "Choose an audio file" in browser.find_element("id", "error").text
    browser.find_element("id", "audio-file").send_keys(str(broken))
    browser.find_element("id", "transcript").send_keys("this will not be read")
    submit_with_keyboard(browser)
    wait_for(
        browser, lambda d: "broken.wav" in d.find_element("id", "error").text, "the upload's error was never shown"
    )
    message = browser.find_element("id", "error").text
    assert "could not be read as audio" in message and "HTTP 422" in message
    for leak in ("libsndfile", "FFmpeg", "BytesIO", "0x"):
        assert leak not in message, message
    assert browser.find_element("id", "error").get_attribute("role") == "alert"
    assert not visible(browser, "result")


def test_a_microphone_recording_is_uploaded_as_webm_and_predicted(server, browser):
    import time

    url, classes = server
    browser.get(url + "/")
    record = browser.find_element("id", "record-button")
    wait_for(browser, lambda d: d.find_element("id", "record-button").is_enabled(), "recording is not available")
    record.click()
    wait_for(
        browser,
        lambda d: d.find_element("id", "record-button").get_attribute("aria-pressed") == "true",
        "recording did not start: " + browser.find_element("id", "error").text,
    )
    time.sleep(2.0)
    record.click()
    wait_for(
        browser, lambda d: "Recorded" in d.find_element("id", "record-status").text, "the recording never finished"
    )
    assert (
        "webm" in browser.find_element("id", "record-status").text
        or "ogg" in browser.find_element("id", "record-status").text
    )
    browser.find_element("id", "transcript").send_keys("a recorded sentence")
    submit_with_keyboard(browser)
    wait_for(browser, lambda d: visible(d, "result") or visible(d, "error"), "no answer to the recording")
    assert not visible(browser, "error"), browser.find_element("id", "error").text
    assert browser.find_element("id", "label").text in classes
    meta = browser.find_element("id", "result-meta").text
    seconds = float(meta.split(" s of audio")[0])
    assert 1.0 < seconds < 4.0, meta


def test_the_page_is_usable_from_the_keyboard(server, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    url, _ = server
    browser.get(url + "/")
    wait_for(browser, lambda d: "dual_routing" in d.find_element("id", "model-line").text, "the page did not load")
    reached = []
    for _ in range(10):
        ActionChains(browser).send_keys(Keys.TAB).perform()
        reached.append(browser.switch_to.active_element.get_attribute("id"))
    assert {"audio-file", "record-button", "transcript", "speaker", "submit-button"} <= set(reached), reached
    for element_id in ("audio-file", "transcript", "speaker"):
        labels = browser.find_elements("css selector", f"label[for={element_id}]")
        assert labels and labels[0].text.strip(), f"#{element_id} has no label"


def test_a_text_only_model_takes_a_typed_transcript(text_only_checkpoint, background_server, browser):
    """A text-only model's page has no recording part: a typed transcript alone is predicted,
    and an empty one is refused in the page before any request."""
    from emomix.infer.predictor import Predictor

    predictor = Predictor.from_run(text_only_checkpoint, asr=False)
    url = background_server(create_app(predictor, ServiceLimits(timeout_s=WAIT_S)))
    browser.get(url + "/")
    wait_for(browser, lambda d: "reads: text" in d.find_element("id", "model-line").text, "no model line")
    assert not visible(browser, "recording"), "a text-only model has no recording to choose"
    submit_with_keyboard(browser)
    wait_for(browser, lambda d: visible(d, "error"), "no error for an empty transcript")
    assert "this model reads text only" in browser.find_element("id", "error").text
    browser.find_element("id", "transcript").send_keys("Why would you do that?")
    submit_with_keyboard(browser)
    classes = predictor.classes
    wait_for(
        browser,
        lambda d: visible(d, "result") and len(bar_names(d, "probabilities")) == len(classes),
        "the probability bars never appeared",
    )
    expected = predictor.predict(text="Why would you do that?")["label"]
    assert browser.find_element("id", "label").text == expected
    assert not visible(browser, "error")
