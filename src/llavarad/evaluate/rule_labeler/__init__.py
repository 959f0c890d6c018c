"""Offline, rule-based CheXpert-style report labeler (no model weights, no parser).

``RuleLabeler().label(texts)`` gives, per report, ``{observation: 1.0 | 0.0 | -1.0 | None}`` for
the 14 CheXpert observations. Phrase lists are in :mod:`.phrases`, negation and uncertainty cues
in :mod:`.rules`, the pipeline and CheXpert's aggregation rules in :mod:`.labeler`.
"""

from llavarad.evaluate.rule_labeler.labeler import NEGATIVE, POSITIVE, UNCERTAIN, Mention, RuleLabeler, RuleLabelerConfig, aggregate

__all__ = ["NEGATIVE", "POSITIVE", "UNCERTAIN", "Mention", "RuleLabeler", "RuleLabelerConfig", "aggregate"]
