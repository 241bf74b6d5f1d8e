"""A small live loss curve for the dock: QPainter only, no plotting library."""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, Qt
from qtpy.QtGui import QColor, QPainter, QPainterPath, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget


def smooth(values: list[float], window: int) -> list[float]:
    """Running mean over the last ``window`` values: per-step losses are noisy."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


class LossPlot(QWidget):
    """Training loss per step (log scale, smoothed) and held-out gains as points on a second line."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.checks: list[tuple[int, float]] = []  # (step, held-out CF-PSNR gain over bilinear, dB)
        self.setMinimumHeight(120)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setToolTip("white: training loss (log scale, smoothed); green: held-out CF-PSNR gain over bilinear")

    def clear(self) -> None:
        self.steps, self.losses, self.checks = [], [], []
        self.update()

    def add_loss(self, step: int, loss: float) -> None:
        self.steps.append(step)
        self.losses.append(loss)
        self.update()

    def add_check(self, step: int, gain: float) -> None:
        self.checks.append((step, gain))
        self.update()

    def paintEvent(self, event: object) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        w, h, m = self.width(), self.height(), 6
        p.fillRect(0, 0, w, h, QColor(30, 32, 38))
        if len(self.losses) < 2:
            p.setPen(QColor(150, 150, 150))
            p.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, "loss curve: start training")
            return
        x0, x1 = self.steps[0], max(self.steps[-1], self.steps[0] + 1)
        ys = [math.log10(max(v, 1e-6)) for v in smooth(self.losses, max(1, len(self.losses) // 50))]
        lo, hi = min(ys), max(ys)
        hi = hi if hi > lo else lo + 1e-3

        def point(step: float, y: float, y_lo: float, y_hi: float) -> QPointF:
            return QPointF(m + (step - x0) / (x1 - x0) * (w - 2 * m), h - m - (y - y_lo) / (y_hi - y_lo) * (h - 2 * m))

        path = QPainterPath(point(self.steps[0], ys[0], lo, hi))
        for s, y in zip(self.steps[1:], ys[1:], strict=True):
            path.lineTo(point(s, y, lo, hi))
        p.setPen(QPen(QColor(230, 230, 230), 1.5))
        p.drawPath(path)
        if self.checks:
            gains = [g for _, g in self.checks]
            g_lo, g_hi = min(*gains, 0.0), max(*gains, 0.1)
            p.setPen(QPen(QColor(90, 200, 120), 1))
            zero = point(x0, 0.0, g_lo, g_hi).y()
            p.drawLine(QPointF(m, zero), QPointF(w - m, zero))
            p.setBrush(QColor(90, 200, 120))
            for s, g in self.checks:
                p.drawEllipse(point(s, g, g_lo, g_hi), 3, 3)
        p.setPen(QColor(170, 170, 170))
        p.drawText(m + 2, m + 12, f"loss {self.losses[-1]:.4f} at step {self.steps[-1]}")
        if self.checks:
            p.drawText(m + 2, m + 26, f"held-out gain {self.checks[-1][1]:+.2f} dB vs bilinear")
