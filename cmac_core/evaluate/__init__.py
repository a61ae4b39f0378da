"""Does the pipeline learn? The ``avprep evaluate`` protocol on an ``avprep synth`` benchmark.

``arms`` (what is trained, the shuffled-audio control's shards), ``config`` (sizes),
``features`` (frozen features and maps with their ground truth), ``localization``,
``probes`` and ``retrieval`` (the measures), ``summary`` (figures, baselines and the
pre-registered outcomes), ``folder`` (whose folder it is), ``protocol`` (the run), ``report`` and ``pictures`` (output).

cmac_core imports ``avprep.schema`` and, here only, ``avprep.truth``: both standard
library only; the benchmark's ground truth is defined in the latter.
"""

from cmac_core.evaluate.config import EvaluateConfig
from cmac_core.evaluate.protocol import EvaluateResult, evaluate, prepare

__all__ = ["EvaluateConfig", "EvaluateResult", "evaluate", "prepare"]
