"""The CT centre-line localiser: resampling, soft-argmax, mapping to LPS, checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from spinexr.pipeline.ct.localise import (
    LocaliserConfig,
    LocaliserNet,
    build_localiser,
    index_to_lps,
    load_localiser,
    localise,
    lps_to_index,
    points_from_logits,
    resample_to,
    save_localiser,
    soft_argmax_per_slice,
)

TINY = LocaliserConfig(channels=(2, 4))


def _affine() -> np.ndarray:
    """A non-trivial affine: 2.5 mm slices going inferior, rotated rows/columns, offset."""
    t = np.deg2rad(20.0)
    a = np.eye(4)
    a[:3, 0] = [0.0, 0.0, -2.5]
    a[:3, 1] = np.array([-np.sin(t), np.cos(t), 0.0]) * 1.5  # along a column (row index)
    a[:3, 2] = np.array([np.cos(t), np.sin(t), 0.0]) * 1.5  # along a row (column index)
    a[:3, 3] = [-120.0, 40.0, 300.0]
    return a


def _peak_logits(d: int, h: int, w: int, rc: np.ndarray, sigma: float = 1.5) -> torch.Tensor:
    rows = torch.arange(h, dtype=torch.float64)[:, None]
    cols = torch.arange(w, dtype=torch.float64)[None, :]
    out = torch.empty(d, h, w, dtype=torch.float64)
    for k in range(d):
        r, c = rc[k]
        out[k] = -((rows - r) ** 2 + (cols - c) ** 2) / (2 * sigma**2)
    return out


def test_resample_shape_affine_and_window() -> None:
    vol = np.full((10, 20, 30), 1250, dtype=np.int16)
    vol[:, :, :15] = -1000
    res = resample_to(vol, _affine(), 3.0)
    # floor((n - 1) * spacing / 3) + 1 per axis: 2.5 mm slices, 1.5 mm pixels
    assert res.array.shape == (8, 10, 15)
    assert res.array.dtype == np.float32
    assert res.array.min() == 0.0 and res.array.max() == 1.0
    np.testing.assert_allclose(np.linalg.norm(res.affine[:3, :3], axis=0), [3.0, 3.0, 3.0])
    # voxel (0, 0, 0) stays where it was; new index i is old index i * scale
    np.testing.assert_allclose(res.affine[:3, 3], _affine()[:3, 3])
    np.testing.assert_allclose(
        index_to_lps(res.affine, [2.0, 3.0, 4.0]),
        index_to_lps(_affine(), np.array([2.0, 3.0, 4.0]) * res.scale),
    )


def test_resample_is_linear_along_an_axis() -> None:
    ramp = np.broadcast_to(np.arange(12, dtype=np.float64)[None, None, :] * 100.0, (4, 4, 12))
    a = np.diag([3.0, 3.0, 2.0, 1.0])  # columns 2 mm apart
    res = resample_to(ramp, a, 3.0, window=(0.0, 1100.0))
    np.testing.assert_allclose(res.array[0, 0], np.arange(8) * 1.5 * 100.0 / 1100.0, atol=1e-6)


def test_soft_argmax_finds_a_sub_voxel_peak() -> None:
    rng = np.random.default_rng(0)
    rc = rng.uniform(8.0, 24.0, size=(5, 2))
    logits = _peak_logits(5, 32, 40, rc)
    coords, conf = soft_argmax_per_slice(logits)
    assert coords.shape == (5, 2) and conf.shape == (5,)
    np.testing.assert_allclose(coords.numpy(), rc, atol=1e-6)
    # batched input gives the same per slice
    coords_b, _ = soft_argmax_per_slice(torch.stack([logits, logits]))
    assert coords_b.shape == (2, 5, 2)
    np.testing.assert_allclose(coords_b[1].numpy(), rc, atol=1e-6)


def test_confidence_follows_the_map_level() -> None:
    logits = torch.zeros(3, 8, 8)
    logits[0] += 6.0
    logits[2] -= 6.0
    _, conf = soft_argmax_per_slice(logits)
    assert conf[0] > 0.99 and abs(float(conf[1]) - 0.5) < 1e-6 and conf[2] < 0.01


def test_points_from_logits_map_a_peak_to_lps_through_the_affine() -> None:
    a = _affine()
    rc = np.array([[9.25, 11.5], [14.0, 8.75], [10.4, 13.1]])
    target = index_to_lps(a, np.column_stack([np.arange(3.0), rc]))
    points, conf = points_from_logits(_peak_logits(3, 24, 22, rc), a)
    np.testing.assert_allclose(points, target, atol=1e-5)
    np.testing.assert_allclose(lps_to_index(a, points)[:, 1:], rc, atol=1e-6)
    assert conf.shape == (3,)


def test_localise_maps_back_through_a_non_trivial_affine(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 'network' that outputs a peak at a known voxel of the resampled grid: localise returns
    that voxel's LPS point on every slice."""
    a = _affine()
    vol = np.zeros((12, 24, 20), dtype=np.int16)
    model = build_localiser(TINY)
    peak = np.array([3.2, 4.6])

    def fake_forward(self: LocaliserNet, x: torch.Tensor) -> torch.Tensor:
        _, _, d, h, w = x.shape
        return _peak_logits(d, h, w, np.tile(peak, (d, 1)), sigma=1.0).to(x.dtype)[None]

    monkeypatch.setattr(LocaliserNet, "forward", fake_forward)
    points, conf = localise(vol, a, model)
    res = resample_to(vol, a, 3.0)
    d = res.array.shape[0]
    assert points.shape == (d, 3) and conf.shape == (d,)
    expected = index_to_lps(res.affine, np.column_stack([np.arange(d), np.tile(peak, (d, 1))]))
    np.testing.assert_allclose(points, expected, atol=1e-3)
    # the same points through the original affine: old index = new index * scale
    old = np.column_stack([np.arange(d), np.tile(peak, (d, 1))]) * res.scale
    np.testing.assert_allclose(points, index_to_lps(a, old), atol=1e-3)


