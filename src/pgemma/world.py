"""A synthetic world of coloured shapes, and PaliGemma's tasks on it (chapters "The PaliGemma processor" and "Assembling PaliGemma").

No real PaliGemma weights can be downloaded here, so the book trains its own small PaliGemma.
It needs data whose answers are known exactly: this module draws scenes of a few coloured
shapes on varied backgrounds and, for each scene, writes the tasks in PaliGemma's prompt style:

    prompt                              answer (the "suffix")
    caption en                          a red circle left of a blue square
    answer en what colour is the circle?   red
    answer en how many shapes?          2
    detect square                       <loc0320><loc0512><loc0704><loc0896> square
    detect circle ; square              <loc...>x4 circle ; <loc...>x4 square

Everything is a pure function of an integer seed: `sample_scene(seed)` decides the scene,
`render(scene)` draws it and `example(seed)` picks one task for it. Seeds below
`HELDOUT_START` are for training and seeds from it on are held out, so the stream of training
examples is endless and never shows a held-out scene's seed.

Boxes follow PaliGemma: (y_min, x_min, y_max, x_max), each quantized to 1024 bins of the image
side and written as `<locNNNN>` tokens, detections joined by " ; ".

Note: shapes in a scene have distinct kinds (so "what colour is the circle?" has one answer)
and do not overlap horizontally (so "left of" is never ambiguous). Detection prompts only name
kinds that are present.
"""

import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

from PIL import Image, ImageDraw

from pgemma.loc_tokens import boxes_to_loc_tokens

HELDOUT_START = 1_000_000_000  # seeds >= this are the held-out split
TASKS = ("caption", "colour", "count", "detect")

# Saturated colours, far from the muted backgrounds, so a pixel's colour tells what it belongs to.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 215, 40),
    "purple": (150, 50, 200),
    "orange": (245, 140, 30),
}


@dataclass(frozen=True)
class WorldConfig:
    image_size: int = 64
    min_shapes: int = 1
    max_shapes: int = 2
    min_side: int = 14  # shape sides in pixels; larger shapes are easier to see and to box
    max_side: int = 26
    colours: tuple[str, ...] = ("red", "green", "blue", "yellow")
    kinds: tuple[str, ...] = ("circle", "square", "triangle")
    colour_jitter: int = 15  # each channel of a shape's colour moves by up to this much
    task_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)  # caption, colour, count, detect

    def __post_init__(self):
        if not 1 <= self.min_shapes <= self.max_shapes <= len(self.kinds):
            raise ValueError(
                f"need 1 <= min_shapes <= max_shapes <= {len(self.kinds)} kinds, got "
                f"min_shapes={self.min_shapes}, max_shapes={self.max_shapes}"
            )
        if self.max_shapes * (self.min_side + 2) > self.image_size:
            raise ValueError(
                f"{self.max_shapes} shapes of side >= {self.min_side} do not fit side "
                f"by side in {self.image_size} px; lower max_shapes or min_side"
            )
        unknown = set(self.colours) - set(PALETTE)
        if unknown:
            raise ValueError(f"unknown colours {sorted(unknown)}; choose from {sorted(PALETTE)}")
        if len(self.task_weights) != len(TASKS):
            raise ValueError(f"task_weights needs one weight per task {TASKS}, got {self.task_weights}")

    @classmethod
    def tiny(cls) -> "WorldConfig":
        """32 px scenes of one or two large shapes, for tests."""
        return cls(image_size=32, min_side=10, max_side=14)


class Shape(NamedTuple):
    kind: str
    colour: str
    rgb: tuple[int, int, int]
    box: tuple[int, int, int, int]  # (y_min, x_min, y_max, x_max) in pixels, max exclusive


class Scene(NamedTuple):
    seed: int
    size: int
    background: tuple[tuple[int, int, int], tuple[int, int, int]]  # top and bottom colours
    shapes: tuple[Shape, ...]  # sorted left to right


class Example(NamedTuple):
    image: Image.Image
    prefix: str  # the prompt, e.g. "caption en"
    suffix: str  # the answer the model learns to write
    task: str  # one of TASKS
    scene: Scene


def split_of(seed: int) -> str:
    """'train' or 'heldout'."""
    if seed < 0:
        raise ValueError(f"seeds are non-negative integers, got {seed}")
    return "heldout" if seed >= HELDOUT_START else "train"


