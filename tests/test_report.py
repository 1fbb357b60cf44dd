"""Tests of custom.report: report.md and the self-contained report.html from a hand-made results dict."""

from __future__ import annotations

import base64
import copy
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from custom.io.errors import InputError
from custom.report import write_report
from custom.report.__main__ import main
from custom.report.figures import read_overlays
from custom.report.results import NotRun, number, section
from custom.report.tables import Table, ceiling_table, refinement_table

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _rates(sensitivity: float, ppv: float, f1: float) -> dict[str, float]:
    return {"sensitivity": sensitivity, "ppv": ppv, "f1": f1}


def _froc(scale: float) -> dict:
    fp = [0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0]
    return {"fp_per_study": fp, "sensitivity": [round(scale * (1 - 0.5 ** (i + 1)), 4) for i in range(7)],
            "average_sensitivity": scale * 0.8}


def _metrics(f1: float, strict_f1: float, n: int) -> dict:
    return {**_rates(f1 + 0.0511, f1 * 0.9, f1), "tp": 41, "fp": 17, "fn": 23, "fp_per_study": 1.4166,
            "strict": _rates(strict_f1 + 0.01, strict_f1 * 0.95, strict_f1), "froc": _froc(f1), "n_studies": n,
            "train_minutes": 3.2571}


def _run(first_f1: float, best_f1: float, unfiltered_f1: float) -> dict:
    per_round = [{"round": r, **_rates(0.4 + 0.05 * r, 0.8 - 0.04 * r, first_f1 + 0.02 * r)} for r in range(1, 6)]
    return {"per_round": per_round, "iteration1": _rates(0.4411, 0.7622, first_f1),
            "best": {"round": 4, **_rates(0.5834, 0.6552, best_f1)}, "filtered": _rates(0.5834, 0.6552, best_f1),
            "unfiltered": _rates(0.6198, 0.3305, unfiltered_f1), "rounds_histogram": {"0": 3, "1": 5, "2": 4, "3": 1,
                                                                                      "unit": "studies"},
            "seconds_per_study": 12.345}


def _ceiling() -> dict:
    """The teacher's ceiling section (oracle classifier) with distinctive F1 values."""
    def rates(f1: float) -> dict:
        return {"sensitivity": 0.8, "ppv": 1.0, "f1": f1, "tp": 8, "fp": 0, "fn": 2}

    return {"high_threshold": 0.05, "iteration1": rates(0.8123), "best": {"round": 2, **rates(0.8571)},
            "filtered": rates(0.8571), "unfiltered": rates(0.9861), "unfiltered_iteration1": rates(0.9091),
            "size_filter_only": rates(0.8572), "distance_filter_only": rates(0.9862), "strict": rates(0.8573),
            "rounds_histogram": [160, 22, 0], "n_studies": 25}


