"""custom.precision: the autocast dtype is chosen by timing, and AutocastInferer keeps float32 around the network."""

from __future__ import annotations

import time

import pytest
import torch
from monai.inferers import SimpleInferer, SlidingWindowInferer

from custom.precision import (
    AutocastInferer,
    as_autocast_dtype,
    fastest_autocast_dtype,
    resolve_autocast_dtype,
    resolve_channels_last,
)


def _recording_resolver(result):
    """A stand-in for ``resolve_autocast_dtype`` that records its calls and returns ``result``."""
    calls = []

    def resolve(setting, network, input_shape, device, backward=False, agree_across_ranks=True, **kwargs):
        calls.append((setting, tuple(input_shape), backward, agree_across_ranks))
        return result

    return calls, resolve


def _sleeper(fp32_s: float, bf16_s: float):
    """A step whose duration depends only on whether CPU autocast is on: the decision logic, not this CPU."""

    def step():
        time.sleep(bf16_s if torch.is_autocast_enabled("cpu") else fp32_s)

    return step


def _slow_probe_side(monkeypatch, slow: torch.dtype | None) -> list:
    """Make the real autocast probe see ``slow`` (float32: None, or bfloat16) as clearly slower.

    The probe still runs the network each time (so what it does to the network is tested); only the
    decision is made independent of this CPU. Returns the list of probed devices.
    """
    import custom.precision as precision

    real = precision.fastest_autocast_dtype
    probes = []

    def probe(run, device, **kwargs):
        def step():
            run()
            reduced = torch.is_autocast_enabled("cpu")
            time.sleep(0.1 if reduced == (slow is not None) else 0.0)

        probes.append(str(device))
        return real(step, device, **kwargs)

    monkeypatch.setattr(precision, "fastest_autocast_dtype", probe)
    return probes


@pytest.mark.parametrize(
    "fp32_s, bf16_s, expected",
    [(0.03, 0.01, torch.bfloat16), (0.01, 0.03, None), (0.0200, 0.0195, None)],  # 3x faster, 3x slower, in the noise
)
def test_fastest_dtype_follows_the_clock_and_needs_a_clear_margin(fp32_s, bf16_s, expected):
    chosen, seconds = fastest_autocast_dtype(_sleeper(fp32_s, bf16_s), "cpu", repeats=2, min_speedup=1.1)
    assert chosen == expected
    assert set(seconds) == {"float32", "bfloat16"}
    assert seconds["float32"] == pytest.approx(fp32_s, abs=0.01) and seconds["bfloat16"] == pytest.approx(bf16_s, abs=0.01)


def test_explicit_settings_skip_the_probe():
    net = torch.nn.Conv2d(1, 1, 3)
    for setting, expected in [(None, None), ("float32", None), ("bfloat16", torch.bfloat16), (torch.float16, torch.float16)]:
        assert resolve_autocast_dtype(setting, net, [1, 1, 8, 8], "cpu") == expected
    with pytest.raises(ValueError, match="autocast_dtype must be"):
        as_autocast_dtype("int8")
    with pytest.raises(ValueError, match="float32, bfloat16 or float16"):
        as_autocast_dtype(torch.float64)


@pytest.mark.parametrize("slow, expected", [(None, torch.bfloat16), (torch.bfloat16, None)])
def test_auto_probe_leaves_the_network_untouched(monkeypatch, slow, expected):
    probes = _slow_probe_side(monkeypatch, slow)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.InstanceNorm3d(4), torch.nn.Conv3d(4, 2, 1))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.eval()
    chosen = resolve_autocast_dtype("auto", net, [2, 1, 8, 8, 4], "cpu", backward=True, repeats=1)
    assert chosen is expected and probes == ["cpu"]
    assert not net.training and all(p.grad is None for p in net.parameters())
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key])


class _DtypeRecorder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 2, 3, padding=1)
        self.seen = []

    def forward(self, x):
        out = self.conv(x)
        self.seen.append(out.dtype)
        return out


