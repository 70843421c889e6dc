"""Where a first run on new data spends its seconds before its first optimizer step.

One `easycls.fit` in this fresh process, on an empty cache folder, with wall-clock marks:
the interpreter's start (from the process's creation time), the imports `easycls fit`
needs (torch, fastai, timm), listing the images, decoding them into the cache, building
the Learner, and the first training step; then the rest of the fit.

    EASYCLS_CACHE=$(mktemp -d) python benchmarks/first_step.py DATA OUT --epochs 1
Prints one JSON line (seconds). `python -X importtime -c "import easycls.train"` splits
the imports further.
"""

from __future__ import annotations

import time

T0 = time.time()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402

import psutil  # noqa: E402
from fastai.callback.core import Callback  # noqa: E402

import easycls.train as T  # noqa: E402  what `easycls fit` imports: torch, fastai, timm
from easycls.data import storage  # noqa: E402

T_IMPORTED = time.time()
spent: dict[str, float] = {}


def _timed(module, name: str) -> None:
    f = getattr(module, name)

    def timed(*args, **kwargs):
        start = time.time()
        try:
            return f(*args, **kwargs)
        finally:
            spent[name] = spent.get(name, 0.0) + time.time() - start
    setattr(module, name, timed)


class _FirstStep(Callback):
    order = -100

    def before_fit(self):
        spent.setdefault("@before_fit", time.time())

    def after_batch(self):
        if self.training:
            spent.setdefault("@first_step_done", time.time())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("data")
    p.add_argument("out")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--mixed-precision", default=None)
    a = p.parse_args()
    for module, name in [(T, "load_items"), (storage, "open_pixels"), (T, "PreparedData"),
                         (T, "_warn_leaks"), (T, "_build_learner"), (T, "_pick_lr"),
                         (T, "_final_metrics"), (T, "_write_run")]:
        _timed(module, name)
    t_fit = time.time()
    T.fit(a.data, out=a.out, arch="resnet18", pretrained=False, size=a.size, epochs=a.epochs,
          quiet=True, cbs=[_FirstStep()], mixed_precision=a.mixed_precision)
    t_end = time.time()
    t_before_fit, t_first_step = spent.pop("@before_fit"), spent.pop("@first_step_done")
    out = {
        "interpreter_start": T0 - psutil.Process().create_time(),
        "imports": T_IMPORTED - T0,
        "fit_call_to_training_loop": t_before_fit - t_fit,
        "first_step": t_first_step - t_before_fit,
        "fit_total": t_end - t_fit,
        **spent,
    }
    print(json.dumps({k: round(v, 2) for k, v in out.items()} | {"load": os.getloadavg()}))


if __name__ == "__main__":
    main()
