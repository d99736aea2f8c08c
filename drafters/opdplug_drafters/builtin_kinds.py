"""The two drafter kinds this plugin registers (see ``kinds`` for the protocol).

* ``standalone``: a small causal LM with the target's tokenizer, trained by DistillSpec through
  the ordinary OPD loop (the config's ``[student]`` is the drafter, ``[teacher]`` the target);
  exported as a plain Hugging Face directory (SGLang's ``STANDALONE``).
* ``eagle3``: an EAGLE-3 head over the target's hidden states, trained by the core loop with the
  kind's own stages (``eagle3.stages``; ``[run]`` as every run, ``[drafter.options]`` or
  ``[drafter.eagle3]`` as its ``Eagle3Options``); exported as SGLang's ``LlamaForCausalLMEagle3``.

Heavy modules are imported when a kind is used, not when it is registered.
"""
from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any

from opdplug.errors import ConfigError

from .kinds import DrafterKind, TrainOutcome, TrainRequest, acceptance_of


# ----------------------------------------------------------------------------- standalone
def _standalone_dir(path: Path) -> Path:
    from opdplug_local.evaluate import resolve_model_dir

    return resolve_model_dir(path)


def _load_standalone(path: Path, target) -> Any:
    from .standalone import StandaloneDrafter

    return StandaloneDrafter.from_pretrained(_standalone_dir(Path(path)), vocab_size=target.get_output_embeddings().weight.shape[0])


def _is_standalone(path: Path) -> bool:
    return not _is_eagle3(path) and ((Path(path) / "config.json").is_file() or (Path(path) / "final" / "config.json").is_file())


def _train_standalone(request: TrainRequest) -> TrainOutcome:
    """DistillSpec: the OPD loop on the config, measuring acceptance every ``eval_every`` steps."""
    from .distillspec import read_eval, train_distillspec

    run: dict[str, Any] = {"output_dir": str(request.output_dir)}
    if request.steps:
        run["steps"] = request.steps
    if request.quiet:
        run["progress"] = False
    result = train_distillspec(request.config.replace(run=run), request.manager)
    rows = read_eval(result.output_dir)
    text = ""
    if rows:
        text = f"held-out acceptance length (k = {request.drafter.draft_tokens}, bonus incl.) by step:\n" + "\n".join(
            f"  step {row['step']:>5}: " + "  ".join(f"T={key[1:]} {value['accept_len']:.2f}"
                                                   for key, value in row.items() if key.startswith("T"))
            for row in rows)
    return TrainOutcome(
        output_dir=Path(result.output_dir), steps=result.steps_done,
        acceptance={key: value["accept_len"] for key, value in rows[-1].items() if key.startswith("T")} if rows else None,
        summary={"final_model": str(result.final_model_dir) if result.final_model_dir else None,
                 "last_loss": result.history[-1].get("loss") if result.history else None,
                 "png": str(Path(result.output_dir) / "acceptance_vs_steps.png") if rows else None},
        text=text,
    )


def _export_standalone(source: Path, output_dir: Path, target_dir: Path) -> Path:
    from .export import export_standalone

    return export_standalone(_standalone_dir(source), output_dir, target_dir)


# ----------------------------------------------------------------------------- eagle3
def _eagle3_module():
    try:
        from . import eagle3
    except ImportError as exc:
        raise ConfigError(f"the eagle3 drafter kind needs opdplug_drafters.eagle3, which failed to import: {exc}") from None
    return eagle3


def _is_eagle3(path: Path) -> bool:
    path = Path(path)
    for config in (path / "config.json", path / "final" / "config.json", path / "head" / "config.json"):
        if config.is_file():
            try:
                if "LlamaForCausalLMEagle3" in json.loads(config.read_text()).get("architectures", []):
                    return True
            except (OSError, json.JSONDecodeError):
                return False
    summary = path / "train_summary.json"
    if summary.is_file():
        try:
            return json.loads(summary.read_text()).get("kind") == "eagle3"
        except (OSError, json.JSONDecodeError):
            return False
    return False


