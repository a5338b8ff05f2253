"""lm-eval's own IFEval scoring for the task files in this folder (``!function
utils.process_results`` is looked up beside the YAML): re-exported unchanged, so the
cross-check scores with lm-eval's code, not this project's."""
from lm_eval.tasks.ifeval.utils import agg_inst_level_acc, process_results  # noqa: F401
