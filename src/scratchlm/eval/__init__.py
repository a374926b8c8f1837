"""Evaluation: per-token log-probabilities, perplexity and bits per byte, multiple choice by likelihood (MMLU),
generation tasks with answer parsing (GSM8K, MATH), instruction and safety prompts with a refusal heuristic,
and report cards per checkpoint."""

from scratchlm.eval.answers import extract_boxed, extract_math_answer, extract_number_answer, math_equal
from scratchlm.eval.generation import Completion, generate_ids, generate_texts
from scratchlm.eval.harness import TASKS, EvalConfig, run_eval
from scratchlm.eval.logprobs import autocast_context, pad_batch, response_logprobs, token_logprobs
from scratchlm.eval.multiple_choice import evaluate_mmlu, score_continuations
from scratchlm.eval.perplexity import text_perplexity
from scratchlm.eval.report import compare_table, load_report, write_report
from scratchlm.eval.safety import detect_refusal, refusal_rate

__all__ = [
    "TASKS", "Completion", "EvalConfig", "autocast_context", "compare_table", "detect_refusal", "evaluate_mmlu",
    "extract_boxed", "extract_math_answer", "extract_number_answer", "generate_ids", "generate_texts", "load_report",
    "math_equal", "pad_batch", "refusal_rate", "response_logprobs", "run_eval", "score_continuations",
    "text_perplexity", "token_logprobs", "write_report",
]
