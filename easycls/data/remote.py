"""Object storage as a place for images: listing a prefix and reading objects through fsspec.

A remote location is a URL (``s3://bucket/prefix``; ``gs://`` and ``az://`` / ``abfs://``
when ``gcsfs`` / ``adlfs`` are installed). The endpoint and the credentials come from the
library's standard environment (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, ...), so any S3-compatible server works.

A listing is read once per process and kept: it gives the layouts their relative paths and
the pixel stores their fingerprints (the ETag and size of each object). Every failure that
is not one image's fault (an unreachable endpoint, a missing bucket, missing or refused
credentials) is a :class:`RemoteError` of one line; a transient network error is retried
``$EASYCLS_REMOTE_RETRIES`` times (default 5) with a growing pause before it becomes one.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from .items import DataError

__all__ = ["SCHEMES", "is_remote", "RemoteError", "MissingObject", "listing", "read_bytes",
           "fingerprint", "write_bytes", "filesystem", "retrying", "forget"]

# URL scheme -> (fsspec protocol, the package that provides it)
SCHEMES = {"s3": ("s3", "s3fs"), "gs": ("gcs", "gcsfs"), "gcs": ("gcs", "gcsfs"),
           "az": ("az", "adlfs"), "abfs": ("abfs", "adlfs"), "abfss": ("abfs", "adlfs")}
_URL = re.compile(r"^([a-z][a-z0-9+.-]*)://(.*)$")
_DEFAULT_RETRIES = 5
_FIRST_PAUSE = 0.5
_lock = threading.Lock()
_listings: dict[str, dict[str, str]] = {}
_filesystems: dict[tuple[str, int], Any] = {}


class RemoteError(DataError):
    """Object storage could not be reached or refused us: nothing to skip, the run stops."""


class MissingObject(FileNotFoundError):
    """One object is absent (an image that is skipped, not a failed run)."""


def is_remote(source: Any) -> bool:
    """True for ``scheme://...`` with a scheme fsspec reads object storage by."""
    found = _URL.match(str(source))
    return bool(found) and found.group(1).lower() in SCHEMES


def _split(url: str) -> tuple[str, str]:
    """(URL scheme, ``bucket/key`` path) of ``url``."""
    scheme, path = _URL.match(url).groups()
    return scheme.lower(), path.strip("/")


def filesystem(url: str) -> Any:
    """The fsspec filesystem for ``url``'s scheme, one per process (fork-safe: a DataLoader
    worker makes its own)."""
    scheme, _ = _split(url)
    protocol, package = SCHEMES[scheme]
    key = (protocol, os.getpid())
    with _lock:
        if key not in _filesystems:
            try:
                import fsspec

                # its own instance: fsspec's shared one would keep an old environment
                _filesystems[key] = fsspec.filesystem(protocol, skip_instance_cache=True)
            except ImportError as e:
                raise RemoteError(f"reading {url} needs the {package} package ({e}); install it "
                                  "with `pip install 'easycls[stream]'`") from None
        return _filesystems[key]


def forget() -> None:
    """Drop the listings and connections read so far (after the data or the environment
    changed within one process)."""
    with _lock:
        _listings.clear()
        _filesystems.clear()


def _retries() -> int:
    return int(os.environ.get("EASYCLS_REMOTE_RETRIES") or _DEFAULT_RETRIES)


def _why(e: BaseException) -> tuple[str, bool]:
    """(what to tell the user, whether trying again may help) for an error of the store."""
    text = f"{type(e).__name__}: {e}"
    low = text.lower()
    if "nosuchbucket" in low or "bucket does not exist" in low:
        return "the bucket does not exist: check the bucket name and the endpoint", False
    if any(w in low for w in ("nocredentials", "unable to locate credentials",
                              "partialcredentials")):
        return ("no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or "
                "AWS_PROFILE)"), False
    if any(w in low for w in ("invalidaccesskeyid", "signaturedoesnotmatch", "accessdenied",
                              "forbidden", "permissionerror", "expiredtoken")):
        return ("access denied: check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and the "
                "bucket's permissions"), False
    if isinstance(e, (ValueError, TypeError)) and "endpoint" in low:
        return "the endpoint URL is malformed: check AWS_ENDPOINT_URL", False
    return (f"the storage did not answer ({text.splitlines()[0][:200]}): check the network "
            "and AWS_ENDPOINT_URL"), True


def _endpoint() -> str:
    where = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
    return f" at {where}" if where else ""


def retrying(url: str, work: Callable[[], Any], sleep: Callable[[float], None] = time.sleep
             ) -> Any:
    """``work()``, tried again after a transient error with a growing pause, at most
    ``$EASYCLS_REMOTE_RETRIES`` times; then a :class:`RemoteError` naming ``url``.

    Raises:
        MissingObject: the object is absent (never retried).
        RemoteError: a permanent failure, or a transient one that outlasted the retries.
    """
    pause = _FIRST_PAUSE
    for attempt in range(_retries() + 1):
        try:
            return work()
        except (FileNotFoundError, MissingObject) as e:
            if "bucket" in str(e).lower():
                raise RemoteError(f"cannot read {url}{_endpoint()}: {_why(e)[0]}") from None
            raise MissingObject(str(url)) from None
        except RemoteError:
            raise
        except Exception as e:  # noqa: BLE001  botocore, aiohttp and OS errors alike
            why, transient = _why(e)
            if not transient or attempt == _retries():
                tries = f" (after {attempt + 1} tries)" if transient else ""
                raise RemoteError(f"cannot read {url}{_endpoint()}{tries}: {why}") from None
            sleep(pause)
            pause *= 2
    raise AssertionError("unreachable")


def listing(url: str) -> dict[str, str]:
    """Every object below ``url``, as ``{relative path: "etag:size"}``; read once per process.

    Raises:
        RemoteError: the prefix holds nothing, or the storage cannot be read.
    """
    url = url.rstrip("/")
    with _lock:
        if url in _listings:
            return _listings[url]
    fs, (_, path) = filesystem(url), _split(url)
    found = retrying(url, lambda: fs.find(path, detail=True))
    n = len(path) + 1
    files = {name[n:]: f"{info.get('ETag', '')}:{info.get('size', 0)}"
             for name, info in found.items()
             if info.get("type") != "directory" and name.startswith(path + "/")}
    if not files:
        raise RemoteError(f"nothing found under {url}{_endpoint()}: check the bucket and the "
                          "prefix (`aws s3 ls` it)")
    with _lock:
        _listings[url] = files
    return files


def fingerprint(ref: str) -> str:
    """What identifies an object's content: its ETag and size from a listing already read,
    else from the storage."""
    with _lock:
        for url, files in _listings.items():
            if ref.startswith(url + "/") and ref[len(url) + 1:] in files:
                return files[ref[len(url) + 1:]]
    try:
        info = retrying(ref, lambda: filesystem(ref).info(_split(ref)[1]))
    except MissingObject:
        return "missing"
    return f"{info.get('ETag', '')}:{info.get('size', 0)}"


def read_bytes(ref: str) -> bytes:
    """The content of object ``ref``.

    Raises:
        MissingObject: it is absent.
        RemoteError: the storage cannot be read (after the retries).
    """
    return retrying(ref, lambda: filesystem(ref).cat_file(_split(ref)[1]))


def write_bytes(ref: str, data: bytes) -> None:
    """Write object ``ref`` (retried like a read)."""
    retrying(ref, lambda: filesystem(ref).pipe_file(_split(ref)[1], data))
