import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from safetensors.torch import save_file

from napari_niiv.cli import main
from napari_niiv.data import open_volume
from napari_niiv.inference.weights import save_weights

from .conftest import random_model, write_tif


@pytest.fixture
def weights(tmp_path):
    return save_weights(tmp_path / "tiny.safetensors", random_model(), 8.0, None, card={"architecture": "v2"})


@pytest.fixture
def aniso_tif(tmp_path, medulla):
    p = tmp_path / "aniso.tif"
    write_tif(p, medulla[:4, :24, :20], imagej=True, resolution=(1 / 4, 1 / 4), metadata={"spacing": 40, "axes": "ZYX"})
    return p


def _run(capsys, *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_entry_point_help() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "napari_niiv.cli", "--help"], capture_output=True, text=True, check=True
    )
    assert "reconstruct" in res.stdout and "alpha" in res.stdout


def test_ctrl_c_while_the_command_is_still_importing_ends_in_one_line() -> None:
    """The ``niiv`` entry point (what the installed script runs) with a real SIGINT delivered while
    it imports the command-line interface (~0.15 s of numpy and settings): one line, exit 130."""
    script = (
        "import importlib.abc, signal, sys\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal\n"
        "class CtrlC(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'napari_niiv.cli':\n"
        "            signal.raise_signal(signal.SIGINT)\n"
        "sys.meta_path.insert(0, CtrlC())\n"
        "from napari_niiv.console import main\n"
        "sys.argv = ['niiv', 'info']\n"
        "sys.exit(main())\n"
    )
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert (res.returncode, res.stderr) == (130, "niiv: interrupted\n")


@pytest.mark.slow  # a real reconstruction, stopped twice
def test_a_second_ctrl_c_while_an_interrupted_run_ends_stops_it_at_once(tmp_path) -> None:
    """After Ctrl-C, `niiv reconstruct` says it was interrupted, and Python then waits at exit for
    the threads finishing their block. A second Ctrl-C there was raised inside threading's shutdown:
    a traceback, then 'terminate called without an active exception' and an abort (status -6). It
    now stops the process at once, in one line, status 130, and the run resumes as after a kill."""
    import os
    import signal
    import time

    vol = np.random.default_rng(0).integers(0, 255, (16, 256, 256), dtype=np.uint8)
    np.save(tmp_path / "in.npy", vol)
    out = tmp_path / "iso.ome.zarr"
    script = "import signal, sys\nfrom napari_niiv.console import main\nsys.argv[0] = 'niiv'\nsys.exit(main())\n"
    argv = [sys.executable, "-c", script, "reconstruct", str(tmp_path / "in.npy"), str(out), "--alpha", "8"]
    proc = subprocess.Popen([*argv, "--threads", "2"], stderr=subprocess.PIPE)
    err = b""

    def read_until(words: bytes, timeout: float = 120) -> None:
        nonlocal err
        end = time.monotonic() + timeout
        while words not in err and time.monotonic() < end:
            chunk = os.read(proc.stderr.fileno(), 4096)  # type: ignore[union-attr]
            if not chunk:
                break
            err += chunk

    try:
        read_until(b"reconstructing")
        time.sleep(1.0)  # the threads are inside their first blocks (seconds each here)
        proc.send_signal(signal.SIGINT)
        read_until(b"interrupted;")
        assert proc.poll() is None, err.decode()  # still waiting for the threads: the case at hand
        proc.send_signal(signal.SIGINT)
        try:
            rest = proc.communicate(timeout=60)[1]
        except subprocess.TimeoutExpired:
            proc.kill()
            rest = proc.communicate()[1]
            raise AssertionError((err + rest).decode()) from None
    finally:
        proc.kill()
    text = (err + rest).decode()
    assert proc.returncode == 130, text
    assert "Traceback" not in text and "terminate called" not in text
    assert text.rstrip().endswith("niiv: interrupted again: stopped at once")
    assert (tmp_path / "iso.ome.zarr.partial").is_dir() and not out.exists()


