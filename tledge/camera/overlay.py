"""The overlay drawn on a classified frame: FPS, each model's latency and top-k, the agreement,
on a dark panel sized to the text."""

from __future__ import annotations

from typing import Optional

import numpy as np

from tledge.camera.outputs import Packet

FONT = 0  # cv2.FONT_HERSHEY_SIMPLEX


def overlay_lines(packet: Packet, models: list, agreement: dict,
                  fps: Optional[float] = None) -> list:
    """(text, BGR colour) per line: FPS end to end, each model's latency and top-k, then the
    agreement."""
    lines = [(f"{fps:.1f} FPS", (255, 255, 255))] if fps else []
    for i, (model, result) in enumerate(zip(models, packet.results)):
        key = "inference" if i == 0 else "compare"
        colour = (80, 255, 80) if i == 0 else (255, 200, 80)
        lines.append((f"{model.name}: {packet.times.get(key, 0):.1f} ms", colour))
        lines += [(f"  {c.label} {c.score:.2f}", colour) for c in result]
    if agreement["n"]:
        lines.append((f"agreement {100 * agreement['agree'] / agreement['n']:.1f}% of "
                      f"{agreement['n']}", (255, 255, 255)))
    return lines


def draw_text_panel(img: np.ndarray, lines: list, origin: tuple = (0, 0)) -> tuple:
    """Draw ``lines`` on a darkened panel sized from the text itself; returns the panel's
    (x0, y0, x1, y1).

    Readable on any background, and with any OpenCV: the panel is measured with the very
    thickness the text is drawn with (OpenCV 5's text width grows with thickness, so a thick
    outline behind thin text no longer lines up with it).
    """
    import cv2

    h, w = img.shape[:2]
    scale = max(0.4, h / 720)
    thickness = 1 if scale < 0.9 else 2
    pad, gap = max(3, int(6 * scale)), max(2, int(6 * scale))
    sizes = [cv2.getTextSize(text, FONT, scale, thickness) for text, _ in lines]
    if not sizes:
        return origin + origin
    ascent = max(size[0][1] for size in sizes)
    step = ascent + max(size[1] for size in sizes) + gap  # one line height: even spacing
    x0, y0 = origin
    x1 = min(w, x0 + 2 * pad + max(size[0][0] for size in sizes))
    y1 = min(h, y0 + 2 * pad + len(lines) * step - gap)
    if x1 <= x0 or y1 <= y0:
        return x0, y0, x0, y0
    roi = img[y0:y1, x0:x1]
    roi[...] = (roi.astype(np.uint16) * 3 // 10).astype(np.uint8)  # 70% towards black
    for i, (text, colour) in enumerate(lines):
        baseline_y = y0 + pad + ascent + i * step
        cv2.putText(img, text, (x0 + pad, baseline_y), FONT, scale, colour, thickness,
                    cv2.LINE_AA)
    return x0, y0, x1, y1


def draw_overlay(packet: Packet, models: list, agreement: dict, status: dict) -> np.ndarray:
    """FPS (``status["fps"]``), top-k labels and scores, latency per model and agreement, on a
    copy of the frame."""
    img = packet.bgr.copy()
    draw_text_panel(img, overlay_lines(packet, models, agreement, status.get("fps")))
    return img
