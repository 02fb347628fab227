"""Box agreement on a real trained detector given as an ONNX file: ddddocr's text detector (``common_det.onnx``,
a YOLOX head at 416x416), pruned to 0.7 of its latency on the cpu target, then distilled.

Text images are rendered here (PIL, the DejaVu fonts: words and single letters in several faces and sizes, dark
on plain, gradient and noisy light backgrounds with captcha-like lines and dots) at the detector's input size,
416x416, so ddddocr's letterbox is the identity, and saved as PNGs with a ``data.py`` that feeds them as
ddddocr's ``get_bbox`` does (BGR, float pixels 0..255, one image a batch: the file's batch is fixed at 1).
The unpruned detector's boxes on them (hwprune's decode of the file's output, ddddocr's thresholds) say it finds
text there. Then, as a user would run them:

    hwprune analyze onnx:DETECTOR (and onnx:BUILD/pruned.onnx)     groups prunable before and after
    hwprune compile onnx:DETECTOR --target cpu --latency 0.7 --calib-data WORK/data.py:train --out BUILD
    hwprune recover BUILD --data WORK/data.py:train --eval-data WORK/data.py:held_out --epochs E --batch-size 1
        --lr LR

and it prints the verdict, the measured fraction and speedup, and the box F1 against the unpruned model: the
compile's (on its 16 calibration images) and recover's before and after distillation (on the held-out images).

    python benchmarks/ddddocr_boxes.py [DETECTOR] [--work /tmp/hwprune-ddddocr] [--train 48] [--held-out 16]
        [--latency 0.7] [--epochs 2] [--lr 1e-3]

DETECTOR defaults to the file inside an installed ``ddddocr`` package.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageFont

SIZE = 416  # ddddocr's get_bbox letterboxes every image to 416x416
FONTS = Path("/usr/share/fonts/truetype/dejavu")
FACES = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Italic.ttf",
         "DejaVuSansMono.ttf", "DejaVuSansCondensed-BoldOblique.ttf")
WORDS = ("hello", "pixel", "Budget", "latency", "ONNX", "text", "Prune", "ddddocr", "42", "2026", "Jetson", "kernel",
         "tensor", "click", "verify", "A7x", "Zebra", "qwerty", "Ocr", "yolo")
DATA = '''"""benchmarks/ddddocr_boxes.py's rendered images as ddddocr feeds its detector: BGR, float pixels 0..255,
one (1, 3, 416, 416) batch each."""

from pathlib import Path

import numpy
import torch
from PIL import Image

HERE = Path(__file__).parent


def _images(folder: str) -> list[torch.Tensor]:
    return [torch.from_numpy(numpy.ascontiguousarray(numpy.asarray(Image.open(path).convert("RGB"))[:, :, ::-1]))
            .permute(2, 0, 1)[None].float() for path in sorted((HERE / folder).glob("*.png"))]


def train() -> list[torch.Tensor]:
    return _images("train")


def held_out() -> list[torch.Tensor]:
    return _images("held_out")
'''


def detector_path(given: str | None) -> Path:
    """The detector file: ``given``, else the one inside an installed ddddocr package; else one line on how."""
    if given:
        return Path(given)
    try:
        import ddddocr
    except ImportError:
        sys.exit("no detector given and ddddocr is not installed: pip download ddddocr==1.6.1 --no-deps, unzip the "
                 "wheel and pass ddddocr/common_det.onnx")
    return Path(ddddocr.__file__).parent / "common_det.onnx"


def render(rng: random.Random) -> Image.Image:
    """One image: a light background (plain, gradient or noisy with lines and dots), 2 to 5 words and up to
    4 single letters in dark colours, random faces and sizes, not overlapping."""
    base = tuple(rng.randint(190, 255) for _ in range(3))
    kind = rng.choice(("plain", "gradient", "noisy"))
    pixels = numpy.full((SIZE, SIZE, 3), base, numpy.float32)
    if kind == "gradient":
        pixels *= numpy.linspace(0.75, 1.0, SIZE, dtype=numpy.float32)[:, None, None]
    if kind == "noisy":
        pixels += numpy.random.default_rng(rng.randrange(2**32)).normal(0, 18, pixels.shape).astype(numpy.float32)
    image = Image.fromarray(pixels.clip(0, 255).astype(numpy.uint8))
    draw = ImageDraw.Draw(image)
    if kind == "noisy":
        for _ in range(8):
            draw.line([(rng.randrange(SIZE), rng.randrange(SIZE)) for _ in range(2)],
                      fill=tuple(rng.randint(60, 200) for _ in range(3)), width=rng.randint(1, 3))
        for _ in range(120):
            x, y = rng.randrange(SIZE), rng.randrange(SIZE)
            draw.ellipse((x, y, x + 3, y + 3), fill=tuple(rng.randint(60, 220) for _ in range(3)))
    taken: list[tuple[int, int, int, int]] = []
    items = [rng.choice(WORDS) for _ in range(rng.randint(2, 5))]
    items += [rng.choice("ABCDEFGHKMNPRSTWXYZ23456789") for _ in range(rng.randint(0, 4))]
    for text in items:
        font = ImageFont.truetype(str(FONTS / rng.choice(FACES)), rng.randint(22, 60))
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        for _ in range(30):  # a free place, if there is one
            x, y = rng.randint(4, SIZE - 4 - right), rng.randint(4, SIZE - 4 - bottom)
            box = (x + left, y + top, x + right, y + bottom)
            if all(box[2] < t[0] or box[0] > t[2] or box[3] < t[1] or box[1] > t[3] for t in taken):
                taken.append(box)
                draw.text((x, y), text, font=font, fill=tuple(rng.randint(0, 90) for _ in range(3)))
                break
    return image.filter(ImageFilter.GaussianBlur(0.6)) if kind == "noisy" else image


def write_images(work: Path, train: int, held_out: int) -> None:
    if work.exists():
        shutil.rmtree(work)
    rng = random.Random(0)
    for folder, count in (("train", train), ("held_out", held_out)):
        (work / folder).mkdir(parents=True)
        for index in range(count):
            render(rng).save(work / folder / f"{index:03d}.png")
    (work / "data.py").write_text(DATA)


def boxes_found(detector: Path, work: Path) -> list[int]:
    """The unpruned detector's boxes per image (train, then held out), through hwprune's decode of its output."""
    from hwprune.frontends import load_model, user_function

    loaded = load_model(f"onnx:{detector}")
    decode = loaded.capabilities.detections
    if decode is None:
        sys.exit(f"{detector}: no box decode ({loaded.capabilities.boxes_unmeasured})")
    images = [x for name in ("train", "held_out") for x in user_function(str(work / "data.py"), name)()]
    with torch.no_grad():
        return [len(decode([loaded.module(x)], tuple(x.shape))[0]) for x in images]


def hwprune(*args: str, quiet: bool = False) -> float:
    """Run the CLI as a user would; its seconds. Its output goes to this one's unless ``quiet``."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "hwprune", *args], check=True,
                   stdout=subprocess.DEVNULL if quiet else None)
    return time.perf_counter() - started


