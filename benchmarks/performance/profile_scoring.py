"""Where PatchCore's and SPADE's scoring time goes: each stage of ``predict`` timed back to back.

    OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE ADCORE_PROGRESS=0 .venv/bin/python \\
        benchmarks/performance/profile_scoring.py [--detector patchcore|spade] [--quick] [--rounds 9]
        [--save FILE | --model FILE]

Fits the detector on bottle's 209 training images at 256 px (``--model`` loads a saved one instead,
``--save`` keeps the fit for the next run), then times the stages of its scoring path on one test
image and on a batch of 8, in the same process, round-robin (every round runs every stage once,
``--rounds`` rounds after a warm-up) and reports each stage's median and its share of their sum,
so the shares are comparable even when the machine is loaded. Both nearest-neighbour searches are
timed (faiss, the CPU default, and the exact torch GEMM search used on other devices) and checked
against each other on the real bank. One JSON line per batch size. ``--quick``: a tiny synthetic fit
at 64 px and 2 rounds, to check the script.

PatchCore stages: ``extract`` (backbone), ``aggregate`` (3×3 pooling, upsampling, concatenation),
``knn_faiss`` / ``knn_torch``, ``reweight`` (eq. 7 on the argmax patches), ``upsample``, ``smooth``;
``predict`` is the whole public call (input checks and the Prediction included).
SPADE stages: ``extract``, ``image_knn``, ``gallery`` (gather + upsample the K nearest training
pyramids), ``pixel_knn_faiss`` / ``pixel_knn_torch``, ``upsample``, ``smooth``, ``predict``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

__all__ = ["main"]

ROOT, CATEGORY, SIZE = "mvtec_bottle", "bottle", 256


def _round_robin(stages: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    for fn in stages.values():
        fn()  # warm-up: lazy index, allocator, OpenMP pools
    times: dict[str, list[float]] = {name: [] for name in stages}
    for _ in range(rounds):
        for name, fn in stages.items():
            started = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - started) * 1000)
    return {name: statistics.median(values) for name, values in times.items()}


def _patchcore_stages(detector, images):
    import torch

    from ad_memory.exact_knn import nearest_rows
    from adcore.ops import gaussian_blur, upsample

    maps = list(detector.extractor(images).values())
    features = detector._aggregate(maps)
    count, dim, height, width = features.shape
    patches = features.permute(0, 2, 3, 1).reshape(-1, dim).contiguous()
    index = detector._index()
    distance, nearest = index.search(patches, k=1)
    torch_distance, torch_nearest = nearest_rows(patches, index.bank, 1, bank_sq=index.bank_norms())
    check = {"knn_max_abs_diff": float((torch_distance - distance).abs().max()),
             "knn_same_index_share": float((torch_nearest == nearest).float().mean())}
    distance, nearest = distance.view(count, -1), nearest.view(count, -1)
    patch_rows = patches.view(count, -1, dim)
    grid = distance.view(count, height, width)
    upsampled = upsample(grid, tuple(images.shape[-2:]))
    stages = {
        "extract": lambda: detector.extractor(images),
        "aggregate": lambda: detector._aggregate(maps),
        "knn_faiss": lambda: index.search(patches, k=1),
        "knn_torch": lambda: nearest_rows(patches, index.bank, 1, bank_sq=index.bank_norms()),
        "reweight": lambda: detector._image_scores(patch_rows, distance, nearest, index),
        "upsample": lambda: upsample(grid, tuple(images.shape[-2:])),
        "smooth": lambda: gaussian_blur(upsampled, detector.sigma),
        "predict": lambda: detector.predict(images),
    }
    return stages, check, ["extract", "aggregate", "knn_faiss", "reweight", "upsample", "smooth"]


def _spade_stages(detector, images):
    from ad_memory import memory_bank
    from ad_memory.exact_knn import nearest_rows
    from adcore.ops import gaussian_blur, upsample

    vector, maps = detector._features(images)
    count, grid = images.shape[0], tuple(maps[0].shape[-2:])
    k_map = min(detector.num_map_images, detector.image_features_.shape[0])
    k_all = max(min(detector.num_image_neighbors, detector.image_features_.shape[0]), k_map)
    _, nearest = memory_bank.knn(vector, detector.image_features_, k_all)
    chosen = nearest[:, :k_map].reshape(-1)

    def gallery():  # the whole batch's rows at once (predict groups them on the CPU: see SPADE._images_per_search)
        query = detector._stack_rows(maps, grid)
        rows = detector._stack_rows(detector._gallery(chosen), grid).view(count, -1, query.shape[-1])
        return query, rows

    query, rows = gallery()
    faiss_distance, _ = memory_bank.batched_knn(query, rows, detector.num_map_neighbors)
    torch_distance, _ = nearest_rows(query, rows, detector.num_map_neighbors)
    check = {"knn_max_abs_diff": float((torch_distance - faiss_distance).abs().max())}
    pixel = faiss_distance.mean(-1).view(count, *grid)
    upsampled = upsample(pixel, tuple(images.shape[-2:]))
    stages = {
        "extract": lambda: detector.extractor(images),
        "image_knn": lambda: memory_bank.knn(vector, detector.image_features_, k_all),
        "gallery": gallery,
        "pixel_knn_faiss": lambda: memory_bank.batched_knn(query, rows, detector.num_map_neighbors),
        "pixel_knn_torch": lambda: nearest_rows(query, rows, detector.num_map_neighbors),
        "upsample": lambda: upsample(pixel, tuple(images.shape[-2:])),
        "smooth": lambda: gaussian_blur(upsampled, detector.sigma),
        "predict": lambda: detector.predict(images),
    }
    return stages, check, ["extract", "image_knn", "gallery", "pixel_knn_faiss", "upsample", "smooth"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--detector", choices=["patchcore", "spade"], default="patchcore")
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--model", help="a saved model file to profile instead of fitting")
    parser.add_argument("--save", help="save the fitted model here")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    import torch

    from adcore.factory import get_model, load

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    if args.quick:
        from adcore.testing import make_normal_images

        size, args.rounds = 64, 2
        train, test = make_normal_images(8, (size, size), seed=0), make_normal_images(args.batch, (size, size), seed=1)
        detector = get_model(args.detector, input_size=size).fit(train)
    else:
        from adcore.data import MVTecDataset

        root = os.path.join(args.data, ROOT)
        test_set = MVTecDataset(root, CATEGORY, split="test", image_size=SIZE)
        test = torch.stack([test_set[i]["image"] for i in range(0, args.batch * 9, 9)])  # good and defective
        if args.model:
            detector = load(args.model)
        else:
            detector = get_model(args.detector, input_size=SIZE).fit(MVTecDataset(root, CATEGORY, split="train", image_size=SIZE))
    if args.save:
        detector.save(args.save)
    make = _patchcore_stages if args.detector == "patchcore" else _spade_stages
    for batch in (1, args.batch):
        images = test[:batch]
        with torch.inference_mode():
            stages, check, path = make(detector, images)
            medians = _round_robin(stages, args.rounds)
        total = sum(medians[name] for name in path)
        print(json.dumps({
            "detector": args.detector, "batch": batch, "threads": torch.get_num_threads(), "rounds": args.rounds,
            "bank": list(detector.memory_bank_.shape) if args.detector == "patchcore" else None,
            "ms": {name: round(value, 2) for name, value in medians.items()},
            "ms_per_image": {name: round(value / batch, 2) for name, value in medians.items()},
            "share_of_stages": {name: round(medians[name] / total, 3) for name in path},
            "predict_over_extract": round(medians["predict"] / medians["extract"], 2), **check}), flush=True)


if __name__ == "__main__":
    main()
