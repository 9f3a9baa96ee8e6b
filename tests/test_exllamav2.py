"""ExLlamaV2RMSNorm: the seed module's behaviours (reference note, "must reproduce" list)."""
from types import SimpleNamespace

import pytest
import torch

from helpers import assert_close, rand_w, rand_x, rmsnorm_ref
from rmsnorm_triton import ExLlamaV2RMSNorm, open_model
from rmsnorm_triton.loading import save_checkpoint

N = 96
KEY = "model.layers.0.input_layernorm"
LLAMA = {"architectures": ["LlamaForCausalLM"], "rms_norm_eps": 1e-5, "hidden_size": N}
GEMMA = {"architectures": ["Gemma2ForCausalLM"], "rms_norm_eps": 1e-6, "hidden_size": N}


def _model(tmp_path, device, config=LLAMA, weight=None, **extra):
    gemma = "Gemma" in config["architectures"][0]
    w = rand_w(N, torch.bfloat16, "cpu", gemma=gemma) if weight is None else weight
    save_checkpoint(tmp_path, config, {KEY + ".weight": w, **extra})
    return open_model(tmp_path, device=device), w


def _loaded(tmp_path, device, **kw):
    model, w = _model(tmp_path, device, **kw)
    norm = ExLlamaV2RMSNorm(model, KEY)
    norm.load()
    return norm, w


def test_load_stores_fp16_and_reads_eps(tmp_path, device):
    model, w = _model(tmp_path, device)
    norm = ExLlamaV2RMSNorm(model, KEY)
    assert norm.variance_epsilon == 1e-6 and norm.weight is None and not norm.is_tp
    norm.load()
    assert norm.weight.dtype == torch.float16 and norm.weight.device.type == device
    assert not norm.weight.requires_grad and norm.bias is None
    assert norm.variance_epsilon == 1e-5
    assert torch.equal(norm.weight.cpu(), w.half())
    assert torch.equal(norm.get_weight().cpu(), w.half())


def test_gemma_bias_is_added_to_the_fp16_weight_in_fp16(tmp_path, device):
    w = torch.full((N,), 1e-4)
    w[1::2] = 0.3
    norm, _ = _loaded(tmp_path, device, config=GEMMA, weight=w)
    assert norm.archparams.norm_constant_bias == 1.0
    want = w.half() + torch.tensor(1.0, dtype=torch.float16)   # fp16(fp16(w) + 1)
    assert torch.equal(norm.weight.cpu(), want)
    assert norm.weight[0].item() == 1.0, "1e-4 is below fp16 resolution at 1"
    got = norm.get_weight().cpu()
    assert got.dtype == torch.float16 and got[0].item() == 0.0
    assert torch.equal(got, want - torch.tensor(1.0, dtype=torch.float16))


class _CachingModel:
    """The minimum DESIGN.md lists (no has_tensor), handing out one cached tensor per key."""

    def __init__(self, weight, bias_const):
        self.config = SimpleNamespace(norm_eps=1e-6,
                                      arch=SimpleNamespace(lm=SimpleNamespace(
                                          norm_constant_bias=bias_const)))
        self.tensors = {KEY + ".weight": weight}
        self.tp_context = None

    def get_tensor(self, key, device=None):
        if key not in self.tensors:
            raise KeyError(key)
        return self.tensors[key]


def test_reload_does_not_add_the_constant_bias_twice(device):
    w = rand_w(N, torch.float16, device, gemma=True)
    source = w.clone()
    model = _CachingModel(source, 1.0)
    norm = ExLlamaV2RMSNorm(model, KEY)
    norm.load()
    norm.unload()
    norm.load()
    assert torch.equal(source, w), "load() changed the tensor the model handed out"
    assert torch.equal(norm.weight, w + torch.tensor(1.0, dtype=torch.float16, device=device))
    x = rand_x((3, N), torch.float16, device)
    assert_close(norm.forward(x), rmsnorm_ref(x, norm.weight, 1e-6))


