"""TeacherFeatureCache: build/lookup, key invalidation, interrupted builds."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from crossdistill.cache import TeacherFeatureCache

N, IN_DIM, DIM = 37, 6, 4


class TinyDataset(Dataset):
    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(N, IN_DIM, generator=g)

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int) -> dict:
        return {"teacher_input": self.x[i], "index": torch.tensor(i), "label": torch.tensor(0)}


def tiny_teacher(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(IN_DIM, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, DIM))


def make_cache(tmp_path, teacher, fingerprint="tiny:v1", preproc=None) -> TeacherFeatureCache:
    key = TeacherFeatureCache.make_key(teacher, fingerprint, preproc or {"norm": "none"})
    return TeacherFeatureCache(tmp_path, key, N, DIM)


def loader(shuffle: bool = True) -> DataLoader:
    return DataLoader(TinyDataset(), batch_size=5, shuffle=shuffle)


def test_build_and_lookup_match_teacher(tmp_path):
    teacher = tiny_teacher().train()
    cache = make_cache(tmp_path, teacher)
    assert not cache.exists()
    cache.build(teacher, loader(shuffle=True), progress=False)
    assert cache.exists() and teacher.training  # mode restored
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"{cache.key}.json",
        f"{cache.key}.npy",
    ]
    teacher.eval()
    idx = torch.tensor([5, 0, 36, 5, 17])
    with torch.no_grad():
        expected = teacher(TinyDataset().x[idx])
    got = cache.lookup(idx, device="cpu")
    assert got.dtype == torch.float32 and got.shape == (5, DIM)
    torch.testing.assert_close(got, expected)
    # a fresh object (another process) reads the published cache; 2-D index shapes work
    again = TeacherFeatureCache(tmp_path, cache.key, N, DIM)
    assert again.exists()
    torch.testing.assert_close(again.lookup(idx.view(1, 5))[0], expected)
    meta = json.loads(cache.meta_path.read_text())
    assert meta["complete"] and meta["num_written"] == N
    with pytest.raises(IndexError, match="out of range"):
        cache.lookup(torch.tensor([N]))


def test_key_invalidation(tmp_path):
    teacher = tiny_teacher()
    base = TeacherFeatureCache.make_key(teacher, "tiny:v1", {"norm": "none"})
    assert base == TeacherFeatureCache.make_key(tiny_teacher(), "tiny:v1", {"norm": "none"})
    assert base != TeacherFeatureCache.make_key(teacher, "tiny:v2", {"norm": "none"})
    assert base != TeacherFeatureCache.make_key(teacher, {"name": "tiny"}, {"norm": "none"})
    assert base != TeacherFeatureCache.make_key(teacher, "tiny:v1", {"norm": "mean"})
    with torch.no_grad():
        teacher[0].weight[0, 0] += 1e-3
    assert base != TeacherFeatureCache.make_key(teacher, "tiny:v1", {"norm": "none"})
    # buffers (BatchNorm running stats) count as weights too
    other = tiny_teacher()
    other[1].running_mean += 1.0
    assert base != TeacherFeatureCache.make_key(other, "tiny:v1", {"norm": "none"})
    # dict order does not matter
    k1 = TeacherFeatureCache.make_key(teacher, {"a": 1, "b": 2}, {"x": 1, "y": 2})
    assert k1 == TeacherFeatureCache.make_key(teacher, {"b": 2, "a": 1}, {"y": 2, "x": 1})


def test_interrupted_build_leaves_no_cache_and_rebuild_works(tmp_path):
    teacher = tiny_teacher().eval()
    cache = make_cache(tmp_path, teacher)
    calls = {"n": 0}

    def flaky(x):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("boom")
        return teacher(x)

    with pytest.raises(RuntimeError, match="boom"):
        cache.build(flaky, loader(), progress=False)
    assert not cache.exists()
    assert list(tmp_path.iterdir()) == []  # temp file removed
    with pytest.raises(FileNotFoundError, match="build"):
        cache.lookup(torch.tensor([0]))
    cache.build(teacher, loader(), progress=False)
    assert cache.exists()
    with torch.no_grad():
        torch.testing.assert_close(cache.lookup(torch.arange(N)), teacher(TinyDataset().x))


def test_hard_crash_leftovers_are_not_valid(tmp_path):
    teacher = tiny_teacher().eval()
    cache = make_cache(tmp_path, teacher)
    # a process killed after writing the array but before the sidecar
    np.save(cache.array_path, np.zeros((N, DIM), dtype=np.float32))
    assert not cache.exists()
    # a stale temp file of a dead process is cleaned up by the next build
    stale = tmp_path / f"{cache.key}.npy.tmp-999999999-deadbeef"
    stale.write_bytes(b"partial")
    cache.build(teacher, loader(), progress=False)
    assert cache.exists() and not stale.exists()


def test_missing_indices_fail_build(tmp_path):
    teacher = tiny_teacher().eval()
    cache = make_cache(tmp_path, teacher)
    partial = DataLoader(TinyDataset(), batch_size=5, drop_last=True)  # drops 2 samples
    with pytest.raises(RuntimeError, match=r"2/37 indices were never written \(first: \[35, 36\]"):
        cache.build(teacher, partial, progress=False)
    assert not cache.exists() and list(tmp_path.iterdir()) == []


def test_bad_teacher_output_and_batch(tmp_path):
    teacher = tiny_teacher().eval()
    cache = make_cache(tmp_path, teacher)
    with pytest.raises(ValueError, match=r"expected \(5, 4\)"):
        cache.build(lambda x: teacher(x)[:, :2], loader(), progress=False)
    with pytest.raises(KeyError, match="student_input"):
        cache.build(teacher, loader(), input_key="student_input", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_whole_batch_input_and_shape_mismatch(tmp_path):
    teacher = tiny_teacher().eval()
    cache = make_cache(tmp_path, teacher)
    cache.ensure(lambda b: teacher(b["teacher_input"]), loader(), input_key=None, progress=False)
    assert cache.exists()
    with pytest.raises(ValueError, match="does not match"):
        TeacherFeatureCache(tmp_path, cache.key, N + 1, DIM).exists()
