"""CPU Linears through oneDNN's fused primitive (dinat_backbone.fused_linear): used where it applies,
the same values as the plain modules, and out of the way wherever something could see the difference."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.profiler import profile

from dinat_backbone import fused_linear
from dinat_backbone.dinat import Mlp

from conftest import perturb_, small_model

ONEDNN_OP = "mkldnn::_linear_pointwise"


def onednn_calls(fn) -> int:
    with profile() as prof:
        fn()
    return sum(e.count for e in prof.key_averages() if e.key == ONEDNN_OP)


@pytest.fixture
def enabled():
    assert fused_linear.fused_linear_enabled(), "this torch CPU build lacks oneDNN's linear primitive"
    yield
    fused_linear.set_fused_linear(True)


def test_inference_runs_every_linear_on_onednn(enabled):
    """A DiNAT forward under no_grad sends each block's qkv, proj, fc1 (+GELU) and fc2 through the
    primitive, in float32 and under bf16 autocast; with the switch off, none."""
    model = small_model(seed=0).eval()
    n_blocks = sum(len(level.blocks) for level in model.levels)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert onednn_calls(lambda: model(x)) == 4 * n_blocks
        with torch.autocast("cpu", torch.bfloat16):
            assert onednn_calls(lambda: model(x)) == 4 * n_blocks
        fused_linear.set_fused_linear(False)
        assert onednn_calls(lambda: model(x)) == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_values_match_the_plain_modules(enabled, dtype):
    """Linear without activation: the plain F.linear's values (bfloat16 bit for bit here, float32
    within GEMM reordering). fc1 + GELU: GELU on the float32 accumulator, so against a float64
    reference it is at least as close as the plain bf16 path (which rounds before the GELU)."""
    torch.manual_seed(0)
    mlp = perturb_(Mlp(48, 144)).to(dtype)
    x = torch.randn(2, 5, 7, 48, dtype=dtype)
    with torch.no_grad():
        fused = fused_linear.linear(x, mlp.fc1)
        plain = F.linear(x, mlp.fc1.weight, mlp.fc1.bias)
        if dtype == torch.bfloat16:
            assert torch.equal(fused, plain)
        else:
            torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)
        exact = F.gelu(F.linear(x.double(), mlp.fc1.weight.double(), mlp.fc1.bias.double()))
        fused_gelu = fused_linear.linear_gelu(x, mlp.fc1, mlp.act)
        plain_gelu = mlp.act(mlp.fc1(x))
        assert fused_gelu.dtype == plain_gelu.dtype == dtype
        err_fused = (fused_gelu.double() - exact).abs().max().item()
        err_plain = (plain_gelu.double() - exact).abs().max().item()
        assert err_fused <= err_plain + 1e-6, (err_fused, err_plain)
        fused_linear.set_fused_linear(False)
        assert torch.equal(mlp(x), mlp.fc2(mlp.act(mlp.fc1(x))))


def test_model_output_matches_with_the_switch_off(enabled):
    model = small_model(seed=0, perturb=True).eval()
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        fused = model(x)
        fused_linear.set_fused_linear(False)
        plain = model(x)
    for a, b in zip(fused, plain):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_autograd_and_hooks_get_the_plain_modules(enabled):
    """With a graph to build (grad-enabled inputs or parameters) the modules run as written, so
    gradients flow; a forward hook on fc1 or on the GELU sees its own module's call and output."""
    torch.manual_seed(0)
    mlp = Mlp(16, 32).eval()
    x = torch.randn(3, 16, requires_grad=True)
    assert onednn_calls(lambda: mlp(x).sum().backward()) == 0
    assert x.grad is not None and mlp.fc1.weight.grad is not None
    seen = []
    handle = mlp.fc1.register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        out = mlp(x)
    handle.remove()
    assert len(seen) == 1
    torch.testing.assert_close(seen[0], F.linear(x, mlp.fc1.weight, mlp.fc1.bias))
    torch.testing.assert_close(out, mlp.fc2(F.gelu(seen[0])))
    acts = []
    handle = mlp.act.register_forward_hook(lambda m, i, o: acts.append(o))
    with torch.no_grad():
        mlp(x)
    handle.remove()
    assert len(acts) == 1


def test_mixed_dtypes_outside_autocast_still_raise(enabled):
    """The primitive would silently cast; F.linear's dtype error is kept."""
    layer = nn.Linear(8, 4)
    with torch.no_grad(), pytest.raises(RuntimeError, match="dtype"):
        fused_linear.linear(torch.randn(2, 8, dtype=torch.bfloat16), layer)


def test_training_step_is_unchanged_by_the_switch(enabled):
    """The lean training functions run their Linears on the primitive (no graph inside an autograd
    function): outputs and gradients bit for bit those of F.linear there (bf16 autocast)."""
    results = []
    for on in (True, False):
        fused_linear.set_fused_linear(on)
        model = small_model(seed=0, perturb=True).train()
        with torch.autocast("cpu", torch.bfloat16):
            outs = model(torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1)))
            loss = sum(o.float().mean() for o in outs)
        loss.backward()
        results.append(([o.detach() for o in outs], [p.grad.clone() for p in model.parameters()]))
    (o1, g1), (o2, g2) = results
    assert all(torch.equal(a, b) for a, b in zip(o1, o2))
    assert all(torch.equal(a, b) for a, b in zip(g1, g2))
