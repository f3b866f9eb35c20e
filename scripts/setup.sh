#!/usr/bin/env bash
# Create .venv and install emomix with its test tools.
#
# PyTorch: by default the CPU build (torch==2.13.0) is installed first, so that no dependency
# pulls a multi-GB CUDA build. GPU users set EMOMIX_TORCH to the pip requirement they want
# (e.g. EMOMIX_TORCH="torch==2.5.1 --index-url <their CUDA index>"), or EMOMIX_TORCH=skip to keep
# the torch already present in the environment.
#
# Browser test: as root with apt-get, the system Chromium and chromedriver are installed when
# missing (EMOMIX_BROWSER=0 skips this); otherwise a note says how to install them.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${EMOMIX_VENV:-.venv}
TORCH_SPEC=${EMOMIX_TORCH:-torch==2.13.0}

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)

# The browser test (tests/test_browser.py) drives the system Chromium headless through Selenium
# with Debian's chromedriver; nothing is downloaded at test time. Installed here when we can
# (root with apt-get), before the venv check so that a cached venv still gets the browser.
install_browser() {
  if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    return 0
  fi
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "[setup] installing the system Chromium and chromedriver (apt-get) for the browser test" >&2
    local log
    log="$(mktemp)"
    if { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver; } >"$log" 2>&1; then
      rm -f "$log"
      return 0
    fi
    echo "[setup] warning: apt-get could not install chromium (last lines below); the browser test will be skipped" >&2
    tail -n 5 "$log" >&2 || true
    rm -f "$log"
  fi
  echo "[setup] note: the browser test needs /usr/bin/chromium and /usr/bin/chromedriver;" \
       "install them with: sudo apt-get install chromium chromium-driver (Debian/Ubuntu)" >&2
}
if [ "${EMOMIX_BROWSER:-1}" != "0" ]; then
  install_browser || true
fi

stamp="$VENV/.emomix-installed"
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16) $TORCH_SPEC"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0  # already set up for this pyproject
fi
if [ "$TORCH_SPEC" != "skip" ]; then
  echo "[setup] installing PyTorch ($TORCH_SPEC) into $VENV" >&2
  # numpy with torch: importing a torch installed without numpy prints
  # "UserWarning: Failed to initialize NumPy" (the check below imports it)
  # shellcheck disable=SC2086
  "${PIP[@]}" $TORCH_SPEC "numpy>=1.24" 2>&1 | grep -v "is ignored: it is neither" >&2 || true
  "$VENV/bin/python" -c "import torch" >/dev/null
fi
echo "[setup] installing emomix and its dependencies into $VENV" >&2
"${PIP[@]}" -e ".[dev]" 2>&1 | grep -v "is ignored: it is neither" >&2 || true
# resemblyzer (the 'resemblyzer' voice-embedding encoder, weights bundled): without its declared
# dependencies, which are `typing` (a Python 2 backport) and the webrtcvad sdist that would replace
# webrtcvad-wheels; what it imports (torch, librosa, scipy, numpy, webrtcvad) is installed above.
"${PIP[@]}" --no-deps "resemblyzer==0.1.4" 2>&1 | grep -v "is ignored: it is neither" >&2 || true
"$VENV/bin/python" -c "import emomix, torch, transformers, opensmile, webrtcvad, resemblyzer" >/dev/null
echo "$want" > "$stamp"
echo "[setup] ready: $VENV (torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)'))" >&2
