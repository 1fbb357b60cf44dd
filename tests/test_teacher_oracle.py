"""custom.teacher.oracle (issue 5): the oracle classifier finds the window it is shown, attends to the emboli of
the window's centre slice only and hands the decision to the next embolus when one is masked; through the real
teacher its clusters are the emboli; the ceiling chooses its high threshold on validation and reports test."""
import numpy as np
import pytest
import torch

from custom.explain import window_slice_indices
from custom.io.errors import InputError
from custom.metrics import match_clusters
from custom.teacher import EmbolusOracle, OracleStudy, TeacherFactory, teacher_ceiling


@pytest.fixture(scope="module")
def study():
    """12 slices of 32 x 32 bright "contrast" (0.7-1.0); embolus 1 (2 x 3 x 3, value 0.4) on slices 4-5,
    embolus 2 (2 x 2 x 2, value 0.4) on slices 5-6: slice 5 shows both."""
    rng = np.random.default_rng(0)
    volume = rng.uniform(0.7, 1.0, size=(12, 32, 32)).astype(np.float32)
    labels = np.zeros(volume.shape, dtype=np.int64)
    labels[4:6, 5:8, 5:8] = 1
    labels[5:7, 20:22, 20:22] = 2
    volume[labels > 0] = 0.4
    windows = torch.from_numpy(volume)[window_slice_indices(12, 7)]  # (12, 7, 32, 32)
    return volume, labels, windows


def test_oracle_finds_the_window_under_scaling_and_masking(study):
    volume, labels, windows = study
    oracle = EmbolusOracle(bias=1.0)
    oracle.set_study(volume, labels)
    for alpha in (0.2, 1.0):
        assert oracle.window_of(alpha * windows).tolist() == list(range(12))
    masked = windows.clone()
    masked[:, :, 5:8, 5:8] = 0.0
    assert oracle.window_of(masked).tolist() == list(range(12))


def test_oracle_logit_is_the_strongest_centre_embolus_and_masking_hands_over(study):
    volume, labels, windows = study
    oracle = EmbolusOracle(bias=1.0)
    oracle.set_study(volume, labels)
    logits = oracle(windows).squeeze(1)
    # slice 5 shows both emboli: embolus 1 has 18 voxels x 0.4 = 7.2 in the window, embolus 2 has 8 x 0.4 = 3.2
    assert logits[5].item() == pytest.approx(7.2 - 1.0, abs=1e-4)
    assert logits[6].item() == pytest.approx(3.2 - 1.0, abs=1e-4)  # only embolus 2 on slice 6
    assert logits[0].item() == pytest.approx(-1.0) and logits[9].item() == pytest.approx(-1.0)  # no embolus on the centre slice
    window = windows[5:6].clone().requires_grad_(True)
    oracle(window).sum().backward()
    assert torch.equal(window.grad[0] != 0, torch.from_numpy(labels)[window_slice_indices(12, 7)][5] == 1)  # the max pool's winner only
    masked = windows[5:6].clone()
    masked[0][torch.from_numpy(labels)[window_slice_indices(12, 7)][5] == 1] = 0.0  # the Cutout fill over embolus 1
    assert oracle(masked).item() == pytest.approx(3.2 - 1.0, abs=1e-4)
    masked[0][torch.from_numpy(labels)[window_slice_indices(12, 7)][5] == 2] = 0.0
    assert oracle(masked).item() == pytest.approx(-1.0)


def test_teacher_with_the_oracle_recovers_both_emboli_in_two_rounds(study):
    volume, labels, _ = study
    oracle = EmbolusOracle(bias=1.0)
    oracle.set_study(volume, labels)
    factory = TeacherFactory(
        oracle, 0.05, neighbourhood=(3, 3, 3), min_voxels=1, min_cluster_voxels=1, max_center_distance_px=100.0,
        scale_to_grid=False, clf_threshold=0.5, n_steps=4, references=["fill"], n_noise=0, max_batch=8,
        windows_per_batch=1, autocast_dtype=None, channels_last=False, fold_batchnorm=False, mask_threshold=0.5,
    )
    explanation = factory(32, 32)(volume, study_id="oracle")
    assert explanation.window_rounds[5] == 2  # embolus 1 in round 1, embolus 2 after it was masked
    assert explanation.window_rounds[0] == 0 and explanation.window_rounds[4] == 1
    counts = match_clusters(explanation.mask_filtered, (labels > 0).astype(np.uint8))
    assert (counts.tp, counts.fp, counts.fn) == (2, 0, 0)
    assert not explanation.mask_filtered[labels == 0].any()  # attributions are zero off the emboli


