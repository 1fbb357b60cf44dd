"""Pipeline profiles (custom.pipeline.run.load_profile): bad files and values are refused before any stage runs."""

from __future__ import annotations

import copy
import json
import runpy
from pathlib import Path

import pytest

from custom.pipeline.run import PROFILES, PipelineRun, ProfileError, load_profile, validate_profile
from custom.pipeline.stages import PipelineError

REPO = Path(__file__).resolve().parents[1]
TINY = json.loads((PROFILES / "tiny.json").read_text())


def _write(tmp_path: Path, profile: dict, name: str = "profile.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(profile))
    return path


def _mutated(change) -> dict:
    profile = copy.deepcopy(TINY)
    change(profile)
    return profile


@pytest.mark.parametrize("name", ["demo", "full", "paper", "tiny"])
def test_the_shipped_profiles_are_valid(name):
    assert load_profile(name) == json.loads((PROFILES / f"{name}.json").read_text())
    load_profile(name, synthetic=False)


def test_invalid_json_names_the_profile_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"cohort": ')
    with pytest.raises(ProfileError, match=rf"^{path}: cannot read the profile \(JSONDecodeError"):
        load_profile(str(path))


BAD = [
    ("missing_classifier", lambda p: p.pop("classifier"), r"classifier: missing"),
    ("missing_cohort", lambda p: p.pop("cohort"), r"cohort: missing"),
    ("missing_overrides", lambda p: p["student"].pop("overrides"), r"student\.overrides: missing"),
    ("missing_pointing_n_steps", lambda p: p["pointing_game"].pop("n_steps"), r"pointing_game\.n_steps: missing"),
    ("not_an_object", lambda p: p.update(teacher=["inference.json"]), r"teacher: must be a JSON object"),
    ("split_over_one", lambda p: p.update(split=[0.9, 0.9, 0.9]), r"split: must be three non-negative fractions"),
    ("split_negative", lambda p: p.update(split=[1.2, -0.2, 0.0]), r"split: must be three non-negative"),
    ("split_two", lambda p: p.update(split=[0.5, 0.5]), r"split: must be three"),
    ("workers_zero", lambda p: p.update(workers=0), r"workers: must be an integer >= 1, got 0"),
    ("nproc_text", lambda p: p.update(nproc_per_node="two"), r"nproc_per_node: must be \"auto\" or an integer >= 1, got 'two'"),
    ("annotated_fraction_zero", lambda p: p.update(annotated_fraction=0), r"annotated_fraction: must be a number in \(0, 1\], got 0"),
    ("annotated_fraction_above_one", lambda p: p.update(annotated_fraction=1.5), r"annotated_fraction: must be a number in \(0, 1\]"),
    ("epochs_negative", lambda p: p["classifier"]["overrides"].update(epochs=-1), r"classifier\.overrides\.epochs: must be an integer >= 1, got -1"),
    ("epochs_zero", lambda p: p["classifier"]["overrides"].update(epochs=0), r"classifier\.overrides\.epochs: must be an integer >= 1"),
    ("classifier_warmup_zero", lambda p: p["classifier"]["overrides"].update(warmup_iterations=0), r"classifier\.overrides\.warmup_iterations: must be an integer >= 1"),
    ("classifier_lr_zero", lambda p: p["classifier"]["overrides"].update(lr=0), r"classifier\.overrides\.lr: must be a number in \(0, inf\)"),
    ("classifier_batch_size_zero", lambda p: p["classifier"]["overrides"].update(batch_size=0), r"classifier\.overrides\.batch_size"),
    ("student_batch_size_zero", lambda p: p["student"]["overrides"].update(batch_size=0), r"student\.overrides\.batch_size: must be an integer >= 1"),
    ("finetune_iterations_zero", lambda p: p["finetune"]["overrides"].update(num_iterations=0), r"finetune\.overrides\.num_iterations"),
    ("warmup_zero", lambda p: p["random_init"]["overrides"].update(warmup_iterations=0), r"random_init\.overrides\.warmup_iterations"),
    ("learning_rate_negative", lambda p: p["finetune"]["overrides"].update(learning_rate=-1e-4), r"finetune\.overrides\.learning_rate"),
    ("sw_overlap_one", lambda p: p["student"]["overrides"].update(sw_overlap=1.0), r"student\.overrides\.sw_overlap: must be a number in \[0, 1\)"),
    ("patch_size_zero", lambda p: p["student"]["overrides"].update(patch_size=[0, 0, 0]), r"student\.overrides\.patch_size: must be three positive sizes"),
    ("teacher_n_steps_one", lambda p: p["teacher"]["overrides"].update(n_steps=1), r"teacher\.overrides\.n_steps: must be an integer >= 2"),
    ("data_list_key_typo", lambda p: p["teacher"]["overrides"].update(data_list_key=["train"]), r"teacher\.overrides\.data_list_key"),
    ("five_split_typo", lambda p: p["teacher"].update(five_references_split="tests"), r"teacher\.five_references_split"),
    ("n_studies_string", lambda p: p["cohort"].update(n_studies="many"), r"cohort\.n_studies: must be an integer >= 1, got 'many'"),
    ("n_studies_zero", lambda p: p["cohort"].update(n_studies=0), r"cohort\.n_studies: must be an integer >= 1"),
    ("n_studies_float", lambda p: p["cohort"].update(n_studies=8.5), r"cohort\.n_studies: must be an integer >= 1"),
    ("seed_negative", lambda p: p["cohort"].update(seed=-1), r"cohort\.seed: must be an integer >= 0"),
    ("shape_zero", lambda p: p["cohort"].update(shape="0,96,96"), r"cohort\.shape: must be three positive sizes"),
    ("positive_rate", lambda p: p["cohort"].update(positive_rate=1.5), r"cohort\.positive_rate: must be a number in \[0, 1\]"),
    ("slices_per_study_zero", lambda p: p["pointing_game"].update(slices_per_study=0), r"pointing_game\.slices_per_study"),
    ("ceiling_thresholds", lambda p: p.update(teacher_ceiling={"high_thresholds": [-0.1]}), r"teacher_ceiling\.high_thresholds"),
    ("calibrate_text", lambda p: p.update(calibrate_student_threshold="yes"), r"calibrate_student_threshold: must be true or false"),
    ("configs_typo", lambda p: p["classifier"].update(configs=["train.json", "demoo.json"]), r"classifier\.configs: \['demoo\.json'\] not found"),
    ("configs_empty", lambda p: p["student"].update(configs=[]), r"student\.configs: must be a non-empty list"),
    # monai.bundle run adds an unknown key silently: the student's rate name set on the classifier changed nothing
    ("classifier_learning_rate", lambda p: p["classifier"]["overrides"].update(learning_rate=1e-3),
     r"classifier\.overrides\.learning_rate: no such key in \['train\.json', 'demo\.json'\]"),
    ("student_lr", lambda p: p["finetune"]["overrides"].update(lr=1e-3), r"finetune\.overrides\.lr: no such key"),
    ("list_index_out_of_range", lambda p: p["classifier"]["overrides"].update({"train#preprocessing#transforms#9#prob": 0.0}),
     r"classifier\.overrides\.train#preprocessing#transforms#9#prob: no such key"),
]


@pytest.mark.parametrize(("name", "change", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_values_are_refused_when_the_profile_is_loaded(tmp_path, name, change, message):
    path = _write(tmp_path, _mutated(change), f"{name}.json")
    with pytest.raises(ProfileError, match=rf"^{path}: {message}") as caught:
        PipelineRun(tmp_path / "work", str(path))
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, PipelineError)
    assert not (tmp_path / "work").exists()  # nothing ran


def test_synthetic_cohort_keys_are_needed_only_without_an_rspect_folder(tmp_path):
    profile = _mutated(lambda p: p.update(cohort={"seed": 0}))
    with pytest.raises(ProfileError, match=r"cohort\.n_studies: missing"):
        validate_profile(profile, "p.json")
    validate_profile(profile, "p.json", synthetic=False)
    path = _write(tmp_path, profile)
    run = PipelineRun(tmp_path / "work", str(path), rspect_dir=str(tmp_path / "rspect"), boxes_csv=str(tmp_path / "boxes.csv"))
    assert not run.synthetic


def test_monai_expressions_in_overrides_are_left_to_the_bundle(tmp_path):
    profile = _mutated(lambda p: p["classifier"]["overrides"].update(epochs="$2 * 3", batch_size="@val_batch_size"))
    loaded = load_profile(str(_write(tmp_path, profile)))
    overrides = loaded["classifier"]["overrides"]
    assert overrides["epochs"] == "$2 * 3" and overrides["batch_size"] == "@val_batch_size"  # not evaluated or cast
    assert loaded == profile


def test_overrides_may_add_a_key_to_an_existing_mapping(tmp_path):
    """A nested id can give a component a keyword argument its config does not set (MONAI's own override rules)."""
    profile = _mutated(lambda p: p["classifier"]["overrides"].update({"cutout#max_holes": 2, "network_def#drop_rate": 0.1}))
    assert load_profile(str(_write(tmp_path, profile))) == profile


def test_cli_prints_the_profile_error_and_exits_1(tmp_path, capsys):
    path = _write(tmp_path, _mutated(lambda p: p.update(workers=0)))
    main = runpy.run_path(str(REPO / "scripts" / "pipeline.py"))["main"]
    with pytest.raises(SystemExit) as caught:
        main(work_dir=str(tmp_path / "work"), profile=str(path))
    assert caught.value.code == 1
    assert f"pipeline failed: {path}: workers: must be an integer >= 1, got 0" in capsys.readouterr().err


@pytest.mark.parametrize("profile", ["tiny", "demo", "full", "paper"])
@pytest.mark.parametrize("nproc", [1, 2])
def test_every_bundle_command_of_the_stages_names_keys_of_its_configs(profile, nproc) -> None:
    """The overrides the stage code builds (not only the profile's) must exist: ``monai.bundle run`` adds a
    misspelt key silently, so ``data_list_key`` on the student (whose key is ``datalist_key``) would change nothing."""
    import ast

    from custom.pipeline.run import PipelineRun, unknown_override_keys

    run = PipelineRun("/tmp/unused", profile)
    run.nproc = nproc  # the multi-GPU configs too (the paper profile asks for every GPU)
    checked = 0
    for stage in run.stages():
        command = list(stage.command or [])
        if "monai.bundle" not in command:
            continue
        config_files = ast.literal_eval(command[command.index("--config_file") + 1])
        keys = [arg[2:] for arg in command[command.index("--config_file") + 2:] if arg.startswith("--")]
        assert keys and not unknown_override_keys(keys, config_files), (stage.name, unknown_override_keys(keys, config_files))
        checked += 1
    assert checked >= 14  # classifier 2, teacher 3 or more, student 3 x 3