def _results() -> dict:
    """A results dict with distinctive numbers (every one of them must show up in the report)."""
    return {
        "profile": "demo", "work_dir": "/tmp/w", "created": "2025-01-02T03:04:05", "source": "synthetic",
        "command": "python scripts/pipeline.py --work_dir W --profile demo",
        "cohort": {"n_studies": 47, "splits": {"training": 31, "validation": 6, "test": 10}, "positive_studies": 29,
                   "positive_slice_fraction": 0.2719, "emboli_by_kind": {"central": 7, "lobar": 19, "segmental": 33},
                   "embolus_voxels": {"p25": 212.0, "median": 587.0, "p75": 1304.0, "max": 9071.0},
                   "embolus_hu": {"median": 43.0, "p5": 11.0, "p95": 88.0}, "artery_hu": {"min": 261.0, "max": 436.0},
                   "vein_hu": {"min": 118.0, "max": 197.0}, "confounders": {"flow_artifact": 5, "streak": 3},
                   "difficulty": "default (realistic)"},
        "classifier": {"slice_auc": 0.9173, "slice_f1": 0.7281, "threshold": 0.4129, "study_auc": 0.9517,
                       "pointing_hit_rate": 0.6843, "pointing_slices": 211, "train_minutes": 6.78,
                       "best_validation_auc": 0.9351, "within_level_auc": 0.8876,
                       "curve": [{"epoch": e, "minutes": 1.1 * e, "val_auc": 0.7 + 0.04 * e} for e in range(1, 6)],
                       "recipe": {"image_size": 96, "backbone": "tf_efficientnetv2_b0"}},
        "teacher": {"runs": {"1": _run(0.5123, 0.6173, 0.4312), "5": _run(0.5266, 0.6391, 0.4477)},
                    "high_threshold": 0.3141, "froc": _froc(0.5929), "ceiling": _ceiling()},
        "students": {"teacher": _metrics(0.6173, 0.3517, 10), "student": _metrics(0.7034, 0.4126, 10),
                     "finetuned": _metrics(0.7391, 0.4488, 8), "random_init": _metrics(0.6821, 0.3972, 8)},
        "baselines": {"hu_threshold": {**_metrics(0.0213, 0.0041, 10), "train_minutes": None,
                                       "rule": "20 <= HU <= 70"},
                      "slice_level": {"slice_auc": 0.7654, "n_bins": 20, "rule": "level"}},
        "detection_sites": {
            "sites": ["lymph_node", "vein", "outside"], "n_studies": 10, "threshold": 0.5, "min_share": 0.2,
            "volume_share": {"lymph_node": 0.000271, "vein": 0.0021, "outside": 0.6},
            "models": {"student": {"false_detections": {"lymph_node": 25, "vein": 46, "outside": 53},
                                   "true_detections": {"lymph_node": 0, "vein": 1, "outside": 0},
                                   "mimics_touched": {"lymph_node": {"touched": 28, "total": 52}},
                                   "emboli_touched": {"touched": 6, "total": 36}}}},
        "stages": [{"name": "synthesize", "seconds": 123.4, "peak_memory_mb": 1843.0, "status": "done",
                    "summary": "47 studies | in W/cohort"},
                   {"name": "teacher_1", "seconds": 0.0, "peak_memory_mb": None, "status": "skipped (outputs exist)",
                    "summary": ""}],
        "targets": [{"name": "classifier slice AUC", "value": 0.9173, "target": ">= 0.90", "met": True, "note": ""},
                    {"name": "student F1 >= teacher F1", "value": 0.7034, "target": ">= 0.6173", "met": True,
                     "note": ""},
                    {"name": "teacher filtered F1", "value": 0.4871, "target": ">= 0.50", "met": False,
                     "note": "short demo schedule"}],
        "overlays": "report_assets/overlays.npz",
    }


#: Formatted values of _results() that the report must show, in both files.
EXPECTED = ["0.935", "0.917", "0.728", "0.413", "0.952", "0.684", "211", "6.8", "0.512", "0.617", "0.431", "0.527",
            "0.639", "0.448", "0.703", "0.739", "0.682", "0.021", "0.352", "0.413", "0.449", "0.397", "0.004", "1.42",
            "3.3", "123.4", "1843", "0.487", "0.272", "587", "9071", "261 to 436", "118 to 197", "flow_artifact 5",
            "central 7", "12.3 s per study", "0.314", "47", "0.593", "4, best", "0.027 %", "28 of 52 (54 %)",
            "6 of 36 (17 %)", "46 (37 %)", "0.765", "0.888"]


def _write_overlays(path: Path, n: int = 2, size: int = 40) -> None:
    yy, xx = np.mgrid[:size, :size]
    arrays = {}
    for k in range(n):
        disc = ((yy - 20) ** 2 + (xx - 12 - 8 * k) ** 2 <= 16).astype(np.uint8)
        image = np.full((size, size), -800.0, np.float32)
        image[(yy - 20) ** 2 + (xx - 20) ** 2 <= 150] = 350.0
        image[disc > 0] = 40.0
        arrays |= {f"image_{k}": image, f"reference_{k}": disc, f"first_{k}": np.roll(disc, 1, axis=1),
                   f"final_{k}": disc | np.roll(disc, 3, axis=0), f"title_{k}": np.str_(f"study {k}, slice {10 + k}")}
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    work = tmp_path_factory.mktemp("report")
    _write_overlays(work / "report_assets" / "overlays.npz")
    (work / "results.json").write_text(json.dumps(_results()))
    markdown, html = write_report(work)
    return work, markdown.read_text(), html.read_text()


def test_report_files_and_figures(rendered):
    work, markdown, _ = rendered
    assert (work / "report.md").is_file() and (work / "report.html").is_file()
    links = re.findall(r"\]\((figures/[a-z_]+\.png)\)", markdown)
    assert sorted(links) == ["figures/classifier_curve.png", "figures/froc.png", "figures/overlays.png",
                             "figures/refinement.png"]
    for link in links:
        assert (work / link).read_bytes().startswith(PNG_SIGNATURE)
        assert (work / link).stat().st_mode & 0o777 == 0o644
    assert (work / "report.html").stat().st_mode & 0o777 == 0o644
    assert not list((work / "figures").glob(".*part*")), "temporary files left behind"


