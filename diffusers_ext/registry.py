"""The one scheduler registry: classes, short names and named sets by name, and the one spec parser.

The CLI, sweeps, the GMM benchmark, the demo, the benchmarks and the tests name schedulers by a *spec*:
``NAME[:key=value,key=value...]`` where NAME is a short name (``dpm++3m``), one of our classes
(``DPMSolverPPScheduler``) or ``diffusers:ClassName`` (any diffusers scheduler class). Option values are JSON
(``true``, ``3``, ``[1, 0.9, 1]``; Python's ``True`` / ``False`` / ``None`` too), anything else a string;
options after a short name override its own. Results files hash the built scheduler's full config, so a spec
and the short name it spells out share their results.

Adding a multistep family is one file plus one registry line: its module under ``diffusers_ext/schedulers/``
(a ``SolverScheduler`` subclass declaring its options and its step rule; the engine there supplies the diffusers
contract) and its class in ``OURS`` below (imported next to the others). That alone makes it a valid spec for
the CLI, sweeps, ``make_scheduler``, ``scheduler_class`` and ``from_config``, and puts it in the contract-test
matrix (tests/helpers.py runs every class in ``OURS`` with its defaults). A short name or a named-set entry is
one more line each, if wanted; exporting the class from ``diffusers_ext`` is only for users' imports.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping

import diffusers
from diffusers import SchedulerMixin

from .schedulers import DCSolverScheduler, DEISScheduler, DPMSolverPPScheduler, UniPCScheduler, USFScheduler

# ------------------------------------------------------------------------------------------------ the table
OURS: dict[str, type] = {cls.__name__: cls for cls in (
    DPMSolverPPScheduler, UniPCScheduler, DEISScheduler, DCSolverScheduler, USFScheduler)}

# diffusers' classes we compare with (any other diffusers scheduler is a valid spec too, as diffusers:ClassName)
COMPARED = ("DDIMScheduler", "EulerDiscreteScheduler", "DPMSolverMultistepScheduler", "UniPCMultistepScheduler",
            "DEISMultistepScheduler")

# short name -> (class, options); results files and CLI calls use these names: never change an entry's meaning
SHORT_NAMES: dict[str, tuple[str, dict]] = {
    "dpm++2m": ("DPMSolverPPScheduler", {}),
    "dpm++3m": ("DPMSolverPPScheduler", {"solver_order": 3}),
    "dpm++3s": ("DPMSolverPPScheduler", {"solver_order": 3, "singlestep": True}),
    "unipc": ("UniPCScheduler", {}),
    "unipc3": ("UniPCScheduler", {"solver_order": 3}),
    "deis": ("DEISScheduler", {}),
    "ipndm": ("DEISScheduler", {"solver_type": "ipndm", "solver_order": 4}),
}

# diffusers at its best: each class on each of its grids (its UniPC has no lu_lambdas)
_GRIDS = {"": "", " karras": "use_karras_sigmas=true", " exponential": "use_exponential_sigmas=true",
          " lu_lambdas": "use_lu_lambdas=true", " trailing": "timestep_spacing=trailing"}


def _with(spec: str, option: str) -> str:
    """``spec`` with one more ``key=value`` option (none if ``option`` is empty)."""
    if not option:
        return spec
    return spec + ("," if ":" in spec.removeprefix("diffusers:") else ":") + option


def _on_grids(label: str, spec: str, grids) -> dict[str, str]:
    return {label + g: _with(spec, _GRIDS[g]) for g in grids}


def _as_labels(*specs: str) -> dict[str, str]:
    return {s: s for s in specs}


# named sets: label -> spec (the label is what tables and results files show)
SETS: dict[str, dict[str, str]] = {
    "demo": _as_labels(  # `diffusers-ext demo` and bench/sweep_digits.py: ours and diffusers' defaults
        "dpm++2m", "dpm++3m", "unipc", "deis", "ipndm", "diffusers:DDIMScheduler:clip_sample=false",
        "diffusers:DPMSolverMultistepScheduler", "diffusers:UniPCMultistepScheduler",
        "diffusers:DEISMultistepScheduler"),
    "sweep": _as_labels("dpm++2m", "unipc", "deis", "diffusers:DPMSolverMultistepScheduler"),  # `sweep`'s default
    "gmm": {  # the GMM accuracy benchmark (its labels name the rows of bench/results/gmm_accuracy.json)
        "DPM-Solver++ 2M": "DPMSolverPPScheduler",
        "DPM-Solver++ 3M": "DPMSolverPPScheduler:solver_order=3",
        "DPM-Solver++ 3M (taylor)": "DPMSolverPPScheduler:solver_order=3,third_order_taylor=true",
        "DPM-Solver++ 3S": "DPMSolverPPScheduler:solver_order=3,singlestep=true",
        "UniPC bh2 (2)": "UniPCScheduler",
        "UniPC bh2 (3)": "UniPCScheduler:solver_order=3",
        "UniPC bh1 (3)": "UniPCScheduler:solver_order=3,solver_type=bh1",
        "DEIS tAB3": "DEISScheduler",
        "DEIS rhoAB3": "DEISScheduler:solver_type=rhoab",
        "DEIS iPNDM4": "DEISScheduler:solver_type=ipndm,solver_order=4",
        "DEIS rhoRK4": "DEISScheduler:solver_type=rk4",
        "diffusers DDIM": "diffusers:DDIMScheduler:timestep_spacing=trailing,clip_sample=false",
        "diffusers DPM++ 2M": "diffusers:DPMSolverMultistepScheduler",
        "diffusers DPM++ 3M": "diffusers:DPMSolverMultistepScheduler:solver_order=3",
        "diffusers UniPC": "diffusers:UniPCMultistepScheduler",
        "diffusers DEIS": "diffusers:DEISMultistepScheduler",
    },
    "diffusers-best": {  # the baselines a tuned solver must beat (no AYS timesteps here)
        **_on_grids("diffusers DPM++ 2M", "diffusers:DPMSolverMultistepScheduler", _GRIDS),
        **_on_grids("diffusers DPM++ 3M", "diffusers:DPMSolverMultistepScheduler:solver_order=3", _GRIDS),
        **_on_grids("diffusers UniPC", "diffusers:UniPCMultistepScheduler",
                    ("", " karras", " exponential", " trailing")),
        **_on_grids("diffusers DEIS", "diffusers:DEISMultistepScheduler", ("", " karras")),
        "diffusers Euler karras": "diffusers:EulerDiscreteScheduler:use_karras_sigmas=true",
        "diffusers DDIM trailing": "diffusers:DDIMScheduler:timestep_spacing=trailing,clip_sample=false",
    },
}

# the tuning catalogue (``diffusers_ext.tuning``): every solver variant here on every grid below
CATALOGUE_SOLVERS: dict[str, str] = {
    "dpm++2m": "dpm++2m",
    "dpm++3m": "dpm++3m:third_order_taylor=true",
    "dpm++2m-dualfast0.5": "dpm++2m:dualfast_strength=0.5",
    "dpm++2m-dualfast1": "dpm++2m:dualfast_strength=1.0",
    "unipc-bh2": "unipc",
    "unipc-bh1": "unipc:solver_type=bh1",
    "unipc3-bh2": "unipc3",
    "unipc-bh2-dualfast0.5": "unipc:dualfast_strength=0.5",
    "deis-tab3": "deis",
    "deis-ipndm3": "deis:solver_type=ipndm,solver_order=3",
    "deis-ipndm4": "ipndm",
}
CATALOGUE_GRIDS: dict[str, dict] = {
    "linspace": {"timestep_spacing": "linspace"},
    "trailing": {"timestep_spacing": "trailing"},
    "quadratic": {"timestep_spacing": "quadratic"},
    "logsnr": {"timestep_spacing": "logsnr"},
    "karras": {"use_karras_sigmas": True},
    "beta": {"use_beta_sigmas": True},
}


# ------------------------------------------------------------------------------------------------ the parser
def split_options(text: str) -> list[str]:
    """Split ``text`` at commas outside brackets and quotes (``a=1,b=[1,2]`` -> ``["a=1", "b=[1,2]"]``)."""
    parts, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return [p.strip() for p in [*parts, text[start:]] if p.strip()]


def split_specs(text: str) -> list[str]:
    """A comma-separated list of specs; an item ``key=value`` (no ``:`` before its ``=``) continues the previous
    spec's options, so ``dpm++3m,DPMSolverPPScheduler:solver_order=3,third_order_taylor=true`` is two specs."""
    specs: list[str] = []
    for item in split_options(text):
        head = item.partition("=")[0]
        if "=" in item and ":" not in head:
            if not specs:
                raise ValueError(f"scheduler option {item!r} comes before any scheduler name in {text!r}")
            specs[-1] += "," + item
        else:
            specs.append(item)
    return specs


