"""Problems, their loaders, segmenting of reference solutions, and prompt templates with exposure."""

from atesd.data.loaders import ColumnMap, load_hf_dataset, load_jsonl, problems_from_rows
from atesd.data.problem import DataError, Problem
from atesd.data.segments import SegmentUnit, exposed_reference, segment_spans, strip_final_boxed
from atesd.data.templates import PromptTemplates, chat_prompt, student_message, teacher_message

__all__ = [
    "ColumnMap",
    "DataError",
    "Problem",
    "PromptTemplates",
    "SegmentUnit",
    "chat_prompt",
    "exposed_reference",
    "load_hf_dataset",
    "load_jsonl",
    "problems_from_rows",
    "segment_spans",
    "strip_final_boxed",
    "student_message",
    "teacher_message",
]
