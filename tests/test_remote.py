"""Training data in object storage, read through a real S3 API (moto's server on localhost)."""

from __future__ import annotations

import json
import uuid

import pytest
from conftest import TINY, upload_folder, write_class_folders

import easycls
from easycls.data import remote
from easycls.data.items import DataError
from easycls.data.prepare import read_path


@pytest.fixture(autouse=True)
def _fresh():
    remote.forget()  # each test brings its own bucket and environment
    yield
    remote.forget()


def _bucket() -> str:
    return f"b-{uuid.uuid4().hex[:12]}"


def test_split_folders_in_s3_read_like_the_local_folder(s3, split_folders):
    url = upload_folder(s3, split_folders, _bucket(), "data/split")
    here, there = read_path(split_folders), read_path(url)
    assert there.refs[0].startswith(url + "/train/")
    assert [r[len(url):] for r in there.refs] == [r[len(str(split_folders)):] for r in here.refs]
    assert there.labels == here.labels and there.is_valid == here.is_valid
    assert len(there.test_refs) == 5 and there.name == "split"


def test_csv_with_an_image_folder_in_s3(s3, tmp_path):
    write_class_folders(tmp_path / "images", classes=("a", "b"), per_class=3)
    rows = [f"{c}/{c}_{i}.png,{c}" for c in "ab" for i in range(3)]
    (tmp_path / "labels.csv").write_text("file,label\n" + "\n".join(rows) + "\n")
    url = upload_folder(s3, tmp_path, _bucket(), "set")
    table = read_path(f"{url}/labels.csv")
    assert table.refs == [f"{url}/images/{r.split(',')[0]}" for r in rows]
    assert [lab for (lab,) in table.labels] == list("aaabbb")


def test_fit_from_s3_trains_and_records_a_non_image(s3, tmp_path):
    folder = write_class_folders(tmp_path / "pets", per_class=6)
    (folder / "cat" / "notes.jpg").write_text("not an image")
    url = upload_folder(s3, folder, _bucket(), "pets")
    learn = easycls.fit(url, out=str(tmp_path / "run"), **{**TINY, "arch": "test_resnet"})
    assert learn.easycls.vocab == ["cat", "dog", "fox"]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["source"] == url
    skipped = (tmp_path / "run" / "skipped.txt").read_text()
    assert f"{url}/cat/notes.jpg\tnot an image" in skipped


def test_a_missing_bucket_is_one_clear_line(s3):
    with pytest.raises(remote.RemoteError, match=r"s3://no-such-bucket/x.*bucket does not exist"):
        read_path("s3://no-such-bucket/x")


def test_an_empty_prefix_says_where_it_looked(s3):
    bucket = _bucket()
    s3.create_bucket(Bucket=bucket)
    with pytest.raises(DataError, match=rf"nothing found under s3://{bucket}/none"):
        read_path(f"s3://{bucket}/none")


def test_missing_credentials_are_one_clear_line(s3, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance role to ask for
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    with pytest.raises(remote.RemoteError, match="no credentials: set AWS_ACCESS_KEY_ID"):
        read_path(f"s3://{_bucket()}/x")


def test_an_unreachable_endpoint_is_retried_then_stops(s3, monkeypatch):
    import socket
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore's own retries: not what is tested
    monkeypatch.setenv("EASYCLS_REMOTE_RETRIES", "2")
    pauses = []
    with pytest.raises(remote.RemoteError) as e:
        remote.retrying("s3://bkt/x", lambda: remote.filesystem("s3://bkt/x").ls("bkt"),
                        sleep=pauses.append)
    assert pauses == [0.5, 1.0]  # two more tries, each after a longer pause
    assert f"127.0.0.1:{port} (after 3 tries)" in str(e.value)
    assert "storage did not answer" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.slow
def test_cli_fit_s3_error_is_one_line(s3):
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-m", "easycls", "fit", "s3://no-such-bucket/data"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert lines == [lines[-1]] and "bucket does not exist" in lines[-1], done.stderr


@pytest.mark.slow
def test_s3_trains_like_the_same_folder_on_disk(s3, tmp_path):
    """The same folder from S3 and from disk, same seed, 3 epochs: the same accuracy (the
    digits figures of this check are in docs/performance.md)."""
    folder = write_class_folders(tmp_path / "pets", per_class=16)
    url = upload_folder(s3, folder, _bucket(), "pets")
    settings = {**TINY, "arch": "test_resnet", "lr": 3e-3, "epochs": 3}
    acc = {}
    for name, source in (("local", str(folder)), ("s3", url)):
        learn = easycls.fit(source, out=str(tmp_path / name), **settings)
        acc[name] = learn.easycls.metrics["accuracy"]
    assert acc["local"] > 0.5, acc
    assert abs(acc["s3"] - acc["local"]) <= 0.02, acc