def test_output_read_by_a_command_that_stops_early_ends_quietly() -> None:
    """``niiv info WEIGHTS | head -3``: the reader goes away while niiv writes. It ended in a
    BrokenPipeError traceback (the packaging audit); now quietly, with the shell's SIGPIPE status."""
    import os

    weights = Path(__file__).resolve().parents[1] / "weights" / "niiv-em.safetensors"
    script = (
        "import sys\nfrom napari_niiv.console import main\nsys.argv = ['niiv', 'info', sys.argv[1]]\nsys.exit(main())\n"
    )
    read, write = os.pipe()
    os.close(read)  # the reader has gone before niiv writes
    try:
        res = subprocess.run(
            [sys.executable, "-c", script, str(weights)], stdout=write, stderr=subprocess.PIPE, text=True, timeout=120
        )
    finally:
        os.close(write)
    assert (res.returncode, res.stderr) == (141, "")


@pytest.mark.parametrize("command", ["info", "reconstruct", "train", "evaluate"])
def test_every_command_prints_its_help(capsys, command) -> None:
    """argparse formats help with %: a stray one in a help text turned `niiv train --help` into a traceback."""
    out = capsys.readouterr
    assert main([command, "--help"]) == 0 and f"niiv {command}" in out().out


def test_reconstruct_notes_an_alpha_outside_the_weights_training(tmp_path, capsys, aniso_tif, weights) -> None:
    """The file says alpha 10 (40 nm sections, 4 nm pixels); these weights learned alpha 8 only."""
    code, _, err = _run(capsys, "reconstruct", aniso_tif, tmp_path / "iso.tif", "--weights", weights)
    assert code == 0, err
    assert "note: tiny was trained for alpha 8, used here at 10" in err
    code, _, err = _run(capsys, "reconstruct", aniso_tif, tmp_path / "at8.tif", "--weights", weights, "--alpha", "8")
    assert code == 0 and "note:" not in err


def test_reconstruct_to_ome_zarr_with_voxel_sizes(tmp_path, capsys, aniso_tif, weights) -> None:
    out = tmp_path / "iso.ome.zarr"
    code, _, err = _run(capsys, "reconstruct", aniso_tif, out, "--weights", weights, "--chunks", "16,16,16")
    assert code == 0, err
    vol = open_volume(out)
    assert vol.shape == (40, 24, 20) and vol.data.dtype == np.uint8
    assert vol.voxel_size == pytest.approx((4.0, 4.0, 4.0))
    assert not (tmp_path / "iso.ome.zarr.partial").exists()
    # Never overwrite by accident.
    code, _, err = _run(capsys, "reconstruct", aniso_tif, out, "--weights", weights)
    assert code == 2 and "already exists" in err


def test_the_same_reconstruction_again_is_done_not_refused(tmp_path, capsys, aniso_tif, weights) -> None:
    """After a Ctrl-C the run says 'run the same command again'; when the store was already published
    (a Ctrl-C just after it appeared), that rerun was refused as 'already exists', pointing to an
    --overwrite that reconstructs the whole volume again. It now says the store is already this
    reconstruction and leaves it untouched; other settings are still refused."""
    out = tmp_path / "iso.ome.zarr"
    args = ("reconstruct", aniso_tif, out, "--weights", weights, "--chunks", "16,16,16")
    assert _run(capsys, *args)[0] == 0
    files = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    code, _, err = _run(capsys, *args)
    assert code == 0, err
    assert "is already this reconstruction" in err and "nothing to do" in err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == files
    code, _, err = _run(capsys, *args[:-1], "8,16,16")
    assert code == 2 and "already exists" in err and "another input or with other settings" in err, err


def test_reconstruct_to_tiff_at_coarser_scale(tmp_path, capsys, aniso_tif, weights) -> None:
    out = tmp_path / "iso.tif"
    code, _, err = _run(
        capsys, "reconstruct", aniso_tif, out, "--weights", weights, "--scale", "2", "--orientation", "xz"
    )
    assert code == 0, err
    vol = open_volume(out)
    assert vol.shape == (20, 12, 10) and vol.voxel_size == pytest.approx((8.0, 8.0, 8.0))


