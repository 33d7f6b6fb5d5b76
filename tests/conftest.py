import os

import torch

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
# One intra-op thread per test process: on a loaded 2-core machine OpenMP threads
# spin against each other and every conv gets many times slower.
torch.set_num_threads(1)

