"""``adcore predict MODEL_FILE IMAGES...``: score image files and folders with a saved model.

Writes, into ``--out`` (Contract B, see docs/predict.md): ``scores.csv``
(``path,score,normalized_score,threshold,anomalous,regions,error``), ``results.jsonl`` (one object
per image, with its defect regions), ``run.json``, and unless ``--no-heatmaps`` one heatmap PNG per
image under ``heatmaps/``, named by the image's path relative to the inputs given
(``cam1/img001.png`` -> ``heatmaps/cam1/img001.png.png``). Rows are appended and flushed per image.

Exit codes: 0 every image scored; 3 the run finished but some files were skipped (each is reported
on stderr and in the outputs with its reason); 1 an error (with ``--strict``: the first bad file);
130 / 143 stopped by Ctrl-C / SIGTERM, every finished image written (``--resume`` continues).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from adcore.commands.options import add_device_options, non_negative_float, non_negative_int, positive_int

__all__ = ["NAME", "HELP", "add_arguments", "run", "EXIT_SKIPPED"]

NAME = "predict"
HELP = "score images with a saved model: streaming CSV/JSONL scores, defect regions, heatmaps"
#: the run finished, but some input files could not be scored (see the 'error' column)
EXIT_SKIPPED = 3
_SIGNAL_EXIT = {"SIGINT": 130, "SIGTERM": 143}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_file", type=Path)
    parser.add_argument("images", nargs="+", help="image files or folders (folders are walked recursively)")
    parser.add_argument("--out", type=Path, default=Path("adcore-predictions"), help="output folder")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="images per detector call (default 8)")
    parser.add_argument("--workers", type=non_negative_int, default=min(4, os.cpu_count() or 1),
                        help="decoding threads working ahead of the detector (0: decode in the main thread)")
    add_device_options(parser, workers=False)  # --workers above: the decoding pool
    parser.add_argument("--no-heatmaps", action="store_true", help="write scores and regions only")
    parser.add_argument("--side-by-side", action="store_true", help="heatmaps show the input beside the overlay")
    parser.add_argument("--masks", action="store_true", help="also write each image's defect mask under masks/")
    parser.add_argument("--min-area", type=positive_int, default=1, help="smallest defect region kept, in pixels")
    parser.add_argument("--contact-sheet", type=non_negative_int, default=0, metavar="N",
                        help="write contact-sheet.png with the N most anomalous images of the run")
    parser.add_argument("--resume", action="store_true",
                        help="continue a stopped run in --out: images already scored there are skipped")
    parser.add_argument("--strict", dest="strict_inputs", action="store_true",
                        help="stop with an error at the first file that cannot be scored (default: skip it)")
    scale = parser.add_argument_group("scale-out (docs/scale-out.md; needs the ray extra: pip install 'adcore[ray]')")
    scale.add_argument("--executor", choices=("local", "ray"), default="local",
                       help="local: this process (default); ray: an actor pool on Ray, outputs written here")
    scale.add_argument("--address", help="with --executor ray: the Ray cluster to join (e.g. ray://head:10001 or "
                                         "auto); default: start a local Ray with this machine's CPUs")
    scale.add_argument("--actors", type=positive_int, help="with --executor ray: actors in the pool (default: the "
                                                        "cluster's CPUs / --cpus-per-actor)")
    scale.add_argument("--cpus-per-actor", type=non_negative_float, default=1.0, help="CPUs (and torch threads) per actor (default 1)")
    scale.add_argument("--gpus-per-actor", type=non_negative_float, default=0.0, help="GPUs per actor (default 0)")


def run(args: argparse.Namespace) -> int:
    # nothing that imports torch before Ray is started: with --executor ray the torch import, the
    # listing and the model's opening run in prepare() while ray.init waits for its processes
    from adcore.line.outputs import check_output_folder
    from adcore.line.sources import collect_inputs

    out = Path(args.out)
    check_output_folder(out)  # before loading the model or listing 100,000 files

    def prepare() -> tuple[list, Any]:
        from adcore.deployed import open_model

        inputs = collect_inputs(args.images, exclude=out)
        detector = open_model(args.model_file, device=args.device)  # a .safetensors model file or an export folder
        if args.precision is not None:
            if not hasattr(detector, "set_params"):
                from adcore.errors import InvalidInputError

                raise InvalidInputError(f"--precision applies to .safetensors models; {args.model_file} is an "
                                        "exported artefact, which runs at the precision it was exported with: drop "
                                        "--precision")
            detector.set_params(precision=args.precision)
        return inputs, detector

    if args.executor == "ray":
        from adcore.scale.cluster import ClusterOptions, connect_while

        if not Path(args.model_file).exists():  # the one mistake worth catching before Ray's seconds of start-up
            from adcore.deployed import open_model

            open_model(args.model_file)
        cluster = ClusterOptions(address=args.address)
        # listing and opening the model while Ray starts (or is joined): predict_on_ray uses that Ray
        with connect_while(prepare, cluster) as (_, (inputs, detector)):
            from adcore.scale.predict import RayPredictOptions, predict_on_ray

            scale = RayPredictOptions(actors=args.actors, cpus_per_actor=args.cpus_per_actor,
                                      gpus_per_actor=args.gpus_per_actor, cluster=cluster)
            summary = predict_on_ray(detector, Path(args.model_file), inputs, _options(args, out), scale,
                                     given=list(args.images))
    else:
        from adcore.line.pipeline import run_predictions

        inputs, detector = prepare()
        summary = run_predictions(detector, Path(args.model_file), inputs, _options(args, out),
                                  given=list(args.images))
    done = summary.scored + summary.already_done
    message = f"adcore predict: {done} of {len(inputs)} images scored into {out}"
    if summary.skipped:
        message += f"; {len(summary.skipped)} files skipped (see the 'error' column of {out / 'scores.csv'})"
    if summary.stopped_by:
        print(f"{message}; stopped by {summary.stopped_by}: rerun with --resume to finish", file=sys.stderr)
        return _SIGNAL_EXIT.get(summary.stopped_by, 1)
    if summary.contact_sheet is not None:
        message += f"; contact sheet {summary.contact_sheet}"
    print(message, file=sys.stderr)
    return EXIT_SKIPPED if summary.skipped else 0


def _options(args: argparse.Namespace, out: Path) -> Any:
    from adcore.line.pipeline import PredictOptions

    return PredictOptions(out=out, batch_size=args.batch_size, workers=args.workers, heatmaps=not args.no_heatmaps,
                          masks=args.masks, side_by_side=args.side_by_side, min_area=args.min_area,
                          resume=args.resume, strict=args.strict_inputs, contact_sheet=args.contact_sheet)