_PYTHON_WORDS = {"True": True, "False": False, "None": None}


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return _PYTHON_WORDS.get(text, text)


def _diffusers_names() -> list[str]:
    return sorted(n for n in dir(diffusers) if n.endswith("Scheduler") and not n.startswith("Flax"))


def _unknown(spec: str, detail: str = "") -> ValueError:
    return ValueError(f"Unknown scheduler {spec!r}{detail}: use one of the short names {', '.join(SHORT_NAMES)}; "
                      f"one of our classes {', '.join(OURS)}; or diffusers:ClassName, a diffusers scheduler class "
                      f"(e.g. {', '.join(COMPARED)})")


def _resolve(name: str, spec: str) -> type:
    if name in OURS:
        return OURS[name]
    if name.startswith("diffusers:"):
        attr = name.removeprefix("diffusers:")
        cls = getattr(diffusers, attr, None) if attr.isidentifier() else None
        if not (isinstance(cls, type) and issubclass(cls, SchedulerMixin) and cls is not SchedulerMixin):
            raise ValueError(f"Unknown scheduler {spec!r}: diffusers has no scheduler class {attr!r}; valid "
                             f"classes: {', '.join(_diffusers_names())}")
        return cls
    raise _unknown(spec)


def _check_options(cls: type, options: Mapping, spec: str) -> None:
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = [k for k in options if k not in params or k == "self"]
    if unknown:
        raise ValueError(f"Scheduler {spec!r}: {cls.__name__} has no option(s) {', '.join(map(repr, unknown))}; "
                         f"valid options: {', '.join(k for k in params if k != 'self')}")