SMALL = dict(
    neighbourhood=(3, 3, 3), min_voxels=1, min_cluster_voxels=10, max_center_distance_px=100.0, scale_to_grid=False,
    n_steps=4, references=["fill"], n_noise=0, max_batch=8, windows_per_batch=1, mask_threshold=0.5,
)


def test_ceiling_reports_rounds_and_filters_on_the_test_split(study):
    volume, labels, _ = study
    reference = (labels > 0).astype(np.uint8)
    studies = [OracleStudy("s", volume, reference, labels)]
    result = teacher_ceiling(studies, studies, high_thresholds=[0.05, 0.3], **SMALL)
    test = result["test"]
    assert [c["high_threshold"] for c in result["validation"]] == [0.05, 0.3] and result["high_threshold"] in (0.05, 0.3)
    # embolus 2 (8 voxels) is found in round 2 of window 5 and round 1 of window 6; the 10-voxel size filter removes it
    # after round 1 only window 6 has embolus 2, a vote of 1 / 2.005 on slice 6: below 0.5; round 2 of window 5 adds it
    assert result["best"]["round"] == 1 and (result["unfiltered"]["tp"], result["unfiltered"]["fp"]) == (1, 0)
    assert (test["per_round"][1]["unfiltered"]["tp"], test["per_round"][-1]["unfiltered"]["fp"]) == (2, 0)
    assert (result["filtered"]["tp"], result["filtered"]["fn"]) == (1, 1)
    assert result["size_filter_only"]["tp"] == 1 and result["distance_filter_only"]["tp"] == 1  # at the best round, 1
    assert test["per_round"][-1]["distance_filter_only"]["tp"] == 2 and test["per_round"][-1]["size_filter_only"]["tp"] == 1
    assert test["rounds_histogram"][:2] == [2, 1]  # windows 4 and 6 in one round, window 5 in two
    assert result["best"]["round"] == 1 and len(test["per_round"]) == 10
    with pytest.raises(InputError, match="validation and test studies"):
        teacher_ceiling([], studies, **SMALL)
    with pytest.raises(ValueError, match="positive"):
        teacher_ceiling(studies, studies, high_thresholds=[0.0], **SMALL)


def test_pointing_game_scores_the_oracle_one(study):
    """The project's pointing game hits on every positive slice when the classifier is the oracle (a check of the
    game's code: the pipeline's 0.00 is the trained classifier's)."""
    from custom.explain import IntegratedGradientsExplainer
    from custom.explain.pointing_game import pointing_game

    volume, labels, _ = study
    oracle = EmbolusOracle(bias=1.0)
    oracle.set_study(volume, labels)
    explainer = IntegratedGradientsExplainer(oracle, n_steps=4, references=["fill"], n_noise=0, max_batch=8, fold_batchnorm=False)
    result = pointing_game(explainer, [(volume, labels)], tolerance_px=0.0)
    assert (result.hits, result.total) == (3, 3) and result.distances_px == [0.0, 0.0, 0.0]


def test_pipeline_reads_an_unreadable_ceiling_as_not_run(tmp_path):
    import json

    from custom.pipeline.run import PipelineRun
    from custom.pipeline.teacher_stages import _ceiling

    run = PipelineRun(tmp_path / "w", "tiny")
    assert _ceiling(run) == {"reason": f"{run.path('teacher', 'eval', 'ceiling.json')} not found"}
    path = run.path("teacher", "eval", "ceiling.json")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"high_threshold": 0.1, "test": {}}))  # an older or broken layout
    reason = _ceiling(run)["reason"]
    assert str(path) in reason and "KeyError" in reason and "delete it" in reason


def test_ceiling_script_takes_the_teacher_components_arguments_from_the_bundle_configs():
    """``scripts/teacher_ceiling.py`` reads the bundle's ``teacher`` component (no list of its own): every
    argument but the classifier, its threshold and the precision settings, with overrides applied."""
    import importlib.util
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("teacher_ceiling_script", repo / "scripts" / "teacher_ceiling.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    settings, window = script.teacher_settings(["inference.json", "demo.json"], {"n_steps": 3, "cutout_fill": 0.25})
    assert settings["n_steps"] == 3 and settings["fill_value"] == 0.25 and settings["method"] == "gausslegendre"
    assert window == [100.0, 700.0] and not script.NOT_FROM_CONFIG & set(settings)
    assert {"neighbourhood", "min_cluster_voxels", "max_center_distance_px", "references", "max_rounds", "sigma", "seed"} <= set(settings)
    # every setting is an argument the factory accepts (unknown ones raise)
    TeacherFactory(EmbolusOracle(1.0), None, clf_threshold=0.5, autocast_dtype=None, channels_last=False, fold_batchnorm=False, **settings)
