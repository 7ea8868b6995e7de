"""scripts/gradcam.py: Grad-CAM maps (the SimAM paper's Figure 1) and SimAM weight maps of checkpoints."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.sweeps import checkpoint, one_error_line, tiny_sweep
from networks.attention import SimAM
from scripts import gradcam


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    return tiny_sweep(tmp_path_factory)


def test_gradcam_is_cam_for_a_global_pooling_head():
    """With GAP + linear after the layer, Grad-CAM's channel weights are the class's linear weights / (H*W) (Zhou et al.'s CAM)."""
    from torch import nn

    torch.manual_seed(0)
    features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 3, stride=2, padding=1))
    head = nn.Linear(6, 4)
    model = nn.Sequential(features, nn.AdaptiveAvgPool2d(1), nn.Flatten(), head).eval()
    x = torch.randn(1, 3, 20, 20)
    cam, probs = gradcam.grad_cam(model, x, features)
    cls = int(probs.argmax())
    with torch.no_grad():
        a = features(x)
        expected = torch.relu((head.weight[cls][:, None, None] * a[0]).sum(0))[None, None]
        expected = torch.nn.functional.interpolate(expected, size=(20, 20), mode="bilinear", align_corners=False)[0, 0]
    assert cam.shape == (20, 20) and float(cam.max()) == pytest.approx(1.0)
    torch.testing.assert_close(cam, expected / expected.max(), rtol=1e-5, atol=1e-6)


def test_simam_weight_map_is_what_simam_multiplies_by():
    module = SimAM(16, e_lambda=1e-4)
    x = torch.randn(2, 16, 7, 5)
    torch.testing.assert_close(module(x), x * gradcam.simam_weights(module, x), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_gradcam_script(sweep, tmp_path):
    from PIL import Image

    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 45, 3), dtype=np.uint8)).save(photo)
    out = tmp_path / "cam"
    argv = [str(checkpoint(sweep, "none")), str(checkpoint(sweep, "simam")), "--images", "val:0", str(photo), "--simam-layer", "last"]
    assert gradcam.main([*argv, "--out", str(out)]) == 0
    maps = np.load(out / "gradcam.npz")
    for i in (0, 1):
        assert maps[f"image/{i}"].shape == (32, 32, 3)  # the image as the model sees it (the run's image size)
        for j in (0, 1):
            cam = maps[f"gradcam/{i}/{j}"]
            assert cam.shape == (32, 32) and 0 <= cam.min() and cam.max() <= 1 + 1e-6
        assert maps[f"simam/{i}/1"].shape == (32, 32) and maps[f"simam_raw/{i}/1"].shape == (8, 8)  # ResNet-20's last stage: 8x8
        assert 0.5 < maps[f"simam_raw/{i}/1"].min() and maps[f"simam_raw/{i}/1"].max() < 1  # sigmoid(E_inv), E_inv >= 1/2
        assert f"simam/{i}/0" not in maps  # the plain network has no SimAM
    for name in ("gradcam.png", "simam.png"):
        assert (out / name).stat().st_size > 5_000
    assert gradcam.main([str(checkpoint(sweep, "simam")), "--images", "val:1", "--layer", "layer2", "--out", str(out / "l2")]) == 0
    assert np.load(out / "l2" / "gradcam.npz")["gradcam/0/0"].shape == (32, 32)


@pytest.mark.slow
def test_errors_are_one_line(sweep, tmp_path, capsys):
    ckpt = str(checkpoint(sweep, "none"))
    cases = [
        ([str(tmp_path / "missing.pth"), "--images", "val:0"], "checkpoint not found"),
        ([ckpt, "--images", "val:999"], "val:0 .. val:31"),
        ([ckpt, "--images", str(tmp_path / "nope.jpg")], "image not found"),
        ([ckpt, "--images", "val:0", "--layer", "layer9"], "layer9"),
        ([ckpt, "--images", "val:0", "--simam-layer", "last"], "none of the checkpoints has SimAM"),
        ([ckpt, "--images", "val:0", "--target", "10"], "has 10 classes"),
        ([ckpt], "--images"),
    ]
    for argv, needle in cases:
        assert gradcam.main([*argv, "--out", str(tmp_path / "out")]) == 2, argv
        assert needle in one_error_line(capsys), (argv, needle)
    assert not (tmp_path / "out").exists()  # nothing written on a mistake


def test_help_shows_the_examples(capsys):
    with pytest.raises(SystemExit) as stop:
        gradcam.main(["--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert "val:N" in out and "python scripts/gradcam.py" in out
