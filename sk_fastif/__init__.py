"""sk_fastif: fast influence functions for skorch-trained PyTorch models, the scikit-learn way.

Influence scores follow one convention everywhere:
``score(z, z_j) = (1/n) g(z)ᵀ (H + λI)⁻¹ g(z_j)``, the estimated rise of the loss on ``z`` if
training point ``z_j`` were left out. Positive = helpful, negative = harmful.
"""

from ._correct import correct_net
from ._engine import InfluenceEngine, Scores
from ._explainer import InfluenceExplainer
from ._explanation import Explanation
from .exceptions import StoreError, TrainSplitWarning

__version__ = "0.1.0.dev0"

__all__ = ["Explanation", "InfluenceEngine", "InfluenceExplainer", "Scores", "StoreError",
           "TrainSplitWarning", "__version__", "correct_net"]