def split_seeds(split: str, start: int = 0) -> Iterator[int]:
    """Endless seeds of a split: train 0, 1, 2, ..., held-out HELDOUT_START, HELDOUT_START+1, ..."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    seed = start + (HELDOUT_START if split == "heldout" else 0)
    while split == "heldout" or seed < HELDOUT_START:
        yield seed
        seed += 1


def _muted(rng: random.Random) -> tuple[int, int, int]:
    grey = rng.randint(40, 215)
    return tuple(min(255, max(0, grey + rng.randint(-12, 12))) for _ in range(3))


def sample_scene(seed: int, cfg: WorldConfig = WorldConfig()) -> Scene:
    """Decide a scene (no drawing): how many shapes, which, where."""
    rng = random.Random(seed)
    n = rng.randint(cfg.min_shapes, cfg.max_shapes)
    kinds = rng.sample(cfg.kinds, n)
    while True:  # redraw the sides until the shapes fit side by side with 2 px gaps
        sides = [rng.randint(cfg.min_side, cfg.max_side) for _ in range(n)]
        slack = cfg.image_size - sum(sides) - 2 * (n - 1)
        if slack >= 0:
            break
    # Split the slack into n + 1 random gaps (before, between, after the shapes).
    cuts = sorted(rng.randint(0, slack) for _ in range(n))
    gaps = [b - a for a, b in zip([0] + cuts, cuts + [slack])]
    shapes, x = [], 0
    for kind, side, gap in zip(kinds, sides, gaps):
        x += gap
        y = rng.randint(0, cfg.image_size - side)
        colour = rng.choice(cfg.colours)
        rgb = tuple(min(255, max(0, c + rng.randint(-cfg.colour_jitter, cfg.colour_jitter))) for c in PALETTE[colour])
        shapes.append(Shape(kind, colour, rgb, (y, x, y + side, x + side)))
        x += side + 2
    return Scene(seed, cfg.image_size, (_muted(rng), _muted(rng)), tuple(shapes))


def render(scene: Scene) -> Image.Image:
    """Draw a scene: a vertical gradient background, then each shape filling its box exactly."""
    size = scene.size
    image = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(image)
    (r0, g0, b0), (r1, g1, b1) = scene.background
    for row in range(size):
        t = row / max(1, size - 1)
        draw.line(
            [(0, row), (size - 1, row)],
            fill=(round(r0 + t * (r1 - r0)), round(g0 + t * (g1 - g0)), round(b0 + t * (b1 - b0))),
        )
    for shape in scene.shapes:
        y0, x0, y1, x1 = shape.box
        corners = [x0, y0, x1 - 1, y1 - 1]  # PIL's boxes include their last pixel
        if shape.kind == "circle":
            draw.ellipse(corners, fill=shape.rgb)
        elif shape.kind == "square":
            draw.rectangle(corners, fill=shape.rgb)
        elif shape.kind == "triangle":
            draw.polygon([(x0, y1 - 1), (x1 - 1, y1 - 1), ((x0 + x1 - 1) / 2, y0)], fill=shape.rgb)
        elif shape.kind == "diamond":
            xm, ym = (x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2
            draw.polygon([(xm, y0), (x1 - 1, ym), (xm, y1 - 1), (x0, ym)], fill=shape.rgb)
        else:
            raise ValueError(f"no drawing for shape kind {shape.kind!r}")
    return image


def box_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection over union of two (y_min, x_min, y_max, x_max) boxes."""
    inter_h = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_w = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_h * inter_w
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def caption(scene: Scene) -> str:
    """'a red circle left of an orange square' (shapes named left to right)."""
    return " left of ".join(f"{'an' if s.colour[0] in 'aeiou' else 'a'} {s.colour} {s.kind}" for s in scene.shapes)


def scene_tasks(scene: Scene, rng: random.Random | None = None) -> dict[str, tuple[str, str]]:
    """Every task on one scene as {task: (prefix, suffix)}; `rng` picks which shapes are asked about."""
    rng = rng or random.Random(scene.seed)
    asked = rng.choice(scene.shapes)
    detected = rng.sample(scene.shapes, rng.randint(1, len(scene.shapes)))
    return {
        "caption": ("caption en", caption(scene)),
        "colour": (f"answer en what colour is the {asked.kind}?", asked.colour),
        "count": ("answer en how many shapes?", str(len(scene.shapes))),
        "detect": (
            "detect " + " ; ".join(s.kind for s in detected),
            " ; ".join(f"{boxes_to_loc_tokens(s.box, scene.size)} {s.kind}" for s in detected),
        ),
    }


def example(seed: int, cfg: WorldConfig = WorldConfig(), task: str | None = None) -> Example:
    """The training or held-out example of a seed: a drawn scene and one task on it.

    Args:
        seed: any non-negative integer; see `split_of`.
        task: force one of TASKS instead of drawing it from `cfg.task_weights`.
    """
    if task is not None and task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    scene = sample_scene(seed, cfg)
    rng = random.Random(f"task-{seed}")  # independent of the scene's own draws
    task = task or rng.choices(TASKS, weights=cfg.task_weights)[0]
    prefix, suffix = scene_tasks(scene, rng)[task]
    return Example(render(scene), prefix, suffix, task, scene)


def examples(split: str = "train", cfg: WorldConfig = WorldConfig(), start: int = 0) -> Iterator[Example]:
    """The endless stream of examples of a split, from its `start`-th seed on."""
    for seed in split_seeds(split, start):
        yield example(seed, cfg)


def text_corpus(cfg: WorldConfig = WorldConfig(), num_scenes: int = 2000) -> list[str]:
    """Prompts and answers of the first training scenes, without <loc> tokens: tokenizer training text."""
    texts = []
    for seed in range(num_scenes):
        for prefix, suffix in scene_tasks(sample_scene(seed, cfg)).values():
            texts += [prefix, re.sub(r"<loc\d{4}>", "", suffix).strip()]
    return texts
