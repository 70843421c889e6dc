"""easycls: train a good image classifier in one line (fastai + timm + Accelerate).

Example:
    >>> from easycls import fit, load
    >>> learn = fit("digits")
    >>> load(learn.easycls.run_dir).predict("some_digit.png")
"""

import warnings
from importlib import import_module

# fastai decorates a few functions with `torch.jit.script` at import time, which newer torch
# deprecates with a FutureWarning on every command. Only that message is silenced.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated",
                        category=FutureWarning, module=r"torch\.jit\._script")

__version__ = "0.1.0"

__all__ = ["fit", "load", "save", "export", "compare_runs", "Predictor", "__version__"]

# Public names resolve on first use, so `easycls --version` and `import easycls` stay
# fast: torch and fastai are imported only when training or predicting.
_LAZY = {"fit": ".train", "save": ".snapshot", "load": ".bundle", "Predictor": ".bundle",
         "export": ".export", "compare_runs": ".compare"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'easycls' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
