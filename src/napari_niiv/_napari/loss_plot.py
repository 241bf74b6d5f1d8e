"""The fine-tuning plot for the dock: QPainter only, no plotting library.

Training loss per step on a log scale (left axis): the raw per-step values faint, a running mean
bold; held-out CF-PSNR gains over bilinear as markers on their own linear scale (right axis, dB,
with the zero line). Ticks and labels sit in the margins and the legend above the plot area, so no
text is ever drawn over the curves; the history can be written as CSV.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QFontMetrics, QPainter, QPainterPath, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

from ..inference.weights import atomic_write

BACKGROUND = QColor(30, 32, 38)
AXIS = QColor(150, 150, 155)
RAW = QColor(230, 230, 230, 70)
SMOOTH = QColor(240, 240, 240)
GAIN = QColor(90, 200, 120)
CSV_COLUMNS = ("step", "loss", "loss_smoothed", "heldout_cf_psnr_db", "heldout_gain_db")


def smooth(values: list[float], window: int) -> list[float]:
    """Running mean over the last ``window`` values: per-step losses are noisy."""
    v = np.asarray(values, dtype=np.float64)
    if not len(v):
        return []
    total = np.cumsum(v)
    total[window:] = total[window:] - total[:-window]
    return (total / np.minimum(np.arange(1, len(v) + 1), window)).tolist()


def log_losses(values: list[float]) -> np.ndarray:
    return np.log10(np.maximum(np.asarray(values, dtype=np.float64), 1e-8))


def decimate(xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The points of a polyline that draw it the same at this resolution: in each pixel column
    (``xs`` in px, increasing) the first, lowest, highest and last point, so a column's stroke
    covers what all of its points did; columns of four points or fewer keep them all. A run of
    20,000 steps drew 20,000 points per curve on every repaint: 1.2 s of GUI thread, per step."""
    if len(xs) <= 4:
        return xs, ys
    col = np.floor(xs).astype(np.int64)
    starts = np.flatnonzero(np.r_[True, np.diff(col) != 0])
    if len(xs) <= 4 * len(starts):
        return xs, ys
    ends = np.r_[starts[1:], len(xs)] - 1
    lo, hi = np.minimum.reduceat(ys, starts), np.maximum.reduceat(ys, starts)
    first, last = ys[starts], ys[ends]
    low_first = np.abs(first - lo) <= np.abs(first - hi)  # the extreme nearer the first point comes first
    mid1, mid2 = np.where(low_first, lo, hi), np.where(low_first, hi, lo)
    out_y = np.stack([first, mid1, mid2, last], axis=1).ravel()
    out_x = np.stack([xs[starts], xs[starts], xs[ends], xs[ends]], axis=1).ravel()
    return out_x, out_y


