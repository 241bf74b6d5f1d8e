"""Weights on disk: safetensors (no code runs on load), atomic saves, model cards, a registry.

A weights file holds the model tensors and, as metadata, the architecture, the alpha it was
trained for, the intensity normalisation of its training data and a model card. A training
checkpoint is the same file plus the optimiser state and the step, so it can be resumed.
"""

from __future__ import annotations

import contextlib
import difflib
import errno
import json
import os
import re
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..data.degrade import THICK, Degradation
from ..data.normalise import Normalisation
from ..errors import NiivInputError
from ..model import NiivConfig, NiivModel
from ..model.config import ARCHITECTURES

FORMAT = "napari-niiv-weights"
FORMAT_VERSION = "1"
USER_DIR_ENV = "NIIV_WEIGHTS_DIR"


@dataclass
class Weights:
    """A loaded model with everything needed to use it correctly."""

    model: NiivModel
    alpha: float
    normalisation: Normalisation | None
    card: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    train_state: dict[str, Any] | None = None
    optimizer_tensors: dict[str, torch.Tensor] | None = None
    optimizer_groups: list[dict[str, Any]] | None = None

    @property
    def alpha_range(self) -> tuple[float, float]:
        """The alphas it was trained over: its card's range, else its one alpha."""
        lo, hi = self.card.get("alpha_range") or (self.alpha, self.alpha)
        return float(lo), float(hi)


def atomic_write(path: Path, write: Any, replace: bool = True) -> None:
    """Call ``write(tmp_path)`` then rename over ``path``: a crash or a cancel never leaves a
    half-written file under the real name. With ``replace=False`` a file that appeared at ``path``
    meanwhile (another program, another run) is kept and :class:`FileExistsError` raised."""
    path = Path(path)
    if path.is_dir():  # a rename over a folder fails only after all the writing
        raise NiivInputError(f"cannot write {path}: it is a folder; give a file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"  # remove_stray_temporaries knows this name
    try:
        write(tmp)
        # Writers (safetensors among them) may create private 0600 files; give the file the
        # mode any file the user saves gets.
        os.chmod(tmp, 0o666 & ~_umask())
        _sync(tmp)  # the data on the disk before the name: else a power loss can leave the name on nothing
        if replace:
            os.replace(tmp, path)
        else:
            _publish_new(tmp, path)
        _sync(path.parent, folder=True)  # and the rename itself
    finally:
        Path(tmp).unlink(missing_ok=True)


def _sync(path: Path, folder: bool = False) -> None:
    """Flush ``path`` (a file, or a folder's entries) to the disk. Without it a power loss soon after
    an atomic save can leave the new name on an empty or partial file (the rename reached the disk
    before the data, as on XFS or btrfs), though the old file was intact. A file whose flush fails
    (a full disk or an I/O error that only the flush reports, as on network shares) is not
    published; a folder that cannot be flushed (some systems cannot) is let be."""
    if folder and os.name == "nt":  # Windows opens no folder to flush it (its renames need none)
        return
    try:  # a file opened to write: Windows' flush (FlushFileBuffers) refuses a read-only one (EBADF)
        fd = os.open(path, (os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)) if folder else os.O_RDWR)
    except OSError:
        if folder:
            return
        raise
    try:
        os.fsync(fd)
    except OSError as exc:
        if not folder and exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EROFS):
            raise
    finally:
        os.close(fd)


