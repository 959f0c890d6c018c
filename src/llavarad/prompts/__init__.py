"""Every prompt llavarad uses, in one place.

- :mod:`llavarad.prompts.model`: the report-generation formats the released weights were trained
  on ("plain" for alignment, "v1" for the fine-tuned model).
- :mod:`llavarad.prompts.structuring`: report structuring / translation / findings extraction
  (Supplementary Table 6).
- :mod:`llavarad.prompts.chexprompt`: the CheXprompt judge.
"""

from llavarad.prompts.model import (
    IMAGE_PLACEHOLDER,
    PROMPT_FORMATS,
    V1_SYSTEM,
    PromptFormat,
    build_prompt,
    question_for,
)

__all__ = ["IMAGE_PLACEHOLDER", "PROMPT_FORMATS", "V1_SYSTEM", "PromptFormat", "build_prompt", "question_for"]
