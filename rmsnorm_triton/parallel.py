"""Tensor parallelism in one process: per-device streams, broadcast, and norms on every GPU.

Stream protocol (no host synchronization anywhere):
- A tensor handed to us is ready on its device's *current* stream (the producer). Copies start
  on side streams of the source device once an event recorded there has fired.
- Each device's norm runs on that device's high-priority TP stream (`ctx.stream(dev)`), after
  its input is ready; the caller's current stream on that device then waits for the result.
- The fused path with new outputs skips the TP streams: every device's kernel reads x in place
  on that device's current stream, after one event recorded on x's producer, and x's stream
  then waits for those reads (the caller may write x next). A decode-sized call is all host
  time, and that removes most of it (bench/RESULTS.md).
- Small fused sources take one launch in all (fanout): a kernel on x's GPU, on its current
  stream, writes every device's copy over peer access. x's stream first waits for each peer's
  current stream (whose allocator just handed out that peer's output), and each peer's stream
  then waits for the launch.
- Capturing a multi-GPU call in one CUDA graph needs each GPU's current stream to be a
  non-default stream forked from the capture stream (`capture_graph` below does it).
- Whenever a tensor is used on a stream other than the one it was allocated on, the caching
  allocator is told (`record_stream`), so freeing it early never hands its memory out too soon;
  except where the allocating stream itself waits for that use before the call returns.
CPU devices take the same code with plain tensors and no streams: the logic runs without GPUs.
"""
from __future__ import annotations

import numbers
import threading
from collections.abc import Mapping
from contextlib import ExitStack

import torch
import torch.cuda.comm  # noqa: F401  (torch.cuda.comm is not imported by torch itself)

from . import plans
from .config import config_generation
from .ops import MAX_FANOUT, _launch, _needs_grad, fanout_plan, mark_written, rms_norm
from .validate import (FLOAT_DTYPES, _overlaps, as_rows, check_dense, check_inputs,
                       materialized, on_device)

# exllamav2's numbering (tensor_p.py / ext_tp.h): what each split divides.
BROADCAST_KV, BROADCAST_ID, BROADCAST_VC, BROADCAST_RS, BROADCAST_Q = range(5)
BROADCAST_TYPES = (BROADCAST_KV, BROADCAST_ID, BROADCAST_VC, BROADCAST_RS, BROADCAST_Q)
FUSED_CHOICES = (False, True, "auto")
_STAGING_LANE = -1                      # side-stream key of the device-to-host staging copy
_MIN_PINNED_BYTES = 1 << 20
# From 3 GPUs up, a source that sends one P2P copy to each peer divides its NVLink bandwidth
# among them (4 x H100: 2.3x slower than NCCL at 268 MB); NCCL's ring sends the data once per
# link. Below ~1 MB its launch latency loses to plain copies.
_COLLECTIVE_MIN_BYTES = 1 << 20
# fused="auto" lets peers read the source in place (2 x H100: faster than copy-then-norm at
# every size measured; 4 x H100: faster up to 16 MB) and hands larger sources on 3+ GPUs to the
# collective (4 x H100, 64 MB: 481 us against 565 us read in place).
_AUTO_FUSED_MAX_BYTES = 32 << 20
# The fanout: one kernel on the source GPU normalizes x once and writes every device's copy over
# peer access (one launch per call instead of one per GPU; NVLink writes also beat reads). With
# one peer it won at every size measured (2 x H100, 268 MB: 741 against 914 us read in place);
# with three peers the source's NVLink egress carries three copies, and it won only up to 1 MB
# (4 x H100, 16 MB: 173 against 161 us).
_FANOUT_MAX_BYTES_SHARED = 1 << 20
# A fanout to a wider output (16-bit x to fp32) pushes more bytes over NVLink than peer reads
# pull. 2 x H200, bf16 -> fp32, device time / host-inclusive time a call: 4096 x 2048 (16 MB
# of x) 112.8 / 110.2 us against 79.4 / 83.6 read in place; at 8 MB (2048 x 2048) peer reads
# led on device time (53.3 against 68.0 us) but lost on that slow host's loop (107.9 against
# 64.1 us: one launch against one a GPU). Past 8 MB both measures agree.
_FANOUT_MAX_BYTES_WIDER_OUT = 8 << 20


def _as_device(d) -> torch.device:
    if not isinstance(d, torch.device):
        if not isinstance(d, (str, numbers.Integral)) or isinstance(d, bool):
            raise TypeError(f"TPContext devices must be torch.device, str or int, got "
                            f"{type(d).__name__} ({d!r})")
        try:
            # An int is a GPU index, as torch.device(0) reads it.
            d = torch.device(d) if isinstance(d, str) else torch.device("cuda", int(d))
        except RuntimeError as e:
            raise ValueError(f"TPContext device {d!r} is not a device: {e}") from e
    dev = d
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"TPContext device {dev} is a GPU, but this torch sees none "
                         "(torch.cuda.is_available() is False); use 'cpu' devices")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    if dev.type not in ("cuda", "cpu"):
        raise ValueError(f"TPContext devices must be cuda:i or cpu, got {dev}")
    return dev