def test_archparams_override_the_models(tmp_path, device):
    model, w = _model(tmp_path, device)
    norm = ExLlamaV2RMSNorm(model, KEY, SimpleNamespace(norm_constant_bias=1.0))
    norm.load()
    assert torch.equal(norm.weight.cpu(), w.half() + torch.tensor(1.0, dtype=torch.float16))
    with pytest.raises(TypeError, match="archparams must have a numeric norm_constant_bias"):
        ExLlamaV2RMSNorm(model, KEY, SimpleNamespace())


@pytest.mark.parametrize("in_dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("output_fp32", [False, True], ids=["out-fp16", "out-fp32"])
@pytest.mark.parametrize("config", [LLAMA, GEMMA], ids=["llama", "gemma"])
def test_forward_matches_fp64_on_the_stored_weight(tmp_path, device, in_dtype, output_fp32,
                                                   config):
    norm, _ = _loaded(tmp_path, device, config=config)
    x = rand_x((2, 3, N), in_dtype, device)
    out = norm.forward(x, output_fp32=output_fp32)
    assert out.shape == x.shape
    assert out.dtype == (torch.float32 if output_fp32 else torch.float16)
    ref = rmsnorm_ref(x, norm.weight, norm.variance_epsilon)
    assert_close(out, ref)
    assert_close(norm.forward_torch(x, output_fp32=output_fp32), ref)


def test_forward_takes_the_seeds_arguments(tmp_path, device):
    norm, _ = _loaded(tmp_path, device)
    x = rand_x((5, N), torch.float16, device)
    out = norm.forward(x, None, None, None, loras=None, extra_kwarg=1)
    res = norm.forward(x, intermediates=True)
    assert list(res) == ["hidden_states"] and torch.equal(res["hidden_states"], out)
    res = norm.forward_torch(x, intermediates=True, output_fp32=True)
    assert list(res) == ["hidden_states"] and res["hidden_states"].dtype == torch.float32


# inf inputs and overflowing outputs are the point here; numpy (the interpreter) warns about them.
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_fp16_input_is_clamped_and_fp32_is_not(tmp_path, device):
    norm, _ = _loaded(tmp_path, device)
    x = rand_x((3, N), torch.float32, device)
    x[0, 5], x[1, 7] = float("inf"), float("-inf")
    x16 = x.half()
    ref = rmsnorm_ref(x16, norm.weight, norm.variance_epsilon, clamp=True)
    for fn in (norm.forward, norm.forward_torch):
        out = fn(x16, output_fp32=True)
        assert_close(out, ref)
        unclamped = fn(x, output_fp32=True)
        assert not torch.isfinite(unclamped[0]).all() and not torch.isfinite(unclamped[1]).all()
        assert_close(unclamped[2:], rmsnorm_ref(x[2:], norm.weight, norm.variance_epsilon))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_output_is_not_clamped(tmp_path, device):
    norm, _ = _loaded(tmp_path, device, weight=torch.full((N,), 60000.0))
    x = torch.ones(2, N, device=device, dtype=torch.float16)
    x[:, 0] = 50.0      # that element normalizes to ~9.6; times 60000 is past fp16's range
    out = norm.forward(x)
    assert torch.isinf(out[:, 0]).all() and torch.isfinite(out[:, 1:]).all()
    assert torch.isfinite(norm.forward(x, output_fp32=True)).all()


def test_bias_is_loaded_and_added(tmp_path, device):
    b = torch.randn(N)
    norm, _ = _loaded(tmp_path, device, **{KEY + ".bias": b})
    assert norm.bias.dtype == torch.float16 and torch.equal(norm.bias.cpu(), b.half())
    x = rand_x((4, N), torch.float32, device)
    ref = rmsnorm_ref(x, norm.weight, norm.variance_epsilon, bias=norm.bias)
    assert_close(norm.forward(x, output_fp32=True), ref)
    assert norm.weight_footprint() == 4 * N


def test_footprint_numel_and_scratch(tmp_path, device):
    model, _ = _model(tmp_path, device)
    norm = ExLlamaV2RMSNorm(model, KEY)
    assert norm.weight_footprint() == 2 * N, "before load: exllamav2's 2 * hidden_size"
    norm.load()
    assert norm.weight_footprint() == 2 * N
    assert norm.numel() == 0 and norm.scratch_space() == 0 and norm.scratch_space_fixed() == 0


def test_unload_then_forward_is_an_error(tmp_path, device):
    norm, _ = _loaded(tmp_path, device)
    norm.unload()
    assert norm.weight is None and norm.bias is None
    x = rand_x((2, N), torch.float16, device)
    for call in (lambda: norm.forward(x), lambda: norm.forward_torch(x), norm.get_weight):
        with pytest.raises(RuntimeError, match=f"{KEY}' is not loaded: call load"):
            call()
    norm.load()
    assert norm.forward(x).dtype == torch.float16


def test_missing_weight_names_key_and_directory(tmp_path, device):
    model, _ = _model(tmp_path, device)
    with pytest.raises(KeyError, match=f"'model.norm.weight' not found in {tmp_path}"):
        ExLlamaV2RMSNorm(model, "model.norm").load()


@pytest.mark.parametrize("tensors, error, words", [
    ({KEY + ".weight": torch.ones(2, N)}, ValueError, r"must be 1-D \(hidden_size,\), got"),
    ({KEY + ".weight": torch.ones(N, dtype=torch.int32)}, TypeError, "floating-point.*int32"),
    ({KEY + ".weight": torch.full((N,), 1e5)}, ValueError, "not finite in float16"),
    ({KEY + ".weight": torch.ones(N), KEY + ".bias": torch.ones(N + 1)}, ValueError,
     r"bias must have the weight's shape \(96,\), got \(97,\)"),
], ids=["2-D", "int", "overflow", "bias-shape"])
def test_bad_checkpoint_tensors(tmp_path, device, tensors, error, words):
    save_checkpoint(tmp_path, LLAMA, tensors)
    with pytest.raises(error, match=words):
        ExLlamaV2RMSNorm(open_model(tmp_path, device), KEY).load()


def test_bad_constructor_arguments_are_named(tmp_path, device):
    model, _ = _model(tmp_path, device)
    with pytest.raises(TypeError, match=r"key must be a str .* got int \(5\)"):
        ExLlamaV2RMSNorm(model, 5)
    with pytest.raises(TypeError, match="model must have config and get_tensor .* got NoneType "
                                        "without config, get_tensor"):
        ExLlamaV2RMSNorm(None, KEY)


def test_wrong_hidden_size_is_an_error_not_garbage(tmp_path, device):
    norm, _ = _loaded(tmp_path, device)
    with pytest.raises(ValueError, match=r"weight must have shape \(95,\)"):
        norm.forward(rand_x((2, 95), torch.float16, device))


def test_sparse_weight_is_refused_and_negative_views_are_kept_as_values(tmp_path, device):
    arch = SimpleNamespace(lm=SimpleNamespace(norm_constant_bias=0.0))
    sparse = SimpleNamespace(config=SimpleNamespace(norm_eps=1e-6, arch=arch),
                             get_tensor=lambda name: torch.randn(N).to_sparse(),
                             has_tensor=lambda name: name.endswith(".weight"))
    with pytest.raises(TypeError, match="must be a dense tensor"):
        ExLlamaV2RMSNorm(sparse, KEY).load()
    # A negative view (memory holding -w) saved and loaded: the values arrive, not the memory.
    w = rand_w(N, torch.float16, "cpu")
    norm, _ = _loaded(tmp_path, device, weight=torch._neg_view(-w))
    assert torch.equal(norm.weight.cpu(), w)
    x = rand_x((3, N), torch.float16, device)
    assert_close(norm.forward(x), rmsnorm_ref(x, w.to(device)))