def test_reconstruct_tells_a_told_model_the_degradation(tmp_path, capsys, aniso_tif) -> None:
    """--degradation reaches a model with an acquisition embedding (thin and thick differ), and a
    bad one is a usage error that says what to give."""
    from napari_niiv.model import NiivConfig

    model = random_model(NiivConfig(**{**NiivConfig.fast().to_dict(), "acquisition_embedding": True}))
    torch.nn.init.normal_(model.encoder.acquisition.thickness, std=0.5)
    told = save_weights(tmp_path / "told.safetensors", model, 8.0, None)
    outs = {}
    for kind in ("thick", "thin"):
        out = tmp_path / f"{kind}.npy"
        code, _, err = _run(capsys, "reconstruct", aniso_tif, out, "--weights", told, "--degradation", kind)
        assert code == 0, err
        outs[kind] = np.load(out).astype(int)
    assert np.abs(outs["thick"] - outs["thin"]).max() > 0
    code, _, err = _run(capsys, "reconstruct", aniso_tif, tmp_path / "x.npy", "--weights", told, "--degradation", "box")
    assert code == 2 and "thick" in err and not (tmp_path / "x.npy").exists()


def test_reconstruct_region_to_npy(tmp_path, capsys, aniso_tif, weights) -> None:
    out = tmp_path / "part.npy"
    code, _, err = _run(capsys, "reconstruct", aniso_tif, out, "--weights", weights, "--region", "1:3,0:10,5:")
    assert code == 0, err
    part = np.load(out)
    assert part.shape == (20, 10, 15) and part.dtype == np.uint8
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    whole = tmp_path / "whole.npy"
    assert _run(capsys, "reconstruct", aniso_tif, whole, "--weights", weights)[0] == 0
    assert np.abs(np.load(whole)[10:30, :10, 5:].astype(int) - part).max() <= 1


def test_region_offset_is_kept_in_ome_zarr(tmp_path, capsys, aniso_tif, weights) -> None:
    import zarr

    out = tmp_path / "part.ome.zarr"
    assert _run(capsys, "reconstruct", aniso_tif, out, "--weights", weights, "--region", "2:4,8:16,0:8")[0] == 0
    attrs = zarr.open_group(str(out), mode="r").attrs
    ds = attrs.get("ome", attrs)["multiscales"][0]["datasets"][0]
    # Pixel centres (napari, NGFF): input section 0 (40 nm) is centred at 0 and covers [-20, 20];
    # output voxels of 4 nm tile it from -20, so output index k sits at -20 + 2 + 4k; the region
    # starts at section 2, output index 20: 62 nm (not the corner 20 * 4 = 80, which is 18 nm off).
    assert ds["coordinateTransformations"][1]["translation"] == pytest.approx([62.0, 32.0, 0.0])


def test_info(capsys, aniso_tif, weights) -> None:
    code, out, _ = _run(capsys, "info", aniso_tif)
    assert code == 0 and "alpha = 10" in out
    code, out, _ = _run(capsys, "info", weights)
    assert code == 0 and '"alpha": 8.0' in out
    code, out, _ = _run(capsys, "info")
    assert code == 0 and "weights:" in out


def test_info_describes_weights_by_name_and_by_content(tmp_path, capsys, weights) -> None:
    """`niiv info` took any file not named .safetensors for a volume ('unknown format'), and a
    weights name (as --weights takes) for a missing file, though `niiv info` lists the names."""
    renamed = tmp_path / "fast.bin"
    renamed.write_bytes(Path(weights).read_bytes())
    code, out, _ = _run(capsys, "info", renamed)
    assert code == 0 and '"alpha": 8.0' in out
    code, out, _ = _run(capsys, "info", "niiv-fast")
    assert code == 0 and '"name": "niiv-fast"' in out
    code, _, err = _run(capsys, "info", "no-such-weights")
    assert code == 2 and "nor weights of that name" in err
    noise = tmp_path / "noise.bin"
    noise.write_bytes(bytes(range(200)))
    code, _, err = _run(capsys, "info", noise)
    assert code == 2 and "unknown format" in err


@pytest.mark.slow
def test_evaluate_prints_a_table(tmp_path, capsys, medulla, weights) -> None:
    iso = tmp_path / "iso.tif"
    write_tif(iso, medulla[:32, :32, :40])
    code, out, err = _run(
        capsys,
        "evaluate",
        iso,
        "--cube",
        "32",
        "--alpha",
        "8",
        "--weights",
        weights,
        "--json",
        tmp_path / "s.json",
        "--both",
    )
    assert code == 0, err
    for method in ("nearest", "bilinear", "bicubic", "tiny", "tiny +yz"):
        assert f"| {method} |" in out
    assert (tmp_path / "s.json").exists()


