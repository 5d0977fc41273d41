"""What a predict run writes (Contract B), appended and flushed one image at a time.

``OUT/scores.csv`` (header :data:`SCORES_HEADER`), ``OUT/results.jsonl`` (one JSON object per input,
keys :data:`RESULT_KEYS`) and ``OUT/run.json`` (what the run is: model file checksum, inputs given,
options that change the outputs). Rows are written by the csv module (quoting) and ``json.dumps``
(escapes), so a file name holding commas, quotes or newlines cannot break a row. Each image's row is
flushed to the operating system before the next is written: a SIGTERM, Ctrl-C or an out-of-memory
kill leaves every finished image in both files (at worst the last line of one file is cut short).

``results.jsonl`` is the record of truth. Resuming (``--resume``) reads it up to its last complete
line, keeps the scored images, drops rows of skipped files (they are tried again) and rewrites both
files from what it kept (atomically), so scores.csv and results.jsonl always hold the same images.
A folder holding another run's outputs (other model file, inputs or options) is refused, never mixed.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from adcore.errors import OutputPathError

__all__ = ["SCORES_HEADER", "RESULT_KEYS", "RunOutputs", "check_output_folder", "csv_row", "read_results"]

SCORES_HEADER = ["path", "score", "normalized_score", "threshold", "anomalous", "regions", "error"]
RESULT_KEYS = ["path", "score", "normalized_score", "threshold", "anomalous", "regions", "error"]
MANIFEST = "run.json"
RESULTS = "results.jsonl"
SCORES = "scores.csv"
RUN_FORMAT = "adcore-predict-run"
#: the folders of per-image PNGs (written by :func:`adcore.line.sink.write_rendered`)
HEATMAPS, MASKS = "heatmaps", "masks"
#: free space below which a run is refused before its first image
MIN_FREE_BYTES = 1 << 20
_ENCODING = {"encoding": "utf-8", "errors": "surrogateescape"}  # odd bytes in file names survive


def check_output_folder(out: Path) -> None:
    """Refuse, before any image is scored, an output folder that cannot take the outputs: a file, a
    missing parent folder, one without write permission, a full disk. Creates ``out`` if needed."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputPathError(f"--out {out} is a file, not a folder; give a folder for the scores and heatmaps")
    parent = out.absolute().parent
    if not out.exists():
        if not parent.is_dir():
            raise OutputPathError(f"--out {out}: its parent folder {parent} does not exist; create it first or give "
                                  "another folder")
        try:
            out.mkdir()
        except OSError as exc:
            raise OutputPathError(f"cannot create the output folder {out}: {exc.strerror or exc}") from exc
    try:
        with tempfile.NamedTemporaryFile(dir=out, prefix=".adcore-write-probe.", delete=True):
            pass
    except OSError as exc:
        raise OutputPathError(f"cannot write in the output folder {out}: {exc.strerror or exc} (is it read-only?); "
                              "give a folder you can write") from exc
    free = shutil.disk_usage(out).free
    if free < MIN_FREE_BYTES:
        raise OutputPathError(f"the disk holding {out} is full ({free} bytes free); free some space or give "
                              "another --out")


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def csv_row(result: dict[str, Any]) -> list[str]:
    """A results.jsonl object as a scores.csv row (``regions`` becomes their number)."""
    regions = result.get("regions")
    return [_fmt(result.get("path")), _fmt(result.get("score")), _fmt(result.get("normalized_score")),
            _fmt(result.get("threshold")), _fmt(result.get("anomalous")),
            "" if regions is None else str(len(regions)), _fmt(result.get("error"))]


def _csv_text(rows: list[list[str]]) -> str:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerows(rows)
    return buffer.getvalue()


