"""llavarad: open, lightweight chest X-ray report generation (LLaVA-Rad).

The public surface, importable from the top (each name loads its module on first use, so
``import llavarad`` stays light: no torch, no transformers)::

    import llavarad

    image = llavarad.read_cxr("cxr.dcm")                      # PNG / JPEG / DICOM -> CxrImage
    gen = llavarad.ReportGenerator.from_pretrained("models/llava-rad")
    findings = gen.generate(image.image, indication="Dyspnea.")
    llavarad.run_generation("models/llava-rad", "test.jsonl", "predictions.jsonl")
    labels = llavarad.get_labeler("rules").label([findings])  # 14 CheXpert observations
    result = llavarad.evaluate_predictions("predictions.jsonl", "results/")
    judged = llavarad.run_chexprompt("predictions.jsonl", "results/chexprompt",
                                     llavarad.ChexpromptConfig())

Deep imports (``llavarad.train.stage2_align`` ...) are for the stages and the package itself.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: public name -> (module, attribute in that module)
_EXPORTS: dict[str, tuple[str, str]] = {
    "LlavaradError": ("llavarad.errors", "LlavaradError"),
    "read_cxr": ("llavarad.io.images", "read_cxr"),
    "CxrImage": ("llavarad.io.images", "CxrImage"),
    "load_model": ("llavarad.model.build", "load_model"),
    "ModelBundle": ("llavarad.model.build", "ModelBundle"),
    "GenerationSettings": ("llavarad.generate", "GenerationSettings"),
    "ReportGenerator": ("llavarad.generate", "ReportGenerator"),
    "generate_reports": ("llavarad.generate", "generate_reports"),
    "run_generation": ("llavarad.generate", "run_generation"),
    "get_labeler": ("llavarad.evaluate.labelers", "get_labeler"),
    # named evaluate_predictions: ``llavarad.evaluate`` is the evaluation subpackage
    "EvaluateConfig": ("llavarad.evaluate.run", "EvaluateConfig"),
    "evaluate_predictions": ("llavarad.evaluate.run", "evaluate"),
    "ChexpromptConfig": ("llavarad.chexprompt.judge", "ChexpromptConfig"),
    "run_chexprompt": ("llavarad.chexprompt.run", "run_chexprompt"),
}

__all__ = [
    "ChexpromptConfig",
    "CxrImage",
    "EvaluateConfig",
    "GenerationSettings",
    "LlavaradError",
    "ModelBundle",
    "ReportGenerator",
    "__version__",
    "evaluate_predictions",
    "generate_reports",
    "get_labeler",
    "load_model",
    "read_cxr",
    "run_chexprompt",
    "run_generation",
]


def __getattr__(name: str) -> Any:
    """Import a public name's module on first access (PEP 562) and cache the attribute."""
    try:
        module, attr = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'llavarad' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
