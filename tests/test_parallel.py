"""TPContext, broadcast, norm_on_devices and forward_tp: CPU devices here, real GPUs below."""
import numpy as np
import pytest
import torch

import rmsnorm_triton as rt
from helpers import assert_close, assert_guard_intact, poisoned, rand_w, rand_x, rmsnorm_ref
from rmsnorm_triton.parallel import (BROADCAST_ID, BROADCAST_KV, BROADCAST_Q, BROADCAST_RS,
                                     BROADCAST_VC, TPContext, _norm_from_peer, _writable_outs,
                                     capture_graph, forward_tp, norm_on_devices)

BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32
M, N = 5, 96
EPS = 1e-5


def _name(d):
    return str(d).replace("torch.", "")


def _local(x, w, dev, **kw):
    """The single-device result every TP path must reproduce bit for bit."""
    return rt.rms_norm(x.to(dev), w, EPS, **kw)


def _assert_all_equal(got, want):
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.device == w.device and g.dtype == w.dtype, f"device {i}"
        torch.testing.assert_close(g, w, rtol=0, atol=0, msg=lambda m: f"device {i}: {m}")


# ---- CPU devices: the logic without GPUs -------------------------------------------------------

def test_broadcast_constants_match_exllamav2():
    assert (BROADCAST_KV, BROADCAST_ID, BROADCAST_VC, BROADCAST_RS, BROADCAST_Q) == (0, 1, 2, 3, 4)
    assert rt.BROADCAST_VC == 2 and rt.TPContext is TPContext


def test_splits_default_to_every_device_and_are_honoured():
    ctx = TPContext(["cpu", "cpu", "cpu"], splits={BROADCAST_VC: ["cpu"]})
    assert ctx.devices == [torch.device("cpu")] * 3
    assert ctx.devices_for(BROADCAST_VC) == [torch.device("cpu")]
    for bt in (BROADCAST_KV, BROADCAST_ID, BROADCAST_RS, BROADCAST_Q):
        assert len(ctx.devices_for(bt)) == 3
    assert ctx.stream("cpu") is None
    x = rand_x((M, N), BF16, "cpu")
    assert len(ctx.broadcast(x, BROADCAST_VC)) == 1
    ws = [rand_w(N, BF16, "cpu")]
    assert len(forward_tp(ctx, BROADCAST_VC, x, ws, None, EPS)) == 1


def test_broadcast_returns_one_equal_copy_per_device():
    ctx = TPContext(["cpu", "cpu"])
    x = rand_x((2, 3, N), FP16, "cpu")
    copies = ctx.broadcast(x, BROADCAST_RS)
    assert len(copies) == 2
    for c in copies:
        assert torch.equal(c, x) and c.device == x.device
    bufs = [torch.empty_like(x), None]
    copies = ctx.broadcast(x, BROADCAST_RS, out=bufs)
    assert copies[0] is bufs[0] and torch.equal(bufs[0], x) and copies[1] is x
    with pytest.raises(ValueError, match=r"out\[1\] must be"):
        ctx.broadcast(x, BROADCAST_RS, out=[None, torch.empty(N)])


@pytest.mark.parametrize("out_dtype", [None, FP16, BF16, FP32], ids=_name)
@pytest.mark.parametrize("x_dtype", [FP16, BF16, FP32], ids=_name)
def test_forward_tp_equals_single_device(x_dtype, out_dtype):
    ctx = TPContext(["cpu", "cpu"])
    x = rand_x((M, N), x_dtype, "cpu")
    ws = [rand_w(N, x_dtype, "cpu"), rand_w(N, FP32, "cpu")]      # replicas may differ in dtype
    ys = forward_tp(ctx, BROADCAST_RS, x, ws, None, EPS, out_dtype=out_dtype)
    _assert_all_equal(ys, [_local(x, w, "cpu", out_dtype=out_dtype) for w in ws])
    assert ys[0].dtype == (out_dtype or x_dtype)


def test_negative_view_source_is_read_as_its_values():
    ctx = TPContext(["cpu", "cpu"])
    x = rand_x((M, N), BF16, "cpu")
    neg = torch._neg_view(-x)                # equal to x; its memory holds -x
    ws = [rand_w(N, BF16, "cpu")] * 2
    _assert_all_equal(forward_tp(ctx, BROADCAST_RS, neg, ws, None, EPS),
                      [_local(x, w, "cpu") for w in ws])
    _assert_all_equal(ctx.broadcast(neg, BROADCAST_RS), [x, x])


