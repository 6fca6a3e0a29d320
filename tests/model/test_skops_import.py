"""skops.io imported without torch: the same trusted types, a model round-trips, torch's array-API shim still imports."""
from __future__ import annotations

import subprocess
import sys

CHILD = """
import sys
from raypipe.model.formats import load_skops, skops_io
sio = skops_io()
assert "torch" not in sys.modules, "skops pulled torch in"
import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
x = np.random.default_rng(0).random((200, 3)); y = (x[:, 0] > 0.5).astype(int)
model = load_skops(sio.dumps(HistGradientBoostingClassifier(max_iter=5).fit(x, y)))
assert (model.predict(x) == y).mean() > 0.9
from skops.io._trusted_types import SKLEARN_ESTIMATOR_TYPE_NAMES
print(len(SKLEARN_ESTIMATOR_TYPE_NAMES))
from sklearn.externals.array_api_compat import torch as compat  # left out only while skops imported
print(compat.__name__)
"""


def test_skops_is_imported_without_torch_and_trusts_the_same_types():
    ours = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True).stdout.split()
    plain = subprocess.run([sys.executable, "-c", "from skops.io._trusted_types import SKLEARN_ESTIMATOR_TYPE_NAMES as t; "
                            "print(len(t))"], capture_output=True, text=True, check=True).stdout.split()
    assert ours == [plain[0], "sklearn.externals.array_api_compat.torch"] and int(plain[0]) > 100
