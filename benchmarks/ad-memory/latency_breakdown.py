"""PatchCore on MVTec bottle at 256 px: fit once, then time each stage of ``predict`` and score the test set.

    flock /tmp/adcore-bench.lock env OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE ADCORE_PROGRESS=0 \
        .venv/bin/python benchmarks/ad-memory/latency_breakdown.py

Prints one JSON line with the stage timings (ms, mean of 5 after a warm-up) and one with the metrics.
"""
import json
import time

import torch

from ad_memory.patchcore import PatchCore
from adcore.data import MVTecDataset
from adcore.metrics import evaluate

torch.set_num_threads(2)
ds = MVTecDataset('/work/shared/data/mvtec_bottle', 'bottle', split='train', image_size=256)
x = torch.stack([ds[i]['image'] for i in range(len(ds))])
t = time.perf_counter(); d = PatchCore().fit(x); fit = time.perf_counter() - t
test = x[:8]
def timed(fn, reps=5):
    fn(); t = time.perf_counter()
    for _ in range(reps): fn()
    return (time.perf_counter() - t) / reps * 1000
out = {"fit_s": fit, "bank": list(d.memory_bank_.shape)}
ex = d._extractor
with torch.inference_mode():
    out["backbone_bs1_ms"] = timed(lambda: ex(test[:1]))
    out["embed_bs1_ms"] = timed(lambda: d._embed(test[:1]))
    feats = d._embed(test[:1]); patches = feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1]).contiguous()
    index = d._index()
    out["faiss_flat_search_bs1_ms"] = timed(lambda: index.search(patches, k=1))
    bank = d.memory_bank_; bn = (bank * bank).sum(1)
    def torch_search():
        dd = torch.addmm(bn[None, :], patches, bank.t(), alpha=-2.0)
        v, i = dd.min(1)
        return v
    out["torch_mm_search_bs1_ms"] = timed(torch_search)
    out["predict_bs1_ms"] = timed(lambda: d.predict(test[:1]))
    out["predict_bs8_ms_per_img"] = timed(lambda: d.predict(test), reps=3) / 8
print(json.dumps(out))
# accuracy of the same fitted model on the bottle test set (256 px)
te = MVTecDataset('/work/shared/data/mvtec_bottle', 'bottle', split='test', image_size=256)
items = [te[i] for i in range(len(te))]
images = torch.stack([it['image'] for it in items])
labels = torch.tensor([int(it['label']) for it in items]); masks = torch.stack([it['mask'] for it in items])
preds = [d.predict(images[i:i + 8]) for i in range(0, len(items), 8)]
scores = torch.cat([p.pred_score for p in preds]); maps = torch.cat([p.anomaly_map for p in preds])
print(json.dumps({"bottle_metrics": evaluate(labels, scores, masks, maps)}, default=float))
