"""Grading: one implementation of OpenAI's graders (:mod:`tuneforge.contracts.graders`) for evals (the service) and
reinforcement rewards (the trainer). Pure Python plus the metric libraries (rapidfuzz, sacrebleu, nltk,
rouge-score), imported when first used; no torch, no web code.

A judge grader (``score_model``, ``label_model``) asks a served model through a :data:`Judge` callable its caller
provides (the service passes one over its serving backend); without one it cannot be graded.
"""

from tuneforge.graders.grading import Grade, compile_grader, grade
from tuneforge.graders.judges import Judge, JudgeError, JudgeReply, JudgeUnavailable
from tuneforge.graders.matching import GraderError, normalise
from tuneforge.graders.similarity import meteor_available, similarity

__all__ = ["Grade", "GraderError", "Judge", "JudgeError", "JudgeReply", "JudgeUnavailable", "compile_grader", "grade",
           "meteor_available", "normalise", "similarity"]
