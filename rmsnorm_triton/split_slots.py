"""The split-row kernel's partial-sum slots: where they live and for how long.

Each slot holds a partial sum and the round that wrote it (kernels/rmsnorm.py). Every launch
moves each slot of the rows it covers one round on, so a launch leaves its slots ready for the
next one: they are kept per (GPU, stream, splits) and an eager call pays no allocation or reset.
Launches on one stream run in order; a concurrent stream gets slots of its own.

Three places where kept slots would go wrong, and what is done instead:
- A CUDA-graph capture: the graph may replay on any stream, beside eager calls that use the
  kept slots. A captured call gets zeroed slots of its own (the graph replays the zeroing), and
  they are held for the life of the process: a GPU other than the one that began the capture
  allocates from its ordinary pool, which would hand the memory on once the call returns while
  the graph still writes it.
- A thread or stream whose allocations go to a private pool (torch.compile's CUDA graphs warm up
  that way, then reclaim every block of the pool they did not hand out): kept slots are
  allocated on a helper thread, on its own stream, from the ordinary pool.
- The per-thread default stream (raw handle 2) is a different stream on every thread: its key
  also names the thread.
"""
from __future__ import annotations

import threading

import torch

from .config import next_pow2

_current_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)
_is_capturing = getattr(torch._C, "_cuda_isCurrentStreamCapturing",
                        torch.cuda.is_current_stream_capturing)
_PER_THREAD_STREAM = 2          # cudaStreamPerThread
_kept: dict = {}                # (GPU index, raw stream[, thread], splits) -> slots
_captured: list = []            # slots a CUDA graph writes on every replay


def split_workspace(n_rows: int, splits: int, device: torch.device) -> torch.Tensor:
    """Slots (int64, [>= n_rows, splits]) for a split-row launch of n_rows rows on `device`'s
    current stream, every row's slots in one round."""
    if device.type != "cuda":
        # No stream to key on: only a test's stand-in launcher takes a CPU tensor here.
        return torch.zeros((n_rows, splits), dtype=torch.int64, device=device)
    if _is_capturing():
        slots = torch.zeros((n_rows, splits), dtype=torch.int64, device=device)
        _captured.append(slots)
        return slots
    index = device.index
    stream = _current_stream(index)
    key = (index, stream, splits) if stream != _PER_THREAD_STREAM else \
        (index, stream, threading.get_ident(), splits)
    slots = _kept.get(key)
    if slots is None or slots.shape[0] < n_rows:
        # Grown in powers of two, so that a model's few row counts settle on one allocation.
        slots = _kept[key] = _allocate_zeroed(next_pow2(n_rows), splits, index)
    return slots


def _allocate_zeroed(rows: int, splits: int, index: int) -> torch.Tensor:
    """Zeroed slots from the ordinary pool of GPU `index`, ready on its current stream.

    Allocated on a helper thread, on that thread's default stream: torch routes a private pool
    to a thread (2.13) or to one of its capture or warm-up streams (earlier versions), never to
    another thread's default stream. Once per (GPU, stream, splits) and growth in rows: the
    thread costs nothing per call."""
    made: dict = {}

    def allocate():
        try:
            with torch.cuda.device(index):
                made["slots"] = torch.zeros((rows, splits), dtype=torch.int64,
                                            device=torch.device("cuda", index))
                made["ready"] = torch.cuda.Event()
                made["ready"].record()
        except BaseException as e:      # re-raised on the calling thread
            made["error"] = e

    helper = threading.Thread(target=allocate, name="rmsnorm-split-slots", daemon=True)
    helper.start()
    helper.join()
    if "error" in made:
        raise made["error"]
    stream = torch.cuda.current_stream(index)
    stream.wait_event(made["ready"])
    # Freed later (grown, or cleared), the memory waits for this stream's launches first.
    made["slots"].record_stream(stream)
    return made["slots"]


def clear() -> None:
    """Let the kept slots go (launches still queued keep theirs: the caching allocator frees in
    stream order); new ones start from round 0. Captured slots stay with their graphs."""
    _kept.clear()
