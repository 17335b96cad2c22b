"""Peak memory of explaining does not grow with the number of training rows.

Each size runs in a fresh subprocess (as ``benchmarks/bench_memory.py`` does): the training
data is a Dataset that generates each row from its index, so the data itself holds no memory,
and any growth of the peak RSS with ``n`` would be the explainer materialising rows, gradients
or scores per training point.
"""

import json
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent("""
    import ctypes, json, resource, sys
    import numpy as np, torch
    from skorch import NeuralNetClassifier
    from sk_fastif import InfluenceExplainer
    from sk_fastif.solvers import LiSSA

    D = 512
    FREQ = np.linspace(0.01, 3.0, D).astype(np.float32)

    class Rows(torch.utils.data.Dataset):
        def __init__(self, n):
            self.n = n
        def __len__(self):
            return self.n
        def __getitem__(self, i):
            x = np.sin(i * FREQ + FREQ ** 2).astype(np.float32)
            return torch.from_numpy(x), int(x[:8].sum() > 0)

    class MLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.hidden = torch.nn.Linear(D, 16)
            self.output = torch.nn.Linear(16, 2)
        def forward(self, X):
            return self.output(torch.tanh(self.hidden(X)))

    torch.manual_seed(0)
    torch.set_num_threads(1)
    net = NeuralNetClassifier(MLP, criterion=torch.nn.CrossEntropyLoss, train_split=None,
                              verbose=0).initialize()
    data = Rows(int(sys.argv[1]))
    X_test = torch.stack([data[i][0] for i in range(3)])
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak RSS restarts from the current RSS
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    explainer = InfluenceExplainer(net, solver=LiSSA(damping=0.1, scale=10.0, depth=20,
                                                     batch_size=32),
                                   curvature="gauss_newton", batch_size=256,
                                   random_state=0).fit(data)
    explanation = explainer.explain(X_test, k=5)
    assert explanation.helpful_indices.shape == (3, 5)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"growth_mib": (peak - base) / 1024}))
""")


def _growth(n: int) -> float:
    out = subprocess.run([sys.executable, "-c", CHILD, str(n)], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])["growth_mib"]


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc/self/clear_refs")
def test_peak_memory_does_not_grow_with_the_number_of_training_rows():
    small, large = _growth(5_000), _growth(50_000)
    # materialising the 45,000 extra rows would take 88 MiB, their gradients 1.4 GiB
    assert large - small < 30, (small, large)