def test_sparse_sources_and_buffers_are_refused():
    ctx = TPContext(["cpu", "cpu"])
    x = rand_x((M, N), BF16, "cpu")
    ws = [rand_w(N, BF16, "cpu")] * 2
    for bad in (x.to_sparse(), x.to_sparse_csr()):
        with pytest.raises(TypeError, match="x must be a dense tensor"):
            forward_tp(ctx, BROADCAST_RS, bad, ws, None, EPS)
        with pytest.raises(TypeError, match="x must be a dense tensor"):
            ctx.broadcast(bad, BROADCAST_RS)
    with pytest.raises(TypeError, match=r"out\[1\] must be a dense tensor"):
        ctx.broadcast(x, BROADCAST_RS, out=[None, torch.zeros(M, N, dtype=BF16).to_sparse()])
    # The fanout's check of the caller's buffers steps aside (the general path names them).
    csr = [torch.zeros(M, N, dtype=BF16).to_sparse_csr()] * 2
    assert _writable_outs(x, ctx.devices, csr, None, ws, None) is None


def test_bias_offset_and_clamp_pass_through():
    ctx = TPContext(["cpu", "cpu"])
    x = rand_x((M, N), FP16, "cpu")
    x[0, 0] = float("inf")
    ws = [rand_w(N, FP16, "cpu", gemma=True) for _ in range(2)]
    bs = [rand_w(N, FP32, "cpu") for _ in range(2)]
    kw = dict(weight_offset=1.0, clamp_fp16_input=True, out_dtype=FP32)
    ys = forward_tp(ctx, BROADCAST_KV, x, ws, bs, EPS, **kw)
    _assert_all_equal(ys, [_local(x, w, "cpu", bias=b, **kw) for w, b in zip(ws, bs)])
    assert all(torch.isfinite(y).all() for y in ys)


def test_list_input_and_exllamav2_style_empty_bias_list():
    ctx = TPContext(["cpu", "cpu"])
    xs = [rand_x((2, 4, N), BF16, "cpu") for _ in range(2)]
    ws = [rand_w(N, FP16, "cpu") for _ in range(2)]
    ys = forward_tp(ctx, BROADCAST_ID, xs, ws, [], EPS, out_dtype=FP16)
    _assert_all_equal(ys, [_local(x, w, "cpu", out_dtype=FP16) for x, w in zip(xs, ws)])
    assert ys[0].shape == (2, 4, N)
    ys = norm_on_devices(ctx, xs, None, None, EPS)
    _assert_all_equal(ys, [rt.rms_norm(x, None, EPS) for x in xs])


def test_out_buffers_are_written_in_place():
    ctx = TPContext(["cpu", "cpu"])
    x = rand_x((M, N), BF16, "cpu")
    ws = [rand_w(N, BF16, "cpu") for _ in range(2)]
    bufs, views = zip(*(poisoned(M, N, FP32, "cpu") for _ in range(2)))
    ys = forward_tp(ctx, BROADCAST_RS, x, ws, None, EPS, out=list(views))
    for y, v, buf, w in zip(ys, views, bufs, ws):
        assert y.data_ptr() == v.data_ptr()
        assert torch.equal(v, _local(x, w, "cpu", out_dtype=FP32))
        assert_guard_intact(buf, N)


def test_zero_rows():
    ctx = TPContext(["cpu", "cpu"])
    ys = forward_tp(ctx, BROADCAST_RS, torch.empty(0, N), None, None, EPS)
    assert [y.shape for y in ys] == [(0, N), (0, N)]


def test_fused_auto_falls_back_to_copies_and_true_refuses_without_peers():
    ctx = TPContext(["cpu", "cpu"], fused="auto")
    x = rand_x((M, N), BF16, "cpu")
    ws = [rand_w(N, BF16, "cpu") for _ in range(2)]
    _assert_all_equal(forward_tp(ctx, BROADCAST_RS, x, ws, None, EPS),
                      [_local(x, w, "cpu") for w in ws])
    with pytest.raises(ValueError, match="fused=True"):
        forward_tp(ctx, BROADCAST_RS, x, ws, None, EPS, fused=True)


@pytest.mark.parametrize("out_dtype", [None, FP32], ids=_name)
def test_peer_launch_equals_rms_norm_on_one_device(device, out_dtype):
    """The fused entry's launch, with x on the kernel's own device, is rms_norm's."""
    x = rand_x((M, N), BF16, device)
    big = rand_x((M, N + 32), BF16, device)
    w, b = rand_w(N, FP16, device), rand_w(N, FP32, device)
    for src in (x, big[:, :N]):
        got = _norm_from_peer(src, src.device, w, b, None, EPS, out_dtype, 1.0, False)
        want = rt.rms_norm(src, w, EPS, bias=b, weight_offset=1.0, out_dtype=out_dtype)
        assert torch.equal(got, want)


@pytest.mark.parametrize("kwargs,match", [
    (dict(devices=[]), "at least one device"),
    # Without CUDA the GPU itself is refused first.
    (dict(devices=["cpu", "cuda:0"]),
     "all CUDA or all CPU" if torch.cuda.is_available() else "is a GPU, but this torch sees none"),
    (dict(devices=["cpu"], splits={7: ["cpu"]}), "broadcast_type"),
    (dict(devices=["cpu"], splits={BROADCAST_RS: []}), "empty"),
    (dict(devices=["cpu"], fused="yes"), "fused"),
    (dict(devices=["cpu"], fanout_max_bytes=-1), "fanout_max_bytes must be an int >= 0"),
    (dict(devices=["cpu"], collective_min_bytes=1.5), r"collective_min_bytes .* got 1.5"),
], ids=["no-devices", "mixed", "bad-type", "empty-split", "bad-fused", "bad-fanout",
        "bad-collective"])
