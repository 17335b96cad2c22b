"""
Explain a transformer text classifier
=====================================

FastIF's own setting in miniature: a transformer trained on premise/hypothesis pairs, where
lexical overlap is a shortcut in training and not in a challenge split (the analogue of MNLI
and HANS). :func:`~sk_fastif.datasets.make_premise_hypothesis` gives the pairs as a dict of
``input_ids``, ``attention_mask`` and ``token_type_ids``; skorch passes the dict to the module
as keyword arguments, and so does the explainer.

As FastIF does with BERT, influence is restricted to the top of the model (``params=``: the
last encoder layer and the classifier), and FastIF's candidates are the nearest training pairs
in the space of the pooled ``[CLS]`` feature, the input of the classification layer
(``embedding="penultimate"``). The same code runs on Hugging Face's
``BertForSequenceClassification`` behind a one-line wrapper returning ``.logits`` (see the user
guide, "Text, images, dicts and Datasets").
"""

# %%
# A small transformer trained on dict inputs
# ------------------------------------------
import matplotlib.pyplot as plt
import numpy as np
import torch
from skorch import NeuralNetClassifier

from sk_fastif import InfluenceExplainer
from sk_fastif.datasets import make_premise_hypothesis
from sk_fastif.neighbors import ExactCandidates

X_train, X_challenge, y_train, y_challenge = make_premise_hypothesis(
    n_train=600, n_challenge=200, agreement=0.9, random_state=0)


class PairClassifier(torch.nn.Module):
    """Token, segment and position embeddings, a TransformerEncoder, a [CLS] classifier."""

    def __init__(self, vocab_size=40, dim=32, n_layers=2, length=12):
        super().__init__()
        self.tokens = torch.nn.Embedding(vocab_size, dim)
        self.segments = torch.nn.Embedding(2, dim)
        self.positions = torch.nn.Parameter(0.02 * torch.randn(length, dim))
        layer = torch.nn.TransformerEncoderLayer(dim, nhead=2, dim_feedforward=64, dropout=0.0,
                                                 batch_first=True)
        self.encoder = torch.nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.classifier = torch.nn.Linear(dim, 2)

    def forward(self, input_ids, attention_mask, token_type_ids):
        h = self.tokens(input_ids) + self.segments(token_type_ids) + self.positions
        h = self.encoder(h, src_key_padding_mask=attention_mask == 0)
        return self.classifier(h[:, 0])  # the [CLS] position


torch.manual_seed(0)
net = NeuralNetClassifier(PairClassifier, criterion=torch.nn.CrossEntropyLoss,
                          optimizer=torch.optim.Adam, lr=3e-3, max_epochs=40, batch_size=64,
                          train_split=None, verbose=0).fit(X_train, y_train)
overlap_high = lambda X: np.array(  # noqa: E731  hypothesis words found in the premise
    [np.isin(r[8:11], r[1:7]).sum() >= 2 for r in X["input_ids"]])
print(f"training accuracy {np.mean(net.predict(X_train) == y_train):.2f}, "
      f"challenge accuracy {np.mean(net.predict(X_challenge) == y_challenge):.2f}")

# %%
# Influence through the top layer
# -------------------------------
# Every training pair is scored (600 gradients), and, FastIF's way, only a shortlist of the
# 100 nearest pairs in the pooled [CLS] feature space.
top = ["encoder.layers.1", "classifier"]
explainer = InfluenceExplainer(net, params=top, random_state=0).fit(X_train, y_train)
pruned = InfluenceExplainer(net, params=top, random_state=0,
                            candidates=ExactCandidates(n_neighbors=100, embedding="penultimate"),
                            ).fit(X_train, y_train)
print(f"{explainer.n_params_} parameters explained with {explainer.solver_!r}")

wrong = np.flatnonzero(net.predict(X_challenge) != y_challenge)[:20]
errors = {k: v[wrong] for k, v in X_challenge.items()}
explanation = explainer.explain(errors, y_challenge[wrong], k=10)
shortlisted = pruned.explain(errors, y_challenge[wrong], k=10)

# %%
# Which training pairs does a challenge error lean on?
# -----------------------------------------------------
# A challenge error has the "wrong" overlap for its label. The training pairs most helpful for
# it are, far more often than the base rate, pairs that break the shortcut (their overlap
# disagrees with their label): the pairs that teach the task itself. The shortlist in the
# [CLS] feature space misses them: a net that learned the shortcut embeds pairs by their
# overlap, so the nearest pairs are the ones that follow it (a gradient-space shortlist,
# :class:`~sk_fastif.neighbors.GradientSketchCandidates`, does not have this blind spot).
breaks = overlap_high(X_train) != (y_train == 0)
shares = {
    "helpful (all pairs scored)": float(np.mean(breaks[explanation.helpful_indices])),
    "helpful ([CLS] shortlist)": float(np.mean(breaks[shortlisted.helpful_indices])),
    "harmful (all pairs scored)": float(np.mean(breaks[explanation.harmful_indices])),
    "all training pairs": float(np.mean(breaks)),
}
for name, value in shares.items():
    print(f"{name:>27}: {value:.0%} break the shortcut")

fig, ax = plt.subplots(figsize=(6, 2.8))
ax.barh(list(shares)[::-1], list(shares.values())[::-1],
        color=["tab:gray", "tab:red", "tab:orange", "tab:green"])
ax.set_xlabel("share of pairs whose overlap disagrees with their label")
ax.set_title("Top-10 training pairs of 20 challenge errors")
fig.tight_layout()
plt.show()
