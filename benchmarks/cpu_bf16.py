"""A CPU training step in float32, under bf16 autocast, and bf16 with channels-last.

resnet18 from scratch, forward + backward + Adam on one in-memory batch; the ways alternate
round by round so machine load hits them alike. Prints one JSON line: ms a step per round,
and whether this CPU has native bf16 (`distributed.cpu_has_native_bf16`).

    python benchmarks/cpu_bf16.py --size 64 --bs 32 --rounds 4
"""

from __future__ import annotations

import argparse
import json
import os
import time

import timm
import torch

from easycls.distributed import cpu_has_native_bf16

WAYS = {"fp32": (False, False), "bf16": (True, False), "bf16_channels_last": (True, True)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--bs", type=int, default=32)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--rounds", type=int, default=4)
    a = p.parse_args()
    torch.manual_seed(0)
    model = timm.create_model(a.arch, pretrained=False, num_classes=40)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x, y = torch.randn(a.bs, 3, a.size, a.size), torch.randint(0, 40, (a.bs,))

    def step(bf16: bool, channels_last: bool) -> None:
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        model.to(memory_format=fmt)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(x.contiguous(memory_format=fmt)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    ms: dict[str, list[float]] = {k: [] for k in WAYS}
    for r in range(a.rounds):
        for name in (list(WAYS) if r % 2 == 0 else list(WAYS)[::-1]):
            step(*WAYS[name])  # the first step after a switch pays for new weight layouts
            t = time.perf_counter()
            for _ in range(a.steps):
                step(*WAYS[name])
            ms[name].append(round((time.perf_counter() - t) / a.steps * 1e3, 1))
    print(json.dumps({"ms_per_step": ms, "native_bf16": cpu_has_native_bf16(),
                      "load": [round(v, 2) for v in os.getloadavg()]}))


if __name__ == "__main__":
    main()