def test_bad_context_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TPContext(**kwargs)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(devices="cpu"), TypeError, r"devices must be a list of devices .* got str \('cpu'\)"),
    (dict(devices=torch.device("cpu")), TypeError, "devices must be a list of devices"),
    (dict(devices=[None]), TypeError, r"devices must be torch.device, str or int, got NoneType"),
    (dict(devices=["cpux"]), ValueError, r"device 'cpux' is not a device"),
    (dict(devices=["cpu"], splits=[["cpu"]]), TypeError, r"splits must be a dict .* got list"),
    (dict(devices=["cpu"], splits={BROADCAST_RS: "cpu"}), TypeError,
     r"splits\[3\] must be a list of devices, got str"),
], ids=["devices-str", "devices-device", "device-none", "device-typo", "splits-list",
        "split-str"])
def test_context_arguments_of_the_wrong_kind(kwargs, error, match):
    with pytest.raises(error, match=match):
        TPContext(**kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message a machine without "
                    "CUDA gets")
def test_gpu_devices_without_cuda_are_named():
    for devices in (["cuda:0"], ["cuda"], [0], [np.int64(1)]):
        with pytest.raises(ValueError, match=r"TPContext device cuda(:\d)? is a GPU, but this "
                                             r"torch sees none"):
            TPContext(devices)


def test_bad_call_arguments():
    ctx = TPContext(["cpu", "cpu"])
    x = rand_x((M, N), BF16, "cpu")
    ws = [rand_w(N, BF16, "cpu") for _ in range(2)]
    with pytest.raises(ValueError, match="broadcast_type"):
        ctx.devices_for(5)
    with pytest.raises(ValueError, match="one entry per device"):
        forward_tp(ctx, BROADCAST_RS, x, ws[:1], None, EPS)
    with pytest.raises(ValueError, match="one entry per device"):
        forward_tp(ctx, BROADCAST_RS, x, ws[0], None, EPS)
    with pytest.raises(ValueError, match="one tensor per device"):
        forward_tp(ctx, BROADCAST_RS, [x], ws, None, EPS)
    with pytest.raises(TypeError, match="list of tensors"):
        norm_on_devices(ctx, x, ws, None, EPS)
    with pytest.raises(ValueError, match=r"shape \(96,\)"):
        forward_tp(ctx, BROADCAST_RS, x, [w[:-1] for w in ws], None, EPS)
    # A bad entry of a per-device list is named by its index, not as a lone "weight".
    with pytest.raises(ValueError, match=r"device 1 of the split \(cpu\), with weights\[1\].*"
                                         r"weight must have shape \(96,\)"):
        forward_tp(ctx, BROADCAST_RS, x, [ws[0], ws[1][:-1]], None, EPS)
    with pytest.raises(TypeError, match=r"device 0 of the split.*biases\[0\].*bias must be"):
        forward_tp(ctx, BROADCAST_RS, x, ws, [torch.ones(N, dtype=torch.int32), None], EPS)
    with pytest.raises(ValueError, match="fused"):
        forward_tp(ctx, BROADCAST_RS, x, ws, None, EPS, fused="sometimes")
    # Unhashable values pass the repeat-call memo and get the full path's message.
    with pytest.raises(ValueError, match=r"fused must be one of .* got \['auto'\]"):
        forward_tp(ctx, BROADCAST_RS, x, ws, None, EPS, fused=["auto"])
    with pytest.raises(TypeError, match=r"eps must be a float, got list"):
        forward_tp(ctx, BROADCAST_RS, x, ws, None, [EPS])


# ---- the seed-compatible module on a TPContext ---------------------------------------------------

class _TinyModel:
    """What ExLlamaV2RMSNorm reads from a model: config, tensors by key, tp_context."""

    def __init__(self, tensors, ctx, eps=1e-5, constant_bias=0.0):
        from types import SimpleNamespace
        self.config = SimpleNamespace(norm_eps=eps, arch=SimpleNamespace(
            lm=SimpleNamespace(norm_constant_bias=constant_bias)))
        self.tensors, self.tp_context = tensors, ctx

    def has_tensor(self, key):
        return key in self.tensors

    def get_tensor(self, key, device=None):
        return self.tensors[key].clone()


