// emomix web page: choose a file or record one, add the transcript, POST /predict, draw the bars.
// A text-only model (GET /model: inputs ["text"]) gets a transcript alone: the recording part hides.
// Plain browser JavaScript, no external assets. Every text from the server is set with
// textContent (never innerHTML), so a file name or message cannot inject markup.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const form = $("predict-form");
  const fileInput = $("audio-file");
  const recordButton = $("record-button");
  const recordStatus = $("record-status");
  const preview = $("preview");
  const submitButton = $("submit-button");
  const busy = $("busy");
  const errorBox = $("error");
  const result = $("result");

  let recorded = null;        // {blob, filename} of the last microphone recording
  let recorder = null;        // the active MediaRecorder
  let previewUrl = null;
  let maxUploadBytes = null;  // from GET /model
  let auxLabels = {};         // machine name → human label, from GET /model (emomix.infer.describe)
  let auxFlags = [];          // readings that are yes/no flags
  let textOnly = false;       // the model reads no audio (GET /model)

  function auxLabel(name) {
    return auxLabels[name] || name.replace(/_/g, " ");
  }

  // Names of the components of known aux vectors (docs/training.md: route_<m> = [p_local, p_global]).
  function componentNames(name, count) {
    if (name.startsWith("route_") && count === 2) return ["local", "global"];
    if (name.includes("gate")) return Array.from({ length: count }, (_, j) => "expert " + j);
    return Array.from({ length: count }, (_, j) => "#" + j);
  }

  function showError(message) {
    errorBox.textContent = message;
    errorBox.hidden = false;
  }

  function clearError() {
    errorBox.textContent = "";
    errorBox.hidden = true;
  }

  function formatNumber(value) {
    return typeof value === "number" && isFinite(value) ? value.toFixed(3) : String(value);
  }

  // One labelled bar for a value in [0, 1]; values outside are drawn clipped, the number is exact.
  function barRow(name, value, top) {
    const row = document.createElement("div");
    row.className = "bar-row" + (top ? " top" : "");
    row.setAttribute("role", "listitem");
    const label = document.createElement("span");
    label.className = "bar-name";
    label.textContent = name;
    const track = document.createElement("div");
    track.className = "bar-track";
    track.setAttribute("role", "meter");
    track.setAttribute("aria-label", name);
    track.setAttribute("aria-valuemin", "0");
    track.setAttribute("aria-valuemax", "1");
    const number = typeof value === "number" && isFinite(value) ? value : 0;
    track.setAttribute("aria-valuenow", String(number));
    track.setAttribute("aria-valuetext", Math.round(number * 100) + "%");
    const fill = document.createElement("div");
    fill.className = "bar-fill";
    fill.style.width = Math.max(0, Math.min(1, number)) * 100 + "%";
    track.appendChild(fill);
    const text = document.createElement("span");
    text.className = "bar-value";
    text.textContent = formatNumber(value);
    row.append(label, track, text);
    return row;
  }

  function renderProbabilities(probabilities, label) {
    const box = $("probabilities");
    box.replaceChildren();
    const entries = Object.entries(probabilities || {}).sort((a, b) => b[1] - a[1]);
    for (const [name, p] of entries) box.appendChild(barRow(name, p, name === label));
  }

  function renderAux(aux) {
    const box = $("aux");
    box.replaceChildren();
    let shown = 0;
    const scalars = document.createElement("div");
    scalars.className = "aux-group";
    scalars.setAttribute("role", "list");
    scalars.setAttribute("aria-label", "other readings");
    for (const [name, value] of Object.entries(aux || {})) {
      shown += 1;
      if (auxFlags.includes(name)) {  // a yes/no flag, e.g. "no speech found: whole clip used"
        const row = document.createElement("div");
        row.className = "flag-row";
        row.setAttribute("role", "listitem");
        row.dataset.name = name;
        const label = document.createElement("span");
        label.textContent = auxLabel(name);
        const answer = document.createElement("span");
        answer.className = "flag-value";
        answer.textContent = value ? "yes" : "no";
        row.append(label, answer);
        scalars.appendChild(row);
        continue;
      }
      if (!Array.isArray(value)) {  // another per-utterance scalar
        scalars.appendChild(barRow(auxLabel(name), value, false));
        continue;
      }
      const group = document.createElement("div");
      group.className = "aux-group";
      group.setAttribute("role", "list");
      group.setAttribute("aria-label", auxLabel(name));
      group.dataset.name = name;
      const heading = document.createElement("h4");
      heading.textContent = auxLabel(name);
      group.appendChild(heading);
      const names = componentNames(name, value.length);
      value.forEach((v, j) => group.appendChild(barRow(names[j], v, false)));
      box.appendChild(group);
    }
    if (scalars.childElementCount) box.appendChild(scalars);
    $("aux-section").hidden = shown === 0;
  }

  function renderResult(data) {
    $("label").textContent = data.label;
    const meta = [];
    if (data.duration_s != null) meta.push(data.duration_s.toFixed(2) + " s of audio");
    if (data.modalities) meta.push("read: " + data.modalities.join(" + "));
    if (data.transcript_source) meta.push("transcript: " + data.transcript_source);
    $("result-meta").textContent = meta.join(" · ");
    renderProbabilities(data.probabilities, data.label);
    renderAux(data.aux);
    const notes = $("notes");
    notes.replaceChildren();
    for (const note of data.notes || []) {
      const item = document.createElement("li");
      item.textContent = note;
      notes.appendChild(item);
    }
    result.hidden = false;
    $("result-heading").focus();
  }

  async function errorMessage(response) {
    try {
      const body = await response.json();
      if (body && body.error && body.error.message) return body.error.message + " (HTTP " + response.status + ")";
    } catch (_) { /* not JSON */ }
    return "The server answered HTTP " + response.status + " " + response.statusText;
  }

  function chosenAudio() {
    if (fileInput.files && fileInput.files.length) return { blob: fileInput.files[0], filename: fileInput.files[0].name };
    return recorded;
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearError();
    const data = new FormData();
    const text = $("transcript").value.trim();
    if (textOnly) {
      if (!text) {
        showError("Type the transcript first: this model reads text only.");
        $("transcript").focus();
        return;
      }
    } else {
      const audio = chosenAudio();
      if (!audio) {
        showError("Choose an audio file or record one first.");
        fileInput.focus();
        return;
      }
      if (maxUploadBytes && audio.blob.size > maxUploadBytes) {
        showError("The recording is " + (audio.blob.size / 1048576).toFixed(1) + " MB; the server accepts at most " +
                  (maxUploadBytes / 1048576).toFixed(1) + " MB.");
        return;
      }
      data.append("file", audio.blob, audio.filename);
    }
    if (text) data.append("text", text);
    const speaker = $("speaker").value.trim();
    if (speaker) data.append("speaker", speaker);
    submitButton.disabled = true;
    busy.textContent = "Recognising…";
    try {
      const response = await fetch("/predict", { method: "POST", body: data });
      if (!response.ok) {
        result.hidden = true;
        showError(await errorMessage(response));
        return;
      }
      renderResult(await response.json());
    } catch (error) {
      result.hidden = true;
      showError("Could not reach the server: " + error.message);
    } finally {
      submitButton.disabled = false;
      busy.textContent = "";
    }
  });

  function setPreview(blob) {
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = blob ? URL.createObjectURL(blob) : null;
    preview.hidden = !blob;
    if (blob) preview.src = previewUrl; else preview.removeAttribute("src");
  }

  fileInput.addEventListener("change", () => {
    if (fileInput.files && fileInput.files.length) {
      recorded = null;
      recordStatus.textContent = "";
      setPreview(fileInput.files[0]);
    }
  });

  // Microphone recording: MediaRecorder gives WebM/Opus (Chrome, Firefox) or Ogg/Opus; the
  // server decodes both with FFmpeg.
  function recordingType() {
    const candidates = ["audio/webm;codecs=opus", "audio/ogg;codecs=opus", "audio/webm", "audio/ogg", "audio/mp4"];
    return candidates.find((type) => window.MediaRecorder && MediaRecorder.isTypeSupported(type)) || "";
  }

  async function startRecording() {
    clearError();
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    } catch (error) {
      showError("The microphone is not available: " + error.message);
      return;
    }
    const type = recordingType();
    recorder = new MediaRecorder(stream, type ? { mimeType: type } : undefined);
    const chunks = [];
    recorder.addEventListener("dataavailable", (event) => { if (event.data.size) chunks.push(event.data); });
    recorder.addEventListener("stop", () => {
      stream.getTracks().forEach((track) => track.stop());
      const mime = (recorder.mimeType || type || "audio/webm").split(";")[0];
      const extension = mime.includes("ogg") ? "ogg" : mime.includes("mp4") ? "m4a" : "webm";
      const blob = new Blob(chunks, { type: mime });
      recorded = { blob, filename: "recording." + extension };
      fileInput.value = "";
      setPreview(blob);
      recordStatus.textContent = "Recorded " + (blob.size / 1024).toFixed(0) + " kB (" + mime + ").";
      recordButton.textContent = "Start recording";
      recordButton.setAttribute("aria-pressed", "false");
      recorder = null;
    });
    recorder.start();
    recordButton.textContent = "Stop recording";
    recordButton.setAttribute("aria-pressed", "true");
    recordStatus.textContent = "Recording… press the button again to stop.";
  }

  recordButton.addEventListener("click", () => {
    if (recorder && recorder.state === "recording") recorder.stop();
    else startRecording();
  });

  if (!(navigator.mediaDevices && navigator.mediaDevices.getUserMedia && window.MediaRecorder)) {
    recordButton.disabled = true;
    recordStatus.textContent = "Recording needs a browser with MediaRecorder on https:// or localhost.";
  }

  // The model description: name, classes, what happens without a transcript, upload limit.
  fetch("/model").then((response) => (response.ok ? response.json() : null)).then((info) => {
    if (!info) { $("model-line").textContent = "The model description is not available."; return; }
    const parts = ["Model " + info.name];
    if (info.classes) parts.push("classes: " + info.classes.join(", "));
    if (info.inputs) parts.push("reads: " + info.inputs.join(" + "));
    if (info.inputs && !info.inputs.includes("audio")) {  // a text-only model: no recording to choose
      textOnly = true;
      $("recording").hidden = true;
      $("transcript-optional").textContent = "(what is said)";
      $("transcript").placeholder = "Type what is said";
    }
    $("model-line").textContent = parts.join(" · ");
    const warnings = info.warnings || [];
    if (warnings.length) {  // e.g. a model trained on the synthetic corpus
      $("model-warning").textContent = "Warning: " + warnings.join(". ") + ".";
      $("model-warning").hidden = false;
    }
    if (info.aux_labels) {
      auxLabels = info.aux_labels.labels || {};
      auxFlags = info.aux_labels.flags || [];
    }
    if (info.without_transcript) $("transcript-hint").textContent = "Without a transcript: " + info.without_transcript + ".";
    if (info.limits) {
      maxUploadBytes = info.limits.max_upload_bytes;
      $("transcript").maxLength = info.limits.max_text_chars;
    }
  }).catch(() => { $("model-line").textContent = "The model description is not available."; });
})();