@pytest.mark.parametrize("value", EXPECTED)
def test_numbers_of_the_run_in_both_files(rendered, value):
    _, markdown, html = rendered
    assert value in markdown
    assert value in html


def test_html_is_self_contained(rendered):
    work, _, html = rendered
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) == 4
    pngs = [base64.b64decode(i) for i in images]
    assert all(p.startswith(PNG_SIGNATURE) for p in pngs)
    assert sorted(pngs) == sorted(p.read_bytes() for p in (work / "figures").glob("*.png"))
    assert not re.search(r'(?:src|href)\s*=\s*"(?!data:)', html)
    assert "<script" not in html and "<link" not in html and "url(" not in html and ".png" not in html
    checker = _TagBalance()
    checker.feed(html)
    assert checker.open == [] and checker.errors == []


class _TagBalance(HTMLParser):
    """Checks that every opened element is closed in order (void elements aside)."""

    VOID = {"meta", "img", "br"}

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_endtag(self, tag):
        if not self.open or self.open.pop() != tag:
            self.errors.append(tag)


def test_order_paper_columns_and_missed_target(rendered):
    _, markdown, html = rendered
    titles = re.findall(r"^## (.+)$", markdown, flags=re.M)
    assert [t.split()[0] for t in titles] == ["Targets", "Cohort", "Stage", "Stage", "Stage", "Stage", "Stage", "Where",
                                              "Fig.", "Fig.", "FROC", "Wall"]
    assert "Table 2 analog" in titles[3] and "Table 3 analog" in titles[4] and "Fig. 4" in titles[8]
    assert "ceiling" in titles[5]
    # the paper's numbers only in columns headed "paper (real data)": teacher 64.4, student 71.6, fine-tuned 75.5
    header = next(line for line in markdown.splitlines() if line.startswith("| Model | Test studies"))
    assert header.rstrip(" |").endswith("paper (real data) F1")
    row = next(line for line in markdown.splitlines() if line.startswith("| student fine-tuned"))
    assert row.rstrip(" |").endswith("0.755") and "| 0.739 |" in row
    assert "2 of 3 targets met. Missed: teacher filtered F1 (0.487, required >= 0.50)." in markdown
    assert '<tr class="missed">' in html and "MISSED" in html
    assert "47 studies \\| in W/cohort" in markdown  # pipes inside cells are escaped


def _render(tmp_path: Path, results: dict) -> tuple[str, str]:
    markdown, html = write_report(tmp_path, results)
    return markdown.read_text(), html.read_text()


def test_missing_teacher_still_renders(tmp_path):
    results = _results()
    del results["teacher"]
    results["overlays"] = None
    markdown, html = _render(tmp_path, results)
    table2 = markdown.split("## Stage 2: iExplain teacher, iterative")[1].split("##")[0]
    assert "Not run in this profile." in table2 and "|" not in table2
    assert "0.617" in markdown  # the student tables still show the teacher's pseudo-label scores
    assert "Fig. 4 analog" in markdown and "refinement.png" not in markdown and "overlays.png" not in markdown
    assert html.count("data:image/png;base64,") == 2  # classifier curve and FROC only
    assert "not run in this profile" in html.lower()


def test_reasons_and_partial_sections(tmp_path):
    results = _results()
    results["classifier"] = {"reason": "profile stops after prepare"}
    results["students"] = "student stage failed: out of memory"
    results["teacher"]["runs"]["5"] = "the demo profile explains with 1 reference"
    results["teacher"]["runs"]["1"]["best"]["f1"] = None
    markdown, html = _render(tmp_path, results)
    assert "Not run in this profile: profile stops after prepare" in markdown
    assert "not run in this profile: student stage failed: out of memory" in markdown
    assert "profile stops after prepare" in html
    assert "> The teacher with 5 IG references: not run in this profile: the demo profile explains with 1 reference" \
        in markdown
    rows = [line for line in markdown.splitlines() if line.startswith("| 5 |")]
    assert len(rows) == 4 and all("| not run | not run | not run |" in r for r in rows)
    assert "| 1 | 4, best | 0.583 | 0.655 | n/a |" in markdown
    hu_row = next(line for line in markdown.splitlines() if line.startswith("| HU threshold (baseline): 20 <= HU"))
    assert "0.021" in hu_row and "| n/a |" in hu_row  # no training time for a threshold


