"""Negation and uncertainty cues, as data.

A cue is a regular-expression fragment (matched on the cleaned report, word-bounded) with a
*kind* and a *direction* (``fwd``, ``bwd`` or ``both``):

- ``fwd`` cues govern mentions that follow them in the same clause ("no effusion",
  "may reflect atelectasis");
- ``bwd`` cues govern mentions that precede them in the same clause ("effusion has resolved",
  "heart size is normal").

Kinds are checked in CheXpert's order: ``preneg`` uncertainty first ("cannot exclude
pneumonia" must not read as a negation), then ``neg``, then ``unc``. ``pseudo`` cues look like
negations but are not ("no change in the effusion") and are consumed so that their words cannot
trigger. ``break`` cues end a clause: no cue reaches a mention across one (a *short* break,
such as "with", only stops short-reach cues: "normal heart size with a small effusion").

Each direction has a reach in words (``*_REACH``): how far a cue can be from the mention. The
reach of "normal"-type cues is short (an adjective governs its noun phrase, not the sentence).
"""

from __future__ import annotations

__all__ = ["CUES", "FWD_REACH", "BWD_REACH", "SHORT_FWD_REACH", "SHORT_BWD_REACH", "Cue"]

from typing import NamedTuple


class Cue(NamedTuple):
    """One cue: ``kind`` in preneg/neg/unc/pseudo/break, ``direction`` fwd/bwd/both/-, ``short`` reach.

    ``tag`` names cues that only a setting turns on (see ``RuleLabelerConfig``): "alternative"
    ("A or B", "A versus B") and "probable" ("probable effusion").
    """

    kind: str
    direction: str
    pattern: str
    short: bool = False
    tag: str = ""


#: Reach of cues, in words between cue and mention.
FWD_REACH = 14
BWD_REACH = 8
SHORT_FWD_REACH = 4
SHORT_BWD_REACH = 10

_BE = "(?:is|are|was|were|be|been|has been|have been|had been|remains?|appears?|seems?|now)"
# a hedge followed by a cause hedges the cause, not what precedes: "effusion, possibly from pleuritis"
_NOT_CAUSE = "(?! (?:due to|secondary to|related to|from|caused by|because of|attributable to))"
_ADV = "(?:now |again |otherwise |currently |still |overall |grossly |essentially |likely |stable and |again |also )?"

