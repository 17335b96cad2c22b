"""
How many candidates to score
============================

FastIF scores only each test point's ``k`` nearest training points in the model's feature space
instead of the whole training set. Whether that loses the truly most influential points is
measured by the recall ``R@m``: the fraction of the true top ``m`` that the shortlist of ``k``
holds. :class:`~sk_fastif.plotting.CandidateRecallDisplay` draws it against ``k``, beside the
recall ``k / n`` of a random shortlist. We compare two feature spaces: the penultimate layer
(FastIF's choice) and the raw pixels.
"""

# %%
# A digits MLP and two selectors
# ------------------------------
import matplotlib.pyplot as plt

from sk_fastif import InfluenceExplainer
from sk_fastif.datasets import load_digits_split
from sk_fastif.neighbors import ExactCandidates
from sk_fastif.plotting import CandidateRecallDisplay
from sk_fastif.solvers import Exact
from sk_fastif.toy import train_mlp_classifier

X_train, X_test, y_train, y_test = load_digits_split(split="permutation", n_train=800,
                                                     n_test=30, random_state=0)
net = train_mlp_classifier(X_train, y_train, n_hidden=16, max_epochs=30, random_state=0)

# %%
# The recall curves
# -----------------
# One pass over the training gradients per selector: every training point is scored for the
# 30 queries and the shortlists of each size are read from one neighbour query.
n_neighbors = [5, 10, 25, 50, 100, 200, 400, 800]
fig, ax = plt.subplots(figsize=(6.5, 4.2))
for embedding in ("penultimate", "input"):
    explainer = InfluenceExplainer(
        net, solver=Exact(damping=1e-2), params=["output"], curvature="gauss_newton",
        candidates=ExactCandidates(100, embedding=embedding),
    ).fit(X_train, y_train)
    display = CandidateRecallDisplay.from_explainer(explainer, X_test, n_neighbors=n_neighbors,
                                                    top=10, name=embedding, ax=ax)
    print(f"{embedding:12s} R@10 at k=100: {display.recall[10][n_neighbors.index(100)]:.2f}")
ax.set_title("Recall of the 10 most helpful training digits")

# %%
# Reading the plot
# ----------------
# A curve far above the dashed random baseline means the feature space brings the influential
# points close: pick the smallest ``k`` whose recall is high enough, then check it on your own
# queries with :meth:`~sk_fastif.InfluenceExplainer.audit_candidates`.
plt.show()
