"""How far to trust one GPS fix: a score from 0 to 100 and a letter grade.

Pure and deterministic: the same fix always gets the same score, with no clock and no network,
so the API and the batch job agree and the arithmetic can be tested on its own.

The formula. Four qualities, each between 0 (useless) and 1 (as good as it gets), rise or
fall in a straight line between two anchors and stay flat beyond them:

| quality    | points | 0 at                          | 1 at                          |
|------------|--------|-------------------------------|-------------------------------|
| geometry   | 30     | HDOP 10 (0.6), PDOP 15 (0.4)  | HDOP 1, PDOP 2                |
| satellites | 25     | 4 used (0.8), 4 in view (0.2) | 12 used, 20 in view           |
| signal     | 25     | mean C/N0 20 dB-Hz            | mean C/N0 45 dB-Hz            |
| freshness  | 20     | 31 s old                      | 1 s old (a 1 Hz receiver's)   |

Geometry and satellites blend two inputs with the weights in brackets. Each quality earns
its share of its points, at most 100 in all, and the fix type then scales the sum: a 2D fix
keeps 60 % of it, a 3D fix 85 %, DGPS 90 %, an RTK float solution 95 %, an RTK fixed solution
all of it, and no fix none. The result is rounded half up to a whole number.

Every input moves the score one way only: more satellites, a stronger signal or a better
(lower) DOP never lower it, an older fix never raises it.
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field, model_validator


class FixType(StrEnum):
    """The receiver's solution, from worst to best."""

    NO_FIX = "no-fix"
    TWO_D = "2d"
    THREE_D = "3d"
    DGPS = "dgps"
    RTK_FLOAT = "rtk-float"
    RTK_FIXED = "rtk-fixed"


class Grade(StrEnum):
    A = "A"  # 85 and up: survey and lane-level use
    B = "B"  # 70 and up: navigation
    C = "C"  # 50 and up: coarse tracking
    D = "D"  # 30 and up: show it, do not act on it
    F = "F"  # below 30: discard


# The share of the points each fix type keeps, in percent.
FIX_TYPE_PERCENT: Final[dict[FixType, int]] = {
    FixType.NO_FIX: 0,
    FixType.TWO_D: 60,
    FixType.THREE_D: 85,
    FixType.DGPS: 90,
    FixType.RTK_FLOAT: 95,
    FixType.RTK_FIXED: 100,
}
GRADE_FLOORS: Final[tuple[tuple[int, Grade], ...]] = (
    (85, Grade.A),
    (70, Grade.B),
    (50, Grade.C),
    (30, Grade.D),
    (0, Grade.F),
)
GEOMETRY_POINTS: Final = 30
SATELLITES_POINTS: Final = 25
SIGNAL_POINTS: Final = 25
FRESHNESS_POINTS: Final = 20

# Two fixes as a client sends them: the documentation's examples, and the tests'.
GOOD_FIX: Final[dict[str, Any]] = {
    "fix_type": "3d",
    "satellites_in_view": 14,
    "satellites_used": 9,
    "hdop": 0.9,
    "pdop": 1.6,
    "mean_cn0_dbhz": 41.5,
    "fix_age_seconds": 0.4,
}
WEAK_FIX: Final[dict[str, Any]] = {
    "fix_type": "2d",
    "satellites_in_view": 6,
    "satellites_used": 4,
    "hdop": 4.8,
    "pdop": 7.9,
    "mean_cn0_dbhz": 27.0,
    "fix_age_seconds": 12.0,
}


class Fix(BaseModel):
    """One position fix as a receiver reports it (NMEA GGA/GSA/GSV, or a u-blox NAV-PVT)."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={
            "examples": [
                GOOD_FIX,
                WEAK_FIX,
            ]
        },
    )

    fix_type: FixType = Field(description="The receiver's solution.")
    satellites_in_view: int = Field(ge=0, le=200, description="Satellites the receiver tracks.")
    satellites_used: int = Field(ge=0, le=200, description="Satellites used in the solution.")
    hdop: float = Field(gt=0, le=99.99, description="Horizontal dilution of precision.")
    pdop: float = Field(gt=0, le=99.99, description="Position (3D) dilution of precision.")
    mean_cn0_dbhz: float = Field(
        ge=0, le=60, description="Mean carrier-to-noise density of the used satellites, dB-Hz."
    )
    fix_age_seconds: float = Field(
        ge=0, le=86_400, description="Seconds since the receiver computed the fix."
    )

    @model_validator(mode="after")
    def _consistent(self) -> Fix:
        if self.satellites_used > self.satellites_in_view:
            raise ValueError("satellites_used cannot exceed satellites_in_view")
        if self.pdop < self.hdop:
            raise ValueError("pdop cannot be below hdop (PDOP² = HDOP² + VDOP²)")
        return self


class Qualities(BaseModel):
    """Each quality between 0 (useless) and 1 (as good as it gets)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    geometry: float = Field(ge=0, le=1, description="From HDOP and PDOP.")
    satellites: float = Field(ge=0, le=1, description="From satellites used and in view.")
    signal: float = Field(ge=0, le=1, description="From the mean C/N0.")
    freshness: float = Field(ge=0, le=1, description="From the fix's age.")


POINTS: Final[dict[str, int]] = {
    "geometry": GEOMETRY_POINTS,
    "satellites": SATELLITES_POINTS,
    "signal": SIGNAL_POINTS,
    "freshness": FRESHNESS_POINTS,
}


class Reliability(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    score: int = Field(ge=0, le=100, description="0 (discard) to 100 (trust fully).")
    grade: Grade
    qualities: Qualities = Field(description="Each quality, rounded to three decimals.")
    weakest: str | None = Field(
        description="What cost the most points: a quality or `fix_type`; null at 100."
    )


def ramp(value: float, zero_at: float, one_at: float) -> float:
    """0 at `zero_at`, 1 at `one_at`, a straight line between, flat beyond; either direction."""
    share = (value - zero_at) / (one_at - zero_at)
    return min(1.0, max(0.0, share))


def qualities_of(fix: Fix) -> Qualities:
    return Qualities(
        geometry=0.6 * ramp(fix.hdop, 10.0, 1.0) + 0.4 * ramp(fix.pdop, 15.0, 2.0),
        satellites=0.8 * ramp(fix.satellites_used, 4, 12)
        + 0.2 * ramp(fix.satellites_in_view, 4, 20),
        signal=ramp(fix.mean_cn0_dbhz, 20.0, 45.0),
        freshness=ramp(fix.fix_age_seconds, 31.0, 1.0),
    )


def grade_of(score: int) -> Grade:
    return next(grade for floor, grade in GRADE_FLOORS if score >= floor)


def score_fix(fix: Fix) -> Reliability:
    """The fix's reliability, by the formula in this module's docstring."""
    shares: dict[str, float] = qualities_of(fix).model_dump()
    points = sum(POINTS[name] * share for name, share in shares.items())
    kept = FIX_TYPE_PERCENT[fix.fix_type]
    score = min(100, max(0, math.floor(points * kept / 100 + 0.5)))
    # Points lost to each input; ties go to the first named, so the answer is stable.
    lost = {name: POINTS[name] * (1 - share) for name, share in shares.items()}
    lost["fix_type"] = points * (100 - kept) / 100
    worst = max(lost, key=lost.__getitem__)
    return Reliability(
        score=score,
        grade=grade_of(score),
        qualities=Qualities.model_validate({n: round(s, 3) for n, s in shares.items()}),
        weakest=worst if score < 100 and lost[worst] > 0 else None,
    )