@pytest.mark.parametrize("inner", [SimpleInferer(), SlidingWindowInferer(roi_size=(8, 8, 4), sw_batch_size=2, overlap=0.5, mode="gaussian")])
def test_autocast_inferer_runs_the_network_in_bf16_and_returns_float32(inner):
    torch.manual_seed(1)
    net = _DtypeRecorder()
    x = torch.randn(1, 1, 12, 12, 6)
    reference = inner(x, net)
    net.seen.clear()
    out = AutocastInferer(inner, "bfloat16")(x, net)
    assert set(net.seen) == {torch.bfloat16}
    assert out.dtype == torch.float32 and out.shape == reference.shape
    torch.testing.assert_close(out, reference, atol=0.05, rtol=0.05)
    assert not torch.equal(out, reference)  # the network really ran in reduced precision


def test_autocast_inferer_float32_is_the_wrapped_inferer_exactly():
    torch.manual_seed(2)
    net = _DtypeRecorder()
    x = torch.randn(2, 1, 8, 8, 4)
    assert torch.equal(AutocastInferer(SimpleInferer(), None)(x, net), SimpleInferer()(x, net))
    assert set(net.seen) == {torch.float32}


def test_training_through_the_autocast_inferer_keeps_float32_weights_and_grads():
    torch.manual_seed(3)
    net = _DtypeRecorder()
    out = AutocastInferer(SimpleInferer(), torch.bfloat16)(torch.randn(2, 1, 8, 8, 4), net)
    out.mean().backward()
    assert all(p.dtype == torch.float32 and p.grad is not None and p.grad.dtype == torch.float32 for p in net.parameters())


