"""A procedural image-text world in which prompt learning and prompt diffusion can be measured.

Classes are colour x shape combinations (8 x 5 = 40); size, count, position, rotation, background,
clutter and noise vary within a class and are named in the pre-training captions, not in class
names. Domains re-render the same classes the way ImageNet's variants re-render ImageNet: the
source `photo`, an outline `sketch`, heavy `clutter` with occluders, a shifted `palette`, and a
dark, noisy `night`. Everything is a deterministic function of (seed, domain, split, class, index),
so the world, its split file and the CLIP pre-trained on it never depend on which experiment ran
first.

The on-disk layout (written by `write_world`, read by the MiniWorld datasets in datasets/):

    ROOT/miniworld/images/<domain>/<class_folder>/<split>_<i>.png
    ROOT/miniworld/split_zhou_MiniWorld.json              source domain: train / val / test
    ROOT/miniworld/split_zhou_MiniWorld<Domain>.json      each shifted domain: test only
    ROOT/miniworld/world.json                             recipe and hash of what was written
"""

from __future__ import annotations

import colorsys
import hashlib
import json
import math
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (240, 135, 20),
    "yellow": (235, 220, 40),
    "green": (40, 190, 60),
    "cyan": (40, 210, 215),
    "blue": (40, 70, 225),
    "purple": (150, 50, 205),
    "pink": (245, 130, 190),
}
# five shapes a 4-layer ViT tells apart at 32 pixels within a few hundred steps: a cross and a
# star (the first choice) stayed confused with the square for 1,500 steps (linear probe 84 %)
SHAPES = ("circle", "square", "triangle", "ring", "bar")
SOURCE = "photo"
DOMAINS = ("photo", "sketch", "clutter", "palette", "night")
SPLITS = ("train", "val", "test")
DATASET_DIR = "miniworld"
# bump when rendering changes: the digest must name what is on disk
WORLD_VERSION = 2