def test_detection_sites_rows(rendered):
    _, markdown, _ = rendered
    part = markdown.split("## Where the false detections lie")[1].split("\n## ")[0]
    assert "| share of the volume (10 test studies) |  | 0.027 % | 0.21 % | 60 % |" in part
    assert "| DynUNet student (pseudo-labels) | 124 | 25 (20 %) | 46 (37 %) | 53 (43 %) |" in part
    assert "| Model | lymph nodes | emboli |" in part
    assert "| DynUNet student (pseudo-labels) | 28 of 52 (54 %) | 6 of 36 (17 %) |" in part


def test_detection_sites_of_models_that_did_not_run_or_differ(tmp_path):
    results = _results()
    sites = results["detection_sites"]
    sites["models"]["teacher"] = "the teacher wrote no masks"
    sites["models"]["random_init"] = {"false_detections": {"vein": 1}, "mimics_touched": {"flow_artifact": {"touched": 1, "total": 3}},
                                      "emboli_touched": {"touched": 0, "total": 0}}
    sites["volume_share"]["lymph_node"] = 3e-6
    markdown, _ = _render(tmp_path, results)
    part = markdown.split("## Where the false detections lie")[1].split("\n## ")[0]
    assert "| iExplain teacher (pseudo-labels) | not run | not run | not run | not run |" in part
    assert "| share of the volume (10 test studies) |  | < 0.01 % |" in part
    assert "| Model | lymph nodes | flow artefacts | emboli |" in part  # the kinds of every model
    assert "| random init on annotated subset | n/a | 1 of 3 (33 %) | 0 of 0 |" in part
    assert "holds at least 20 % of its voxels" in part


def test_detection_sites_not_run_on_real_data(tmp_path):
    results = _results()
    results["detection_sites"] = {"reason": "needs the synthetic cohort's records of where the mimics are"}
    markdown, _ = _render(tmp_path, results)
    part = markdown.split("## Where the false detections lie")[1].split("##")[0]
    assert "Not run in this profile: needs the synthetic cohort's records" in part and "|" not in part
    results["detection_sites"]["sites"] = "lymph_node"
    del results["detection_sites"]["reason"]
    with pytest.raises(InputError, match="detection_sites.sites"):
        _render(tmp_path, results)


def test_failed_stage_and_cli(tmp_path):
    results = _results()
    results["stages"][1] |= {"status": "failed", "summary": "teacher_1: exit code 3"}
    results["overlays"] = None
    (tmp_path / "results.json").write_text(json.dumps(results))
    assert main(str(tmp_path)) == f"{tmp_path / 'report.md'}\n{tmp_path / 'report.html'}"
    markdown = (tmp_path / "report.md").read_text()
    assert "**Failed stages: teacher_1 (teacher_1: exit code 3).**" in markdown


def test_minimal_results_show_no_numbers(tmp_path):
    markdown, html = _render(tmp_path, {"profile": "demo"})
    assert markdown.count("ot run in this profile") == 11
    assert re.findall(r"\d\.\d", markdown) == []  # nothing but the run's numbers, and there are none
    assert "<img" not in html and not (tmp_path / "figures").exists()


def test_bad_results_name_the_file_and_key(tmp_path):
    with pytest.raises(InputError, match="results.json: results file not found"):
        write_report(tmp_path)
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(InputError, match="results.json: not valid JSON"):
        write_report(tmp_path)
    results = _results()
    results["teacher"]["runs"]["5"]["filtered"]["ppv"] = "high"
    (tmp_path / "results.json").write_text(json.dumps(results))
    with pytest.raises(InputError, match=r"results.json: teacher.runs.5.filtered.ppv is 'high', expected a number"):
        write_report(tmp_path)
    results = _results()
    results["students"]["student"]["froc"]["sensitivity"] = [0.5]
    with pytest.raises(InputError, match=r"students.student.froc: 7 fp_per_study values but 1 sensitivities"):
        write_report(tmp_path, results)


def test_bad_overlays_name_the_file(tmp_path):
    _write_overlays(tmp_path / "report_assets" / "overlays.npz")
    examples = read_overlays(tmp_path / "report_assets" / "overlays.npz")
    assert len(examples) == 2 and examples[1].title == "study 1, slice 11" and examples[0].final.dtype == bool
    arrays = dict(np.load(tmp_path / "report_assets" / "overlays.npz"))
    del arrays["first_1"]
    np.savez(tmp_path / "report_assets" / "overlays.npz", **arrays)
    with pytest.raises(InputError, match=r"overlays.npz: missing first_1"):
        write_report(tmp_path, _results())
    results = _results()
    results["overlays"] = "report_assets/absent.npz"
    assert "absent.npz not found" in _render(tmp_path, results)[0]


