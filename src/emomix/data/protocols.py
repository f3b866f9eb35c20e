"""Cross-validation protocols: which utterances train, validate and test each fold.

A protocol turns an utterance table (see :mod:`emomix.data.schema`) into a :class:`FoldPlan`: a
list of :class:`Fold` records holding sorted ``utt_id`` lists. The plan is explicit data — saved
as JSON, printed in every report, identified by :meth:`FoldPlan.fingerprint` — because numbers
from two runs are comparable only when they used the same folds.

Protocols (names accepted by :func:`make_fold_plan`):

``loso``           :func:`leave_one_session_out` — one fold per session
``loso-speaker``   :func:`leave_one_speaker_out` — one fold per speaker
``speaker-split``  :func:`speaker_split` — one fold, speakers partitioned by a seeded shuffle
``official``       :func:`official_split` — the corpus's own train/dev/test split
``kfold``          :func:`stratified_kfold` — label-stratified k folds, optionally grouped by speaker

How validation is taken inside a training part is the ``validation`` option (``"group"``,
``"speaker"``, ``"random"``, ``"none"``); see ``docs/protocols.md``.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from emomix.atomic import write_json_atomic
from emomix.errors import MissingDataError, ProtocolError
from emomix.jsonutil import to_jsonable

PLAN_FORMAT = "emomix-fold-plan"
PLAN_VERSION = 1

VALIDATION_MODES: tuple[str, ...] = ("group", "speaker", "random", "none")
DEFAULT_VALIDATION_FRACTION = 0.1

# Protocols whose test parts, taken together, cover every utterance of the table exactly once.
_COVERING_PROTOCOLS = frozenset({"loso", "loso-speaker", "kfold"})


# --------------------------------------------------------------------------------------------
# Records


@dataclass
class Fold:
    """One fold: sorted utterance ids of each part and the groups held out.

    ``test_groups`` are values of the plan's ``group_column`` (sessions for ``loso``, speakers for
    ``loso-speaker``/``speaker-split``/grouped ``kfold``, ``["test"]`` for ``official``);
    ``validation_groups`` are the session(s) or speaker(s) held out for validation, empty when the
    validation part is a random share or absent.
    """

    name: str
    train: list[str]
    validation: list[str]
    test: list[str]
    test_groups: list[str] = field(default_factory=list)
    validation_groups: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The fold as plain JSON-serialisable values."""
        return {
            "name": self.name,
            "test_groups": list(self.test_groups),
            "validation_groups": list(self.validation_groups),
            "train": list(self.train),
            "validation": list(self.validation),
            "test": list(self.test),
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = "fold") -> Fold:
        """Rebuild a fold from :meth:`to_dict` output; :class:`ProtocolError` naming the bad key."""
        if not isinstance(data, dict):
            raise ProtocolError(
                f"{where}: expected an object with name/train/validation/test, got {type(data).__name__}"
            )
        missing = [k for k in ("name", "train", "validation", "test") if k not in data]
        if missing:
            raise ProtocolError(f"{where}: missing key(s) {missing}")
        unknown = sorted(set(data) - {"name", "train", "validation", "test", "test_groups", "validation_groups"})
        if unknown:
            raise ProtocolError(f"{where}: unknown key(s) {unknown}")
        if not isinstance(data["name"], str) or not data["name"]:
            raise ProtocolError(f"{where}: 'name' must be a non-empty string")
        parts = {}
        for key in ("train", "validation", "test", "test_groups", "validation_groups"):
            value = data.get(key, [])
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ProtocolError(f"{where} {data['name']!r}: {key!r} must be a list of strings")
            parts[key] = list(value)
        return cls(name=data["name"], **parts)