@pytest.mark.parametrize("output_fp32", [False, True], ids=["fp16-out", "fp32-out"])
@pytest.mark.parametrize("x_dtype", [FP16, BF16], ids=_name)
def test_exllamav2_module_tp_split_then_forward(x_dtype, output_fp32):
    from rmsnorm_triton import ExLlamaV2RMSNorm

    ctx = TPContext(["cpu", "cpu", "cpu"], splits={BROADCAST_VC: ["cpu", "cpu"]})
    key = "model.norm"
    w = rand_w(N, FP32, "cpu")
    norm = ExLlamaV2RMSNorm(_TinyModel({key + ".weight": w}, ctx), key)
    norm.load()
    x = rand_x((2, 3, N), x_dtype, "cpu")
    unsplit = norm.forward(x, output_fp32=output_fp32)
    norm.tp_split(BROADCAST_VC)
    assert norm.is_tp and len(norm.weight) == 2
    outs = norm.forward(x, output_fp32=output_fp32)
    assert isinstance(outs, list) and len(outs) == 2
    for y in outs:
        assert y.dtype == (FP32 if output_fp32 else FP16) and y.shape == x.shape
        assert torch.equal(y, unsplit)
    got = norm.forward(list(ctx.broadcast(x, BROADCAST_VC)), intermediates=True,
                       output_fp32=output_fp32)
    assert set(got) == {"hidden_states"}
    _assert_all_equal(got["hidden_states"], outs)


def test_rmsnorm_module_tp_split_then_forward_tp():
    ctx = TPContext(["cpu", "cpu"])
    norm = rt.RMSNorm(N, EPS, weight_offset=1.0, bias=True, out_dtype=FP32)
    with torch.no_grad():
        norm.weight.copy_(rand_w(N, FP32, "cpu", gemma=True))
        norm.bias.copy_(rand_w(N, FP32, "cpu"))
    with pytest.raises(RuntimeError, match="tp_split"):
        norm.forward_tp(torch.ones(1, N))
    norm.tp_split(BROADCAST_RS, ctx)
    x = rand_x((M, N), BF16, "cpu")
    with torch.no_grad():
        want = norm(x)
        _assert_all_equal(norm.forward_tp(x), [want, want])
        _assert_all_equal(norm.forward_tp([x, x]), [want, want])


def test_rmsnorm_module_without_a_weight_or_promoting_on_a_tp_context():
    """A norm without a weight replicates none; one that promotes its output dtype (converted
    from HF Llama's form) does so on every device as its forward does."""
    ctx = TPContext(["cpu", "cpu"])
    x = rand_x((M, N), BF16, "cpu")
    plain = rt.RMSNorm(N, EPS, elementwise_affine=False)
    plain.tp_split(BROADCAST_RS, ctx)
    assert plain.tp_weights == [None, None]
    outs = plain.forward_tp(x)
    _assert_all_equal(outs, [plain(x)] * 2)
    assert_close(outs[0], rmsnorm_ref(x, None, EPS), BF16)
    promoting = rt.RMSNorm(N, EPS, dtype=FP32)
    promoting.out_dtype_rule = "promoted"
    with torch.no_grad():
        promoting.weight.copy_(rand_w(N, FP32, "cpu"))
    promoting.tp_split(BROADCAST_RS, ctx)
    with torch.no_grad():
        outs = promoting.forward_tp(x)
        assert [o.dtype for o in outs] == [FP32, FP32] == [promoting(x).dtype] * 2
    assert_close(outs[1], rmsnorm_ref(x, promoting.weight, EPS), FP32)


# ---- real GPUs ----------------------------------------------------------------------------------

N_GPUS = torch.cuda.device_count()
needs_2_gpus = pytest.mark.skipif(N_GPUS < 2, reason=f"needs 2+ CUDA GPUs, found {N_GPUS}")
SLEEP_CYCLES = 50_000_000          # tens of ms: an unordered reader would see stale data
GM, GN = 257, 4096                 # several programs per device, odd row count


def _gpus():
    return [torch.device("cuda", i) for i in range(min(N_GPUS, 4))]


def _sync_all():
    for d in _gpus():
        torch.cuda.synchronize(d)


def _weights(devs, dtype=BF16):
    w = rand_w(GN, dtype, "cuda:0")
    return [w.to(d) for d in devs]


def _expected(x, ws, **kw):
    return [_local(x, w, w.device, **kw) for w in ws]


PATHS = [pytest.param(dict(use_p2p=None, collective_min_bytes=1 << 62), False, id="p2p-copy"),
         pytest.param(dict(use_p2p=None, collective_min_bytes=0), False, id="nccl-collective"),
         pytest.param(dict(use_p2p=False), False, id="staged"),
         pytest.param(dict(use_p2p=None, fanout_max_bytes=0), "auto", id="fused"),
         pytest.param(dict(use_p2p=None, fanout_max_bytes=1 << 62), "auto", id="fanout")]
FANOUT = [pytest.param(0, id="peer-reads"), pytest.param(1 << 62, id="fanout")]


