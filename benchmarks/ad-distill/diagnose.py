"""Diagnostic (not a measurement): EfficientAD on a subset of bottle at a small size, per-branch image AUROC.

Usage: python benchmarks/ad-distill/diagnose.py '{"width": 0.25, ...}'  (see docs/ad-distill.md)
"""

import json
import sys
import time

import torch
from sklearn.metrics import roc_auc_score

from ad_distill.efficientad import EfficientAD

__all__: list[str] = []
from adcore.data import MVTecDataset

size = 128  # 4x cheaper than 256
tr = MVTecDataset("../shared/data/mvtec_bottle", "bottle", split="train", image_size=size)
te = MVTecDataset("../shared/data/mvtec_bottle", "bottle", split="test", image_size=size)
x = torch.stack([tr[i]["image"] for i in range(0, 209, 3)])
tx = torch.stack([te[i]["image"] for i in range(len(te))])
ty = [te[i]["label"] for i in range(len(te))]
p = json.loads(sys.argv[1])
d = EfficientAD(input_size=size, use_cache=False, **p)
t = time.time()
d.fit(x)
print("fit", time.time() - t, d.training_summary_, d.teacher_provenance_["first_loss"], d.teacher_provenance_["final_loss"], flush=True)
qa_st, qb_st, qa_ae, qb_ae = d.quantiles_.tolist()
with torch.inference_mode():
    st, ae = d._raw_maps(tx)
    comb = d.predict(tx).pred_score
print("local", roc_auc_score(ty, st.flatten(1).amax(1)), "global", roc_auc_score(ty, ae.flatten(1).amax(1)), "comb", roc_auc_score(ty, comb))