@dataclass
class FoldPlan:
    """A complete cross-validation plan: the protocol, its resolved parameters and the folds.

    ``group_column`` is the table column whose values the folds hold out (``session``,
    ``speaker``, ``split`` or None); ``speaker_independent`` says whether no speaker may appear in
    both the training and the test part of a fold, which :meth:`check` then enforces.
    """

    protocol: str
    params: dict[str, Any]
    folds: list[Fold]
    seed: int = 0
    group_column: str | None = None
    speaker_independent: bool = True
    notes: list[str] = field(default_factory=list)
    confounding: dict[str, Any] | None = None

    # ---- identity -------------------------------------------------------------------------

    def fingerprint(self) -> str:
        """A stable 16-hex-digit hash of the folds' names and utterance ids.

        Two plans with the same fingerprint put exactly the same utterances in every part, whatever
        parameters produced them; reports print it so results can be matched to their folds.
        """
        content = [[f.name, sorted(f.train), sorted(f.validation), sorted(f.test)] for f in self.folds]
        blob = json.dumps(content, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(blob.encode("ascii")).hexdigest()[:16]

    # ---- serialisation --------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The plan as plain JSON-serialisable values (with its fingerprint)."""
        return {
            "format": PLAN_FORMAT,
            "version": PLAN_VERSION,
            "protocol": self.protocol,
            "params": to_jsonable(self.params),
            "seed": int(self.seed),
            "group_column": self.group_column,
            "speaker_independent": bool(self.speaker_independent),
            "notes": list(self.notes),
            "fingerprint": self.fingerprint(),
            **({"confounding": to_jsonable(self.confounding)} if self.confounding is not None else {}),
            "folds": [f.to_dict() for f in self.folds],
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = "fold plan") -> FoldPlan:
        """Rebuild a plan from :meth:`to_dict` output.

        A stored ``fingerprint`` that does not match the folds means the file was edited or
        damaged; that raises :class:`ProtocolError` (delete the key to accept a deliberate edit).
        """
        if not isinstance(data, dict):
            raise ProtocolError(f"{source}: expected a JSON object, got {type(data).__name__}")
        if data.get("format", PLAN_FORMAT) != PLAN_FORMAT:
            raise ProtocolError(f"{source}: 'format' is {data.get('format')!r}, not {PLAN_FORMAT!r}")
        version = data.get("version", PLAN_VERSION)
        if version != PLAN_VERSION:
            raise ProtocolError(
                f"{source}: fold plan version {version!r} is not supported (this emomix reads version {PLAN_VERSION})"
            )
        missing = [k for k in ("protocol", "folds") if k not in data]
        if missing:
            raise ProtocolError(f"{source}: missing key(s) {missing}")
        known = {
            "format",
            "version",
            "protocol",
            "params",
            "seed",
            "group_column",
            "speaker_independent",
            "notes",
            "fingerprint",
            "folds",
            "confounding",
        }
        unknown = sorted(set(data) - known)
        if unknown:
            raise ProtocolError(f"{source}: unknown key(s) {unknown}")
        if not isinstance(data["folds"], list) or not data["folds"]:
            raise ProtocolError(f"{source}: 'folds' must be a non-empty list")
        params = data.get("params", {})
        if not isinstance(params, dict):
            raise ProtocolError(f"{source}: 'params' must be an object")
        seed = data.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ProtocolError(f"{source}: 'seed' must be an integer, got {seed!r}")
        folds = [Fold.from_dict(f, where=f"{source}: folds[{i}]") for i, f in enumerate(data["folds"])]
        plan = cls(
            protocol=str(data["protocol"]),
            params=dict(params),
            folds=folds,
            seed=seed,
            group_column=data.get("group_column"),
            speaker_independent=bool(data.get("speaker_independent", True)),
            notes=[str(n) for n in data.get("notes", [])],
            confounding=dict(data["confounding"]) if isinstance(data.get("confounding"), dict) else None,
        )
        stored = data.get("fingerprint")
        if stored is not None and stored != plan.fingerprint():
            raise ProtocolError(
                f"{source}: stored fingerprint {stored} does not match the folds ({plan.fingerprint()}); the file was "
                "edited or damaged — rebuild it with `emomix folds`, or delete the 'fingerprint' key to accept the edit"
            )
        return plan

    def save(self, path: str | Path) -> Path:
        """Write the plan as indented JSON atomically (a temporary file renamed into place)."""
        return write_json_atomic(path, self.to_dict(), indent=1)

    @classmethod
    def load(cls, path: str | Path) -> FoldPlan:
        """Read a plan written by :meth:`save`.

        :class:`MissingDataError` when the file does not exist, :class:`ProtocolError` naming the
        file (and line, for broken JSON) when it is not a fold plan.
        """
        path = Path(path)
        if not path.is_file():
            raise MissingDataError(
                f"fold plan {path} does not exist; write one with `emomix folds READER ROOT --protocol P --out {path}`"
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ProtocolError(
                f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); rebuild it with `emomix folds`"
            ) from exc
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"{path}: not a UTF-8 text file ({exc.reason})") from exc
        return cls.from_dict(data, source=str(path))

    # ---- checks and printing --------------------------------------------------------------

    def check(self, table: pd.DataFrame) -> None:
        """Verify the plan against ``table``; raise :class:`ProtocolError` naming fold and ids.

        Checked: fold names are unique; every fold has training and test utterances; no id is
        listed twice or in two parts of a fold; every id exists in the table; the held-out groups
        really are absent from training; for a speaker-independent plan no speaker of the test
        part appears in training or validation; for ``loso``/``loso-speaker``/``kfold`` every
        utterance of the table is tested exactly once.
        """
        names = [f.name for f in self.folds]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ProtocolError(f"fold plan names fold(s) {repeated} more than once")
        known = set(table["utt_id"])
        rows = table.set_index("utt_id", drop=False)
        for fold in self.folds:
            parts = {"train": fold.train, "validation": fold.validation, "test": fold.test}
            if not fold.train or not fold.test:
                empty = [k for k in ("train", "test") if not parts[k]]
                raise ProtocolError(f"fold {fold.name!r}: the {' and '.join(empty)} part is empty")
            for part, ids in parts.items():
                if len(set(ids)) != len(ids):
                    dup = _first_duplicate(ids)
                    raise ProtocolError(f"fold {fold.name!r}: utterance {dup!r} is listed twice in {part}")
            for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
                shared = sorted(set(parts[a]) & set(parts[b]))
                if shared:
                    raise ProtocolError(
                        f"fold {fold.name!r}: {len(shared)} utterance(s) in both {a} and {b}, e.g. {_examples(shared)}"
                    )
            for part, ids in parts.items():
                absent = sorted(set(ids) - known)
                if absent:
                    raise ProtocolError(
                        f"fold {fold.name!r}: {len(absent)} {part} utterance(s) are not in the table, "
                        f"e.g. {_examples(absent)}; "
                        "the plan was built on another version of the corpus or label scheme — rebuild it"
                    )
            if self.group_column is not None and fold.test_groups:
                held = set(fold.test_groups)
                for part in ("train", "validation"):
                    values = rows.loc[parts[part], self.group_column] if parts[part] else pd.Series([], dtype=object)
                    leaked = sorted(set(values.dropna()) & held)
                    if leaked:
                        raise ProtocolError(
                            f"fold {fold.name!r}: {self.group_column} {leaked} is held out for test "
                            f"but appears in {part}"
                        )
            if self.speaker_independent:
                test_speakers = set(rows.loc[fold.test, "speaker"])
                for part in ("train", "validation"):
                    shared = sorted(set(rows.loc[parts[part], "speaker"]) & test_speakers) if parts[part] else []
                    if shared:
                        raise ProtocolError(
                            f"fold {fold.name!r}: speaker(s) {_examples(shared)} appear in both {part} and test, "
                            "which a speaker-independent plan forbids"
                        )
        if self.protocol in _COVERING_PROTOCOLS:
            tested: dict[str, int] = {}
            for fold in self.folds:
                for utt in fold.test:
                    tested[utt] = tested.get(utt, 0) + 1
            twice = sorted(u for u, n in tested.items() if n > 1)
            if twice:
                raise ProtocolError(
                    f"{self.protocol} plan tests {len(twice)} utterance(s) in more than one fold, "
                    f"e.g. {_examples(twice)}"
                )
            never = sorted(known - set(tested))
            if never:
                raise ProtocolError(
                    f"{self.protocol} plan never tests {len(never)} utterance(s) of the table, "
                    f"e.g. {_examples(never)}; "
                    "the table has changed since the plan was built — rebuild it"
                )

    def format(self, table: pd.DataFrame) -> str:
        """A readable text table: per fold the held-out groups, utterance/speaker counts of each
        part and the per-label counts of the test part."""
        rows = table.set_index("utt_id", drop=False)
        present = set(rows.index)
        label_names = sorted({str(v) for v in table["label"].dropna()})
        shown = {k: v for k, v in self.params.items()}
        settings = ", ".join(f"{k}={_short(v)}" for k, v in shown.items())
        settings = f"{settings}, seed={self.seed}" if settings else f"seed={self.seed}"
        independence = "speaker-independent" if self.speaker_independent else "NOT speaker-independent"
        lines = [
            f"fold plan: {self.protocol} ({settings})",
            f"{len(self.folds)} fold(s), {independence}, "
            f"held out by {self.group_column or 'nothing (stratified by label)'}, "
            f"fingerprint {self.fingerprint()}",
        ]
        records = []
        missing_total = 0
        for fold in self.folds:
            record: dict[str, Any] = {
                "fold": fold.name,
                "test groups": _group_list(fold.test_groups),
                "validation groups": _group_list(fold.validation_groups),
            }
            for part, ids in (("train", fold.train), ("validation", fold.validation), ("test", fold.test)):
                kept = [i for i in ids if i in present]
                missing_total += len(ids) - len(kept)
                speakers = rows.loc[kept, "speaker"].nunique() if kept else 0
                record[f"{part} utt/spk"] = f"{len(kept)}/{speakers}"
            test_kept = [i for i in fold.test if i in present]
            counts = rows.loc[test_kept, "label"].value_counts() if test_kept else pd.Series(dtype=int)
            for label in label_names:
                record[f"test:{label}"] = int(counts.get(label, 0))
            records.append(record)
        lines.extend(_text_table(records))
        if self.confounding is not None:
            lines.append(confounding_sentence(self.confounding))
        for note in self.notes:
            lines.append(f"note: {note}")
        if missing_total:
            lines.append(
                f"warning: {missing_total} id(s) of the plan are not in this table (run FoldPlan.check for details)"
            )
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Protocols


