"""Merge files: a merge or a weave described in YAML, for ``weaving run FILE`` and ``--save-config``.

Every key is one command-line option (same name, ``_`` for ``-``), ``hparams`` holds the
``--set`` values, and unknown keys are errors at any level, each message naming the file and
the key (as ``params.yaml`` is validated). Paths are relative to the merge file's folder; a
path that does not exist there and reads ``org/name`` is a Hugging Face hub id. Example::

    command: weave              # or merge (the default)
    pretrained: base/
    finetuned: [math/, code/, chat-adapter/]
    method: ties
    hparams: {density: 0.2}
    lambdas: "0.1:1.5:0.1"      # weave; a merge takes lam instead
    space: {density: "0.1,0.2"} # weave: hyper-parameter axes (--space KEY=SPEC), optional
    pooling: avg                # or a merge method, e.g. ties, with
    pooling_params: {}          # its hyper-parameters (--pooling-set), e.g. {density: 0.3}
    out: woven/
"""

from __future__ import annotations

import argparse
import hashlib
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from weaving.errors import InputError, ParamError
from weaving.hf import looks_like_hub_id

DTYPES = ("float32", "float16", "bfloat16", "float64")
WEAVE_ONLY = ("lambdas", "space", "pooling", "pooling_params", "pool_over", "materialize")