def test_evaluate_never_writes_its_json_over_an_input_weights_or_an_existing_file(
    tmp_path, capsys, medulla, weights
) -> None:
    """--json used to replace whatever was at its path: the volume scored, the weights, notes."""
    iso = tmp_path / "iso.tif"
    write_tif(iso, medulla[:16, :16, :16])
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    kept = {p: p.read_bytes() for p in (iso, Path(weights), notes)}
    args = ("evaluate", iso, "--cube", "16", "--alpha", "4", "--weights", weights)
    for target, message in ((iso, "the input"), (weights, "the input"), (notes, "--overwrite")):
        for extra in ((), ("--overwrite",)) if target != notes else ((),):
            code, _, err = _run(capsys, *args, "--json", target, *extra)
            assert code == 2 and message in err and "Traceback" not in err, err
    assert {p: p.read_bytes() for p in kept} == kept
    code, _, err = _run(capsys, *args, "--json", notes, "--overwrite")  # asked for: replaced
    assert code == 0, err
    assert json.loads(notes.read_text())[0]["alpha"] == 4.0


def test_evaluate_keeps_a_row_for_each_weights_file_of_the_same_name(tmp_path, capsys, medulla) -> None:
    """A retrained copy carries its original's card name; scored beside it, each keeps its own row
    (one used to overwrite the other's scores); the same file given twice is refused."""
    iso = tmp_path / "iso.tif"
    write_tif(iso, medulla[:16, :16, :16])
    first, copy = (
        save_weights(tmp_path / f"{n}.safetensors", random_model(), 8.0, None, card={"name": "niiv-x"})
        for n in ("first", "copy")
    )
    args = ("evaluate", iso, "--cube", "16", "--alpha", "4", "--weights", first)
    code, out, err = _run(capsys, *args, "--weights", copy)
    assert code == 0, err
    assert "| niiv-x |" in out and f"| niiv-x ({copy}) |" in out
    code, _, err = _run(capsys, *args, "--weights", first)
    assert code == 2 and "given twice" in err


@pytest.mark.slow
def test_train_command(tmp_path, capsys, medulla) -> None:
    vol = tmp_path / "iso.tif"
    write_tif(vol, medulla[:8])
    out = tmp_path / "w.safetensors"
    code, _, err = _run(
        capsys, "train", vol, "--out", out, "--alpha", "4", "--steps", "3", "--batch", "2", "--device", "cpu"
    )
    assert code == 0, err
    assert out.exists()
    code, _, err = _run(capsys, "train", vol, "--out", out, "--alpha", "4", "--steps", "3")
    assert code == 2 and "already exists" in err


def test_train_never_writes_over_its_start_weights_a_checkpoint_or_the_shipped_weights(
    tmp_path, capsys, medulla, weights
) -> None:
    """--out that is the --init or --teacher weights is refused with --overwrite too (the run would
    replace the weights it starts from); so is a checkpoint's name and the shipped weights' folder."""
    from napari_niiv.inference.weights import shipped_dir

    vol = tmp_path / "iso.tif"
    write_tif(vol, medulla[:8])
    mine = tmp_path / "mine.safetensors"
    mine.write_bytes(weights.read_bytes())
    base = ["train", vol, "--alpha", "4", "--steps", "1", "--batch", "2", "--device", "cpu", "--overwrite"]
    for option in ("--init", "--teacher"):
        code, _, err = _run(capsys, *base, "--out", mine, option, mine)
        assert code == 2 and f"is the {option} weights" in err, err
    assert mine.read_bytes() == weights.read_bytes()
    code, _, err = _run(capsys, *base, "--out", tmp_path / "w.ckpt.safetensors")
    assert code == 2 and "training checkpoints" in err and not (tmp_path / "w.ckpt.safetensors").exists()
    code, _, err = _run(capsys, *base, "--out", shipped_dir() / "mine.safetensors")
    assert code == 2 and "shipped weights' folder" in err and not (shipped_dir() / "mine.safetensors").exists()


