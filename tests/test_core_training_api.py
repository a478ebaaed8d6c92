"""The bound network in a training loop: live parameters, gradients, train-mode batch norm."""

from __future__ import annotations

import torch
from torch import nn

import boundc
from boundc import examples


def test_bound_module_shares_live_parameters():
    model = examples.build("resnet")
    bm = boundc.compile(model, torch.rand(2, 1, 28, 28))
    ids = {id(p) for p in model.parameters()}
    assert {id(p) for p in bm.parameters()} <= ids and len(list(bm.parameters())) > 0
    x = torch.rand(2, 1, 28, 28)
    xl, xu = boundc.linf_box(x, 0.01)
    before = bm(xl, xu)[0].detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(x).sum().backward()
    opt.step()
    after = bm(xl, xu)[0]
    assert not torch.allclose(before, after)
    with torch.no_grad():
        torch.testing.assert_close(bm(x, x)[0], model(x), atol=1e-5, rtol=0)


def test_gradients_of_lower_bound_reach_model_parameters():
    model = examples.build("small")
    x = torch.rand(3, 1, 28, 28)
    bm = boundc.compile(model, x)
    C = boundc.margin_spec(torch.tensor([0, 1, 2]), 10)
    lower, _ = bm(*boundc.linf_box(x, 0.05), C)
    lower.sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_gradient_matches_finite_differences():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x = torch.rand(2, 4, dtype=torch.float64)
    bm = boundc.compile(model, x)
    xl, xu = boundc.linf_box(x, 0.1)
    C = boundc.margin_spec(torch.tensor([0, 2]), 3).double()

    def loss() -> torch.Tensor:
        lower, upper = bm(xl, xu, C)
        return lower.sum() + 0.3 * upper.pow(2).sum()

    model.zero_grad()
    loss().backward()
    h = 1e-6
    for p in model.parameters():
        for idx in [(0,) * p.dim(), tuple(s - 1 for s in p.shape)]:
            with torch.no_grad():
                p[idx] += h
                up = loss().item()
                p[idx] -= 2 * h
                down = loss().item()
                p[idx] += h
            assert abs((up - down) / (2 * h) - p.grad[idx].item()) < 1e-5


def test_gradient_reaches_input_box():
    model = examples.build("mlp")
    x = torch.rand(2, 1, 28, 28)
    bm = boundc.compile(model, x)
    xl, xu = boundc.linf_box(x, 0.01)
    xl.requires_grad_(True)
    bm(xl, xu)[0].sum().backward()
    assert xl.grad is not None and xl.grad.abs().sum() > 0


def test_train_mode_batch_norm_uses_clean_batch_statistics():
    model = examples.build("resnet").train()
    x = torch.rand(8, 1, 28, 28)
    bm = boundc.compile(model, x)
    assert any(n.op == "clean_input" for n in bm.graph)
    lower, upper = bm(x, x)  # clean input defaults to the box centre
    y = model(x)  # train mode: batch statistics of x
    torch.testing.assert_close(lower, y, atol=1e-4, rtol=0)
    torch.testing.assert_close(upper, y, atol=1e-4, rtol=0)
    xl, xu = boundc.linf_box(x, 0.01)
    lower, upper = bm(xl, xu, x=x)
    assert torch.all(lower <= y + 1e-5) and torch.all(y <= upper + 1e-5)
    lower.sum().backward()
    assert model.stem[1].weight.grad is not None


def test_train_mode_bounds_contain_model_with_frozen_clean_statistics():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 5))
    model.train()
    x = torch.rand(6, 1, 28, 28)
    bm = boundc.compile(model, x)
    xl, xu = boundc.linf_box(x, 0.02)
    with torch.no_grad():
        lower, upper = bm(xl, xu, x=x)
        feats = model[0](x)
        mean, var = feats.mean((0, 2, 3)), feats.var((0, 2, 3), unbiased=False)
        frozen = nn.Sequential(*model).eval()
        frozen[1].running_mean.copy_(mean)
        frozen[1].running_var.copy_(var)
        for _ in range(20):
            xp = xl + (xu - xl) * torch.rand_like(x)
            y = frozen(xp)
            assert torch.all(lower <= y + 1e-5) and torch.all(y <= upper + 1e-5)


def test_moving_the_bound_module_moves_the_model_and_keeps_buffers_shared():
    model = examples.build("resnet")
    bm = boundc.compile(model, torch.rand(2, 1, 28, 28))
    bm.double()
    assert next(model.parameters()).dtype == torch.float64
    assert model.stem[1].running_mean.dtype == torch.float64
    x = torch.rand(2, 1, 28, 28, dtype=torch.float64)
    with torch.no_grad():
        model.stem[1].running_mean.add_(0.5)  # a BN statistics update on the model is seen by the bounds
        torch.testing.assert_close(bm(x, x)[0], model(x), atol=1e-10, rtol=0)