class MergeFile(BaseModel):
    """The schema of a merge file (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    command: Literal["merge", "weave"] = "merge"
    pretrained: str
    finetuned: list[str] = Field(min_length=1)
    method: str
    hparams: dict[str, bool | int | float | str] = Field(default_factory=dict)
    seed: int = 0
    lam: float | None = None
    lambdas: str | list[float] | None = None
    space: dict[str, str | list[bool | int | float]] | None = None
    pooling: str = "avg"
    pooling_params: dict[str, bool | int | float | str] = Field(default_factory=dict)
    pool_over: Literal["all", "augmented"] = "all"
    materialize: bool = False
    weights: list[float] | None = None
    dtype: Literal["float32", "float16", "bfloat16", "float64"] | None = None
    device: Literal["cpu", "cuda"] = "cpu"
    vocab: Literal["refuse", "base", "union"] = "refuse"
    vocab_keys: list[str] = Field(default_factory=list)
    hash: Literal["sha256", "none"] = "sha256"
    max_shard_size: str = "5GB"
    allow_download: bool = False
    out: str

    @model_validator(mode="after")
    def _command_fields(self) -> MergeFile:
        if self.command == "merge":
            given = sorted(name for name in WEAVE_ONLY if name in self.model_fields_set)
            if given:
                raise ValueError(f"{', '.join(given)}: only for command: weave (this file's command is merge)")
        else:
            if "lam" in self.model_fields_set:
                raise ValueError("lam: only for command: merge; a weave takes lambdas")
            if self.lambdas is None and "lam" not in (self.space or {}):
                raise ValueError("lambdas: required for command: weave")
        return self


def _format(error: ValidationError, source: str) -> str:
    problems = []
    for problem in error.errors():
        where = ".".join(str(p) for p in problem["loc"]) or "<top level>"
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            allowed = sorted(MergeFile.model_fields) if len(problem["loc"]) == 1 else []
            message = "unknown key" + (f"; valid keys: {', '.join(allowed)}" if allowed else "")
        elif problem["type"] == "missing":
            message = "required key is missing"
        problems.append(f"{where}: {message}" if where != "<top level>" else message)
    return f"{source}: " + "; ".join(problems)


def load_merge_file(path: str | os.PathLike[str]) -> tuple[MergeFile, str]:
    """The validated merge file and the sha256 of its bytes."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise InputError(f"{path}: cannot read: {error.strerror or error}") from error
    try:
        raw = yaml.safe_load(data.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as error:
        raise ParamError(f"{path}: not valid YAML: {str(error).splitlines()[0]}") from error
    if not isinstance(raw, dict):
        raise ParamError(f"{path}: expected a mapping of keys at the top level (see 'weaving run --help')")
    try:
        merge_file = MergeFile.model_validate(raw)
    except ValidationError as error:
        raise ParamError(_format(error, str(path))) from None
    return merge_file, hashlib.sha256(data).hexdigest()


def _input_path(text: str, folder: Path) -> str:
    if os.path.isabs(text):
        return text
    candidate = folder / text
    if not candidate.exists() and looks_like_hub_id(text):
        return text
    return str(candidate) + ("/" if text.endswith("/") else "")


def _output_path(text: str, folder: Path) -> str:
    if os.path.isabs(text):
        return text
    return str(folder / text) + ("/" if text.endswith("/") else "")


def to_arguments(merge_file: MergeFile, folder: Path) -> argparse.Namespace:
    """The ``argparse.Namespace`` the command line would build for the same request."""
    values: dict[str, Any] = merge_file.model_dump()
    assignments = [f"{key}={value}" for key, value in merge_file.hparams.items()]
    namespace = argparse.Namespace(
        command=values["command"],
        pretrained=_input_path(values["pretrained"], folder),
        finetuned=[_input_path(p, folder) for p in values["finetuned"]],
        method=values["method"],
        assignments=assignments,
        seed=values["seed"],
        out=_output_path(values["out"], folder),
        quiet=False,
        weights=values["weights"],
        dtype=values["dtype"],
        device=values["device"],
        vocab=values["vocab"],
        vocab_keys=",".join(values["vocab_keys"]) or None,
        hash=values["hash"],
        max_shard_size=values["max_shard_size"],
        allow_download=values["allow_download"],
        save_config=None,
    )
    if values["command"] == "merge":
        namespace.lam = 1.0 if values["lam"] is None else values["lam"]
    else:
        lambdas = values["lambdas"]
        namespace.lambdas = (lambdas if lambdas is None or isinstance(lambdas, str)
                             else ",".join(repr(float(v)) for v in lambdas))
        space = values["space"]
        namespace.space = None if space is None else [f"{key}={_axis_text(spec)}" for key, spec in space.items()]
        namespace.pooling = values["pooling"]
        namespace.pooling_assignments = [f"{key}={value}" for key, value in merge_file.pooling_params.items()]
        namespace.pool_over = values["pool_over"]
        namespace.materialize = values["materialize"]
    return namespace


def _axis_text(spec: str | list[bool | int | float]) -> str:
    """One axis of ``space`` in the command line's SPEC syntax."""
    if isinstance(spec, str):
        return spec
    return ",".join(("true" if v else "false") if isinstance(v, bool) else repr(v) for v in spec)


def _relative(text: str, folder: Path) -> str:
    path = Path(text)
    if not path.exists() and looks_like_hub_id(text):
        return text
    relative = os.path.relpath(path.absolute(), folder.absolute())
    return relative + ("/" if text.endswith("/") else "")


def from_arguments(args: argparse.Namespace, hparams: dict[str, Any], folder: Path | None) -> dict[str, Any]:
    """The merge file of a command line (paths relative to ``folder``, or as given when None)."""
    place = (lambda text: text) if folder is None else (lambda text: _relative(text, folder))
    record: dict[str, Any] = {
        "command": args.command,
        "pretrained": place(args.pretrained),
        "finetuned": [place(p) for p in args.finetuned],
        "method": args.method,
        "hparams": dict(hparams),
        "seed": args.seed,
    }
    if args.command == "merge":
        record["lam"] = args.lam
    else:
        if args.lambdas is not None:
            record["lambdas"] = args.lambdas
        space = getattr(args, "space", None)
        if space:
            record["space"] = {key.strip(): spec.strip() for key, _, spec in (item.partition("=") for item in space)}
        record["pooling"] = args.pooling
        pooling_params = getattr(args, "pooling_assignments", None)
        if pooling_params:
            record["pooling_params"] = {key.strip(): _scalar(value.strip()) for key, _, value in
                                        (item.partition("=") for item in pooling_params)}
        record.update(pool_over=args.pool_over, materialize=bool(args.materialize))
    optional = {
        "weights": args.weights, "dtype": args.dtype, "device": args.device, "vocab": args.vocab,
        "vocab_keys": [k for k in (args.vocab_keys or "").split(",") if k], "hash": args.hash,
        "max_shard_size": args.max_shard_size, "allow_download": bool(args.allow_download),
    }
    defaults = {name: field.default for name, field in MergeFile.model_fields.items() if name in optional}
    defaults["vocab_keys"] = []
    record.update({k: v for k, v in optional.items() if v != defaults.get(k)})
    record["out"] = place(args.out)
    return record


def _scalar(text: str) -> bool | int | float | str:
    """A ``--pooling-set`` value as ``--set`` reads it: true/false, int, float, else the text."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def dump(record: dict[str, Any]) -> str:
    """YAML text of a merge file record, keys in the schema's order."""
    return yaml.safe_dump(record, sort_keys=False, default_flow_style=None, width=100)
