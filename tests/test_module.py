"""RMSNorm / GemmaRMSNorm modules and RMSNorm.from_module, against the fp64 oracle."""
import pytest
import torch
from torch import nn

from helpers import DTYPES, assert_close, rand_w, rand_x, rmsnorm_ref
from rmsnorm_triton import GemmaRMSNorm, RMSNorm, patch_model


def _fill(m, gemma=False):
    with torch.no_grad():
        m.weight.copy_(rand_w(m.weight.shape[0], m.weight.dtype, m.weight.device, gemma=gemma))
    return m


def test_defaults_match_torch_and_gemma(device):
    m = RMSNorm(96, device=device)
    assert m.weight.shape == (96,) and m.weight.device.type == device
    assert torch.equal(m.weight, torch.ones(96, device=device))
    assert list(m.state_dict()) == list(nn.RMSNorm(96).state_dict()) == ["weight"]
    assert m.bias is None and m.eps == 1e-6 and m.variance_epsilon == 1e-6
    g = GemmaRMSNorm(96, device=device, dtype=torch.bfloat16)
    assert g.weight_offset == 1.0 and g.weight.dtype == torch.bfloat16
    assert torch.equal(g.weight.float(), torch.zeros(96, device=device))
    b = RMSNorm(96, bias=True, device=device)
    assert list(b.state_dict()) == ["weight", "bias"] and not b.bias.any()


def test_fresh_modules_are_the_plain_norm(device):
    x = rand_x((3, 80), torch.float32, device)
    for m in (RMSNorm(80, device=device), GemmaRMSNorm(80, device=device)):
        with torch.no_grad():
            assert_close(m(x), rmsnorm_ref(x, eps=1e-6))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("out_dtype", [None, torch.float32], ids=["out=x", "out=fp32"])
@pytest.mark.parametrize("gemma", [False, True], ids=["llama", "gemma"])
def test_forward_matches_fp64(device, dtype, out_dtype, gemma):
    cls = GemmaRMSNorm if gemma else RMSNorm
    m = _fill(cls(200, eps=1e-5, out_dtype=out_dtype, device=device, dtype=dtype), gemma)
    x = rand_x((2, 5, 200), dtype, device)
    with torch.no_grad():
        y = m(x)
    assert y.shape == x.shape and y.dtype == (out_dtype or dtype)
    assert_close(y, rmsnorm_ref(x, m.weight, 1e-5, weight_offset=1.0 if gemma else 0.0))


def test_bias(device):
    m = _fill(RMSNorm(64, bias=True, device=device))
    with torch.no_grad():
        m.bias.copy_(torch.randn(64, device=device))
        x = rand_x((4, 64), torch.float32, device)
        assert_close(m(x), rmsnorm_ref(x, m.weight, 1e-6, bias=m.bias))


def test_gradients_flow_through_the_module(device):
    m = _fill(RMSNorm(32, device=device))
    x = rand_x((4, 32), torch.float32, device).requires_grad_()
    ref = nn.RMSNorm(32, eps=1e-6, device=device)
    ref.load_state_dict(m.state_dict())
    x_ref = x.detach().clone().requires_grad_()
    m(x).square().sum().backward()
    ref(x_ref).square().sum().backward()
    torch.testing.assert_close(m.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-5)


def test_extra_repr():
    assert repr(RMSNorm(8)) == "RMSNorm(8, eps=1e-06)"
    assert repr(GemmaRMSNorm(8, bias=True, out_dtype=torch.float32)) == (
        "GemmaRMSNorm(8, eps=1e-06, weight_offset=1.0, bias=True, out_dtype=torch.float32)")


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(hidden_size=0), ValueError, "hidden_size must be >= 1, got 0"),
    (dict(hidden_size=8.0), TypeError, "hidden_size must be an int, got float"),
    (dict(hidden_size=8, eps=-1.0), ValueError, "eps"),
    (dict(hidden_size=8, weight_offset=float("nan")), ValueError, "weight_offset"),
    (dict(hidden_size=8, dtype=torch.float64), TypeError, "dtype must be"),
    (dict(hidden_size=8, out_dtype=torch.int8), TypeError, "out_dtype must be"),
    (dict(hidden_size=8, bias="yes"), TypeError, r"bias must be a bool, got str \('yes'\)"),
    (dict(hidden_size=8, elementwise_affine=None), TypeError,
     "elementwise_affine must be a bool, got NoneType"),
    (dict(hidden_size=8, bias=True, elementwise_affine=False), ValueError,
     "bias=True needs elementwise_affine=True"),
])
def test_bad_arguments(kwargs, error, words):
    with pytest.raises(error, match=words):
        RMSNorm(**kwargs)


