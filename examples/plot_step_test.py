"""
Test explanations with one gradient step
========================================

A cheap form of FastIF's simulatability check: for each test image, take one small gradient
step on its 10 most helpful training images, on its 10 most harmful ones and on 10 random
ones, and look at the change of its loss. If the explanations are right, the step on the
helpful images lowers the loss, the step on the harmful ones raises it, and random images do
little. :func:`~sk_fastif.metrics.step_test` does this without touching the net.
"""

# %%
# A digits classifier and its explainer
# -------------------------------------
import matplotlib.pyplot as plt

from sk_fastif import InfluenceExplainer
from sk_fastif.metrics import step_test
from sk_fastif.solvers import Exact
from sk_fastif.toy import train_digits_net

net, X_train, X_test, y_train, y_test = train_digits_net(
    0, split="permutation", n_train=500, n_test=20, max_epochs=20)
explainer = InfluenceExplainer(net, params=["output"], solver=Exact(damping=1e-3))
explainer.fit(X_train, y_train)

# %%
# One step on each set
# --------------------
# ``lr`` is small, so the change is close to its first-order value
# ``-lr · g(z) · mean_j g(z_j)``.
result = step_test(explainer, X_test, y_test, k=10, lr=0.05, random_state=0)
for name in ("helpful", "random", "harmful"):
    print(f"{name:>8}: mean loss change {result[name].mean():+.4f}")
print(f"the helpful step lowers the loss of {result.helpful_lowers:.0%} of the test images, "
      f"the harmful step raises it for {result.harmful_raises:.0%}")

fig, ax = plt.subplots(figsize=(5, 4))
ax.boxplot([result.helpful, result.random, result.harmful])
ax.set_xticks([1, 2, 3], ["helpful", "random", "harmful"])
ax.axhline(0, color="k", lw=0.8)
ax.set_ylabel("change of the test loss after one step")
plt.show()