def test_auto_probe_works_on_a_frozen_network_in_eval_mode(monkeypatch):
    """The teacher's classifier: frozen weights, gradients to the input only (Integrated Gradients)."""
    probes = _slow_probe_side(monkeypatch, None)
    net = torch.nn.Sequential(torch.nn.Conv2d(7, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.LazyLinear(1))
    net(torch.zeros(1, 7, 8, 8))
    net.eval().requires_grad_(False)
    running_mean = net[1].running_mean.clone()
    assert resolve_autocast_dtype("auto", net, [4, 7, 8, 8], "cpu", backward=True, repeats=1) is torch.bfloat16
    assert probes == ["cpu"]
    assert torch.equal(net[1].running_mean, running_mean) and not net.training


def test_teacher_factory_measures_auto_once_per_grid(monkeypatch):
    import custom.explain.teacher as teacher_module
    from custom.teacher import TeacherFactory

    calls, fake_resolve = _recording_resolver(torch.bfloat16)
    monkeypatch.setattr(teacher_module, "resolve_autocast_dtype", fake_resolve)
    classifier = torch.nn.Sequential(torch.nn.Conv2d(7, 1, 3), torch.nn.AdaptiveMaxPool2d(1), torch.nn.Flatten())
    factory = TeacherFactory(classifier, 1.0, scale_to_grid=False, autocast_dtype="auto", max_batch=12)
    teachers = [factory(32, 32), factory(32, 32), factory(40, 48)]
    assert calls == [("auto", (12, 7, 32, 32), True, False), ("auto", (12, 7, 40, 48), True, False)]
    assert all(t.autocast_dtype == torch.bfloat16 and t.explainer.autocast_dtype == torch.bfloat16 for t in teachers)
    fixed = TeacherFactory(classifier, 1.0, scale_to_grid=False, autocast_dtype=None)(32, 32)
    assert fixed.autocast_dtype is None and len(calls) == 2


def test_auto_inferer_measures_once_on_the_first_network_call(monkeypatch):
    import custom.precision as precision

    calls, fake_resolve = _recording_resolver(torch.bfloat16)
    monkeypatch.setattr(precision, "resolve_autocast_dtype", fake_resolve)
    net = _DtypeRecorder()
    inferer = AutocastInferer(SlidingWindowInferer(roi_size=(8, 8, 4), sw_batch_size=3, overlap=0.0), "auto")
    assert inferer.pending and inferer.dtype is None
    out = inferer(torch.randn(1, 1, 16, 16, 4), net)
    inferer(torch.randn(1, 1, 16, 16, 4), net)
    assert calls == [("auto", (3, 1, 8, 8, 4), False, False)]  # the patch batch the network sees, measured once
    assert not inferer.pending and inferer.dtype == torch.bfloat16
    assert out.dtype == torch.float32 and set(net.seen) == {torch.bfloat16}


@pytest.mark.parametrize("slow, expected", [(None, torch.bfloat16), (torch.bfloat16, None)])
def test_auto_inferer_really_measures_under_no_grad_for_training_probes(monkeypatch, slow, expected):
    probes = _slow_probe_side(monkeypatch, slow)
    torch.manual_seed(4)
    net = _DtypeRecorder()
    inferer = AutocastInferer(SimpleInferer(), "auto", backward=True)
    with torch.no_grad():
        out = inferer(torch.randn(2, 1, 8, 8, 4), net)
    assert not inferer.pending and inferer.dtype is expected and probes == ["cpu"]
    assert out.dtype == torch.float32 and all(p.grad is None for p in net.parameters())
    assert set(net.seen[-1:]) == {torch.float32 if expected is None else torch.bfloat16}  # the forward after the probe


def test_auto_inferer_passes_rank_agreement_to_the_probe_and_a_follower_adopts_the_measured_dtype(monkeypatch):
    import custom.precision as precision

    calls, fake_resolve = _recording_resolver(torch.bfloat16)
    monkeypatch.setattr(precision, "resolve_autocast_dtype", fake_resolve)
    net = _DtypeRecorder()
    training = AutocastInferer(SimpleInferer(), "auto", backward=True, agree_across_ranks=True)
    validation = AutocastInferer(SimpleInferer(), "auto", follow=training)
    training(torch.randn(2, 1, 8, 8, 4), net)
    assert calls == [("auto", (2, 1, 8, 8, 4), True, True)]
    net.seen.clear()
    validation(torch.randn(1, 1, 8, 8, 4), net)
    assert len(calls) == 1 and validation.dtype == torch.bfloat16 and net.seen == [torch.bfloat16]  # no second probe
    # a follower called before its leader has measured (evaluation without training) measures on its own
    unmeasured = AutocastInferer(SimpleInferer(), "auto", backward=True)
    alone = AutocastInferer(SimpleInferer(), "auto", follow=unmeasured)
    alone(torch.randn(1, 1, 8, 8, 4), net)
    assert calls[-1] == ("auto", (1, 1, 8, 8, 4), False, False) and unmeasured.pending
    with pytest.raises(TypeError, match="follow must be an AutocastInferer"):
        AutocastInferer(SimpleInferer(), "auto", follow=SimpleInferer())


def _gloo_rank(rank: int, body, init_file: str, results: dict) -> None:
    """One of two forked CPU (gloo) ranks whose autocast probes disagree: rank 0 "measures" float32, rank 1 bfloat16."""
    import torch.distributed as dist

    import custom.precision as precision

    torch.set_num_threads(1)
    precision.fastest_autocast_dtype = lambda step, device, **kw: (
        (None, torch.bfloat16)[rank], {"float32": 1.0, "bfloat16": (2.0, 0.5)[rank]}
    )
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        results[rank] = body(rank)
    finally:
        dist.destroy_process_group()


def _on_two_gloo_ranks(body, tmp_path) -> dict:
    """``{rank: body(rank)}`` of two forked gloo ranks (~1 s, not a torchrun's ~30 s)."""
    import torch.multiprocessing as mp

    with mp.Manager() as manager:
        results = manager.dict()
        mp.start_processes(_gloo_rank, args=(body, str(tmp_path / "init"), results), nprocs=2, join=True, start_method="fork")
        return dict(results)


def _inferer_dtypes(rank: int) -> tuple:
    net = _DtypeRecorder()
    training = AutocastInferer(SimpleInferer(), "auto", backward=True, agree_across_ranks=True)
    validation = AutocastInferer(SimpleInferer(), "auto", follow=training)
    independent = AutocastInferer(SimpleInferer(), "auto")
    for inferer in (training, validation, independent):
        inferer(torch.randn(1, 1, 8, 8, 4), net)
    return training.dtype, validation.dtype, independent.dtype


def test_ranks_agree_on_rank_zeros_measurement_under_gloo(tmp_path):
    """Two CPU ranks whose probes disagree: training and its follower use rank 0's choice; an unagreed inferer does not."""
    results = _on_two_gloo_ranks(_inferer_dtypes, tmp_path)
    assert results[0] == (None, None, None)  # rank 0 measured float32 (None)
    assert results[1] == (None, None, torch.bfloat16)


@pytest.mark.parametrize("bundle", ["classifier", "dynunet_student"])
def test_bundle_validation_follows_the_training_dtype_and_training_agrees_across_ranks(bundle):
    from pathlib import Path

    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(Path(__file__).resolve().parents[1] / "bundles" / bundle / "configs" / "train.json"))
    training = parser.get_parsed_content("train#inferer")
    validation = parser.get_parsed_content("validate#inferer")
    assert training.agree_across_ranks and training.backward
    assert validation.follow is training and not validation.agree_across_ranks


