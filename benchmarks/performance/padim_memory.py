"""Where PaDiM's resident memory goes: RSS after each stage of a whole run, in one process.

    OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE ADCORE_PROGRESS=0 \\
        .venv/bin/python benchmarks/performance/padim_memory.py [--quick] [--data ../shared/data] [-p KEY=VALUE ...]

Stages: ``import torch``, ``import timm``, adcore + ad-stat, the backbone built, the fit (peak
sampled every 20 ms by a thread, then the level after it), predict over the test split, the
metrics. Prints one JSON line: ``rss_mb`` (level after each stage), ``peak_mb`` (highest sample
within each stage) and ``ru_maxrss_mb`` (the kernel's peak for the whole process). Memory does not
depend on the machine's load, so this may run while others work. ``--quick``: 8 tiny synthetic
training images, 64 px, to check the script.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import threading
import time

__all__ = ["main"]

_PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss_mb() -> float:
    with open("/proc/self/statm", encoding="ascii") as handle:
        return int(handle.read().split()[1]) * _PAGE / 2**20


class _Sampler(threading.Thread):
    """Highest RSS seen since the last :meth:`stage` call (20 ms sampling)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = _rss_mb()
        self.running = True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, _rss_mb())
            time.sleep(0.02)

    def stage(self) -> float:
        peak, self.peak = max(self.peak, _rss_mb()), _rss_mb()
        return round(peak, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--dataset", default="mvtec_bottle:bottle", help="ROOT:CATEGORY under --data")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("-p", "--param", action="append", default=[], help="a PaDiM parameter, KEY=VALUE")
    args = parser.parse_args()
    sampler = _Sampler()
    sampler.start()
    rss, peak = {"start": round(_rss_mb(), 1)}, {}

    def mark(name: str) -> None:
        peak[name] = sampler.stage()
        rss[name] = round(_rss_mb(), 1)

    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    mark("import torch")
    import timm  # noqa: F401

    mark("import timm")
    from ad_stat.padim import Padim
    from adcore.metrics import evaluate
    from adcore.values import parse_assignments

    mark("import adcore, ad_stat")
    params = parse_assignments(args.param) if args.param else {}
    if args.quick:
        from adcore.testing import make_normal_images, paste_defects

        size = 64
        train = make_normal_images(8, (size, size), seed=0)
        test_images, test_masks = paste_defects(make_normal_images(4, (size, size), seed=1))
        labels = torch.tensor([0, 0, 1, 1])
        test_images[:2], test_masks[:2] = make_normal_images(2, (size, size), seed=2), 0
        batches = [(test_images, labels, test_masks)]
        params.setdefault("input_size", size)
    else:
        from adcore.data import MVTecDataset, make_loader

        root, category = args.dataset.split(":") if ":" in args.dataset else (args.dataset, args.dataset.rsplit("/", 1)[-1])
        root = os.path.join(args.data, root if ":" in args.dataset else os.path.dirname(args.dataset))
        train = MVTecDataset(root, category, split="train", image_size=256)
        test = make_loader(MVTecDataset(root, category, split="test", image_size=256), 8)
        batches = ((b["image"], torch.as_tensor(b["label"]), b["mask"]) for b in test)
    detector = Padim(**params)
    detector.extractor  # noqa: B018 - builds the backbone
    mark("backbone built")
    detector.fit(train)
    mark("fit")
    scores, labels, masks, maps = [], [], [], []
    for images, label, mask in batches:
        prediction = detector.predict(images)
        scores.append(prediction.pred_score)
        maps.append(prediction.anomaly_map.float())
        labels.append(label)
        masks.append(mask.to(torch.bool))
    mark("predict test split")
    metrics = evaluate(torch.cat(labels), torch.cat(scores), torch.cat(masks), torch.cat(maps))
    mark("metrics")
    sampler.running = False
    state = {name: round(value.numel() * value.element_size() / 2**20, 1) for name, value in vars(detector).items()
             if isinstance(value, torch.Tensor) and value.numel() > 1000}
    print(json.dumps({"dataset": "quick" if args.quick else args.dataset, "params": params, "rss_mb": rss,
                      "peak_mb": peak, "ru_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                      "state_mb": state, "metrics": {k: round(float(v), 4) for k, v in metrics.items()
                                                     if isinstance(v, (int, float))}}))


if __name__ == "__main__":
    main()
