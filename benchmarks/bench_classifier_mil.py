"""In-memory side-by-side of slice-classifier recipes aimed at localisation (issue 10, item 6).

``bench_classifier_recipes.py`` trains candidates through the bundle; this one keeps the windowed
cohort in memory and trains plain PyTorch loops, so a candidate costs only its network's time and
more candidates fit in an hour. It asks whether a recipe makes the classifier *look at the embolus*:
for each candidate it prints validation slice AUC against training minutes, then on the held-out
test studies the slice AUC, the AUC within levels (``custom.metrics.within_level_auc``: what the
network knows beyond the level a slice lies at) and the pointing-game hit rate (top Integrated Gradients pixel, "fill"
reference, 16 steps, on or within 3 px of an embolus), with the median distance of the top pixel.

Candidates (``--kind``):

- ``b0s2``: ``custom.networks.SliceClassifier`` (EfficientNetV2-B0 to stage 2, max-pooled features, linear head)
- ``b0s2mil`` / ``b0s1mil`` / ``b0s3mil``: the same backbone with a per-position logit map (1x1 conv) and
  the maximum over positions (multiple-instance head): the slice logit must come from one place
- ``defect_b0s2mil``: a fixed stem adds each slice's grey-closing residual (closing(x) - x at 5 and 13 px,
  bright where a dark hole sits inside a bright structure, as an embolus in a contrast-filled artery)
- ``plainmil``: a small plain CNN with the multiple-instance head
- ``b0s2milvessel``: ``b0s2mil`` whose maximum runs only over logit-map positions near bright
  (contrast-filled, above about 200 HU) pixels of the centre slice: an image-derived prior, no labels

Label-free filling-defect prior (``--synth p``): a share p of the positive draws is replaced by a
negative mini-volume with one painted defect (``insert_defect``); ``--synth_pair True`` puts each
painted mini-volume's clean source in the same batch as a negative; with ``--crop C`` painted pairs are
cropped around the defect.

Upper bound (``--oracle w``, session 8): the same network, data and schedule with *full* supervision,
``w`` times a class-balanced pixel BCE between the logit map and the centre slice's reference mask added
to the slice BCE. Not a recipe (the classifier may see slice labels only); it asks whether the target is
in reach at this budget at all, whatever the labels.

Sampling: half positive slices; negatives uniform or level-matched (``--level_mix``), and with
``--pair p`` a share p of the negatives replaced by slices of the *same* study 4-10 slices from its
nearest positive slice (same anatomy, no embolus in the 7-slice window).

    python benchmarks/bench_classifier_mil.py --kind b0s2mil --iters 600 --pair 0.5 \
        --cohort work/bench_recipes/cohort --tag b0s2mil_pair

The cohort is the one ``bench_classifier_recipes.py`` writes (60 training, 8 validation, 24 test
studies at the default difficulty); results are appended to ``--results`` as JSON lines.
"""
import json, sys, time, math
from pathlib import Path
from scipy import ndimage
import numpy as np, torch, torch.nn as nn, torch.nn.functional as F
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from custom.io.nifti import read_volume
from custom.data import window_hu, balanced_slice_weights
from custom.explain.aggregation import window_slice_indices
from custom.explain import IntegratedGradientsExplainer
from custom.explain.pointing_game import pointing_game
from custom.handlers import roc_auc
from custom.metrics import within_level_auc
from custom.networks import SliceClassifier
import timm

torch.set_num_threads(2)

def load(cohort, split, window, with_mask=False, datalist="datalist.json"):
    dl = json.loads((Path(cohort) / datalist).read_text())[split]
    out = []
    for e in dl:
        v = torch.as_tensor(window_hu(read_volume(Path(cohort) / e["image"])[0], *window), dtype=torch.float32)
        m = read_volume(Path(cohort) / e["mask"])[0] > 0 if with_mask else None
        out.append((v, np.asarray(e["slice_labels"]), m))
    return out