def _publish_new(tmp: Path, path: Path) -> None:
    """Give ``tmp`` the name ``path`` only if no file has it: a hard link fails on an existing
    name atomically; where the file system has no hard links, a check just before the rename."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:  # no hard links here (FAT, some network shares)
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, "exists", str(path)) from None
        os.replace(tmp, path)


def remove_stray_temporaries(path: str | Path) -> list[Path]:
    """Remove what :func:`atomic_write` of ``path`` leaves when its process is killed mid-write
    (SIGKILL, power loss): files named exactly ``.NAME.<32 hex digits>.tmp`` beside ``path``,
    which only this module makes. Nothing else is touched. Call it only while no other process
    can be writing ``path`` (holding its ``inference.store.output_lock``). Returns what it removed."""
    path = Path(path)
    stray = re.compile(rf"\.{re.escape(path.name)}\.[0-9a-f]{{32}}\.tmp")
    removed = []
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        if stray.fullmatch(entry.name) and entry.is_file() and not entry.is_symlink():
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
                removed.append(entry)
    return removed


def _umask() -> int:
    """The process umask, read without changing it where the OS allows (threads may be saving)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_weights(
    path: str | Path,
    model: NiivModel,
    alpha: float,
    normalisation: Normalisation | None,
    card: dict[str, Any] | None = None,
    train_state: dict[str, Any] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> Path:
    """Write weights (and optionally a resumable training state) atomically."""
    path = Path(path)
    tensors = {f"model.{k}": v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": json.dumps(model.config.to_dict()),
        "alpha": repr(float(alpha)),
        "normalisation": json.dumps(normalisation.to_dict() if normalisation else None),
        "card": json.dumps(card or {}),
    }
    if optimizer is not None:
        opt_state = optimizer.state_dict()
        for pid, st in opt_state["state"].items():
            for name, value in st.items():
                if torch.is_tensor(value):
                    tensors[f"optim.{pid}.{name}"] = value.detach().to("cpu").contiguous().clone()
        meta["optimizer_groups"] = json.dumps(opt_state["param_groups"])
    if train_state is not None:
        meta["train_state"] = json.dumps(train_state)
    atomic_write(path, lambda tmp: write_safetensors(tensors, tmp, meta))
    return path


def write_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """``safetensors.torch.save_file``, whose I/O errors (a full disk among them) are not OSErrors
    but its own ``SafetensorError``: raised as the OSError they are, so callers say what happened
    (a full disk during a checkpoint was a traceback)."""
    try:
        save_file(tensors, str(path), metadata=metadata)
    except SafetensorError as exc:
        text = str(exc)
        if "I/O error" not in text:
            raise
        found = re.search(r"os error (\d+)", text)
        code = int(found.group(1)) if found else errno.EIO
        raise OSError(code, os.strerror(code), str(path)) from exc


GET_IT_AGAIN = "download, copy or train it again"  # a weights file's advice (a checkpoint's differs: train.py)
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt")  # upstream niiv and other tools save these
MAX_HEADER = 100_000_000  # bytes: safetensors' own limit on a header


def looks_like_weights(path: str | Path) -> bool:
    """Whether a file is meant as weights, whatever its name: ``.safetensors``, a PyTorch
    checkpoint suffix, or safetensors content (an 8-byte header length, then the header's ``{``),
    so ``niiv info`` describes a weights file renamed ``.bin`` instead of calling it an unknown
    volume format."""
    path = Path(path)
    if path.suffix.lower() in (".safetensors", *CHECKPOINT_SUFFIXES):
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    if len(head) == 9 and 2 <= int.from_bytes(head[:8], "little") <= path.stat().st_size and head[8:] == b"{":
        return True
    return _pytorch_checkpoint(path, head)  # a .pt renamed .bin: said to be one, not an unknown volume format


def _pytorch_checkpoint(path: Path, head: bytes) -> bool:
    """Whether ``path`` (whose first bytes are ``head``) is what ``torch.save`` writes, whatever its
    name: a zip archive holding a ``data.pkl`` (read as a listing only, nothing unpickled), or a
    legacy pickle (protocol 2 to 5)."""
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return True
    if head[:4] != b"PK\x03\x04":
        return False
    try:
        with zipfile.ZipFile(path) as z:
            return any(n == "data.pkl" or n.endswith("/data.pkl") for n in z.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return False


def _missing(path: Path) -> str:
    """Why there is no weights file at ``path``, and what to give instead: a symbolic link that
    loops or points nowhere, something that is not a file, or a close name (a weights name given
    with its file ending, a misspelling)."""
    if path.is_symlink():
        try:
            os.stat(path)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return f"{path}: a symbolic link that loops (it leads back to itself); point it at a weights file"
            return f"{path}: a symbolic link to {os.readlink(path)}, which does not exist; point it at a weights file"
    if os.path.lexists(path):
        return f"{path}: not a regular file (a device, pipe or socket); give a weights file (.safetensors)"
    hint = weights_suggestion(path)
    return f"{path}: weights file not found" + (
        f"; {hint}" if hint else "; give a weights file or a weights name (`niiv info` lists them)"
    )


def weights_suggestion(given: str | Path) -> str:
    """'did you mean ...?' for a weights name or path that does not exist: the registry name it
    spells with other case, ``_`` for ``-`` or a ``.safetensors`` ending, a close registry name, or a
    close file name in its folder; '' when nothing is close."""
    text = str(given)
    names = list(available_weights())
    stem = text.removesuffix(".safetensors")
    folded = {re.sub(r"[_\s]+", "-", n.lower()): n for n in names}
    exact = folded.get(re.sub(r"[_\s]+", "-", stem.lower()))
    if exact is not None:
        return f"did you mean the weights name {exact}?"
    close = difflib.get_close_matches(stem, names, n=3, cutoff=0.75)
    p = Path(text)
    if not close and p.parent != Path(".") and p.parent.is_dir():  # a path: close names in its folder
        stems = [f.stem for f in weights_files(p.parent)]  # stems: every name shares '.safetensors'
        close = [str(p.parent / f"{n}.safetensors") for n in difflib.get_close_matches(p.stem, stems, n=3, cutoff=0.75)]
    if not close:
        return ""
    return f"did you mean {' or '.join(close)}?"


def _unreadable(path: Path) -> str | None:
    """Why ``path``, a file, cannot be weights before safetensors parses it (None: it may be):
    no permission to read it, empty, a PyTorch checkpoint whatever its name, or cut short of the
    header it declares."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(9)
    except PermissionError:
        return (
            f"{path}: cannot be read (permission denied); make it readable (chmod u+r) or copy it where you can read it"
        )
    except OSError as exc:
        return f"{path}: cannot be read ({exc.strerror or exc}); check the disk, or copy the file again"
    if size == 0:
        return (
            f"{path}: not a readable weights file: it is empty (0 bytes), as a download or copy that did not finish "
            f"leaves it; {GET_IT_AGAIN}"
        )
    if _pytorch_checkpoint(path, head):
        renamed = "" if path.suffix.lower() in CHECKPOINT_SUFFIXES else ", whatever its name says"
        return (
            f"{path}: a PyTorch checkpoint, not napari-niiv weights (safetensors){renamed}; it is never unpickled "
            "here: weights of other tools or upstream niiv .pth checkpoints cannot be used directly; train or "
            "fine-tune napari-niiv weights (niiv train)"
        )
    if len(head) < 9 or head[8:9] != b"{":
        return None  # not safetensors: safe_open says so
    needed = 8 + int.from_bytes(head[:8], "little")
    if needed - 8 > MAX_HEADER:
        return (
            f"{path}: not a readable weights file: it declares a header of {needed - 8} bytes, beyond safetensors' "
            f"limit of {MAX_HEADER}; {GET_IT_AGAIN}"
        )
    if needed <= size:  # the header is there: where its last tensor ends
        try:
            with open(path, "rb") as f:
                f.seek(8)
                header = json.loads(f.read(needed - 8))
            needed += max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError):
            return None  # a malformed header: safe_open says how
    if needed > size:
        return (
            f"{path}: not a readable weights file: cut short, it needs {needed} bytes and holds {size}, as a download "
            f"or copy that did not finish leaves it; {GET_IT_AGAIN}"
        )
    return None


def read_metadata(path: str | Path) -> dict[str, str]:
    path = Path(path)
    if path.is_dir():
        found = [p.name for p in weights_files(path)]
        raise NiivInputError(
            f"{path} is a folder; give one weights file in it ({', '.join(found[:5]) or 'it holds no .safetensors'}"
            f"{', ...' if len(found) > 5 else ''}) or a weights name (`niiv info` lists them)"
        )
    if not path.is_file():
        raise NiivInputError(_missing(path))
    why = _unreadable(path)
    if why is not None:
        raise NiivInputError(why)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:
        if path.suffix.lower() in CHECKPOINT_SUFFIXES:
            raise NiivInputError(
                f"{path}: a PyTorch checkpoint, not napari-niiv weights (safetensors); weights of other tools "
                "or upstream niiv .pth checkpoints cannot be used directly: train or fine-tune napari-niiv weights"
            ) from exc
        raise NiivInputError(
            f"{path}: not a readable weights file (corrupt, truncated, or not safetensors: {exc}); "
            "download or train it again"
        ) from exc
    if meta.get("format") != FORMAT:
        raise NiivInputError(
            f"{path}: a safetensors file, but not napari-niiv weights (no '{FORMAT}' metadata); "
            "weights of other tools or upstream niiv .pth checkpoints cannot be used directly"
        )
    if meta.get("format_version") != FORMAT_VERSION:
        raise NiivInputError(
            f"{path}: weights format version {meta.get('format_version')} is not supported by this napari-niiv"
        )
    return meta


def learned_degradations(weights: str | Path | None) -> tuple[str, ...]:
    """The kinds of sections the weights ``weights`` (a name or path) learned, by their card's
    degradations (``psf:2`` is ``psf``), first first; thick for weights that do not say (the
    first round's) or cannot be read."""
    try:
        card = json.loads(read_metadata(resolve_weights(weights)).get("card", "{}"))
    except (NiivInputError, ValueError, OSError):
        return ("thick",)
    kinds = card.get("degradations") if isinstance(card, dict) else None
    if not isinstance(kinds, list) or not kinds:
        return ("thick",)
    return tuple(dict.fromkeys(str(k).partition(":")[0] for k in kinds))


def learned_degradation(weights: str | Path | None) -> str:
    """The sections the weights learned first: what the widget preselects for them."""
    return learned_degradations(weights)[0]


def load_weights(path: str | Path, device: str | torch.device = "cpu", with_optimizer: bool = False) -> Weights:
    """Load weights safely (safetensors never executes code) and validate them before use: the
    metadata parses, the architecture is within bounds, the tensors fit it and are finite."""
    path = Path(path)
    meta = read_metadata(path)
    alpha, norm, card = _checked_metadata(path, meta)
    if "config" not in meta:
        raise NiivInputError(
            f"{path}: its metadata has no architecture description ('config'); the file is damaged: "
            "train or download it again"
        )
    try:
        config = NiivConfig.from_dict(json.loads(meta["config"]))
    except (KeyError, ValueError, TypeError) as exc:
        raise NiivInputError(
            f"{path}: its architecture description is invalid ({exc}); train or download it again"
        ) from exc
    named = card.get("architecture")
    if named in ARCHITECTURES and config.preset() != named:
        # The card's label is text anyone can edit, and only a label (the description builds the model):
        # the label shown, and copied into a fine-tune's card, is the file's real architecture; the one
        # the card carried is kept beside it.
        card["architecture"], card["architecture_as_written"] = config.preset() or "custom", named
    model = NiivModel(config)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            keys = list(f.keys())
            state = {k[len("model.") :]: f.get_tensor(k) for k in keys if k.startswith("model.")}
            # copies: the file's own (mapped) tensors, kept by the optimiser for a whole resumed run, kept the
            # checkpoint each save replaced on the disk, a checkpoint's worth of room more than the run needs
            opt = {k: f.get_tensor(k).clone() for k in keys if k.startswith("optim.")} if with_optimizer else None
    except Exception as exc:
        raise NiivInputError(f"{path}: its tensors cannot be read ({exc}); the file is damaged") from exc
    expected = model.state_dict()
    mistyped = sorted(k for k, v in state.items() if k in expected and not v.is_floating_point())
    if mistyped:  # load_state_dict would cast integers to floats silently, and the model would run on them
        k = mistyped[0]
        raise NiivInputError(
            f"{path}: {len(mistyped)} weight tensor(s) are not floating point (e.g. {k}: {state[k].dtype}); "
            "the file is damaged or was not written by napari-niiv: train or download it again"
        )
    bad = sorted(k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all()))
    if bad:
        raise NiivInputError(
            f"{path}: {len(bad)} weight tensor(s) hold NaN or infinite values (e.g. {bad[0]}); the training "
            "diverged or the file is damaged: use other weights, or train again with a lower learning rate"
        )
    mismatch = _state_mismatch(expected, state)
    if mismatch:
        raise NiivInputError(
            f"{path}: these weights belong to another architecture than the one they describe ({mismatch}); "
            "the file is damaged or was edited"
        )
    model.load_state_dict(state, strict=True)
    _check_outputs(path, model, alpha)
    try:
        train_state = json.loads(meta["train_state"]) if "train_state" in meta else None
        groups = json.loads(meta["optimizer_groups"]) if with_optimizer and "optimizer_groups" in meta else None
    except ValueError as exc:
        raise NiivInputError(
            f"{path}: its training state is not valid JSON ({exc}); the checkpoint is damaged"
        ) from exc
    return Weights(
        model=model.to(device).eval(),
        alpha=alpha,
        normalisation=norm,
        card=card,
        path=path,
        train_state=train_state,
        optimizer_tensors=opt,
        optimizer_groups=groups,
    )


def _check_outputs(path: Path, model: NiivModel, alpha: float) -> None:
    """Refuse weights whose every tensor is finite but whose model is not: on a small fixed image of
    mid intensities (0.1-0.9), on the CPU, its outputs must be finite and not all pinned at 0 or 1
    (the sigmoid's ends, where values near float32's limit in a layer put them). Such weights
    reconstructed a constant volume, written as if it were a result."""
    from ..data.degrade import THICK

    rows, cols = 4, 16
    image = 0.1 + 0.8 * ((torch.arange(rows * cols, dtype=torch.float32).reshape(1, 1, rows, cols) * 0.618) % 1.0)
    grid = torch.meshgrid(torch.linspace(0.25, rows - 0.25, 5), torch.linspace(0.5, cols - 0.5, 7), indexing="ij")
    coords = torch.stack(grid, -1).reshape(1, -1, 2)
    was_training = model.training
    try:
        with torch.no_grad():
            out = model.eval()(image, coords, alpha, THICK.thickness(alpha)).float()
    finally:
        model.train(was_training)
    if not bool(torch.isfinite(out).all()):
        what = "NaN or infinite values"
    elif bool(((out <= 1e-6) | (out >= 1 - 1e-6)).all()):
        what = "only black or white"
    else:
        return
    raise NiivInputError(
        f"{path}: its tensors are finite, but the model they make outputs {what} on a test image (some weights "
        "are absurdly large); the file is damaged or the training diverged: use other weights, or train again "
        "with a lower learning rate"
    )


def _state_mismatch(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> str:
    """How the tensors ``found`` differ from the ``expected`` ones, in words ('' if they fit)."""
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    shaped = sorted(k for k in set(expected) & set(found) if expected[k].shape != found[k].shape)
    parts = []
    if missing:
        parts.append(f"{len(missing)} tensor(s) missing, e.g. {missing[0]}")
    if extra:
        parts.append(f"{len(extra)} unexpected, e.g. {extra[0]}")
    if shaped:
        k = shaped[0]
        parts.append(
            f"{len(shaped)} of another shape, e.g. {k}: {tuple(found[k].shape)} in the file, "
            f"{tuple(expected[k].shape)} in the architecture"
        )
    return "; ".join(parts)


def _checked_metadata(path: Path, meta: dict[str, str]) -> tuple[float, Normalisation | None, dict[str, Any]]:
    """alpha, normalisation and card from a weights file's metadata, or a message naming the bad field."""
    from ..data.degrade import check_alpha

    if "alpha" not in meta:
        raise NiivInputError(
            f"{path}: its metadata has no alpha (the anisotropy it was trained for); the file is damaged"
        )
    try:
        alpha = check_alpha(meta["alpha"])
    except NiivInputError as exc:
        raise NiivInputError(f"{path}: its metadata alpha is not usable ({exc})") from None
    try:
        raw = json.loads(meta.get("normalisation", "null"))
        if raw is not None and not (isinstance(raw, dict) and "low" in raw and "high" in raw):
            raise ValueError(f"{raw!r} is not an object with a low and a high")
        norm = Normalisation.from_dict(raw) if raw else None
        if norm is not None and not (np.isfinite([norm.low, norm.high]).all() and norm.high > norm.low):
            raise ValueError(f"low {norm.low}, high {norm.high}")
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise NiivInputError(f"{path}: its normalisation metadata is not usable ({exc}); the file is damaged") from exc
    try:
        card = json.loads(meta.get("card", "{}"))
        if not isinstance(card, dict):
            raise ValueError(f"a {type(card).__name__}, not an object")
    except ValueError as exc:
        raise NiivInputError(f"{path}: its model card metadata is not valid JSON ({exc}); the file is damaged") from exc
    return alpha, norm, _checked_card(path, card, alpha)


def _checked_card(path: Path, card: dict[str, Any], alpha: float) -> dict[str, Any]:
    """The card's fields that code reads (``alpha_range``, holding the weights' ``alpha``;
    ``degradations``, ``name``, ``purpose``, ``architecture``) checked, or a message naming the
    bad one: a card is text anyone can edit."""
    from ..data.degrade import Degradation, check_alpha

    if card.get("alpha_range") is not None:
        given = card["alpha_range"]
        try:
            if isinstance(given, str) or len(given) != 2:
                raise ValueError("not two values")
            lo, hi = (check_alpha(v) for v in given)
            if lo > hi:
                raise ValueError("low above high")
        except (TypeError, ValueError) as exc:
            raise NiivInputError(
                f"{path}: its model card's alpha_range {given!r} is not usable ({exc}); it needs [low, high] alphas"
            ) from None
        if not lo <= alpha <= hi:  # training writes the range it drew from, alpha its low end
            raise NiivInputError(
                f"{path}: its alpha {alpha:g} lies outside its model card's alpha_range [{lo:g}, {hi:g}]; the "
                "metadata was edited or damaged: train or download it again"
            )
        card["alpha_range"] = [lo, hi]
    if card.get("degradations") is not None:
        given = card["degradations"]
        try:
            if isinstance(given, str) or not all(isinstance(k, str) for k in given):
                raise ValueError("not a list of names")
            for kind in given:
                Degradation.parse(kind)
        except (TypeError, ValueError) as exc:
            raise NiivInputError(
                f"{path}: its model card's degradations {given!r} are not usable ({exc}); it needs names such as "
                '["thick", "thin"]'
            ) from None
    for key in ("name", "purpose", "architecture"):  # printed, and the name keys evaluate's rows
        if card.get(key) is not None and not isinstance(card[key], str):
            raise NiivInputError(f"{path}: its model card's {key} {card[key]!r} is not usable; it needs a text")
    return card


def restore_optimizer(optimizer: torch.optim.Optimizer, weights: Weights) -> None:
    """Put a checkpoint's optimiser state back (needs ``load_weights(..., with_optimizer=True)``)."""
    if weights.optimizer_groups is None or weights.optimizer_tensors is None:
        raise NiivInputError(f"{weights.path}: holds no optimiser state; it is final weights, not a checkpoint")

    def damaged(why: str) -> NiivInputError:
        return NiivInputError(
            f"{weights.path}: its optimiser state is damaged ({why}), so the run cannot be resumed from it: start "
            "a new run (niiv train: without --resume, with --overwrite; in the viewer: Start under another name)"
        )

    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in weights.optimizer_tensors.items():
        parts = key.split(".", 2)
        if len(parts) != 3 or not parts[1].isdigit():
            raise damaged(f"a tensor named {key!r}")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise damaged(f"{key} holds NaN or infinite values")  # training said 'diverged: lower the learning rate'
        state.setdefault(int(parts[1]), {})[parts[2]] = value
    groups = weights.optimizer_groups
    params = [p for g in optimizer.param_groups for p in g["params"]]
    try:
        ids = [int(i) for g in groups for i in g["params"]]
    except (TypeError, KeyError, ValueError) as exc:
        raise damaged(f"its parameter groups: {exc}") from None
    if len(groups) != len(optimizer.param_groups) or len(ids) != len(params):
        raise damaged(f"{len(ids)} parameters in {len(groups)} group(s), the model has {len(params)}")
    # What the optimiser reads at its next step: a tensor missing or of another shape failed there,
    # as a KeyError or a size mismatch traceback.
    needed = {"step", "exp_avg", "exp_avg_sq"} if isinstance(optimizer, torch.optim.Adam) else set()
    index = {pid: n for n, pid in enumerate(ids)}
    for pid, entries in state.items():
        if pid not in index:
            raise damaged(f"state for parameter {pid}, which the model does not have")
        if needed - set(entries):
            raise damaged(f"parameter {pid} lacks {', '.join(sorted(needed - set(entries)))}")
        shape = tuple(params[index[pid]].shape)
        for name, value in entries.items():
            if name != "step" and tuple(value.shape) != shape:
                raise damaged(f"optim.{pid}.{name} is {tuple(value.shape)}, its parameter {shape}")
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError, TypeError) as exc:
        raise damaged(str(exc)) from None


# --- registry -------------------------------------------------------------------------------------


def shipped_dir() -> Path:
    """Shipped weights: inside the installed package (wheel), or ``weights/`` of a source checkout."""
    package = Path(__file__).resolve().parents[1]
    packaged = package / "weights"
    return packaged if packaged.is_dir() else package.parents[1] / "weights"


def user_dir() -> Path:
    """Where a user's own (fine-tuned) weights go; never the shipped directory: $NIIV_WEIGHTS_DIR,
    else ``weights`` in the platform's user data folder (``~/.local/share/napari-niiv`` or
    $XDG_DATA_HOME on Linux, ``~/Library/Application Support`` on macOS, ``%LOCALAPPDATA%`` on Windows)."""
    env = os.environ.get(USER_DIR_ENV)
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_data_dir("napari-niiv", appauthor=False)) / "weights"


def recorded_name(weights: str | Path) -> str:
    """How a card records the weights a run started from or learned from: shipped weights by their
    name (``niiv-em``: the same on every install; their path named the machine that trained),
    anything else as given."""
    p = Path(weights)
    if p.suffix == ".safetensors" and p.resolve().parent == shipped_dir().resolve():
        return p.stem
    if p.exists() and not p.is_absolute():  # a relative path names nothing once the cwd changes
        return os.path.abspath(p)
    return str(weights)


def available_weights() -> dict[str, Path]:
    """Name -> path of every weights file: shipped first, then the user's; not the checkpoints
    (``NAME.ckpt.safetensors``) that runs keep to be resumed."""
    found: dict[str, Path] = {}
    for d, prefix in ((shipped_dir(), ""), (user_dir(), "user/")):
        if d.is_dir():
            found.update((prefix + p.stem, p) for p in weights_files(d))
    return found


def weights_files(folder: Path) -> list[Path]:
    """The weights files in ``folder``, by name: not the checkpoints runs keep to be resumed."""
    return [p for p in sorted(folder.glob("*.safetensors")) if not p.stem.lower().endswith(".ckpt")]


# The default: electron microscopy, any alpha 2-12, thick or thin sections (weights/niiv-em.md says why).
DEFAULT_WEIGHTS = "niiv-em"
# The small model a CPU live view shows first (distilled from the default), when it is shipped.
FAST_WEIGHTS = "niiv-fast"


def resolve_weights(name_or_path: str | Path | None) -> Path:
    """A registry name, or a path; ``None`` means the shipped default."""
    if name_or_path is None:
        name_or_path = DEFAULT_WEIGHTS
    p = Path(name_or_path)
    if p.suffix == ".safetensors" or p.exists():
        return p
    names = available_weights()
    if str(name_or_path) in names:
        return names[str(name_or_path)]
    hint = weights_suggestion(name_or_path)
    raise NiivInputError(
        f"unknown weights {name_or_path!r}{f' ({hint})' if hint else ''}; available: {', '.join(names) or 'none'} "
        "(or give a path)"
    )


def fast_weights(chosen: str | Path | None, device_type: str, sections: Degradation = THICK) -> Path | None:
    """niiv-fast's file, for the live view's first frame and the 3D views of a lazy layer: on a
    CPU (a GPU runs the full model fast enough), when it is shipped, is not the chosen weights and
    learned the ``sections`` being reconstructed (``InferenceSettings.sections``): distilled from
    the EM default, it would show light microscopy (psf) as it shows EM sections."""
    path = available_weights().get(FAST_WEIGHTS)
    if path is None or device_type != "cpu" or str(chosen) == FAST_WEIGHTS:
        return None
    if chosen is not None and Path(chosen).exists() and Path(chosen).resolve() == path.resolve():
        return None
    if sections.kind not in learned_degradations(path):
        return None
    return path
