"""
Correct a shortcut with influence functions
===========================================

FastIF's error correction in miniature. In :func:`~sk_fastif.datasets.make_group_shift`
(``kind="spurious"``) a last feature names the label in 95% of the training rows and is a fair
coin at test; a net trained there leans on it and fails on the test rows it contradicts, the
*misled group*, as an MNLI model fails on HANS.

:meth:`~sk_fastif.InfluenceExplainer.correct` takes a few optimizer steps on a copy of the net,
each on the training rows most helpful for a sample of the errors, plus a replay of random
training rows so that the rest is not undone. FastIF's baselines step on random training rows or
on the errors themselves. A validation split picks the step kept: the best on its misled group
among the steps that keep its rest within half a point of the start (``X_rest``,
``max_rest_drop``). A test split measures the result.
"""

# %%
# A net that learned the shortcut
# -------------------------------
import matplotlib.pyplot as plt
import numpy as np
import torch

from sk_fastif import InfluenceExplainer
from sk_fastif.datasets import make_group_shift
from sk_fastif.solvers import Exact
from sk_fastif.toy import train_mlp_classifier

X_train, X_shift, y_train, y_shift, group_train, group_shift = make_group_shift(
    "spurious", n_train=1000, n_test=2400, random_state=0)
net = train_mlp_classifier(X_train, y_train, n_out=2, random_state=0, lr=0.1, max_epochs=60,
                           optimizer=torch.optim.SGD)
# the test distribution in three: errors to correct, validation, test
(X_err, y_err, _), (X_val, y_val, g_val), (X_test, y_test, g_test) = [
    (X_shift[p], y_shift[p], group_shift[p])
    for p in np.split(np.arange(len(y_shift)), [400, 1400])]
wrong = net.predict(X_err) != y_err
X_err, y_err = X_err[wrong], y_err[wrong]


def accuracies(estimator):
    """Test accuracy on the misled group and on the rest."""
    right = estimator.predict(X_test) == y_test
    return float(right[g_test].mean()), float(right[~g_test].mean())


accuracy = {"before": accuracies(net)}
print(f"misled group {accuracy['before'][0]:.3f}, rest {accuracy['before'][1]:.3f}; "
      f"{len(X_err)} errors to correct")

# %%
# Correct it, and compare with the baselines
# ------------------------------------------
# Every strategy run with ``random_state=0`` sees the same anchors and the same replay.
explainer = InfluenceExplainer(net, solver=Exact(damping=1e-3)).fit(X_train, y_train)
histories, from_group = {}, {}
for strategy in ("helpful", "random", "anchors"):
    fixed = explainer.correct(X_err, y_err, n_steps=50, lr=0.1, n_replay=50, refresh=None,
                              strategy=strategy, X_val=X_val[g_val], y_val=y_val[g_val],
                              X_rest=X_val[~g_val], y_rest=y_val[~g_val],
                              max_rest_drop=0.005, random_state=0)
    accuracy[strategy] = accuracies(fixed)
    histories[strategy] = fixed.correction_history_
    print(f"{strategy:>8}: misled group {accuracy[strategy][0]:.3f}, rest "
          f"{accuracy[strategy][1]:.3f} (step {fixed.correction_step_} kept)")
    if strategy != "anchors":  # the anchors' indices are rows of X_err
        stepped = np.concatenate([h["indices"] for h in fixed.correction_history_])
        from_group[strategy] = float(group_train[stepped].mean())
        print(f"          {from_group[strategy]:.0%} of the rows chosen contradict the "
              f"shortcut ({group_train.mean():.0%} of the training set)")

# %%
# The validation accuracies step by step
# --------------------------------------
# Influence finds the few training rows that contradict the shortcut; stepping on them alone
# would push the net into the opposite shortcut, which the replay and the rest's constraint
# hold back.
fig, (left, right) = plt.subplots(1, 2, figsize=(9, 4), sharex=True)
for strategy, history in histories.items():
    steps = [h["step"] for h in history]
    left.plot(steps, [h["val_accuracy"] for h in history], label=strategy)
    right.plot(steps, [h["rest_accuracy"] for h in history], label=strategy)
right.axhline(histories["helpful"][0]["rest_accuracy"] - 0.005, color="grey", ls=":",
              label="allowed drop")
left.set(xlabel="correction step", ylabel="validation accuracy, misled group")
right.set(xlabel="correction step", ylabel="validation accuracy, rest")
right.legend()
fig.tight_layout()
plt.show()