def leave_one_session_out(
    table: pd.DataFrame,
    validation: str = "group",
    validation_fraction: float | None = None,
    seed: int = 0,
) -> FoldPlan:
    """One fold per session: test on the session, train on the others.

    ``validation="group"`` holds out the next session in sorted order (wrapping), so with IEMOCAP
    a fold trains on three sessions, validates on one and tests on one; ``"speaker"`` holds out
    one training speaker chosen by ``seed``; ``"random"`` a label-stratified share
    ``validation_fraction`` (default 0.1) of training utterances; ``"none"`` nothing.
    """
    _require_column(table, "session", "loso", "use protocol 'loso-speaker' (or 'official' when the corpus has a split)")
    return _leave_one_group_out(table, "loso", "session", validation, validation_fraction, seed)


def leave_one_speaker_out(
    table: pd.DataFrame,
    validation: str = "group",
    validation_fraction: float | None = None,
    seed: int = 0,
) -> FoldPlan:
    """One fold per speaker (EmoDB: 10 folds, SAVEE: 4): test on the speaker, train on the rest.

    ``validation`` as in :func:`leave_one_session_out`; ``"group"`` and ``"speaker"`` both hold
    out one more speaker (the next in sorted order, or one chosen by ``seed``).
    """
    return _leave_one_group_out(table, "loso-speaker", "speaker", validation, validation_fraction, seed)


