"""
Find mislabeled training images by self-influence
=================================================

Flip 10% of the digits' training labels, train a small MLP on them, and rank the training
images by their **self-influence** ``(1/n) g(z)ᵀ (H + λI)⁻¹ g(z)``: a point the rest of the
data cannot explain has a large one, and a flipped label is such a point. The baseline ranks by
the training loss, and it is a strong one: on nets that do not fit the flipped labels it finds
about as many (see the table in the Applications page).
:class:`~sk_fastif.plotting.SelfInfluenceDisplay` draws how many of the flips each ranking finds
as more of the data is inspected.
"""

# %%
# Plant label noise and train
# ---------------------------
import matplotlib.pyplot as plt
import numpy as np

from sk_fastif import InfluenceExplainer
from sk_fastif.datasets import flip_labels, load_digits_split
from sk_fastif.metrics import mislabel_detection_curve
from sk_fastif.plotting import SelfInfluenceDisplay
from sk_fastif.solvers import Exact
from sk_fastif.toy import train_mlp_classifier

X, _, y, _ = load_digits_split(split="permutation", n_train=600, n_test=0, random_state=0)
y_noisy, flipped = flip_labels(y, 0.1, random_state=0)
net = train_mlp_classifier(X, y_noisy, n_out=10, random_state=0, max_epochs=25)
print(f"{len(flipped)} flipped labels; training accuracy on the noisy labels: "
      f"{np.mean(net.predict(X) == y_noisy):.3f}")

# %%
# Rank by self-influence and by loss
# ----------------------------------
# The last layer's 330 parameters are enough (FastIF also scores only the top layers), and the
# exact solver is then cheap. ``baseline_scores="loss"`` draws the ranking by the net's
# training loss beside self-influence.
explainer = InfluenceExplainer(net, params=["output"], solver=Exact(damping=1e-3)).fit(X, y_noisy)
fig, ax = plt.subplots(figsize=(5, 4))
disp = SelfInfluenceDisplay.from_explainer(explainer, flipped, baseline_scores="loss", ax=ax)

# %%
# How many flips each finds
# -------------------------
# The curves' data are :func:`~sk_fastif.metrics.mislabel_detection_curve`'s; its area is the
# summary (0.5 for a random order, 0.95 at best with 10% flipped).
is_flipped = np.isin(np.arange(len(y)), flipped)  # the mask mislabel_detection_curve takes
rankings = {"self-influence": explainer.self_influence(),
            "training loss": -np.log(net.predict_proba(X)[np.arange(len(X)), y_noisy])}
found_in_top = {}  # ranking -> {fraction inspected: fraction of the flips found}
for name, scores in rankings.items():
    inspected, found, auc = mislabel_detection_curve(scores, is_flipped)
    found_in_top[name] = {f: float(np.interp(f, inspected, found)) for f in (0.1, 0.2)}
    top10, top20 = found_in_top[name][0.1], found_in_top[name][0.2]
    print(f"{name:>15}: {top10:.0%} of the flips in the top 10%, {top20:.0%} in the top 20%, "
          f"AUC {auc:.3f}")
    disp.lines_[name].set_label(f"{name} (AUC {auc:.2f})")
disp.ax_.legend(fontsize=8, loc="lower right")
plt.show()