def test_the_shipped_weights_architectures_are_named_as_their_cards_and_arch_say() -> None:
    """niiv-em is v1 with an acquisition embedding and niiv-fast fast with one: '--arch v1 --init
    niiv-em' was refused as 'another architecture (v1)', and a resume called niiv-fast 'custom'."""
    from napari_niiv.inference.weights import load_weights, resolve_weights
    from napari_niiv.model import NiivConfig
    from napari_niiv.training.train import architecture_name, same_architecture

    for name, arch in (("niiv-em", "v1"), ("niiv-fast", "fast")):
        w = load_weights(resolve_weights(name))
        assert w.card["architecture"] == arch
        assert architecture_name(w.model.config.to_dict()) == f"{arch} with acquisition embedding"
        assert same_architecture(NiivConfig.named(arch), w.model.config)
        assert not same_architecture(NiivConfig.named("v2"), w.model.config)
    assert architecture_name(NiivConfig.named("v2").to_dict()) == "v2"


def test_a_fine_tune_card_names_the_architecture_it_kept(tmp_path, capsys, medulla) -> None:
    vol = tmp_path / "iso.tif"
    write_tif(vol, medulla[:16])
    out = tmp_path / "w.safetensors"
    args = ["--alpha", "4", "--steps", "1", "--batch", "2", "--crop", "16", "--device", "cpu"]
    code, _, err = _run(capsys, "train", vol, "--out", out, *args, "--init", "niiv-fast", "--arch", "fast")
    assert code == 0, err
    from napari_niiv.inference.weights import load_weights

    card = load_weights(out).card
    assert card["architecture"] == card["settings"]["architecture"] == "fast"


def test_a_run_its_time_limit_ended_says_so_and_how_to_go_on(tmp_path, capsys, medulla) -> None:
    vol = tmp_path / "iso.tif"
    write_tif(vol, medulla[:16])
    args = ["--alpha", "4", "--steps", "100000", "--batch", "2", "--crop", "16", "--device", "cpu", "--arch", "fast"]
    code, _, err = _run(capsys, "train", vol, "--out", tmp_path / "w.safetensors", *args, "--minutes", "0.01")
    assert code == 0 and "(of 100000: the time limit of 0.01 min was reached; to go on" in err, err


def test_train_scores_its_held_out_volume_with_its_own_sections(tmp_path, capsys, medulla) -> None:
    """--held-out is degraded as the run trains (--degradation), not always as thick sections."""
    from napari_niiv.data.degrade import Degradation
    from napari_niiv.training.train import HeldOutCheck

    vol, held = tmp_path / "iso.tif", tmp_path / "held.tif"
    write_tif(vol, medulla[:16])
    write_tif(held, medulla[16:48, :48, :48])
    out = tmp_path / "w.safetensors"
    args = ["--out", out, "--alpha", "4", "--steps", "2", "--batch", "2", "--crop", "16", "--device", "cpu"]
    code, _, err = _run(capsys, "train", vol, *args, "--degradation", "psf", "--held-out", held, "--arch", "fast")
    assert code == 0, err
    niiv, gain = (float(v) for v in re.search(r"held-out CF-PSNR ([\d.]+) dB \(([+-][\d.]+) vs bilinear", err).groups())
    assert re.search(r"vs bilinear, [+-][\d.]+ vs bicubic;", err)  # bicubic is what a user would pick instead
    assert "psf sections, alpha 4" in err
    psf = HeldOutCheck([medulla[16:48, :48, :48]], 4.0, degradation=Degradation.parse("psf")).bilinear.cf_psnr
    thick = HeldOutCheck([medulla[16:48, :48, :48]], 4.0).bilinear.cf_psnr
    assert abs(niiv - gain - psf) < 0.011 and abs(psf - thick) > 0.1


def test_train_refuses_a_held_out_volume_it_trains_on(tmp_path, capsys, medulla) -> None:
    """`niiv train v.tif --held-out v.tif` reported scores on planes it trained on as held out."""
    vol = tmp_path / "iso.tif"
    write_tif(vol, medulla[:16, :48, :48])
    args = ["--out", tmp_path / "w.safetensors", "--alpha", "4", "--steps", "2", "--arch", "fast"]
    code, _, err = _run(capsys, "train", vol, *args, "--held-out", tmp_path / "." / "iso.tif")
    assert code == 2 and "is also a volume it trains on" in err
    assert not (tmp_path / "w.safetensors").exists()