def speaker_split(table: pd.DataFrame, ratios: Sequence[float] = (8, 1, 1), seed: int = 0) -> FoldPlan:
    """One fold whose train/validation/test speakers are a seeded shuffle cut by ``ratios``.

    The speakers are sorted, shuffled with ``seed`` and cut in the proportions ``ratios``
    (train, validation, test) by largest remainder, each non-zero share getting at least one
    speaker: 10 IEMOCAP actors at 8:1:1 give 8/1/1. A validation ratio of 0 means no validation.
    """
    ratios = _check_ratios(ratios)
    table = _sorted_table(table)
    speakers = _natural_sorted(table["speaker"].unique())
    needed = sum(1 for r in ratios if r > 0)
    if len(speakers) < needed:
        raise ProtocolError(
            f"speaker-split needs at least {needed} speakers for ratios {list(ratios)}, the table has {len(speakers)}; "
            "use protocol 'kfold' or 'official'"
        )
    rng = np.random.default_rng(seed)
    order = [speakers[i] for i in rng.permutation(len(speakers))]
    sizes = _allocate(len(order), ratios)
    train_spk = order[: sizes[0]]
    val_spk = order[sizes[0] : sizes[0] + sizes[1]]
    test_spk = order[sizes[0] + sizes[1] :]
    fold = Fold(
        name="speaker-split",
        train=_ids_of(table, "speaker", train_spk),
        validation=_ids_of(table, "speaker", val_spk),
        test=_ids_of(table, "speaker", test_spk),
        test_groups=_natural_sorted(test_spk),
        validation_groups=_natural_sorted(val_spk),
    )
    return FoldPlan(
        "speaker-split",
        {"ratios": [_plain_number(r) for r in ratios]},
        [fold],
        seed=seed,
        group_column="speaker",
        speaker_independent=True,
    )


def official_split(table: pd.DataFrame, validation: str = "dev", seed: int = 0) -> FoldPlan:
    """One fold from the table's ``split`` column: train, dev (validation) and test.

    ``validation="none"`` leaves the dev utterances out altogether. The official splits of
    conversational corpora (MELD) share speakers between parts, so the plan is marked as not
    speaker-independent when they do. ``seed`` is recorded only; the split has no randomness.
    """
    if validation not in ("dev", "none"):
        raise ProtocolError(f"protocol 'official' takes validation='dev' (default) or 'none', not {validation!r}")
    table = _sorted_table(table)
    split = table["split"]
    if split.isna().all():
        raise ProtocolError(
            "protocol 'official' needs the 'split' column, which is empty for this corpus; "
            "use 'loso', 'loso-speaker', 'speaker-split' or 'kfold'"
        )
    if split.isna().any():
        ids = sorted(table.loc[split.isna(), "utt_id"])
        raise ProtocolError(
            f"protocol 'official': {len(ids)} utterance(s) have no split, e.g. {_examples(ids)}; "
            "give every row train/dev/test or use another protocol"
        )
    stray = sorted(set(split) - {"train", "dev", "test"})
    if stray:
        raise ProtocolError(
            f"protocol 'official': split values {stray} are not train/dev/test; fix the reader or manifest"
        )
    parts = {name: sorted(table.loc[split == name, "utt_id"]) for name in ("train", "dev", "test")}
    for name in ("train", "test"):
        if not parts[name]:
            raise ProtocolError(f"protocol 'official': the {name!r} split is empty")
    fold = Fold(
        name="official",
        train=parts["train"],
        validation=parts["dev"] if validation == "dev" else [],
        test=parts["test"],
        test_groups=["test"],
        validation_groups=["dev"] if validation == "dev" and parts["dev"] else [],
    )
    notes = []
    test_speakers = set(table.loc[split == "test", "speaker"])
    shared = test_speakers & set(table.loc[split == "train", "speaker"])
    if shared:
        notes.append(
            f"{len(shared)} of {len(test_speakers)} test speakers also speak in train "
            "(the official split is not speaker-independent)"
        )
    if validation == "dev" and not parts["dev"]:
        notes.append("the corpus has no dev split: no validation part")
    return FoldPlan(
        "official",
        {"validation": validation},
        [fold],
        seed=seed,
        group_column="split",
        speaker_independent=not shared,
        notes=notes,
    )


