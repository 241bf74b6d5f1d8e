"""Generated strings for every spec option: each ends in exit code 2 and one line that says what to
do (or, when the spec is valid, reaches the next check), never a traceback."""

from __future__ import annotations

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from napari_niiv.cli import _parse_region, main  # noqa: E402
from napari_niiv.errors import NiivInputError  # noqa: E402
from napari_niiv.inference.geometry import check_region  # noqa: E402

SPEC_CHARS = st.sampled_from([*"0123456789:,-. eE+naif", "nan", "inf", "1e400", "-0", "::", ",,", "--"])
SPECS = st.one_of(st.lists(SPEC_CHARS, max_size=12).map("".join), st.text(max_size=12))
MISSING = "does-not-exist.tif"


def _one_line_error(capsys, args) -> str:
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, (args, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "error:" in lines[0] and "Traceback" not in err, (args, err)
    return lines[0]


OPTIONS = {
    "--region": ["reconstruct", MISSING, "out.zarr", "--alpha", "8"],
    "--chunks": ["reconstruct", MISSING, "out.zarr", "--alpha", "8"],
    "--alpha": ["reconstruct", MISSING, "out.zarr"],
    "--scale": ["reconstruct", MISSING, "out.zarr", "--alpha", "8"],
    "--cube": ["evaluate", MISSING],
}


@pytest.mark.parametrize("option", sorted(OPTIONS))
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=SPECS)
def test_any_spec_ends_in_one_clear_line(tmp_path, capsys, option, spec) -> None:
    args = [*OPTIONS[option], f"{option}={spec}"]
    args[2 if args[0] == "reconstruct" else 1 :] = [
        str(tmp_path / a) if a in ("out.zarr",) else a for a in args[2 if args[0] == "reconstruct" else 1 :]
    ]
    line = _one_line_error(capsys, args)
    assert not list(tmp_path.iterdir())  # nothing written
    if "no such file" in line:  # accepted: the spec itself was valid
        return
    assert option.lstrip("-") in line or "alpha" in line, line


DEGRADATION_PARTS = st.sampled_from(["thick", "thin", "psf", "psf:", ":", ",", "2", "0", "nan", "-1", "box", " "])
NEW_OPTIONS = [
    ("--alpha", ["evaluate", MISSING], SPECS),  # one alpha or a comma-separated list
    ("--degradation", ["evaluate", MISSING], st.lists(DEGRADATION_PARTS, max_size=6).map("".join)),
    ("--degradation", ["train", MISSING, "--alpha", "4"], st.one_of(SPECS, st.lists(DEGRADATION_PARTS).map("".join))),
    ("--alpha-max", ["train", MISSING, "--alpha", "4"], SPECS),
    (
        "--focus",
        ["train", MISSING, "--alpha", "4"],
        st.lists(st.one_of(DEGRADATION_PARTS, SPEC_CHARS, st.just("@"))).map("".join),
    ),
    ("--focus-fraction", ["train", MISSING, "--alpha", "4"], SPECS),
]


@pytest.mark.parametrize(("option", "argv", "specs"), NEW_OPTIONS, ids=[f"{o[1][0]} {o[0]}" for o in NEW_OPTIONS])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_alpha_lists_ranges_and_degradations_end_in_one_clear_line(tmp_path, capsys, option, argv, specs, data):
    spec = data.draw(specs)
    args = [*argv, f"{option}={spec}"]
    if args[0] == "train":
        args += ["--out", str(tmp_path / "w.safetensors")]
    line = _one_line_error(capsys, args)
    assert not list(tmp_path.iterdir())  # nothing written
    if "no such file" in line or "not found" in line:  # accepted: the spec itself was valid
        return
    assert option.lstrip("-") in line or "alpha" in line, line


@settings(max_examples=200, deadline=None)
@given(
    spec=st.lists(
        st.tuples(st.integers(-5, 60), st.integers(-5, 60), st.booleans(), st.booleans()), min_size=3, max_size=3
    ),
    shape=st.tuples(st.integers(1, 50), st.integers(1, 50), st.integers(1, 50)),
)
def test_a_parsed_region_is_either_inside_the_volume_or_refused(spec, shape) -> None:
    text = ",".join(f"{lo if a else ''}:{hi if b else ''}" for lo, hi, a, b in spec)
    try:
        region = _parse_region(text)
        checked = check_region(region, shape)
    except NiivInputError as exc:
        assert "\n" not in str(exc) and str(exc)
        return
    for r, n in zip(checked, shape, strict=True):
        assert 0 <= r.start < r.stop <= n


def test_a_focus_outside_the_run_is_refused_before_anything_is_written(tmp_path, capsys) -> None:
    import numpy as np
    import tifffile

    vol = tmp_path / "v.tif"
    tifffile.imwrite(vol, np.random.default_rng(0).integers(0, 255, (8, 64, 64), dtype=np.uint8))
    out = tmp_path / "out" / "w.safetensors"
    out.parent.mkdir()
    argv = ["train", str(vol), "--out", str(out), "--alpha", "2", "--alpha-max", "8", "--degradation", "thick,thin"]
    line = _one_line_error(capsys, [*argv, "--focus", "thick@6-12", "--device", "cpu"])
    assert "focus thick@6-12 lies outside" in line and "alpha range 2-8" in line, line
    line = _one_line_error(capsys, [*argv, "--focus", "psf@2-4", "--device", "cpu"])
    assert "outside the run's degradations (thick,thin)" in line, line
    assert not list(out.parent.iterdir())
