"""`niiv evaluate` and the dtype/confidence outputs of `niiv reconstruct`: the cli-evaluate audit's cases."""

import json

import numpy as np
import pytest

from napari_niiv.cli import main
from napari_niiv.data import open_volume
from napari_niiv.inference.weights import save_weights

from .conftest import TINY, random_model, write_tif


@pytest.fixture
def tiny(tmp_path):
    return save_weights(tmp_path / "tiny.safetensors", random_model(TINY), 4.0, None, card={"architecture": "v2"})


def _run(capsys, *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("dtype", ["int8", "int32", "uint32", "int64", "uint64"])
def test_integers_a_tif_cannot_hold_come_out_as_float32(tmp_path, capsys, tiny, dtype) -> None:
    """ImageJ TIFF holds uint8, uint16, int16 and float32: other integers crashed in tifffile after
    the whole reconstruction; they are written as float32 there, and kept in .npy."""
    src = tmp_path / "in.npy"
    np.save(src, (np.random.default_rng(0).random((4, 12, 12)) * 100).astype(dtype))
    code, _, err = _run(capsys, "reconstruct", src, tmp_path / "o.tif", "--alpha", "2", "--weights", tiny)
    assert code == 0, err
    assert open_volume(tmp_path / "o.tif").data.dtype == np.float32
    code, _, err = _run(capsys, "reconstruct", src, tmp_path / "o.npy", "--alpha", "2", "--weights", tiny)
    assert code == 0, err
    assert np.load(tmp_path / "o.npy").dtype == np.dtype(dtype)


@pytest.fixture
def iso(tmp_path, medulla):
    path = tmp_path / "iso.tif"
    write_tif(path, medulla[:32, :32, :32])
    return path


def test_evaluate_refuses_alpha_1_and_an_alpha_given_twice(capsys, iso, tiny) -> None:
    """Alpha 1 degrades nothing: it printed inf / nan tables (and Infinity in --json)."""
    code, out, err = _run(capsys, "evaluate", iso, "--alpha", "1", "--weights", tiny)
    assert code == 2 and "alpha 1 simulates no anisotropy" in err and not out
    code, out, err = _run(capsys, "evaluate", iso, "--alpha", "4,4", "--weights", tiny)
    assert code == 2 and "each alpha once" in err and not out


def test_evaluate_refuses_an_empty_json_path(capsys, iso, tiny) -> None:
    """`--json ''` was silently ignored: the scores went nowhere (the evaluate audit's minor list)."""
    code, out, err = _run(capsys, "evaluate", iso, "--alpha", "4", "--cube", "32", "--weights", tiny, "--json", "")
    assert code == 2 and "--json needs a file name" in err and not out


def test_evaluate_writes_strict_json_when_a_score_is_infinite(tmp_path, capsys, tiny) -> None:
    """Planes all alike along z: every interpolation is exact (infinite PSNR); the JSON says null,
    not Infinity, which strict parsers (JavaScript, Go, serde) reject."""
    path = tmp_path / "flat.npy"
    plane = np.random.default_rng(0).random((1, 16, 16)).astype(np.float32)
    np.save(path, np.repeat(plane, 16, axis=0))
    report = tmp_path / "s.json"
    code, _, err = _run(capsys, "evaluate", path, "--cube", "16", "--alpha", "2", "--weights", tiny, "--json", report)
    assert code == 0, err

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} in the JSON")

    rows = json.loads(report.read_text(), parse_constant=refuse)
    assert next(r for r in rows if r["method"] == "nearest")["psnr"] is None


def test_a_cube_too_small_is_refused_before_scoring_naming_cube(tmp_path, capsys, iso) -> None:
    """It was found per cube during scoring and blamed 'the volume's xy size 12x12'."""
    wide = save_weights(tmp_path / "wide.safetensors", random_model(), 4.0, None)  # receptive radius 14
    code, out, err = _run(capsys, "evaluate", iso, "--cube", "12", "--alpha", "2", "--weights", wide)
    assert code == 2 and not out
    assert "--cube 12" in err and "receptive field" in err and "give a larger --cube" in err
    assert "xy size" not in err
    # slices smaller than SSIM's window (it warned 'Mean of empty slice' and went on)
    code, out, err = _run(capsys, "evaluate", iso, "--cube", "9", "--alpha", "2", "--weights", wide)
    assert code == 2 and not out and "--cube 9" in err and "SSIM" in err


def test_both_with_xy_slices_is_refused(capsys, iso, tiny) -> None:
    """xy mode's --both decoded yz slices of the transposed cubes: columns along the blurred z."""
    code, out, err = _run(capsys, "evaluate", iso, "--cube", "16", "--slices", "xy", "--both", "--weights", tiny)
    assert code == 2 and not out and "--both" in err and "--slices xy" in err


def _methods():
    from napari_niiv.training.evaluate import interpolation

    return {m: interpolation(m) for m in ("bilinear", "bicubic")}


