"""Issue 23: the same good images in another order, in other batches or as another kind of stream
(DataLoader or plain list) train bit-identical networks."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import adcore
from adcore.testing import make_normal_images

TINY = {"input_size": 32, "base_channels": 4, "depth": 3, "epochs": 2, "batch_size": 3, "learning_rate": 2e-3,
        "seed": 5}
MODELS = {"vanilla_ae": {"latent_dim": 8}, "unet_ae": {}, "vae": {"latent_dim": 8}, "beta_vae": {"latent_dim": 8},
          "wae": {"latent_dim": 8}}


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return make_normal_images(11, (40, 40), seed=7)  # resized to 32 px by the detector


def _state(detector) -> dict[str, torch.Tensor]:
    return detector.network_.state_dict()


def _assert_same(first, second) -> None:
    one, two = _state(first), _state(second)
    assert one.keys() == two.keys()
    for name in one:
        assert torch.equal(one[name], two[name]), name


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("validation_fraction", [0.0, 0.3])
def test_order_batching_and_stream_kind_do_not_change_the_model(images: torch.Tensor, name: str,
                                                                validation_fraction: float) -> None:
    params = {**TINY, **MODELS[name], "validation_fraction": validation_fraction, "patience": 1}
    as_loader = adcore.get_model(name, **params).fit(DataLoader(TensorDataset(images), batch_size=4))
    backwards = images.flip(0)
    shuffled = images[torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(1))]
    as_list = adcore.get_model(name, **params).fit([backwards[i:i + 5] for i in range(0, backwards.shape[0], 5)])
    as_tensor = adcore.get_model(name, **params).fit(shuffled)
    _assert_same(as_loader, as_list)
    _assert_same(as_loader, as_tensor)
    assert as_loader.history_ == as_list.history_
    probe = make_normal_images(2, (40, 40), seed=9)
    assert torch.equal(as_loader.predict(probe).anomaly_map, as_list.predict(probe).anomaly_map)


def test_another_seed_gives_another_model(images: torch.Tensor) -> None:
    # the invariance is not a network that ignores its data or seed
    first = adcore.get_model("vanilla_ae", **{**TINY, **MODELS["vanilla_ae"]}).fit(images)
    second = adcore.get_model("vanilla_ae", **{**TINY, **MODELS["vanilla_ae"], "seed": 6}).fit(images)
    assert any(not torch.equal(a, b) for a, b in zip(_state(first).values(), _state(second).values(), strict=True))
