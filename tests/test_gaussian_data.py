"""The MFH data generator against an independent re-implementation of the protocol."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crossdistill.data.datamodules.gaussian import GaussianMFHDataModule
from crossdistill.data.generators import gaussian


def authors_exp1(seed: int, overlap: int, n: int):
    """The protocol of experiment 1 written out directly (z, x_b, x_a order)."""
    rng = np.random.RandomState(seed)
    a = rng.randn(500)[:20]
    z = rng.randn(n, 20)
    y = (z @ a > 0).astype(np.int64)
    x_b = rng.randn(n, 50)
    x_b[:, 0:10] = z[:, 0:10]
    x_a = rng.randn(n, 25)
    x_a[:, 10 - overlap : 20 - overlap] = z[:, 10 - overlap : 20 - overlap]
    return x_a, x_b, y


def authors_table2(seed: int, shared: int, teacher_only: int, n: int, n_test: int):
    """The Table-2 draws of the authors' script written out directly (z, x_a, x_b order).

    ``gauss/main_modify_gamma.py``: after seed(seed), a = ones; ``gen_mm_data`` draws
    train, then test, then the fresh student-stage data from the same stream.
    """
    rng = np.random.RandomState(seed)
    a = np.ones(500)[: teacher_only + shared]
    draws = []
    for size in (n, n_test, n):
        z = rng.randn(size, teacher_only + shared)
        y = (z @ a > 0).astype(np.int64)
        x_a = rng.randn(size, 50)
        x_a[:, 0 : teacher_only + shared] = z
        x_b = rng.randn(size, 50)
        x_b[:, 0:shared] = z[:, 0:shared]
        draws.append((x_a, x_b, y))
    return draws


def _assert_same(got, expected):
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-6)
    np.testing.assert_allclose(got[1], expected[1], rtol=1e-6)
    np.testing.assert_array_equal(got[2], expected[2])


@pytest.mark.parametrize(("shared", "teacher_only"), [(10, 10), (5, 15)])
def test_table2_draws_match_the_authors(shared, teacher_only):
    """Train, test and student-stage draws of the reproducer's Table 2 are the authors'."""
    layout = gaussian.modify_gamma_layout(shared, teacher_only)
    a = gaussian.draw_hyperplane(np.random.RandomState(0), layout.z_dim, "ones")
    rng = np.random.RandomState(44)
    ours = [gaussian.sample(layout, size, a, rng) for size in (64, 128, 64)]
    for got, expected in zip(ours, authors_table2(44, shared, teacher_only, 64, 128), strict=True):
        _assert_same(got, expected)


def test_table2_datamodule_draws_in_the_authors_order():
    """``experiment=mfh/table2`` (layout modify_gamma): the train split is the authors'
    first Table-2 draw of the seed, the test split the same draw from seed + 1."""
    dm = GaussianMFHDataModule(
        layout="modify_gamma",
        shared=10,
        teacher_only=10,
        teacher_dim=50,
        hyperplane="ones",
        n_train=64,
        n_test=128,
        seed=45,
    )
    dm.setup()
    for split, seed, size in (("train", 45, 64), ("test", 46, 128)):
        d = dm.datasets[split]
        expected = authors_table2(seed, 10, 10, size, size)[0]
        _assert_same((d.x_a.numpy(), d.x_b.numpy(), d.y.numpy()), expected)


def test_draw_order_is_explicit():
    assert (
        gaussian.gamma_layout(4).draw_order
        == gaussian.alpha_layout(10).draw_order
        == gaussian.STUDENT_FIRST
    )
    assert gaussian.modify_gamma_layout(10).draw_order == gaussian.TEACHER_FIRST
    # the Table-2 layout can be drawn in the experiment-1/2 order when asked for
    layout = gaussian.modify_gamma_layout(10, 10, draw_order=gaussian.STUDENT_FIRST)
    a = np.ones(layout.z_dim)
    x_a, x_b, _ = gaussian.sample(layout, 8, a, np.random.RandomState(1))
    rng = np.random.RandomState(1)
    rng.randn(8, 20)
    np.testing.assert_allclose(x_b[:, 10:], rng.randn(8, 50)[:, 10:], rtol=1e-6)
    with pytest.raises(ValueError, match="draw_order must be"):
        gaussian.modify_gamma_layout(10, 10, draw_order=("x_a", "x_a"))


@pytest.mark.parametrize("overlap", [0, 4, 10])
def test_exp1_layout_matches_protocol(overlap):
    layout = gaussian.gamma_layout(overlap)
    rng = np.random.RandomState(3)
    a = gaussian.draw_hyperplane(rng, layout.z_dim)
    x_a, x_b, y = gaussian.sample(layout, 64, a, rng)
    ea, eb, ey = authors_exp1(3, overlap, 64)
    np.testing.assert_allclose(x_a, ea, rtol=1e-6)
    np.testing.assert_allclose(x_b, eb, rtol=1e-6)
    np.testing.assert_array_equal(y, ey)
    assert layout.shared_teacher_columns == list(range(10 - overlap, 10))


def test_gammas_of_the_three_experiments():
    assert [round(gaussian.gamma_layout(o).gamma, 2) for o in (0, 2, 4, 6, 8, 10)] == [
        0.0,
        0.11,
        0.25,
        0.43,
        0.67,
        1.0,
    ]
    assert [gaussian.alpha_layout(k).gamma for k in (0, 10, 20, 30, 40)] == [
        1.0,
        0.5,
        1 / 3,
        0.25,
        0.2,
    ]
    layout = gaussian.modify_gamma_layout(5, 15)
    assert layout.gamma == 0.25 and layout.z_dim == 20


def test_alpha_and_table2_columns_hold_z():
    for layout in (gaussian.alpha_layout(20), gaussian.modify_gamma_layout(10, 10)):
        rng = np.random.RandomState(0)
        a = gaussian.draw_hyperplane(rng, layout.z_dim, "ones")
        x_a, x_b, y = gaussian.sample(layout, 500, a, rng)
        cols = [d for d, _ in layout.teacher_cols]
        # when x_a holds every decisive dim, its columns give y exactly
        if len(cols) == layout.z_dim:
            np.testing.assert_array_equal((x_a[:, cols] @ a > 0).astype(int), y)
        shared = [d for d, _ in layout.student_cols]
        np.testing.assert_allclose(x_b[:, shared], x_a[:, shared])
        # a noise column is uncorrelated with the shared ones
        assert abs(np.corrcoef(x_a[:, 45], x_b[:, 0])[0, 1]) < 0.15


def test_impossible_settings_fail_clearly():
    with pytest.raises(ValueError, match="0 <= overlap <= 10"):
        gaussian.gamma_layout(11)
    with pytest.raises(ValueError, match="teacher modality has 15 dims.*column 1[5-9]"):
        gaussian.gamma_layout(0, teacher_dim=15)
    with pytest.raises(ValueError, match="student modality has 5 dims"):
        gaussian.modify_gamma_layout(10, 10, student_dim=5)
    with pytest.raises(ValueError, match="data.layout must be one of"):
        GaussianMFHDataModule(layout="beta")
    with pytest.raises(ValueError, match="teacher_columns \\[60\\] out of range"):
        GaussianMFHDataModule(layout="alpha", teacher_dim=50, teacher_columns=[1, 60])


def test_datamodule_batches_and_column_filter():
    dm = GaussianMFHDataModule(
        layout="modify_gamma",
        shared=10,
        teacher_dim=50,
        hyperplane="ones",
        teacher_columns=list(range(10)),
        seed=1,
    )
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["teacher_input"].shape == (200, 10)
    assert batch["student_input"].shape == (200, 50)
    assert set(batch) == {"teacher_input", "student_input", "label", "index"}
    assert len(dm.datasets["test"]) == 1000 and dm.teacher_input_dim == 10


@pytest.mark.parametrize("batch_size", [None, 48])
def test_loader_batches_equal_collated_samples(batch_size):
    """The loaders fetch whole batches (``__getitems__``): the batches must be exactly those
    of collating the samples one by one, in the loader's order."""
    from torch.utils.data import default_collate

    dm = GaussianMFHDataModule(n_train=200, batch_size=batch_size, seed=3)
    dm.setup()
    torch.manual_seed(0)
    for split, loader in (("train", dm.train_dataloader()), ("test", dm.test_dataloader())):
        data = dm.dataset(split)
        batches = list(loader)
        assert sum(len(b["label"]) for b in batches) == len(data)
        for batch in batches:
            expected = default_collate([data[int(i)] for i in batch["index"]])
            assert set(batch) == set(expected)
            for key, value in expected.items():
                assert batch[key].dtype == value.dtype and torch.equal(batch[key], value), key