# ---- from_module -------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_from_torch_rmsnorm(device, dtype):
    src = _fill(nn.RMSNorm(48, eps=1e-5, device=device, dtype=dtype))
    m = RMSNorm.from_module(src)
    assert m.weight is src.weight, "the Parameter is shared, not copied"
    assert (m.eps, m.weight_offset) == (1e-5, 0.0)
    x = rand_x((3, 48), dtype, device)
    with torch.no_grad():
        assert_close(m(x), rmsnorm_ref(x, src.weight, 1e-5))
        assert_close(m(x), src(x).double(), dtype)


@pytest.mark.parametrize("x_dtype", [torch.float16, torch.float32], ids=str)
def test_from_torch_rmsnorm_default_eps_follows_the_input_dtype(device, x_dtype):
    """eps=None means torch.finfo(x.dtype).eps at each call, also when x and weight differ."""
    src = nn.RMSNorm(64, dtype=torch.float16, device=device)
    with torch.no_grad():
        src.weight.copy_(rand_w(64, torch.float16, device))
    m = RMSNorm.from_module(src)
    assert src.eps is None and m.eps is None
    x = 1e-3 * rand_x((3, 64), x_dtype, device)       # small activations: eps matters
    with torch.no_grad():
        assert_close(m(x), rmsnorm_ref(x, src.weight, torch.finfo(x_dtype).eps), x_dtype)


@pytest.mark.parametrize("src, words", [
    (nn.RMSNorm((4, 16), elementwise_affine=False), r"over the last 2 \(normalized_shape"),
    (nn.RMSNorm((4, 16)), r"1-D weight .*got weight=\(4, 16\)"),
])
def test_from_torch_rmsnorm_refuses_what_it_cannot_represent(src, words):
    with pytest.raises(ValueError, match=words):
        RMSNorm.from_module(src)


@pytest.mark.parametrize("eps", [1e-5, None])
def test_without_a_weight_as_torch_rmsnorm_without_elementwise_affine(device, eps):
    src = nn.RMSNorm(48, eps=eps, elementwise_affine=False)
    m = RMSNorm.from_module(src)
    assert m.weight is None and m.bias is None and m.eps == eps and list(m.state_dict()) == []
    assert repr(m) == f"RMSNorm(48, eps={eps}, elementwise_affine=False)"
    x = 1e-2 * rand_x((3, 48), torch.bfloat16, device)
    want = rmsnorm_ref(x, None, torch.finfo(x.dtype).eps if eps is None else eps)
    with torch.no_grad():
        assert_close(m(x), want, torch.bfloat16)
    g = GemmaRMSNorm(48, elementwise_affine=False)          # (1 + w) with no w: scales by 2
    assert_close(g(x), rmsnorm_ref(x, None, 1e-6, weight_offset=1.0), torch.bfloat16)


def test_from_module_refuses_non_modules():
    with pytest.raises(TypeError, match="expects an nn.Module, got Tensor"):
        RMSNorm.from_module(torch.ones(4))


class PlainRMSNorm(nn.Module):
    """HF Llama's style: eps in `variance_epsilon`, two roundings."""

    def __init__(self, n, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.variance_epsilon = eps

    def forward(self, x):
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * h.to(x.dtype)


class OnePlusRMSNorm(nn.Module):
    """(1 + w) under a name without "Gemma", as Qwen3-Next's norm does."""

    def __init__(self, n, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n))
        self.eps = eps

    def forward(self, x):
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return (h * (1.0 + self.weight.float())).type_as(x)


class GemmaLikeButPlainRMSNorm(OnePlusRMSNorm):
    """"Gemma" in the name but scales by w, as Gemma3n's norm does."""

    def forward(self, x):
        h = x.float()
        return (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
                * self.weight.float()).type_as(x)


class MeanNorm(PlainRMSNorm):
    """Not an RMSNorm: subtracts the mean first."""

    def forward(self, x):
        return super().forward(x - x.mean(-1, keepdim=True))


@pytest.mark.parametrize("cls, offset", [
    (PlainRMSNorm, 0.0), (OnePlusRMSNorm, 1.0), (GemmaLikeButPlainRMSNorm, 0.0)])
def test_from_module_learns_the_offset_from_what_the_module_computes(device, cls, offset):
    src = _fill(cls(40, eps=1e-5).to(device), gemma=offset == 1.0)
    m = RMSNorm.from_module(src)
    assert (m.weight_offset, m.eps) == (offset, 1e-5) and m.weight is src.weight
    x = rand_x((3, 40), torch.float32, device)
    with torch.no_grad():
        assert_close(m(x), src(x).double())


