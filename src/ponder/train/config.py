"""The typed run config: defaults → YAML file → ``key=value`` overrides.

One :class:`TrainConfig` describes a whole run (task, model, policy, optimiser, schedule,
run-level settings). It is merged with OmegaConf structured configs, so an unknown key, a
value of the wrong type or a malformed YAML file is caught before anything runs, and it is
turned into one :class:`~ponder.errors.ConfigError` line.

>>> cfg = load_config("configs/demo_fixed.yaml", ["run.steps=200", "policy.knobs.beta=0.05"])
>>> cfg.model.d_model
64
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ponder.errors import ConfigError
from ponder.models.config import ModelConfig


# The configs shipped as package data (src/ponder/configs; ./configs in a checkout links here).
SHIPPED_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def configs_dir() -> Path:
    """./configs when the working directory has one, else the configs shipped in the package
    (package data: a wheel install finds them from any directory)."""
    here = Path.cwd() / "configs"
    return here if here.is_dir() else SHIPPED_CONFIGS


@dataclass
class TaskConfig:
    name: str = "list_rank"
    preset: Optional[str] = None
    knobs: Dict[str, Any] = field(default_factory=dict)
    lm: bool = False               # the task's LM view: answer after the prompt (ponder.tasks.lm)


@dataclass
class PolicyConfig:
    name: str = "fixed"
    knobs: Dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    """AdamW."""

    lr: float = 1e-3
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip: float = 1.0         # max global grad norm; 0 turns clipping off


@dataclass
class ScheduleConfig:
    """Linear warm-up, then cosine decay from lr to ``min_ratio * lr``."""

    warmup: int = 100
    total: Optional[int] = None    # steps the cosine spans; None = run.steps
    min_ratio: float = 0.1         # 1.0 = constant lr after warm-up


@dataclass
class RunConfig:
    seed: int = 0
    batch_size: int = 64           # GLOBAL batch (split across data-parallel processes)
    steps: int = 1000              # optimiser steps
    eval_every: int = 100
    ckpt_every: int = 100
    log_every: int = 10
    threads: int = 1               # torch.set_num_threads per process
    time_budget_s: Optional[float] = None   # wall-clock cap on training (a clean stop)
    stop_at_acc: Optional[float] = None     # stop once valid token accuracy reaches this
    valid_batches: int = 4         # validation set = this many global batches of `valid`
    device: str = "cpu"            # cpu | cuda | auto


@dataclass
class DepthConfig:
    """Depth randomisation in training (``ponder.train.depth``): a loop count per step."""

    sampler: str = "none"          # none | poisson_lognormal (Huginn) | uniform
    mean: float = 0.0              # r̄ of the Poisson-lognormal (0 = max_steps / 2)
    sigma: float = 0.5             # σ of the lognormal
    min_steps: int = 1             # the draw is clamped to min_steps..model.max_steps
    backprop: int = 0              # gradient through the last k steps only (0 = every step)


@dataclass
class SupervisionConfig:
    """Deep supervision / outer refinement (``ponder.train.segments``): K segments per batch."""

    segments: int = 1              # supervised segments per batch (1 = off)
    step_per_segment: bool = True  # an optimiser step after each segment (HRM/TRM); false: one per batch


@dataclass
class TrainConfig:
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    run: RunConfig = field(default_factory=RunConfig)
    depth: DepthConfig = field(default_factory=DepthConfig)
    supervision: SupervisionConfig = field(default_factory=SupervisionConfig)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _omegaconf_error(exc: OmegaConfBaseException, where: str) -> ConfigError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    key = getattr(exc, "full_key", None)
    suffix = f" (key {key})" if key and key not in first else ""
    return ConfigError(f"{where}: {_one_line(first)}{suffix}")


def _read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {str(p)!r} does not exist") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {str(p)!r}: {_one_line(exc)}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"malformed YAML in {str(p)!r}{at}: {_one_line(problem)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping, not {type(data).__name__}")
    return data


def _parse_overrides(overrides: Sequence[str]) -> Any:
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override {item!r} is not of the form key=value")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as exc:
        raise _omegaconf_error(exc, "override") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override: cannot parse value: {_one_line(exc)}") from None


# knob mappings that a command-line override replaces whole
WHOLE_MAPPINGS = ("task.knobs", "policy.knobs", "model.ffn.knobs", "model.attention.knobs",
                  "model.router.knobs")


def _knob_path(path: str, exc: ConfigError) -> ConfigError:
    """The registries say ``knob m_max=...``; name the config key path instead."""
    text = str(exc)
    if text.startswith("knob "):
        text = f"{path}.{text[len('knob '):]}"
    else:
        text = f"{path}: {text}"
    return ConfigError(text)


def merge_config(base: dict[str, Any] | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Defaults ← ``base`` (a plain dict, e.g. a YAML file) ← ``key=value`` overrides."""
    schema = OmegaConf.structured(TrainConfig)
    try:
        merged = OmegaConf.merge(schema, OmegaConf.create(base or {}))
    except OmegaConfBaseException as exc:
        raise _omegaconf_error(exc, "config") from None
    if overrides:
        # a whole knobs mapping given on the command line (``task.knobs={m_min: 3}``)
        # replaces the file's instead of merging into it
        for key in WHOLE_MAPPINGS:
            if any(item.split("=", 1)[0].strip() == key for item in overrides):
                OmegaConf.update(merged, key, {}, merge=False)
        try:
            merged = OmegaConf.merge(merged, _parse_overrides(overrides))
        except OmegaConfBaseException as exc:
            raise _omegaconf_error(exc, "override") from None
    try:
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise _omegaconf_error(exc, "config") from None
    check_ranges(cfg)
    return cfg


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Load a run config: defaults, then the YAML file (if any), then the overrides."""
    return merge_config(_read_yaml(path) if path is not None else None, overrides)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def check_ranges(cfg: TrainConfig) -> None:
    """Plain range checks on numbers (names are checked by :func:`validate_names`)."""
    r, o, s, m = cfg.run, cfg.optim, cfg.schedule, cfg.model
    _require(r.batch_size >= 1, f"run.batch_size must be >= 1, got {r.batch_size}")
    _require(r.steps >= 0, f"run.steps must be >= 0, got {r.steps}")
    for name in ("eval_every", "ckpt_every", "log_every", "threads", "valid_batches"):
        value = getattr(r, name)
        _require(value >= 1, f"run.{name} must be >= 1, got {value}")
    _require(r.time_budget_s is None or r.time_budget_s > 0,
             f"run.time_budget_s must be > 0, got {r.time_budget_s}")
    _require(r.stop_at_acc is None or 0 < r.stop_at_acc <= 1,
             f"run.stop_at_acc must lie in (0, 1], got {r.stop_at_acc}")
    _require(r.device in ("cpu", "cuda", "auto"), f"run.device must be cpu, cuda or auto, got {r.device!r}")
    _require(o.lr > 0 and math.isfinite(o.lr), f"optim.lr must be > 0, got {o.lr}")
    _require(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas),
             f"optim.betas must be two numbers in [0, 1), got {list(o.betas)}")
    _require(o.eps > 0, f"optim.eps must be > 0, got {o.eps}")
    _require(o.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {o.weight_decay}")
    _require(o.grad_clip >= 0, f"optim.grad_clip must be >= 0 (0 = off), got {o.grad_clip}")
    _require(s.warmup >= 0, f"schedule.warmup must be >= 0, got {s.warmup}")
    _require(s.total is None or s.total >= 1, f"schedule.total must be >= 1, got {s.total}")
    _require(0 <= s.min_ratio <= 1, f"schedule.min_ratio must lie in [0, 1], got {s.min_ratio}")
    for name in ("d_model", "n_heads", "d_ff", "max_steps", "core"):
        value = getattr(m, name)
        _require(value >= 1, f"model.{name} must be >= 1, got {value}")
    _require(m.prelude >= 0 and m.coda >= 0, "model.prelude and model.coda must be >= 0")
    _require(m.d_model % m.n_heads == 0,
             f"model.d_model ({m.d_model}) must be divisible by model.n_heads ({m.n_heads})")
    from ponder.train.depth import check_depth_config

    check_depth_config(cfg.depth, max_steps=m.max_steps)
    from ponder.train.segments import check_config as check_supervision

    check_supervision(cfg.supervision)


def validate_names(cfg: TrainConfig) -> None:
    """Check task, policy and model names (and knobs) early, with the registries' own errors."""
    import ponder.tasks

    try:
        ponder.tasks.get(cfg.task.name, cfg.task.preset, **dict(cfg.task.knobs))
    except ConfigError as exc:
        raise _knob_path("task.knobs", exc) from None
    try:
        import ponder.policies as policies
        import ponder.models as models
    except ImportError as exc:  # pragma: no cover - only while the core is missing
        raise ConfigError(f"models/policies are not available: {exc}") from None
    if hasattr(policies, "get"):
        try:
            policies.get(cfg.policy.name, **dict(cfg.policy.knobs))
        except ConfigError as exc:
            raise _knob_path("policy.knobs", exc) from None
    kinds = getattr(models, "names", None)
    if callable(kinds) and cfg.model.kind not in kinds():
        raise ConfigError(f"unknown model kind {cfg.model.kind!r}; kinds: {', '.join(kinds())}")


def to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """A plain, YAML-safe dict of the config (what ``config.yaml`` holds)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def to_yaml(cfg: TrainConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def from_dict(data: dict[str, Any]) -> TrainConfig:
    return merge_config(data)


__all__ = ["TaskConfig", "PolicyConfig", "OptimConfig", "ScheduleConfig", "RunConfig", "DepthConfig",
           "SupervisionConfig", "TrainConfig", "ModelConfig", "load_config", "merge_config", "check_ranges",
           "validate_names", "to_dict", "to_yaml", "from_dict", "asdict"]
