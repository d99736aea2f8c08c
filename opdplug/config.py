"""Config: TOML validated into typed, frozen dataclasses.

Every mistake is one line naming the key: an unknown key (with the allowed ones), a wrong type,
an unknown component name (with the registered ones). Plugins add their own tables through
``opd_add_options``; component options (``[loss.divergence_options]`` ...) are validated against
the fields of the component the config chooses.
"""
from __future__ import annotations

import dataclasses
import json
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import ConfigError


# ----------------------------------------------------------------------------- validation
def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        (inner,) = typing.get_args(tp) or (Any,)
        return f"list of {_type_name(inner)}"
    if tp is type(None):
        return "nothing"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against type ``tp``; return it (ints are accepted where floats are)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{where} = {value!r} is not allowed; choose one of {', '.join(map(repr, allowed))}")
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(tp):
            if option is type(None):
                if value is None:
                    return None
                continue
            try:
                return _coerce(value, option, where)
            except ConfigError as exc:
                errors.append(exc)
        raise ConfigError(f"{where} must be {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if origin is list:
        (inner,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a {_type_name(tp)}, got {type(value).__name__} {value!r}")
        return [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a table, got {type(value).__name__} {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a table, got {type(value).__name__} {value!r}")
        return from_dict(tp, value, f"[{where}]")
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is bool or tp is str:
        if not isinstance(value, tp):
            raise ConfigError(f"{where} must be {'true or false' if tp is bool else 'a string'}, got {type(value).__name__} {value!r}")
        return value
    raise TypeError(f"config type {tp!r} at {where} is not supported")  # a bug in a dataclass


def from_dict(cls: type, data: dict, where: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``: unknown keys and wrong types raise ``ConfigError``.

    ``where`` names the table in messages, e.g. ``[loss]``.
    """
    label = where or f"[{getattr(cls, '__name__', 'config')}]"
    if not isinstance(data, dict):
        raise ConfigError(f"{label} must be a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        allowed = ", ".join(sorted(fields)) or "(none: this component takes no options)"
        raise ConfigError(f"{label} has unknown key {unknown[0]!r}; allowed keys: {allowed}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(value, hints[name], f"{label[1:-1]}.{name}" if label.startswith("[") else f"{label}.{name}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{label}: {exc}") from None


def to_dict(obj: Any) -> Any:
    """A TOML/JSON-able dict of a (nested) config dataclass."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


# ----------------------------------------------------------------------------- core tables
@dataclass(frozen=True)
class RunOptions:
    """``[run]``: the optimization and bookkeeping of one training run."""

    output_dir: str = "runs/opd"
    """Where checkpoints, metrics.jsonl and the resolved config go."""
    seed: int = 0
    """Seeds model init, prompts and sampling; a run is a function of its seed."""
    steps: int = 100
    """Number of optimizer steps."""
    batch_size: int = 8
    """Sequences per micro-batch PER PROCESS (not global): under ``accelerate launch
    --num_processes N`` each process rolls out this many, so halve it when going from 1 to 2
    processes to keep the global batch."""
    grad_accum: int = 1
    """Micro-batches per optimizer step. Global batch = batch_size * grad_accum * processes; the
    run (prompts, samples, updates) is a function of the global batch, not of how it is split."""
    lr: float = 1e-3
    """Peak learning rate of AdamW."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW betas."""
    min_lr_ratio: float = 0.0
    """Floor of the linear/cosine decay, as a fraction of ``lr``."""
    warmup_steps: int = 0
    """Linear warm-up steps."""
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    """Decay after warm-up."""
    max_grad_norm: float = 1.0
    """Gradient clipping (0 disables)."""
    checkpoint_every: int = 0
    """Steps between checkpoints (0: only at the end)."""
    keep_checkpoints: int = 2
    """How many step checkpoints to keep (older ones are deleted after a newer one is complete)."""
    resume: bool = True
    """Resume from the latest checkpoint in output_dir if there is one."""
    log_every: int = 1
    """Steps between metric lines."""
    tensorboard: bool = False
    """Also write TensorBoard events (needs the tensorboard package)."""
    progress: bool = True
    """Show a progress bar."""
    device: str = "auto"
    """"auto" lets accelerate choose; "cpu" forces the CPU."""
    threads: int = 0
    """torch intra-op threads (0: torch's default)."""
    stop_after: int = 0
    """Stop (as if killed) after this many steps of this invocation; 0 never. For resume tests."""
    step_retries: int = 2
    """Times a step is redone from its rollout when a server stays unreachable through its own
    retry budget (``RemoteError``); after that the run writes a checkpoint and stops."""


@dataclass(frozen=True)
class ModelOptions:
    """``[student]`` / ``[teacher]``: where a model comes from."""

    path: str = ""
    """A local Hugging Face model directory (config, safetensors weights, tokenizer)."""
    tiny: str = ""
    """Instead of ``path``: build a fresh model of this ``opdplug_local.tiny.SIZES`` size, with the
    task's tokenizer (student only; or the teacher's tokenizer when a teacher path is given)."""
    init_seed: int = 0
    """Seed of a fresh ``tiny`` model's weights, and of a fresh LoRA adapter's initial A matrices."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weights' dtype when loaded (bfloat16 halves memory; on CPUs without bf16 units it is slower)."""
    attn_implementation: str = ""
    """transformers' attention implementation ("eager", "sdpa", "flash_attention_2", ...); empty: its default."""
    lora_r: int = 0
    """LoRA rank (0: train all weights). Needs peft."""
    lora_alpha: float = 16.0
    """LoRA scaling numerator."""
    lora_dropout: float = 0.0
    """LoRA dropout."""
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    """Module names LoRA adapts."""
    adapter: str = ""
    """Start the LoRA adapter from an earlier run instead of zero: its run directory (latest
    checkpoint), a checkpoint directory, or a peft adapter directory; ``lora_r`` and
    ``lora_targets`` must be the ones it was trained with. The base weights stay ``path``'s,
    so ``teacher.scorer = "base_model"`` distills from the weights before that run."""


@dataclass(frozen=True)
class TeacherOptions:
    """``[teacher]``: who scores the student's tokens."""

    path: str = ""
    """A local Hugging Face model directory; empty for scorers that need none ("none", "self")."""
    scorer: str = ""
    """Registered scorer name (``opdplug plugins`` lists them); empty: the default one."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weights' dtype when loaded (bfloat16 halves memory; on CPUs without bf16 units it is slower)."""
    attn_implementation: str = ""
    """transformers' attention implementation ("eager", "sdpa", "flash_attention_2", ...); empty: its default."""
    top_k: int = 0
    """Teacher top-k to return in sparse scores (0: only the sampled token's log-prob)."""
    options: dict = field(default_factory=dict)
    """Options of the chosen scorer."""


@dataclass(frozen=True)
class TaskOptions:
    """``[task]``: where prompts come from."""

    name: str = ""
    """Registered task name; empty: the default one."""
    options: dict = field(default_factory=dict)
    """Options of the chosen task (``[task.options]``)."""


@dataclass(frozen=True)
class RolloutOptions:
    """``[rollout]``: how completions are produced."""

    sampler: str = ""
    """Registered sampler name: who writes the completions; empty: the default one."""
    temperature: float = 1.0
    """Sampling temperature; the loss compares distributions at the same temperature."""
    top_p: float = 1.0
    """Nucleus sampling threshold (1 disables)."""
    max_new_tokens: int = 0
    """Completion budget (0: the task's own budget)."""
    samples_per_prompt: int = 1
    """Group sampling: each prompt appears this many times in a row of the global batch (n
    completions per prompt, GRPO-style), for any sampler. A group never straddles a
    micro-batch or a process (``run.batch_size`` must be a multiple of it); each copy has its
    own global row, hence its own sampling seed."""
    options: dict = field(default_factory=dict)
    """Options of the chosen sampler (``[rollout.options]``)."""


@dataclass(frozen=True)
class CreditOptions:
    """``[credit]``: per-token weights and advantages."""

    scheme: str = ""
    """Registered credit scheme; empty: the default one."""
    options: dict = field(default_factory=dict)
    """Options of the chosen scheme, e.g. ``gamma``."""
    verifier: str = ""
    """Registered outcome verifier whose reward is attached to rollouts ("" for none)."""
    verifier_options: dict = field(default_factory=dict)
    """Options of the verifier, e.g. ``pattern`` for regex."""


@dataclass(frozen=True)
class Config:
    """A whole run. ``plugins`` holds the validated tables plugins declared, by table name."""

    run: RunOptions = field(default_factory=RunOptions)
    student: ModelOptions = field(default_factory=ModelOptions)
    teacher: TeacherOptions = field(default_factory=TeacherOptions)
    task: TaskOptions = field(default_factory=TaskOptions)
    rollout: RolloutOptions = field(default_factory=RolloutOptions)
    credit: CreditOptions = field(default_factory=CreditOptions)
    plugins: dict = field(default_factory=dict)
    source: str = ""
    """The file the config was read from (empty when built in code)."""

    def plugin(self, table: str) -> Any:
        """The validated options of a plugin's table."""
        return self.plugins[table]

    def __getattr__(self, name: str) -> Any:
        # A plugin's table reads like a kernel one: ``config.loss`` is ``config.plugin("loss")``.
        plugins = self.__dict__.get("plugins") or {}
        if name in plugins:
            return plugins[name]
        raise AttributeError(f"the config has no table [{name}] (is the plugin that declares it loaded?)")

    def replace(self, **sections: Any) -> "Config":
        """A copy with whole sections or single fields replaced: ``replace(run={"steps": 5})``;
        plugin tables too (``replace(loss={"top_k": 4})``)."""
        changes: dict[str, Any] = {}
        plugins = dict(self.plugins)
        for name, value in sections.items():
            current = getattr(self, name)
            if isinstance(value, dict) and dataclasses.is_dataclass(current):
                value = dataclasses.replace(current, **value)
            if name in CORE_TABLES or name in ("plugins", "source"):
                changes[name] = value
            else:
                plugins[name] = value
        changes.setdefault("plugins", plugins)
        return dataclasses.replace(self, **changes)


CORE_TABLES = {f.name: f.type for f in dataclasses.fields(Config) if f.name not in ("plugins", "source")}


def parse_config(data: dict, plugin_tables: dict[str, type], source: str = "") -> Config:
    """Validate a parsed TOML document into a ``Config``.

    :param data: the TOML document as a dict.
    :param plugin_tables: table name -> options dataclass, from ``opd_add_options``.
    """
    hints = typing.get_type_hints(Config)
    allowed = sorted(CORE_TABLES) + sorted(plugin_tables)
    kwargs: dict[str, Any] = {}
    plugins: dict[str, Any] = {}
    for table, value in data.items():
        if table in CORE_TABLES:
            kwargs[table] = _coerce(value, hints[table], table)
        elif table in plugin_tables:
            plugins[table] = _coerce(value, plugin_tables[table], table)
        else:
            raise ConfigError(f"unknown table [{table}]; allowed tables: {', '.join(allowed)}")
    for table, cls in plugin_tables.items():
        plugins.setdefault(table, cls())
    return Config(**kwargs, plugins=plugins, source=source)


def load_toml(path: str | Path) -> dict:
    """Read a TOML file; a syntax error is one line with the file and position."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def dump_toml(data: dict) -> str:
    """Write a nested dict of str/int/float/bool/list/dict as TOML (enough for resolved configs)."""
    lines: list[str] = []

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if v is None:
            return '""'
        if isinstance(v, dict):  # inline (only inside [[arrays]]; other tables are written as tables)
            return "{" + ", ".join(f"{json.dumps(str(k))} = {value(x)}" for k, x in v.items()) + "}"
        raise TypeError(f"cannot write {type(v).__name__} to TOML")

    def is_array_of_tables(v: Any) -> bool:
        return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)

    def table(prefix: str, d: dict) -> None:
        scalars = {k: v for k, v in d.items() if not isinstance(v, dict) and not is_array_of_tables(v)}
        subtables = {k: v for k, v in d.items() if isinstance(v, dict)}
        arrays = {k: v for k, v in d.items() if is_array_of_tables(v)}
        if prefix and (scalars or not subtables):
            lines.append(f"[{prefix}]")
        for k, v in scalars.items():
            lines.append(f"{k} = {value(v)}")
        if prefix and (scalars or not subtables):
            lines.append("")
        for k, v in subtables.items():
            table(f"{prefix}.{k}" if prefix else k, v)
        for k, items in arrays.items():  # [[name]] entries; their sub-tables inline
            for item in items:
                lines.append(f"[[{prefix + '.' + k if prefix else k}]]")
                lines.extend(f"{ik} = {value(iv)}" for ik, iv in item.items())
                lines.append("")

    table("", data)
    return "\n".join(lines) + "\n"


def config_to_toml_dict(config: Config) -> dict:
    """The resolved config as a TOML-able dict (plugin tables at top level, as in the file)."""
    out = {name: to_dict(getattr(config, name)) for name in CORE_TABLES}
    for table, opts in config.plugins.items():
        out[table] = to_dict(opts)
    return out