class TypeAsRMSNorm(PlainRMSNorm):
    """Returns x's dtype whatever the weight's (Gemma's `.type_as(x)`)."""

    def forward(self, x):
        return super().forward(x).type_as(x)


class T5StyleRMSNorm(PlainRMSNorm):
    """T5's norm: casts to a 16-bit weight's dtype, so the output takes the weight's dtype."""

    def forward(self, x):
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            h = h.to(self.weight.dtype)
        return self.weight * h


class MatchingDtypesOnlyRMSNorm(PlainRMSNorm):
    """A norm whose forward refuses mixed dtypes (as a fused kernel may)."""

    def forward(self, x):
        if x.dtype != self.weight.dtype:
            raise RuntimeError("expected x and weight of one dtype")
        return super().forward(x)


class AlwaysFp64RMSNorm(PlainRMSNorm):
    def forward(self, x):
        return super().forward(x).double()


@pytest.mark.parametrize("w_dtype, x_dtype", [
    (torch.float32, torch.bfloat16), (torch.float32, torch.float16),
    (torch.bfloat16, torch.float16), (torch.float16, torch.bfloat16),
    (torch.bfloat16, torch.bfloat16), (torch.bfloat16, torch.float32)], ids=str)
@pytest.mark.parametrize("cls, rule", [(PlainRMSNorm, "promoted"), (TypeAsRMSNorm, "input"),
                                       (T5StyleRMSNorm, "weight")])
def test_from_module_keeps_the_output_dtype_of_the_module(device, cls, rule, w_dtype, x_dtype):
    """HF Llama's `weight * h.to(input_dtype)` promotes: an fp32 weight (kept in fp32 by a
    model, or under autocast) makes a bf16 input's output fp32; Gemma's `.type_as(x)` keeps
    x's dtype; T5's norm takes a 16-bit weight's. The converted norm writes the dtype its
    source returns."""
    src = _fill(cls(64, eps=1e-5).to(device=device, dtype=w_dtype))
    m = RMSNorm.from_module(src)
    # Under an fp32 weight T5's rule and Llama's give the same dtypes; the probe says promoted.
    assert m.out_dtype_rule == ("promoted" if rule == "weight" and w_dtype == torch.float32
                                else rule)
    x = rand_x((3, 64), x_dtype, device)
    with torch.no_grad():
        got, theirs = m(x), src(x)
    assert got.dtype == theirs.dtype
    assert_close(got, rmsnorm_ref(x, src.weight, 1e-5), got.dtype)


def test_from_module_refuses_an_output_dtype_it_cannot_follow():
    with pytest.raises(ValueError, match=r"AlwaysFp64RMSNorm: for a torch.bfloat16 input and a "
                                         r"torch.float32 weight it returned torch.float64"):
        RMSNorm.from_module(AlwaysFp64RMSNorm(16))


def test_from_module_of_a_norm_that_refuses_mixed_dtypes_keeps_the_input_dtype(device):
    """Its output dtype shows only where x's dtype matches the weight's: x's is taken."""
    src = _fill(MatchingDtypesOnlyRMSNorm(64, eps=1e-5).to(device))
    m = RMSNorm.from_module(src)
    assert m.out_dtype_rule == "input"
    x = rand_x((3, 64), torch.float32, device)
    with torch.no_grad():
        got = m(x)
        assert got.dtype == src(x).dtype == torch.float32
        assert m(x.bfloat16()).dtype == torch.bfloat16
    assert_close(got, rmsnorm_ref(x, src.weight, 1e-5), torch.float32)


def test_a_rule_module_names_a_bad_input():
    m = RMSNorm.from_module(PlainRMSNorm(16))
    assert m.out_dtype_rule == "promoted"
    assert repr(m) == "RMSNorm(16, eps=1e-06, out_dtype_rule='promoted')"
    with pytest.raises(TypeError, match="x must be a torch.Tensor, got NoneType"):
        m(None)


def test_from_module_refuses_another_formula():
    with pytest.raises(ValueError, match="MeanNorm: its output matches neither"):
        RMSNorm.from_module(MeanNorm(16))


def test_from_module_needs_an_eps_attribute():
    src = PlainRMSNorm(16)
    del src.variance_epsilon
    with pytest.raises(ValueError, match="no numeric eps: looked for attributes "
                                         "variance_epsilon, eps"):
        RMSNorm.from_module(src)