def _recording_agree_resolver(result):
    """Like :func:`_recording_resolver`, also recording whether the timed network was in training mode."""
    calls = []

    def resolve(setting, network, input_shape, device, backward=False, agree_across_ranks=True, **kwargs):
        calls.append((setting, tuple(input_shape), backward, agree_across_ranks, network.training))
        return result

    return calls, resolve


def test_agree_resolves_a_pending_auto_dtype_now_with_rank_agreement(monkeypatch):
    import custom.precision as precision

    calls, fake_resolve = _recording_agree_resolver(torch.bfloat16)
    monkeypatch.setattr(precision, "resolve_autocast_dtype", fake_resolve)
    net = _DtypeRecorder()  # in training mode, as a config builds it
    inferer = AutocastInferer(SlidingWindowInferer(roi_size=(8, 8, 4), sw_batch_size=3, overlap=0.0), "auto")
    assert inferer.agree(net, [3, 1, 8, 8, 4], "cpu") is torch.bfloat16
    # timed forward-only in eval mode (as the evaluator runs it), with rank agreement; the network's mode restored
    assert calls == [("auto", (3, 1, 8, 8, 4), False, True, False)] and net.training
    assert not inferer.pending and inferer.dtype is torch.bfloat16
    inferer(torch.randn(1, 1, 16, 16, 4), net)
    assert inferer.agree(net, [3, 1, 8, 8, 4], "cpu") is torch.bfloat16
    assert len(calls) == 1 and set(net.seen) == {torch.bfloat16}  # neither the first call nor a second agree measures
    training = AutocastInferer(SimpleInferer(), "auto", backward=True)
    training.agree(net, (2, 1, 8, 8, 4), torch.device("cpu"))
    assert calls[-1] == ("auto", (2, 1, 8, 8, 4), True, True, True) and not training.pending  # training steps: train mode


def test_agree_makes_no_collective_call_unless_the_dtype_is_pending(monkeypatch):
    import torch.distributed as dist

    import custom.precision as precision

    def no_collective(*args, **kwargs):
        raise AssertionError("a collective call")

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "broadcast_object_list", no_collective)
    monkeypatch.setattr(precision, "fastest_autocast_dtype", lambda step, device, **kw: (None, {"float32": 1.0, "bfloat16": 2.0}))
    net = _DtypeRecorder()
    for setting, expected in [("bfloat16", torch.bfloat16), ("float32", None), (None, None)]:
        inferer = AutocastInferer(SimpleInferer(), setting)
        assert inferer.agree(net, [2, 1, 8, 8, 4], "cpu") is expected and inferer.dtype is expected and not inferer.pending
    with pytest.raises(AssertionError, match="a collective call"):  # a pending dtype does broadcast rank 0's choice
        AutocastInferer(SimpleInferer(), "auto").agree(net, [2, 1, 8, 8, 4], "cpu")


def _agreed_before_uneven_shards(rank: int) -> tuple:
    """Both ranks agree together; then rank 0 infers two batches and rank 1, with an empty shard, none."""
    net = _DtypeRecorder()
    inferer = AutocastInferer(SlidingWindowInferer(roi_size=(8, 8, 4), sw_batch_size=2, overlap=0.0), "auto")
    agreed = inferer.agree(net, [2, 1, 8, 8, 4], "cpu")
    for _ in range(2 if rank == 0 else 0):  # no collective at a first call that rank 1 never makes
        inferer(torch.randn(1, 1, 16, 8, 4), net)
    return agreed, inferer.dtype, inferer.pending, sorted(map(str, set(net.seen)))


