"""What a phantom is made of: the finding names and the specs a phantom is rendered from.

Below :mod:`llavarad.phantom` (sampling, writing), ``_draw`` (rendering) and ``_text`` (reports),
which all read these types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["CATEGORIES", "DEVICES", "FINDINGS", "AnatomySpec", "FindingSpec", "PhantomSpec", "Side"]

#: Support devices a phantom can carry (each is its own finding with its own mask).
DEVICES: tuple[str, ...] = ("endotracheal_tube", "central_line", "chest_tube", "pacemaker")
#: Every finding name used in specs, masks and ``phantom_findings``.
FINDINGS: tuple[str, ...] = (
    "cardiomegaly", "pleural_effusion", "pneumothorax", "consolidation", "edema", "atelectasis", "lung_lesion",
) + DEVICES
#: The categories whose prevalence is configured (all devices share "support_devices").
CATEGORIES: tuple[str, ...] = FINDINGS[:7] + ("support_devices",)

Side = Literal["left", "right", "bilateral"]


@dataclass
class FindingSpec:
    """One finding to draw. ``seed`` fixes its shape/texture so re-rendering is exact."""

    finding: str
    side: Side | None = None
    location: str | None = None
    severity: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.finding not in FINDINGS:
            raise ValueError(f"finding {self.finding!r} is not one of {', '.join(FINDINGS)}")
        if self.side not in (None, "left", "right", "bilateral"):
            raise ValueError(f"side {self.side!r} is not one of left, right, bilateral")


@dataclass
class AnatomySpec:
    """Per-image anatomy and acquisition parameters (normalised image units unless stated)."""

    dx: float = 0.0
    dy: float = 0.0
    thorax_scale: float = 1.0
    lung_height: float = 1.0
    heart_width: float = 0.17
    heart_tilt: float = -18.0  # degrees
    dome_right: float = 0.755
    dome_left: float = 0.78
    rib_gap: float = 0.072
    rib_phase: float = 0.0
    rib_width: float = 0.026
    clavicle_tilt: float = 0.0
    tissue: float = 0.34
    lung_air: float = 0.24
    mediastinum: float = 0.19
    bone: float = 0.09
    markings: float = 0.085
    blur: float = 0.7  # px at 224
    black: float = 0.02
    white: float = 0.78
    gamma: float = 1.0
    noise: float = 0.018
    exposure_tilt: float = 0.0
    gastric_bubble: bool = True
    breast: float = 0.0  # density of breast shadows (0 = none)
    texture_seed: int = 0


@dataclass
class PhantomSpec:
    """Everything needed to render one phantom: anatomy plus an ordered list of findings."""

    anatomy: AnatomySpec = field(default_factory=AnatomySpec)
    findings: list[FindingSpec] = field(default_factory=list)

    def without_findings(self) -> PhantomSpec:
        """The same patient and exposure with no findings (for mask and ablation checks)."""
        return PhantomSpec(anatomy=self.anatomy, findings=[])

    def names(self) -> list[str]:
        return [f.finding for f in self.findings]