def test_network_shapes_on_sizes_that_are_not_multiples_of_the_stride() -> None:
    torch.manual_seed(0)
    model = build_localiser(LocaliserConfig(channels=(2, 4, 8)))
    assert model.stride == 4
    out = model(torch.rand(2, 1, 7, 13, 10))
    assert out.shape == (2, 7, 13, 10)


def test_save_load_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = build_localiser(TINY)
    model.train()
    model(torch.rand(2, 1, 8, 16, 16))  # move the batch-norm statistics off their defaults
    model.eval()
    vol = np.random.default_rng(0).integers(-1000, 1500, size=(9, 20, 18)).astype(np.int16)
    path = save_localiser(tmp_path / "loc.pt", model, {"seed": 1})
    loaded, training = load_localiser(path)
    assert loaded.config == TINY and training == {"seed": 1}
    p1, c1 = localise(vol, _affine(), model)
    p2, c2 = localise(vol, _affine(), loaded)
    np.testing.assert_array_equal(p1, p2)
    np.testing.assert_array_equal(c1, c2)


def test_load_refuses_other_files(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"arch": "pisov"}, path)
    with pytest.raises(ValueError, match="not a CT localiser"):
        load_localiser(path)
    torch.save({"arch": "ct-localiser", "version": 99}, path)
    with pytest.raises(ValueError, match="version"):
        load_localiser(path)


def test_config_round_trip_and_validation() -> None:
    cfg = LocaliserConfig(channels=(3, 6), spacing_mm=4.0, window=(-100.0, 900.0), logit_scale=5.0)
    assert LocaliserConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError):
        LocaliserConfig(channels=())
    with pytest.raises(ValueError):
        LocaliserConfig(window=(100.0, 0.0))