class MilNet(nn.Module):
    """timm backbone to stage k, 1x1 conv to a logit map, max over positions."""
    def __init__(self, name="tf_efficientnetv2_b0", stage=2, in_chans=7, hidden=0):
        super().__init__()
        self.backbone = timm.create_model(name, in_chans=in_chans, num_classes=0)
        self.backbone.prune_intermediate_layers(indices=(stage,), prune_head=True)
        self.stage = stage
        w = self.backbone.feature_info[stage]["num_chs"]
        layers = []
        if hidden:
            layers += [nn.Conv2d(w, hidden, 1), nn.SiLU()]; w = hidden
        self.head = nn.Sequential(*layers, nn.Conv2d(w, 1, 1))
        nn.init.zeros_(self.head[-1].weight); nn.init.zeros_(self.head[-1].bias)
    def logit_map(self, x):
        f = self.backbone.forward_intermediates(x, indices=(self.stage,), intermediates_only=True)[-1]
        return self.head(f)
    def forward(self, x):
        return torch.amax(self.logit_map(x), dim=(-2, -1))

class VesselMil(MilNet):
    """MilNet whose max runs only over positions near contrast-filled vessels of the centre slice
    (windowed intensity above ``level``, i.e. about 200 HU in the 100/700 window, max-pooled to the
    logit map's grid): an image-derived prior, no labels; featureless tissue cannot win the max."""
    def __init__(self, stage=2, level=0.64):
        super().__init__(stage=stage); self.level = level
    def forward(self, x):
        logits = self.logit_map(x)
        bright = (x[:, x.shape[1] // 2 : x.shape[1] // 2 + 1] > self.level).float()
        near = F.adaptive_max_pool2d(bright, logits.shape[-2:]) > 0
        floor = logits.detach().amin(dim=(-2, -1), keepdim=True) - 1.0
        return torch.amax(torch.where(near, logits, floor), dim=(-2, -1))

class PlainMil(nn.Module):
    def __init__(self, in_chans=7, widths=(24, 48, 64), lse=0):
        super().__init__()
        layers, c = [], in_chans
        for i, w in enumerate(widths):
            if i: layers.append(nn.MaxPool2d(2))
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                       nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            c = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Conv2d(c, 1, 1); nn.init.zeros_(self.head.weight); nn.init.zeros_(self.head.bias)
    def forward(self, x):
        return torch.amax(self.head(self.features(x)), dim=(-2, -1))

class LocalMil(nn.Module):
    """Full-resolution CNN with a small receptive field (dilated 3x3 convolutions, 21 px at the default
    widths; no striding), a per-position logit map and the maximum (or top-k mean) over positions.
    Each logit sees only a 21x21 px neighbourhood, so it cannot read the slice level from the
    anatomy; the only local pattern that separates positive from negative slices is the embolus."""
    def __init__(self, in_chans=7, widths=(16, 24, 32, 32, 48), dilations=(1, 1, 2, 2, 4), topk=1):
        super().__init__()
        layers, c = [], in_chans
        for w, d in zip(widths, dilations):
            layers += [nn.Conv2d(c, w, 3, padding=d, dilation=d, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            c = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Conv2d(c, 1, 1); nn.init.zeros_(self.head.weight); nn.init.zeros_(self.head.bias)
        self.topk = topk
    def logit_map(self, x):
        return self.head(self.features(x))
    def forward(self, x):
        m = self.logit_map(x).flatten(1)
        return m.amax(1, keepdim=True) if self.topk == 1 else m.topk(self.topk, dim=1).values.mean(1, keepdim=True)

class DefectStem(nn.Module):
    """input slices plus their grey closing residual (closing(x) - x) at a few scales: dark holes in bright structures"""
    def __init__(self, sizes=(5, 13)):
        super().__init__(); self.sizes = sizes
    def forward(self, x):
        outs = [x]
        for k in self.sizes:
            dil = F.max_pool2d(F.max_pool2d(x, (1, k), 1, (0, k // 2)), (k, 1), 1, (k // 2, 0))
            closed = -F.max_pool2d(F.max_pool2d(-dil, (1, k), 1, (0, k // 2)), (k, 1), 1, (k // 2, 0))
            outs.append(closed - x)
        return torch.cat(outs, 1)

class StemNet(nn.Module):
    def __init__(self, body, stem):
        super().__init__(); self.stem = stem; self.body = body
    def logit_map(self, x): return self.body.logit_map(self.stem(x))
    def forward(self, x): return self.body(self.stem(x))

def make_net(kind):
    if kind == "defect_b0s2mil": return StemNet(MilNet(stage=2, in_chans=21), DefectStem())
    if kind == "defect_b0s1mil": return StemNet(MilNet(stage=1, in_chans=21), DefectStem())
    if kind == "b0s2": return SliceClassifier("tf_efficientnetv2_b0", feature_stage=2)
    if kind == "b0s1": return SliceClassifier("tf_efficientnetv2_b0", feature_stage=1)
    if kind == "b0s2mil": return MilNet(stage=2)
    if kind == "b0s2milvessel": return VesselMil(stage=2)
    if kind == "b0s1mil": return MilNet(stage=1)
    if kind == "b0s3mil": return MilNet(stage=3)
    if kind == "b0s2milh": return MilNet(stage=2, hidden=64)
    if kind == "plainmil": return PlainMil()
    if kind == "localmil": return LocalMil()
    if kind == "localmil_top8": return LocalMil(topk=8)
    if kind == "localmil_wide": return LocalMil(widths=(24, 32, 48, 48, 64, 64), dilations=(1, 1, 2, 2, 4, 8))
    raise KeyError(kind)

def near_negatives(lab, lo=4, hi=10):
    """negative slices of the study lying lo..hi slices from the nearest positive slice"""
    pos = np.flatnonzero(lab)
    if not pos.size: return np.array([], dtype=int)
    d = np.abs(np.arange(len(lab))[:, None] - pos[None]).min(1)
    return np.flatnonzero((lab == 0) & (d >= lo) & (d <= hi))

def insert_defect(x, rng, window=(100, 700), bright_hu=(240.0, 460.0), clot_hu=(22.0, 68.0), noise_hu=(15.0, 25.0), return_seed=False):
    """Paint one synthetic filling defect into a contrast-filled structure of a negative mini-volume.

    A label-free prior (the radiological definition of an acute PE, as in label-free lesion
    synthesis): a seed pixel in a random one of the centre slice's contrast-bright pixels, in a bright
    patch of at most 150 px whose 2 px ring is mostly lung (pulmonary vessels; not the ribs, the
    vertebrae, the heart or the outside air), a disk of radius
    1-3.5 px around it on 1-5 consecutive slices through the centre (the seed drifting by up to 1 px
    per slice), kept only where the slice is contrast-bright (the lumen), set to a clot value
    (22-68 HU) with CT noise and a 0.6 px blur of its edge. Returns the new mini-volume (with the seed's
    ``(row, column)`` when ``return_seed``), or None when the centre slice has no such vessel patch or
    the defect would cover fewer than 4 voxels.
    """
    low, width = window[0] - window[1] / 2.0, float(window[1])
    to_x = lambda hu: (hu - low) / width
    c = x.shape[0] // 2
    bright = (x > to_x(bright_hu[0])) & (x < to_x(bright_hu[1]))
    dark, _ = ndimage.label((x[c] < to_x(-240.0)).numpy())
    outside = np.unique(np.concatenate([dark[0], dark[-1], dark[:, 0], dark[:, -1]]))
    lung = (np.isin(dark, outside, invert=True) & (dark > 0)).astype(np.float64)
    parts, n_parts = ndimage.label(bright[c].numpy())
    area = np.bincount(parts.ravel(), minlength=n_parts + 1)
    grown = ndimage.grey_dilation(parts, size=5)
    ring = (parts == 0) & (grown > 0)
    ring_n = np.bincount(grown[ring], minlength=n_parts + 1)
    ring_lung = np.bincount(grown[ring], weights=lung[ring], minlength=n_parts + 1)
    keep = (area <= 150) & (ring_lung >= 0.5 * np.maximum(ring_n, 1))
    keep[0] = False
    ids = np.flatnonzero(keep)
    if ids.size == 0:
        return None
    ys, xs = np.nonzero(parts == ids[rng.integers(ids.size)])
    k = int(rng.integers(ys.size)); sy, sx = float(ys[k]), float(xs[k])
    r = float(rng.uniform(1.0, 3.5)); dz_lo, dz_hi = int(rng.integers(0, 3)), int(rng.integers(0, 3))
    H, W = x.shape[-2:]
    yy = torch.arange(H, dtype=torch.float32)[:, None]; xx = torch.arange(W, dtype=torch.float32)[None]
    region = torch.zeros_like(x, dtype=torch.bool)
    for z in range(max(0, c - dz_lo), min(x.shape[0], c + dz_hi + 1)):
        oy, ox = (sy, sx) if z == c else (sy + rng.uniform(-1, 1) * abs(z - c), sx + rng.uniform(-1, 1) * abs(z - c))
        region[z] = ((yy - oy) ** 2 + (xx - ox) ** 2 <= r * r) & bright[z]
    if int(region.sum()) < 4:
        return None
    alpha = torch.as_tensor(ndimage.gaussian_filter(region.numpy().astype(np.float32), (0, 0.6, 0.6)))
    alpha = torch.maximum(alpha, region.float() * 0.85).clamp_(0, 1)
    clot = to_x(float(rng.uniform(*clot_hu))) + torch.randn_like(x) * (float(rng.uniform(*noise_hu)) / width)
    out = (x * (1 - alpha) + clot * alpha).clamp_(0, 1)
    return (out, (int(sy), int(sx))) if return_seed else out

def batches(train, bs, rng, level_mix, crop, cutout, pair=0.0, synth=0.0, synth_pair=False, with_mask=False):
    near = [near_negatives(t[1]) for t in train]
    near_all = np.concatenate([np.stack([np.full(len(n), s), n], 1) for s, n in enumerate(near) if len(n)])
    labels = np.concatenate([t[1] for t in train])
    idx = np.concatenate([np.stack([np.full(len(t[1]), s), np.arange(len(t[1]))], 1) for s, t in enumerate(train)])
    levels = idx[:, 1] / np.array([len(train[s][1]) - 1 for s in idx[:, 0]])
    w = balanced_slice_weights(labels, levels if level_mix > 0 else None, level_mix=level_mix if level_mix > 0 else 0.5)
    srcs = [window_slice_indices(len(t[1])) for t in train]
    while True:
        pick = rng.choice(len(w), size=bs, p=w)
        items = [tuple(idx[p]) for p in pick]
        if pair > 0:
            for i, p in enumerate(pick):
                if labels[p] == 0 and rng.random() < pair:
                    items[i] = tuple(near_all[rng.integers(len(near_all))])
        xs, ys, clean, ms = [], [], [], []
        for s, k in items:
            x = train[s][0][srcs[s][k]]
            y = float(train[s][1][k])
            if with_mask:  # the oracle: the centre slice's reference mask, flipped with the image
                m = torch.as_tensor(train[s][2][k], dtype=torch.float32)[None]
                x = torch.cat([x, m])
            if synth > 0 and y == 1 and rng.random() < synth:
                for _ in range(8):
                    s2 = int(rng.integers(len(train))); negs = np.flatnonzero(train[s2][1] == 0)
                    if not len(negs):
                        continue
                    source = train[s2][0][srcs[s2][int(negs[rng.integers(len(negs))])]]
                    painted = insert_defect(source, rng, return_seed=True)
                    if painted is not None:
                        x, seed_yx = painted
                        if crop:  # a crop that holds the defect, the same for its clean source
                            H = x.shape[-1]
                            y0 = int(np.clip(seed_yx[0] - rng.integers(4, crop - 4), 0, H - crop)); x0 = int(np.clip(seed_yx[1] - rng.integers(4, crop - 4), 0, H - crop))
                            x = x[:, y0:y0+crop, x0:x0+crop]; source = source[:, y0:y0+crop, x0:x0+crop]
                        if synth_pair:
                            clean.append(source)
                        break
            if rng.random() < 0.5: x = x.flip(-1)
            if crop and x.shape[-1] != crop:
                H = x.shape[-1]; y0, x0 = rng.integers(0, H - crop + 1, 2); x = x[:, y0:y0+crop, x0:x0+crop]
            if cutout and rng.random() < cutout["prob"]:
                x = x.clone()
                for _ in range(rng.integers(1, cutout["max_holes"] + 1)):
                    h, ww = rng.integers(cutout["min"], cutout["max"] + 1, 2)
                    y0 = rng.integers(0, x.shape[-2] - h + 1); x0 = rng.integers(0, x.shape[-1] - ww + 1)
                    x[:, y0:y0+h, x0:x0+ww] = 0.0
            if with_mask:
                x, m = x[:-1], x[-1:]
                ms.append(m)
            xs.append(x); ys.append(y)
        # synth_pair: each painted positive's clean source replaces a negative of the batch
        slots = [i for i, v in enumerate(ys) if v == 0]
        for i, src in zip(slots, clean):
            xs[i] = src.flip(-1) if rng.random() < 0.5 else src
        batch = torch.stack(xs).contiguous(memory_format=torch.channels_last), torch.as_tensor(ys, dtype=torch.float32)[:, None]
        yield (*batch, torch.stack(ms)) if with_mask else batch

@torch.no_grad()
def scores(net, studies):
    net.eval(); s, l = [], []
    for v, lab, _ in studies:
        mini = v[window_slice_indices(v.shape[0])]
        s.append(torch.cat([net(mini[i:i+48].contiguous(memory_format=torch.channels_last)) for i in range(0, len(mini), 48)]).flatten())
        l.append(lab)
    net.train()
    within = within_level_auc([x.numpy() for x in s], l)
    s = torch.cat(s).numpy(); l = np.concatenate(l)
    return roc_auc(s, l), s, l, within

def run(kind, iters=400, bs=32, lr=3e-3, level_mix=0.5, crop=0, cutout=None, window=(100, 700), eval_every=100, seed=0, n_train=60, point_slices=6, tag="", pair=0.0, synth=0.0, synth_pair=False,
        cohort="work/bench_recipes/cohort", results="work/bench_mil/results.jsonl", save_weights=False, datalist="datalist.json", bf16=False, oracle=0.0, point_every=0):
    """Train one candidate for ``iters`` iterations and print its curve, test slice AUC and pointing game.

    ``oracle`` > 0 is an upper bound, not a weakly supervised recipe: it adds ``oracle`` times a
    class-balanced pixel BCE between the network's logit map and the centre slice's *reference mask*
    (max-pooled to the map's grid), i.e. the same network, data and budget with full supervision.
    ``point_every`` > 0 also plays the pointing game on the test studies at every evaluation whose
    iteration is a multiple of it (a learning curve of localisation; it never selects a model).
    """
    torch.manual_seed(seed); rng = np.random.default_rng(seed)
    if point_every and point_every % eval_every:
        raise ValueError(f"--point_every ({point_every}) must be a multiple of --eval_every ({eval_every}): the game is played at evaluations")
    if oracle and (synth or crop or cutout):
        raise ValueError("--oracle runs without --synth, --crop and --cutout")
    net = make_net(kind).to(memory_format=torch.channels_last)
    if oracle and not hasattr(net, "logit_map"):
        raise ValueError(f"--oracle needs a network with a logit map; {kind!r} pools its features first")
    train = load(cohort, "training", window, with_mask=bool(oracle), datalist=datalist)[:n_train]
    val = load(cohort, "validation", window, datalist=datalist); test = load(cohort, "test", window, True, datalist=datalist)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.01)
    warm = max(1, iters // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / warm) * (0.5 * (1 + math.cos(math.pi * min(i, iters) / iters)) if i >= warm else (i + 1) / warm))
    gen = batches(train, bs, rng, level_mix, crop, cutout, pair, synth, synth_pair, with_mask=bool(oracle))
    t0 = time.perf_counter(); curve = []; losses = []; teval = 0.0; point_curve = []
    test_points = [(v.numpy(), m) for v, _, m in test]

    def play(network):
        network.eval()
        explainer = IntegratedGradientsExplainer(network, n_steps=16, references=("fill",), max_batch=128)
        result = pointing_game(explainer, test_points, max_slices_per_study=point_slices)
        network.train()
        return result

    for it in range(1, iters + 1):
        x, y, *mask = next(gen)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(bf16)):
            lmap = net.logit_map(x) if oracle else None
            logits = torch.amax(lmap, dim=(-2, -1)) if oracle else net(x)
        loss = F.binary_cross_entropy_with_logits(logits.float(), y)
        if oracle:
            target = (F.adaptive_max_pool2d(mask[0], lmap.shape[-2:]) > 0).float()
            pix = F.binary_cross_entropy_with_logits(lmap.float(), target, reduction="none")
            pos = target.sum()
            pix_loss = pix[target == 0].mean() + (pix[target > 0].mean() if pos > 0 else 0.0)
            loss = loss + oracle * pix_loss
        opt.zero_grad(); loss.backward(); opt.step(); sched.step(); losses.append(loss.item())
        if it % eval_every == 0 or it == iters:
            te = time.perf_counter(); auc = scores(net, val)[0]; teval += time.perf_counter() - te
            m = (time.perf_counter() - t0 - teval) / 60
            curve.append((it, round(m, 2), round(auc, 3), round(float(np.mean(losses[-eval_every:])), 3)))
            print(f"  [{tag or kind}] it {it} {m:.1f} train-min loss {curve[-1][3]} val AUC {auc:.3f}", flush=True)
            if point_every and it % point_every == 0 and it != iters:
                te = time.perf_counter(); g = play(net); teval += time.perf_counter() - te
                point_curve.append((it, round(g.hit_rate, 3), float(np.median(g.distances_px))))
                print(f"  [{tag or kind}] it {it} pointing game {g.hit_rate:.3f} (median {point_curve[-1][2]:.0f} px)", flush=True)
    train_min = (time.perf_counter() - t0 - teval) / 60
    test_auc, s, l, test_within = scores(net, test)
    game = play(net)
    if point_every:
        point_curve.append((iters, round(game.hit_rate, 3), float(np.median(game.distances_px))))
    res = dict(kind=kind, tag=tag, oracle=oracle, n_train=len(train), bf16=bool(bf16), iters=iters, bs=bs, lr=lr, level_mix=level_mix, crop=crop, cutout=bool(cutout), window=window, pair=pair, synth=synth, synth_pair=bool(synth_pair),
               train_min=round(train_min, 2), curve=curve, test_auc=round(test_auc, 3),
               test_within_level_auc=None if test_within is None else round(test_within, 3), pointing=round(game.hit_rate, 3), n_point=game.total,
               med_dist=float(np.median(game.distances_px)), **({"point_curve": point_curve} if point_every else {}))
    print(f"RESULT {json.dumps(res)}", flush=True)
    Path(results).parent.mkdir(parents=True, exist_ok=True)
    with open(results, "a") as f: f.write(json.dumps(res) + "\n")
    if save_weights: torch.save(net.state_dict(), Path(results).parent / f"{tag or kind}.pt")
    return None

if __name__ == "__main__":
    import fire; fire.Fire(run)
