"""The demo: embedded checkpoints, a user directory, the CLI, and that it can fail."""
import os
import subprocess
import sys

import torch

import rmsnorm_triton.exllamav2 as exl
from rmsnorm_triton.demo import run_demo
from rmsnorm_triton.loading import save_checkpoint

EMBEDDED_CHECKS = (5 + 9) * 4   # Llama 2x2+1 norms, Gemma 2x4+1; fp16/fp32 in x fp16/fp32 out


def test_demo_passes_on_the_embedded_checkpoints(capsys, device):
    assert run_demo(device=device) == 0
    out = capsys.readouterr().out
    assert f"verdict: PASS: {EMBEDDED_CHECKS}/{EMBEDDED_CHECKS} checks" in out
    assert "path: " in out and "tiny-gemma" in out and "post_feedforward_layernorm" in out
    assert "norm_constant_bias=1" in out and "fp32->fp16" in out


def test_demo_on_a_model_directory(tmp_path, capsys, device):
    tensors = {"model.norm.weight": torch.randn(48).to(torch.bfloat16),
               "model.layers.0.self_attn.q_norm.weight": torch.randn(16),
               "model.layers.0.mlp.up_proj.weight": torch.randn(8, 48)}
    save_checkpoint(tmp_path, {"architectures": ["Qwen3ForCausalLM"], "rms_norm_eps": 1e-6},
                    tensors)
    assert run_demo(tmp_path, device=device) == 0
    out = capsys.readouterr().out
    assert "verdict: PASS: 8/8" in out and "q_norm" in out and "up_proj" not in out


def test_demo_reports_a_wrong_norm(monkeypatch, capsys, device):
    def off_by_a_bit(x, weight, eps, **kw):
        return exl.rms_norm_reference(x, weight, eps, **kw) * 1.01
    monkeypatch.setattr(exl, "rms_norm", off_by_a_bit)
    assert run_demo(device=device) == 1
    out = capsys.readouterr().out
    assert f"verdict: FAIL: 0/{EMBEDDED_CHECKS}" in out and "  FAIL" in out


def test_demo_refuses_a_missing_directory(tmp_path, capsys):
    assert run_demo(tmp_path / "nope") == 2
    assert "does not exist" in capsys.readouterr().out


def test_cli_demo():
    # The child inherits TRITON_INTERPRET from conftest: it runs the same path as this process.
    r = subprocess.run([sys.executable, "-m", "rmsnorm_triton", "demo"], capture_output=True,
                       text=True, timeout=120, env=os.environ.copy())
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"verdict: PASS: {EMBEDDED_CHECKS}/{EMBEDDED_CHECKS}" in r.stdout