@dataclass(frozen=True)
class WorldSpec:
    """What defines a world on disk: change any field and it is a different world."""

    seed: int = 0
    size: int = 32
    n_train: int = 40
    n_val: int = 10
    n_test: int = 30
    domains: tuple[str, ...] = DOMAINS
    colours: tuple[str, ...] = tuple(COLOURS)
    shapes: tuple[str, ...] = SHAPES
    # The world's downstream camera turns every hue by this many degrees, a white balance the
    # pre-training crawl never saw (as downstream datasets differ from CLIP's web images): it
    # costs zero-shot accuracy and leaves the information in the image, so there is something
    # for a learned prompt to recover.
    camera_hue: float = 35.0
    # Per-image cameras (the `percam` world): each image draws camera k uniformly from its own
    # random stream, its hues turn by camera_hue + cameras[k], and it stamps its tell TAGS[k] on
    # the finished image. The turn changes which class an image's colours look like, differently
    # per camera, so no shared prompt can undo it; the tell shows which turn it was, so a model
    # that sees the image can. () = one camera for every image.
    cameras: tuple[float, ...] = ()

    def __post_init__(self):
        unknown = [d for d in self.domains if d not in DOMAINS]
        if unknown or SOURCE not in self.domains:
            raise ValueError(
                f"World domains {list(self.domains)} must include {SOURCE!r} and come from {DOMAINS}."
            )
        if min(self.n_train, self.n_val, self.n_test) < 1 or self.size < 16:
            raise ValueError("A world needs n_train, n_val, n_test >= 1 and size >= 16.")
        if len(self.cameras) > len(TAGS):
            raise ValueError(
                f"A world has at most {len(TAGS)} cameras (one tag each); got {len(self.cameras)}."
            )

    @property
    def kind(self) -> str:
        """`percam` for a world with per-image cameras, else `default` (names folders, datasets)."""
        return "percam" if self.cameras else "default"

    def digest(self) -> str:
        fields = asdict(self)
        if not self.cameras:
            # worlds without per-image cameras keep the digest (and cached CLIP) they had before
            del fields["cameras"]
        blob = json.dumps({"version": WORLD_VERSION, **fields}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# each camera's tell, stamped on the finished image (a camera's index picks one): nothing, or
# near-white bands TAG_WIDTH pixels high along the edges named. Top and bottom only, so the
# training augmentation's horizontal flip keeps the tell. Measured with the default world's CLIP
# (docs/RESULTS_MINIWORLD.md, the per-image-camera world): the bands are read (camera probe 96 %)
# but cost class information the more of them there are, so the world has two cameras
TAGS = ("", "top", "bottom", "top and bottom")
TAG_WIDTH = 3
# the named worlds `tools/miniworld.py --world` builds
WORLDS: dict[str, WorldSpec] = {
    "default": WorldSpec(),
    # the second camera turns hues by 60 degrees: most colours then look like a neighbouring
    # class's colour under the first camera (zero-shot 19 % on its images), while a prompt
    # learned on that camera alone still reaches 82 % (120 degrees: 37 %, no room to learn)
    "percam": WorldSpec(camera_hue=0.0, cameras=(0.0, 60.0)),
}


def dataset_dir(kind: str = "default") -> str:
    """The world's folder under the data root: miniworld, or miniworld_<kind>."""
    return DATASET_DIR if kind == "default" else f"{DATASET_DIR}_{kind}"


def dataset_prefix(kind: str = "default") -> str:
    """The registered dataset name of the world's source domain: MiniWorld, MiniWorldPercam."""
    return "MiniWorld" if kind == "default" else f"MiniWorld{kind.capitalize()}"


def classes(spec: WorldSpec | None = None) -> list[tuple[str, str]]:
    """(colour, shape) per label. Base (first half) and new (second half) are a checkerboard of
    the grid, so every colour and every shape occurs in both halves: new classes are new
    combinations of attributes seen on base."""
    spec = spec or WorldSpec()
    grid = [(c, s, ci, si) for ci, c in enumerate(spec.colours) for si, s in enumerate(spec.shapes)]
    base = [(c, s) for c, s, ci, si in grid if (ci + si) % 2 == 0]
    new = [(c, s) for c, s, ci, si in grid if (ci + si) % 2 == 1]
    return base + new


def class_name(colour: str, shape: str) -> str:
    return f"{colour} {shape}"


def folder_name(colour: str, shape: str) -> str:
    return f"{colour}_{shape}"


def domain_dataset_name(domain: str, kind: str = "default") -> str:
    """The registered dataset name of a domain: MiniWorld (source) or MiniWorld<Domain>, with the
    world's kind after MiniWorld for the other worlds (MiniWorldPercamSketch)."""
    prefix = dataset_prefix(kind)
    return prefix if domain == SOURCE else f"{prefix}{domain.capitalize()}"


def _rng(*keys: int | str) -> np.random.Generator:
    """An independent stream per (seed, domain, split, class, index)."""
    digest = hashlib.sha256("/".join(map(str, keys)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


# ---- rendering -------------------------------------------------------------------------------
SUPERSAMPLE = 4
# objects turn by up to this angle (radians, ~23 degrees) either way: a small ViT trained for a
# minute on the CPU learns shape under that, and stays near chance under full rotation
MAX_ROTATION = 0.4
# half-height of a bar and hole radius of a ring, relative to the shape's radius
BAR_WIDTH = 0.3
RING_HOLE = 0.5


def _shape_points(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple]:
    """Polygon vertices of a shape (circle handled separately), rotated by `angle`."""
    if shape == "square":
        pts = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
        pts = [(x * 0.82, y * 0.82) for x, y in pts]
    elif shape == "triangle":
        pts = [
            (math.cos(a), math.sin(a))
            for a in (-math.pi / 2 + k * 2 * math.pi / 3 for k in range(3))
        ]
        pts = [(x * 1.08, y * 1.08 + 0.12) for x, y in pts]
    elif shape == "bar":
        pts = [(-1, -BAR_WIDTH), (1, -BAR_WIDTH), (1, BAR_WIDTH), (-1, BAR_WIDTH)]
    else:
        raise ValueError(f"Unknown shape {shape!r}; the world has {SHAPES}.")
    ca, sa = math.cos(angle), math.sin(angle)
    return [(cx + r * (x * ca - y * sa), cy + r * (x * sa + y * ca)) for x, y in pts]


def _draw_shape(draw, shape, cx, cy, r, angle, fill, outline=None, width=0):
    if shape == "ring":
        rr = r * 0.9
        if fill is not None:
            draw.ellipse(
                (cx - rr, cy - rr, cx + rr, cy + rr), outline=fill, width=int(rr * (1 - RING_HOLE))
            )
        else:
            for k in (1.0, RING_HOLE):
                box = (cx - rr * k, cy - rr * k, cx + rr * k, cy + rr * k)
                draw.ellipse(box, outline=outline, width=width)
    elif shape == "circle":
        box = (cx - r * 0.9, cy - r * 0.9, cx + r * 0.9, cy + r * 0.9)
        draw.ellipse(box, fill=fill, outline=outline, width=width)
    else:
        pts = _shape_points(shape, cx, cy, r, angle)
        if fill is not None:
            draw.polygon(pts, fill=fill)
        if outline is not None:
            draw.line([*pts, pts[0]], fill=outline, width=width, joint="curve")


def _jitter(rgb, rng, amount=22):
    return tuple(int(np.clip(v + rng.integers(-amount, amount + 1), 0, 255)) for v in rgb)


def _shift_palette(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """The `palette` domain's colour transform: washed-out pastel with a slight hue turn."""
    hue, light, sat = colorsys.rgb_to_hls(*(v / 255 for v in rgb))
    hue = (hue + 0.035) % 1.0
    light = 0.55 + 0.35 * light
    sat = 0.45 * sat
    return tuple(int(round(v * 255)) for v in colorsys.hls_to_rgb(hue, light, sat))


@dataclass(frozen=True)
class Scene:
    """The nuisance attributes of one rendered image (named in its caption)."""

    colour: str
    shape: str
    domain: str
    count: int
    size: str  # "small" | "large"


def sample_scene(colour: str, shape: str, domain: str, rng: np.random.Generator) -> Scene:
    return Scene(
        colour, shape, domain, int(rng.choice([1, 1, 2])), str(rng.choice(["small", "large"]))
    )


def render(scene: Scene, size: int, rng: np.random.Generator) -> Image.Image:
    """Draw one image of `scene` (size x size RGB), deterministic given rng."""
    S = size * SUPERSAMPLE
    domain = scene.domain
    if domain == "sketch":
        bg = np.full((S, S, 3), rng.integers(215, 250), dtype=np.float32)
    elif domain == "palette":
        base = np.array(_shift_palette(tuple(int(v) for v in rng.integers(20, 110, size=3))))
        bg = np.ones((S, S, 3), dtype=np.float32) * base * 0.8
    else:
        base = rng.integers(0, 80, size=3).astype(np.float32)
        ramp = np.linspace(0, 1, S, dtype=np.float32)
        gx, gy = rng.uniform(-40, 40, size=2)
        bg = base + gx * ramp[None, :, None] + gy * ramp[:, None, None]
    img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)

    def distractor(n: int, scale: float):
        for _ in range(n):
            c = tuple(int(v) for v in rng.integers(60, 200, size=3))
            x, y = rng.uniform(0, S, size=2)
            rr = S * scale * rng.uniform(0.5, 1.0)
            if rng.random() < 0.5:
                draw.ellipse((x - rr / 3, y - rr / 3, x + rr / 3, y + rr / 3), fill=c)
            else:
                x2, y2 = x + rng.uniform(-rr, rr), y + rng.uniform(-rr, rr)
                draw.line((x, y, x2, y2), fill=c, width=max(1, int(S * 0.02)))

    if domain in ("photo", "night", "palette"):
        distractor(int(rng.integers(0, 3)), 0.12)
    if domain == "clutter":
        distractor(int(rng.integers(6, 10)), 0.22)

    count = scene.count
    lo, hi = (0.22, 0.28) if scene.size == "small" else (0.32, 0.40)
    if count == 2:
        lo, hi = lo * 0.8, hi * 0.8
    colour = COLOURS[scene.colour]
    placed = []
    for _ in range(count):
        r = S * rng.uniform(lo, hi)
        for _try in range(20):
            cx, cy = rng.uniform(r, S - r, size=2)
            if all(math.hypot(cx - px, cy - py) > r + pr for px, py, pr in placed):
                break
        placed.append((cx, cy, r))
        angle = rng.uniform(-MAX_ROTATION, MAX_ROTATION)
        fill = _jitter(colour, rng)
        if domain == "palette":
            fill = _shift_palette(fill)
        if domain == "sketch":
            width = max(2, int(S * rng.uniform(0.035, 0.05)))
            _draw_shape(draw, scene.shape, cx, cy, r, angle, None, outline=fill, width=width)
        else:
            _draw_shape(draw, scene.shape, cx, cy, r, angle, fill)

    if domain == "clutter":
        # occluders in background colours, crossing the objects
        for _ in range(int(rng.integers(2, 4))):
            c = tuple(int(v) for v in rng.integers(0, 90, size=3))
            x, y = rng.uniform(0, S, size=2)
            a = rng.uniform(0, math.pi)
            dx, dy = math.cos(a) * S, math.sin(a) * S
            draw.line(
                (x - dx, y - dy, x + dx, y + dy), fill=c, width=int(S * rng.uniform(0.05, 0.09))
            )
        distractor(int(rng.integers(3, 6)), 0.15)

    img = img.resize((size, size), Image.BILINEAR if domain != "sketch" else Image.LANCZOS)
    arr = np.asarray(img).astype(np.float32)
    if domain == "night":
        arr = arr * rng.uniform(0.35, 0.5) + rng.normal(0, 16, size=arr.shape)
    elif domain in ("clutter", "photo"):
        arr = arr + rng.normal(0, 12, size=arr.shape)
    else:
        arr = arr + rng.normal(0, 8, size=arr.shape)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if domain == "night":
        img = img.filter(ImageFilter.GaussianBlur(0.6))
    return img


def camera_of(spec: WorldSpec, label: int, domain: str, split: str, index: int) -> int:
    """The camera of one image of a per-image-camera world (its own stream: drawing it leaves the
    scene's rendering unchanged); -1 in a world with one camera."""
    if not spec.cameras:
        return -1
    colour, shape = classes(spec)[label]
    return int(
        _rng(spec.seed, "camera", domain, split, colour, shape, index).integers(len(spec.cameras))
    )


def render_example(
    spec: WorldSpec, label: int, domain: str, split: str, index: int
) -> tuple[Image.Image, Scene]:
    """The world's image number `index` of class `label` in (domain, split)."""
    colour, shape = classes(spec)[label]
    rng = _rng(spec.seed, domain, split, colour, shape, index)
    scene = sample_scene(colour, shape, domain, rng)
    camera = camera_of(spec, label, domain, split, index)
    if camera < 0:
        return turn_hue(render(scene, spec.size, rng), spec.camera_hue), scene
    img = turn_hue(render(scene, spec.size, rng), spec.camera_hue + spec.cameras[camera])
    return stamp_tag(img, TAGS[camera], rng), scene


def stamp_tag(img: Image.Image, tag: str, rng: np.random.Generator) -> Image.Image:
    """`img` with near-white bands TAG_WIDTH pixels high along the edges `tag` names ("top",
    "bottom", "top and bottom"; "" leaves the image as it is and draws nothing from rng)."""
    if not tag:
        return img
    arr = np.asarray(img).copy()
    value = int(rng.integers(225, 256))
    if "top" in tag:
        arr[:TAG_WIDTH] = value
    if "bottom" in tag:
        arr[-TAG_WIDTH:] = value
    return Image.fromarray(arr)


def turn_hue(img: Image.Image, degrees: float) -> Image.Image:
    """`img` with every hue turned by `degrees` (saturation and value kept)."""
    if not degrees:
        return img
    hsv = np.asarray(img.convert("HSV")).astype(np.int32)
    hsv[..., 0] = (hsv[..., 0] + round(degrees / 360 * 256)) % 256
    return Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB")


# ---- captions --------------------------------------------------------------------------------
COUNT_WORDS = {1: "one", 2: "two"}
DOMAIN_WORDS = {
    "photo": ["a photo of", "a picture of", "an image of"],
    "sketch": ["a sketch of", "a drawing of", "an outline drawing of"],
    "clutter": ["a cluttered photo of", "a messy picture of", "a busy photo of"],
    "palette": ["a pastel painting of", "a faded picture of", "a washed-out photo of"],
    "night": ["a dark photo of", "a night photo of", "a dim picture of"],
}


def caption(scene: Scene, rng: np.random.Generator, mode: str = "full") -> str:
    """A pre-training caption: the scene's colour and shape (mode full; `shape` or `colour` name
    one of them only, as web captions leave things out), with its count, often its size and
    domain, in one of several templates."""
    noun = scene.shape if scene.count == 1 else scene.shape + "s"
    article = "a" if scene.count == 1 else COUNT_WORDS[scene.count]
    size = f"{scene.size} " if rng.random() < 0.5 else ""
    if mode == "shape":
        thing = f"{article} {size}{noun}"
    elif mode == "colour":
        thing = (
            f"{article} {size}{scene.colour} thing"
            if scene.count == 1
            else f"two {scene.colour} things"
        )
    else:
        thing = f"{article} {size}{scene.colour} {noun}"
    prefix = rng.choice(DOMAIN_WORDS[scene.domain]) if rng.random() < 0.7 else ""
    template = rng.integers(0, 3)
    if template == 0 and prefix:
        return f"{prefix} {thing}."
    if template == 1:
        return f"{thing}."
    return f"there is {thing} in this picture."


# ---- on disk ---------------------------------------------------------------------------------
# per-image-camera worlds: {image path relative to images/: camera index}
CAMERAS_FILE = "cameras.json"


def _split_sizes(spec: WorldSpec, domain: str) -> dict[str, int]:
    if domain == SOURCE:
        return {"train": spec.n_train, "val": spec.n_val, "test": spec.n_test}
    return {"test": spec.n_test}


def write_world(root: str, spec: WorldSpec | None = None, progress: bool = True) -> str:
    """Write the world under root/<dataset_dir(kind)> (skipped when world.json says it is already
    there); returns that folder. A per-image-camera world also writes cameras.json (CAMERAS_FILE)."""
    from promptdiff.engine.utils import write_json

    spec = spec or WorldSpec()
    folder = os.path.join(root, dataset_dir(spec.kind))
    stamp = os.path.join(folder, "world.json")
    if os.path.isfile(stamp):
        with open(stamp) as f:
            if json.load(f).get("digest") == spec.digest():
                return folder
    names = classes(spec)
    jobs = [
        (domain, split, label, i)
        for domain in spec.domains
        for split, n in _split_sizes(spec, domain).items()
        for label in range(len(names))
        for i in range(n)
    ]
    splits: dict[str, dict[str, list]] = {d: {s: [] for s in SPLITS} for d in spec.domains}
    cameras: dict[str, int] = {}
    bar = _progress(jobs, "rendering the miniature world", progress)
    for domain, split, label, i in bar:
        colour, shape = names[label]
        rel = f"{domain}/{folder_name(colour, shape)}/{split}_{i:03d}.png"
        path = os.path.join(folder, "images", rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        img, _ = render_example(spec, label, domain, split, i)
        img.save(path)
        splits[domain][split].append([rel, label, class_name(colour, shape)])
        if spec.cameras:
            cameras[rel] = camera_of(spec, label, domain, split, i)
    for domain, split_lists in splits.items():
        name = domain_dataset_name(domain, spec.kind)
        write_json(split_lists, os.path.join(folder, f"split_zhou_{name}.json"))
    if cameras:
        write_json(cameras, os.path.join(folder, CAMERAS_FILE))
    write_json({"digest": spec.digest(), "spec": asdict(spec), "classes": names}, stamp)
    return folder


def _progress(items: Iterable, desc: str, enabled: bool):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, leave=False, mininterval=1.0)


# ---- a tiny CLIP pre-trained on the world ----------------------------------------------------
@dataclass(frozen=True)
class ClipRecipe:
    """Architecture and contrastive pre-training of the world's CLIP (its hash names the cache)."""

    seed: int = 0
    embed_dim: int = 64
    vision_layers: int = 4
    vision_width: int = 64
    patch_size: int = 4
    text_width: int = 64
    text_layers: int = 3
    # measured on the full world (2 CPU cores, ~0.15 s a step): shape is unread for ~300 steps,
    # then the linear probe climbs 45 % (250) -> 56 % (500) -> 78 % (1000) -> 81 % (1500)
    steps: int = 1000
    # a batch holds one image of every class: no two captions in it describe the same class (no
    # false negatives), and every colour comes with all its shapes, so captions can only be
    # matched by seeing shape as well as colour (hard negatives)
    batches_per_step: int = 1
    shape_blocks: int = 8
    colour_blocks: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: int = 50
    pool_per_class: int = 150
    train_token_embedding: bool = True
    # steps that spread the text tower's caption features apart before the contrastive training
    # (see pretrain_clip), and their learning rate
    text_warmup: int = 60
    # share of each domain in the pre-training images: mostly photos, a little of the rest, as a
    # web crawl holds some sketches and paintings; it sets how much the shifted domains lose
    domain_mix: tuple[tuple[str, float], ...] = (
        ("photo", 0.6),
        ("sketch", 0.1),
        ("clutter", 0.1),
        ("palette", 0.1),
        ("night", 0.1),
    )

    def digest(self, spec: WorldSpec) -> str:
        blob = json.dumps(
            {
                "version": WORLD_VERSION,
                "recipe": asdict(self),
                "world": pretraining_spec(spec).digest(),
            },
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def pretraining_spec(spec: WorldSpec) -> WorldSpec:
    """The part of a world its CLIP is pre-trained on: pre-training never sees a downstream camera,
    so worlds that differ only in their cameras share one CLIP (and its cache file)."""
    return WorldSpec(**{**asdict(spec), "camera_hue": WorldSpec.camera_hue, "cameras": ()})


def build_clip(recipe: ClipRecipe, size: int):
    """The CLIP package's own model class at the recipe's widths (fp32, random init)."""
    from promptdiff.backbone import tiny_clip

    return tiny_clip(
        seed=recipe.seed,
        embed_dim=recipe.embed_dim,
        image_resolution=size,
        vision_layers=recipe.vision_layers,
        vision_width=recipe.vision_width,
        patch_size=recipe.patch_size,
        text_width=recipe.text_width,
        text_layers=recipe.text_layers,
    )


CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def to_tensor(images: list[Image.Image]):
    """CLIP-normalised [N, 3, H, W] float tensor of PIL images (the test transform at native size)."""
    import torch

    pixels = np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im in images])
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def pretraining_pool(spec: WorldSpec, recipe: ClipRecipe, progress: bool = True):
    """Images (as a normalised tensor) and scenes the CLIP is pre-trained on: their own random
    streams, disjoint from every train/val/test image of the world."""
    names = classes(spec)
    domains = [d for d, _ in recipe.domain_mix if d in spec.domains]
    weights = np.array([w for d, w in recipe.domain_mix if d in spec.domains])
    weights = weights / weights.sum()
    images, scenes = [], []
    jobs = [(label, i) for label in range(len(names)) for i in range(recipe.pool_per_class)]
    for label, i in _progress(jobs, "rendering pre-training images", progress):
        colour, shape = names[label]
        rng = _rng(spec.seed, "pretrain", recipe.seed, colour, shape, i)
        domain = domains[int(rng.choice(len(domains), p=weights))]
        scene = sample_scene(colour, shape, domain, rng)
        images.append(render(scene, spec.size, rng))
        scenes.append(scene)
    return to_tensor(images), scenes


CAPTION_MODES = ("full", "shape", "colour")


def _tokens(texts: list[str], cache: dict):
    """Tokenised texts [N, 77], each distinct text tokenised once."""
    import torch

    from promptdiff.backbone.prompts import tokenize

    missing = [t for t in set(texts) if t not in cache]
    if missing:
        for t, tok in zip(missing, tokenize(missing)):
            cache[t] = tok
    return torch.stack([cache[t] for t in texts])


def clip_loss(logits, sizes: list[int]):
    """CLIP's symmetric contrastive loss within each contrast set (consecutive blocks of the
    given sizes on the diagonal of the image-text logits), averaged over the sets."""
    import torch
    import torch.nn.functional as F

    losses, start = [], 0
    for n in sizes:
        sub = logits[start : start + n, start : start + n]
        target = torch.arange(n)
        losses.append((F.cross_entropy(sub, target) + F.cross_entropy(sub.t(), target)) / 2)
        start += n
    return torch.stack(losses).mean()


def pretrain_clip(spec: WorldSpec, recipe: ClipRecipe, progress: bool = True, callback=None):
    """Train the world's CLIP with CLIP's symmetric contrastive loss on (image, caption) pairs."""
    import torch
    import torch.nn.functional as F

    from promptdiff.backbone.encoders import encode_image, encode_text_tokens

    pixels, scenes = pretraining_pool(spec, recipe, progress)
    names = classes(spec)
    model = build_clip(recipe, spec.size)
    torch.manual_seed(recipe.seed)
    rng = np.random.default_rng(recipe.seed)
    model.token_embedding.weight.requires_grad_(recipe.train_token_embedding)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in params if p.dim() >= 2 and "embedding" not in n]
    rest = [p for n, p in params if not (p.dim() >= 2 and "embedding" not in n)]
    optim = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": recipe.weight_decay},
            {"params": rest, "weight_decay": 0.0},
        ],
        lr=recipe.lr,
        # the multi-tensor update: bit-equal to the per-tensor loop (the cached CLIP's bytes are
        # unchanged, tested), and faster on CPU, where torch defaults to the loop
        foreach=True,
    )

    def lr_at(step: int) -> float:
        if step < recipe.warmup:
            return (step + 1) / recipe.warmup
        t = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
        return 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(optim, lr_at)
    token_cache: dict[str, torch.Tensor] = {}
    model.train()
    bar = _progress(range(recipe.steps), "pre-training the world's CLIP", progress)
    per_class = recipe.pool_per_class  # the pool holds each class's images in one block
    shape_of = np.array([spec.shapes.index(sc.shape) for sc in scenes])
    colour_of = np.array([spec.colours.index(sc.colour) for sc in scenes])
    by_shape = [np.flatnonzero(shape_of == k) for k in range(len(spec.shapes))]
    by_colour = [np.flatnonzero(colour_of == k) for k in range(len(spec.colours))]
    # Symmetry breaking: at CLIP's init every caption gets nearly the same feature (cosines of
    # 0.99), so the image tower receives no gradient towards shape, and the text tower none
    # towards shape words, until one side sees shape; measured, the pair then stays colour-only
    # for 1,000 steps. A short warm-up of the text tower alone on a uniformity loss (features of
    # distinct captions pushed apart, no labels) gives distinct shape words distinct features.
    warm = torch.optim.Adam(
        [p for n, p in params if not n.startswith("visual.")], lr=recipe.lr, foreach=True
    )
    for _ in range(recipe.text_warmup):
        sample = rng.choice(len(scenes), size=64, replace=False)
        texts = sorted({caption(scenes[i], rng, str(rng.choice(CAPTION_MODES))) for i in sample})
        txt = F.normalize(encode_text_tokens(model, _tokens(texts, token_cache)), dim=-1)
        gap = torch.cdist(txt, txt).square()
        off = ~torch.eye(len(texts), dtype=torch.bool)
        loss = torch.logsumexp(-2 * gap[off], 0) - math.log(int(off.sum()))
        warm.zero_grad(set_to_none=True)
        loss.backward()
        warm.step()
    for step in bar:
        # contrast sets without false negatives: one image per class (full captions), one per
        # shape (shape-only captions) and one per colour (colour-only captions); the shape sets
        # are what break the early colour-only solution, where shape words go unread
        blocks = [
            (
                np.arange(len(names)) * per_class + rng.integers(0, per_class, size=len(names)),
                "full",
            )
            for _ in range(recipe.batches_per_step)
        ]
        blocks += [
            (np.array([rng.choice(group) for group in by_shape]), "shape")
            for _ in range(recipe.shape_blocks)
        ]
        blocks += [
            (np.array([rng.choice(group) for group in by_colour]), "colour")
            for _ in range(recipe.colour_blocks)
        ]
        idx = np.concatenate([b for b, _ in blocks])
        texts = [caption(scenes[i], rng, mode) for b, mode in blocks for i in b]
        tokens = _tokens(texts, token_cache)
        img = F.normalize(encode_image(model, pixels[torch.as_tensor(idx)]), dim=-1)
        txt = F.normalize(encode_text_tokens(model, tokens), dim=-1)
        logits = model.logit_scale.exp() * img @ txt.t()
        loss = clip_loss(logits, [len(b) for b, _ in blocks])
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        if callback is not None:
            callback(step + 1, model, loss.item())
    model.token_embedding.weight.requires_grad_(True)
    return model.eval()