def prunable(model: str, out: Path) -> tuple[int, int]:
    """How many of the model's channel groups ``hwprune analyze`` finds prunable, of how many."""
    hwprune("analyze", model, "--out", str(out), quiet=True)
    groups = json.loads(out.read_text())["groups"]
    return sum(g["prunable"] for g in groups), len(groups)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("detector", nargs="?", help="common_det.onnx (default: the installed ddddocr package's)")
    parser.add_argument("--work", default="/tmp/hwprune-ddddocr", help="images, data.py and the build go here")
    parser.add_argument("--train", type=int, default=48, help="rendered training images (compile takes 16)")
    parser.add_argument("--held-out", type=int, default=16, help="rendered images recovery is measured on")
    parser.add_argument("--latency", type=float, default=0.7)
    parser.add_argument("--epochs", type=int, default=2, help="recovery epochs (steps: epochs x --train)")
    parser.add_argument("--lr", default="1e-3", help="recovery learning rate (default: recover's own, 1e-3)")
    args = parser.parse_args()
    detector, work = detector_path(args.detector).resolve(), Path(args.work).resolve()
    if not detector.is_file():
        sys.exit(f"{detector}: no such file")
    write_images(work, args.train, args.held_out)
    found = boxes_found(detector, work)
    print(f"unpruned detector on the {len(found)} rendered images: {sum(found)} boxes, {sum(n > 0 for n in found)} "
          f"images with at least one (per image: min {min(found)}, median {sorted(found)[len(found) // 2]}, "
          f"max {max(found)})", flush=True)
    build = work / "build"
    before = prunable(f"onnx:{detector}", work / "analyze_before.json")
    seconds = {"compile": hwprune("compile", f"onnx:{detector}", "--target", "cpu", "--latency", str(args.latency),
                                  "--calib-data", f"{work}/data.py:train", "--out", str(build))}
    after = prunable(f"onnx:{build / 'pruned.onnx'}", work / "analyze_after.json")
    seconds["recover"] = hwprune("recover", str(build), "--data", f"{work}/data.py:train", "--eval-data",
                                 f"{work}/data.py:held_out", "--epochs", str(args.epochs), "--batch-size", "1",
                                 "--lr", args.lr)
    report = json.loads((build / "report.json").read_text())
    budget, recovery = report["budget"], report["recovery"]
    pruned = sum(g["keep"] < g["of"] for g in report["groups"])

    def f1(value: float | None) -> str:
        return "no boxes" if value is None else f"{value:.3f}"

    def times(value: float | None) -> str:
        return "not measured" if value is None else f"{value:.2f}x"

    print(f"\ndetector {detector} ({os.path.getsize(detector) / 1e6:.1f} MB), input {report['input_shape']}")
    print(f"groups prunable: {before[0]} of {before[1]} (unpruned file), {after[0]} of {after[1]} (pruned.onnx); "
          f"the plan pruned {pruned}")
    measured = (f", measured fraction {budget['measured_fraction']:.3f} (95% interval "
                f"{budget['interval'][0]:.3f} .. {budget['interval'][1]:.3f}, {budget['pairs']} pairs)"
                if budget["interval"] else "")
    print(f"latency {args.latency}: verdict {budget['verdict']}{measured}, speedup "
          f"{times(report['speedup']['measured'])} (predicted {report['speedup']['predicted']:.2f}x)")
    print(f"box F1 against the unpruned model: compile {f1(report['fidelity']['box_agreement'])} (its "
          f"{min(16, args.train)} calibration images); recover before {f1(recovery['before']['box_agreement'])}, "
          f"after {f1(recovery['after']['box_agreement'])} (the {args.held_out} held-out images, "
          f"{args.epochs * args.train} steps of 1 image, lr {args.lr})")
    print(f"output cosine: before {recovery['before']['cosine']:.4f}, after {recovery['after']['cosine']:.4f}; "
          f"recovered speedup {times(recovery['measured_speedup'])}; wall time: compile {seconds['compile']:.0f} s, "
          f"recover {seconds['recover']:.0f} s")


if __name__ == "__main__":
    main()