def parse_spec(spec: str) -> tuple[str, dict]:
    """``NAME[:key=value,...]`` -> (class name as the table spells it, options); raises ValueError naming the
    valid names (unknown scheduler) or the class's valid options (unknown option). Option values are checked
    when the scheduler is built."""
    if not isinstance(spec, str):
        raise TypeError(f"a scheduler spec is a string such as 'dpm++2m' or 'DPMSolverPPScheduler:solver_order=3', "
                        f"got {type(spec).__name__}")
    prefix = "diffusers:" if spec.startswith("diffusers:") else ""
    head, _, text = spec.removeprefix(prefix).partition(":")
    name = prefix + head.strip()
    class_name, options = SHORT_NAMES.get(name, (name, {}))
    options = dict(options)
    for item in split_options(text):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"Scheduler option {item!r} of {spec!r} is not key=value")
        options[key.strip()] = _value(value.strip())
    _check_options(_resolve(class_name, spec), options, spec)
    return class_name, options


def scheduler_class(spec: str) -> type:
    """The class a spec (short name, class name, diffusers:ClassName, with or without options) builds."""
    return _resolve(parse_spec(spec)[0], spec)


def _build(spec: str, options: Mapping | None, overrides: dict, build) -> SchedulerMixin:
    class_name, parsed = parse_spec(spec)
    cls = _resolve(class_name, spec)
    merged = {**parsed, **(options or {}), **overrides}
    _check_options(cls, merged, spec)
    try:
        return build(cls, merged)
    except (ValueError, NotImplementedError) as err:  # diffusers raises NotImplementedError for unknown choices
        raise ValueError(f"Scheduler {spec!r}: {err}") from None


def make_scheduler(spec: str, options: Mapping | None = None, /, **overrides) -> SchedulerMixin:
    """A scheduler from a spec, e.g. ``make_scheduler("dpm++3m")`` or ``make_scheduler("unipc", solver_order=3)``;
    ``options`` (a dict) and ``overrides`` win over the spec's own options, so ``make_scheduler(*parse_spec(s))``
    and the entries of a named set rebuild the same scheduler."""
    return _build(spec, options, overrides, lambda cls, kw: cls(**kw))


def from_config(spec: str, config: Mapping, /, **overrides) -> SchedulerMixin:
    """Swap a spec's scheduler into a pipeline: ``config`` (e.g. ``pipe.scheduler.config``) carries the model's
    betas, prediction type and timestep settings; the spec's options and ``overrides`` win over it."""
    return _build(spec, None, overrides, lambda cls, kw: cls.from_config(config, **kw))


def named_set(name: str) -> dict[str, str]:
    """A named set of schedulers, label -> spec (a copy); sets: see ``SETS``."""
    if name not in SETS:
        raise ValueError(f"Unknown scheduler set {name!r}; valid sets: {', '.join(SETS)}")
    return dict(SETS[name])


def describe_short_names() -> str:
    """``dpm++2m (DPMSolverPPScheduler), dpm++3m (DPMSolverPPScheduler solver_order=3), ...`` for help texts."""
    return ", ".join(f"{name} ({cls}{''.join(f' {k}={v}' for k, v in opts.items())})"
                     for name, (cls, opts) in SHORT_NAMES.items())
