"""
Explaining predictions on tabular data
======================================

For data without pictures, :class:`~sk_fastif.plotting.InfluenceDisplay` draws each test
point's most helpful and most harmful training rows as bars: the length is the score (the
estimated rise of the test loss if that row were left out of training), the label names the
row and its class. Here a small MLP is trained on a synthetic problem inside a scikit-learn
pipeline, and the explainer works on the raw features.
"""

# %%
# A pipeline: scaling, then a skorch net
# --------------------------------------
import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from sk_fastif import InfluenceExplainer
from sk_fastif.datasets import make_classification_split
from sk_fastif.plotting import InfluenceDisplay
from sk_fastif.solvers import CG
from sk_fastif.toy import make_mlp_classifier

X_train, X_test, y_train, y_test = make_classification_split(
    300, 50, n_features=8, n_informative=4, random_state=0)
# the scaler's float64 output is cast to the net's float32
to_float32 = FunctionTransformer(np.asarray, kw_args={"dtype": np.float32})
pipe = make_pipeline(StandardScaler(), to_float32,
                     make_mlp_classifier(n_in=8, n_out=2, n_hidden=16, max_epochs=40))
torch.manual_seed(0)
pipe.fit(X_train, y_train)
pred = pipe.predict(X_test)
print(f"test accuracy: {np.mean(pred == y_test):.3f}")

# %%
# Explain two mistakes
# --------------------
# The explainer applies the scaler itself: it takes the raw rows.
explainer = InfluenceExplainer(pipe, solver=CG(damping=1e-2), curvature="gauss_newton")
explainer.fit(X_train, y_train)
wrong = np.flatnonzero(pred != y_test)[:2]
display = InfluenceDisplay.from_explainer(explainer, X_test[wrong], k=5, test_indices=wrong)
display.figure_.tight_layout()

# %%
# The same numbers as a table
# ---------------------------
explanation = explainer.explain(X_test[wrong], k=5)
print(explanation.to_frame().head(10).to_string(index=False))
plt.show()
