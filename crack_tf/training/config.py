"""The trainer's typed configuration, built from its flag table (one source of truth).

``TrainConfig`` holds every flag as a typed field (so ``vars(cfg)`` is the flat record written
to run.json and compared on resume) and groups them into frozen, typed sub-configurations that
the stages receive: ``cfg.model_options`` (the model builder), ``cfg.data`` (the input),
``cfg.optim`` (optimizer, schedule, loss, operating point) and ``cfg.run`` (devices, precision,
checkpoints, logging). The groups, names, types, defaults and help texts are the rows of
``crack_tf.training.flags``; nothing here repeats them. :func:`from_flags` / :func:`parse_args`
build a TrainConfig from parsed / given command-line flags (this module imports the flag table,
never the other way round).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

from absl import flags

from crack_tf.training.flags import _GROUPS, FLAG_NAMES, define_flags, validate

INT_LISTS = ("rates", "crop_side")  # list flags whose items are integers
_TYPES = {"enum": str, "string": str, "integer": int, "float": float, "bool": bool, "list": list}


def _field_type(kind: str, name: str):
    return list[int] if name in INT_LISTS else _TYPES[kind]


def _group_class(group: str):
    fields = [(row[1], _field_type(row[0], row[1])) for row in _GROUPS[group]]
    return dataclasses.make_dataclass(f"{group.capitalize()}Options", fields, frozen=True,
                                      namespace={"__doc__": f"The {group} flags of the trainer (typed, frozen)."})


ModelOptions = _group_class("model")
DataOptions = _group_class("data")
OptimOptions = _group_class("optim")
RunOptions = _group_class("run")
_GROUP_CLASSES = {"model": ModelOptions, "data": DataOptions, "optim": OptimOptions, "run": RunOptions}


class _Groups:
    """The typed views of a TrainConfig (built on access from its flat fields)."""

    def _group(self, name: str):
        cls = _GROUP_CLASSES[name]
        return cls(**{f.name: getattr(self, f.name) for f in dataclasses.fields(cls)})

    @property
    def model_options(self) -> Any:
        return self._group("model")

    @property
    def data(self) -> Any:
        return self._group("data")

    @property
    def optim(self) -> Any:
        return self._group("optim")

    @property
    def run(self) -> Any:
        return self._group("run")

    def flat(self) -> dict:
        """Every flag by name (what run.json records)."""
        return {name: getattr(self, name) for name in FLAG_NAMES}

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


def _defaults() -> dict:
    out = {}
    for rows in _GROUPS.values():
        for _kind, name, default, _, _ in rows:
            out[name] = [int(v) for v in default] if name in INT_LISTS else default
    return out


TrainConfig = dataclasses.make_dataclass(
    "TrainConfig", [(row[1], _field_type(row[0], row[1])) for rows in _GROUPS.values() for row in rows],
    bases=(_Groups,), namespace={"__doc__": "Every trainer flag, typed; ``model_options`` / ``data`` / "
                                            "``optim`` / ``run`` are the typed groups."})


def from_values(values: dict) -> Any:
    """A TrainConfig from flag values (missing ones take their defaults; integer lists converted
    where they parse, else kept for ``validate`` to name)."""
    merged = {**_defaults(), **{k: v for k, v in values.items() if k in FLAG_NAMES}}
    for name in INT_LISTS:
        try:
            merged[name] = [int(v) for v in merged[name]]
        except (TypeError, ValueError):
            pass
    return TrainConfig(**merged)


def from_flags(flag_values: flags.FlagValues = flags.FLAGS) -> Any:
    """The parsed flags (absl's global FLAGS by default) as a typed TrainConfig."""
    return from_values({name: flag_values[name].value for name in FLAG_NAMES})


def parse_args(argv: Sequence[str]) -> Any:
    """Parses and validates ``argv`` (without the program name) into a TrainConfig, on a private
    set of flags: absl's global FLAGS (and the flags of a calling tool) are left alone."""
    flag_values = define_flags(flags.FlagValues())
    flag_values(["crack_tf.train", *argv])
    cfg = from_flags(flag_values)
    validate(cfg)
    return cfg


@functools.lru_cache(maxsize=1)
def _private_flags() -> flags.FlagValues:
    return define_flags(flags.FlagValues())


def parse_value(name: str, text: str) -> Any:
    """The typed value of ``--name=text`` as the trainer would read it (tools compare configs)."""
    value = _private_flags()[name].parser.parse(text)
    return [int(v) for v in value] if name in INT_LISTS else value
