"""Can the demo student fit a handful of fixed embolus patches? A sanity check of the optimisation (issue 6).

Takes ``n_patches`` embolus-holding training patches through the student bundle's own training
transforms (``train.json`` + ``demo.json``), then trains the demo network on them alone with AdamW
and prints, every ``log_every`` steps, the voxel AUC and soft Dice on those same patches. A recipe
that cannot fit 8 patches cannot learn the cohort; one that can, may.

    python benchmarks/bench_student_overfit.py --work_dir work/demo --loss dicece --learning_rate 1e-2 --prior 0.01
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import fire
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_student_recipes import voxel_auc  # noqa: E402

CONFIGS = REPO / "bundles" / "dynunet_student" / "configs"


def fixed_patches(work_dir: Path, n_patches: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n_patches`` embolus-holding ``(image, one-hot label)`` patches from the annotated training studies."""
    from monai.bundle import ConfigParser
    from monai.utils import set_determinism

    set_determinism(seed)
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "demo.json"), str(CONFIGS / "random_init.json")])
    datalist = work_dir / "datalists" / "annotated.json"
    if not datalist.is_file():
        raise FileNotFoundError(f"{datalist}: run the pipeline first (make demo) so that its datalists exist")
    parser.update({"bundle_root": str(work_dir), "dataset_dir": str(work_dir / "prepared"), "datalist": str(datalist),
                   "annotated_fraction": 1.0, "cache_rate": 0.0, "train#random_transforms#0#neg": 0})
    transform = parser.get_parsed_content("train#preprocessing")
    images, labels = [], []
    for entry in parser.get_parsed_content("train#data"):
        for sample in transform(entry):
            if sample["label"][1].sum() > 0:
                images.append(torch.as_tensor(sample["image"]))
                labels.append(torch.as_tensor(sample["label"]))
        if len(images) >= n_patches:
            return torch.stack(images[:n_patches]), torch.stack(labels[:n_patches])
    raise ValueError(f"{datalist}: only {len(images)} embolus patches, {n_patches} asked for")


def main(
    work_dir: str = "work/demo",
    loss: str = "dicece",
    learning_rate: float = 1e-2,
    prior: float | None = 0.01,
    n_patches: int = 8,
    batch_size: int = 4,
    iterations: int = 200,
    log_every: int = 25,
    bf16: bool = True,
) -> None:
    """Fit the demo student to ``n_patches`` fixed patches; print the training voxel AUC and soft Dice.

    Args:
        work_dir: a pipeline run folder (``prepared/`` and ``datalists/annotated.json``).
        loss: ``dicece`` (Dice + cross-entropy, foreground Dice) or ``gdl`` (the paper's Generalized Dice).
        learning_rate: AdamW learning rate (constant).
        prior: initial foreground probability of the output layer (``custom.networks.set_foreground_prior``), or None.
        n_patches, batch_size, iterations, log_every: the problem size and schedule.
        bf16: forward pass under bfloat16 autocast (as the demo chooses on an AVX-512 CPU).
    """
    from monai.bundle import ConfigParser
    from monai.losses import DiceCELoss, GeneralizedDiceLoss

    from custom.networks import set_foreground_prior

    losses = {"dicece": lambda: DiceCELoss(include_background=False, softmax=True, batch=True),
              "gdl": lambda: GeneralizedDiceLoss(include_background=True, softmax=True, batch=True)}
    if loss not in losses:
        raise ValueError(f"loss must be one of {sorted(losses)}, got {loss!r}")
    images, labels = fixed_patches(Path(work_dir), n_patches)
    torch.manual_seed(0)
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "demo.json")])
    network = set_foreground_prior(parser.get_parsed_content("network_def"), prior)
    loss_fn = losses[loss]()
    optimizer = torch.optim.AdamW(network.parameters(), lr=learning_rate)
    dtype = torch.bfloat16 if bf16 else torch.float32
    foreground = labels[:, 1] > 0.5
    print(f"{n_patches} patches {tuple(images.shape[1:])}, embolus voxels {foreground.sum((1, 2, 3)).tolist()}; "
          f"loss {loss}, lr {learning_rate}, prior {prior}", flush=True)
    start = time.perf_counter()
    for step in range(1, iterations + 1):
        pick = torch.randint(0, n_patches, (batch_size,))
        with torch.autocast("cpu", dtype=dtype, enabled=bf16):
            logits = network(images[pick])
        value = loss_fn(logits.float(), labels[pick])
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        if step % log_every == 0 or step == iterations:
            with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=bf16):
                probability = torch.softmax(network(images).float(), 1)[:, 1]
            positives = probability[foreground]
            auc = voxel_auc([(probability.numpy(), foreground.numpy())])
            dice = (2 * probability[foreground].sum() / (probability.sum() + foreground.sum())).item()
            print(f"step {step:4d}  {time.perf_counter() - start:5.0f} s  loss {value.item():.4f}  voxel AUC {auc:.3f}  "
                  f"soft Dice {dice:.3f}  mean p embolus {positives.mean():.3f} / rest {probability[~foreground].mean():.4f}",
                  flush=True)


if __name__ == "__main__":
    fire.Fire(main)
