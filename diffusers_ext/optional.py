"""Optional dependencies: which extra installs each one, and a clear error when one is missing.

``import diffusers_ext`` and the schedulers need only the core dependencies; the FID harness, sweeps, plots and
the digits data need the ``[eval]`` extra (``pip install 'diffusers-ext[eval]'``).
"""

from __future__ import annotations

import importlib
from types import ModuleType

# import name -> (distribution, extra that installs it); pyproject.toml's extras list the same distributions
OPTIONAL = {
    "torch_fidelity": ("torch-fidelity", "eval"),
    "matplotlib": ("matplotlib", "eval"),
    "sklearn": ("scikit-learn", "eval"),
}


class MissingDependency(ImportError):
    """An optional package that a feature needs is not installed (the message says which extra installs it)."""


def require(module: str, purpose: str) -> ModuleType:
    """Import and return ``module`` (an optional package or one of its submodules); if it does not import, raise
    ``MissingDependency`` naming the package, ``purpose`` (what needs it) and the pip command of its extra."""
    top = module.partition(".")[0]
    if top not in OPTIONAL:
        raise ValueError(f"Unknown optional module {module!r}; valid choices: {', '.join(OPTIONAL)}")
    try:
        return importlib.import_module(module)
    except ImportError as err:
        package, extra = OPTIONAL[top]
        raise MissingDependency(
            f"The optional package {package}, needed for {purpose}, is not installed or does not import ({err}). "
            f"Install it with the [{extra}] extra: pip install 'diffusers-ext[{extra}]'", name=top) from err


def require_extra(extra: str, purpose: str) -> None:
    """``require`` every optional package of ``extra``: a command checks up front, not in its last step."""
    extras = sorted({name for _, name in OPTIONAL.values()})
    if extra not in extras:
        raise ValueError(f"Unknown extra {extra!r}; valid choices: {', '.join(extras)}")
    for module, (_, name) in OPTIONAL.items():
        if name == extra:
            require(module, purpose)