@needs_2_gpus
@pytest.mark.parametrize("ctx_kw,fused", PATHS)
@pytest.mark.parametrize("src", range(max(2, min(N_GPUS, 4))), ids=lambda i: f"src{i}")
def test_gpu_results_equal_single_gpu_bit_for_bit(ctx_kw, fused, src):
    devs = _gpus()
    ctx = TPContext(devs, **ctx_kw)
    ws = _weights(devs)
    big = rand_x((GM, GN + 64), BF16, devs[src])
    # Contiguous, row-strided, and a negative view (its memory holds -x).
    for x in (big[:, :GN].contiguous(), big[:, :GN], torch._neg_view(-big[:, :GN])):
        for out_dtype in (None, FP32):
            ys = forward_tp(ctx, BROADCAST_RS, x, ws, None, EPS, fused=fused, out_dtype=out_dtype)
            _assert_all_equal(ys, _expected(x, ws, out_dtype=out_dtype))
        copies = ctx.broadcast(x, BROADCAST_RS)
        _assert_all_equal(copies, [x.to(d) for d in devs])
        assert copies[src] is x or x.is_neg()


@needs_2_gpus
@pytest.mark.parametrize("use_p2p", [None, False], ids=["p2p", "no-p2p"])
def test_gpu_broadcast_into_preallocated_buffers(use_p2p):
    devs = _gpus()
    ctx = TPContext(devs, use_p2p=use_p2p)
    x = rand_x((GM, GN), BF16, devs[0])
    bufs = [torch.full((GM, GN), float("nan"), dtype=BF16, device=d) for d in devs]
    copies = ctx.broadcast(x, BROADCAST_RS, out=bufs)
    assert all(c is b for c, b in zip(copies, bufs))
    _assert_all_equal(copies, [x.to(d) for d in devs])


@needs_2_gpus
@pytest.mark.parametrize("pinned", [True, False], ids=["pinned", "pageable"])
@pytest.mark.parametrize("use_p2p", [None, False], ids=["p2p", "no-p2p"])
def test_gpu_host_source(pinned, use_p2p):
    devs = _gpus()
    ctx = TPContext(devs, use_p2p=use_p2p)
    ws = _weights(devs)
    x = rand_x((GM, GN), FP16, "cpu")
    x = x.pin_memory() if pinned else x
    ys = forward_tp(ctx, BROADCAST_RS, x, ws, None, EPS, fused="auto", clamp_fp16_input=True)
    _assert_all_equal(ys, _expected(x, ws, clamp_fp16_input=True))
    _assert_all_equal(ctx.broadcast(x, BROADCAST_RS), [x.to(d) for d in devs])


@needs_2_gpus
@pytest.mark.parametrize("ctx_kw,fused", PATHS)
def test_gpu_waits_for_the_producer_and_the_caller_waits_for_the_norm(ctx_kw, fused):
    devs = _gpus()
    ctx = TPContext(devs, **ctx_kw)
    ws = _weights(devs)
    data = rand_x((GM, GN), BF16, devs[0])
    _sync_all()
    producer = torch.cuda.Stream(devs[0])
    with torch.cuda.stream(producer):
        x = torch.zeros_like(data)
        torch.cuda._sleep(SLEEP_CYCLES)      # the copies must not start before this ends
        x.copy_(data)
        for d in devs:                       # and the norms must not be read before they ran
            with torch.cuda.stream(ctx.stream(d)):
                torch.cuda._sleep(SLEEP_CYCLES)
        ys = forward_tp(ctx, BROADCAST_RS, x, ws, None, EPS, fused=fused)
        seen = [y.clone() for y in ys]       # on each device's current stream
    _sync_all()
    _assert_all_equal(seen, _expected(data, ws))


@needs_2_gpus
def test_gpu_staged_buffer_is_not_overwritten_while_in_flight():
    devs = _gpus()
    ctx = TPContext(devs, use_p2p=False)
    ws = _weights(devs)
    xs = [rand_x((GM, GN), BF16, devs[0]) for _ in range(4)]
    xs.append(rand_x((4 * GM, GN), BF16, devs[0]))              # grows the pinned buffer
    _sync_all()
    for d in devs[1:]:                       # delay every host-to-device read of the buffer
        with torch.cuda.stream(ctx.stream(d)):
            torch.cuda._sleep(SLEEP_CYCLES)
    results = [forward_tp(ctx, BROADCAST_RS, x, ws, None, EPS) for x in xs]
    _sync_all()
    for x, ys in zip(xs, results):
        _assert_all_equal(ys, _expected(x, ws))


@needs_2_gpus
def test_gpu_source_outside_the_split_and_the_context():
    devs = _gpus()
    ctx = TPContext(devs[1:], splits={BROADCAST_VC: devs[1:2]})
    ws = _weights(devs[1:2])
    x = rand_x((GM, GN), BF16, devs[0])
    for fused in (False, "auto"):
        _assert_all_equal(forward_tp(ctx, BROADCAST_VC, x, ws, None, EPS, fused=fused),
                          _expected(x, ws))


