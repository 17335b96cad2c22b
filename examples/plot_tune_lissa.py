"""
=====================================
Tuning LiSSA with a grid search
=====================================

FastIF's study of LiSSA, in small: how do the recursion ``depth``, the minibatch ``batch_size``
and the number of averaged chains ``n_repeats`` trade speed for quality? We train a small MLP on
scikit-learn's digits, then let :class:`~sklearn.model_selection.GridSearchCV` try every setting
of :class:`~sk_fastif.solvers.LiSSA`, scoring each one by how well its influence scores agree with
the exact ones (:func:`~sk_fastif.metrics.make_influence_scorer`). ``cv_results_`` holds both the
agreement and the time each setting took to score the queries, so we can plot one against the
other and pick the cheapest setting that is good enough.

The grid search never retrains the net: the explainer's clones share the fitted net.
"""

# %%
# A digits MLP
# ------------
# 400 training images, 10 held-out query images whose predictions we want to explain.
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import GridSearchCV, PredefinedSplit
from skorch import NeuralNetClassifier

from sk_fastif import InfluenceExplainer
from sk_fastif.datasets import load_digits_split
from sk_fastif.metrics import make_influence_scorer
from sk_fastif.solvers import Exact, LiSSA
from sk_fastif.toy import TanhMLP

# the digits scaled to [0, 1]: 400 rows of a seeded permutation, then the next 10 as queries
X_train, X_query, y_train, y_query = load_digits_split(split="permutation", n_train=400,
                                                       n_test=10, random_state=0)

torch.manual_seed(0)
net = NeuralNetClassifier(TanhMLP, module__n_hidden=16, criterion=torch.nn.CrossEntropyLoss,
                          optimizer=torch.optim.Adam, lr=0.01, max_epochs=30, batch_size=64,
                          train_split=None, verbose=0)
net.fit(X_train, y_train)

# %%
# The explainer and the search space
# ----------------------------------
# As FastIF does, we score only the top layer (``params=["output"]``, 170 parameters): its
# cross-entropy Hessian is positive semi-definite, and ``damping`` makes ``H + damping*I``
# positive definite, so LiSSA converges for a large enough ``scale``. We estimate that scale once
# (``scale="auto"`` on the smallest minibatch of the grid) and fix it for every candidate, so the
# search compares depth, batch size and repeats, not scale estimates.
damping = 0.05
probe = InfluenceExplainer(net, solver=LiSSA(damping=damping, batch_size=8, random_state=0),
                           params=["output"]).fit(X_train, y_train)
scale = probe.solver_.scale_
print(f"LiSSA scale: {scale:.3g}")

explainer = InfluenceExplainer(
    net, solver=LiSSA(damping=damping, scale=scale, random_state=0), params=["output"]
)
param_grid = {
    "solver__depth": [5, 20, 80],
    "solver__batch_size": [8, 64],
    "solver__n_repeats": [1, 2],
}

# %%
# Cross-validation for influence
# ------------------------------
# ``fit`` must see the data the net was trained on, and the score should be computed on held-out
# queries. A :class:`~sklearn.model_selection.PredefinedSplit` does both: rows marked ``-1`` are
# only ever in the training part, the queries form the single test fold. ``refit=False``:
# refitting would fit the explainer on the training rows *and* the queries.
X_all = np.vstack([X_train, X_query])
y_all = np.concatenate([y_train, y_query])
split = PredefinedSplit(np.r_[np.full(len(X_train), -1), np.zeros(len(X_query), dtype=int)])

# Agreement with the exact influences (same damping), computed once and cached for all candidates.
scorer = make_influence_scorer("spearman", reference=Exact(damping=damping))
search = GridSearchCV(explainer, param_grid, scoring=scorer, cv=split, refit=False)
search.fit(X_all, y_all)

# %%
# The trade-off
# -------------
# ``mean_score_time`` is the time to compute the influences of the 10 queries on the 400
# training points with that setting (plus, for the first candidate only, the exact reference).
results = pd.DataFrame(search.cv_results_)
columns = ["param_solver__depth", "param_solver__batch_size", "param_solver__n_repeats",
           "mean_test_score", "mean_score_time"]
table = results[columns].rename(columns=lambda c: c.replace("param_solver__", ""))
table = table.rename(columns={"mean_test_score": "agreement", "mean_score_time": "seconds"})
table = table.astype({"depth": int, "batch_size": int, "n_repeats": int})
print(table.sort_values("agreement", ascending=False).to_string(index=False))

start = time.perf_counter()
exact = InfluenceExplainer(net, solver=Exact(damping=damping), params=["output"])
exact.fit(X_train, y_train).influences(X_query, y_query)
print(f"Exact (building and factorising H, then solving): {time.perf_counter() - start:.2f} s")

# %%
# On this small problem ``Exact`` is faster than every LiSSA setting: it needs the explicit
# 170 x 170 matrix, built from 170 curvature products, then each query is a matrix product.
# That matrix grows with the square of the number of parameters, which is what makes LiSSA (or
# ``CG``) the only option for large nets, where this same search, run on a layer small enough for
# ``Exact``, tells how deep and how wide LiSSA's recursion must be.
#
# Agreement against time, one marker per setting.
fig, ax = plt.subplots(figsize=(6, 4))
for (batch_size, n_repeats), group in table.groupby(["batch_size", "n_repeats"]):
    ax.plot(group["seconds"], group["agreement"], marker="o" if n_repeats == 1 else "s",
            label=f"batch_size={batch_size}, n_repeats={n_repeats}")
    for _, row in group.iterrows():
        ax.annotate(f"depth {row['depth']:g}", (row["seconds"], row["agreement"]), fontsize=7,
                    xytext=(3, -9), textcoords="offset points")
ax.set_xscale("log")
ax.set_xlabel("mean score time (s)")
ax.set_ylabel("Spearman agreement with Exact")
ax.set_title("LiSSA settings on a digits MLP (top layer)")
ax.legend(fontsize=7)
fig.tight_layout()

# %%
# The setting to use
# ------------------
# The best agreement, and the cheapest setting within 0.02 of it.
print("best agreement:", search.best_params_, f"({search.best_score_:.3f})")
good = table[table["agreement"] >= search.best_score_ - 0.02]
pick = good.sort_values("seconds").iloc[0]
print(f"cheapest within 0.02: depth={pick['depth']:g}, batch_size={pick['batch_size']:g}, "
      f"n_repeats={pick['n_repeats']:g} ({pick['agreement']:.3f} in {pick['seconds']:.2f} s)")
tuned = explainer.set_params(solver__depth=int(pick["depth"]),
                             solver__batch_size=int(pick["batch_size"]),
                             solver__n_repeats=int(pick["n_repeats"])).fit(X_train, y_train)
plt.show()