def _as_devices(name: str, devices, hint: str = "") -> list:
    """A list of devices, from any iterable of device-likes (not one device alone)."""
    if isinstance(devices, (str, torch.device, numbers.Integral)) or \
            not hasattr(devices, "__iter__"):
        raise TypeError(f"{name} must be a list of devices{hint}, got "
                        f"{type(devices).__name__} ({devices!r})")
    return [_as_device(d) for d in devices]


class TPContext:
    """The devices of a tensor-parallel model, their streams, and broadcast.

    devices: torch.device-likes, all CUDA or all CPU. splits: {broadcast_type: [device, ...]}
    (default: every device for every type). use_p2p: None uses peer access where the hardware
    has it, False always stages through pinned host memory, True requires it. fused: default
    of forward_tp's `fused` (False, True, or "auto": the measured-faster choice per size).
    collective_min_bytes: GPU sources of at least this size that go to 2 or more other GPUs
    use one NCCL broadcast (in-process, torch.cuda.comm) instead of one copy per GPU.
    fanout_max_bytes: fused sources up to this size are normalized once on their GPU by one
    kernel that writes every device's copy; larger ones are read by each device's own kernel.
    None (default): any size when the source has one peer, 1 MB when it has more.
    """

    def __init__(self, devices, splits=None, *, use_p2p=None, fused="auto",
                 collective_min_bytes=_COLLECTIVE_MIN_BYTES, fanout_max_bytes=None):
        if splits is not None and not isinstance(splits, Mapping):
            raise TypeError(f"splits must be a dict {{broadcast_type: [device, ...]}} or None, "
                            f"got {type(splits).__name__} ({splits!r})")
        self.devices = _as_devices("devices", devices, " (e.g. ['cuda:0', 'cuda:1'])")
        if not self.devices:
            raise ValueError("TPContext needs at least one device")
        kinds = {d.type for d in self.devices}
        if len(kinds) > 1:
            raise ValueError(f"TPContext devices must be all CUDA or all CPU, got {self.devices}")
        self.is_cuda = kinds == {"cuda"}
        if self.is_cuda and len(set(self.devices)) != len(self.devices):
            raise ValueError(f"TPContext devices repeat a GPU: {self.devices}")
        if fused not in FUSED_CHOICES:
            raise ValueError(f"fused must be one of {FUSED_CHOICES}, got {fused!r}")
        self.fused = fused
        for name, value in (("collective_min_bytes", collective_min_bytes),
                            ("fanout_max_bytes", fanout_max_bytes)):
            if (value is not None or name != "fanout_max_bytes") and (
                    isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be an int >= 0 (bytes), got {value!r}")
        self.collective_min_bytes = collective_min_bytes
        self.fanout_max_bytes = fanout_max_bytes
        self._splits = {bt: list(self.devices) for bt in BROADCAST_TYPES}
        for bt, devs in (splits or {}).items():
            self._splits[self._check_type(bt)] = self._check_split(bt, devs)
        self._lock = threading.Lock()   # guards lazy side streams and the pinned buffer
        self._local = threading.local()  # per thread: one reusable readiness event per GPU
        self._stream_objs = {}
        self._readable, self._fanout_limits = {}, {}
        self._fanouts = {}              # forward_tp's route key -> fanout plan (repeat calls)
        self._streams, self._side, self._peer = {}, {}, {}
        self._pinned, self._pinned_busy = None, []
        if self.is_cuda:
            self._init_cuda(use_p2p)

    # -- construction ------------------------------------------------------------------------
    def _check_type(self, bt) -> int:
        if bt not in BROADCAST_TYPES or isinstance(bt, bool):
            raise ValueError(f"broadcast_type must be one of {BROADCAST_TYPES} (BROADCAST_KV.."
                             f"BROADCAST_Q), got {bt!r}")
        return bt

    def _check_split(self, bt, devs) -> list:
        split = _as_devices(f"splits[{bt}]", devs)
        if not split:
            raise ValueError(f"splits[{bt}] is empty: every broadcast type needs a device")
        for d in split:
            if d not in self.devices:
                raise ValueError(f"splits[{bt}] names {d}, which is not one of the context's "
                                 f"devices {self.devices}")
        return split

    def _init_cuda(self, use_p2p):
        # exllamav2's choice: the highest priority, so TP work overtakes default-priority work.
        self._priority = top = torch.cuda.Stream.priority_range()[1]
        for d in self.devices:
            self._streams[d] = torch.cuda.Stream(d, priority=top)
        n = torch.cuda.device_count()
        for d in self.devices:
            if d.index >= n:
                raise ValueError(f"TPContext device {d} does not exist: {n} GPUs are visible")
        # Every pair is asked once here, also devices outside the context (a source may be one).
        for a in range(n):
            for b in range(n):
                self._peer[a, b] = a == b or (use_p2p is not False
                                              and torch.cuda.can_device_access_peer(a, b))
        ids = [d.index for d in self.devices]
        missing = [(a, b) for a in ids for b in ids if not self._peer[a, b]]
        if use_p2p is True and missing:
            raise ValueError(f"use_p2p=True but these GPU pairs have no peer access: {missing}")
        for a in ids:
            for b in ids:
                if a != b and self._peer[a, b]:
                    # PyTorch enables peer access lazily, on the first copy from a to b; a
                    # kernel reading another GPU's memory (fused) needs it enabled up front.
                    torch.zeros(1, device=f"cuda:{b}").copy_(torch.zeros(1, device=f"cuda:{a}"))
                    self._side[a, b] = torch.cuda.Stream(a, priority=top)
            self._side[a, _STAGING_LANE] = torch.cuda.Stream(a, priority=top)

    # -- public API ----------------------------------------------------------------------------
    def devices_for(self, broadcast_type) -> list:
        """The devices of that split, in order: weights and outputs follow this order."""
        return list(self._splits[self._check_type(broadcast_type)])

    def stream(self, device):
        """The device's high-priority TP stream (None for a CPU device)."""
        dev = device if isinstance(device, torch.device) else _as_device(device)
        if dev not in self.devices:
            raise ValueError(f"{dev} is not one of the context's devices {self.devices}")
        return self._streams.get(dev)

    def can_read(self, reader, owner) -> bool:
        """Whether a kernel on GPU `reader` may read memory of GPU `owner`: peer access is
        enabled (at construction) only between the context's own devices."""
        return (reader in self._streams and owner in self._streams
                and self._peer[reader.index, owner.index])

    def broadcast(self, x, broadcast_type, *, out=None) -> list:
        """One copy of x per device of the split, each ready on that device's current stream.

        x may live on any GPU or on the host (pinned or not). Where x already lives on a device
        it is returned as is, unless out (one preallocated buffer per device; None entries
        allocate) names a buffer for it. A pinned host x must not change until the copies ran,
        as with any non_blocking copy.
        """
        devices = self.devices_for(broadcast_type)
        return self._replicate(x, devices, norm_streams=False, peer_read=False, out=out)

    # -- cheap stream and event handles (a decode-sized call is all host time) --------------------
    def _current_stream(self, device_index: int):
        """torch.cuda.current_stream(i), minus the ~3 us of building a Stream object each call:
        the objects are kept by the (id, device, type) triple that fully describes one."""
        data = torch._C._cuda_getCurrentStream(device_index)
        stream = self._stream_objs.get(data)
        if stream is None:
            if len(self._stream_objs) > 1024:
                self._stream_objs.clear()
            stream = self._stream_objs[data] = torch.cuda.Stream(
                stream_id=data[0], device_index=data[1], device_type=data[2])
        return stream

    def _all_read(self, broadcast_type, source) -> bool:
        """Whether every device of the split can read a tensor on `source` in place (memoized:
        peer access is settled at construction)."""
        key = (broadcast_type, source)
        ok = self._readable.get(key)
        if ok is None:
            ok = self._readable[key] = all(d == source or self.can_read(d, source)
                                           for d in self._splits[broadcast_type])
        return ok

    def _fanout_max(self, broadcast_type, source, wider_out: bool = False) -> int:
        """The largest source (bytes) that takes the fanout to this split: -1 where a kernel on
        `source` may not write every device of it (memoized: peer access is settled).
        wider_out: the outputs take more bytes an element than x."""
        key = (broadcast_type, source, self.fanout_max_bytes, wider_out)
        limit = self._fanout_limits.get(key)
        if limit is None:
            split = self._splits[broadcast_type]
            peers = sum(d != source for d in split)
            if len(split) > MAX_FANOUT or not all(d == source or self.can_read(source, d)
                                                   for d in split):
                limit = -1
            elif self.fanout_max_bytes is not None:
                limit = self.fanout_max_bytes
            else:
                limit = 1 << 62 if peers <= 1 else _FANOUT_MAX_BYTES_SHARED
                if wider_out:
                    limit = min(limit, _FANOUT_MAX_BYTES_WIDER_OUT)
            self._fanout_limits[key] = limit
        return limit

    def _event(self, role: str, device_index: int):
        """This thread's reusable event for one role on one device. Re-recording it is safe:
        a wait already queued keeps the record it was queued after."""
        events = getattr(self._local, "events", None)
        if events is None:
            events = self._local.events = {}
        event = events.get((role, device_index))
        if event is None:
            event = events[role, device_index] = torch.cuda.Event()
        return event

    # -- replication ---------------------------------------------------------------------------
    def _side_stream(self, device_index, lane):
        stream = self._side.get((device_index, lane))
        if stream is None:              # a source outside the context: made once, then kept
            with self._lock:
                stream = self._side.setdefault((device_index, lane), torch.cuda.Stream(
                    device_index, priority=self._priority))
        return stream

    def _replicate(self, x, devices, *, norm_streams, peer_read, out=None) -> list:
        """Per device, a tensor holding x that its norm can read.

        Ready on the device's TP stream (norm_streams) or on its current stream (broadcast).
        peer_read: a device with peer access reads x in place instead of receiving a copy.
        """
        check_dense("x", x)
        if x.is_neg() or x.is_conj():
            # Collectives, staging and peer reads move memory, which holds -x in a negative
            # view (and conj(x) in a conjugate one).
            x = x.resolve_conj().resolve_neg()
        outs = _per_device(out, len(devices), "out")
        for i, (dev, buf) in enumerate(zip(devices, outs)):
            if buf is not None:
                check_dense(f"out[{i}]", buf)
            if buf is not None and (not isinstance(buf, torch.Tensor) or buf.device != dev
                                    or buf.shape != x.shape or buf.dtype != x.dtype):
                got = (f"{tuple(buf.shape)} {buf.dtype} on {buf.device}"
                       if isinstance(buf, torch.Tensor) else type(buf).__name__)
                raise ValueError(f"out[{i}] must be a {tuple(x.shape)} {x.dtype} tensor on "
                                 f"{dev}, got {got}")
        if not self.is_cuda:
            if x.device.type != "cpu":
                raise ValueError(f"x is on {x.device}, but this context's devices are CPUs")
            return [x if o is None else o.copy_(x) for o in outs]
        waiter = self._streams.get if norm_streams else torch.cuda.current_stream
        if x.device.type == "cpu":
            return self._from_host(x, devices, outs, waiter)
        if self._wants_collective(x, devices, outs, peer_read):
            return self._broadcast_collective(x, devices, waiter)
        producer = torch.cuda.current_stream(x.device)
        ready = torch.cuda.Event()
        ready.record(producer)
        result, staged = [None] * len(devices), []
        for i, dev in enumerate(devices):
            stream = waiter(dev)
            in_place = dev == x.device or (peer_read and self.can_read(dev, x.device))
            if in_place and stream != producer:
                stream.wait_event(ready)
                x.record_stream(stream)
            if outs[i] is None and in_place:
                result[i] = x
            elif dev == x.device:            # the caller's own buffer on x's GPU
                with torch.cuda.stream(stream):
                    result[i] = outs[i].copy_(x)
            elif self._peer[x.device.index, dev.index]:
                result[i] = self._copy_p2p(x, dev, stream, ready, outs[i])
            else:
                staged.append(i)
        if staged:
            self._copy_staged(x, [devices[i] for i in staged], [outs[i] for i in staged],
                              waiter, ready, result, staged)
        return result

    def _wants_collective(self, x, devices, outs, peer_read) -> bool:
        if peer_read or any(o is not None for o in outs) or not x.is_contiguous():
            return False
        peers = [d for d in devices if d != x.device]
        if len(peers) < 2 or x.numel() * x.element_size() < self.collective_min_bytes:
            return False
        if not all(self._peer[x.device.index, d.index] for d in peers):
            return False
        with torch.cuda.device(x.device):
            return not torch.cuda.is_current_stream_capturing()

    def _broadcast_collective(self, x, devices, waiter) -> list:
        # NCCL runs on every device's current stream: after x's producer on the source, and
        # each copy is ready on its device's current stream.
        copies = torch.cuda.comm.broadcast(x, [d.index for d in devices])
        result = []
        for dev, y in zip(devices, copies):
            current, stream = torch.cuda.current_stream(dev), waiter(dev)
            if stream != current:
                _wait_for(stream, current)
                y.record_stream(stream)
            result.append(y)
        return result

    def _copy_p2p(self, x, dev, stream, ready, buf):
        side = self._side_stream(x.device.index, dev.index)
        side.wait_event(ready)
        with torch.cuda.stream(stream):
            y = torch.empty(x.shape, dtype=x.dtype, device=dev) if buf is None else buf
            # PyTorch runs a cross-GPU copy on the source's current stream (here: the side
            # stream), after the destination's current stream (`stream`), which then waits.
            with torch.cuda.stream(side):
                y.copy_(x, non_blocking=True)
        x.record_stream(side)
        if buf is not None:
            buf.record_stream(side)
        return y

    def _copy_staged(self, x, devices, outs, waiter, ready, result, slots):
        """One device-to-host copy into the pinned buffer, then one host-to-device per device."""
        with torch.cuda.device(x.device):
            capturing = torch.cuda.is_current_stream_capturing()
        if capturing:
            raise RuntimeError("the pinned-host broadcast cannot be captured in a CUDA graph: "
                               "its buffer is ordered with events across calls")
        side = self._side_stream(x.device.index, _STAGING_LANE)
        nbytes = x.numel() * x.element_size()
        with self._lock:
            if self._pinned is None or self._pinned.numel() < nbytes:
                size = max(nbytes, _MIN_PINNED_BYTES,
                           0 if self._pinned is None else 2 * self._pinned.numel())
                # The old buffer may still be in flight; PyTorch's host allocator keeps it
                # alive until the copies that used it have finished.
                self._pinned = torch.empty(size, dtype=torch.uint8, pin_memory=True)
            stage = self._pinned[:nbytes].view(x.dtype).view(x.shape)
            # The previous broadcast's host-to-device copies must have read the buffer first.
            for event in self._pinned_busy:
                side.wait_event(event)
            side.wait_event(ready)
            with torch.cuda.stream(side):
                stage.copy_(x, non_blocking=True)
            x.record_stream(side)
            staged = torch.cuda.Event()
            staged.record(side)
            busy = [staged]
            for dev, buf, slot in zip(devices, outs, slots):
                stream = waiter(dev)
                stream.wait_event(staged)
                result[slot] = self._to_device(stage, dev, stream, buf)
                done = torch.cuda.Event()
                done.record(stream)
                busy.append(done)
            self._pinned_busy = busy

    def _from_host(self, x, devices, outs, waiter):
        # Pageable memory would make every copy wait for the host (the driver stages it);
        # one pinned copy first keeps them asynchronous. PyTorch's host allocator does not
        # reuse it before the copies that read it have finished.
        src = x if x.is_contiguous() and x.is_pinned() else x.contiguous().pin_memory()
        return [self._to_device(src, dev, waiter(dev), buf) for dev, buf in zip(devices, outs)]

    @staticmethod
    def _to_device(src, dev, stream, buf):
        with torch.cuda.stream(stream):
            y = torch.empty(src.shape, dtype=src.dtype, device=dev) if buf is None else buf
            return y.copy_(src, non_blocking=True)


def _wait_for(waiter, producer) -> None:
    """Work queued on `waiter` from now on runs after all work queued on `producer` so far."""
    done = torch.cuda.Event()
    done.record(producer)
    waiter.wait_event(done)


def _per_device(values, n, name) -> list:
    """None or [] means "none for any device" (exllamav2 keeps an empty bias list)."""
    if values is None or (isinstance(values, (list, tuple)) and len(values) == 0):
        return [None] * n
    if isinstance(values, torch.Tensor) or len(values) != n:
        got = "a single tensor" if isinstance(values, torch.Tensor) else f"{len(values)}"
        raise ValueError(f"{name} must be a list with one entry per device ({n}), got {got}")
    return list(values)


def _resolve_fused(ctx, fused, x, devices) -> bool:
    fused = ctx.fused if fused is None else fused
    if fused not in FUSED_CHOICES:
        raise ValueError(f"fused must be one of {FUSED_CHOICES}, got {fused!r}")
    if fused is True:
        far = [d for d in devices if x.device.type != "cuda"
               or (d != x.device and not ctx.can_read(d, x.device))]
        if far:
            raise ValueError(f"fused=True needs x on a GPU that {far} can read over peer access;"
                             f" x is on {x.device}. Use fused='auto' to copy where it cannot")
    if fused == "auto" and x.device.type == "cuda" and \
            len([d for d in devices if d != x.device]) >= 2 and \
            x.numel() * x.element_size() >= max(ctx.collective_min_bytes, _AUTO_FUSED_MAX_BYTES):
        # Peers reading one source share its NVLink bandwidth as P2P copies do (4 x H100,
        # 268 MB: 2.25 ms against ~1 ms for NCCL's ring): the collective is faster.
        return False
    return bool(fused) and x.device.type == "cuda"


def _norm_from_peer(x, dev, weight, bias, out, eps, out_dtype, weight_offset, clamp_fp16_input):
    """rms_norm's kernel launched on `dev`, reading x on a peer GPU: no copy of x is made.

    The same launcher and launch config run as for a local rms_norm, so the results are
    bit-identical to one. Repeat calls take a plan, as rms_norm's do.
    """
    key = None
    if out is None:
        key = plans.norm_key(x, weight, bias, eps, weight_offset, out_dtype, clamp_fp16_input)
        key = None if key is None else ("peer", dev, key)
        plan = plans.lookup(key)
        if plan is not None and plans.alignment_fits(plan, x, weight):
            return plan.norm_on_device(x, weight, bias)
    p = check_inputs(x, weight, bias=bias, out=out, out_dtype=out_dtype, eps=eps,
                     weight_offset=weight_offset, clamp_fp16_input=clamp_fp16_input, device=dev)
    y = _launch(p, eps, weight_offset, False, clamp_fp16_input, plan_key=key,
                operands=(x, weight, bias))
    if out is not None:
        mark_written(out)
    return y


def _norm_one(i, x, dev, weight, bias, out, eps, kw):
    """Device i's norm on dev (reading x from a peer where it lives elsewhere); its argument
    errors name the device and its list entries."""
    try:
        if x.device == dev:
            return rms_norm(x, weight, eps, bias=bias, out=out, **kw)
        return _norm_from_peer(x, dev, weight, bias, out, eps, **kw)
    except (TypeError, ValueError) as e:
        raise on_device(e, i, dev) from e


def _norm_reading_source(ctx, x, devices, weights, biases, eps, *, out_dtype, weight_offset,
                         clamp_fp16_input):
    """The fused path with new outputs: every device's kernel reads x where it lives (over
    peer access from other GPUs), on that device's *current* stream, once x's producer is
    done. One event and one wait per peer replace the TP-stream protocol's four stream
    switches and events per device: a decode-sized call is all host time."""
    n = len(devices)
    ws, bs = _per_device(weights, n, "weights"), _per_device(biases, n, "biases")
    kw = dict(out_dtype=out_dtype, weight_offset=weight_offset, clamp_fp16_input=clamp_fp16_input)
    src = x.device.index
    producer = None
    results = []
    for i, (dev, w, b) in enumerate(zip(devices, ws, bs)):
        if dev.index == src:
            results.append(_norm_one(i, x, dev, w, b, None, eps, kw))
            continue
        if producer is None:
            producer = ctx._current_stream(src)
            ready = ctx._event("ready", src)
            ready.record(producer)
        stream = ctx._current_stream(dev.index)
        stream.wait_event(ready)
        # No x.record_stream(stream): x's stream waits for this read below, so memory freed
        # there is not handed out before the read is done.
        results.append(_norm_one(i, x, dev, w, b, None, eps, kw))
        # The caller may overwrite x on its stream next (a residual add in place): that must
        # wait for this peer's read. It also joins the peer's stream back into a CUDA-graph
        # capture that started on x's GPU.
        read = ctx._event("read", dev.index)
        read.record(stream)
        producer.wait_event(read)
    return results


def _fanout_plan_for(ctx, x, devices, weights, biases, eps, *, out_dtype, weight_offset,
                     clamp_fp16_input):
    """The fanout plan for this call (made on first use), or None where that launch does not
    apply (more GPUs than the kernel has outputs for, split rows, a looped config to a wider
    output, gradients, ...)."""
    n = len(devices)
    ws, bs = _per_device(weights, n, "weights"), _per_device(biases, n, "biases")
    key = plans.fanout_key(x, devices, ws, bs, eps, weight_offset, out_dtype, clamp_fp16_input)
    if key is None or _needs_grad(x, *ws, *bs):
        return None
    plan = plans.lookup(key)
    if plan is None:
        generation = config_generation()
        plan = fanout_plan(x, devices, ws, bs, eps, out_dtype=out_dtype,
                           weight_offset=weight_offset, clamp_fp16_input=clamp_fp16_input)
        plans.store(key, plans.NO_FANOUT if plan is None else plan, generation)
    return None if plan is plans.NO_FANOUT else plan


def _fan_out(ctx, plan, x, weights, biases, outs=None) -> list:
    """One kernel on x's GPU normalizes x once and writes every device's copy (into `outs`,
    the caller's buffers from _writable_outs, or new ones).

    Each peer's output is allocated on (or, the caller's, ready on) its current stream, which
    may still use that memory for earlier work: x's stream waits for every peer's stream
    before the launch, and every peer's stream waits for the launch after it."""
    callers = outs is not None
    if outs is None:
        outs = plan.outputs(x, weights)
    src = plan.src
    producer = ctx._current_stream(src)
    peers = [ctx._current_stream(d.index) for d in plan.devices if d.index != src]
    for stream in peers:
        free = ctx._event("free", stream.device_index)
        free.record(stream)
        producer.wait_event(free)
    plan.launch(x, weights, biases, outs)
    if callers:
        for o in outs:
            mark_written(o)
    if peers:
        done = ctx._event("done", src)
        done.record(producer)
        for stream in peers:
            stream.wait_event(done)
    return outs


def _writable_outs(x, devices, out, out_dtype, weights, biases):
    """(out as a list, its dtype) if the fanout can write the caller's buffers as they are:
    one plain contiguous tensor of x's shape per device, all of one dtype, none overlapping a
    tensor the kernel reads. Else None, and the general path checks them (and names what is
    wrong)."""
    n = len(devices)
    outs, ws, bs = (_per_device(v, n, name) for v, name in
                    ((out, "out"), (weights, "weights"), (biases, "biases")))
    dtype = outs[0].dtype if isinstance(outs[0], torch.Tensor) else None
    if dtype not in FLOAT_DTYPES or out_dtype not in (None, dtype):
        return None
    for o, dev, w, b in zip(outs, devices, ws, bs):
        if o.__class__ is not torch.Tensor or o.is_nested or o.layout != torch.strided or \
                o.device != dev or o.dtype != dtype or o.shape != x.shape or \
                not o.is_contiguous() or o.is_neg():
            return None
        if any(t is not None and _overlaps(o, t) for t in (x, w, b)):
            return None
    return outs, dtype


def _out_itemsize(x, out_dtype, out) -> int:
    """Bytes an output element takes: out_dtype's, else the caller's buffers', else x's (0 for
    a bad out_dtype, which the launch path then refuses by name)."""
    if out_dtype is None and isinstance(out, (list, tuple)) and out and \
            isinstance(out[0], torch.Tensor):
        out_dtype = out[0].dtype
    dtype = x.dtype if out_dtype is None else out_dtype
    return dtype.itemsize if isinstance(dtype, torch.dtype) else 0


def _operand_keys(tensors):
    return None if tensors is None else tuple(map(plans._operand_key, tensors))


def _route_key(ctx, broadcast_type, x, weights, biases, eps, out_dtype, weight_offset,
               clamp_fp16_input, fused):
    """Everything that decides forward_tp's route for a call with new outputs, and the fanout
    plan it uses: a repeat call that finds its key in ctx._fanouts goes straight to _fan_out."""
    if broadcast_type.__class__ is not int:
        return None
    key = plans.norm_key(x, None, None, eps, weight_offset, out_dtype, clamp_fp16_input)
    if key is None:
        return None
    try:
        # The config generation: a new tuned table may change the launch config, which the
        # fanout's copies must share with each device's own rms_norm.
        route = (broadcast_type, fused, ctx.fused, ctx.fanout_max_bytes,
                 ctx.collective_min_bytes, config_generation(), key, _operand_keys(weights),
                 _operand_keys(biases))
        return route
    except (AttributeError, TypeError, RuntimeError):
        return None


def _norm_all(ctx, inputs, devices, weights, biases, eps, *, out_dtype, weight_offset,
              clamp_fp16_input, out):
    n = len(devices)
    ws, bs = _per_device(weights, n, "weights"), _per_device(biases, n, "biases")
    outs = _per_device(out, n, "out")
    kw = dict(out_dtype=out_dtype, weight_offset=weight_offset, clamp_fp16_input=clamp_fp16_input)
    results = []
    for i, (x, dev, w, b, o) in enumerate(zip(inputs, devices, ws, bs, outs)):
        tp = ctx.stream(dev)
        if tp is None:
            results.append(_norm_one(i, x, dev, w, b, o, eps, kw))
            continue
        caller = torch.cuda.current_stream(dev)
        if tp != caller:
            # Weights, out and list inputs are the caller's: ready on its current stream.
            _wait_for(tp, caller)
        with torch.cuda.stream(tp):
            y = _norm_one(i, x, dev, w, b, o, eps, kw)
        if tp != caller:
            # Weights are long-lived replicas and are not recorded.
            for t in (x, o):
                if t is not None:
                    t.record_stream(tp)
            _wait_for(caller, tp)
            y.record_stream(caller)
        if x.device != dev:
            # Read in place from a peer: x's own GPU must not overwrite it before this read.
            _wait_for(torch.cuda.current_stream(x.device), tp)
        results.append(y)
    return results


def norm_on_devices(ctx, xs, weights, biases, eps, *, out_dtype=None, weight_offset=0.0,
                    clamp_fp16_input=False, out=None) -> list:
    """rms_norm(xs[i], weights[i], eps, bias=biases[i]) on xs[i]'s device, on its TP stream.

    xs: one tensor per device, each ready on its device's current stream; every result is
    ready on that stream too. weights/biases/out: lists in the same order (None or [] for none).
    """
    if isinstance(xs, torch.Tensor) or not isinstance(xs, (list, tuple)):
        raise TypeError(f"xs must be a list of tensors (one per device), got {type(xs).__name__}")
    for i, t in enumerate(xs):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"xs[{i}] must be a torch.Tensor, got {type(t).__name__}")
    return _norm_all(ctx, list(xs), [t.device for t in xs], weights, biases, eps,
                     out_dtype=out_dtype, weight_offset=weight_offset,
                     clamp_fp16_input=clamp_fp16_input, out=out)