def test_results_accessors_and_table_markdown():
    assert number({"a": float("nan")}, "a") is None and number({"a": 3}, "a") == 3.0
    with pytest.raises(InputError, match="x.a is True, expected a number"):
        number({"a": True}, "a", "x")
    assert section({"s": {"reason": "why", "status": "skipped"}}, "s") == NotRun("why")
    assert section({"s": {"f1": 0.5}}, "s") == {"f1": 0.5}
    with pytest.raises(ValueError, match="every row"):
        Table("t", ["a", "b"], [["1"]])
    table = refinement_table(copy.deepcopy(_results()["teacher"]))
    assert table.rows[1][:5] == ["1", "4, best", "0.583", "0.655", "0.617"]
    assert table.rows[1][5:] == ["10, best", "0.635", "0.642", "0.638"]  # the paper's Table 2, 1 reference
    assert table.to_markdown().splitlines()[1].startswith("| :--- | ---: |")


def test_target_met_on_the_intersection_rule_only_is_flagged(tmp_path):
    """A student target met with strict F1 0 (a few huge blobs) is not reported as plainly met."""
    from custom.pipeline.results import _targets

    results = _results()
    results["students"]["student"] = _metrics(0.04, 0.0, 10)
    results["students"]["teacher"] = _metrics(0.0, 0.0, 10)
    results["students"]["finetuned"] = _metrics(0.03, 0.0, 8)
    results["students"]["random_init"] = _metrics(0.02, 0.25, 8)
    targets = {t["name"]: t for t in _targets(results, "full")}
    assert targets["student F1 >= teacher F1"]["met"] is True
    assert "strict F1 0" in targets["student F1 >= teacher F1"]["caveat"]
    assert targets["student F1 >= teacher F1"]["note"] == "strict F1 student 0.000"
    assert targets["fine-tuned beats random init"]["note"] == "strict F1 finetuned 0.000; strict F1 random init 0.250"
    assert "caveat" in targets["fine-tuned beats random init"]
    assert "caveat" not in targets["student F1 (full)"]  # missed: nothing to qualify
    assert "caveat" not in targets["classifier slice AUC"]
    # a student with strict matches meets the target plainly
    results["students"]["student"] = _metrics(0.04, 0.02, 10)
    assert "caveat" not in {t["name"]: t for t in _targets(results, "demo")}["student F1 >= teacher F1"]

    results["targets"] = list(targets.values())
    markdown, html = _render(tmp_path, results)
    row = next(line for line in markdown.splitlines() if line.startswith("| student F1 >= teacher F1"))
    assert "| met on the rule only |" in row and "strict F1 0: met on the intersection rule only" in row
    summary = next(line for line in markdown.splitlines() if "targets met." in line)
    assert "2 more met on the paper's intersection rule only" in summary
    assert "student F1 >= teacher F1; fine-tuned beats random init" in summary
    assert "met on the rule only" in html


def test_ceiling_table_puts_the_oracle_beside_this_runs_teacher():
    results = _results()
    table = ceiling_table(results["teacher"])
    rows = {row[0]: row[1:] for row in table.rows}
    assert rows["filtered, best iteration (2)"] == ["0.617", "0.800", "1.000", "0.857"]  # this run's best F1, then the oracle's
    assert rows["size filter only"][0] == "n/a" and rows["distance filter only"][-1] == "0.986"
    assert rows["unfiltered, iteration 1"][-1] == "0.909" and rows["filtered, strict (IoU > 0.5)"][-1] == "0.857"
    results["teacher"]["ceiling"] = {"reason": "needs the true embolus masks of the synthetic cohort"}
    assert all(row[2:] == ["not run"] * 3 for row in ceiling_table(results["teacher"]).rows)


def test_classifier_table_shows_the_slice_level_baseline_under_the_auc():
    from custom.report.tables import classifier_table

    classifier = {"slice_auc": 0.7001, "pointing_slices": 3}
    plain = classifier_table(classifier).to_markdown()
    with_level = classifier_table(classifier, {"slice_auc": 0.7291}).to_markdown()
    assert "level alone" not in plain
    lines = with_level.splitlines()
    auc = next(i for i, line in enumerate(lines) if line.startswith("| Slice AUC |"))
    assert lines[auc + 1].startswith("| Slice AUC of the slice's level alone") and "| 0.729 |" in lines[auc + 1]
