"""A training run resumed from a checkpoint draws new random samples (custom.resume.reseed_when_resumed)."""

from __future__ import annotations

import torch
from ignite.engine import Engine, Events
from monai.data import DataLoader, Dataset
from monai.handlers import CheckpointLoader
from monai.transforms import RandGaussianNoised
from monai.utils import set_determinism
from torch.utils.data import WeightedRandomSampler

from custom.resume import reseed_when_resumed
from custom.transforms import MixUpPrepareBatch


def _run(tmp_path, epochs: int, resume: bool) -> list[tuple]:
    """The bundles' order: everything seeded when the config is parsed, then the loader, then the reseed."""
    set_determinism(seed=0)
    dataset = Dataset([{"image": torch.full((1, 4, 4), float(i)), "label": torch.ones(1, 4, 4)} for i in range(16)],
                      transform=RandGaussianNoised(keys="image", prob=1.0))
    sampler = WeightedRandomSampler(torch.ones(16), num_samples=8, generator=torch.Generator().manual_seed(0))
    loader = DataLoader(dataset, batch_size=4, sampler=sampler, num_workers=0)
    mixup = MixUpPrepareBatch(alpha=0.4, seed=0)
    draws = []

    def step(engine: Engine, batch: dict) -> None:
        images, _ = mixup(batch)
        draws.append((engine.state.epoch, tuple(batch["image"][:, 0, 0, 0].round().int().tolist()), round(float(images.sum()), 4)))

    trainer = Engine(step)
    checkpoint = tmp_path / "checkpoint.pt"
    if resume:
        CheckpointLoader(str(checkpoint), {"trainer": trainer}).attach(trainer)
    reseed_when_resumed(trainer, 0, [sampler.generator, dataset, mixup])
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: torch.save({"trainer": e.state_dict()}, checkpoint))
    trainer.run(loader, max_epochs=epochs)
    return draws


def test_a_resumed_run_does_not_repeat_the_first_epochs(tmp_path) -> None:
    straight = _run(tmp_path, 2, resume=False)
    _run(tmp_path, 1, resume=False)
    after_epoch_1 = (tmp_path / "checkpoint.pt").read_bytes()
    resumed = _run(tmp_path, 2, resume=True)
    assert [d[0] for d in resumed] == [2, 2]
    first_epoch = [d[1:] for d in straight if d[0] == 1]
    assert all(a != b for a, b in zip((d[1:] for d in resumed), first_epoch))  # no batch of epoch 1 again
    (tmp_path / "checkpoint.pt").write_bytes(after_epoch_1)
    assert resumed == _run(tmp_path, 2, resume=True)  # reproducible for a given checkpoint


def test_a_run_from_scratch_keeps_its_seeded_streams(tmp_path) -> None:
    assert _run(tmp_path, 2, resume=False) == _run(tmp_path, 2, resume=False)
