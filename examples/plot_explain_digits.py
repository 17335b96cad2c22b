"""
Explain a digits classifier's mistakes
======================================

Train a small MLP on scikit-learn's digits with skorch, then ask, for a few misclassified test
images, which training images made the model predict what it predicted.

The score of a training image is the estimated rise of the test loss if that image were left
out of training: positive scores are *helpful* (they support the prediction), negative ones
*harmful*.
"""

# %%
# Train the model
# ---------------
import matplotlib.pyplot as plt
import numpy as np
import torch
from skorch import NeuralNetClassifier

from sk_fastif import InfluenceExplainer
from sk_fastif.datasets import load_digits_split
from sk_fastif.solvers import Exact
from sk_fastif.toy import TanhMLP

# The 8x8 digits scaled to [0, 1], 80% for training; TanhMLP is a 64-32-10 tanh MLP whose layers
# are named ``hidden`` and ``output``.
X_train, X_test, y_train, y_test = load_digits_split(split="random", random_state=0)

torch.manual_seed(0)
net = NeuralNetClassifier(TanhMLP, criterion=torch.nn.CrossEntropyLoss, optimizer=torch.optim.Adam,
                          lr=0.01, max_epochs=25, train_split=None, verbose=0)
net.fit(X_train, y_train)
pred = net.predict(X_test)
print(f"test accuracy: {np.mean(pred == y_test):.3f}")

# %%
# Fit the explainer
# -----------------
# The net has 2,410 parameters, so the exact solver is affordable: it builds the Gauss-Newton
# curvature once in ``fit`` and every explanation after that is a few matrix products.
explainer = InfluenceExplainer(net, solver=Exact(damping=1e-2), curvature="gauss_newton")
explainer.fit(X_train, y_train)

wrong = np.flatnonzero(pred != y_test)[:3]
explanation = explainer.explain(X_test[wrong], k=4)  # y=None: explain the predicted label
print(explanation.to_frame().head(8))

# %%
# Look at them
# ------------
fig, axes = plt.subplots(len(wrong), 9, figsize=(9, 1.3 * len(wrong)))
for r, t in enumerate(wrong):
    axes[r, 0].imshow(X_test[t].reshape(8, 8), cmap="gray_r")
    axes[r, 0].set_title(f"pred {pred[t]} (true {y_test[t]})", fontsize=7)
    panels = (
        (1, explanation.helpful_indices, explanation.helpful_scores, "Greens"),
        (5, explanation.harmful_indices, explanation.harmful_scores, "Reds"),
    )
    for c in range(4):
        for first, idx, score, cmap in panels:
            j = idx[r, c]
            axes[r, first + c].imshow(X_train[j].reshape(8, 8), cmap=cmap)
            axes[r, first + c].set_title(f"y={y_train[j]} {score[r, c]:+.0e}", fontsize=6)
for ax in axes.ravel():
    ax.axis("off")
fig.tight_layout()
plt.show()