def stratified_kfold(
    table: pd.DataFrame,
    k: int = 5,
    seed: int = 0,
    group: str | None = "speaker",
    validation: str = "group",
    validation_fraction: float | None = None,
) -> FoldPlan:
    """``k`` folds stratified by label (scikit-learn), each utterance tested once.

    With ``group="speaker"`` (default) the folds come from ``StratifiedGroupKFold`` so no speaker
    crosses folds; ``group=None`` uses plain ``StratifiedKFold`` (speakers are shared). With
    ``validation="group"`` fold *i* validates on the test part of fold *i+1* (wrapping) and trains
    on the remaining ``k-2`` folds; other ``validation`` values as in :func:`leave_one_session_out`.
    """
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    if isinstance(group, str) and group.lower() in ("none", "null", ""):
        group = None  # "--set group=none" on the command line
    if group not in ("speaker", "session", None):
        raise ProtocolError(f"kfold: group must be 'speaker', 'session' or None, not {group!r}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
        raise ProtocolError(f"kfold: k must be an integer of at least 2, not {k!r}")
    k = int(k)
    _check_validation(validation, validation_fraction, "kfold")
    if validation == "group" and k < 3:
        raise ProtocolError(
            "kfold with validation='group' needs k >= 3 (one fold to test, one to validate, the rest to train); "
            "raise k or use validation='speaker', 'random' or 'none'"
        )
    table = _sorted_table(table)
    _require_labels(table, "kfold (stratification)")
    if group is not None:
        _require_column(table, group, "kfold", "use group=None")
    labels = table["label"].to_numpy()
    ids = table["utt_id"].to_numpy()
    if group is not None:
        groups = table[group].to_numpy()
        n_groups = len(set(groups))
        if n_groups < k:
            raise ProtocolError(
                f"kfold with group={group!r} needs at least k={k} {group}s, "
                f"the table has {n_groups}; lower k or use group=None"
            )
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        splits = splitter.split(ids, labels, groups)
    else:
        if len(ids) < k:
            raise ProtocolError(f"kfold needs at least k={k} utterances, the table has {len(ids)}")
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        splits = splitter.split(ids, labels)
    try:
        test_parts = [sorted(ids[test_index]) for _, test_index in splits]
    except ValueError as exc:
        raise ProtocolError(f"kfold cannot stratify this table into {k} folds ({exc}); lower k") from exc
    empty = [i + 1 for i, part in enumerate(test_parts) if not part]
    if empty:
        raise ProtocolError(f"kfold produced empty fold(s) {empty}; lower k")
    group_of = dict(zip(table["utt_id"], table[group])) if group is not None else {}
    folds = []
    for index, test in enumerate(test_parts):
        held = set(test)
        validation_ids: list[str] = []
        validation_groups: list[str] = []
        if validation == "group":
            validation_ids = test_parts[(index + 1) % k]
            if group is not None:
                validation_groups = _natural_sorted({group_of[u] for u in validation_ids})
        held |= set(validation_ids)
        rest = sorted(u for u in ids if u not in held)
        sub = table[table["utt_id"].isin(rest)]
        if validation in ("speaker", "random"):
            validation_ids, validation_groups = _take_validation(
                sub, validation, validation_fraction, seed, index, f"fold{index + 1}"
            )
            rest = sorted(set(rest) - set(validation_ids))
        folds.append(
            Fold(
                name=f"fold{index + 1}",
                train=rest,
                validation=sorted(validation_ids),
                test=test,
                test_groups=_natural_sorted({group_of[u] for u in test}) if group is not None else [],
                validation_groups=validation_groups,
            )
        )
    params: dict[str, Any] = {"k": k, "group": group, "validation": validation}
    if validation == "random":
        params["validation_fraction"] = _fraction(validation_fraction)
    independent = group == "speaker" or (group is not None and _speakers_within_groups(table, group))
    plan = FoldPlan("kfold", params, folds, seed=seed, group_column=group, speaker_independent=independent)
    if not independent:
        plan.notes.append("folds are not grouped by speaker: the same speakers appear in train and test")
    return plan


PROTOCOLS: dict[str, Callable[..., FoldPlan]] = {
    "loso": leave_one_session_out,
    "loso-speaker": leave_one_speaker_out,
    "speaker-split": speaker_split,
    "official": official_split,
    "kfold": stratified_kfold,
}


def list_protocols() -> dict[str, str]:
    """Protocol names with the first line of their function's docstring."""
    return {name: (fn.__doc__ or "").strip().splitlines()[0] for name, fn in PROTOCOLS.items()}


def make_fold_plan(table: pd.DataFrame, protocol: str, **params: Any) -> FoldPlan:
    """Build the named protocol's fold plan on ``table``.

    ``params`` are the protocol function's keyword arguments (e.g. ``validation="speaker"``,
    ``seed=1``, ``k=10``); an unknown name or parameter raises :class:`ProtocolError` listing
    what is accepted. The plan is checked against the table before it is returned.
    """
    if protocol not in PROTOCOLS:
        raise ProtocolError(f"unknown protocol {protocol!r}; available: {', '.join(PROTOCOLS)}")
    function = PROTOCOLS[protocol]
    accepted = [name for name in inspect.signature(function).parameters if name != "table"]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ProtocolError(f"protocol {protocol!r} does not take parameter(s) {unknown}; it accepts {accepted}")
    if "seed" in params:
        seed = params["seed"]
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ProtocolError(f"seed must be an integer, not {seed!r}")
        params["seed"] = int(seed)
    if len(table) == 0:
        raise ProtocolError("the utterance table is empty: nothing to split (check the reader and label scheme)")
    plan = function(table, **params)
    plan.check(table)
    plan.confounding = plan_confounding(plan, table)
    return plan


# --------------------------------------------------------------------------------------------
# Speaker–label confounding

#: Speakers with fewer labelled utterances than this are left out of the measures (a speaker
#: with one utterance is trivially "one label" and would inflate them).
CONFOUNDING_MIN_UTTERANCES = 5
#: A speaker is dominated when at least this share of its utterances carry one label.
DOMINANT_LABEL_SHARE = 0.8
#: The training part is confounded when the bias-corrected Cramér's V between speaker and label
#: reaches this value, or when this share of its speakers are dominated by one label.
CONFOUNDING_V_THRESHOLD = 0.5
CONFOUNDING_SHARE_THRESHOLD = 0.5


def speaker_label_confounding(table: pd.DataFrame, min_utterances: int = CONFOUNDING_MIN_UTTERANCES) -> dict[str, Any]:
    """How much the speaker tells about the label in ``table`` (its labelled rows).

    Per-speaker z-scoring removes each speaker's mean; when speakers and labels are confounded
    (most of a speaker's utterances carry one emotion) that mean *is* the label, and the
    normalisation erases it. Returned: ``cramers_v`` (bias-corrected, Bergsma 2013; 0 = independent,
    1 = the speaker fixes the label), ``nmi`` (mutual information over the label entropy: the
    share of the label's uncertainty the speaker removes), ``dominated`` / ``speakers`` (speakers
    with ≥ :data:`DOMINANT_LABEL_SHARE` of their utterances in one label, of those counted),
    ``utterances`` counted, and ``high`` (either threshold reached). Speakers with fewer than
    ``min_utterances`` labelled utterances are left out.
    """
    rows = table[table["label"].notna() & table["speaker"].notna()] if "speaker" in table.columns else table.iloc[0:0]
    counts = rows.groupby("speaker").size() if len(rows) else pd.Series(dtype=int)
    kept = rows[rows["speaker"].isin(counts[counts >= min_utterances].index)]
    result: dict[str, Any] = {
        "speakers": 0,
        "dominated": 0,
        "dominated_share": 0.0,
        "cramers_v": 0.0,
        "nmi": 0.0,
        "utterances": int(len(kept)),
        "high": False,
    }
    if kept.empty:
        return result
    contingency = pd.crosstab(kept["speaker"].astype(str), kept["label"].astype(str)).to_numpy(dtype=np.float64)
    n = contingency.sum()
    r, k = contingency.shape
    shares = contingency.max(axis=1) / contingency.sum(axis=1)
    dominated = int((shares >= DOMINANT_LABEL_SHARE).sum())
    result.update(speakers=int(r), dominated=dominated, dominated_share=round(dominated / r, 4))
    if r > 1 and k > 1:
        expected = contingency.sum(axis=1, keepdims=True) * contingency.sum(axis=0, keepdims=True) / n
        chi2 = float(((contingency - expected) ** 2 / expected).sum())
        phi2 = max(0.0, chi2 / n - (k - 1) * (r - 1) / (n - 1))
        r_c, k_c = r - (r - 1) ** 2 / (n - 1), k - (k - 1) ** 2 / (n - 1)
        denominator = min(k_c - 1, r_c - 1)
        result["cramers_v"] = round(math.sqrt(phi2 / denominator), 4) if denominator > 0 else 0.0
        joint = contingency / n
        ps, pl = joint.sum(axis=1, keepdims=True), joint.sum(axis=0, keepdims=True)
        nonzero = joint > 0
        mutual = float((joint[nonzero] * np.log(joint[nonzero] / (ps @ pl)[nonzero])).sum())
        entropy = float(-(pl[pl > 0] * np.log(pl[pl > 0])).sum())
        result["nmi"] = round(max(0.0, mutual / entropy), 4) if entropy > 0 else 0.0  # no -0.0 from rounding
    result["high"] = bool(
        result["cramers_v"] >= CONFOUNDING_V_THRESHOLD or result["dominated_share"] >= CONFOUNDING_SHARE_THRESHOLD
    )
    return result


def plan_confounding(plan: FoldPlan, table: pd.DataFrame) -> dict[str, Any]:
    """Speaker–label confounding of each fold's training part (:func:`speaker_label_confounding`)
    and the worst fold's figures; ``high`` when any fold's training part is confounded."""
    rows = table.set_index("utt_id", drop=False)
    folds = {}
    for fold in plan.folds:
        ids = [u for u in fold.train if u in rows.index]
        folds[fold.name] = speaker_label_confounding(rows.loc[ids].reset_index(drop=True))
    worst = {key: max((f[key] for f in folds.values()), default=0) for key in ("cramers_v", "nmi", "dominated_share")}
    return {
        "measured_on": "training part of each fold",
        "thresholds": {
            "cramers_v": CONFOUNDING_V_THRESHOLD,
            "dominated_share": CONFOUNDING_SHARE_THRESHOLD,
            "dominant_label_share": DOMINANT_LABEL_SHARE,
            "min_utterances": CONFOUNDING_MIN_UTTERANCES,
        },
        "max": worst,
        "high": any(f["high"] for f in folds.values()),
        "folds": folds,
    }


def confounding_sentence(confounding: dict[str, Any]) -> str:
    """One line for the plan printout and the report."""
    worst = confounding.get("max") or {}
    level = "HIGH" if confounding.get("high") else "low"
    line = (
        f"speaker–label confounding ({confounding.get('measured_on', 'training parts')}, worst fold): "
        f"Cramér's V {worst.get('cramers_v', 0):.2f}, NMI {worst.get('nmi', 0):.2f}, "
        f"{100 * float(worst.get('dominated_share', 0)):.0f} % of speakers with ≥ "
        f"{100 * DOMINANT_LABEL_SHARE:.0f} % one label — {level}"
    )
    if confounding.get("high"):
        line += " (per-speaker normalisation would erase the label; speaker_statistics 'auto' falls back to global)"
    return line


# --------------------------------------------------------------------------------------------
# Shared machinery


def _leave_one_group_out(
    table: pd.DataFrame,
    protocol: str,
    column: str,
    validation: str,
    validation_fraction: float | None,
    seed: int,
) -> FoldPlan:
    _check_validation(validation, validation_fraction, protocol)
    table = _sorted_table(table)
    groups = _natural_sorted(table[column].unique())
    needed = 3 if validation == "group" else 2
    if len(groups) < needed:
        why = (
            " (one to test, one to validate, one to train)" if validation == "group" else " (one to test, one to train)"
        )
        hint = (
            "use validation='speaker', 'random' or 'none'"
            if validation == "group" and len(groups) == 2
            else "use protocol 'speaker-split', 'kfold' or 'official'"
        )
        raise ProtocolError(
            f"{protocol} needs at least {needed} {column}s{why}, the table has {len(groups)} "
            f"({_examples(groups)}); {hint}"
        )
    folds = []
    for index, held in enumerate(groups):
        test = _ids_of(table, column, [held])
        training = table[table[column] != held]
        validation_ids: list[str] = []
        validation_groups: list[str] = []
        if validation == "group":
            # the next group in sorted order: deterministic, and every group validates exactly once
            next_group = groups[(index + 1) % len(groups)]
            validation_ids = _ids_of(table, column, [next_group])
            validation_groups = [next_group]
        elif validation in ("speaker", "random"):
            validation_ids, validation_groups = _take_validation(
                training, validation, validation_fraction, seed, index, held
            )
        taken = set(validation_ids)
        train = sorted(u for u in training["utt_id"] if u not in taken)
        folds.append(
            Fold(
                name=held,
                train=train,
                validation=sorted(validation_ids),
                test=test,
                test_groups=[held],
                validation_groups=validation_groups,
            )
        )
    params: dict[str, Any] = {"validation": validation}
    if validation == "random":
        params["validation_fraction"] = _fraction(validation_fraction)
    independent = column == "speaker" or _speakers_within_groups(table, column)
    plan = FoldPlan(protocol, params, folds, seed=seed, group_column=column, speaker_independent=independent)
    if not independent:
        crossing = _speakers_across_groups(table, column)
        plan.notes.append(
            f"speaker(s) {_examples(crossing)} appear in more than one {column}: "
            f"leaving a {column} out does not keep speakers out of training"
        )
    return plan


def _take_validation(
    training: pd.DataFrame,
    mode: str,
    fraction: float | None,
    seed: int,
    fold_index: int,
    fold_name: str,
) -> tuple[list[str], list[str]]:
    """Validation ids (and held-out speakers) taken from a fold's training rows."""
    # one generator per fold, derived from the run seed, so folds do not depend on each other's draws
    rng = np.random.default_rng([int(seed), int(fold_index)])
    if mode == "speaker":
        speakers = _natural_sorted(training["speaker"].unique())
        if len(speakers) < 2:
            raise ProtocolError(
                f"fold {fold_name!r}: validation='speaker' needs at least 2 training speakers, there are "
                f"{len(speakers)}; use validation='random' or 'none'"
            )
        chosen = speakers[int(rng.integers(len(speakers)))]
        return sorted(training.loc[training["speaker"] == chosen, "utt_id"]), [chosen]
    _require_labels(training, "validation='random' (stratification)")
    chosen_ids = _stratified_sample(list(training["utt_id"]), list(training["label"]), _fraction(fraction), rng)
    if not chosen_ids:
        raise ProtocolError(
            f"fold {fold_name!r}: validation_fraction={_fraction(fraction)} of {len(training)} training "
            "utterances selects none; raise the fraction or use validation='none'"
        )
    if len(chosen_ids) == len(training):
        raise ProtocolError(
            f"fold {fold_name!r}: validation_fraction={_fraction(fraction)} leaves no training utterances"
        )
    return sorted(chosen_ids), []


def _check_validation(validation: str, fraction: float | None, protocol: str) -> None:
    if validation not in VALIDATION_MODES:
        raise ProtocolError(f"{protocol}: unknown validation {validation!r}; choose one of {list(VALIDATION_MODES)}")
    if fraction is not None and validation != "random":
        raise ProtocolError(
            f"{protocol}: validation_fraction applies only to validation='random' (got validation={validation!r})"
        )
    if validation == "random":
        _fraction(fraction)


def _fraction(value: float | None) -> float:
    if value is None:
        return DEFAULT_VALIDATION_FRACTION
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float, np.floating, np.integer))
        or not 0 < float(value) < 1
    ):
        raise ProtocolError(f"validation_fraction must be a number between 0 and 1 (exclusive), not {value!r}")
    return float(value)