def test_agree_gives_every_rank_rank_zeros_choice_before_uneven_shards_under_gloo(tmp_path):
    """Rank 0's probe chooses float32, rank 1's bfloat16: both compute in float32, and rank 0's first call does not hang."""
    results = _on_two_gloo_ranks(_agreed_before_uneven_shards, tmp_path)
    assert results[0] == (None, None, False, ["torch.float32"])
    assert results[1] == (None, None, False, [])


_MULTI_PROCESS_CONFIGS = {
    "classifier evaluate": ("classifier", ["train.json", "evaluate.json", "multi_gpu_evaluate.json"], "validate#"),
    "classifier inference": ("classifier", ["inference.json", "multi_gpu_inference.json"], ""),
    "student evaluate": ("dynunet_student", ["train.json", "evaluate.json", "multi_gpu_evaluate.json"], "validate#"),
    "student inference": ("dynunet_student", ["inference.json", "multi_gpu_inference.json"], ""),
    "student calibrate": ("dynunet_student", ["inference.json", "multi_gpu_inference.json", "calibrate.json"], ""),
}


def _multi_process_parser(bundle: str, files: list, tmp_path, validation: list | None = None):
    """The configs with a tiny network and a datalist of two (4, 16, 20) studies (``validation``: that split instead)."""
    import json
    from pathlib import Path

    import numpy as np
    from monai.bundle import ConfigParser

    from custom.io.nifti import write_volume

    entries = []
    for i in range(2):
        write_volume(tmp_path / "images" / f"s{i}.nii.gz", np.zeros((4, 16, 20), dtype=np.int16), np.eye(4))
        write_volume(tmp_path / "labels" / f"s{i}.nii.gz", np.zeros((4, 16, 20), dtype=np.uint8), np.eye(4))
        entries.append({"image": f"images/s{i}.nii.gz", "label": f"labels/s{i}.nii.gz", "study_uid": f"s{i}", "slice_labels": [0] * 4})
    validation = entries if validation is None else validation
    (tmp_path / "datalist.json").write_text(json.dumps({"training": entries, "validation": validation, "test": entries}))
    parser = ConfigParser()
    parser.read_config([str(Path(__file__).resolve().parents[1] / "bundles" / bundle / "configs" / f) for f in files])
    tiny = ({"model_name": "tf_efficientnetv2_b0", "feature_stage": 1, "num_workers": 0} if bundle == "classifier"
            else {"network_filters": [4, 8, 8, 8, 8, 8], "patch_size": [32, 32, 16], "num_workers": 0})
    parser.update({"bundle_root": str(tmp_path / "bundle"), "dataset_dir": str(tmp_path), "autocast_dtype": "auto", **tiny})
    return parser