CACHE_DIR = os.path.expanduser("~/.cache/promptdiff")


def clip_cache_path(spec: WorldSpec, recipe: ClipRecipe) -> str:
    """Where the world's CLIP weights are cached (pre-trained or not yet)."""
    return os.path.join(CACHE_DIR, f"miniworld_clip-{recipe.digest(spec)}.pt")


def cached_clip(spec: WorldSpec, recipe: ClipRecipe, progress: bool = True) -> str:
    """Path of the world's CLIP weights under ~/.cache/promptdiff, pre-training them once."""
    from promptdiff.engine.utils import torch_save_atomic

    path = clip_cache_path(spec, recipe)
    if not os.path.isfile(path):
        model = pretrain_clip(spec, recipe, progress)
        torch_save_atomic(model.state_dict(), path)
    return path


# ---- world checks ----------------------------------------------------------------------------
ZS_TEMPLATE = "a photo of a {}."


def load_split_images(folder: str, domain: str, split: str, kind: str = "default"):
    """(pixels [N, 3, H, W], labels [N]) of one split of one domain, read from disk."""
    pixels, labels, _ = load_split(folder, domain, split, kind)
    return pixels, labels


def load_split(folder: str, domain: str, split: str, kind: str = "default"):
    """(pixels [N, 3, H, W], labels [N], image paths relative to images/) of one split."""
    import torch

    with open(os.path.join(folder, f"split_zhou_{domain_dataset_name(domain, kind)}.json")) as f:
        items = json.load(f)[split]
    images = [Image.open(os.path.join(folder, "images", rel)).convert("RGB") for rel, _, _ in items]
    rels = [rel for rel, _, _ in items]
    return to_tensor(images), torch.tensor([label for _, label, _ in items]), rels


