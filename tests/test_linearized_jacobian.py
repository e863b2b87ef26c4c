"""Jacobian of the U-Net w.r.t. the weights under the prior: JVP/VJP/dense vs autograd."""
from __future__ import annotations


import pytest
import torch
from torch import nn

from bayes_dip.ct import ParallelBeamGeometry, RayTransform
from bayes_dip.dip import UNet
from bayes_dip.linearized import NetworkJacobian, gprior_scale, weight_layout

F64 = torch.float64


def _setup(dtype=F64, size=8):
    torch.manual_seed(0)
    net = UNet(channels=(3, 4), skip_channels=(0, 2)).to(dtype)
    x = torch.rand(1, 1, size, size, dtype=dtype)
    return net, x


def test_layout_covers_conv_weights_only():
    net, _ = _setup()
    layout = weight_layout(net)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert layout.num_params == sum(m.weight.numel() for m in convs)
    assert all(p.endswith(".weight") for p in layout.params)
    kinds = {b.name: b.kind for b in layout.blocks}
    assert kinds == {"inc": "gp", "down_0": "gp", "up_0": "gp", "skip_0": "normal",
                     "outc": "normal"}
    assert all(b.num_filters * b.filter_numel == b.size for b in layout.blocks)


def test_jvp_vjp_dense_match_autograd_jacobian():
    net, x = _setup()
    jac = NetworkJacobian(net, x)
    ref = torch.autograd.functional.jacobian(jac.forward, jac.theta, vectorize=True)  # (n_pix, P)
    assert ref.shape == (64, jac.num_params)
    torch.testing.assert_close(jac.dense(batch_size=20), ref, rtol=0, atol=1e-12)
    v = torch.randn(jac.num_params, 3, dtype=F64)
    u = torch.randn(64, 2, dtype=F64)
    torch.testing.assert_close(jac.jvp(v), ref @ v, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(jac.vjp(u), ref.T @ u, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(jac.jvp(v[:, 0]), ref @ v[:, 0], rtol=1e-10, atol=1e-12)
    # biases are held fixed: θ̂ are the conv weights and f(θ̂) is the network output
    torch.testing.assert_close(jac.output, net.eval()(x))
    # the copy is frozen: changing the original net does not change the Jacobian
    with torch.no_grad():
        next(net.parameters()).add_(1.0)
    torch.testing.assert_close(jac.vjp(u), ref.T @ u, rtol=1e-10, atol=1e-12)


def test_float32_and_chunking_agree_with_float64():
    net, x = _setup()
    j64 = NetworkJacobian(net, x)
    j32 = NetworkJacobian(net, x.float(), dtype=torch.float32, chunk_size=2)
    v = torch.randn(j64.num_params, 5, dtype=F64)
    u = torch.randn(64, 5, dtype=F64)
    torch.testing.assert_close(j32.jvp(v.float()).double(), j64.jvp(v), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(j32.vjp(u.float()).double(), j64.vjp(u), rtol=1e-4, atol=1e-5)


def test_low_rank_jacobian_exact_at_full_rank():
    net, x = _setup()
    jac = NetworkJacobian(net, x)
    dense = jac.dense()
    svd = jac.low_rank(rank=64, oversample=0, power_iters=1,
                       generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(svd.U * svd.S @ svd.V.T, dense, rtol=0, atol=1e-9)
    top = jac.low_rank(rank=5, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(top.S, torch.linalg.svdvals(dense)[:5], rtol=1e-6, atol=0)


def test_gprior_scale_exact_and_hutchinson():
    net, x = _setup()
    jac = NetworkJacobian(net, x)
    rt = RayTransform(ParallelBeamGeometry((8, 8), num_angles=5))
    aj = rt.matrix().to_dense() @ jac.dense()
    expected = (aj.square().mean(0)).clamp_min(1e-12).rsqrt()
    torch.testing.assert_close(gprior_scale(jac, rt, batch_size=16), expected)
    approx = gprior_scale(jac, rt, num_probes=1000, generator=torch.Generator().manual_seed(0))
    rel = ((approx - expected) / expected).abs()
    assert float(rel.median()) < 0.05


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    net, x = _setup()
    cpu = NetworkJacobian(net, x)
    gpu = NetworkJacobian(net, x.cuda())
    v = torch.randn(cpu.num_params, 3, dtype=F64)
    torch.testing.assert_close(gpu.jvp(v.cuda()).cpu(), cpu.jvp(v))
    u = torch.randn(64, 3, dtype=F64)
    torch.testing.assert_close(gpu.vjp(u.cuda()).cpu(), cpu.vjp(u))


def test_bad_inputs():
    net, x = _setup()
    with pytest.raises(TypeError, match="net"):
        NetworkJacobian("net", x)
    with pytest.raises(ValueError, match="net_input"):
        NetworkJacobian(net, x[0])
    with pytest.raises(ValueError, match="chunk_size"):
        NetworkJacobian(net, x, chunk_size=0)
    jac = NetworkJacobian(net, x)
    with pytest.raises(ValueError, match="shape"):
        jac.jvp(torch.zeros(3, 1, dtype=F64))
    with pytest.raises(TypeError, match="dtype"):
        jac.vjp(torch.zeros(64, 1))
    with pytest.raises(TypeError, match="torch.Tensor"):
        jac.vjp([0.0] * 64)
    bad = type("B", (), {"name": "b", "kind": "gp", "modules": ("outc",)})()
    with pytest.raises(ValueError, match="kernel size"):
        weight_layout(net, [bad])
    bad = type("B", (), {"name": "b", "kind": "laplace", "modules": ("outc",)})()
    with pytest.raises(ValueError, match="kind"):
        weight_layout(net, [bad])
    bad = type("B", (), {"name": "b", "kind": "normal", "modules": ("nope",)})()
    with pytest.raises(ValueError, match="not an nn.Conv2d"):
        weight_layout(net, [bad])