CUES: tuple[Cue, ...] = (
    # --- look like negation, are not --------------------------------------------------------
    Cue("pseudo", "-", "no (?:significant |definite |appreciable |substantial |interval |other |real |"
        "acute |major )?(?:change|increase|decrease|improvement|worsening|progression|"
        "difference|enlargement of the effusion)"),
    Cue("pseudo", "-", "not (?:only|necessarily|significantly changed|changed significantly)"),
    Cue("pseudo", "-", "(?:without|with no) (?:significant |interval )?change"),
    Cue("pseudo", "-", "no further"),
    Cue("pseudo", "-", "(?:gram|rh)[ -]negative"),
    Cue("pseudo", "-", "(?:non|not) ?-?(?:specific|definite|diagnostic)"),
    # --- uncertainty that outranks negation ---------------------------------------------------
    Cue("preneg", "both", "(?:cannot|can not|can't|could not|not) (?:be )?(?:entirely |completely |totally |"
        "definitely |fully |reliably )?(?:exclude|excluded|rule out|ruled out)"),
    Cue("preneg", "fwd", "(?:difficult|unable|impossible|hard) to (?:entirely |completely )?(?:exclude|rule out)"),
    Cue("preneg", "bwd", "(?:is |are )?(?:difficult|impossible|hard) to (?:entirely |completely )?(?:exclude|rule out)",
        short=True),
    Cue("preneg", "fwd", "no evidence to (?:exclude|rule out)"),
    Cue("preneg", "fwd", "no new"),
    Cue("preneg", "bwd", "(?:is|are) not (?:(?:well|clearly|definitely|adequately|optimally) "
        "(?:seen|visualized|evaluated|assessed|appreciated)|evaluated|assessed)"),
    Cue("preneg", "fwd", "(?:poorly|incompletely|not well|not clearly|not adequately|not optimally) "
        "(?:seen|visualized|evaluated|assessed)"),
    # --- negation -----------------------------------------------------------------------------
    Cue("neg", "fwd", "no evidence (?:of|for)"),
    Cue("neg", "fwd", "no (?:radiographic |definite |convincing |acute |focal )?(?:signs?|findings?|"
        "features?|suggestion) (?:of|for|to suggest)"),
    Cue("neg", "fwd", "(?:without|with no) (?:radiographic |definite |convincing )?(?:evidence|signs?|"
        "findings?|features?) (?:of|for|to suggest)"),
    Cue("neg", "fwd", "negative for"),
    Cue("neg", "fwd", "(?:absence|resolution|resolving|removal|clearing|disappearance|interval resolution) of"),
    Cue("neg", "fwd", "resolved"),
    Cue("neg", "fwd", "rather than"),
    Cue("neg", "fwd", "history of"),
    Cue("neg", "fwd", "(?:to |and |or )?(?:exclude|excluding|rule out|ruling out|r/o|evaluate for|"
        "evaluation for|assess for|assessment for)"),
    Cue("neg", "fwd", "no longer"),
    Cue("neg", "fwd", "neither"),
    Cue("neg", "fwd", "nor"),
    Cue("neg", "fwd", "no"),
    Cue("neg", "fwd", "without"),
    Cue("neg", "fwd", "none"),
    Cue("neg", "fwd", "not"),
    Cue("neg", "fwd", "absent"),
    Cue("neg", "fwd", "(?:normal|unremarkable|normal-sized|normal-appearing|normally sized)", short=True),
    Cue("neg", "fwd", "(?:within|at|upper|top|high|low)[ -](?:normal limits|limits of normal|normal)", short=True),
    Cue("neg", "fwd", "(?:normal|unremarkable) (?:size|appearance|configuration|contours?|caliber|shape)"
        "(?:,? and (?:size|appearance|configuration|contours?|caliber|shape))? of"),
    Cue("neg", "fwd", "(?:clear|free) of"),
    Cue("neg", "fwd", "(?:mimick?(?:ing|s|ed)?|simulat(?:ing|es|ed))"),
    Cue("neg", "bwd", f"(?:{_BE} )?(?:not|no longer) (?:seen|identified|present|demonstrated|"
        "visualized|evident|noted|detected|apparent|visible|appreciated|enlarged|dilated|"
        "widened|changed|increased|(?:significantly|definitely|markedly|substantially|grossly) enlarged)"),
    Cue("neg", "bwd", f"(?:{_BE} )?{_ADV}(?:resolved|resolving|cleared|removed|absent|excluded|ruled out)"),
    Cue("neg", "bwd", f"(?:{_BE} )?{_ADV}(?:normal|unremarkable|within normal limits|upper limits? of normal|"
        "at the upper limits? of normal|top normal|top-normal|upper normal|high normal|low normal|"
        "normal in size|normal size|negative|clear|within (?:the )?limits of normal|normal limits)\\b", short=True),
    Cue("neg", "bwd", "(?:has|have) (?:since )?(?:resolved|cleared)"),
    Cue("neg", "bwd", "(?:none|no)(?=\\.?$)", short=True),
    # --- uncertainty --------------------------------------------------------------------------
    Cue("unc", "fwd", "(?:possible|possibly|presumabl[ey]|presumed|questionable|"
        "question|suspect|suspected|suspicious|suspicion|equivocal|indeterminate|"
        "concern|concerning|worrisome|differential|ddx|consider|considered|considerations?|"
        "possibility of|doubt|doubtful|(?:cannot|can not|difficult to|unable to) (?:differentiate|distinguish)|"
        "may|might|could|would|suggestion of|less likely|unlikely|"
        "either|correlat\\w*|clinical correlation|maybe|perhaps|obscur\\w*)"),
    Cue("unc", "both", "(?:or|and/or)", short=True, tag="alternative"),
    Cue("unc", "bwd", f"(?:{_BE} )?(?:possible|possibly|questionable|suspected|"
        "less likely|unlikely|(?:can|could|may|might) (?:also )?(?:be|represent|have)|doubted|doubtful|"
        "(?:would|could|should|may|might) (?:also )?be (?:a )?consider(?:ed|ation)|(?:a )?(?:consideration|possibility)|"
        f"obscur\\w*)\\b{_NOT_CAUSE}"),
    Cue("unc", "both", "in the (?:appropriate |right |proper |correct )?clinical (?:setting|context)"),
    Cue("unc", "fwd", "(?:probable|probably)", tag="probable"),
    Cue("unc", "bwd", f"(?:{_BE} )?probabl[ey]\\b{_NOT_CAUSE}", tag="probable"),
    Cue("unc", "both", "(?:versus|vs\\.?)", tag="alternative"),
    # --- clause boundaries --------------------------------------------------------------------
    Cue("break", "-", "(?:but|however|although|though|whereas|while|yet|except|"
        "aside from|apart from|other than|with the exception of|which|"
        "there (?:is|are|has been|have been|was|were))"),
    # "atelectasis at the base, otherwise negative for ...", but not "lungs otherwise clear"
    Cue("break", "-", "otherwise(?! (?:\\w+ )?(?:normal|unremarkable|clear|within))"),
    # "no effusion seen, dense nodule ...": a negated item closed by its verb ends the negation
    Cue("break", "-", "(?:seen|identified|noted|demonstrated|visualized|detected|present)(?=,)"),
    Cue("break", "-", "with", short=True),
)