@pytest.mark.parametrize("name", list(_MULTI_PROCESS_CONFIGS))
def test_multi_process_evaluate_and_inference_agree_on_the_dtype_in_initialize(name, tmp_path, monkeypatch):
    """Every rank runs ``initialize`` together, so the multi-GPU evaluate and inference configs agree there on the
    dtype of the inferer their evaluator runs, with the network and the batch shape it receives (the first call
    may come on one rank only: uneven shards)."""
    import torch.distributed as dist

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU (gloo) run, where "auto" measures
    bundle, files, prefix = _MULTI_PROCESS_CONFIGS[name]
    parser = _multi_process_parser(bundle, files, tmp_path)
    initialize = parser["initialize"]
    agreeing = [i for i, step in enumerate(initialize) if ".agree(" in step]
    assert len(agreeing) == 1, initialize
    step = agreeing[0]
    assert step > next(i for i, s in enumerate(initialize) if "init_process_group" in s)
    assert initialize[step].startswith(f"$@{prefix}inferer.agree(@network, ")
    assert parser[f"{prefix}evaluator#inferer"] == f"@{prefix}inferer" and parser[f"{prefix}evaluator#network"] == "@network"

    calls = []
    monkeypatch.setattr(AutocastInferer, "agree", lambda self, network, shape, device: calls.append((self, network, list(shape), device)))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        parser.get_parsed_content(f"initialize#{step}")
        [(inferer, network, shape, device)] = calls
        assert inferer is parser.get_parsed_content(f"{prefix}inferer") and inferer.pending
        assert network is parser.get_parsed_content("network") and device == parser.get_parsed_content("device")
        # the classifier's first batch: up to the batch size of this rank's shard of 8 mini-volumes (7, 16, 20)
        assert shape == ([8, 7, 16, 20] if bundle == "classifier" else [4, 1, 32, 32, 16])
        if bundle == "dynunet_student" and prefix == "":  # every output present and current (the same on every rank): nothing to agree on
            output_dir = parser.get_parsed_content("output_dir")
            import json

            from custom.io.records import as_read_back
            from custom.student import student_output_paths

            findings = json.dumps({"settings": as_read_back(parser.get_parsed_content("output_settings"))})
            for uid in ("s0", "s1"):
                for kind, path in student_output_paths(output_dir, uid).items():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(findings) if kind == "clusters" else path.touch()
            rerun = _multi_process_parser(bundle, files, tmp_path)
            assert rerun.get_parsed_content(f"initialize#{step}") is None and len(calls) == 1
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("name", ["classifier evaluate", "classifier inference"])
def test_multi_process_classifier_agreement_on_an_empty_split_gives_the_datasets_error(name, tmp_path, monkeypatch):
    """Reading the first mini-volume for the batch shape keeps the dataset's clear error on an empty split."""
    import torch.distributed as dist

    from custom.io.errors import InputError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    bundle, files, prefix = _MULTI_PROCESS_CONFIGS[name]
    parser = _multi_process_parser(bundle, files, tmp_path, validation=[])
    parser["data_list_key"] = "validation"  # (MONAI's load_decathlon_datalist fails on an empty "test" split itself)
    step = next(i for i, s in enumerate(parser["initialize"]) if ".agree(" in s)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        with pytest.raises(RuntimeError) as raised:  # MONAI wraps the error of the component it instantiates
            parser.get_parsed_content(f"initialize#{step}")
    finally:
        dist.destroy_process_group()
    cause = raised.value.__cause__
    while cause is not None and not isinstance(cause, InputError):
        cause = cause.__cause__
    assert isinstance(cause, InputError) and "['validation']: no studies" in str(cause), repr(raised.value)


class _LayoutSleeper(torch.nn.Module):
    """A conv whose forward sleeps longer with contiguous weights: the decision logic, not this CPU."""

    def __init__(self, contiguous_s: float, channels_last_s: float) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(7, 2, 3)
        self.seconds = {True: channels_last_s, False: contiguous_s}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.conv.weight
        channels_last = weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
        assert x.is_contiguous()  # the probe feeds contiguous inputs, as the IG explainer does
        time.sleep(self.seconds[channels_last])
        return self.conv(x).amax(dim=(1, 2, 3))


@pytest.mark.parametrize("contiguous_s, channels_last_s, expected", [(0.05, 0.01, True), (0.01, 0.05, False)])
def test_channels_last_auto_keeps_the_clearly_faster_format(contiguous_s, channels_last_s, expected):
    net = _LayoutSleeper(contiguous_s, channels_last_s)
    assert resolve_channels_last("auto", net, [2, 7, 8, 8], "cpu", backward=True, repeats=3) is expected
    assert net.conv.weight.is_contiguous()  # the probe ran on a copy


def test_channels_last_settings_are_checked():
    net = torch.nn.Conv2d(7, 2, 3)
    assert resolve_channels_last(True, net, [1, 7, 8], "cpu") is True and resolve_channels_last(False, net, [1], "cpu") is False
    with pytest.raises(ValueError, match="true, false or 'auto'"):
        resolve_channels_last("yes", net, [1, 7, 8, 8], "cpu")
    with pytest.raises(ValueError, match="4D"):
        resolve_channels_last("auto", net, [1, 7, 8, 8, 8], "cpu")


