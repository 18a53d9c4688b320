"""The reliability arithmetic, without a server: a table of worked fixes, then properties."""

from __future__ import annotations

from typing import Any

import pytest
from gps_reliability.score import GOOD_FIX, Fix, FixType, Grade, score_fix
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError


def fix(**changes: Any) -> Fix:
    return Fix.model_validate({**GOOD_FIX, **changes})


@pytest.mark.parametrize(
    ("changes", "score", "grade", "weakest"),
    [
        # every quality perfect, RTK fixed: nothing lost
        (
            {"fix_type": "rtk-fixed", "satellites_in_view": 22, "satellites_used": 16}
            | {"hdop": 0.6, "pdop": 1.1, "mean_cn0_dbhz": 46.0},
            100,
            Grade.A,
            None,
        ),
        # 30 + 25 * 0.625 + 25 * 0.86 + 20 = 87.125 points; 3D keeps 85 %: 74.06
        ({}, 74, Grade.B, "fix_type"),
        # RTK float keeps 95 %: 82.77; now the 9.375 points lost to satellites weigh most
        ({"fix_type": "rtk-float"}, 83, Grade.B, "satellites"),
        # every quality exactly halfway: 50 points, 85 % is 42.5, rounded half up
        (
            {"satellites_in_view": 12, "satellites_used": 8, "hdop": 5.5, "pdop": 8.5}
            | {"mean_cn0_dbhz": 32.5, "fix_age_seconds": 16.0},
            43,
            Grade.D,
            "geometry",
        ),
        # a 2D fix keeps 60 % of 87.125: 52.28
        ({"fix_type": "2d"}, 52, Grade.C, "fix_type"),
        # a fix half a minute old has no freshness left: 67.125 * 85 % = 57.06
        ({"fix_age_seconds": 31.0}, 57, Grade.C, "freshness"),
        # a signal at the floor: (30 + 15.625 + 0 + 20) * 85 % = 55.78
        ({"mean_cn0_dbhz": 20.0}, 56, Grade.C, "signal"),
        # no fix is worth nothing, however good the rest
        ({"fix_type": "no-fix"}, 0, Grade.F, "fix_type"),
    ],
)
def test_worked_fixes_score_as_the_formula_says(
    changes: dict[str, Any], score: int, grade: Grade, weakest: str | None
) -> None:
    result = score_fix(fix(**changes))
    assert (result.score, result.grade, result.weakest) == (score, grade, weakest)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"satellites_used": 15}, "satellites_used cannot exceed satellites_in_view"),
        ({"pdop": 0.5}, "pdop cannot be below hdop"),
        ({"hdop": 0}, "greater than 0"),
        ({"mean_cn0_dbhz": 61}, "less than or equal to 60"),
        ({"fix_type": "3D"}, "fix_type"),
        ({"altitude": 12.0}, "Extra inputs are not permitted"),
    ],
)
def test_impossible_fixes_are_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        fix(**changes)


# A busy machine must not fail a property on time: the arithmetic is what is checked.
no_deadline = settings(deadline=None)


@st.composite
def fixes(draw: st.DrawFn) -> Fix:
    in_view = draw(st.integers(0, 200))
    hdop = draw(st.floats(0.01, 99.99))
    return Fix(
        fix_type=draw(st.sampled_from(FixType)),
        satellites_in_view=in_view,
        satellites_used=draw(st.integers(0, in_view)),
        hdop=hdop,
        pdop=draw(st.floats(hdop, 99.99)),
        mean_cn0_dbhz=draw(st.floats(0, 60)),
        fix_age_seconds=draw(st.floats(0, 86_400)),
    )


@no_deadline
@given(fixes())
def test_the_score_stays_within_0_and_100_and_matches_its_grade(given_fix: Fix) -> None:
    result = score_fix(given_fix)
    assert 0 <= result.score <= 100
    assert result == score_fix(given_fix)
    floors = {Grade.A: 85, Grade.B: 70, Grade.C: 50, Grade.D: 30, Grade.F: 0}
    assert result.score >= floors[result.grade]


@no_deadline
@given(fixes(), st.integers(1, 20))
def test_more_satellites_never_lower_the_score(given_fix: Fix, more: int) -> None:
    used = min(200, given_fix.satellites_used + more)
    better = given_fix.model_copy(
        update={
            "satellites_used": used,
            "satellites_in_view": max(used, given_fix.satellites_in_view),
        }
    )
    assert score_fix(better).score >= score_fix(given_fix).score


@no_deadline
@given(fixes(), st.floats(0, 1))
def test_a_better_hdop_or_a_stronger_signal_never_lowers_the_score(
    given_fix: Fix, share: float
) -> None:
    lower_hdop = given_fix.model_copy(update={"hdop": max(0.01, given_fix.hdop * share)})
    stronger = given_fix.model_copy(
        update={"mean_cn0_dbhz": given_fix.mean_cn0_dbhz + (60 - given_fix.mean_cn0_dbhz) * share}
    )
    assert score_fix(lower_hdop).score >= score_fix(given_fix).score
    assert score_fix(stronger).score >= score_fix(given_fix).score


@no_deadline
@given(fixes(), st.floats(0, 3600))
def test_an_older_fix_never_scores_higher(given_fix: Fix, seconds: float) -> None:
    older = given_fix.model_copy(
        update={"fix_age_seconds": min(86_400, given_fix.fix_age_seconds + seconds)}
    )
    assert score_fix(older).score <= score_fix(given_fix).score


@no_deadline
@given(fixes())
def test_a_better_fix_type_never_lowers_the_score(given_fix: Fix) -> None:
    order = list(FixType)
    for better in order[order.index(given_fix.fix_type) + 1 :]:
        upgraded = given_fix.model_copy(update={"fix_type": better})
        assert score_fix(upgraded).score >= score_fix(given_fix).score
