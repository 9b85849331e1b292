"""`flexmesh profile`: a quick profile of demo-small measured with the real engine reads back
with finite fits, and profile files or options that cannot be used are refused by name."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from flexmesh.cli.main import main
from flexmesh.meshcore.errors import InvalidRequestError
from flexmesh.sim.profile import (
    OPS,
    DeviceInfo,
    ModelShape,
    Profile,
    predict_step_cost,
)


@pytest.fixture(scope="module")
def quick_profile(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Profile:
    out = tmp_path_factory.mktemp("profile") / "cpu.json"
    args = ["profile", "--model-path", str(models_dir / "demo-small"), "--out", str(out)]
    assert main([*args, "--quick"]) == 0
    return Profile.load(out)


def test_quick_profile_reads_back_with_finite_fits(quick_profile: Profile) -> None:
    p = quick_profile
    assert p.source == "measured" and p.device.kind == "cpu" and p.device.max_devices >= 1
    assert {"python", "torch", "transformers", "ray", "flexmesh"} <= set(p.software)
    fit = p.models["demo-small"]
    assert fit.shape.num_layers == 4 and fit.shape.dtype_bytes == 4
    assert fit.step.points >= 5 and fit.prediction_error_pct is None  # nothing to predict from
    assert all(math.isfinite(c) and c >= 0 for c in fit.step.coefficients)
    assert fit.step.error_pct is not None and math.isfinite(fit.step.error_pct)
    assert set(p.ops) == set(OPS)
    for name, op in p.ops.items():
        assert math.isfinite(op.a_ms) and op.points > 0, name
        assert op.error_pct is not None and math.isfinite(op.error_pct), name


def test_quick_profile_step_cost_grows_with_tokens(quick_profile: Profile) -> None:
    cost = quick_profile.step_cost("demo-small", None)
    one = cost.ms([(1, 64)])
    assert one > 0
    assert cost.ms([(128, 128)]) > cost.ms([(16, 16)]) > 0
    assert cost.ms([(1, 64)] * 16) > one  # a batch of decodes costs more than one
    # A shape never profiled is predicted from the device's op fits: positive, growing.
    large = ModelShape(768, 12, 12, 4, 1792, 8192, dtype_bytes=4)
    predicted = predict_step_cost(quick_profile.ops, large)
    assert predicted.predicted and 0 < predicted.ms([(1, 64)]) < predicted.ms([(256, 256)])
    assert predicted.ms([(1, 64)]) > one  # three times the layers, three times as wide


def test_quick_profile_measures_transports_and_overheads(quick_profile: Profile) -> None:
    p = quick_profile
    assert p.transport("local").ms(1 << 20) == 0
    gloo = p.transport("gloo")
    assert 0 < gloo.ms(1 << 20) < gloo.ms(64 << 20) < math.inf
    assert p.device.intra_node_transport == "gloo"
    o = p.overheads
    assert o.probe_ms > 0 and o.control_ms > 0 and o.request_ms > 0 and o.chunk_ms >= 0


def _device() -> DeviceInfo:
    return DeviceInfo("test", "cpu", 2)


def test_a_profile_of_another_version_is_refused_by_field(tmp_path: Path) -> None:
    data = Profile("measured", _device()).to_dict()
    path = tmp_path / "old.json"
    path.write_text(json.dumps({**data, "version": 99}))
    with pytest.raises(InvalidRequestError) as exc:
        Profile.load(path)
    assert exc.value.field == "version" and "99" in exc.value.message


def test_an_unknown_shipped_device_is_refused_with_the_known_ones() -> None:
    with pytest.raises(InvalidRequestError) as exc:
        Profile.load("no-such-device")
    assert exc.value.field == "profile" and "no-such-device" in exc.value.message


def test_a_model_without_fit_or_ops_is_refused_by_field() -> None:
    profile = Profile("measured", _device())
    with pytest.raises(InvalidRequestError) as exc:
        profile.step_cost("demo-large", None)
    assert exc.value.field == "models.demo-large"
    with pytest.raises(InvalidRequestError) as exc:
        profile.step_cost("demo-large", ModelShape(768, 12, 12, 4, 1792, 8192))
    assert exc.value.field == "ops"


@pytest.mark.parametrize(
    ("option", "value"),
    [("--model-path", "no-such-folder"), ("--config", "no-such.yaml"), ("--threads", "-1")],
)
def test_bad_options_exit_2_naming_the_option(
    option: str, value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["profile", "--out", str(tmp_path / "p.json"), option, str(tmp_path / value)]
    if option == "--threads":
        args[-1] = value
    assert main(args) == 2
    err = capsys.readouterr().err
    assert option in err and "Traceback" not in err
    assert not (tmp_path / "p.json").exists()
