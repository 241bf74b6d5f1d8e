"""Fine-tune niiv on the open volume, inside the viewer: settings, Start / Stop / Resume, a
progress bar (napari's activity dock and the dock's inline bar), a loss plot with a held-out check
and a CSV export, and a live preview through the niiv view. The run is a napari thread worker."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from magicgui.widgets import ComboBox, Container, FloatSpinBox, Label, LineEdit, PushButton, SpinBox
from napari.layers import Shapes
from napari.utils.notifications import show_warning
from qtpy.QtWidgets import QFileDialog, QSizePolicy

from ..errors import NiivInputError
from ..inference.weights import resolve_weights, user_dir
from ..training.finetune import (
    FineTuneJob,
    FineTuneRequest,
    check_new_weights,
    fine_tune_job,
    free_name,
    resumable,
    stopped_run,
    weights_name,
)
from ..training.regions import Region, box_region, visible_region, whole
from ..training.train import fine_tune_settings
from .activity import Activity, CancelableBar, JobWorker, format_seconds
from .gui_timing import gui_handler
from .layer_view import check_layer, current_grid, described_source, layer_voxel_size, level0
from .loss_plot import LossPlot
from .training_job import JobSignals, follow_training

REGIONS = ("whole volume", "visible region", "boxes of a Shapes layer")
T = TypeVar("T")
# napari's activity bar runs Qt's event loop on every update (~5 ms here, 14-40 ms under load): a
# run of fast steps moves it at most this often, and always to the last step
BAR_EVERY_S = 0.25


def named(control: str, call: Callable[[], T]) -> T:
    """``call()``, with a NiivInputError it raises prefixed by the control to change."""
    try:
        return call()
    except NiivInputError as exc:
        text = str(exc)
        raise NiivInputError(text if text.startswith(control) else f"{control}: {text}") from None


def status_label() -> Label:
    """A status line that wraps inside the dock instead of running off it."""
    label = Label(value="")
    label.native.setWordWrap(True)
    policy = QSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)  # magicgui's is Fixed
    policy.setHeightForWidth(True)  # as tall as the wrapped text at the dock's width
    label.native.setSizePolicy(policy)
    return label


def finished_text(ended: str | None, stopped_early: bool) -> str:
    """How a run ended, for the status line ("done", "stopped" by the user, "time limit ... reached")."""
    if ended == "complete" or (ended is None and not stopped_early):
        return "done"
    if ended == "stopped by the user" or ended is None:
        return "stopped"
    return ended


class TrainingPanel(Container):
    """The training half of the niiv dock widget; ``niiv`` is the :class:`NiivWidget` whose
    volume, alpha, weights and device it uses and whose live view shows the preview."""

    def __init__(self, viewer: Any, niiv: Any) -> None:
        super().__init__(labels=True)
        self.viewer = viewer
        self.niiv = niiv
        self.region_choice = ComboBox(label="learn from", choices=REGIONS, value=REGIONS[0])
        self.shapes_choice = ComboBox(label="boxes", choices=self._shapes_layers, nullable=True)
        self.steps_spin = SpinBox(label="steps", min=10, max=200_000, step=100, value=1000)
        self.minutes_spin = FloatSpinBox(label="time limit (min, 0: none)", min=0, max=24 * 60, step=1, value=5)
        self.lr_edit = LineEdit(label="learning rate", value="1e-4")
        self.name_edit = LineEdit(label="save as", value="")
        self.start_button = PushButton(text="Start")
        self.stop_button = PushButton(text="Stop", enabled=False)
        self.resume_button = PushButton(text="Resume", enabled=False)
        self.export_button = PushButton(text="Export CSV...")
        self.plot = LossPlot()
        self.status_label = status_label()
        self.extend(
            [
                self.region_choice,
                self.shapes_choice,
                self.steps_spin,
                self.minutes_spin,
                self.lr_edit,
                self.name_edit,
            ]
        )
        buttons = Container(
            widgets=[self.start_button, self.stop_button, self.resume_button, self.export_button],
            layout="horizontal",
            labels=False,
        )
        buttons.margins = (0, 0, 0, 0)
        layout = self.native.layout()
        for native in (buttons.native, self.plot, self.status_label.native):
            layout.addWidget(native)  # full width, no label column
        self._buttons = buttons
        self.tooltips()
        self.job: FineTuneJob | None = None
        self.worker: JobWorker | None = None
        self._signals: JobSignals | None = None
        self.bar: CancelableBar | None = None
        self.previews = 0  # live previews shown with in-training weights
        self._layer: Any = None
        self._weights: str | None = None  # the weights chosen when the run started
        self._run_start: tuple[float, int] | None = None  # (time, step) of this run's first step
        self._last_step_at = 0.0  # when the latest step arrived
        self._bar_at = -float("inf")  # when the activity bar last moved
        self._offered: tuple[Any, float] | None = None  # (volume, alpha) the running run's name was offered for
        self.start_button.changed.connect(lambda: self.start(resume=False))
        self.resume_button.changed.connect(lambda: self.start(resume=True))
        self.stop_button.changed.connect(self.stop)
        self.export_button.changed.connect(lambda: self.export_csv())
        self.name_edit.changed.connect(self._update_buttons)
        niiv.volume_choice.changed.connect(self._default_name)
        niiv.alpha_spin.changed.connect(self._default_name)
        viewer.layers.events.removed.connect(self._layer_removed)
        viewer.layers.events.inserted.connect(self._layer_inserted)
        self._default_name()

    def tooltips(self) -> None:
        self.region_choice.tooltip = (
            "What to learn from: the whole volume, what the current 2D view shows (all of it along the sliced "
            "axis), or the rectangles of a Shapes layer. The last fifth of the xy planes is held out for the check."
        )
        self.shapes_choice.tooltip = "The Shapes layer whose rectangles mark the parts to learn from (xy view: all z)."
        crops = fine_tune_settings(1.0).batch
        self.steps_spin.tooltip = f"Training steps; the learning-rate schedule runs over them ({crops} crops per step)."
        self.minutes_spin.tooltip = "Stop after this many minutes even if steps remain (0: no time limit)."
        self.lr_edit.tooltip = "Peak learning rate; 1e-4 (a fifth of training from scratch) suits fine-tuning."
        self.name_edit.tooltip = (
            "Name of the new weights, saved in your weights folder and listed as user/<name>; "
            "an existing name is refused unless you Resume its run."
        )
        self.start_button.tooltip = (
            "Fine-tune the widget's weights on this volume at its alpha and on its device, in the background "
            "(the viewer stays usable)"
        )
        self.stop_button.tooltip = "Stop after the current step, saving the weights and a checkpoint to Resume from"
        self.resume_button.tooltip = "Continue the stopped run saved under this name exactly where it stopped"
        self.export_button.tooltip = "Write the loss and held-out history as CSV (one row per step)"

    # -- settings --------------------------------------------------------------------------------
    def _shapes_layers(self, widget: Any = None) -> list[Shapes]:
        return [layer for layer in self.viewer.layers if isinstance(layer, Shapes)]

    def default_name(self) -> str | None:
        """The name offered for the chosen volume and alpha: one Start can use (or a stopped run's,
        to Resume); None without a volume."""
        layer = self.niiv.volume_choice.value
        if layer is None:
            return None
        return free_name(user_dir(), weights_name(f"{layer.name}-a{self.niiv.alpha_spin.value:g}"))

    @gui_handler
    def _default_name(self, value: Any = None) -> None:
        name = self.default_name()
        if name is not None and self.job is None:
            self.name_edit.value = name
        self._update_buttons()

    def learning_rate(self) -> float:
        """The learning rate typed in (a NiivInputError names the field when it is not a number in range)."""
        try:
            lr = float(self.lr_edit.value)
        except ValueError:
            lr = -1.0
        if not 0 < lr < 0.1:
            raise NiivInputError(f"learning rate {self.lr_edit.value!r}: give a number such as 1e-4 (0 < lr < 0.1)")
        return lr

    def out_path(self) -> Path:
        return user_dir() / f"{named('save as', lambda: weights_name(self.name_edit.value))}.safetensors"

    def _update_buttons(self, value: Any = None) -> None:
        busy = self.job is not None
        try:
            can_resume = resumable(self.out_path())
        except NiivInputError:
            can_resume = False
        self.start_button.enabled = not busy
        self.resume_button.enabled = not busy and can_resume
        self.stop_button.enabled = busy

    def set_status(self, text: str) -> None:
        self.status_label.value = text

    def regions(self, layer: Any) -> list[Region]:
        shape = tuple(int(s) for s in level0(layer).shape)
        mode = self.region_choice.value
        if mode == REGIONS[0]:
            return [whole(shape)]
        if mode == REGIONS[1]:
            if self.viewer.dims.ndisplay == 3:  # was told to pan to the volume, which it showed whole
                raise NiivInputError(
                    "learn from: the visible region is that of a 2D view, and the view is 3D: switch to 2D "
                    "(the 2D/3D button) and frame the part to learn from, or pick 'whole volume'"
                )
            grid = current_grid(self.viewer, layer, 1.0)
            if grid is None:
                raise NiivInputError(
                    "learn from: nothing of the volume is visible in a 2D view: pan to it, or pick 'whole volume'"
                )
            return [visible_region(grid.coords, grid.sliced_axis, shape)]
        shapes = self.shapes_choice.value
        if shapes is None or not len(shapes.data):
            raise NiivInputError("boxes: add a Shapes layer with rectangles over the parts to learn from, and pick it")
        boxes = []
        for vertices in shapes.data:
            world = np.array([shapes.data_to_world(v) for v in vertices])
            data = np.array([layer.world_to_data(w) for w in world])
            boxes.append(box_region(data, shape))
        if all(any(s.stop <= s.start for s in box) for box in boxes):
            raise NiivInputError(
                f"boxes: the shapes of '{shapes.name}' all lie outside '{layer.name}': draw them over the volume"
            )
        return boxes

    # -- running ---------------------------------------------------------------------------------
    @gui_handler
    def start(self, resume: bool = False) -> None:
        try:
            self._start(resume)
        except NiivInputError as exc:
            self.set_status(str(exc))

    def request(self, resume: bool = False) -> FineTuneRequest:
        """The run the widgets describe, for :func:`napari_niiv.training.finetune.fine_tune_job`.
        A resume keeps the stopped run's settings: the steps and learning rate boxes are set to
        them; its alpha, sections, regions and weights come from its checkpoint."""
        layer = named("volume", lambda: check_layer(self.niiv.volume_choice.value))
        out = self.out_path()
        named("save as", lambda: check_new_weights(out, resume))
        run = stopped_run(out) if resume else None
        if not resume:  # e.g. the picked file was deleted since the list was made
            named("weights", lambda: resolve_weights(self.niiv.weights_choice.value))
        if run is not None:
            self.steps_spin.value, self.lr_edit.value = run.steps, f"{run.lr:g}"
        # refused while the layer's scale gives no alpha and none was confirmed
        alpha = run.alpha if run is not None else self.niiv.alpha()
        regions = run.regions if run is not None and run.regions is not None else self.regions(layer)
        return FineTuneRequest(
            data=level0(layer),
            scale=layer_voxel_size(layer),
            name=layer.name,
            source=described_source(layer),  # a sample's layer is not its file: it says so
            alpha=alpha,
            start_weights=self.niiv.weights_choice.value,
            regions=tuple(regions),
            out=out,
            steps=int(self.steps_spin.value),
            minutes=float(self.minutes_spin.value),
            lr=self.learning_rate(),
            device=self.niiv.device_choice.value,
            resume=resume,
            degradation=self.niiv.degradation(),  # simulated on the xy planes learnt from
        )

    def _start(self, resume: bool) -> None:
        request = self.request(resume)
        job = fine_tune_job(request)
        # the name the panel offered (not typed) for this volume and alpha: follows them when they change
        offered = self.name_edit.value == self.default_name()
        if self.name_edit.value != request.out.stem:  # a typed name made file-safe: show what is saved
            self.name_edit.value = request.out.stem
        self._offered = (self.niiv.volume_choice.value, self.niiv.alpha_spin.value) if offered else None
        self.job, self._layer = job, self.niiv.volume_choice.value
        self._weights = self.niiv.weights_choice.value  # the live view previews the run while it shows these
        self._signals = JobSignals(job)
        self._signals.stepped.connect(self._on_step)
        self._signals.checked.connect(self._on_check)
        self._signals.previewed.connect(self._on_preview)
        self._signals.finished.connect(self._on_finished)
        if not resume:
            self.plot.clear()
        self._run_start = None
        self._bar_at = -float("inf")
        self.worker, self.bar = follow_training(job, self._layer.name)
        self._update_buttons()
        if resume:
            s = job.settings
            self.set_status(
                f"resuming the stopped run with its settings (alpha {s.alpha:g}, {s.degradations} sections, "
                f"{s.steps} steps, learning rate {s.lr:g}) on {len(job.split.regions)} region(s)..."
            )
            return
        self.set_status(
            f"training on {len(job.split.regions)} region(s){_left_out(request.regions, job)}; scoring the start "
            f"weights on the {_held_planes(job)}..."
        )

    @gui_handler
    def stop(self, value: Any = None) -> None:
        """Stop after the current step; the run can be resumed."""
        if self.job is not None:
            self.job.stop()
            self.set_status("stopping after this step...")

    @gui_handler
    def _on_step(self, step: int, loss: float) -> None:
        self.plot.add_loss(step, loss)
        self._last_step_at = time.perf_counter()
        if self._run_start is None:  # a resumed run starts part-way: its speed counts from here
            self._run_start = (self._last_step_at, step - 1)
            if self.bar is not None:
                self.bar.n = self.bar.initial = step - 1
                self.bar.start_t = time.time()
        bar = self.bar
        if bar is not None and step > bar.n:
            now = time.perf_counter()
            if now - self._bar_at >= BAR_EVERY_S or (bar.total is not None and step >= bar.total):
                self._bar_at = now
                bar.update(step - bar.n)

    def eta(self) -> float | None:
        """Seconds left at this run's rate, within the time limit; None before two steps. It counts
        down between steps: the steps left at the time per step so far, less the time since the
        latest (the time since the run's first step over the steps done rose every second between
        steps, 1:27, 1:28, 1:29 and down to 1:13 at the next)."""
        if self.job is None or self._run_start is None or not self.plot.steps:
            return None
        t0, s0 = self._run_start
        step, now = self.plot.steps[-1], time.perf_counter()
        if step <= s0 + 1 or self._last_step_at <= t0:
            return None
        per_step = (self._last_step_at - t0) / (step - s0 - 1)  # t0: when step s0 + 1 arrived
        left = max(0.0, (self.job.settings.steps - step) * per_step - (now - self._last_step_at))
        budget = self.job.settings.time_budget
        return min(left, max(0.0, budget - (now - t0))) if budget else left

    def activity(self) -> Activity | None:
        """The run for the dock's inline bar."""
        if self.job is None:
            return None
        step, steps = (self.plot.steps[-1] if self.plot.steps else 0), self.job.settings.steps
        eta = self.eta()
        text = f"fine-tuning on '{self._layer.name}': step {step} of {steps}" + (
            f", ETA {format_seconds(eta)}" if eta is not None else ""
        )
        if self.job.stop_requested.is_set():
            text = f"fine-tuning on '{self._layer.name}': stopping after this step..."
        return Activity(text, step, steps, self.stop, "Stop after the current step (resumable, like Stop)")

    @gui_handler
    def _on_check(self, step: int, metrics: dict[str, float]) -> None:
        self.plot.add_check(step, metrics["cf_psnr_gain"], metrics.get("cf_psnr"))
        when = "start weights" if step == 0 else f"step {step}"
        text = f"{when}: held-out CF-PSNR {metrics['cf_psnr']:.2f} dB ({_gains(metrics)})"
        if step == 0 and self.job is not None:
            there = f"bilinear there: {metrics['bilinear_cf_psnr']:.2f} dB"
            if "bicubic_cf_psnr" in metrics:
                there += f", bicubic {metrics['bicubic_cf_psnr']:.2f} dB"
            text += f" on the {_held_planes(self.job)} ({there}); training..."
        self.set_status(text)

    @gui_handler
    def _on_preview(self, step: int, state: dict[str, Any]) -> None:
        live = self.niiv.live_view
        # only over the weights the run started from: picked other weights (another architecture,
        # or the same one) are shown as they are, not replaced by the run's under their name
        if live is not None and live.layer is self._layer and self.niiv.weights_choice.value == self._weights:
            live.update_weights(state)
            self.previews += 1

    def export_csv(self, path: str | Path | None = None) -> Path | None:
        """Write the loss plot's history as CSV at ``path`` (asked for with a file dialog if none)."""
        if path is None:
            default = Path.home() / f"{self.name_edit.value or 'niiv'}-loss.csv"
            path, _ = QFileDialog.getSaveFileName(self.native, "Export the loss history", str(default), "CSV (*.csv)")
            if not path:
                return None
        path = Path(path)
        try:
            rows = self.plot.write_csv(path)
        except NiivInputError as exc:  # a folder at the path
            self.set_status(f"Export CSV...: {exc}")
            return None
        except OSError as exc:
            self.set_status(f"Export CSV...: could not write {path}: {exc}")
            return None
        self.set_status(f"wrote {rows} rows of loss history to {path}")
        return path

    @gui_handler
    def _on_finished(self, result: Any) -> None:
        ended = self.job.ended if self.job is not None else None
        start = self.job.start_check if self.job is not None else None
        self.job, self._signals, self.worker = None, None, None
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if isinstance(result, NiivInputError):  # a refusal found on the training thread: what to do
            self.set_status(str(result))
        elif isinstance(result, BaseException):
            self.set_status(f"training failed: {result}")
        else:
            self.niiv.weights_choice.reset_choices()
            name = f"user/{result.weights.stem}"
            if name in self.niiv.weights_choice.choices:
                self.niiv.weights_choice.value = name
            held = result.held_out or {}
            self.set_status(
                f"{finished_text(ended, result.stopped_early)} at step {result.steps_done}: saved '{name}'"
                + _over_start(held, start)
                + (f", held-out {_gains(held, ' dB')}" if "cf_psnr_gain" in held else "")
            )
        # a volume or alpha picked during the run: the name offered for them (the box kept the run's)
        if self._offered is not None and self._offered != (self.niiv.volume_choice.value, self.niiv.alpha_spin.value):
            self._default_name()
        self._update_buttons()

    def _layer_removed(self, event: Any) -> None:
        if self.job is not None and event.value is self._layer:
            self.job.stop()
            self.set_status(f"'{self._layer.name}' was closed: training stops after this step")

    def _layer_inserted(self, event: Any = None) -> None:
        self.shapes_choice.reset_choices()

    def disconnect_viewer(self) -> None:
        """The dock was closed: stop listening to the viewer's layers."""
        self.viewer.layers.events.removed.disconnect(self._layer_removed)
        self.viewer.layers.events.inserted.disconnect(self._layer_inserted)

    def shutdown(self, timeout: float = 30.0) -> None:
        """The viewer or dock is closing: stop training and wait up to ``timeout`` for the thread
        (one step; 0: the dock closed, the window stays, and must not freeze for that step: the
        run stops on its own thread, saving its weights and checkpoint). Its last signals are
        dropped: the widgets they would update are being deleted; napari's notifications say the
        run stopped and how to continue it."""
        if self.job is not None:
            if self._signals is not None:
                self._signals.disconnect_all()
            # (a closing viewer: no one to tell; a run that has ended, its last signal still queued: nothing stopped)
            if timeout <= 0 and self.job.running and self.job.result is None and not self.job.stop_requested.is_set():
                show_warning(
                    f"niiv: closing the dock stopped the fine-tuning of '{self.job.out.stem}' after its current "
                    "step, saving its weights and checkpoint: open the niiv dock and Resume it under the same name"
                )
            self.job.stop()
            if timeout > 0:
                self.job.join(timeout)
            self.job, self._signals, self.worker = None, None, None
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _held_planes(job: FineTuneJob) -> str:
    """The planes a run holds out, for the status line."""
    held = job.split.held_out[0]
    return f"held-out planes z {held.start}-{held.stop - 1}"


