"""Behaviour check across the redesign (issue 14): every registered detector at its card's quick params
fitted on the embedded PIPED sample (PA_FLR01_TL); scores, maps and AUROCs saved so the code after the
redesign can be compared with the code before it.

    .venv/bin/python benchmarks/redesign/behaviour_baseline.py OUT_DIR [NAME ...]
"""
import json, sys, time
from pathlib import Path
import numpy as np, torch
import adcore
from adcore.data import MVTecDataset, make_loader
from adcore.factory import get_entry
from adcore.metrics import auroc

out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
names = sys.argv[2:] or adcore.list_models()
torch.set_num_threads(1)
root = "examples/sample_data/piped"  # run from the repository root
for name in names:
    entry = get_entry(name)
    params = dict(entry.card.get("quick_params") or {})
    size = params.get("input_size", 64)
    train = MVTecDataset(root, "PA_FLR01_TL", "train", image_size=size)
    test = MVTecDataset(root, "PA_FLR01_TL", "test", image_size=size)
    t = time.time()
    det = adcore.get_model(name, **params)
    det.fit(make_loader(train, 8))
    loader = make_loader(test, 8)
    scores, maps, labels, masks = [], [], [], []
    for batch in loader:
        p = det.predict(batch["image"])
        scores.append(p.pred_score); maps.append(p.anomaly_map); labels.append(batch["label"]); masks.append(batch["mask"])
    s, m, l, k = torch.cat(scores), torch.cat(maps), torch.cat(labels), torch.cat(masks)
    res = {"name": name, "params": params, "image_auroc": float(auroc(l, s)), "pixel_auroc": float(auroc(k.flatten() > 0.5, m.flatten())),
           "seconds": time.time() - t}
    np.savez_compressed(out / f"{name}.npz", scores=s.numpy(), maps=m.numpy())
    print(json.dumps(res), flush=True)
