"""The screenshot of the review page in docs/serving.md (docs/images/serve-review.png).

Trains a PaDiM on MVTec bottle's good images (as the load test does), serves it, uploads two good
and three defective test images in headless Chromium, and saves the page.

    python benchmarks/serving/screenshot.py --data ../shared/data/mvtec_bottle/bottle --out docs/images/serve-review.png
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load_test import ROOT, Server, train_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "mvtec_bottle" / "bottle")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "serve-review.png")
    parser.add_argument("--train-images", type=int, default=48)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    picks = [args.data / "test" / "good" / "000.png", args.data / "test" / "good" / "001.png",
             args.data / "test" / "broken_large" / "000.png", args.data / "test" / "contamination" / "001.png",
             args.data / "test" / "broken_small" / "002.png"]
    with tempfile.TemporaryDirectory(prefix="adcore-shot-") as tmp:
        work = Path(tmp)
        model = train_model(args.data, work / "bottle-padim.safetensors", images=args.train_images, input_size=256)
        uploads = []
        for path in picks:
            uploads.append(work / f"{path.parent.name}-{path.name}")
            shutil.copy(path, uploads[-1])
        server = Server(model, work, 8, 5.0, name="bottle")
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
                page = browser.new_page(viewport={"width": 1400, "height": 700})
                page.goto(f"{server.base}/")
                page.wait_for_selector("#model option", state="attached")
                page.set_input_files("#files", [str(p) for p in uploads])
                page.wait_for_function(f"document.querySelectorAll('.card[data-score]').length === {len(uploads)}",
                                       timeout=120_000)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                shot = page.screenshot(full_page=True)
                browser.close()
        finally:
            server.stop()
    import io

    from PIL import Image

    # 256 colours keep the page and the turbo overlays readable at a fraction of the bytes
    Image.open(io.BytesIO(shot)).convert("RGB").quantize(256).save(args.out, optimize=True)
    print(args.out)


if __name__ == "__main__":
    main()