def forward_tp(ctx, broadcast_type, x_or_list, weights, biases, eps, *, out_dtype=None,
               weight_offset=0.0, clamp_fp16_input=False, fused=None, out=None) -> list:
    """Normalize hidden states on every device of the split; returns one tensor per device.

    x_or_list: one tensor (on any GPU or the host), broadcast first; or a list already laid
    out over the split's devices. fused (default ctx.fused): True normalizes without copying x:
    one kernel on x's GPU writes every copy over peer access (the fanout, up to
    ctx.fanout_max_bytes), or every GPU's kernel reads x over peer access; "auto" does so where
    peer access exists and copies elsewhere; False copies, then normalizes. out: one buffer
    per device (None allocates).
    """
    route = None
    if out is None and ctx.is_cuda and x_or_list.__class__ is torch.Tensor:
        # A decode step is all host time: a repeat call skips every decision below.
        route = _route_key(ctx, broadcast_type, x_or_list, weights, biases, eps, out_dtype,
                           weight_offset, clamp_fp16_input, fused)
        try:
            plan = None if route is None else ctx._fanouts.get(route)
        except TypeError:       # an unhashable argument: the full path below names it
            plan = route = None
        if plan is not None and not _needs_grad(x_or_list, *(weights or ()), *(biases or ())):
            return _fan_out(ctx, plan, x_or_list, weights, biases)
    devices = ctx.devices_for(broadcast_type)
    kw = dict(out_dtype=out_dtype, weight_offset=weight_offset,
              clamp_fp16_input=clamp_fp16_input, out=out)
    if not isinstance(x_or_list, torch.Tensor):
        xs = list(x_or_list)
        seen = [t.device if isinstance(t, torch.Tensor) else type(t).__name__ for t in xs]
        if seen != devices:
            raise ValueError(f"a list input must hold one tensor per device of split "
                             f"{broadcast_type} {devices}, in that order; got {seen}")
        return norm_on_devices(ctx, xs, weights, biases, eps, **kw)
    x = x_or_list
    check_dense("x", x)             # before anything below asks x for strides
    peer_read = _resolve_fused(ctx, fused, x, devices)
    if peer_read and x.dim() > 0 and (x.is_neg() or not x.is_contiguous()) and \
            as_rows(x, x.shape[-1], writable=False) is None:
        x = materialized(x)     # on the producer's stream, so the readiness event covers it
    readable = peer_read and ctx._all_read(broadcast_type, x.device)
    fits = readable and x.numel() * x.element_size() <= ctx._fanout_max(
        broadcast_type, x.device, _out_itemsize(x, out_dtype, out) > x.element_size())
    if fits and out is not None:
        # The caller's buffers (a CUDA graph's, say) take the fanout too, where it can write
        # them as they are.
        writable = _writable_outs(x, devices, out, out_dtype, weights, biases)
        if writable is not None:
            outs, dtype = writable
            plan = _fanout_plan_for(ctx, x, devices, weights, biases, eps, out_dtype=dtype,
                                    weight_offset=weight_offset,
                                    clamp_fp16_input=clamp_fp16_input)
            if plan is not None:
                return _fan_out(ctx, plan, x, weights, biases, outs)
    if readable and out is None:
        if fits:
            plan = _fanout_plan_for(ctx, x, devices, weights, biases, eps, out_dtype=out_dtype,
                                    weight_offset=weight_offset,
                                    clamp_fp16_input=clamp_fp16_input)
            if plan is not None:
                if route is not None and x is x_or_list:
                    if len(ctx._fanouts) > 1024:
                        ctx._fanouts.clear()
                    ctx._fanouts[route] = plan
                return _fan_out(ctx, plan, x, weights, biases)
        return _norm_reading_source(ctx, x, devices, weights, biases, eps, out_dtype=out_dtype,
                                    weight_offset=weight_offset,
                                    clamp_fp16_input=clamp_fp16_input)
    inputs = ctx._replicate(x, devices, norm_streams=True, peer_read=peer_read)
    return _norm_all(ctx, inputs, devices, weights, biases, eps, **kw)


