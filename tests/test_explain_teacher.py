"""The whole-study teacher on a synthetic study where a hand-made classifier fires on bright blobs."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from torch import nn

from custom.explain.teacher import IExplainTeacher, explain_study
from custom.io.errors import InputError

N_STEPS = 16


class BlobDetector(nn.Module):
    """PE logit of the centre slice: the brightest 9x9 box (above 0.7) of slices k-1..k+1, weights 0.5/1/0.5.

    With global max pooling, IG sends all attribution to the strongest blob, so one blob is found per
    round; a blob on the centre slice fires, a blob on a neighbouring slice only does not.
    """

    def __init__(self) -> None:
        super().__init__()
        self.box = nn.Conv2d(7, 1, 9, padding=4, bias=False)
        weight = torch.zeros(1, 7, 9, 9)
        weight[0, 2], weight[0, 3], weight[0, 4] = 0.5 / 81, 1.0 / 81, 0.5 / 81
        self.box.weight.data = weight
        self.items = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.items += x.shape[0]
        return 50.0 * (torch.amax(self.box(torch.relu(x - 0.7)), dim=(-2, -1)) - 0.135)


def two_blob_study() -> np.ndarray:
    """12 slices of 32 x 32 at 0.5; blob A (1.0) and the fainter blob B (0.9), 7x7 px on slices 3-6."""
    volume = np.full((12, 32, 32), 0.5, np.float32)
    volume[3:7, 6:13, 6:13] = 1.0  # centroid (9, 9): 9.19 px from the image centre (15.5, 15.5)
    volume[3:7, 18:25, 18:25] = 0.9  # centroid (21, 21): 7.78 px
    return volume


def make_teacher(classifier: nn.Module, **kwargs) -> IExplainTeacher:
    settings = dict(
        high_threshold=0.05, n_steps=N_STEPS, neighbourhood=(5, 5, 5), min_voxels=20,
        min_cluster_voxels=20, max_center_distance_px=20.0, windows_per_batch=3, max_batch=40,
    )
    settings.update(kwargs)
    return IExplainTeacher(classifier, **settings)


def test_two_blobs_in_two_rounds():
    volume = two_blob_study()
    classifier = BlobDetector()
    result = make_teacher(classifier)(volume)
    blob_a = np.zeros(volume.shape, bool)
    blob_a[3:7, 6:13, 6:13] = True
    blob_b = np.zeros(volume.shape, bool)
    blob_b[3:7, 18:25, 18:25] = True
    np.testing.assert_array_equal(result.mask_unfiltered, (blob_a | blob_b).astype(np.uint8))
    np.testing.assert_array_equal(result.mask_filtered, result.mask_unfiltered)
    assert set(np.unique(result.round_map[blob_a])) == {1} and set(np.unique(result.round_map[blob_b])) == {2}
    np.testing.assert_array_equal(result.mask_after_round(1, filtered=False), blob_a.astype(np.uint8))
    assert result.rounds_run == 2
    np.testing.assert_array_equal(result.window_rounds, [0, 0, 0, 2, 2, 2, 2, 0, 0, 0, 0, 0])
    assert result.stop_reasons == ["negative"] * 12  # after both blobs are masked the classifier says no
    assert [(c["round"], c["voxels"], c["kept"]) for c in result.clusters] == [(1, 196, True), (2, 196, True)]
    assert all(c["confidence"] > 0.99 for c in result.clusters)
    assert result.heatmap.dtype == np.float32 and result.heatmap.shape == volume.shape
    assert result.heatmap[blob_a].min() > 0.7 and result.heatmap[~(blob_a | blob_b)].max() == 0.0
    # negative slices cost one forward pass each, positive windows n_steps per round plus the check after it
    assert classifier.items == 12 + int(result.window_rounds.sum()) * (N_STEPS + 1)
    summary = json.loads(json.dumps(result.summary()))
    assert summary["rounds_run"] == 2 and summary["positive_windows"] == 4 and len(summary["clusters"]) == 2


def test_filters_keep_the_unfiltered_mask():
    result = make_teacher(BlobDetector(), max_center_distance_px=8.5)(two_blob_study())  # A lies 9.19 px out
    assert [c["removed_by"] for c in result.clusters] == ["off_center", None]
    assert result.mask_unfiltered.sum() == 392 and result.mask_filtered.sum() == 196
    assert result.mask_filtered[4, 20, 20] == 1 and result.mask_filtered[4, 9, 9] == 0
    assert result.mask_after_round(1).sum() == 0  # round 1 found only A, which the filter removes
    assert result.mask_after_round(2).sum() == 196
    small = make_teacher(BlobDetector(), min_cluster_voxels=197)(two_blob_study())
    assert small.mask_filtered.sum() == 0 and small.mask_unfiltered.sum() == 392


def test_round_limit_and_negative_study():
    result = make_teacher(BlobDetector(), max_rounds=1)(two_blob_study())
    assert result.mask_unfiltered.sum() == 196 and result.rounds_run == 1
    assert set(result.stop_reasons) == {"negative", "max_rounds"}
    classifier = BlobDetector()
    empty = explain_study(np.full((5, 32, 32), 0.5, np.float32), classifier, high_threshold=0.05, n_steps=N_STEPS)
    assert empty.mask_unfiltered.sum() == 0 and empty.clusters == [] and empty.rounds_run == 0
    assert classifier.items == 5  # one forward pass per slice, no IG


def test_bad_input_names_the_study():
    teacher = make_teacher(BlobDetector())
    with pytest.raises(InputError, match="study-7: expected a"):
        teacher(np.zeros((32, 32), np.float32), study_id="study-7")
    volume = two_blob_study()
    volume[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="study-8: .*NaN"):
        teacher(volume, study_id="study-8")


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("clf_threshold", 5.0), ("clf_threshold", -1.0), ("clf_threshold", 1.0), ("clf_threshold", float("nan")),
        ("max_center_distance_px", -1.0), ("max_center_distance_px", 0.0), ("min_cluster_voxels", -5),
        ("min_voxels", -1), ("min_voxels", 2.5), ("high_threshold", 0.0), ("high_threshold", float("inf")),
        ("low_threshold", 0.5), ("low_threshold", -0.01), ("max_rounds", 0), ("max_rounds", 300),
        ("neighbourhood", (4, 5, 5)), ("neighbourhood", (5, 5)), ("sigma", 0.0), ("mask_threshold", 0.0),
        ("fill_value", 7.0), ("fill_value", float("nan")),
    ],
)
def test_out_of_range_settings_are_refused_naming_the_setting(setting, value):
    with pytest.raises(ValueError, match=f"^{setting} must .*got {re.escape(repr(value))}$"):
        make_teacher(BlobDetector(), **{setting: value})
    with pytest.raises(ValueError, match=f"^{setting} must"):
        IExplainTeacher.output_settings(**{"high_threshold": 0.05, setting: value})


def test_edge_settings_are_accepted_and_recorded():
    teacher = make_teacher(BlobDetector(), clf_threshold=0.0, min_voxels=0, min_cluster_voxels=0,
                           max_center_distance_px=float("inf"), low_threshold=0.05, fill_value=1.0)
    assert teacher.min_voxels == 0 and teacher.max_center_distance_px == float("inf")
    assert teacher.settings == IExplainTeacher.output_settings(
        0.05, n_steps=N_STEPS, neighbourhood=(5, 5, 5), min_voxels=0, min_cluster_voxels=0,
        max_center_distance_px=float("inf"), clf_threshold=0.0, low_threshold=0.05, fill_value=1.0,
    )


def test_factory_checks_the_settings_when_it_is_built():
    from custom.teacher import TeacherFactory

    with pytest.raises(ValueError, match="min_voxels must be non-negative, got -1"):
        TeacherFactory(BlobDetector(), 0.05, min_voxels=-1)
    with pytest.raises(ValueError, match="max_center_distance_px must be positive"):
        TeacherFactory(BlobDetector(), None, max_center_distance_px=-1.0)
    with pytest.raises(ValueError, match="clf_threshold must be a probability"):
        TeacherFactory(BlobDetector(), 0.05, clf_threshold=5.0)
    factory = TeacherFactory(BlobDetector(), 0.05, scale_to_grid=False, n_steps=N_STEPS, channels_last=False)
    assert factory.output_settings(32, 32) == factory(32, 32).settings


def test_mask_threshold_keeps_a_vote_exactly_at_the_threshold():
    from custom.explain.aggregation import aggregate_windows

    window_maps = torch.zeros(1, 7, 1, 2, dtype=torch.uint8)
    window_maps[0, :, 0, 0] = 1  # one window (centre 5 of 10 slices) found the voxel in round 1
    centers = torch.tensor([5])
    soft = aggregate_windows(window_maps > 0, centers, 10)
    at = float(soft[5, 0, 0])  # 0.4987: the own window alone
    above = float(np.nextafter(np.float32(at), np.float32(1.0)))
    _, round_map = make_teacher(BlobDetector(), mask_threshold=at)._aggregate(window_maps, centers, 10, 1)
    assert round_map[5, 0, 0] == 1 and round_map[:, 0, 1].sum() == 0  # soft >= mask_threshold
    assert round_map[:, 0, 0].sum() == 1  # the neighbours' smaller votes are not
    _, round_map = make_teacher(BlobDetector(), mask_threshold=above)._aggregate(window_maps, centers, 10, 1)
    assert round_map.sum() == 0
    _, round_map = make_teacher(BlobDetector(), mask_threshold=0.2)._aggregate(window_maps, centers, 10, 1)
    assert round_map[:, 0, 0].nonzero()[0].tolist() == [4, 5, 6]  # 0.4987 and one window's 0.228 one slice away
