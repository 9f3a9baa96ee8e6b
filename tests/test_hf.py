"""patch_model and RMSNorm.from_module on real transformers classes (tiny random models, CPU)."""
import importlib

import pytest
import torch

from helpers import assert_close, rand_x
from rmsnorm_triton import RMSNorm, patch_model

transformers = pytest.importorskip("transformers", reason="transformers is an optional extra")

SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=128, max_position_embeddings=64)


def _hf_class(module: str, name: str):
    try:
        return getattr(importlib.import_module(f"transformers.models.{module}"), name)
    except (ImportError, AttributeError):
        pytest.skip(f"transformers {transformers.__version__} has no {module}.{name}")


def _gemma_model():
    """Gemma3 text if this transformers has it, else Gemma2."""
    try:
        return (transformers.Gemma3TextConfig, transformers.Gemma3ForCausalLM,
                dict(head_dim=16, sliding_window=8))
    except AttributeError:
        return transformers.Gemma2Config, transformers.Gemma2ForCausalLM, dict(head_dim=16)


def _hf_norms(model):
    return [m for m in model.modules() if type(m).__name__.endswith("RMSNorm")
            and not isinstance(m, RMSNorm)]


def _tiny(kind, dtype, device):
    config_cls, model_cls, extra = ((transformers.LlamaConfig, transformers.LlamaForCausalLM, {})
                                    if kind == "llama" else _gemma_model())
    model = model_cls(config_cls(**SMALL, **extra)).eval().to(device=device, dtype=dtype)
    # Non-trivial norm weights: a missing or wrong (1 + w) then changes every logit.
    with torch.no_grad():
        for m in _hf_norms(model):
            w = 0.1 * torch.randn(m.weight.shape, device=device)
            m.weight.copy_(w if kind == "gemma" else 1.0 + w)
    return model


# fp32: the two differ only by fp32 rounding. bf16: HF Llama rounds x*rstd to bf16 before the
# weight multiply and we do not, and the interpreter truncates bf16 stores, so a few bf16 ulps.
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)],
                         ids=["fp32", "bf16"])
@pytest.mark.parametrize("kind", ["llama", "gemma"])
def test_patched_model_gives_the_same_logits(device, kind, dtype, tol):
    model = _tiny(kind, dtype, device)
    norms = _hf_norms(model)
    layers = SMALL["num_hidden_layers"]
    if kind == "llama":
        assert len(norms) == 2 * layers + 1
    ids = torch.randint(0, SMALL["vocab_size"], (2, 9), device=device)
    with torch.no_grad():
        want = model(ids).logits
        assert patch_model(model) == len(norms)
        got = model(ids).logits
    assert _hf_norms(model) == []
    assert {m.weight_offset for m in model.modules() if isinstance(m, RMSNorm)} == (
        {1.0} if kind == "gemma" else {0.0})
    assert_close(got, want.double(), tol=tol)


def test_patched_model_loads_its_own_state_dict(device):
    model = _tiny("llama", torch.float32, device)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    patch_model(model)
    assert list(model.state_dict()) == list(state)
    model.load_state_dict(state)


@pytest.mark.parametrize("module, name, offset, eps_attr", [
    ("llama.modeling_llama", "LlamaRMSNorm", 0.0, "variance_epsilon"),
    ("mistral.modeling_mistral", "MistralRMSNorm", 0.0, "variance_epsilon"),
    ("qwen2.modeling_qwen2", "Qwen2RMSNorm", 0.0, "variance_epsilon"),
    ("qwen3.modeling_qwen3", "Qwen3RMSNorm", 0.0, "variance_epsilon"),
    ("gemma.modeling_gemma", "GemmaRMSNorm", 1.0, "eps"),
    ("gemma2.modeling_gemma2", "Gemma2RMSNorm", 1.0, "eps"),
    ("gemma3.modeling_gemma3", "Gemma3RMSNorm", 1.0, "eps"),
    ("gemma3n.modeling_gemma3n", "Gemma3nRMSNorm", 0.0, "eps"),        # "Gemma", but w
    ("qwen3_next.modeling_qwen3_next", "Qwen3NextRMSNorm", 1.0, "eps"),  # not "Gemma", but 1+w
])
def test_from_module_on_hf_classes(device, module, name, offset, eps_attr):
    src = _hf_class(module, name)(80, eps=1e-5).to(device)
    assert getattr(src, eps_attr) == 1e-5
    with torch.no_grad():
        src.weight.copy_(0.1 * torch.randn(80) + (0.0 if offset else 1.0))
    m = RMSNorm.from_module(src)
    assert (m.weight_offset, m.eps) == (offset, 1e-5) and m.weight is src.weight
    x = rand_x((3, 80), torch.float32, device)
    with torch.no_grad():
        assert_close(m(x), src(x).double())


@pytest.mark.parametrize("module, name, offset", [
    ("llama.modeling_llama", "LlamaRMSNorm", 0.0),
    ("gemma3.modeling_gemma3", "Gemma3RMSNorm", 1.0),
    ("gemma3n.modeling_gemma3n", "Gemma3nRMSNorm", 0.0),        # "Gemma", but w
    ("qwen3_next.modeling_qwen3_next", "Qwen3NextRMSNorm", 1.0),  # not "Gemma", but 1+w
])
def test_from_module_on_meta_hf_classes(module, name, offset):
    """Built on meta before its weights load (accelerate's empty init), the form still comes out
    right: it is probed through a CPU stand-in, not read from the class name."""
    with torch.device("meta"):
        src = _hf_class(module, name)(80, eps=1e-5)
    m = RMSNorm.from_module(src)
    assert (m.weight_offset, m.eps) == (offset, 1e-5) and m.weight is src.weight