@needs_2_gpus
def test_gpu_fused_with_out_buffers_equals_copies():
    devs = _gpus()
    ctx = TPContext(devs)
    if not all(ctx.can_read(a, b) for a in devs for b in devs):
        pytest.skip("these GPUs have no peer access between them")
    ws = _weights(devs, FP16)
    bs = _weights(devs, FP32)
    x = rand_x((GM, GN), FP16, devs[0])
    bufs, views = zip(*(poisoned(GM, GN, BF16, d) for d in devs))
    ys = forward_tp(ctx, BROADCAST_KV, x, ws, bs, EPS, fused=True, out=list(views),
                    weight_offset=1.0)
    copied = forward_tp(ctx, BROADCAST_KV, x, ws, bs, EPS, fused=False, out_dtype=BF16,
                        weight_offset=1.0)
    _assert_all_equal(ys, copied)
    for y, v, buf in zip(ys, views, bufs):
        assert y.data_ptr() == v.data_ptr()
        assert_guard_intact(buf, GN)


@needs_2_gpus
@pytest.mark.parametrize("fanout_max_bytes", [None, 0], ids=["fanout", "peer-reads"])
def test_gpu_out_buffers_written_by_a_kernel_count_as_modified(fanout_max_bytes):
    """The caller's buffers, written by the fanout kernel or by each GPU's kernel reading x
    over peer access, get their versions bumped as an in-place op's would."""
    devs = _gpus()
    ctx = TPContext(devs, fanout_max_bytes=fanout_max_bytes)
    if not all(ctx.can_read(a, b) for a in devs for b in devs):
        pytest.skip("these GPUs have no peer access between them")
    ws = _weights(devs, BF16)
    x = rand_x((8, GN), BF16, devs[0])
    outs = [torch.full((8, GN), float("nan"), dtype=BF16, device=d) for d in devs]
    before = [o._version for o in outs]
    forward_tp(ctx, BROADCAST_KV, x, ws, None, EPS, fused=True, out=outs)
    assert all(o._version > b for o, b in zip(outs, before))
    for o, w in zip(outs, ws):
        assert_close(o, rmsnorm_ref(x.to(o.device), w, EPS))


@needs_2_gpus
@pytest.mark.parametrize("ctx_kw,fused", PATHS)
def test_gpu_no_host_synchronization(ctx_kw, fused):
    devs = _gpus()
    ctx = TPContext(devs, **ctx_kw)
    ws = _weights(devs)
    x = rand_x((GM, GN), BF16, devs[1])
    xs = ctx.broadcast(x, BROADCAST_RS)
    host = x.cpu().pin_memory()
    calls = [lambda: forward_tp(ctx, BROADCAST_RS, x, ws, None, EPS, fused=fused),
             lambda: forward_tp(ctx, BROADCAST_RS, host, ws, None, EPS),
             lambda: forward_tp(ctx, BROADCAST_RS, xs, ws, None, EPS),
             lambda: ctx.broadcast(x, BROADCAST_RS)]
    for call in calls:                       # compile, allocate and pin outside the check
        call()
    _sync_all()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for call in calls:
            call()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    _sync_all()


@needs_2_gpus
def test_gpu_concurrent_threads_and_side_streams_match_serial():
    from concurrent.futures import ThreadPoolExecutor
    from contextlib import ExitStack

    devs = _gpus()
    contexts = [TPContext(devs), TPContext(devs, use_p2p=False), TPContext(devs, fused="auto")]
    ws = _weights(devs)
    inputs = [rand_x((1 + 37 * k, GN), BF16, devs[k % len(devs)]) for k in range(24)]
    serial = [_expected(x, ws) for x in inputs]
    _sync_all()

    def worker(t):
        streams = [torch.cuda.Stream(d) for d in devs]
        with ExitStack() as stack:           # this thread's current stream on every device
            for s in streams:
                stack.enter_context(torch.cuda.stream(s))
            return [(k, forward_tp(contexts[(t + k) % 3], BROADCAST_RS, inputs[k], ws, None,
                                   EPS))
                    for k in range(t, len(inputs), 4)]

    with ThreadPoolExecutor(4) as pool:
        done = [item for part in pool.map(worker, range(4)) for item in part]
    _sync_all()
    assert sorted(k for k, _ in done) == list(range(len(inputs)))
    for k, ys in done:
        _assert_all_equal(ys, serial[k])


LONG_N = 40000      # past 32K elements: the split-row kernel, whose slots each stream keeps


@needs_2_gpus
@pytest.mark.parametrize("ctx_kw,fused", PATHS)
def test_gpu_long_rows_equal_single_gpu_bit_for_bit(ctx_kw, fused):
    """Long rows take the split-row kernel on every device, on the TP streams or the callers'
    (each with partial-sum slots of its own), row counts growing and shrinking, any source."""
    devs = _gpus()
    ctx = TPContext(devs, **ctx_kw)
    w = rand_w(LONG_N, BF16, "cuda:0")
    ws = [w.to(d) for d in devs]
    for src in range(len(devs)):
        for rows in (3, 130, 5):
            x = rand_x((rows, LONG_N), BF16, devs[src])
            for out_dtype in (None, FP32):
                ys = forward_tp(ctx, BROADCAST_RS, x, ws, None, EPS, fused=fused,
                                out_dtype=out_dtype)
                _assert_all_equal(ys, _expected(x, ws, out_dtype=out_dtype))
                assert_close(ys[-1], rmsnorm_ref(x.to(ws[-1].device), ws[-1], EPS))