def _load_eagle3(path: Path, target) -> Any:
    eagle3 = _eagle3_module()
    try:
        return eagle3.Eagle3Drafter.from_pretrained(path, target)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        raise ConfigError(f"{str(path)!r} could not be loaded as an EAGLE-3 head: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None


def eagle3_options(table: dict):
    """An EAGLE-3 kind table validated into ``eagle3.options.Eagle3Options`` (one-line errors;
    a key that now lives in ``[run]`` says so)."""
    from opdplug.config import from_dict

    from .eagle3.options import Eagle3Options, moved_keys_error

    _eagle3_module()
    moved_keys_error(table, "drafter.options")
    table = dict(table)
    aux = table.pop("aux_layers", None)  # a tuple field: the TOML list is checked here
    if aux is not None and (not isinstance(aux, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in aux)):
        raise ConfigError(f"drafter.options.aux_layers must be a list of integers, got {aux!r}")
    options = from_dict(Eagle3Options, table, "[drafter.options]")
    return dataclasses.replace(options, aux_layers=tuple(aux)) if aux is not None else options


def _run_eagle3_options(ctx):
    """The run's validated EAGLE-3 options (what ``opd_validate`` checked)."""
    from .kinds import kind_options

    drafter = ctx.config.plugin("drafter")
    return kind_options(ctx.registry.get("drafter_kinds", drafter.kind, "drafter.kind"), drafter)


@functools.cache
def _eagle3_stages():
    _eagle3_module()  # a one-line error if the module cannot load
    from .eagle3.stages import Eagle3Stages

    return Eagle3Stages(_run_eagle3_options)


def _train_eagle3(request: TrainRequest) -> TrainOutcome:
    """The core loop with the EAGLE-3 stages (``eagle3.train_eagle3``), then the head measured
    as it will be served (exact speculative decoding with the target)."""
    from opdplug_local import models as local

    from .evaluation import format_table, report_dicts

    eagle3 = _eagle3_module()
    run: dict[str, Any] = {"output_dir": str(request.output_dir)}
    if request.steps:
        run["steps"] = request.steps
    if request.quiet:
        run["progress"] = False
    # The run records its target by absolute path: 'drafter eval|export RUN' work from anywhere.
    config = request.config.replace(run=run, teacher={"path": str(request.target_dir.resolve())})
    result = eagle3.train_eagle3(config, request.manager)
    png = eagle3.plot_metrics(result.output_dir, Path(result.output_dir) / "acceptance_vs_steps.png") if result.evals else None
    # The training proxy is teacher-forced; measure the head the way it will be served.
    target, tokenizer = request.load_target()
    task = request.task(tokenizer)
    reports = request.measure(target, tokenizer, task, _load_eagle3(Path(result.output_dir), target))
    (Path(result.output_dir) / "drafter_eval.json").write_text(json.dumps(report_dicts(reports), indent=1))
    return TrainOutcome(
        output_dir=Path(result.output_dir), steps=result.steps_done, acceptance=acceptance_of(reports),
        summary={"head_dir": str(result.head_dir), "last_loss": result.history[-1]["loss"] if result.history else None,
                 "train_accept_len_proxy": result.evals[-1]["accept_len"] if result.evals else None,
                 "png": str(png) if png else None},
        text=format_table(reports),
    )


def _export_eagle3(source: Path, output_dir: Path, target_dir: Path) -> Path:
    from .export import export_eagle3

    return export_eagle3(source, output_dir, target_dir)


STANDALONE = DrafterKind(
    "standalone", "a small causal LM with the target's tokenizer (DistillSpec, through the OPD loop)",
    load=_load_standalone, recognises=_is_standalone, train=_train_standalone, export=_export_standalone, fallback=True,
)
EAGLE3 = DrafterKind(
    "eagle3", "an EAGLE-3 head over the target's hidden states (training-time test)",
    load=_load_eagle3, recognises=_is_eagle3, train=_train_eagle3, validate_options=eagle3_options, export=_export_eagle3,
    stages=_eagle3_stages,
)
