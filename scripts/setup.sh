#!/usr/bin/env bash
# Create .venv and install emomix with its test tools.
#
# PyTorch: by default the CPU build (torch==2.13.0) is installed first, so that no dependency
# pulls a multi-GB CUDA build. GPU users set EMOMIX_TORCH to the pip requirement they want
# (e.g. EMOMIX_TORCH="torch==2.5.1 --index-url <their CUDA index>"), or EMOMIX_TORCH=skip to keep
# the torch already present in the environment.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${EMOMIX_VENV:-.venv}
TORCH_SPEC=${EMOMIX_TORCH:-torch==2.13.0}

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
stamp="$VENV/.emomix-installed"
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16) $TORCH_SPEC"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0  # already set up for this pyproject
fi
if [ "$TORCH_SPEC" != "skip" ]; then
  echo "[setup] installing PyTorch ($TORCH_SPEC) into $VENV" >&2
  # shellcheck disable=SC2086
  "${PIP[@]}" $TORCH_SPEC 2>&1 | grep -v "is ignored: it is neither" >&2 || true
  "$VENV/bin/python" -c "import torch" >/dev/null
fi
echo "[setup] installing emomix and its dependencies into $VENV" >&2
"${PIP[@]}" -e ".[dev]" 2>&1 | grep -v "is ignored: it is neither" >&2 || true
"$VENV/bin/python" -c "import emomix, torch, transformers, opensmile, webrtcvad" >/dev/null
echo "$want" > "$stamp"
echo "[setup] ready: $VENV (torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)'))" >&2
