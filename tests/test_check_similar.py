"""The shifted-frame pass of near-duplicate search: frames of one scene are grouped, other
scenes are not, and the search finds its nearest neighbours exactly."""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import numpy as np

from easycls.check.findings import duplicate_groups
from easycls.check.hashing import scan
from easycls.check.planted import group_folder
from easycls.check.similar import aligned_scores, neighbour_pairs


def test_neighbour_pairs_are_each_rows_nearest_by_centred_cosine():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 6))
    pairs = neighbour_pairs(x, k=2)
    u = x - x.mean(1, keepdims=True)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    sims = u @ u.T
    np.fill_diagonal(sims, -2)
    want = {tuple(sorted((i, int(j)))) for i in range(30) for j in np.argsort(-sims[i])[:2]}
    assert {tuple(p) for p in pairs.tolist()} == want


def test_a_shifted_copy_lines_up_and_another_picture_does_not():
    rng = np.random.default_rng(1)
    big = np.kron(rng.uniform(0, 255, (10, 10)), np.ones((4, 4)))  # blocky: has detail
    grey = np.stack([big[:32, :32], big[3:35, 2:34], rng.uniform(0, 255, (32, 32))])
    detail, aligned = aligned_scores(grey.astype(np.uint8), np.array([[0, 1], [0, 2]]))
    assert detail[0] > 0.75 and aligned[0] > 0.99  # detail: over the overlap, 85 % of it
    assert detail[1] < 0.3 and aligned[1] < 0.3


def test_frames_of_one_scene_are_grouped_though_their_hashes_differ(tmp_path):
    root = group_folder(tmp_path / "g", n_classes=2, groups_per_class=3, per_group=5, seed=4)
    refs = sorted(str(p) for p in root.rglob("*.png"))
    scene = [Path(r).stem.rsplit("_", 1)[0] for r in refs]
    truth = {(i, j) for i, j in combinations(range(len(refs)), 2) if scene[i] == scene[j]}
    found = scan(refs)
    for shifted in (False, True):
        ids, _ = duplicate_groups(found, shifted=shifted)
        grouped = {(i, j) for i, j in combinations(range(len(refs)), 2) if ids[i] == ids[j]}
        if shifted:
            assert grouped == truth  # every frame with its scene, no scene with another
        else:
            assert len(grouped & truth) < 0.6 * len(truth)  # the hash alone misses many


def test_the_split_groups_the_frames_that_the_report_leaves_apart(tmp_path):
    from easycls.check.split import SPLIT_SHIFTED_MIN

    # 8 scenes of 8 frames: at the report's correlations two scenes fall into two groups
    # each (a random split could put them on both sides); at the split's, none does, and
    # still no two scenes are joined
    root = group_folder(tmp_path / "g", n_classes=2, groups_per_class=4, per_group=8, seed=0)
    refs = sorted(str(p) for p in root.rglob("*.png"))
    scene = [Path(r).stem.rsplit("_", 1)[0] for r in refs]
    found = scan(refs)

    def scenes_cut_and_joined(ids):
        groups_of_scene, scenes_of_group = {}, {}
        for g, s in zip(ids.tolist(), scene):
            groups_of_scene.setdefault(s, set()).add(g)
            scenes_of_group.setdefault(g, set()).add(s)
        return (sum(len(v) > 1 for v in groups_of_scene.values()),
                sum(len(v) > 1 for v in scenes_of_group.values()))

    assert scenes_cut_and_joined(duplicate_groups(found)[0]) == (2, 0)
    loose, _ = duplicate_groups(found, shifted_min=SPLIT_SHIFTED_MIN)
    assert scenes_cut_and_joined(loose) == (0, 0)