@needs_2_gpus
@pytest.mark.parametrize("fanout_max_bytes", FANOUT)
def test_gpu_long_rows_captured_over_several_gpus_replay_after_other_allocations(
        fanout_max_bytes):
    """The split-row slots a capture takes on a GPU other than the capture's come from that
    GPU's ordinary pool: they must stay allocated while the graph replays, whatever the
    program allocates and writes in between."""
    devs = _gpus()
    ctx = TPContext(devs, fused=True, fanout_max_bytes=fanout_max_bytes)
    if not all(ctx.can_read(d, devs[0]) for d in devs):
        pytest.skip("these GPUs have no peer access between them")
    w = rand_w(LONG_N, BF16, "cuda:0")
    ws = [w.to(d) for d in devs]
    x = rand_x((5, LONG_N), BF16, devs[0])
    calls = []
    graph = capture_graph(lambda: calls.append(forward_tp(ctx, BROADCAST_RS, x, ws, None, EPS)),
                          devs)
    ys = calls[-1]
    _sync_all()
    # Freed blocks of every size the slots could have taken, handed out and written.
    junk = [torch.full((n,), -7, dtype=torch.int64, device=d)
            for d in devs for n in (5 * 16, 8 * 16, 8 * 32, 4096)]
    for _ in range(2):
        x.copy_(rand_x((5, LONG_N), BF16, devs[0]))
        for y in ys:
            y.fill_(float("nan"))
        graph.replay()
        _sync_all()
        _assert_all_equal(ys, _expected(x, ws))
    assert all(bool((j == -7).all()) for j in junk), "a replay wrote into another tensor"


@needs_2_gpus
@pytest.mark.parametrize("use_p2p", [None, False], ids=["p2p", "no-p2p"])
def test_gpu_exllamav2_module_forward_after_tp_split(use_p2p):
    from rmsnorm_triton import ExLlamaV2RMSNorm

    devs = _gpus()
    ctx = TPContext(devs, use_p2p=use_p2p)
    w = rand_w(GN, FP32, "cpu")
    norm = ExLlamaV2RMSNorm(_TinyModel({"model.norm.weight": w}, ctx), "model.norm")
    norm.load()
    norm.tp_split(BROADCAST_VC)
    for src in (devs[-1], torch.device("cpu")):
        x = rand_x((GM, GN), FP16, src)
        outs = norm.forward(x, output_fp32=True)
        _assert_all_equal(outs, [_local(x, w.half().to(d), d, out_dtype=FP32,
                                        clamp_fp16_input=True) for d in devs])


@needs_2_gpus
@pytest.mark.parametrize("fanout_max_bytes", FANOUT)
@pytest.mark.parametrize("fused", [True, "auto"])
@pytest.mark.parametrize("with_out", [False, True], ids=["new-out", "out-buffers"])
def test_gpu_caller_may_overwrite_x_as_soon_as_forward_tp_returns(fused, with_out,
                                                                  fanout_max_bytes):
    """Peers read x in place: x's own stream must wait for those reads before the caller's
    next write to x (a residual add in place) runs."""
    devs = _gpus()
    ctx = TPContext(devs, fanout_max_bytes=fanout_max_bytes)
    if not all(ctx.can_read(d, devs[0]) for d in devs):
        pytest.skip("these GPUs have no peer access between them")
    ws = _weights(devs)
    x = rand_x((GM, GN), BF16, devs[0])
    want = _expected(x, ws)
    outs = [torch.empty(GM, GN, dtype=BF16, device=d) for d in devs] if with_out else None
    _sync_all()
    for d in devs[1:]:                       # every peer's current stream is busy for a while
        with torch.cuda.device(d):
            torch.cuda._sleep(SLEEP_CYCLES)
    ys = forward_tp(ctx, BROADCAST_RS, x, ws, None, EPS, fused=fused, out=outs)
    x.zero_()                                # the caller's next write, on x's current stream
    _sync_all()
    _assert_all_equal(ys, want)


@needs_2_gpus
def test_gpu_fanout_waits_for_earlier_work_on_the_memory_of_its_outputs():
    """A peer's output comes from its current stream's allocator, which may hand out memory
    that queued work there still writes: the fanout launch must wait for that work."""
    devs = _gpus()
    ctx = TPContext(devs, fanout_max_bytes=1 << 62)
    if not all(ctx.can_read(devs[0], d) for d in devs):
        pytest.skip("these GPUs have no peer access between them")
    ws = _weights(devs)
    x = rand_x((GM, GN), BF16, devs[0])
    want = _expected(x, ws)
    _sync_all()
    for d in devs[1:]:
        with torch.cuda.device(d):
            stale = torch.empty(GM, GN, dtype=BF16, device=d)
            torch.cuda._sleep(SLEEP_CYCLES)
            stale.fill_(float("nan"))        # queued behind the sleep, then freed at once:
            del stale                        # the next same-size allocation reuses it
    ys = forward_tp(ctx, BROADCAST_RS, x, ws, None, EPS, fused=True)
    _sync_all()
    _assert_all_equal(ys, want)


