"""Small problems for the demo, the examples, the tests and the benchmarks: data only.

Everything here is built from what scikit-learn ships or generates, so it runs offline:

* :func:`load_digits_split`: scikit-learn's 8x8 digits, scaled to [0, 1], split in two;
* :func:`make_classification_split`: a synthetic ``make_classification`` problem, split in two;
* :func:`flip_labels`: plant label noise, returning which labels were flipped;
* :func:`make_shortcut_digits`: digits with a planted shortcut, and a challenge split breaking it;
* :func:`make_group_shift`: a tabular task whose test set holds a group the training set
  under-teaches (a spurious feature, or a minority group), with the group marked;
* :func:`make_premise_hypothesis`: a premise/hypothesis task with a lexical-overlap shortcut.

Every splitter returns ``X_train, X_test, y_train, y_test``, the order of
:func:`sklearn.model_selection.train_test_split`, with ``float32`` features and ``int64`` labels:
the dtypes a skorch classifier trained with :class:`torch.nn.CrossEntropyLoss` expects.

The example modules and nets that used to live here (``TanhMLP``, ``make_mlp_classifier``,
``train_mlp_classifier``, ``train_digits_net``) are in :mod:`sk_fastif.toy`; importing them
from here still works until 0.2, with a :class:`FutureWarning`. :func:`make_noisy_labels` is
deprecated in favour of :func:`flip_labels`.
"""

from __future__ import annotations

import importlib
import warnings
from numbers import Integral, Real

import numpy as np
from sklearn.datasets import load_digits, make_classification
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state

__all__ = [
    "flip_labels",
    "load_digits_split",
    "make_classification_split",
    "make_group_shift",
    "make_noisy_labels",
    "make_premise_hypothesis",
    "make_shortcut_digits",
]

# names moved to sk_fastif.toy, importable from here (with a FutureWarning) until 0.2
_MOVED_TO_TOY = frozenset({"TanhMLP", "make_mlp_classifier", "train_digits_net",
                           "train_mlp_classifier"})