def read_cameras(folder: str) -> dict[str, int]:
    """{image path: camera} of a per-image-camera world (CAMERAS_FILE), or one sentence."""
    path = os.path.join(folder, CAMERAS_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} is missing: {folder} is not a per-image-camera world; build it with "
            "`python tools/miniworld.py build --world percam --root ROOT`."
        )
    with open(path) as f:
        return json.load(f)


def image_features(model, pixels, batch: int = 500):
    """L2-normalised frozen image features [N, E]."""
    import torch
    import torch.nn.functional as F

    from promptdiff.backbone.encoders import encode_image

    with torch.no_grad():
        feats = [encode_image(model, pixels[i : i + batch]) for i in range(0, len(pixels), batch)]
    return F.normalize(torch.cat(feats).float(), dim=-1)


def text_features(model, texts: list[str]):
    import torch
    import torch.nn.functional as F

    from promptdiff.backbone.encoders import encode_text_tokens
    from promptdiff.backbone.prompts import tokenize

    with torch.no_grad():
        return F.normalize(encode_text_tokens(model, tokenize(texts)).float(), dim=-1)


def zero_shot_accuracy(model, feats, labels, names: list[str]) -> float:
    """Zero-shot top-1 (%) of image features against `names` in the ZeroshotCLIP template."""
    text = text_features(model, [ZS_TEMPLATE.format(n) for n in names])
    return (feats @ text.t()).argmax(1).eq(labels).float().mean().item() * 100