def _left_out(regions: tuple[Region, ...], job: FineTuneJob) -> str:
    """Why parts asked for are not trained on, for the status line: the run leaves out boxes outside
    the volume, narrower than the training crop or only over the held-out planes, and the panel said
    'training on 1 region(s)' of three boxes drawn, without a word on the other two."""
    left = len(regions) - len(job.split.regions)
    if left <= 0:
        return ""
    crop = job.settings.crop
    empty = [any(s.stop <= s.start for s in r) for r in regions]  # clipped to nothing: outside the volume
    outside = sum(empty)
    narrow = sum(
        not e and min(r[1].stop - r[1].start, r[2].stop - r[2].start) < crop
        for e, r in zip(empty, regions, strict=True)
    )
    why = [f"{outside} outside the volume"] if outside else []
    why += [f"{narrow} narrower than the {crop} px training crop"] if narrow else []
    why += [f"{left - outside - narrow} only over the held-out planes"] if left > outside + narrow else []
    return f" of the {len(regions)} drawn (left out: {', '.join(why)})"


def _over_start(held: dict[str, float], start: dict[str, float] | None) -> str:
    """What the run gained over its start weights on the held-out planes, for the status line: the
    number that says whether fine-tuning helped this volume (the line gave only the gains over
    bilinear and bicubic, which the start weights had mostly had already)."""
    if start is None or "cf_psnr" not in held or "cf_psnr" not in start:
        return ""
    return f", {held['cf_psnr'] - start['cf_psnr']:+.2f} dB CF-PSNR over the start weights"


def _gains(metrics: dict[str, float], unit: str = "") -> str:
    """Held-out CF-PSNR gains over bilinear and over bicubic, what a user would pick instead
    (the panel showed bilinear's alone: +11.05 dB where bicubic's was +5.80)."""
    text = f"{metrics['cf_psnr_gain']:+.2f}{unit} vs bilinear"
    if "cf_psnr_gain_bicubic" in metrics:
        text += f", {metrics['cf_psnr_gain_bicubic']:+.2f}{unit} vs bicubic"
    return text