def _check_ratios(ratios: Any) -> tuple[float, float, float]:
    if isinstance(ratios, str) or not isinstance(ratios, Iterable):
        raise ProtocolError(f"speaker-split: ratios must be three numbers (train, validation, test), not {ratios!r}")
    values = list(ratios)
    if len(values) != 3 or not all(
        isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in values
    ):
        raise ProtocolError(f"speaker-split: ratios must be three numbers (train, validation, test), not {values!r}")
    if any(v < 0 or math.isnan(v) for v in values) or values[0] <= 0 or values[2] <= 0:
        raise ProtocolError(
            f"speaker-split: ratios {values} need positive train and test shares and a non-negative validation share"
        )
    return float(values[0]), float(values[1]), float(values[2])


def _require_column(table: pd.DataFrame, column: str, protocol: str, hint: str) -> None:
    empty = table[column].isna()
    if empty.all():
        raise ProtocolError(f"{protocol} needs the {column!r} column, which is empty for this corpus; {hint}")
    if empty.any():
        ids = sorted(table.loc[empty, "utt_id"])
        raise ProtocolError(
            f"{protocol}: {len(ids)} utterance(s) have no {column}, e.g. {_examples(ids)}; "
            f"fill the column or drop those rows"
        )


def _require_labels(table: pd.DataFrame, purpose: str) -> None:
    empty = table["label"].isna()
    if empty.any():
        ids = sorted(table.loc[empty, "utt_id"])
        raise ProtocolError(
            f"{purpose} needs a label on every utterance; {len(ids)} have none, e.g. {_examples(ids)}; "
            "apply a label scheme that drops them (read_corpus(..., scheme=...)) or remove them"
        )