def linear_probe(train_x, train_y, test_x, test_y, epochs: int = 300, seed: int = 0) -> float:
    """Accuracy (%) of a multinomial logistic regression on frozen features (full-batch Adam)."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    n_cls = int(train_y.max()) + 1
    w = torch.zeros(train_x.shape[1], n_cls, requires_grad=True)
    b = torch.zeros(n_cls, requires_grad=True)
    optim = torch.optim.Adam([w, b], lr=0.05)
    for _ in range(epochs):
        loss = F.cross_entropy(train_x @ w * 10 + b, train_y) + 1e-4 * w.square().sum()
        optim.zero_grad()
        loss.backward()
        optim.step()
    with torch.no_grad():
        return (test_x @ w * 10 + b).argmax(1).eq(test_y).float().mean().item() * 100


@dataclass
class Check:
    name: str
    value: float
    low: float | None
    high: float | None
    unit: str = "%"

    @property
    def ok(self) -> bool:
        return (self.low is None or self.value >= self.low) and (
            self.high is None or self.value <= self.high
        )

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            want = f"in [{self.low:g}, {self.high:g}]"
        elif self.low is not None:
            want = f">= {self.low:g}"
        elif self.high is not None:
            want = f"<= {self.high:g}"
        else:
            want = "report only"
        value = f"{self.value:.3f}" if self.unit == "" else f"{self.value:.1f}{self.unit}"
        return f"{'PASS' if self.ok else 'FAIL'}  {self.name:<46} {value:>8}   (want {want})"


def zero_shot_halves(model, feats, labels, names: list[str], low, high) -> list[Check]:
    """Zero-shot accuracy on the base and on the new half of the classes (each half's images
    against its own class names), each a Check wanted within [low, high]."""
    half = math.ceil(len(names) / 2)
    checks = []
    for part, lo, hi in (("base", 0, half), ("new", half, len(names))):
        mask = (labels >= lo) & (labels < hi)
        acc = zero_shot_accuracy(model, feats[mask], labels[mask] - lo, names[lo:hi])
        checks.append(
            Check(f"zero-shot accuracy, {part} half ({int(mask.sum())} images)", acc, low, high)
        )
    return checks


def world_checks(folder: str, model, spec: WorldSpec) -> list[Check]:
    """Every figure of the world checks that needs only the CLIP (the CoOp figure is separate)."""
    names = [class_name(c, s) for c, s in classes(spec)]
    text = text_features(model, [ZS_TEMPLATE.format(n) for n in names])
    cos = text @ text.t()
    cos.fill_diagonal_(-1)
    checks = [
        Check("max text cosine between two classes' prompts", cos.max().item(), None, 0.95, "")
    ]
    train_x, train_y = load_split_images(folder, SOURCE, "train", spec.kind)
    test_x, test_y = load_split_images(folder, SOURCE, "test", spec.kind)
    f_train, f_test = image_features(model, train_x), image_features(model, test_x)
    checks.append(
        Check(
            "linear probe on frozen image features",
            linear_probe(f_train, train_y, f_test, test_y),
            90,
            None,
        )
    )
    checks += zero_shot_halves(model, f_test, test_y, names, 45, 80)
    source = zero_shot_accuracy(model, f_test, test_y, names)
    checks.append(Check(f"zero-shot accuracy, {SOURCE}, all classes", source, None, None))
    for domain in spec.domains:
        if domain == SOURCE:
            continue
        x, y = load_split_images(folder, domain, "test", spec.kind)
        acc = zero_shot_accuracy(model, image_features(model, x), y, names)
        checks.append(
            Check(
                f"zero-shot drop, {domain} vs {SOURCE} (at {acc:.1f}%)",
                source - acc,
                10,
                30,
                " pts",
            )
        )
    return checks


# what the per-image-camera world must show (issue 17): the camera is readable from the features,
# each camera's classes are readable within it, and one shared linear classifier cannot serve all
PERCAM_CAMERA_PROBE = 90.0
PERCAM_WITHIN_PROBE = 80.0
PERCAM_POOLED_GAP = 15.0
PERCAM_ZERO_SHOT = (20.0, 75.0)


def percam_checks(folder: str, model, spec: WorldSpec) -> list[Check]:
    """The per-image-camera world's figures that need only the CLIP (the CoOp ones are separate)."""
    import torch

    names = [class_name(c, s) for c, s in classes(spec)]
    half = math.ceil(len(names) / 2)
    cameras = read_cameras(folder)
    splits = {}
    for split in ("train", "test"):
        x, y, rels = load_split(folder, SOURCE, split, spec.kind)
        splits[split] = (image_features(model, x), y, torch.tensor([cameras[r] for r in rels]))
    (f_tr, y_tr, c_tr), (f_te, y_te, c_te) = splits["train"], splits["test"]
    checks = [
        Check(
            "camera probe on frozen image features",
            linear_probe(f_tr, c_tr, f_te, c_te),
            PERCAM_CAMERA_PROBE,
            None,
        )
    ]
    within = []
    for k in range(len(spec.cameras)):
        tr, te = c_tr == k, c_te == k
        acc = linear_probe(f_tr[tr], y_tr[tr], f_te[te], y_te[te])
        within.append(acc)
        checks.append(
            Check(
                f"class probe within camera {k} ({int(te.sum())} images)",
                acc,
                PERCAM_WITHIN_PROBE,
                None,
            )
        )
    pooled = linear_probe(f_tr, y_tr, f_te, y_te)
    mean_within = sum(within) / len(within)
    checks.append(
        Check(
            f"within-camera minus pooled class probe ({mean_within:.1f} vs {pooled:.1f})",
            mean_within - pooled,
            PERCAM_POOLED_GAP,
            None,
            " pts",
        )
    )
    checks += zero_shot_halves(model, f_te, y_te, names, *PERCAM_ZERO_SHOT)
    # per camera on the base half (base-to-new's classes) and on all classes (DG's source test)
    for part, n in (("base half", half), ("all classes", len(names))):
        for k in range(len(spec.cameras)):
            mask = (c_te == k) & (y_te < n)
            acc = zero_shot_accuracy(model, f_te[mask], y_te[mask], names[:n])
            checks.append(Check(f"zero-shot accuracy, {part}, camera {k}", acc, None, None))
    return checks
