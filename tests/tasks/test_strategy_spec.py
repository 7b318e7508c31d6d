"""The strategy one-of and its specs: what they accept and how they name what is wrong."""

from __future__ import annotations

import pydantic
import pytest

from slipway.tasks.strategy_spec import (
    BlueGreenSpec,
    CanarySpec,
    CanaryStepSpec,
    RollingSpec,
    StrategySpec,
)


def test_exactly_one_strategy_and_its_kind() -> None:
    assert StrategySpec.model_validate({"rolling": {}}).kind == "rolling"
    assert StrategySpec.model_validate({"blue_green": {}}).kind == "blue_green"
    canary = StrategySpec.model_validate({"canary": {"steps": [{"weight": 10}, {"weight": 100}]}})
    assert canary.kind == "canary"
    assert canary.canary is not None and canary.canary.header == "x-canary"

    with pytest.raises(pydantic.ValidationError, match="one of rolling, blue_green, canary"):
        StrategySpec.model_validate({})
    with pytest.raises(pydantic.ValidationError, match=r"found rolling, blue_green"):
        StrategySpec.model_validate({"rolling": {}, "blue_green": {}})
    with pytest.raises(pydantic.ValidationError, match="Extra inputs"):
        StrategySpec.model_validate({"recreate": {}})


def test_rolling_accepts_counts_and_percentages_only() -> None:
    assert RollingSpec().max_surge is None  # the manifests' own value stays
    spec = RollingSpec(max_surge=1, max_unavailable="0%")
    assert (spec.max_surge, spec.max_unavailable) == (1, "0%")
    for bad in ("-1", "25", "101%", "lots", -1, True):
        with pytest.raises(pydantic.ValidationError, match="max_surge"):
            RollingSpec(max_surge=bad)
    with pytest.raises(pydantic.ValidationError, match="cannot both be 0"):
        RollingSpec(max_surge=0, max_unavailable="0%")


def test_blue_green_names_and_delay() -> None:
    spec = BlueGreenSpec(service="web", preview_service="web-next", scale_down_delay_seconds=0)
    assert spec.preview_service == "web-next"
    assert BlueGreenSpec().scale_down_delay_seconds == 30
    with pytest.raises(pydantic.ValidationError, match="service"):
        BlueGreenSpec(service="Web_App")
    with pytest.raises(pydantic.ValidationError, match="scale_down_delay_seconds"):
        BlueGreenSpec(scale_down_delay_seconds=-1)


def test_canary_steps_must_increase_and_stay_in_range() -> None:
    with pytest.raises(pydantic.ValidationError, match="step 2 has weight 10 after 50"):
        CanarySpec(steps=[CanaryStepSpec(weight=50), CanaryStepSpec(weight=10)])
    with pytest.raises(pydantic.ValidationError, match="step 3 has weight 50 after 50"):
        CanarySpec.model_validate({"steps": [{"weight": 10}, {"weight": 50}, {"weight": 50}]})
    for weight in (0, 101):
        with pytest.raises(pydantic.ValidationError, match="weight"):
            CanaryStepSpec(weight=weight)
    with pytest.raises(pydantic.ValidationError, match="steps"):
        CanarySpec(steps=[])


def test_canary_header_is_lower_case_and_its_value_plain() -> None:
    spec = CanarySpec(steps=[CanaryStepSpec(weight=100)], header="x-tester", header_value="yes")
    assert (spec.header, spec.header_value) == ("x-tester", "yes")
    with pytest.raises(pydantic.ValidationError, match="header"):
        CanarySpec(steps=[CanaryStepSpec(weight=100)], header="X-Canary")
    with pytest.raises(pydantic.ValidationError, match="header_value"):
        CanarySpec(steps=[CanaryStepSpec(weight=100)], header_value='a" || true')
