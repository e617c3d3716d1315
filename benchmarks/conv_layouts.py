#!/usr/bin/env python
"""The backbone's largest layer three ways: forward + backward time of a 4×4, stride-2, 128 → 128
channel convolution on a batch of 32 maps of 24×24 (+2 px of right/bottom padding), as SPAIR's
second backbone layer on 48×48 images.

- ``direct``: ``F.conv2d`` (oneDNN), channels-last input, as the model runs it;
- ``space_to_depth``: the input regrouped into 2×2 blocks (512 channels of 13×13), then a 2×2
  stride-1 convolution with the kernel regrouped the same way (identical outputs);
- ``unfold_matmul``: ``F.unfold`` (im2col) and one matmul.

Checks that the three agree, then prints process-CPU and wall milliseconds per forward + backward
(median of ``--repeats``) as JSON.

Usage::

    python benchmarks/conv_layouts.py [--threads 1] [--repeats 10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

B, C, O, H = 32, 128, 128, 26  # 24 px + 2 px of right/bottom padding: a 12×12 output


def direct(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, w, stride=2)


def space_to_depth(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    b, c, h, wd = x.shape
    xs = x.reshape(b, c, h // 2, 2, wd // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, c * 4, h // 2, wd // 2)
    ws = w.reshape(O, c, 2, 2, 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(O, c * 4, 2, 2)  # k = 2u + a
    return F.conv2d(xs, ws)


def unfold_matmul(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    col = F.unfold(x, 4, stride=2)  # (B, C·16, 144)
    return torch.matmul(w.reshape(O, -1), col).reshape(x.shape[0], O, 12, 12)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="forward + backward time of the backbone's largest convolution")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x0 = torch.randn(B, C, H, H).contiguous(memory_format=torch.channels_last)
    w0 = torch.randn(O, C, 4, 4) * 0.02
    grad = torch.randn(B, O, 12, 12)
    ref = direct(x0, w0)
    result: dict[str, object] = {"threads": args.threads, "batch": B, "torch": torch.__version__}
    for f in (direct, space_to_depth, unfold_matmul):
        err = float((f(x0, w0) - ref).abs().max())
        if err > 1e-4:
            print(f"{f.__name__} disagrees with the direct convolution by {err}", file=sys.stderr)
            return 1
        x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
        cpu, wall = [], []
        for i in range(args.repeats + 3):
            t, c = time.perf_counter(), time.process_time()
            f(x, w).backward(grad)
            if i >= 3:
                cpu.append((time.process_time() - c) * 1e3)
                wall.append((time.perf_counter() - t) * 1e3)
        result[f.__name__] = {"cpu_ms": statistics.median(cpu), "wall_ms": statistics.median(wall),
                              "max_abs_diff": err}
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
