"""What a `model.json` may hold, checked before any tensor or model is built.

A run directory can come from anywhere (a colleague, a download, an attacker). Loading it
reads JSON and safetensors only, and every value is checked first: a wrong type, an
out-of-range number, lengths that disagree with the classes, or an architecture that is not
a plain name in timm's local registry (a hub reference such as ``hf-hub:...`` would reach the
network) raise `BundleError` naming the file, the key and the form expected.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import timm

from .errors import UserError

__all__ = ["BundleError", "check_meta", "read_json_object", "CUSTOM", "MIN_SIZE", "MAX_SIZE",
           "MAX_CLASSES", "MAX_JSON_BYTES", "MAX_JSON_DEPTH"]

# Sane limits, checked before anything is parsed or built: a crafted file must not make easycls
# allocate gigabytes first (an input_size of 4096 costs several GB for one image; a million
# classes, a head of gigabytes).
MIN_SIZE, MAX_SIZE = 8, 2048
MAX_CLASSES = 100_000
MAX_JSON_BYTES = 16 << 20
MAX_JSON_DEPTH = 32
CUSTOM = "custom:"
# A timm name, optionally with a pretrained tag ("resnet18.a1_in1k"); no "/", no ":".
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)?")


class BundleError(UserError, ValueError):
    """A run directory's file that cannot be used; the message names the file and the key."""


def _depth(raw: bytes) -> int:
    """How deep the arrays and objects of a JSON text nest (brackets inside strings ignored),
    without parsing: vectorized, tens of milliseconds for the largest file allowed."""
    # Escapes out of the way (escaped backslashes first, so that `\\"` keeps its closing
    # quote): every quote left opens or closes a string.
    b = np.frombuffer(raw.replace(b"\\\\", b"").replace(b'\\"', b""), dtype=np.uint8)
    outside = np.cumsum(b == ord('"'), dtype=np.int32) % 2 == 0
    opens = ((b == ord("[")) | (b == ord("{"))) & outside
    closes = ((b == ord("]")) | (b == ord("}"))) & outside
    return int(np.cumsum(opens.astype(np.int32) - closes, dtype=np.int32).max(initial=0))


def read_json_object(path: Path) -> dict:
    """The JSON object in `path`, or BundleError saying why not (also when it is larger or
    nests deeper than a bundle's `model.json` may: checked before parsing)."""
    try:
        size = Path(path).stat().st_size
        if size > MAX_JSON_BYTES:
            raise BundleError(f"{path} is {size / 2**20:.1f} MB, over the {MAX_JSON_BYTES >> 20} "
                              "MB a model.json may hold: it is not one easycls wrote")
        raw = Path(path).read_bytes()
        if (depth := _depth(raw)) > MAX_JSON_DEPTH:
            raise BundleError(f"{path} nests {depth} levels deep, over the {MAX_JSON_DEPTH} a "
                              "model.json may: it is not one easycls wrote")
        data = json.loads(raw)
    except (OSError, UnicodeDecodeError) as e:
        raise BundleError(f"{path} cannot be read ({e})") from None
    except json.JSONDecodeError as e:
        raise BundleError(f"{path} is not valid JSON ({e}); write it again with `easycls fit` "
                          "or restore it from a copy") from None
    if not isinstance(data, dict):
        raise BundleError(f"{path} must hold a JSON object, found a {type(data).__name__}")
    return data


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _numbers(n: int, ok: Callable[[float], bool]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, list) and len(v) == n and all(_number(x) and ok(x) for x in v)


def _classes(v: Any) -> bool:
    return (isinstance(v, list) and 1 <= len(v) <= MAX_CLASSES
            and all(isinstance(c, str) and c for c in v) and len(set(v)) == len(v))


def _arch(v: Any) -> bool:
    if not isinstance(v, str):
        return False
    if v.startswith(CUSTOM):
        return len(v) > len(CUSTOM)
    return bool(_PLAIN_NAME.fullmatch(v)) and timm.is_model(v)


_KEYS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "arch": (_arch, "a timm model name known to this installation (as `easycls archs` lists "
                    "them; never a hub reference such as 'hf-hub:...' or 'timm/...'), "
                    "or 'custom:<Class>'"),
    "classes": (_classes, f"a list of 1 to {MAX_CLASSES:,} unique, non-empty strings"),
    "multi_label": (lambda v: isinstance(v, bool), "true or false"),
    "input_size": (lambda v: isinstance(v, int) and not isinstance(v, bool)
                   and MIN_SIZE <= v <= MAX_SIZE, f"an integer from {MIN_SIZE} to {MAX_SIZE}"),
    "mean": (_numbers(3, lambda x: True), "a list of 3 finite numbers (R, G, B)"),
    "std": (_numbers(3, lambda x: x > 0), "a list of 3 finite numbers > 0 (R, G, B)"),
}


def _shown(v: Any) -> str:
    if isinstance(v, list) and len(v) > 20:
        return f"a list of {len(v):,} items {json.dumps(v[:3])[:-1]}, ...]"
    text = json.dumps(v)
    return f"{type(v).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"


def _fail(path: Path, key: str, form: str, found: str) -> BundleError:
    return BundleError(f"{path}: {key!r} must be {form}, found {found}")


def check_meta(meta: Any, path: Path) -> dict:
    """`meta` (the parsed `model.json` at `path`) if every value has its expected form.

    Example:
        >>> check_meta({"arch": "hf-hub:x/y", ...}, Path("run/model.json"))  # doctest: +SKIP
        BundleError: run/model.json: 'arch' must be a timm model name known to ...
    """
    if not isinstance(meta, dict):
        raise BundleError(f"{path} must hold a JSON object, found a {type(meta).__name__}")
    for key, (ok, form) in _KEYS.items():
        if key not in meta:
            raise _fail(path, key, form, "nothing (the key is missing)")
        if not ok(meta[key]):
            raise _fail(path, key, form, _shown(meta[key]))
    _check_thresholds(meta, path)
    return meta


def _check_thresholds(meta: dict, path: Path) -> None:
    th, n = meta.get("thresholds"), len(meta["classes"])
    if th is None:
        return
    if not isinstance(th, dict):
        raise _fail(path, "thresholds", "null or an object", _shown(th))
    unit = _numbers(1, lambda x: 0 <= x <= 1)
    checks = {
        "per_class": (_numbers(n, lambda x: 0 <= x <= 1),
                      f"a list of {n} numbers from 0 to 1, one per class"),
        "global": (lambda v: unit([v]), "a number from 0 to 1"),
        "at_least_one": (lambda v: isinstance(v, bool), "true or false"),
    }
    for key, (ok, form) in checks.items():
        if key in th and not ok(th[key]):
            raise _fail(path, f"thresholds.{key}", form, _shown(th[key]))