def test_teacher_factory_measures_the_memory_format_once_per_grid(monkeypatch):
    import custom.explain.teacher as teacher_module
    from custom.explain.teacher import IExplainTeacher
    from custom.teacher import TeacherFactory

    calls = []

    def fake_resolve(setting, network, input_shape, device, autocast_dtype=None, backward=False, **kwargs):
        calls.append((setting, tuple(input_shape), autocast_dtype, backward))
        return input_shape[-1] == 32  # channels-last on the 32 px grid only

    monkeypatch.setattr(teacher_module, "resolve_channels_last", fake_resolve)
    classifier = torch.nn.Sequential(torch.nn.Conv2d(7, 1, 3), torch.nn.AdaptiveMaxPool2d(1), torch.nn.Flatten())
    factory = TeacherFactory(classifier, 1.0, scale_to_grid=False, autocast_dtype="bfloat16", channels_last="auto", max_batch=12)
    teachers = [factory(32, 32), factory(32, 32), factory(40, 48)]
    assert calls == [("auto", (12, 7, 32, 32), torch.bfloat16, True), ("auto", (12, 7, 40, 48), torch.bfloat16, True)]
    assert [t.channels_last for t in teachers] == [True, True, False]
    # the 40 x 48 teacher, built last, left the shared network contiguous; a 32 px teacher makes it channels-last again
    assert factory(32, 32).explainer.network[0].weight.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="channels_last"):
        IExplainTeacher(classifier, 1.0, channels_last="fast")


class _RankLayoutSleeper(torch.nn.Module):
    """A slice classifier whose contiguous / channels-last speeds are swapped on rank 1: the ranks' probes disagree."""

    def __init__(self, rank: int) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(7, 1, 3)
        fast, slow = 0.0, 0.03
        self.seconds = {True: fast, False: slow} if rank == 0 else {True: slow, False: fast}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.conv.weight
        time.sleep(self.seconds[weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()])
        return self.conv(x).amax(dim=(1, 2, 3)).reshape(-1, 1)


def _teacher_precision(rank: int) -> tuple:
    from custom.teacher import TeacherFactory

    factory = TeacherFactory(
        _RankLayoutSleeper(rank), 1.0, scale_to_grid=False, autocast_dtype="auto", channels_last="auto",
        max_batch=2, fold_batchnorm=False,
    )
    factory.agree_precision(16, 16)
    factory.agree_precision(16, 16)  # measured already: no second collective (rank 1 would otherwise hang alone)
    teacher = factory(16, 16)
    return teacher.autocast_dtype, teacher.channels_last


def test_teacher_ranks_take_rank_zeros_precision_under_gloo(tmp_path):
    """Rank 0 measures float32 and channels-last, rank 1 bfloat16 and contiguous; both ranks explain with rank 0's."""
    results = _on_two_gloo_ranks(_teacher_precision, tmp_path)
    assert results[0] == results[1] == (None, True)


def test_study_grids_come_from_the_headers_in_order(tmp_path):
    import numpy as np

    from custom.io.nifti import write_volume
    from custom.teacher.cohort import _study_grids

    entries = []
    for name, shape in [("a", (4, 16, 20)), ("b", (5, 16, 20)), ("c", (4, 24, 16))]:
        write_volume(tmp_path / f"{name}.nii.gz", np.zeros(shape, dtype=np.int16), np.eye(4))
        entries.append({"image": str(tmp_path / f"{name}.nii.gz")})
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti")
    entries.append({"image": str(tmp_path / "broken.nii.gz")})
    assert _study_grids(entries) == [(16, 20), (24, 16)]  # (height, width) of the (Z, Y, X) studies; the broken one left out


def _grids_with_a_failing_header_on_rank_one(entries, rank: int) -> list:
    import custom.teacher.cohort as cohort

    if rank == 1:  # a transient read failure on one rank only
        real_load = cohort.nib.load
        cohort.nib.load = lambda path, *a, **k: (_ for _ in ()).throw(OSError("transient")) if "c.nii" in str(path) else real_load(path, *a, **k)
    return cohort._agreed_study_grids(entries)


def test_ranks_measure_rank_zeros_study_grids_even_when_a_header_fails_on_one_rank(tmp_path):
    import functools

    import numpy as np

    from custom.io.nifti import write_volume

    entries = []
    for name, shape in [("a", (4, 16, 20)), ("c", (4, 24, 16))]:
        write_volume(tmp_path / f"{name}.nii.gz", np.zeros(shape, dtype=np.int16), np.eye(4))
        entries.append({"image": str(tmp_path / f"{name}.nii.gz")})
    results = _on_two_gloo_ranks(functools.partial(_grids_with_a_failing_header_on_rank_one, entries), tmp_path)
    assert results[0] == results[1] == [(16, 20), (24, 16)]  # rank 1 alone would have left (24, 16) out