def smoothing_window(n: int) -> int:
    return max(1, min(50, n // 10))


def nice_ticks(lo: float, hi: float, count: int = 4) -> list[float]:
    """About ``count`` round values (1, 2 or 5 times a power of ten apart) within [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, count)
    power = 10 ** math.floor(math.log10(raw))
    step = min((m * power for m in (1, 2, 5, 10)), key=lambda st: abs(math.log(st / raw)))
    first = math.ceil(lo / step - 1e-9) * step
    ticks, t = [], first
    while t <= hi + 1e-9 * step:
        ticks.append(0.0 if abs(t) < step * 1e-9 else t)
        t += step
    return ticks


def log_ticks(lo: float, hi: float) -> list[float]:
    """Tick values for a log axis from 10**lo to 10**hi: decades, with 2 and 5 when few decades
    show, or round values in linear steps when less than one decade shows."""
    if hi - lo < 1:
        return [v for v in nice_ticks(10**lo, 10**hi, 3) if v > 0]
    mantissas = (1, 2, 5) if hi - lo < 2.5 else (1,)
    ticks = []
    for d in range(math.floor(lo), math.ceil(hi) + 1):
        for m in mantissas:
            v = m * 10.0**d
            if lo - 1e-9 <= math.log10(v) <= hi + 1e-9:
                ticks.append(v)
    return ticks


def tick_text(v: float) -> str:
    return f"{v:.3g}" if v != 0 else "0"


class LossPlot(QWidget):
    """Training loss per step and held-out gains, with axes, ticks, a legend and a CSV export."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.checks: list[tuple[int, float]] = []  # (step, held-out CF-PSNR gain over bilinear, dB)
        self.check_psnr: dict[int, float] = {}  # step -> held-out CF-PSNR (dB), where known
        self.setMinimumHeight(160)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setToolTip(
            "Fine-tuning loss per step (left axis, log scale): faint, each step; bold, the running mean. "
            "Green markers: held-out CF-PSNR gain over bilinear (right axis, dB); above the dashed zero "
            "line niiv beats bilinear on planes it never trains on."
        )

    def sizeHint(self):  # a fixed height: the plot never squeezes the status line
        hint = super().sizeHint()
        hint.setHeight(self.minimumHeight())
        return hint

    # -- data ------------------------------------------------------------------------------------
    def clear(self) -> None:
        self.steps, self.losses, self.checks, self.check_psnr = [], [], [], {}
        self.update()

    def add_loss(self, step: int, loss: float) -> None:
        """Add a step's loss; a NaN or infinite one is left out (its scale and curve would break
        painting, every paint after it)."""
        if not math.isfinite(loss):
            return
        self.steps.append(step)
        self.losses.append(loss)
        self.update()

    def add_check(self, step: int, gain: float, cf_psnr: float | None = None) -> None:
        """Add a held-out check; one whose gain is NaN or infinite (a perfect score on both sides) is left out."""
        if not math.isfinite(gain):
            return
        self.checks.append((step, gain))
        if cf_psnr is not None:
            self.check_psnr[step] = cf_psnr
        self.update()

    def rows(self) -> list[dict[str, object]]:
        """One row per step that has a loss or a held-out check, in step order (CSV_COLUMNS)."""
        smoothed = smooth(self.losses, smoothing_window(len(self.losses)))
        by_step: dict[int, dict[str, object]] = {}
        for s, loss, sm in zip(self.steps, self.losses, smoothed, strict=True):
            by_step[s] = {"step": s, "loss": loss, "loss_smoothed": sm}
        for s, gain in self.checks:
            row = by_step.setdefault(s, {"step": s})
            row["heldout_gain_db"] = gain
            if s in self.check_psnr:
                row["heldout_cf_psnr_db"] = self.check_psnr[s]
        return [{c: by_step[s].get(c, "") for c in CSV_COLUMNS} for s in sorted(by_step)]

    def write_csv(self, path: str | Path) -> int:
        """Write the history as CSV (header CSV_COLUMNS); returns the rows written. Atomically: a
        write that fails part-way (a full disk) left a half-written CSV under the name, in place of
        the file the user chose to replace."""
        rows = self.rows()

        def write(tmp: Path) -> None:
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
                writer.writeheader()
                writer.writerows(rows)

        atomic_write(Path(path), write)
        return len(rows)

    # -- layout ----------------------------------------------------------------------------------
    def plot_rect(self) -> QRectF:
        """The data area: everything outside it (ticks, axis titles, legend) is margin."""
        fm = QFontMetrics(self.font())
        h = fm.height()
        left = fm.horizontalAdvance("0.0000") + h + 10
        right = fm.horizontalAdvance("+0.00") + h + 10
        top = h + 8
        bottom = 2 * h + 8
        return QRectF(left, top, max(10, self.width() - left - right), max(10, self.height() - top - bottom))

    def text_rects(self) -> list[QRectF]:
        """Where every piece of text and legend glyph goes (ticks, axis title, legend): all outside
        ``plot_rect``; for tests and paint."""
        return [rect for rect, _, _ in self._texts()] + [glyph for _, glyph, _, _ in self._legend()]

    def _ranges(self) -> tuple[tuple[float, float], tuple[float, float], tuple[float, float]]:
        last = float(max(max(self.steps, default=1), max((s for s, _ in self.checks), default=1), 1))
        x0, x1 = -0.02 * last, 1.02 * last  # markers at the first and last step show whole
        ys = log_losses(self.losses) if self.losses else np.array([-2.0, -1.0])
        lo, hi = float(ys.min()), float(ys.max())
        if hi - lo < 0.05:
            lo, hi = lo - 0.05, hi + 0.05
        pad = 0.04 * (hi - lo)
        gains = [g for _, g in self.checks]
        g_lo, g_hi = min([*gains, 0.0]), max([*gains, 0.5])
        gpad = 0.08 * (g_hi - g_lo)
        return (x0, x1), (lo - pad, hi + pad), (g_lo - gpad, g_hi + gpad)

    def _texts(self) -> list[tuple[QRectF, str, int]]:
        """(rect, text, alignment) of each label, all in the margins."""
        fm = QFontMetrics(self.font())
        h = fm.height()
        r = self.plot_rect()
        (x0, x1), (lo, hi), (g_lo, g_hi) = self._ranges()
        out: list[tuple[QRectF, str, int]] = []
        AR, AL, AC = (
            int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter),
            int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter),
            int(Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignTop),
        )
        for v in self._loss_ticks(lo, hi):
            y = self._y(math.log10(v), lo, hi)
            out.append((QRectF(h + 2, y - h / 2, r.left() - h - 6, h), tick_text(v), AR))
        if self.checks:
            for g in nice_ticks(g_lo, g_hi, 3):
                y = self._y(g, g_lo, g_hi)
                text = f"{g:+.2g}" if g else "0"
                out.append((QRectF(r.right() + 4, y - h / 2, self.width() - r.right() - h - 6, h), text, AL))
        last_right = -1e9
        for s in nice_ticks(0, x1 / 1.02, 4):  # up to the last step
            if s != int(s):
                continue
            x = r.left() + (s - x0) / (x1 - x0) * r.width()
            text = f"{int(s)}"
            w = fm.horizontalAdvance(text) + 6
            if x - w / 2 < last_right:
                continue
            last_right = x + w / 2
            out.append((QRectF(x - w / 2, r.bottom() + 3, w, h), text, AC))
        out.append((QRectF(r.left(), r.bottom() + 3 + h, r.width(), h), "step", AC))
        out += [(rect, text, AL) for _, _, rect, text in self._legend()]
        return out

    def _legend(self) -> list[tuple[str, QRectF, QRectF, str]]:
        """(glyph kind, glyph rect, text rect, text) of each legend entry, left to right above the
        data area; entries that do not fit are left out rather than drawn over anything."""
        fm = QFontMetrics(self.font())
        h = fm.height()
        r = self.plot_rect()
        entries = [("raw", "loss"), ("smooth", "mean")]
        if self.checks:
            entries.append(("gain", "held-out gain"))
        out, x = [], r.left()
        for kind, text in entries:
            glyph = QRectF(x, 2, 16 if kind != "gain" else 10, h)
            w = fm.horizontalAdvance(text) + 2
            label = QRectF(glyph.right() + 4, 2, w, h)
            if label.right() > r.right():
                break
            out.append((kind, glyph, label, text))
            x = label.right() + 12
        return out

    def _loss_ticks(self, lo: float, hi: float) -> list[float]:
        return log_ticks(lo, hi) if self.losses else []  # no scale to show before the first step

    def _y(self, value: float, lo: float, hi: float) -> float:
        r = self.plot_rect()
        return r.bottom() - (value - lo) / (hi - lo) * r.height()

    # -- painting --------------------------------------------------------------------------------
    def paintEvent(self, event: object) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        p.fillRect(self.rect(), BACKGROUND)
        r = self.plot_rect()
        (x0, x1), (lo, hi), (g_lo, g_hi) = self._ranges()
        fm = QFontMetrics(self.font())

        def x_of(step: float) -> float:
            return r.left() + (step - x0) / (x1 - x0) * r.width()

        # grid and frame
        p.setPen(QPen(QColor(70, 72, 80), 1))
        for v in self._loss_ticks(lo, hi):
            y = self._y(math.log10(v), lo, hi)
            p.drawLine(QPointF(r.left(), y), QPointF(r.right(), y))
        p.setPen(QPen(AXIS, 1))
        p.drawRect(r)
        for v in self._loss_ticks(lo, hi):
            y = self._y(math.log10(v), lo, hi)
            p.drawLine(QPointF(r.left() - 4, y), QPointF(r.left(), y))
        for s in nice_ticks(0, x1 / 1.02, 4):
            p.drawLine(QPointF(x_of(s), r.bottom()), QPointF(x_of(s), r.bottom() + 4))

        # axis titles, rotated along the side margins
        p.save()
        p.translate(2, r.center().y())
        p.rotate(-90)
        p.drawText(QRectF(-r.height() / 2, 0, r.height(), fm.height()), int(Qt.AlignmentFlag.AlignCenter), "L1 loss")
        p.restore()
        if self.checks:
            p.save()
            p.setPen(GAIN)
            p.translate(self.width() - 2, r.center().y())
            p.rotate(90)
            title = "gain (dB)"
            p.drawText(QRectF(-r.height() / 2, 0, r.height(), fm.height()), int(Qt.AlignmentFlag.AlignCenter), title)
            p.restore()

        for rect, text, align in self._texts():
            p.setPen(GAIN if rect.left() > r.right() else AXIS)
            p.drawText(rect, align, text)
        for kind, glyph, _, _ in self._legend():
            y = glyph.center().y()
            if kind == "gain":
                p.setPen(QPen(BACKGROUND, 1))
                p.setBrush(GAIN)
                p.drawEllipse(glyph.center(), 4, 4)
                p.setBrush(Qt.BrushStyle.NoBrush)
            else:
                p.setPen(QPen(RAW, 1) if kind == "raw" else QPen(SMOOTH, 2.2))
                p.drawLine(QPointF(glyph.left(), y), QPointF(glyph.right(), y))

        p.setClipRect(r)
        if len(self.losses) >= 1:
            ys = log_losses(self.losses)
            p.setPen(QPen(RAW, 1))
            p.drawPath(self._path(self.steps, ys, x_of, lo, hi))
            sm = log_losses(smooth(self.losses, smoothing_window(len(self.losses))))
            p.setPen(QPen(SMOOTH, 2.2))
            p.drawPath(self._path(self.steps, sm, x_of, lo, hi))
        else:
            p.setPen(QColor(150, 150, 150))
            p.drawText(r, int(Qt.AlignmentFlag.AlignCenter), "loss curve: press Start")
        if self.checks:
            zero = self._y(0.0, g_lo, g_hi)
            p.setPen(QPen(GAIN, 1, Qt.PenStyle.DashLine))
            p.drawLine(QPointF(r.left(), zero), QPointF(r.right(), zero))
            p.setPen(QPen(BACKGROUND, 1))
            p.setBrush(GAIN)
            for s, g in self.checks:
                p.drawEllipse(QPointF(x_of(s), self._y(g, g_lo, g_hi)), 4, 4)
        p.end()

    def _path(self, steps: list[int], ys: Any, x_of, lo: float, hi: float) -> QPainterPath:
        """The curve through (step, y) in px, at most four points per pixel column (:func:`decimate`)."""
        r = self.plot_rect()  # once, not per point (it measures the font)
        px = np.asarray(x_of(np.asarray(steps, dtype=np.float64)), dtype=np.float64)
        py = r.bottom() - (np.asarray(ys, dtype=np.float64) - lo) / (hi - lo) * r.height()
        px, py = decimate(px, py)
        path = QPainterPath(QPointF(float(px[0]), float(py[0])))
        for x, y in zip(px[1:].tolist(), py[1:].tolist(), strict=True):
            path.lineTo(QPointF(x, y))
        return path