def _speakers_within_groups(table: pd.DataFrame, column: str) -> bool:
    return not _speakers_across_groups(table, column)


def _speakers_across_groups(table: pd.DataFrame, column: str) -> list[str]:
    counts = table.groupby("speaker")[column].nunique()
    return _natural_sorted(counts[counts > 1].index)


# --------------------------------------------------------------------------------------------
# Plain functions


def _sorted_table(table: pd.DataFrame) -> pd.DataFrame:
    """The table ordered by utt_id, so a plan never depends on the reader's row order."""
    missing = [c for c in ("utt_id", "speaker", "label", "session", "split") if c not in table.columns]
    if missing:
        raise ProtocolError(f"the table lacks column(s) {missing}; build it with emomix.data.schema.make_table")
    return table.sort_values("utt_id", kind="stable").reset_index(drop=True)


def _ids_of(table: pd.DataFrame, column: str, values: Iterable[str]) -> list[str]:
    return sorted(table.loc[table[column].isin(list(values)), "utt_id"])


def _natural_key(value: Any) -> tuple:
    # "Session2" before "Session10"; the split always alternates text, number, text, ...
    parts = re.split(r"(\d+)", str(value))
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts))


def _natural_sorted(values: Iterable[Any]) -> list[str]:
    return sorted((str(v) for v in values), key=_natural_key)


