"""`easycls check`: perceptual hashes, the near-duplicate index, findings and the report."""

from __future__ import annotations

import json
import shutil

import imagehash
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from easycls.check import check
from easycls.check.findings import duplicate_groups
from easycls.check.hashing import phash, scan
from easycls.check.index import groups_of, hamming, near_pairs
from easycls.check.planted import planted_folder, shapes_image
from easycls.cli import app

runner = CliRunner()


def test_phash_is_imagehash_phash_bit_for_bit():
    rng = np.random.default_rng(0)
    for i in range(12):
        img = shapes_image(i % 3, rng, size=int(rng.integers(20, 90)))
        assert phash(img) == int(str(imagehash.phash(img)), 16)


def _brute(hashes: np.ndarray, k: int) -> set:
    i, j = np.triu_indices(len(hashes), 1)
    d = hamming(hashes[i], hashes[j])
    return set(zip(i[d <= k].tolist(), j[d <= k].tolist()))


@pytest.mark.parametrize("k", [0, 3, 7, 10])
def test_index_finds_exactly_the_pairs_brute_force_finds(k):
    rng = np.random.default_rng(k)
    base = rng.integers(0, 2**63, 300, dtype=np.uint64) * np.uint64(2)
    near = base[:60].copy()
    for t in range(60):  # flip 0..12 bits: some pairs inside k, some outside
        for b in rng.choice(64, t % 13, replace=False):
            near[t] ^= np.uint64(1) << np.uint64(int(b))
    hashes = np.concatenate([base, near])
    pairs = near_pairs(hashes, k)
    assert {(int(i), int(j)) for i, j, _ in pairs} == _brute(hashes, k)
    assert (pairs[:, 2] == hamming(hashes[pairs[:, 0]], hashes[pairs[:, 1]])).all()
    assert len(pairs) >= sum(t % 13 <= k for t in range(60))


def test_groups_join_chains():
    ids = groups_of(5, np.array([[0, 1, 1], [1, 3, 2]]))
    assert ids[0] == ids[1] == ids[3] and len({ids[0], ids[2], ids[4]}) == 3


def test_scan_records_unreadable_sizes_and_blank(tmp_path):
    good, blank, bad = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"
    shapes_image(0, np.random.default_rng(0), 40).save(good)
    Image.new("RGB", (20, 100), (9, 9, 9)).save(blank)
    bad.write_bytes(b"not an image")
    s = scan([str(good), str(blank), str(bad)])
    assert s.unreadable == {2: "not an image"}
    assert s.sizes[1].tolist() == [20, 100] and s.contrast[1] == 0 and s.contrast[0] > 5
    assert s.hashes[0] == phash(Image.open(good).convert("RGB"))


def test_check_finds_planted_duplicates_and_writes_the_report(tmp_path):
    planted = planted_folder(tmp_path / "d", n_classes=3, per_class=20, dup_frac=0.15,
                             wrong_frac=0, size=48, seed=3)
    r = check(str(tmp_path / "d"), out=tmp_path / "out", say=lambda s: None)
    found = {frozenset(p.split("/d/", 1)[1] for p in g) for g in r["duplicates"]}
    assert {frozenset(p) for p in planted["duplicates"]} <= found
    assert len(found) == len(planted["duplicates"])  # nothing else grouped
    assert r["leakage"] == [] and r["conflicting_labels"] == []
    saved = json.loads((tmp_path / "out" / "check.json").read_text())
    assert saved["duplicates"] == r["duplicates"] and saved["label_issues"] is None
    md = (tmp_path / "out" / "check.md").read_text()
    assert "Worth a look: duplicates" in md and "--split-by duplicates" in md
    assert Image.open(tmp_path / "out" / "worst_cases.png").size[0] > 0


def test_same_layout_in_another_colour_is_not_a_duplicate(tmp_path):
    img = np.asarray(shapes_image(0, np.random.default_rng(5), 48))
    Image.fromarray(img).save(tmp_path / "a.png")
    Image.fromarray(img).save(tmp_path / "a.jpg", quality=70)
    Image.fromarray(img[..., ::-1].copy()).save(tmp_path / "swapped.png")  # BGR: same grey-ish
    s = scan([str(tmp_path / n) for n in ("a.png", "a.jpg", "swapped.png")])
    ids, pairs = duplicate_groups(s)
    assert ids[0] == ids[1] != ids[2]
    assert pairs[:, :2].tolist() == [[0, 1]]


def test_check_finds_leakage_conflicts_and_odd_images(tmp_path):
    root = tmp_path / "s"
    rng = np.random.default_rng(1)
    for split, n in (("train", 8), ("valid", 3)):
        for c in range(2):
            (root / split / f"c{c}").mkdir(parents=True)
            for i in range(n):
                shapes_image(c, rng, 48).save(root / split / f"c{c}" / f"{i}.png")
    shutil.copy(root / "train/c0/0.png", root / "valid/c0/copy.png")       # leakage
    shutil.copy(root / "train/c1/1.png", root / "train/c0/mislabelled.png")  # conflict
    (root / "train/c1/broken.png").write_bytes(b"\x89PNG broken")
    Image.new("RGB", (16, 16), (200, 10, 10)).save(root / "train/c1/tiny.png")
    Image.fromarray(rng.integers(0, 255, (40, 300, 3), dtype=np.uint8)).save(
        root / "train/c0/wide.png")
    r = check(str(root), out=tmp_path / "out", say=lambda s: None)
    assert [sorted(g["splits"]) for g in r["leakage"]] == [["train", "valid"]]
    assert r["leakage"][0]["paths"][1].endswith("valid/c0/copy.png")
    assert [sorted(map(tuple, g["labels"])) for g in r["conflicting_labels"]] == [
        [("c0",), ("c1",)]]
    assert [x["path"].rsplit("/", 1)[1] for x in r["unreadable"]] == ["broken.png"]
    assert [x["path"].rsplit("/", 1)[1] for x in r["tiny"]] == ["tiny.png"]
    assert [(x["width"], x["height"]) for x in r["extreme"]] == [(300, 40)]
    assert [x["path"].rsplit("/", 1)[1] for x in r["blank"]] == ["tiny.png"]
    status = {v["finding"]: v["status"] for v in r["verdicts"]}
    assert status["leakage"] == status["unreadable"] == "problem"
    assert status["imbalance"] == "ok"
    assert "Fix before training" in (tmp_path / "out" / "check.md").read_text()


def test_cli_check_writes_the_folder_and_fails_in_one_line(tmp_path):
    planted_folder(tmp_path / "d", n_classes=2, per_class=8, dup_frac=0.25, wrong_frac=0,
                   size=40)
    result = runner.invoke(app, ["check", str(tmp_path / "d"), "--out", str(tmp_path / "o"),
                                 "-q"])
    assert result.exit_code == 0, result.output
    assert "4 groups of exact or near-duplicate images" in result.output
    assert {"check.json", "check.md", "worst_cases.png"} <= {
        p.name for p in (tmp_path / "o").iterdir()}
    result = runner.invoke(app, ["check", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "error:" in result.output
