"""
Which training digits act on which test digits
==============================================

FastIF draws the interactions between test and training points as a graph: test points on a
circle, grouped by class, and the training points that are among their most helpful or most
harmful ones inside it. A training point that acts on one class sits in front of that class's
sector; one that acts on several classes is pulled towards the centre. Here we draw that graph
for test digits of three classes that a small MLP confuses, 3, 8 and 9, with
:class:`~sk_fastif.plotting.InfluenceGraphDisplay`, then look at one of them with
:class:`~sk_fastif.plotting.InfluenceDisplay`.
"""

# %%
# A digits MLP and an exact explainer
# -----------------------------------
import matplotlib.pyplot as plt
import numpy as np

from sk_fastif import InfluenceExplainer
from sk_fastif.datasets import load_digits_split
from sk_fastif.plotting import InfluenceDisplay, InfluenceGraphDisplay
from sk_fastif.solvers import Exact
from sk_fastif.toy import train_mlp_classifier

X_train, X_test, y_train, y_test = load_digits_split(split="permutation", n_train=600,
                                                     n_test=300, random_state=0)
net = train_mlp_classifier(X_train, y_train, n_hidden=16, max_epochs=30, random_state=0)
print(f"test accuracy: {np.mean(net.predict(X_test) == y_test):.3f}")

# The output layer (170 parameters) is what FastIF scores; its Gauss-Newton matrix is small
# enough for the exact solver.
explainer = InfluenceExplainer(net, solver=Exact(damping=1e-2), params=["output"],
                               curvature="gauss_newton").fit(X_train, y_train)

# %%
# The interaction graph
# ---------------------
# Six test digits of each class, explained for their true label, with their five most helpful
# (green) and five most harmful (red) training digits. Edge widths follow ``|score|``.
rows = np.concatenate([np.flatnonzero(y_test == c)[:6] for c in (3, 8, 9)])
display = InfluenceGraphDisplay.from_explainer(explainer, X_test[rows], y_test[rows], k=5,
                                               groups=[f"digit {c}" for c in y_test[rows]])
shared = display.train_nodes_[display.shared_]
print(f"{len(display.train_nodes_)} training digits drawn, {len(shared)} of them act on more "
      f"than one class; their labels: {np.bincount(y_train[shared], minlength=10)}")

# %%
# The training digits behind one prediction
# -----------------------------------------
# The same explainer, one test digit, as thumbnails: the training images that most support its
# label and those that most work against it.
InfluenceDisplay.from_explainer(explainer, X_test[rows[:1]], y_test[rows[:1]], k=5,
                                X_train=X_train, image_shape=(8, 8), test_indices=rows[:1])
plt.show()