def _allocate(n: int, ratios: Sequence[float]) -> list[int]:
    """Split ``n`` items by ``ratios`` (largest remainder), at least one per non-zero ratio."""
    total = float(sum(ratios))
    exact = [n * r / total for r in ratios]
    sizes = [int(math.floor(x)) for x in exact]
    for i, r in enumerate(ratios):
        if r > 0 and sizes[i] == 0:
            sizes[i] = 1
    while sum(sizes) > n:
        # take back from the share that most exceeds its exact size, never below one
        candidates = [i for i in range(len(sizes)) if sizes[i] > 1]
        i = max(candidates, key=lambda j: sizes[j] - exact[j])
        sizes[i] -= 1
    while sum(sizes) < n:
        i = max(range(len(sizes)), key=lambda j: (exact[j] - sizes[j], ratios[j]))
        sizes[i] += 1
    return sizes


def _stratified_sample(ids: list[str], labels: list[str], fraction: float, rng: np.random.Generator) -> list[str]:
    """About ``fraction`` of the ids of every label (rounded half up), drawn without replacement."""
    chosen: list[str] = []
    by_label: dict[str, list[str]] = {}
    for utt, label in zip(ids, labels):
        by_label.setdefault(str(label), []).append(utt)
    for label in sorted(by_label):
        members = sorted(by_label[label])
        count = int(math.floor(fraction * len(members) + 0.5))
        if count:
            picked = rng.choice(len(members), size=count, replace=False)
            chosen.extend(members[i] for i in sorted(picked))
    return chosen


def _first_duplicate(values: Sequence[str]) -> str:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            return value
        seen.add(value)
    return ""


def _examples(values: Sequence[Any], limit: int = 3) -> str:
    values = list(values)
    shown = ", ".join(repr(v) for v in values[:limit])
    return shown + (f" (+{len(values) - limit} more)" if len(values) > limit else "")


def _text_table(records: list[dict[str, Any]]) -> list[str]:
    """Rows of dicts as aligned text lines: text left-aligned, numbers right-aligned."""
    columns = list(records[0])
    cells = [[str(r[c]) for c in columns] for r in records]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    numeric = [
        all(isinstance(r[c], (int, np.integer)) or re.fullmatch(r"\d+/\d+", str(r[c])) for r in records)
        for c in columns
    ]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if n else v.ljust(w) for v, w, n in zip(values, widths, numeric)).rstrip()

    return [line(columns)] + [line(row) for row in cells]


def _group_list(groups: Sequence[str], limit: int = 3) -> str:
    if not groups:
        return "-"
    shown = ",".join(groups[:limit])
    return shown + (f" +{len(groups) - limit}" if len(groups) > limit else "")


def _short(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)


def _plain_number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else float(value)