def test_the_python_evaluate_honours_xy_and_degradation_names() -> None:
    from napari_niiv.data.degrade import Degradation
    from napari_niiv.training.evaluate import evaluate, lateral_planes

    vol = np.random.default_rng(4).random((24, 32, 28)).astype(np.float32)
    xy = evaluate([vol], 4, _methods(), slices="xy", degradation="thin")
    by_hand = evaluate([lateral_planes(vol)], 4, _methods(), slices="xz", degradation=Degradation("thin"))
    assert [(s.method, s.psnr) for s in xy] == [(s.method, s.psnr) for s in by_hand]
    assert xy[0].degradation == "thin"
    yz = evaluate([vol], 4, _methods(), slices="yz")
    assert xy[0].psnr != yz[0].psnr  # 'xy' was silently scored as yz


@pytest.mark.parametrize(
    ("volumes", "kwargs", "message"),
    [
        ([], {}, "give at least one isotropic volume"),
        ([np.zeros((32, 32))], {}, r"shape \(32, 32\): give 3D volumes"),
        ([np.random.rand(32, 16, 16)], {"alpha": 40}, "alpha 40 needs at least 80"),
        ([np.random.rand(32, 16, 16)], {"alpha": 1}, "alpha 1 simulates no anisotropy"),
        ([np.random.rand(32, 16, 16)], {"ranges": [(5, 5)]}, r"ranges\[0\]"),
        ([np.random.rand(32, 16, 16)], {"degradation": "fog"}, "degradation must be one of"),
        ([np.random.rand(32, 16, 16)], {"slices": "zz"}, "slices must be one of"),
        ([np.random.rand(16, 8, 8)], {}, "SSIM"),
    ],
)
def test_the_python_evaluate_refuses_bad_arguments_in_one_line(volumes, kwargs, message) -> None:
    from napari_niiv.errors import NiivInputError
    from napari_niiv.training.evaluate import evaluate

    kwargs = {"alpha": 4, **kwargs}
    with pytest.raises(NiivInputError, match=message):
        evaluate(volumes, kwargs.pop("alpha"), _methods(), **kwargs)


def test_evaluate_notes_a_volume_whose_voxel_sizes_say_it_is_anisotropic(tmp_path, capsys, medulla, tiny) -> None:
    path = tmp_path / "aniso.tif"
    write_tif(
        path, medulla[:32, :32, :32], imagej=True, resolution=(1 / 4, 1 / 4), metadata={"spacing": 32, "axes": "ZYX"}
    )
    code, _, err = _run(capsys, "evaluate", path, "--cube", "32", "--alpha", "4", "--weights", tiny)
    assert code == 0, err
    assert "voxel sizes give alpha 8, not an isotropic volume" in err and "--slices xy" in err


def test_evaluate_notes_a_volume_without_voxel_sizes_is_scored_as_isotropic(tmp_path, capsys, medulla, tiny) -> None:
    """A .npy (or a TIFF without a resolution) may be a stack of sections as well as an isotropic
    cube: nothing said that its z was taken as sharp ground truth, which scores a sectioned stack
    against its own coarse z. --slices xy, which scores xy planes only, needs no such note."""
    path = tmp_path / "stack.npy"
    np.save(path, medulla[:32, :32, :32])
    code, _, err = _run(capsys, "evaluate", path, "--cube", "32", "--alpha", "4", "--weights", tiny)
    assert code == 0, err
    assert "stack.npy gives no voxel sizes: its z is scored as sharp ground truth" in err and "--slices xy" in err
    code, _, err = _run(capsys, "evaluate", path, "--cube", "32", "--alpha", "4", "--weights", tiny, "--slices", "xy")
    assert code == 0, err
    assert "gives no voxel sizes" not in err


def test_a_zarr_confidence_map_overlays_a_zarr_output(tmp_path, capsys, medulla, tiny) -> None:
    """A .tif/.npy map starts at the origin (no translation): beside a region's .zarr OUT it sat
    the region's offset (and 1.5 voxels in z) away, and a .zarr map was refused. A .zarr map
    has OUT's voxel size and translation, and the .npy map's values."""
    src = tmp_path / "aniso.tif"
    write_tif(src, medulla[:8, :32, :32], imagej=True, resolution=(1.0, 1.0), metadata={"spacing": 4.0})
    out, zmap, nmap = tmp_path / "iso.ome.zarr", tmp_path / "map.ome.zarr", tmp_path / "map.npy"
    argv = ["reconstruct", src, out, "--region", "2:6,8:24,0:32", "--weights", tiny, "--precision", "fp32"]
    code, _, err = _run(capsys, *argv, "--levels", "1", "--confidence", zmap)
    assert code == 0, err
    iso, umap = open_volume(out), open_volume(zmap)
    assert umap.shape == iso.shape and umap.voxel_size == pytest.approx(iso.voxel_size)
    assert umap.translation == pytest.approx(iso.translation) and iso.translation[1] == pytest.approx(8.0)
    code, _, err = _run(capsys, "reconstruct", src, tmp_path / "b.tif", *argv[3:], "--confidence", nmap)
    assert code == 0, err
    np.testing.assert_allclose(np.asarray(umap.data), np.load(nmap), atol=1e-5)
    new = tmp_path / "c.ome.zarr"
    for bad in (new / "inside.tif", tmp_path / "map.h5"):  # inside OUT: a TIFF in niiv's own store
        code, _, err = _run(capsys, "reconstruct", src, new, *argv[3:], "--confidence", bad)
        assert code == 2 and "--confidence" in err and not new.exists()