def test_from_module_on_meta_probes_a_cpu_stand_in_not_the_name():
    """A norm built on the meta device (weights loaded later) is probed through a CPU copy with
    known weights: a name with or without "Gemma" does not decide its form."""
    for cls, offset in ((OnePlusRMSNorm, 1.0), (GemmaLikeButPlainRMSNorm, 0.0),
                        (PlainRMSNorm, 0.0)):
        src = cls(8).to("meta")
        src.register_forward_hook(lambda *a: pytest.fail("a hook ran"))
        m = RMSNorm.from_module(src)
        assert m.weight_offset == offset, cls.__name__
        assert m.weight is src.weight and src.weight.is_meta     # shared, left on meta
    with pytest.raises(ValueError, match="MeanNorm: its output matches neither"):
        RMSNorm.from_module(MeanNorm(16).to("meta"))


class InputScaledNorm(OnePlusRMSNorm):
    """Scales x before normalizing: not an RMSNorm, though with its zero-initialised weight its
    output (zeros) equals x/rms(x)*w."""

    def forward(self, x):
        h = x.float() * self.weight.float()
        return (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x)


class NormWithScaleBuffer(PlainRMSNorm):
    def __init__(self, n):
        super().__init__(n)
        self.register_buffer("scale", torch.tensor(2.0))

    def forward(self, x):
        return super().forward(x) * self.scale


def test_from_module_probes_known_weights_not_the_module_s_own():
    """Freshly initialised weights could make another formula pass for a norm: the probe gives
    a copy known, non-uniform weights."""
    with pytest.raises(ValueError, match="InputScaledNorm: its output matches neither"):
        RMSNorm.from_module(InputScaledNorm(16))
    with pytest.raises(ValueError, match="InputScaledNorm: its output matches neither"):
        RMSNorm.from_module(InputScaledNorm(16).to("meta"))


def test_from_module_refuses_other_tensors_and_unprobeable_meta_modules():
    for src in (NormWithScaleBuffer(16), NormWithScaleBuffer(16).to("meta")):
        with pytest.raises(ValueError, match=r"holds tensors besides weight and bias \(scale\)"):
            RMSNorm.from_module(src)
    # A parametrized weight cannot be copied for the probe: ValueError (patch_model keeps such
    # a norm, with a warning), never another exception.
    src = PlainRMSNorm(16).to("meta")
    torch.nn.utils.parametrize.register_parametrization(src, "weight", nn.Identity())
    with pytest.raises(ValueError, match="cannot convert ParametrizedPlainRMSNorm"):
        RMSNorm.from_module(src)


def test_from_module_inside_a_meta_device_context():
    """Under `with torch.device("meta")` (accelerate's empty init) the probe still runs on the
    CPU: its tensors name their device."""
    with torch.device("meta"):
        plain, one_plus = PlainRMSNorm(8), OnePlusRMSNorm(8)
        assert RMSNorm.from_module(plain).weight_offset == 0.0
        assert RMSNorm.from_module(one_plus).weight_offset == 1.0


def test_from_module_skips_instance_hooks():
    src = PlainRMSNorm(16)
    calls = []
    src.register_forward_hook(lambda *a: calls.append(a))
    RMSNorm.from_module(src)
    assert calls == []


# ---- patch_model without transformers ----------------------------------------------------------

class Block(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.norm_a = PlainRMSNorm(n)
        self.norm_b = nn.RMSNorm(n, eps=1e-6)
        self.proj = nn.Linear(n, n)
        self.odd = MeanNorm(n)    # named *Norm but not *RMSNorm: never touched


def test_patch_model_swaps_and_shares(device):
    model = nn.Sequential(Block(24), Block(24)).to(device)
    shared = model[0].norm_a
    model[1].norm_a = shared                      # one module used twice: one replacement
    x = rand_x((5, 24), torch.float32, device)
    with torch.no_grad():
        want = [model[i].norm_b(model[i].norm_a(x)) for i in range(2)]
        assert patch_model(model) == 3
        assert patch_model(model) == 0, "already ours: left alone"
        assert model[0].norm_a is model[1].norm_a and model[0].norm_a.weight is shared.weight
        for i in range(2):
            assert type(model[i].norm_a) is RMSNorm and type(model[i].norm_b) is RMSNorm
            assert isinstance(model[i].odd, MeanNorm)
            assert_close(model[i].norm_b(model[i].norm_a(x)), want[i].double())


class BadRMSNorm(MeanNorm):
    pass


def test_patch_model_names_a_non_module():
    with pytest.raises(TypeError, match="patch_model expects an nn.Module, got NoneType"):
        patch_model(None)


def test_patch_model_keeps_what_it_cannot_reproduce_and_warns():
    model = nn.Sequential(PlainRMSNorm(8), BadRMSNorm(8))
    with pytest.warns(UserWarning, match=r"kept 1 norm.*1 \(cannot convert BadRMSNorm"):
        assert patch_model(model) == 1
    assert isinstance(model[0], RMSNorm) and isinstance(model[1], BadRMSNorm)
