"""
Correct a shortcut with influence functions
===========================================

FastIF's error correction in miniature. In
:func:`~sk_fastif.datasets.make_shortcut_digits` every image carries a marker pixel that, in
the training split, gives its label away (95% of the time); a net trained there leans on it
and fails on a *challenge* split where the marker never agrees with the label, as an MNLI model
fails on HANS.

:meth:`~sk_fastif.InfluenceExplainer.correct` takes a few optimizer steps on a copy of the net,
each on the training images most helpful for a sample of the challenge errors. FastIF's
baselines step on random training images or on the errors themselves. A validation part of the
challenge split picks the best step, and a third part measures the result. Influence finds the
few training images whose marker contradicts their label, the ones that teach the digit; on
this small problem that does not reliably translate into a higher challenge accuracy (see the
benchmark figures on the Applications page).
"""

# %%
# A net that learned the shortcut
# -------------------------------
import matplotlib.pyplot as plt
import numpy as np
import torch

from sk_fastif import InfluenceExplainer
from sk_fastif.datasets import SHORTCUT_PIXELS, make_shortcut_digits
from sk_fastif.solvers import Exact
from sk_fastif.toy import train_mlp_classifier

X_train, X_challenge, y_train, y_challenge = make_shortcut_digits(
    n_train=600, n_challenge=600, agreement=0.95, random_state=1)
net = train_mlp_classifier(X_train, y_train, n_out=10, random_state=1, lr=0.2, max_epochs=15,
                           optimizer=torch.optim.SGD)
# the challenge split in three: errors to correct, validation, test
(X_err, y_err), (X_val, y_val), (X_test, y_test) = [
    (X_challenge[p], y_challenge[p]) for p in np.array_split(np.arange(len(X_challenge)), 3)]
wrong = net.predict(X_err) != y_err
X_err, y_err = X_err[wrong], y_err[wrong]
accuracy = {"before": float(np.mean(net.predict(X_test) == y_test))}
print(f"training accuracy {np.mean(net.predict(X_train) == y_train):.3f}, "
      f"challenge accuracy {accuracy['before']:.3f}; {len(X_err)} errors to correct")

# %%
# Correct it, and compare with the baselines
# ------------------------------------------
explainer = InfluenceExplainer(net, params=["output"], solver=Exact(damping=1e-3))
explainer.fit(X_train, y_train)
# the training images whose marker contradicts their label: the ones that teach the digit
breaks_shortcut = np.argmax(X_train[:, SHORTCUT_PIXELS], axis=1) != y_train
histories, breakers = {}, {}
for strategy in ("helpful", "random", "anchors"):
    fixed = explainer.correct(X_err, y_err, n_steps=10, lr=0.03, strategy=strategy,
                              X_val=X_val, y_val=y_val, random_state=0)
    accuracy[strategy] = float(np.mean(fixed.predict(X_test) == y_test))
    histories[strategy] = fixed.correction_history_
    print(f"{strategy:>8}: challenge accuracy {accuracy[strategy]:.3f} "
          f"(step {fixed.correction_step_} kept)")
    if strategy != "anchors":  # the anchors' indices are rows of X_err
        stepped = np.concatenate([h["indices"] for h in fixed.correction_history_])
        breakers[strategy] = float(breaks_shortcut[stepped].mean())
        print(f"          {breakers[strategy]:.0%} of the images stepped on break the shortcut "
              f"({breaks_shortcut.mean():.0%} of the training set)")

# %%
# The validation accuracy step by step
# ------------------------------------
fig, ax = plt.subplots(figsize=(5, 4))
for strategy, history in histories.items():
    ax.plot([h["step"] for h in history], [h["val_accuracy"] for h in history], "o-",
            label=strategy)
ax.set_xlabel("correction step")
ax.set_ylabel("challenge validation accuracy")
ax.legend()
plt.show()