def capture_graph(fn, devices, warmup: int = 2) -> "torch.cuda.CUDAGraph":
    """One CUDA graph of fn() over several GPUs, devices[0] first (where x lives).

    Each other GPU gets a new current stream, forked from the capture stream (so its work is
    captured too) and joined back before the capture ends. The warm-up calls run on those same
    streams, so that their allocators hold the blocks the capture takes. Order matters:
    entering another GPU's stream also makes that GPU current, so the graph is opened on
    devices[0] first and the other GPUs' streams are entered inside it. Outputs made on other
    GPUs during the capture come from their normal pools: keep them alive while replaying."""
    devices = [_as_device(d) for d in devices]
    graph = torch.cuda.CUDAGraph()
    sides = [torch.cuda.Stream(d) for d in devices[1:]]
    with ExitStack() as stack:
        for s in sides:
            stack.enter_context(torch.cuda.stream(s))
        for _ in range(warmup):
            fn()
    for d in devices:
        torch.cuda.synchronize(d)
    with torch.cuda.device(devices[0]), torch.cuda.graph(graph):
        cap = torch.cuda.current_stream(devices[0])
        with ExitStack() as stack:
            for s in sides:
                s.wait_stream(cap)
                stack.enter_context(torch.cuda.stream(s))
            fn()
            for s in sides:
                cap.wait_stream(s)
    return graph
