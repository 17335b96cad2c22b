"""
Explain a Hugging Face BERT classifier
======================================

The same task as :ref:`sphx_glr_auto_examples_plot_explain_text.py`, on the model FastIF
explains: Hugging Face's ``BertForSequenceClassification``, here built from a tiny
``BertConfig`` (two layers, hidden size 32, no pretrained weights) so that it trains in seconds.
It needs the ``text`` extra (``pip install "sk_fastif[text]"``, which installs
``transformers``).

Two lines of wrapper make the model a skorch module:

* ``forward`` returns ``.logits``: a ``ModelOutput`` is not a tensor, and no loss takes it;
* the padding mask goes in as a 4-D boolean mask, ``(batch, 1, 1, length)``, which the model
  uses as it is. Given the usual 2-D mask, ``transformers`` first checks whether any token is
  padded (to skip the mask when none is), a data-dependent branch that ``torch.func.vmap``
  cannot run, so every per-sample gradient would go through a slow loop.
"""

# %%
# A tiny BERT trained with skorch on dict inputs
# ----------------------------------------------
import numpy as np
import torch
from skorch import NeuralNetClassifier
from transformers import BertConfig, BertForSequenceClassification

from sk_fastif import InfluenceExplainer
from sk_fastif.datasets import make_premise_hypothesis
from sk_fastif.neighbors import ExactCandidates

X_train, X_challenge, y_train, y_challenge = make_premise_hypothesis(
    n_train=600, n_challenge=200, agreement=0.9, random_state=0)


class TinyBert(torch.nn.Module):
    """``BertForSequenceClassification`` from a tiny config, returning its logits."""

    def __init__(self, vocab_size=40, length=12):
        super().__init__()
        config = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2,
                            num_attention_heads=2, intermediate_size=64,
                            max_position_embeddings=length, type_vocab_size=2,
                            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                            num_labels=2)
        self.bert = BertForSequenceClassification(config)

    def forward(self, input_ids, attention_mask, token_type_ids):
        mask = attention_mask[:, None, None, :].bool()  # 4-D: used as is, vmap-friendly
        return self.bert(input_ids=input_ids, attention_mask=mask,
                         token_type_ids=token_type_ids).logits


torch.manual_seed(0)
net = NeuralNetClassifier(TinyBert, criterion=torch.nn.CrossEntropyLoss,
                          optimizer=torch.optim.Adam, lr=3e-3, max_epochs=40, batch_size=64,
                          train_split=None, verbose=0).fit(X_train, y_train)
print(f"training accuracy {np.mean(net.predict(X_train) == y_train):.2f}, "
      f"challenge accuracy {np.mean(net.predict(X_challenge) == y_challenge):.2f}")

# %%
# Influence through the last encoder layer, the pooler and the classifier
# -----------------------------------------------------------------------
# FastIF's choice of parameters, by module name, and its shortlist: the training pairs nearest
# in the pooled ``[CLS]`` feature (the input of the classifier, ``embedding="penultimate"``).
top = ["bert.bert.encoder.layer.1", "bert.bert.pooler", "bert.classifier"]
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
# The pairs a challenge error leans on
# ------------------------------------
# As with the plain transformer, the pairs most helpful for a challenge error break the
# lexical-overlap shortcut more often than the base rate, and the ``[CLS]`` shortlist finds
# fewer of them.
overlap_high = np.array([np.isin(r[8:11], r[1:7]).sum() >= 2 for r in X_train["input_ids"]])
breaks = overlap_high != (y_train == 0)
shares = {
    "helpful (all pairs scored)": float(np.mean(breaks[explanation.helpful_indices])),
    "helpful ([CLS] shortlist)": float(np.mean(breaks[shortlisted.helpful_indices])),
    "all training pairs": float(np.mean(breaks)),
}
for name, value in shares.items():
    print(f"{name:>27}: {value:.0%} break the shortcut")
print(explanation.to_frame(X=X_train).head(3))