def test_train_from_scratch_builds_v1_unless_told(tmp_path, capsys, medulla) -> None:
    """The default architecture of a run from scratch is the one that won at equal budget here (v1,
    what niiv-em is); it was v2, which the cards and the README say lost."""
    from napari_niiv.inference.weights import load_weights

    vol = tmp_path / "iso.tif"
    write_tif(vol, medulla[:16, :48, :48])
    args = ["--alpha", "4", "--steps", "1", "--batch", "1", "--crop", "16", "--device", "cpu"]
    assert _run(capsys, "train", vol, "--out", tmp_path / "a.safetensors", *args)[0] == 0
    assert load_weights(tmp_path / "a.safetensors").card["architecture"] == "v1"


def test_parsing_train_options_imports_no_torch() -> None:
    """argparse ran --focus's default through its parser, which imported torch: a Ctrl-C in that
    second or two, before main() handles interrupts, ended in a traceback and exit -2, not 130."""
    code = (
        "import sys\nfrom napari_niiv.cli import build_parser\n"
        "build_parser().parse_args(['train', 'v.tif', '--out', 'w.safetensors', '--alpha', '4'])\n"
        "print('torch' in sys.modules)\n"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


def test_train_refuses_nan_in_its_volume_instead_of_blaming_the_learning_rate(tmp_path, capsys, medulla) -> None:
    """Planes the normalisation's sample skips (it reads every other one here) used to reach the
    loss: 'training diverged ...; lower the learning rate' for NaN, silent training on inf."""
    bad = np.tile(medulla[:40].astype(np.float32), (1, 4, 4))  # (40, 256, 256)
    bad[1], bad[3] = np.nan, np.inf
    vol = tmp_path / "nan.npy"
    np.save(vol, bad)
    code, _, err = _run(
        capsys, "train", vol, "--out", tmp_path / "w.safetensors", "--alpha", "4", "--steps", "30", "--batch", "4",
        "--crop", "16", "--device", "cpu", "--arch", "fast",
    )  # fmt: skip
    assert code == 2 and "contains NaN or infinite values" in err and "learning rate" not in err, err


def _bad_input_cases(tmp_path, medulla):
    cases = {}
    write_tif(tmp_path / "flat.tif", medulla[0])
    cases["2d"] = (["reconstruct", tmp_path / "flat.tif", tmp_path / "o1.zarr", "--alpha", "8"], "3D")
    tifffile.imwrite(tmp_path / "rgb.tif", np.stack([medulla[:4]] * 3, axis=-1), photometric="rgb")
    cases["rgb"] = (["reconstruct", tmp_path / "rgb.tif", tmp_path / "o2.zarr", "--alpha", "8"], "RGB")
    write_tif(tmp_path / "ok.tif", medulla[:4, :32, :32])
    cases["alpha"] = (
        ["reconstruct", tmp_path / "ok.tif", tmp_path / "o3.zarr", "--alpha", "0.5"],
        "--alpha: '0.5': give a number from 1 to 100",
    )
    cases["no_alpha"] = (["reconstruct", tmp_path / "ok.tif", tmp_path / "o4.zarr"], "pass --alpha")
    write_tif(tmp_path / "small.tif", medulla[:4, :10, :10])
    cases["small"] = (["reconstruct", tmp_path / "small.tif", tmp_path / "o5.zarr", "--alpha", "8"], "receptive field")
    nan = medulla[:4, :32, :32].astype(np.float32)
    nan[2, 5, 5] = np.nan
    write_tif(tmp_path / "nan.tif", nan)
    cases["nan"] = (["reconstruct", tmp_path / "nan.tif", tmp_path / "o6.zarr", "--alpha", "8"], "NaN")
    (tmp_path / "broken.tif").write_bytes(b"II*\x00garbage")
    cases["unreadable"] = (
        ["reconstruct", tmp_path / "broken.tif", tmp_path / "o7.zarr", "--alpha", "8"],
        "could not read",
    )
    (tmp_path / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    cases["corrupt_weights"] = (
        [
            "reconstruct",
            tmp_path / "ok.tif",
            tmp_path / "o8.zarr",
            "--alpha",
            "8",
            "--weights",
            tmp_path / "corrupt.safetensors",
        ],
        "not a readable weights file",
    )
    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    cases["foreign_weights"] = (
        [
            "reconstruct",
            tmp_path / "ok.tif",
            tmp_path / "o9.zarr",
            "--alpha",
            "8",
            "--weights",
            tmp_path / "foreign.safetensors",
        ],
        "not napari-niiv weights",
    )
    cases["format"] = (["reconstruct", tmp_path / "ok.tif", tmp_path / "o10.zarrx", "--alpha", "8"], "unknown output")
    cases["same_path"] = (
        ["reconstruct", tmp_path / "ok.tif", tmp_path / "ok.tif", "--alpha", "8", "--overwrite"],
        "the output is the input",
    )
    cases["train_alpha"] = (
        ["train", tmp_path / "ok.tif", "--out", tmp_path / "x.safetensors", "--alpha", "0"],
        "alpha",
    )
    return cases


CASES = [
    "2d",
    "rgb",
    "alpha",
    "no_alpha",
    "small",
    "nan",
    "unreadable",
    "corrupt_weights",
    "foreign_weights",
    "same_path",
    "train_alpha",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_gets_a_clear_message(tmp_path, capsys, medulla, case) -> None:
    args, message = _bad_input_cases(tmp_path, medulla)[case]
    code, _, err = _run(capsys, *args)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert not list(tmp_path.glob("o*.zarr*"))  # nothing half-written


def test_info_on_a_volume_without_voxel_sizes_says_alpha_is_unknown(tmp_path, capsys, medulla) -> None:
    """It printed voxel sizes [1, 1, 1] and 'anisotropy alpha = 1', while the guide stresses that an
    unknown anisotropy is not alpha 1 (the evaluate audit)."""
    path = tmp_path / "plain.npy"
    np.save(path, medulla[:8, :16, :16])
    code, out, _ = _run(capsys, "info", path)
    assert code == 0
    assert json.loads(out.splitlines()[0])["voxel_size_zyx"] is None
    assert "anisotropy alpha: unknown (the file gives no voxel sizes: pass --alpha)" in out


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["reconstruct", "in.tif", "out.tif", "--confidence", ""], "--confidence needs a file name: it was empty"),
        (["reconstruct", "in.tif", "out.tif", "--scheduler", " "], "--scheduler needs a value: it was empty"),
        (["train", "in.tif", "--out", "w.safetensors", "--alpha", "8", "--init", ""], "--init needs a value"),
        (["info", ""], "PATH needs a file name: it was empty"),
        (["reconstruct", "in.tif", "out.tif", "--alpha=--"], "--alpha"),
    ],
)
def test_an_empty_value_is_a_usage_error_not_an_option_left_out(capsys, argv, said) -> None:
    """Every `if args.opt` took an empty value for "not given": `--confidence ''` wrote no map,
    `niiv info ''` listed the installed weights (found after `--json ''`, whose own check this
    replaces)."""
    code, out, err = _run(capsys, *argv)
    assert code == 2 and said in err and not out


def test_info_of_a_misspelled_weights_name_suggests_the_name(capsys) -> None:
    assert main(["info", "niiv-emm"]) == 2
    assert "did you mean" in capsys.readouterr().err


def test_a_resume_with_nothing_left_to_train_says_so_and_leaves_the_weights(tmp_path, medulla, capsys) -> None:
    """A resume of a run whose time limit was spent printed 'wrote OUT after N steps', as if it had trained."""
    from tests.conftest import write_tif

    volume, out = tmp_path / "m.tif", tmp_path / "w.safetensors"
    write_tif(volume, medulla)
    argv = ["train", str(volume), "--out", str(out), "--alpha", "4", "--arch", "fast", "--crop", "32"]
    argv += ["--batch", "2", "--steps", "100000", "--minutes", "0.01", "--device", "cpu"]
    assert main(argv) == 0
    from napari_niiv.inference.weights import load_weights

    before = load_weights(out).model.state_dict()
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 0
    err = capsys.readouterr().err
    assert "nothing left to train" in err and "wrote" not in err, err
    after = load_weights(out).model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the same weights (the card notes the run)
