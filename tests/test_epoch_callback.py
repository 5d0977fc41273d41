"""The epoch callback on a real trained detector (vanilla_ae from ad-recon): no detector threads a
parameter through for it, and ``adcore benchmark --curve`` records a learning curve with it."""

from __future__ import annotations

import argparse

import pytest
import torch

from adcore.testing import write_tiny_category
from adcore.training import _CALLBACKS, EpochEnd, on_epoch

pytest.importorskip("ad_recon")


def test_a_tiny_vanilla_ae_reports_its_two_epochs_and_the_callback_is_gone_afterwards():
    from adcore.factory import get_model

    images = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    events: list[EpochEnd] = []
    detector = get_model("vanilla_ae", input_size=32, epochs=2, base_channels=8, depth=3, latent_dim=8, batch_size=4)
    with on_epoch(events.append):
        detector.fit(images)
    assert [e.epoch for e in events] == [0, 1] and all(e.epochs == 2 for e in events)
    assert events[-1].history.loss == detector.history_["loss"]
    assert detector.network_ in events[0].modules
    assert _CALLBACKS.get() == ()
    again = get_model("vanilla_ae", input_size=32, epochs=2, base_channels=8, depth=3, latent_dim=8, batch_size=4)
    again.fit(images)
    assert len(events) == 2  # outside the block nothing is reported
    for mine, theirs in zip(detector.network_.parameters(), again.network_.parameters(), strict=True):
        assert torch.equal(mine, theirs)  # watching does not change the model


def test_benchmark_curve_records_points_and_leaves_the_fit_unchanged(tmp_path):
    from adcore import benchmark as bench

    write_tiny_category(tmp_path / "data", "widget")

    def plan(curve: int | None, out: str):
        parser = argparse.ArgumentParser()
        bench.add_arguments(parser)
        args = parser.parse_args(["--model", "vanilla_ae", "--dataset", "widget", "--data-root", str(tmp_path / "data"),
                                  "--out", str(tmp_path / out), "--input-size", "32", "--param", "epochs=2",
                                  "--param", "base_channels=8", "--param", "depth=3", "--param", "latent_dim=8",
                                  "--param", "batch_size=4", "--threads", "1", "--no-plots"]
                                 + (["--curve", str(curve)] if curve else []))
        return bench.build_plan(args)

    with_curve, without = plan(1, "curve"), plan(None, "plain")
    assert with_curve.runs[0].options == {"curve": 1} and without.runs[0].options == {}
    assert with_curve.runs[0].key != without.runs[0].key
    for p in (with_curve, without):
        bench.run_benchmark(p, echo=False)
    (curved,) = bench.collect_rows(with_curve)
    (plain,) = bench.collect_rows(without)
    assert curved["status"] == plain["status"] == "ok", (curved.get("error"), plain.get("error"))
    (point,) = curved["curve"]  # epoch 1 of 2 (the last epoch is the run's own result)
    assert point["epoch"] == 1 and point["loss"] == curved["training"][0]["loss"][0]
    assert 0.0 <= point["image_auroc"] <= 1.0 and point["eval_seconds"] > 0
    assert len(curved["training"][0]["loss"]) == 2 and curved["epochs_run"] == 2
    assert curved["curve_seconds"] > 0 and curved["fit_cpu_seconds"] > 0
    for key in ("image_auroc", "pixel_auroc", "final_loss"):
        assert curved[key] == plain[key], key  # evaluating between epochs changed nothing in the training