def __getattr__(name: str):
    if name in _MOVED_TO_TOY:
        warnings.warn(
            f"sk_fastif.datasets.{name} has moved to sk_fastif.toy.{name}; import it from "
            f"sk_fastif.toy. The old location is deprecated in 0.1 and will be removed in 0.2.",
            FutureWarning, stacklevel=2)
        # imported here, not at module level: toy imports datasets, never the other way round
        return getattr(importlib.import_module("sk_fastif.toy"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_SPLITS = ("stratified", "random", "permutation")


def _check_count(name: str, value, upper: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, Integral) or not 0 <= value <= upper:
        raise ValueError(f"{name} must be None or an integer in [0, {upper}], got {value!r}.")
    return int(value)


def load_digits_split(
    *,
    split: str = "stratified",
    n_train: int | None = None,
    n_test: int | None = None,
    test_size: float = 0.2,
    random_state=0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Scikit-learn's digits, scaled to [0, 1] and split into training and test rows.

    The 1,797 8x8 images of :func:`sklearn.datasets.load_digits`, divided by 16 (their largest
    pixel value) and cast to ``float32``; the labels 0-9 as ``int64``.

    Parameters
    ----------
    split : {"stratified", "random", "permutation"}, default="stratified"
        How the rows are divided.

        - ``"stratified"``: :func:`~sklearn.model_selection.train_test_split` with
          ``stratify=y``, so both parts hold the ten digits in the same proportions (the demo's
          split).
        - ``"random"``: the same without stratification.
        - ``"permutation"``: the rows of ``check_random_state(random_state).permutation(1797)``,
          the first ``n_train`` for training and the next ``n_test`` for testing. The test rows
          come right after the training rows, so a larger ``n_test`` only appends rows, and
          ``n_test=0`` is allowed (the test suite's split).
    n_train, n_test : int or None, default=None
        Numbers of training and test rows. When only one is given the other is the rest of the
        rows; when neither is, ``test_size`` sets the test part.
    test_size : float, default=0.2
        Fraction of the rows for testing when ``n_train`` and ``n_test`` are both None (rounded
        up, as :func:`~sklearn.model_selection.train_test_split` does).
    random_state : int, RandomState instance or None, default=0
        Seed of the shuffle.

    Returns
    -------
    X_train : ndarray of shape (n_train, 64), dtype float32
        Training images, flattened row by row, values in [0, 1].
    X_test : ndarray of shape (n_test, 64), dtype float32
        Test images.
    y_train : ndarray of shape (n_train,), dtype int64
        Training labels, 0 to 9.
    y_test : ndarray of shape (n_test,), dtype int64
        Test labels.

    See Also
    --------
    sk_fastif.toy.train_digits_net : Train the demo's classifier on this split.

    Examples
    --------
    >>> from sk_fastif.datasets import load_digits_split
    >>> X_train, X_test, y_train, y_test = load_digits_split()
    >>> X_train.shape, X_test.shape, X_train.dtype, y_train.dtype
    ((1437, 64), (360, 64), dtype('float32'), dtype('int64'))
    >>> X_train, X_test, y_train, y_test = load_digits_split(
    ...     split="permutation", n_train=400, n_test=40)
    >>> len(X_train), len(X_test)
    (400, 40)
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}.")
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    y = y.astype(np.int64)
    n = len(X)
    n_train = _check_count("n_train", n_train, n)
    n_test = _check_count("n_test", n_test, n)
    if n_train is not None and n_test is not None and n_train + n_test > n:
        raise ValueError(f"n_train + n_test = {n_train + n_test} exceeds the {n} digits.")
    if split != "permutation":
        sizes = ({"test_size": test_size} if n_train is None and n_test is None
                 else {"train_size": n_train, "test_size": n_test})
        return train_test_split(X, y, **sizes, random_state=random_state,
                                stratify=y if split == "stratified" else None)
    if n_train is None and n_test is None:
        if not isinstance(test_size, Real) or not 0 < test_size < 1:
            raise ValueError(f"test_size must be a float in (0, 1), got {test_size!r}.")
        n_test = int(np.ceil(test_size * n))
    if n_train is None:
        n_train = n - n_test
    if n_test is None:
        n_test = n - n_train
    idx = check_random_state(random_state).permutation(n)
    train, test = idx[:n_train], idx[n_train : n_train + n_test]
    return X[train], X[test], y[train], y[test]


def make_classification_split(
    n_train: int,
    n_test: int,
    *,
    standardize: bool = False,
    random_state: int = 0,
    **params,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A synthetic classification problem from :func:`~sklearn.datasets.make_classification`.

    ``make_classification(n_samples=n_train + n_test, random_state=random_state, **params)``,
    its first ``n_train`` rows for training and the others for testing (the generator already
    shuffles them).

    Parameters
    ----------
    n_train : int
        Number of training rows.
    n_test : int
        Number of test rows.
    standardize : bool, default=False
        Whether to centre each feature and scale it to unit variance, with the mean and
        standard deviation of all ``n_train + n_test`` rows (computed in float64, before the
        cast to float32).
    random_state : int, default=0
        Seed of the generator.
    **params
        Any other argument of :func:`~sklearn.datasets.make_classification` (``n_features``,
        ``n_informative``, ``n_classes``, ``flip_y``, ...).

    Returns
    -------
    X_train : ndarray of shape (n_train, n_features), dtype float32
        Training features.
    X_test : ndarray of shape (n_test, n_features), dtype float32
        Test features.
    y_train : ndarray of shape (n_train,), dtype int64
        Training labels, 0 to ``n_classes - 1``.
    y_test : ndarray of shape (n_test,), dtype int64
        Test labels.

    Examples
    --------
    >>> from sk_fastif.datasets import make_classification_split
    >>> X_train, X_test, y_train, y_test = make_classification_split(
    ...     120, 30, n_features=6, n_informative=4, n_redundant=0, n_classes=3)
    >>> X_train.shape, X_test.shape, sorted(set(y_train.tolist()))
    ((120, 6), (30, 6), [0, 1, 2])
    """
    for name, value in (("n_train", n_train), ("n_test", n_test)):
        if isinstance(value, bool) or not isinstance(value, Integral) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}.")
    X, y = make_classification(n_samples=n_train + n_test, random_state=random_state, **params)
    if standardize:
        X = (X - X.mean(0)) / X.std(0)
    X, y = X.astype(np.float32), y.astype(np.int64)
    return X[:n_train], X[n_train:], y[:n_train], y[n_train:]


def flip_labels(y, fraction: float, *, random_state=0) -> tuple[np.ndarray, np.ndarray]:
    """Plant label noise: give a known set of samples a wrong label.

    Exactly ``round(fraction * len(y))`` samples, drawn without replacement, each get a label
    drawn uniformly from the classes of ``y`` other than their own. Training on the result and
    ranking the training points by self-influence should bring the flipped ones to the top.

    Parameters
    ----------
    y : array-like of shape (n_samples,)
        Labels, of at least two distinct classes.
    fraction : float
        Fraction of the samples to mislabel, in [0, 1].
    random_state : int, RandomState instance or None, default=0
        Seed of the choice of samples and of their new labels.

    Returns
    -------
    y_noisy : ndarray of shape (n_samples,)
        A copy of ``y`` (same dtype) with the flipped labels.
    flipped : ndarray of shape (round(fraction * n_samples),), dtype int64
        Indices of the flipped samples, in increasing order: ``y_noisy[i] != y[i]`` exactly for
        these ``i``. ``np.isin(np.arange(len(y)), flipped)`` is the boolean mask over the
        samples that :func:`sk_fastif.metrics.mislabel_detection_curve` takes.

    Examples
    --------
    >>> import numpy as np
    >>> from sk_fastif.datasets import flip_labels
    >>> y = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    >>> y_noisy, flipped = flip_labels(y, 0.3)
    >>> len(flipped), bool(np.all(y_noisy[flipped] != y[flipped]))
    (3, True)
    >>> np.flatnonzero(y_noisy != y).tolist() == flipped.tolist()
    True
    >>> np.isin(np.arange(len(y)), flipped).tolist() == (y_noisy != y).tolist()
    True
    """
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D, got shape {y.shape}.")
    if isinstance(fraction, bool) or not isinstance(fraction, Real) or not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be a number in [0, 1], got {fraction!r}.")
    classes, codes = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"y must hold at least two classes to flip labels, got {classes}.")
    rng = check_random_state(random_state)
    n_flip = int(round(fraction * len(y)))
    flipped = np.sort(rng.choice(len(y), size=n_flip, replace=False)).astype(np.int64)
    # a shift of 1..K-1 classes: never the same class, uniform over the others
    shift = rng.randint(1, len(classes), size=n_flip)
    y_noisy = y.copy()
    y_noisy[flipped] = classes[(codes[flipped] + shift) % len(classes)]
    return y_noisy, flipped


def make_noisy_labels(y, rate: float, random_state=0) -> tuple[np.ndarray, np.ndarray]:
    """Plant label noise at ``rate``: the noisy labels and the boolean mask of the flipped ones.

    .. deprecated:: 0.1
        ``make_noisy_labels`` is deprecated in 0.1 and will be removed in 0.2: use
        :func:`flip_labels`, the one label-noise function, and build the mask from the indices
        it returns, with ``np.isin(np.arange(len(y)), flipped)`` or a boolean array
        (``mask = np.zeros(len(y), dtype=bool); mask[flipped] = True``).

    The same draw as ``flip_labels(y, rate, random_state=random_state)``, returned as a boolean
    mask over the samples instead of their indices.

    Parameters
    ----------
    y : array-like of shape (n_samples,)
        Labels, of at least two distinct classes.
    rate : float
        Fraction of the samples to mislabel, in [0, 1].
    random_state : int, RandomState instance or None, default=0
        Seed of the choice of samples and of their new labels.

    Returns
    -------
    y_noisy : ndarray of shape (n_samples,)
        A copy of ``y`` with the flipped labels.
    is_flipped : ndarray of shape (n_samples,), dtype bool
        True exactly where ``y_noisy != y``.

    See Also
    --------
    flip_labels : The same noise, returning the indices of the flipped samples.

    Examples
    --------
    The replacement, :func:`flip_labels` with the mask built from its indices:

    >>> import numpy as np
    >>> from sk_fastif.datasets import flip_labels
    >>> y = np.arange(20) % 4
    >>> y_noisy, flipped = flip_labels(y, 0.25, random_state=1)
    >>> is_flipped = np.isin(np.arange(len(y)), flipped)
    >>> int(is_flipped.sum()), bool(np.all((y_noisy != y) == is_flipped))
    (5, True)
    """
    warnings.warn(
        "make_noisy_labels is deprecated in 0.1 and will be removed in 0.2; use "
        "flip_labels(y, fraction, random_state=...), which returns the flipped indices, and "
        "build the mask with np.isin(np.arange(len(y)), flipped) if needed.",
        FutureWarning, stacklevel=2)
    y_noisy, flipped = flip_labels(y, rate, random_state=random_state)
    is_flipped = np.zeros(len(y_noisy), dtype=bool)
    is_flipped[flipped] = True
    return y_noisy, is_flipped


# one blank pixel per class: the left column (rows 0-7) and two of the right column (rows 3, 4),
# pixels that are (almost) always 0 in the digits
SHORTCUT_PIXELS = np.array([0, 8, 16, 24, 32, 40, 48, 56, 31, 39])


def make_shortcut_digits(
    *,
    n_train: int | None = 1000,
    n_challenge: int | None = None,
    agreement: float = 0.9,
    random_state=0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digits with a planted shortcut: a pixel giving the label away, except in a challenge split.

    Each class ``c`` owns one marker pixel, ``SHORTCUT_PIXELS[c]`` (a border pixel that is
    blank in the digits); every image gets exactly one marker, set to 1. In the training split
    the marker is the image's own class for ``round(agreement * n_train)`` images drawn at
    random and another class (uniformly) for the others; in the challenge split it is
    **never** the image's own class. A net trained on the first leans on the marker and fails
    on the second: the analogue, on digits, of a model that learns the word-overlap heuristic
    from MNLI and fails on HANS. The training images that break the shortcut are the ones that
    teach the digit itself.

    Parameters
    ----------
    n_train : int or None, default=1000
        Number of training images; None: all but ``n_challenge``.
    n_challenge : int or None, default=None
        Number of challenge images; None: the rest of the 1,797 digits.
    agreement : float, default=0.9
        Fraction of the training images whose marker is their own class, in [0, 1].
    random_state : int, RandomState instance or None, default=0
        Seed of the split and of the markers.

    Returns
    -------
    X_train : ndarray of shape (n_train, 64), dtype float32
        Training images in [0, 1], marker included.
    X_challenge : ndarray of shape (n_challenge, 64), dtype float32
        Challenge images, their markers all disagreeing with the label.
    y_train : ndarray of shape (n_train,), dtype int64
    y_challenge : ndarray of shape (n_challenge,), dtype int64

    Examples
    --------
    >>> import numpy as np
    >>> from sk_fastif.datasets import SHORTCUT_PIXELS, make_shortcut_digits
    >>> X_tr, X_ch, y_tr, y_ch = make_shortcut_digits(n_train=500, n_challenge=200)
    >>> X_tr.shape, X_ch.shape
    ((500, 64), (200, 64))
    >>> marker = lambda X: np.argmax(X[:, SHORTCUT_PIXELS], axis=1)
    >>> round(float(np.mean(marker(X_tr) == y_tr)), 2), float(np.mean(marker(X_ch) == y_ch))
    (0.9, 0.0)
    """
    if isinstance(agreement, bool) or not isinstance(agreement, Real) or not 0 <= agreement <= 1:
        raise ValueError(f"agreement must be a number in [0, 1], got {agreement!r}.")
    X, X_ch, y, y_ch = load_digits_split(split="permutation", n_train=n_train,
                                         n_test=n_challenge, random_state=random_state)
    rng = check_random_state(random_state)
    out = []
    for images, labels, agree in ((X, y, agreement), (X_ch, y_ch, 0.0)):
        images = images.copy()
        other = (labels + rng.randint(1, 10, size=len(labels))) % 10
        keeps = np.zeros(len(labels), dtype=bool)
        keeps[rng.permutation(len(labels))[:int(round(agree * len(labels)))]] = True
        marker = np.where(keeps, labels, other)
        images[:, SHORTCUT_PIXELS] = 0.0
        images[np.arange(len(images)), SHORTCUT_PIXELS[marker]] = 1.0
        out.append(images)
    return out[0], out[1], y, y_ch


def make_group_shift(
    kind: str = "spurious",
    *,
    n_train: int = 1000,
    n_test: int = 1000,
    rate: float = 0.05,
    n_features: int = 6,
    random_state=0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A binary tabular task whose test set holds a group the training set under-teaches.

    Two kinds of shortcut, each with the group a net trained on the training split fails on
    marked (``group_train``, ``group_test``):

    * ``"spurious"``: the features of :func:`~sklearn.datasets.make_classification` (two
      clusters per class, 5% of the labels flipped) plus a last, **spurious** feature, ``+1``
      or ``-1`` with a little noise, that names the label in all but ``rate`` of the training
      rows and is a fair coin at test. The group is the rows whose spurious feature contradicts
      their label (``rate`` of the training split, about half of the test split): a net that
      leans on the feature gets them wrong.
    * ``"minority"``: two populations drawn by two ``make_classification`` generators (their
      own clusters and labelling rules), told apart by a last **group** feature (0 or 1). The
      minority population is ``rate`` of the training rows and half of the test rows; the group
      is the minority rows.

    Parameters
    ----------
    kind : {"spurious", "minority"}, default="spurious"
        The kind of shortcut.
    n_train, n_test : int, default=1000
        Numbers of training and test rows.
    rate : float, default=0.05
        The group's fraction of the training rows, in (0, 0.5).
    n_features : int, default=6
        Number of informative features (the spurious or group feature comes on top).
    random_state : int, RandomState instance or None, default=0
        Seed of the generators and of the spurious feature.

    Returns
    -------
    X_train : ndarray of shape (n_train, n_features + 1), dtype float32
    X_test : ndarray of shape (n_test, n_features + 1), dtype float32
    y_train : ndarray of shape (n_train,), dtype int64
    y_test : ndarray of shape (n_test,), dtype int64
    group_train : ndarray of shape (n_train,), dtype bool
    group_test : ndarray of shape (n_test,), dtype bool
        Whether each row belongs to the group (see above).

    Examples
    --------
    >>> import numpy as np
    >>> from sk_fastif.datasets import make_group_shift
    >>> X_tr, X_te, y_tr, y_te, g_tr, g_te = make_group_shift(n_train=400, n_test=400)
    >>> X_tr.shape, round(float(g_tr.mean()), 2), bool(0.4 < g_te.mean() < 0.6)
    ((400, 7), 0.05, True)
    >>> agrees = lambda X, y: (X[:, -1] > 0) == (y == 1)  # the spurious feature names the label
    >>> bool(np.all(agrees(X_tr, y_tr) == ~g_tr)), bool(np.all(agrees(X_te, y_te) == ~g_te))
    (True, True)
    """
    if kind not in ("spurious", "minority"):
        raise ValueError(f'kind must be "spurious" or "minority", got {kind!r}.')
    for name, value in (("n_train", n_train), ("n_test", n_test), ("n_features", n_features)):
        if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    if isinstance(rate, bool) or not isinstance(rate, Real) or not 0 < rate < 0.5:
        raise ValueError(f"rate must be a number in (0, 0.5), got {rate!r}.")
    rng = check_random_state(random_state)
    seeds = rng.randint(np.iinfo(np.int32).max, size=2)
    n_group = (int(round(rate * n_train)), n_test // 2)  # the group's rows, train and test
    n = n_train + n_test
    params = {"n_features": n_features, "n_informative": n_features, "n_redundant": 0,
              "n_clusters_per_class": 2, "flip_y": 0.05}
    X, y = make_classification(n_samples=n, random_state=seeds[0], **params)
    group = np.zeros(n, dtype=bool)
    rows = (rng.permutation(n_train)[:n_group[0]],
            n_train + rng.permutation(n_test)[:n_group[1]])
    group[np.concatenate(rows)] = True
    if kind == "spurious":
        sign = np.where(group, 1 - y, y) * 2.0 - 1.0  # contradicts the label in the group
        extra = sign + 0.1 * rng.randn(n)
    else:
        X_min, y_min = make_classification(n_samples=n, random_state=seeds[1], **params)
        X[group], y[group] = X_min[group], y_min[group]
        extra = group.astype(np.float64)
    X = np.column_stack([X, extra]).astype(np.float32)
    y = y.astype(np.int64)
    return X[:n_train], X[n_train:], y[:n_train], y[n_train:], group[:n_train], group[n_train:]


# token ids of make_premise_hypothesis
PAD, CLS, SEP = 0, 1, 2
_FIRST_WORD = 4  # content words come in antonym pairs (w, w ^ 1) from here on


def _pair_text(rng, label: int, high_overlap: bool, vocab_size: int, premise_len: int,
               hypothesis_len: int) -> tuple[np.ndarray, np.ndarray]:
    n_pairs = (vocab_size - _FIRST_WORD) // 2
    pairs = rng.choice(n_pairs, size=premise_len, replace=False)
    premise = _FIRST_WORD + 2 * pairs + rng.randint(0, 2, size=premise_len)
    free = np.setdiff1d(np.arange(n_pairs), pairs)  # pairs the premise does not touch
    n_copied = hypothesis_len - label if high_overlap else 0  # a contradiction: one antonym
    copied = rng.choice(premise, size=n_copied, replace=False)
    n_fresh = hypothesis_len - n_copied - label
    fresh_pairs = rng.choice(free, size=n_fresh, replace=False)
    fresh = _FIRST_WORD + 2 * fresh_pairs + rng.randint(0, 2, size=n_fresh)
    antonym = (rng.choice(premise, size=label) - _FIRST_WORD) ^ 1
    hypothesis = np.concatenate([copied, fresh, antonym + _FIRST_WORD]).astype(np.int64)
    return premise.astype(np.int64), rng.permutation(hypothesis)


def make_premise_hypothesis(
    n_train: int = 600,
    n_challenge: int = 200,
    *,
    agreement: float = 0.9,
    vocab_size: int = 40,
    premise_len: int = 6,
    hypothesis_len: int = 3,
    random_state=0,
) -> tuple[dict, dict, np.ndarray, np.ndarray]:
    """A synthetic premise/hypothesis task with a lexical-overlap shortcut (a miniature HANS).

    Content words come in antonym pairs ``(w, w ^ 1)``. The label is 1 (contradiction) when the
    hypothesis holds the antonym of a premise word, else 0 (entailment): reading it needs the
    two sentences compared word by word. Each example also has a lexical overlap, high (the
    other hypothesis words are copied from the premise) or low (fresh words). In the training
    split, entailments have high overlap and contradictions low overlap for
    ``round(agreement * n)`` examples, so overlap is a shortcut; in the challenge split it is
    **always** the other way round, like the HANS examples that defeat MNLI models that
    learned the overlap heuristic.

    Inputs come as a dict, as a skorch text model takes them: ``input_ids`` is
    ``[CLS] premise [SEP] hypothesis [SEP]`` (ids ``CLS=1``, ``SEP=2``; no padding is needed,
    as every example has the same length), ``attention_mask`` is all ones and
    ``token_type_ids`` marks the hypothesis.

    Parameters
    ----------
    n_train, n_challenge : int, default=600, 200
        Number of training and challenge examples.
    agreement : float, default=0.9
        Fraction of training examples whose overlap agrees with the label, in [0, 1].
    vocab_size : int, default=40
        Size of the vocabulary (ids ``0..vocab_size - 1``; 0 is padding).
    premise_len, hypothesis_len : int, default=6, 3
        Words per sentence.
    random_state : int, RandomState instance or None, default=0
        Seed.

    Returns
    -------
    X_train, X_challenge : dict of ndarray
        ``input_ids``, ``attention_mask`` and ``token_type_ids``, each of shape
        ``(n, premise_len + hypothesis_len + 3)``, int64.
    y_train, y_challenge : ndarray of shape (n,), int64
        0 entailment, 1 contradiction.

    Examples
    --------
    >>> import numpy as np
    >>> from sk_fastif.datasets import make_premise_hypothesis
    >>> X_tr, X_ch, y_tr, y_ch = make_premise_hypothesis(200, 50, random_state=0)
    >>> X_tr["input_ids"].shape, sorted(X_tr)
    ((200, 12), ['attention_mask', 'input_ids', 'token_type_ids'])
    >>> def overlap(X):  # hypothesis words found in the premise
    ...     ids = X["input_ids"]
    ...     return np.array([np.isin(r[8:11], r[1:7]).sum() for r in ids])
    >>> high = lambda X: overlap(X) >= 2
    >>> agrees = lambda X, y: float(np.mean(high(X) == (y == 0)))
    >>> round(agrees(X_tr, y_tr), 2), agrees(X_ch, y_ch)
    (0.9, 0.0)
    """
    if isinstance(agreement, bool) or not isinstance(agreement, Real) or not 0 <= agreement <= 1:
        raise ValueError(f"agreement must be a number in [0, 1], got {agreement!r}.")
    for name, value, low in (("n_train", n_train, 1), ("n_challenge", n_challenge, 1),
                             ("premise_len", premise_len, 2),
                             ("hypothesis_len", hypothesis_len, 2)):
        if isinstance(value, bool) or not isinstance(value, Integral) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")
    if (vocab_size - _FIRST_WORD) // 2 < premise_len + hypothesis_len:
        raise ValueError(
            f"vocab_size={vocab_size} is too small: it needs at least "
            f"{_FIRST_WORD + 2 * (premise_len + hypothesis_len)} ids for these lengths.")
    rng = check_random_state(random_state)
    out = []
    for n, agree in ((n_train, agreement), (n_challenge, 0.0)):
        y = rng.permutation(np.arange(n) % 2).astype(np.int64)
        agrees = np.zeros(n, dtype=bool)
        agrees[rng.permutation(n)[:int(round(agree * n))]] = True
        high = np.where(agrees, y == 0, y == 1)
        ids, types = [], []
        for label, h in zip(y, high):
            p, q = _pair_text(rng, int(label), bool(h), vocab_size, premise_len, hypothesis_len)
            ids.append(np.concatenate([[CLS], p, [SEP], q, [SEP]]))
            types.append(np.r_[np.zeros(premise_len + 2), np.ones(hypothesis_len + 1)])
        ids = np.asarray(ids, dtype=np.int64)
        out.append(({"input_ids": ids, "attention_mask": np.ones_like(ids),
                     "token_type_ids": np.asarray(types, dtype=np.int64)}, y))
    (X_tr, y_tr), (X_ch, y_ch) = out
    return X_tr, X_ch, y_tr, y_ch
