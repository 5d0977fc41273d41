"""The shared flow machinery: likelihood bookkeeping, invertibility, subnet structure."""

from __future__ import annotations

import math

import torch
from torch import nn

from ad_flow.flows import (
    build_conv_flow,
    build_fc_flow,
    conv_subnet,
    fc_subnet,
    flow_nll,
    trainable_parameters,
)


def test_flow_nll_is_the_gaussian_negative_log_likelihood_up_to_a_constant() -> None:
    z = torch.randn(5, 7)
    log_jac = torch.randn(5)
    expected = -torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(1) - log_jac - 0.5 * 7 * math.log(2 * math.pi)
    assert torch.allclose(flow_nll(z, log_jac), expected, atol=1e-5)
    # 4-D feature maps are flattened per sample
    assert flow_nll(torch.ones(2, 3, 4, 4), torch.zeros(2)).tolist() == [24.0, 24.0]


def test_fc_flow_log_jacobian_matches_autograd_and_inverts() -> None:
    torch.manual_seed(0)
    flow = build_fc_flow(6, 3, hidden=16, layers=2, clamp=3.0, seed=1).double()
    with torch.no_grad():  # move away from the identity-like initialisation
        for p in trainable_parameters(flow):
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(3, 6, dtype=torch.float64)
    z, log_jac = flow(x)
    for i in range(3):
        jacobian = torch.autograd.functional.jacobian(lambda v: flow(v[None])[0][0], x[i])
        assert torch.allclose(log_jac[i], torch.linalg.slogdet(jacobian)[1], atol=1e-8)
    back, _ = flow(z, rev=True)
    assert torch.allclose(back, x, atol=1e-8)


def test_conv_flow_alternates_3x3_and_1x1_subnets_and_inverts() -> None:
    torch.manual_seed(0)
    flow = build_conv_flow((4, 5, 6), 4, hidden_ratio=1.0, clamp=2.0)
    kernels = [[m.kernel_size for m in block.subnet if isinstance(m, nn.Conv2d)] for block in flow.module_list]
    assert kernels == [[(3, 3)] * 2, [(1, 1)] * 2, [(3, 3)] * 2, [(1, 1)] * 2]
    only3 = build_conv_flow((4, 5, 6), 2, conv3x3_only=True)
    assert all(m.kernel_size == (3, 3) for block in only3.module_list for m in block.subnet if isinstance(m, nn.Conv2d))
    x = torch.randn(2, 4, 5, 6)
    z, log_jac = flow(x)
    assert z.shape == x.shape and log_jac.shape == (2,)
    assert torch.allclose(flow(z, rev=True)[0], x, atol=1e-4)


def test_subnet_constructors_shapes() -> None:
    conv = conv_subnet(3, 2.0)(4, 8)
    assert conv(torch.randn(1, 4, 5, 5)).shape == (1, 8, 5, 5) and conv[0].out_channels == 8
    fc = fc_subnet(32, 3)(5, 10)
    assert fc(torch.randn(2, 5)).shape == (2, 10)
    assert sum(isinstance(m, nn.Linear) for m in fc) == 4


def test_trainable_parameters_skip_frozen_permutations() -> None:
    flow = build_fc_flow(4, 2, hidden=8)
    frozen = [p for p in flow.parameters() if not p.requires_grad]
    assert frozen, "FrEIA keeps permutations as frozen parameters"
    assert all(p.requires_grad for p in trainable_parameters(flow))
