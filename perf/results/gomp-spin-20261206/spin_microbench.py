"""libgomp's spin after a forward pass, in-process: the kit's TorchRunner on model.pt, a 5 ms pause after each call.

  GOMP_SPINCOUNT=10000 python spin_microbench.py REPO/mobilenetv3_pt/1/model.pt

Prints the median forward time and the process's CPU time per call (two threads: up to 2 x forward while it
computes; anything above that was spent while nothing computed).
"""
import os
import sys
import time

import numpy as np
import torch

from mnv3kit.backend.classifier_model import TorchRunner

runner = TorchRunner(sys.argv[1])
for batch in (1, 8):
    x = torch.zeros((batch, 3, 224, 224))
    for _ in range(5):
        runner._run(x)
    forward, n = [], 60 if batch == 1 else 20
    cpu0 = time.process_time()
    for _ in range(n):
        start = time.perf_counter()
        runner._run(x)
        forward.append(time.perf_counter() - start)
        time.sleep(0.005)
    cpu = (time.process_time() - cpu0) / n
    print(f"GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT', 'unset')} batch {batch}: forward median "
          f"{np.median(forward) * 1e3:.2f} ms, CPU per call {cpu * 1e3:.2f} ms, beyond 2 x forward "
          f"{(cpu - 2 * np.median(forward)) * 1e3:.2f} ms", flush=True)