@needs_2_gpus
def test_gpu_fanout_writes_the_callers_buffers(monkeypatch):
    """Preallocated contiguous outputs (a CUDA graph's) take the fanout too; out's dtype is the
    output dtype, and a contradicting out_dtype is refused by the general path's check."""
    from rmsnorm_triton import parallel

    devs = _gpus()
    ctx = TPContext(devs)
    if not all(ctx.can_read(devs[-1], d) for d in devs):
        pytest.skip("these GPUs have no peer access between them")
    fanned = []
    real = parallel._fan_out
    monkeypatch.setattr(parallel, "_fan_out", lambda *a: fanned.append(1) or real(*a))
    x = rand_x((8, GN), FP16, devs[-1])                  # 64 KB: the fanout on 2 and 4 GPUs
    w, b = rand_w(GN, FP16, "cuda:0"), rand_w(GN, FP32, "cuda:0")
    ws, bs = [w.to(d) for d in devs], [b.to(d) for d in devs]
    outs = [torch.full((8, GN), float("nan"), dtype=FP32, device=d) for d in devs]
    ys = forward_tp(ctx, BROADCAST_KV, x, ws, bs, EPS, fused=True, out=outs, weight_offset=1.0)
    assert fanned and all(y is o for y, o in zip(ys, outs))
    _assert_all_equal(ys, [_local(x, wd, d, bias=bd, out_dtype=FP32, weight_offset=1.0)
                           for d, wd, bd in zip(devs, ws, bs)])
    with pytest.raises(ValueError, match="out_dtype"):
        forward_tp(ctx, BROADCAST_KV, x, ws, bs, EPS, fused=True, out=outs, out_dtype=BF16)
    big = rand_x((8, GN), FP16, devs[0])                 # out[0] holds weights[0]'s memory
    outs16 = [big] + [torch.empty(8, GN, dtype=FP16, device=d) for d in devs[1:]]
    with pytest.raises(ValueError, match="out overlaps weight"):
        forward_tp(ctx, BROADCAST_KV, x, [big[7]] + ws[1:], bs, EPS, fused=True, out=outs16)


@needs_2_gpus
def test_gpu_repeat_calls_follow_new_data_weights_and_settings():
    """Repeat decode-sized calls take a memoized route (one per signature): they must still
    read this call's x and weights, and follow later changes of the context's settings."""
    devs = _gpus()
    ctx = TPContext(devs)
    if not all(ctx.can_read(devs[0], d) for d in devs):
        pytest.skip("these GPUs have no peer access between them")
    weight_sets = [_weights(devs), _weights(devs)]
    for settings in ({}, {"fanout_max_bytes": 0}, {"fused": False}):
        for name, value in settings.items():
            setattr(ctx, name, value)
        for _ in range(3):
            x = rand_x((8, GN), BF16, devs[0])
            for ws in weight_sets:
                _assert_all_equal(forward_tp(ctx, BROADCAST_RS, x, ws, None, EPS),
                                  _expected(x, ws))
        if not settings:
            assert len(ctx._fanouts) == 1, "one route for one signature"
            rt.config.clear_caches()         # a new tuned table: routes are made again
            _assert_all_equal(forward_tp(ctx, BROADCAST_RS, x, ws, None, EPS), _expected(x, ws))
            assert len(ctx._fanouts) == 2
    w = weight_sets[0][0].clone().requires_grad_()
    with torch.enable_grad():                # autograd: never the forward-only fanout
        ctx.fused, ctx.fanout_max_bytes = "auto", 1 << 62
        ys = forward_tp(ctx, BROADCAST_RS, x, [w] + weight_sets[0][1:], None, EPS)
    assert ys[0].requires_grad
    _assert_all_equal([y.detach() for y in ys], _expected(x, weight_sets[0]))


@needs_2_gpus
@pytest.mark.parametrize("fanout_max_bytes", FANOUT)
def test_gpu_fused_forward_tp_captures_in_one_graph(fanout_max_bytes):
    """With a non-default current stream on every other GPU, forked from the capture stream
    and joined back, a fused call replays as captured."""
    devs = _gpus()
    ctx = TPContext(devs, fused=True, fanout_max_bytes=fanout_max_bytes)
    if not all(ctx.can_read(d, devs[0]) for d in devs):
        pytest.skip("these GPUs have no peer access between them")
    ws = _weights(devs)
    x = rand_x((GM, GN), BF16, devs[0])
    calls = []
    graph = capture_graph(lambda: calls.append(forward_tp(ctx, BROADCAST_RS, x, ws, None, EPS)),
                          devs)
    ys = calls[-1]                           # the captured call's outputs (after 2 warm-ups)
    for y in ys:
        y.fill_(float("nan"))
    _sync_all()
    x.copy_(rand_x((GM, GN), BF16, devs[0]))
    graph.replay()
    _sync_all()
    _assert_all_equal(ys, _expected(x, ws))
