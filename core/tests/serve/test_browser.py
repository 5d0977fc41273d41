"""The review page in a real browser: headless Chromium (Debian's ``chromium``) against the real server.

Skipped, saying what to install, where there is no ``chromium`` on PATH or no playwright. The
screenshot goes to the test's temporary folder; with ``ADCORE_SCREENSHOT_DIR`` set, a copy goes
there too (docs/images/serve-review.png was taken so).
"""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="adcore serve needs the serve extra: pip install 'adcore[serve]'")
pytest.importorskip("uvicorn", reason="adcore serve needs the serve extra: pip install 'adcore[serve]'")
CHROMIUM = shutil.which("chromium")


@pytest.mark.skipif(CHROMIUM is None, reason="no 'chromium' on PATH: install Debian's chromium package "
                    "(apt-get install chromium; .ci/run does) to run the browser test of adcore serve's page")
def test_the_review_page_scores_an_uploaded_image(tiny_model, images, tmp_path, start_server):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install "
                                   "playwright (scripts/setup.sh does; no browser download needed)")
    for name in ("good", "defect"):
        (tmp_path / f"{name}.png").write_bytes(images[name])
    server = start_server([f"cell={tiny_model}", f"cell2={tiny_model}"]).wait_ready()
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 640})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(f"{server.base}/")
            page.wait_for_selector("#model option[value=cell]", state="attached", timeout=20_000)
            assert "padim" in page.text_content("#model-info")
            page.set_input_files("#files", [str(tmp_path / "good.png"), str(tmp_path / "defect.png")])
            page.wait_for_function("document.querySelectorAll('.card[data-score]').length === 2", timeout=30_000)
            cards = page.query_selector_all(".card")
            shown = {card.query_selector(".name").text_content(): float(card.get_attribute("data-score"))
                     for card in cards}
            assert set(shown) == {"good.png", "defect.png"}
            assert shown["defect.png"] > shown["good.png"]
            assert all(card.query_selector("img").get_attribute("src").startswith("data:image/png;base64,")
                       for card in cards)  # the heatmap overlay is shown
            assert page.text_content("#summary").endswith("of 2 flagged")

            def move_threshold(value: float) -> str:
                page.eval_on_selector("#threshold", "(el, v) => { el.value = v; el.dispatchEvent(new Event('input')); }",
                                      str(value))
                return page.text_content("#summary")

            assert move_threshold(0.0) == "2 of 2 flagged"  # re-labelled in the page
            assert [c.text_content() for c in page.query_selector_all(".verdict")] == ["ANOMALOUS", "ANOMALOUS"]
            assert move_threshold(1.0) == "0 of 2 flagged"
            page.click("#reset")

            def drop(name: str, payload: bytes) -> None:  # a file dropped on the page, as a person would
                page.evaluate("""([name, b64]) => {
                    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
                    const data = new DataTransfer();
                    data.items.add(new File([bytes], name, { type: "image/png" }));
                    document.getElementById("drop").dispatchEvent(
                        new DragEvent("drop", { dataTransfer: data, bubbles: true, cancelable: true }));
                }""", [name, base64.b64encode(payload).decode()])

            drop("wide.png", images["wide"])
            page.wait_for_function("document.querySelectorAll('.card[data-score]').length === 3", timeout=30_000)
            drop("broken.png", images["corrupt"])
            page.wait_for_selector(".card.failed .error", timeout=30_000)
            assert "400 cannot read image" in page.text_content(".card.failed .error")
            assert page.text_content("#summary").endswith("of 3 flagged")  # a failed image is not counted
            shot = tmp_path / "serve-review.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 5_000
            if os.environ.get("ADCORE_SCREENSHOT_DIR"):
                shutil.copy(shot, Path(os.environ["ADCORE_SCREENSHOT_DIR"]) / shot.name)
            page.select_option("#model", "cell2")  # another model: the results start afresh
            assert page.query_selector_all(".card") == []
            page.set_input_files("#files", [str(tmp_path / "defect.png")])
            page.wait_for_function("document.querySelectorAll('.card[data-score]').length === 1", timeout=30_000)
            assert float(page.get_attribute(".card[data-score]", "data-score")) == pytest.approx(shown["defect.png"], rel=1e-5)
            assert not errors, errors
        finally:
            browser.close()
