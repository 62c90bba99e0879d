"""The cases of issue 15's table, shared by bench_threads.py (refdl, and PyTorch in the same
process on request) and bench_torch.py (PyTorch alone in its own process)."""

# name, spatial rank, C_in, C_out, kernel, keyword arguments, input shape
CONVS = [
    ("LeNet conv1 (64,1,28,28)->6@5x5", 2, 1, 6, 5, {}, (64, 1, 28, 28)),
    ("LeNet conv2 (64,6,14,14)->16@5x5", 2, 6, 16, 5, {}, (64, 6, 14, 14)),
    ("(64,32,32,32)->64@3x3 p1", 2, 32, 64, 3, dict(padding=1), (64, 32, 32, 32)),
    ("(64,3,32,32)->32@3x3 p1 s2", 2, 3, 32, 3, dict(padding=1, stride=2), (64, 3, 32, 32)),
    ("Conv1d (256,1,40)->32@5 p2", 1, 1, 32, 5, dict(padding=2), (256, 1, 40)),
    ("Conv3d (8,3,10,32,32)->16@3^3 p1", 3, 3, 16, 3, dict(padding=1), (8, 3, 10, 32, 32)),
]
POOL = ("MaxPool2d 2x2 (64,32,32,32), fwd+bwd", (64, 32, 32, 32))
LENET_STEP = "LeNet-5 SGD step, batch 64"


def lenet5(nn):
    """LeNet-5 for 28x28 images from ``nn`` (refdl.nn or torch.nn: the same names)."""
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))


def best_median(f, reps, rounds=3):
    """ms: the minimum over ``rounds`` of the median of ``reps`` calls of f (a round hit by
    another process's burst does not count)."""
    import time
    best = float("inf")
    for _ in range(rounds):
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t0)
        best = min(best, sorted(ts)[len(ts) // 2])
    return best * 1e3
