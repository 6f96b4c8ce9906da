"""TrialConfig: the one serialisable description of a trial, and its key.

Every task, the in-process `dpl trial` command and the Ray Tune driver exchange exactly this object, so
that the same settings always hash to the same trial key, whichever way a trial was launched. The key is
what the study uses to find a trial's MLflow run again after a crash or a relaunch (Ray's trial ids
change on restore and cannot serve).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainables.errors import UserError

#: Bumped when the meaning of a setting changes, so that old runs are not mistaken for new ones.
KEY_VERSION = 1

BUDGETS = ("smoke", "quick", "paper")
WEIGHT_KINDS = ("imagenet", "random")  # or an enum member name (IMAGENET1K_V2) or a path to a state dict
NORMALISATIONS = ("imagenet", "none")
MODES = ("eval", "train")
TRANSFORM_INPUT = ("auto", "on", "off")
#: `resize`: the input as given (`off`), a fixed-size network's own side (`auto`), or a side in pixels.
RESIZE_WORDS = ("off", "auto")
#: Settings added after studies were run, with the value that means "as before": a config holding that
#: value leaves the setting out of its identity, so every key planned before it existed stays the same.
KEY_NEUTRAL = {"resize": "off"}
#: Written by every dataset's `synthesize()` at the dataset root.
SYNTHETIC_MARKER = "DPL_SYNTHETIC.json"
#: The pixel-loss baseline of the training tasks: no loss network at all (super-resolution and the
#: autoencoder train with pixel MSE, delineation with BCE only). A task takes it when its module lists it
#: in `NETWORKLESS_OK`. Only this exact spelling: "None" or "NONE" are refused, never guessed.
NO_NETWORK = "none"


def is_synthetic(data_root: str) -> bool:
    """Data made by `dpl data synth` carries a marker file at its root (so keys and reports can tell)."""
    return bool(data_root) and (Path(data_root) / SYNTHETIC_MARKER).is_file()


class ConfigError(UserError, ValueError):
    """A setting is invalid; the message says which one and what is allowed."""


def resize_setting(value: Any) -> str:
    """A `resize` value as the string that is recorded and hashed: `off`, `auto` or a side (`224`, from 224).
    YAML 1.1 reads an unquoted `off` as False (the README's `resize: off`), so False is `off` too."""
    text = "off" if value is False else str(value)
    if text in RESIZE_WORDS or (text.isdigit() and int(text) > 0 and not isinstance(value, bool)):
        return text
    raise ConfigError(f"resize: {value!r} is not one of {' | '.join(RESIZE_WORDS)} or a positive side in pixels (e.g. 224)")


@dataclass(frozen=True)
class TrialConfig:
    """What one trial does. Everything that changes a result is in here (and so in the key).

    `data_root` and `device` say *where* the trial runs, not *what* it computes, so they are left out of
    the key (a study moved to another machine or cluster keeps its keys); whether the data is synthetic
    is kept, so switching a study from synthetic to real data never reuses a synthetic result.
    """

    task: str
    network: str
    points: tuple[str, ...]
    dataset: str = ""
    variant: str = ""  # "" = the task's first (default) variant
    seed: int = 0
    weights: str = "imagenet"
    normalisation: str = "imagenet"
    mode: str = "eval"
    transform_input: str = "auto"
    resize: str = "off"
    budget: str = "smoke"
    params: dict[str, Any] = field(default_factory=dict)
    data_root: str = ""
    device: str = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "points", tuple(self.points))
        if self.budget not in BUDGETS:
            raise ConfigError(f"budget: {self.budget!r} is not one of {', '.join(BUDGETS)}")
        if self.normalisation not in NORMALISATIONS:
            raise ConfigError(f"normalisation: {self.normalisation!r} is not one of {', '.join(NORMALISATIONS)}")
        if self.mode not in MODES:
            raise ConfigError(f"mode: {self.mode!r} is not one of {', '.join(MODES)}")
        if self.transform_input not in TRANSFORM_INPUT:
            raise ConfigError(f"transform_input: {self.transform_input!r} is not one of {', '.join(TRANSFORM_INPUT)}")
        object.__setattr__(self, "resize", resize_setting(self.resize))
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ConfigError(f"seed: {self.seed!r} must be an integer")

    @property
    def point(self) -> str:
        """The extraction point, joined with '+' when a trial fuses several."""
        return "+".join(self.points)

    def identity(self, synthetic: bool | None = None) -> dict[str, Any]:
        """The settings that define the result (everything but location).

        `synthetic` says whether the data is synthetic when the data root does not exist yet (a study's
        `data: synthetic` is generated at launch, after `dpl plan` showed the keys); None = look on disk.
        """
        d = dataclasses.asdict(self)
        root = d.pop("data_root")
        d["data"] = "synthetic" if (is_synthetic(root) if synthetic is None else synthetic) else "real"
        d.pop("device")
        for key, neutral in KEY_NEUTRAL.items():
            if d[key] == neutral:
                d.pop(key)
        d["points"] = list(self.points)
        d["key_version"] = KEY_VERSION
        return d

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["points"] = list(self.points)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrialConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown trial setting(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}")
        return cls(**d)

    def replace(self, **changes: Any) -> "TrialConfig":
        return dataclasses.replace(self, **changes)


def trial_key(config: TrialConfig, synthetic: bool | None = None) -> str:
    """Stable 16-hex-digit hash of the resolved settings (sorted-key JSON, so dict order never matters)."""
    blob = json.dumps(config.identity(synthetic), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def parse_value(text: str) -> Any:
    """`--set key=value` values: JSON when it parses (numbers, lists, booleans), else the plain string.

    A bracketed list of bare words (`mode=[eval,train]`, what a shell user types) is a list of such values,
    so `--set` can give a condition list without JSON quoting.
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    if text.startswith("[") and text.endswith("]"):
        inner = text[1:-1].strip()
        return [parse_value(item.strip()) for item in inner.split(",")] if inner else []
    return text


def parse_assignments(items: list[str] | None) -> dict[str, Any]:
    """['lr=1e-3', 'epochs=2'] -> {'lr': 0.001, 'epochs': 2}; dotted keys stay dotted for the caller."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set epochs=2")
        out[key.strip()] = parse_value(value.strip())
    return out


def resolve_params(defaults: dict[str, dict[str, Any]], budget: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """A task's hyper-parameters: its budget preset, then the user's overrides, refusing unknown names.

    Unknown names are refused rather than ignored, since a typo (`--set epoch=3`) would otherwise run a
    whole trial with the wrong budget without anyone noticing.
    """
    base = dict(defaults[budget])
    unknown = sorted(set(overrides) - set(base))
    if unknown:
        raise ConfigError(
            f"unknown task setting(s) {', '.join(unknown)}; this task takes: {', '.join(sorted(base))}"
        )
    for k, v in overrides.items():
        expected = type(base[k])
        if base[k] is not None and not isinstance(v, expected) and not (expected is float and isinstance(v, int)):
            raise ConfigError(f"{k}: {v!r} should be of type {expected.__name__} (default {base[k]!r})")
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v < 0 <= base[k]:
            raise ConfigError(f"{k}: {v} must not be negative (default {base[k]!r})")
        base[k] = float(v) if expected is float and isinstance(v, int) and not isinstance(v, bool) else v
    return base
