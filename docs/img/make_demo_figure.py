"""Compose docs/img/demo_decision.png from the output of `minimaxad demo`: photo | heatmap | decision.

    minimaxad demo --output /tmp/mmad-demo --encoder-weights none --quiet
    python docs/img/make_demo_figure.py /tmp/mmad-demo docs/img/demo_decision.png

The photos are the demo's synthetic test images, the heatmaps are the files `minimaxad predict`
wrote in the demo's step 3 (predictions/<category>/heatmaps/), and score, threshold and decision
are read from its scores.json. Nothing is drawn here but the layout and the labels. Pillow only.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

ROWS = [("grain", "missing__002"), ("grain", "good__005")]  # a defect caught, a normal photo passed
SIDE = 192  # pixels per panel
HEADER = 28
GAP = 8


def font(size: int, bold: bool = False) -> ImageFont.ImageFont:
    """DejaVu Sans at ``size`` pixels, else Pillow's built-in font."""
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    try:
        return ImageFont.truetype(name, size)
    except OSError:
        try:
            return ImageFont.truetype(f"/usr/share/fonts/truetype/dejavu/{name}", size)
        except OSError:
            return ImageFont.load_default()


def decision_panel(prediction: dict, threshold: float) -> Image.Image:
    """The decision as `minimaxad predict` wrote it: a badge, the score against the threshold."""
    anomalous = prediction["decision"] == "anomalous"
    panel = Image.new("RGB", (SIDE, SIDE), (255, 255, 255))
    draw = ImageDraw.Draw(panel)
    colour = (200, 30, 30) if anomalous else (30, 130, 50)
    draw.rounded_rectangle((8, 14, SIDE - 8, 62), radius=8, fill=colour)
    word = "ANOMALOUS" if anomalous else "NORMAL"
    big = font(22, bold=True)
    width = draw.textlength(word, font=big)
    draw.text(((SIDE - width) / 2, 24), word, fill="white", font=big)
    small = font(14)
    relation = ">=" if anomalous else "<"
    lines = [
        f"score {prediction['score']:.3f}",
        f"{relation} threshold {threshold:.3f}",
        f"normalised {prediction['normalized_score']:.2f}",
        "(0.5 = threshold)",
    ]
    for i, line in enumerate(lines):
        draw.text((14, 78 + 24 * i), line, fill=(30, 30, 30), font=small)
    return panel


def main(demo_dir: Path, out: Path) -> None:
    """Write the figure of ``ROWS`` from the demo folder ``demo_dir`` to ``out``."""
    columns = ["photo", "heatmap", "decision"]
    sheet = Image.new("RGB", (3 * SIDE + 2 * GAP, HEADER + len(ROWS) * SIDE + (len(ROWS) - 1) * GAP), "white")
    draw = ImageDraw.Draw(sheet)
    label = font(16, bold=True)
    for j, name in enumerate(columns):
        x = j * (SIDE + GAP) + (SIDE - draw.textlength(name, font=label)) / 2
        draw.text((x, 4), name, fill=(30, 30, 30), font=label)
    for i, (category, name) in enumerate(ROWS):
        folder = demo_dir / "predictions" / category
        scores = json.loads((folder / "scores.json").read_text())
        prediction = next(p for p in scores["predictions"] if p["name"] == name)
        photo = Image.open(prediction["path"]).convert("RGB")
        heatmap = Image.open(folder / prediction["heatmap"]).convert("RGB")
        panels = [
            photo.resize((SIDE, SIDE), Image.LANCZOS),
            heatmap.resize((SIDE, SIDE), Image.LANCZOS),
            decision_panel(prediction, scores["image_threshold"]),
        ]
        for j, panel in enumerate(panels):
            sheet.paste(panel, (j * (SIDE + GAP), HEADER + i * (SIDE + GAP)))
    # 256 colours keep the file small (< 200 KB) with no visible banding at this size
    sheet.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG).save(
        out, optimize=True
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
