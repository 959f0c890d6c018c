"""The rule-based CheXpert-style labeler: mentions, negation/uncertainty, aggregation.

Pipeline per report (all regular expressions are compiled once, when the labeler is built):

1. clean the text (:func:`._text.clean_report`) and find sentence starts;
2. find every mention of each observation, dropping those inside an unmention phrase;
3. classify each mention as uncertain, negative or positive from the cues of its clause
   (:mod:`.rules`), in CheXpert's order: uncertainty that outranks negation, then negation,
   then the remaining uncertainty;
4. aggregate the mentions into one value per observation (:func:`aggregate`).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Literal, NamedTuple

from llavarad.evaluate.rule_labeler import phrases as _phrases
from llavarad.evaluate.rule_labeler import rules as _rules
from llavarad.evaluate.rule_labeler._index import PhraseIndex, word_starts
from llavarad.evaluate.rule_labeler._text import clean_report, sentence_bounds, sentence_of
from llavarad.io.manifest import CHEXPERT_OBSERVATIONS

logger = logging.getLogger(__name__)

__all__ = ["POSITIVE", "NEGATIVE", "UNCERTAIN", "Mention", "RuleLabeler", "RuleLabelerConfig", "aggregate"]

POSITIVE, NEGATIVE, UNCERTAIN = 1.0, 0.0, -1.0

_NO_FINDING = "No Finding"
_SUPPORT_DEVICES = "Support Devices"
_CARDIOMEGALY = "Cardiomegaly"

# "stable heart size", "cardiac silhouette is unchanged", "borderline heart size": a statement
# about a size word that says nothing about enlargement.
_ONE_SENTENCE = [0]
_SIZED = ("Cardiomegaly", "Enlarged Cardiomediastinum")
_SIZE_HEDGE_BEFORE = re.compile(r"(?:(?:stable|unchanged|similar|no (?:significant |interval )?change in)"
                                r"(?: (?:the|in|of|mild|mildly|appearance))*|borderline(?: [a-z]+){0,3}) ?$")
_ABNORMAL_SIZE = re.compile(r"enlarg|large|prominen|widen|increas|cardiomegal|dilat|big|expanded|cardiothoracic ratio")
_SIZE_HEDGE_AFTER = re.compile(r"^(?:[a-z,]+ ){0,5}?(?:is |are |remains? |appears? )?(?:stable|unchanged|"
                               r"not changed|similar|borderline)\b")


@dataclass(frozen=True)
class RuleLabelerConfig:
    """Settings of the rule-based labeler.

    Attributes:
        alternatives: how to read findings offered as alternatives joined by "or" ("scarring or
            atelectasis"). ``"positive"`` (default, as NegBio and the Open-I gold standard read
            them): each is labeled as stated. ``"uncertain"`` (the CheXpert labeler's rule): each
            becomes uncertain. "A versus B" is read the same way.
        probable: how to read findings called probable ("probable small effusion").
            ``"positive"`` (default, as the Open-I gold standard reads them, and as "likely" is
            read either way): as stated. ``"uncertain"`` (the CheXpert labeler's rule): uncertain.
    """

    alternatives: Literal["positive", "uncertain"] = "positive"
    probable: Literal["positive", "uncertain"] = "positive"

    def __post_init__(self) -> None:
        for name in ("alternatives", "probable"):
            value = getattr(self, name)
            if value not in ("positive", "uncertain"):
                raise ValueError(f"{name}={value!r}: use 'positive' or 'uncertain'")

    def uses(self, cue: _rules.Cue) -> bool:
        """Whether ``cue`` is active under these settings (tagged cues apply only when "uncertain")."""
        if cue.tag == "alternative":
            return self.alternatives == "uncertain"
        if cue.tag == "probable":
            return self.probable == "uncertain"
        return True

    def cue_classes(self) -> dict[tuple[str, str, bool], list[str]]:
        """Active cue patterns by ``(kind, direction, short)``, clause breaks first: at one word,
        the index reports labels in this order, so a break there acts before a cue ("otherwise
        negative for") and a cue that contains the break word ("with no evidence of") still acts."""
        classes: dict[tuple[str, str, bool], list[str]] = {}
        for cue in sorted(_rules.CUES, key=lambda c: c.kind != "break"):
            if self.uses(cue):
                classes.setdefault((cue.kind, cue.direction, cue.short), []).append(cue.pattern)
        return classes


class Mention(NamedTuple):
    """One mention: observation, matched text, span in the cleaned report and its status."""

    observation: str
    text: str
    start: int
    end: int
    status: float


def _alternation(fragments: Iterable[str]) -> str:
    return "|".join(f"(?:{f})" for f in fragments)


class _CueHit(NamedTuple):
    start: int
    end: int
    kind: str
    direction: str
    short: bool


class RuleLabeler:
    """Offline CheXpert-style labeler (no model weights); safe to share between threads.

    ``version`` ends in a digest of the phrase and cue data, so a result records the exact rules.

    Example:
        >>> lab = RuleLabeler()
        >>> lab.label(["No pleural effusion. Mild cardiomegaly."])[0]["Cardiomegaly"]
        1.0
    """

    name = "rules"

    def __init__(self, config: RuleLabelerConfig | None = None) -> None:
        self.config = config or RuleLabelerConfig()
        self.version = f"1.0+{_rules_digest()}"
        # One index, one pass over the words, for mentions, unmentions and cue classes. Cue
        # classes (kind, direction, reach) may overlap each other ("are clear" is a backward
        # negation, "clear of" a forward one); matches within one label never overlap.
        classes = self.config.cue_classes()
        table: list[tuple[str, Iterable[str]]] = list(_phrases.MENTIONS.items())
        self._n_obs = len(table)
        table += [(f"unmention:{obs}", frags) for obs, frags in _phrases.UNMENTIONS.items()]
        self._n_phrase_labels = len(table)
        self._cue_keys = list(classes)
        self._index = PhraseIndex(
            table, word_end=False, word_end_labels=[(f"cue:{k}/{d}/{sh}", pats) for (k, d, sh), pats in classes.items()]
        )
        self._observations = [obs for obs, _ in table[: self._n_obs]]
        self._unmention_of = {
            i: self._observations.index(label.split(":", 1)[1]) for i, (label, _) in enumerate(table) if i >= self._n_obs
        }
        self._hedged = {obs: re.compile(rf"(?:{_alternation(f)})") for obs, f in _phrases.HEDGED_MENTIONS.items()}
        self._size_words = re.compile(rf"(?:{_alternation(_phrases.SIZE_ONLY_MENTIONS)})")
        self._obs_rank = {obs: i for i, obs in enumerate(self._observations)}
        self._sentence_cache: dict[str, tuple[tuple[str, str, int, int, float], ...]] = {}

    @property
    def settings(self) -> dict[str, object]:
        """What decides this labeler's output (recorded with every evaluation)."""
        return {
            "implementation": "llavarad rule-based CheXpert-style labeler",
            **asdict(self.config),
            "observations": list(CHEXPERT_OBSERVATIONS),
            "values": "1.0 positive, 0.0 negative, -1.0 uncertain, None not mentioned",
            "aggregation": "CheXpert: positive > uncertain > negative except negative+uncertain -> uncertain; "
            "No Finding only if nothing but Support Devices is positive/uncertain; "
            "heart failure/CHF positive or uncertain -> Cardiomegaly uncertain",
            "cue_reach_words": {
                "forward": _rules.FWD_REACH,
                "backward": _rules.BWD_REACH,
                "short_forward": _rules.SHORT_FWD_REACH,
                "short_backward": _rules.SHORT_BWD_REACH,
            },
        }

    # -- public API ---------------------------------------------------------------------------
    def label(self, texts: list[str]) -> list[dict[str, float | None]]:
        """Label reports: one ``{observation: 1.0 | 0.0 | -1.0 | None}`` dict per text (14 keys).

        ``None`` (or a non-string) is an error naming its index; an empty string is a report with
        no mention (No Finding 1.0, as the original labeler gives).
        """
        out: list[dict[str, float | None]] = []
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"report {i}: expected a string, got {type(text).__name__} ({text!r:.40})")
            out.append(aggregate(self.mentions(text)))
        return out

    def mentions(self, text: str) -> list[Mention]:
        """All mentions of one report with their status, in observation order.

        Sentences are labeled independently (no cue reaches across a sentence end), so each
        distinct sentence is worked out once and remembered: report sentences repeat a lot.
        """
        clean = clean_report(text)
        if not clean:
            return []
        found: list[Mention] = []
        bounds = sentence_bounds(clean)
        bounds.append(len(clean))
        cache = self._sentence_cache
        for a, b in zip(bounds, bounds[1:]):
            sentence = clean[a:b]
            if sentence.startswith(" "):
                sentence, a = sentence[1:], a + 1
            if not sentence:
                continue
            local = cache.get(sentence)
            if local is None:
                local = self._sentence_mentions(sentence)
                if len(cache) > 200_000:  # bound the memo on endless streams of new sentences
                    cache.clear()
                cache[sentence] = local
            found.extend(Mention(obs, t, s + a, e + a, status) for obs, t, s, e, status in local)
        found.sort(key=lambda m: (self._obs_rank[m.observation], m.start))
        return found

    def _sentence_mentions(self, sentence: str) -> tuple[tuple[str, str, int, int, float], ...]:
        n_obs, n_phrase = self._n_obs, self._n_phrase_labels
        hits: list[tuple[int, int, int]] = []
        blocked: dict[int, list[tuple[int, int]]] = {}
        cues: list[_CueHit] = []
        pseudo: list[tuple[int, int]] = []
        keys = self._cue_keys
        for start, end, label in self._index.find(sentence, word_starts(sentence)):
            if label < n_obs:
                hits.append((label, start, end))
            elif label < n_phrase:
                blocked.setdefault(self._unmention_of[label], []).append((start, end))
            else:
                kind, direction, short = keys[label - n_phrase]
                if kind == "pseudo":
                    pseudo.append((start, end))
                else:
                    cues.append(_CueHit(start, end, kind, direction, short))
        if not hits:
            return ()
        if pseudo:  # words of "no change" cannot act as a negation
            cues = [h for h in cues if h.kind == "break" or not any(ps <= h.start < pe for ps, pe in pseudo)]
        observations = self._observations
        out: list[tuple[str, str, int, int, float]] = []
        for label, s, e in sorted(hits):
            spans = blocked.get(label)
            if spans and any(s < be and e > bs for bs, be in spans):
                continue
            obs = observations[label]
            status = self._classify(sentence, obs, s, e, _ONE_SENTENCE, cues)
            if status is not None:
                out.append((obs, sentence[s:e], s, e, status))
        return tuple(out)

    # -- negation and uncertainty -------------------------------------------------------------
    def _classify(self, text: str, obs: str, s: int, e: int, starts: list[int], cues: list[_CueHit]) -> float | None:
        """Status of the mention ``text[s:e]``, or None when it is no mention after all."""
        k = sentence_of(starts, s)
        sent_start = starts[k]
        sent_end = starts[k + 1] if k + 1 < len(starts) else len(text)
        kinds: set[str] = set()
        # cues before the mention, nearest first, stopping at a clause break
        short_ok = True
        for cue in reversed(cues):
            if cue.end > s:
                continue
            if cue.start < sent_start:
                break
            if cue.kind == "break":
                if cue.short:  # a short break only shields the mention from short-reach cues
                    short_ok = False
                    continue
                break
            if cue.direction not in ("fwd", "both"):
                continue
            gap = text.count(" ", cue.end, s) - 1  # words strictly between cue and mention
            if cue.short:
                if not short_ok or gap > _rules.SHORT_FWD_REACH:
                    continue
            elif gap > _rules.FWD_REACH:
                continue
            kinds.add(cue.kind)
        # cues after the mention
        short_ok = True
        for cue in cues:
            if cue.start < e:
                continue
            if cue.start >= sent_end:
                break
            if cue.kind == "break":
                if cue.short:
                    short_ok = False
                    continue
                break
            if cue.direction not in ("bwd", "both"):
                continue
            gap_text = text[e:cue.start]
            gap = gap_text.count(" ") - 1
            if cue.short:
                if not short_ok or gap > _rules.SHORT_BWD_REACH:
                    continue
                # "cardiomegaly, lungs are normal": a comma list reaches on only through "and"
                if "," in gap_text and " and " not in gap_text:
                    continue
            elif gap > _rules.BWD_REACH:
                continue
            kinds.add(cue.kind)
        if "preneg" in kinds:
            return UNCERTAIN
        if "neg" in kinds:
            return NEGATIVE
        if "unc" in kinds:
            return UNCERTAIN
        hedged = self._hedged.get(obs)
        if hedged is not None and hedged.match(text, s, e):
            return UNCERTAIN
        mention = text[s:e]
        if obs in _SIZED and self._size_words.search(mention) and not _ABNORMAL_SIZE.search(mention):
            # an organ named without a verdict ("the heart and lungs have changed") is no finding;
            # "stable heart size" is uncertain (it may be stably enlarged)
            before, after = text[max(sent_start, s - 40):s], text[e:sent_end].lstrip()
            if _ABNORMAL_SIZE.search(before[-25:]) or _ABNORMAL_SIZE.search(after[:40]):
                return POSITIVE
            if _SIZE_HEDGE_BEFORE.search(before) or _SIZE_HEDGE_AFTER.match(after):
                return UNCERTAIN
            return None
        return POSITIVE


def _rules_digest() -> str:
    """Short digest of every phrase and cue list (changes whenever the rules change)."""
    data = repr((_phrases.MENTIONS, _phrases.UNMENTIONS, _phrases.HEDGED_MENTIONS, _phrases.HEART_FAILURE_MENTIONS,
                 _phrases.SIZE_ONLY_MENTIONS, _rules.CUES, _rules.FWD_REACH, _rules.BWD_REACH,
                 _rules.SHORT_FWD_REACH, _rules.SHORT_BWD_REACH))
    return hashlib.sha256(data.encode()).hexdigest()[:12]


def aggregate(mentions: Iterable[Mention]) -> dict[str, float | None]:
    """Combine mentions into one value per observation, by the CheXpert labeler's rules.

    - several statuses for one observation: negative + uncertain -> uncertain; otherwise any
      positive -> positive; otherwise all equal;
    - a positive or uncertain "heart failure"/"CHF" also adds an uncertain Cardiomegaly;
    - No Finding is 1.0 when no mention other than Support Devices is positive or uncertain
      (No Finding phrases, other abnormalities, count as findings here), else blank.
    """
    by_obs: dict[str, list[float]] = {}
    no_finding = True
    for m in mentions:
        if m.observation != _SUPPORT_DEVICES and m.status != NEGATIVE:
            no_finding = False
        if m.observation == _NO_FINDING:
            continue
        if m.status != NEGATIVE and m.text in _phrases.HEART_FAILURE_MENTIONS:
            by_obs.setdefault(_CARDIOMEGALY, []).append(UNCERTAIN)
        by_obs.setdefault(m.observation, []).append(m.status)
    if no_finding:
        by_obs[_NO_FINDING] = [POSITIVE]
    out: dict[str, float | None] = {}
    for obs in CHEXPERT_OBSERVATIONS:
        values = by_obs.get(obs)
        if not values:
            out[obs] = None
        elif len(values) == 1:
            out[obs] = values[0]
        elif NEGATIVE in values and UNCERTAIN in values:
            out[obs] = UNCERTAIN
        elif POSITIVE in values:
            out[obs] = POSITIVE
        else:
            out[obs] = values[0]
    return out
