"""The classifier localisation benchmark's sampling (issue 10): the oracle's masks travel with their images."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    threads = torch.get_num_threads()  # the benchmark pins 2 threads at import; keep the suite's setting
    spec = importlib.util.spec_from_file_location("bench_classifier_mil", REPO / "benchmarks" / "bench_classifier_mil.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.set_num_threads(threads)
    return module


def _study(depth=24, size=32, positive=range(10, 14), seed=0):
    """a volume whose every slice carries one bright marker pixel off the vertical midline; the mask
    marks that pixel on the positive slices only"""
    rng = np.random.default_rng(seed)
    volume = torch.zeros(depth, size, size)
    mask = np.zeros((depth, size, size), bool)
    labels = np.zeros(depth, int)
    for k in range(depth):
        y, x = int(rng.integers(0, size)), int(rng.integers(0, size // 2 - 2))
        volume[k, y, x] = 1.0
        if k in positive:
            mask[k, y, x] = True
            labels[k] = 1
    return volume, labels, mask


def test_oracle_batches_keep_each_mask_on_its_image(bench):
    train = [_study(seed=s) for s in range(3)]
    batches = bench.batches(train, bs=16, rng=np.random.default_rng(0), level_mix=0.5, crop=0, cutout=None, pair=0.5, with_mask=True)
    flipped = positives = 0
    for _ in range(6):
        x, y, m = next(batches)
        assert x.shape == (16, 7, 32, 32) and m.shape == (16, 1, 32, 32) and y.shape == (16, 1)
        for image, label, mask in zip(x, y, m):
            assert mask.sum() == label.item()  # one marked pixel on positive slices, none on negatives
            if label.item():
                positives += 1
                centre = image[3]  # the window's centre slice: the slice the label and mask belong to
                assert torch.equal(centre > 0, mask[0] > 0)
                flipped += int(torch.nonzero(mask[0])[0, 1].item() >= 16)
    assert positives > 10 and 0 < flipped < positives  # both orientations were drawn


def test_batches_without_oracle_yield_images_and_labels_only(bench):
    batch = next(bench.batches([_study()], bs=4, rng=np.random.default_rng(1), level_mix=0.5, crop=0, cutout=None))
    assert len(batch) == 2


def test_oracle_refuses_augmentations_that_would_misplace_masks(bench):
    with pytest.raises(ValueError, match="--oracle"):
        bench.run("b0s2mil", oracle=1.0, synth=0.5)


def test_oracle_refuses_networks_without_a_logit_map(bench):
    with pytest.raises(ValueError, match="logit map"):
        bench.run("b0s2", oracle=1.0, cohort="/nonexistent")


def test_scores_report_the_auc_within_levels(bench):
    """Three studies with positives at shifted levels: a network that reads the embolus (the centre slice's
    marker is brighter on positive slices) scores 1 overall and within levels; one that scores only the
    slice's level gets 0.5 within levels."""
    studies = []
    for s in range(3):
        volume, labels, mask = _study(seed=s, positive=range(8 + s, 12 + s))
        volume[torch.as_tensor(mask)] = 2.0
        studies.append((volume, labels, mask))
    assert all(volume.shape[0] <= 48 for volume, _, _ in studies)  # one batch per study (see _LevelOnly)
    auc, _, _, within = bench.scores(_CentreMax(), studies)
    assert auc == 1.0 and within == 1.0
    auc, _, _, within = bench.scores(_LevelOnly(), studies)
    assert within == 0.5 and auc > 0.5


class _CentreMax(torch.nn.Module):
    def forward(self, x):  # (B, 7, H, W): the brightest pixel of the window's centre slice
        return x[:, 3].amax(dim=(-2, -1)).reshape(-1, 1)


class _LevelOnly(torch.nn.Module):
    """Scores each mini-volume by the level bin of its position in its batch: the study's level while the
    benchmark scores a study's mini-volumes in one batch (up to 48; the studies here have 24 slices)."""

    def forward(self, x):
        from custom.metrics import level_bins

        return -torch.abs(torch.as_tensor(level_bins(x.shape[0]), dtype=torch.float32) - 9.5).reshape(-1, 1)
