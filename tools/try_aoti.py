#!/usr/bin/env python3
"""Does AOTInductor work on this GPU's torch? Compile a repository's model.pt2 into a package and load it in a
fresh process (a crash there must not take the caller down); print what happened and the replay time at batch 64.

  python tools/try_aoti.py REPO
"""

import subprocess
import sys
import time
from pathlib import Path

LOAD = """
import sys, time, torch
runner = torch._inductor.aoti_load_package(sys.argv[1])
x = torch.randn(64, 3, 224, 224, device="cuda", dtype=torch.float16).contiguous(memory_format=torch.channels_last)
for _ in range(10):
    runner(x)
torch.cuda.synchronize(); t = time.perf_counter()
for _ in range(100):
    runner(x)
torch.cuda.synchronize(); print(f"aoti: loaded; batch 64 eager call {(time.perf_counter() - t) * 10:.3f} ms")
"""


def main() -> int:
    import torch

    repo = Path(sys.argv[1])
    program = torch.export.load(str(repo / "mobilenetv3_pt" / "1" / "model.pt2"))
    module = program.module().to("cuda").half().to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 224, 224, device="cuda", dtype=torch.float16).contiguous(memory_format=torch.channels_last)
    batch = torch.export.Dim("batch", min=1, max=64)
    started = time.time()
    ep = torch.export.export(module, (x,), dynamic_shapes=({0: batch},))
    package = torch._inductor.aoti_compile_and_package(ep, package_path="/tmp/mnv3kit-aoti.pt2")
    print(f"aoti: compiled in {time.time() - started:.0f}s -> {package}", flush=True)
    proc = subprocess.run([sys.executable, "-c", LOAD, package], capture_output=True, text=True, timeout=300)
    print(proc.stdout.strip() or f"aoti: load FAILED, exit code {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