class RunOutputs:
    """The output folder of one run: refuses a foreign one, resumes its own, appends row by row."""

    def __init__(self, out: Path, identity: dict[str, Any], *, resume: bool, notes: dict[str, Any] | None = None):
        self.out = Path(out)
        check_output_folder(self.out)
        self.done: set[str] = set()
        manifest, results, scores = (self.out / n for n in (MANIFEST, RESULTS, SCORES))
        earlier = [p.name for p in (manifest, results, scores) if p.exists()]
        if earlier and not resume:
            raise OutputPathError(f"{self.out} already holds the outputs of an earlier run ({', '.join(earlier)}); pass "
                                  "--resume to continue that run, or give an empty --out folder")
        if earlier:
            self._resume(identity)
            from adcore.files import remove_stale_temporaries

            # a killed run's half-written PNGs, swept once here: each PNG write then skips its own look
            for folder in (HEATMAPS, MASKS):
                remove_stale_temporaries(self.out / folder)
        else:
            from adcore.files import atomic_write_text

            atomic_write_text(manifest, json.dumps({"format": RUN_FORMAT, "format_version": 1, **identity,
                                                    **(notes or {})}, indent=2, ensure_ascii=True))
            self._rewrite([])
        self._results = open(results, "a", **_ENCODING)  # noqa: SIM115 - held for the whole run
        self._scores = open(scores, "a", newline="", **_ENCODING)  # noqa: SIM115
        self._csv = csv.writer(self._scores)

    def _resume(self, identity: dict[str, Any]) -> None:
        manifest = self.out / MANIFEST
        try:
            recorded = json.loads(manifest.read_text(**_ENCODING))
        except (OSError, ValueError) as exc:
            raise OutputPathError(f"{self.out} holds outputs that are not a resumable adcore predict run ({MANIFEST} "
                                  f"missing or unreadable: {exc}); give another --out folder") from exc
        if not isinstance(recorded, dict) or recorded.get("format") != RUN_FORMAT:
            raise OutputPathError(f"{manifest} is not an adcore predict run record; give another --out folder")
        differences = [key for key in identity if recorded.get(key) != identity[key]]
        if differences:
            shown = "; ".join(f"{key}: earlier {recorded.get(key)!r}, now {identity[key]!r}" for key in differences)
            raise OutputPathError(f"{self.out} holds another run's outputs ({shown}); --resume continues a run only with "
                                  "the same model file, inputs and options. Give another --out folder")
        kept: list[dict[str, Any]] = []
        try:
            with open(self.out / RESULTS, **_ENCODING) as handle:
                for line in handle:
                    if not line.endswith("\n"):
                        break  # cut short by a kill: that image is scored again
                    try:
                        result = json.loads(line)
                    except ValueError:
                        break
                    if isinstance(result, dict) and result.get("error") is None and result.get("path") is not None:
                        kept.append(result)
        except FileNotFoundError:
            pass
        self._rewrite(kept)
        self.done = {result["path"] for result in kept}

    def _rewrite(self, kept: list[dict[str, Any]]) -> None:
        from adcore.files import atomic_write_bytes

        lines = "".join(json.dumps(result, ensure_ascii=True) + "\n" for result in kept)
        atomic_write_bytes(self.out / RESULTS, lines.encode(**_ENCODING))
        text = _csv_text([SCORES_HEADER, *(csv_row(result) for result in kept)])
        atomic_write_bytes(self.out / SCORES, text.encode(**_ENCODING))

    def append(self, result: dict[str, Any]) -> None:
        """Write one image's result to both files and flush them."""
        ordered = {key: result.get(key) for key in RESULT_KEYS}
        try:
            self._results.write(json.dumps(ordered, ensure_ascii=True) + "\n")
            self._results.flush()
            self._csv.writerow(csv_row(ordered))
            self._scores.flush()
        except OSError as exc:
            raise OutputPathError(f"cannot append to the outputs in {self.out}: {exc.strerror or exc} (a full disk?); "
                                  "every image before this one is in scores.csv and results.jsonl; free space and "
                                  "rerun with --resume") from exc

    def close(self) -> None:
        """Flush and ``fsync`` both files (also after an error or a stop signal)."""
        for handle in (self._results, self._scores):
            try:
                handle.flush()
                os.fsync(handle.fileno())
            except (OSError, ValueError):
                pass
            handle.close()

    def __enter__(self) -> RunOutputs:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def read_results(out: Path):
    """The results of a run folder, one dict at a time (complete lines only)."""
    with open(Path(out) / RESULTS, **_ENCODING) as handle:
        for line in handle:
            if line.endswith("\n"):
                try:
                    yield json.loads(line)
                except ValueError:
                    return
