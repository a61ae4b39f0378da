"""A scene of the synthetic benchmark: objects of known classes moving on a texture.

``Scene.simulate`` moves two or three square-bounded objects with constant
speeds; they bounce off the walls and off each other (equal masses: the
velocity components along the contact axis are exchanged), so every object is
always whole and visible and its box is the truth. Positions are integrated in
``SUBSTEPS`` steps per frame; a wall bounce's time is solved exactly within its
step, because the sounding object's bounces are the onsets of its sound.
``Scene.render`` draws the frames with numpy (uint8 RGB ``[n_frames, H, W, 3]``).

A class is a shape and a colour, both distinct from every other class (the
``CLASSES`` table), and a pitch and timbre (``avprep/soundtrack.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# name, RGB colour; the shape is the name's second word
CLASSES = (
    ("red_square", (230, 40, 40)),
    ("green_circle", (40, 200, 60)),
    ("blue_triangle", (50, 90, 235)),
    ("yellow_diamond", (240, 220, 40)),
    ("magenta_plus", (225, 50, 225)),
    ("cyan_ring", (40, 215, 225)),
    ("orange_frame", (255, 128, 0)),
    ("white_cross", (245, 245, 245)),
)
MAX_CLASSES = len(CLASSES)
SPEED_PX_S = (35.0, 75.0)  # each velocity component, px per second
SUBSTEPS = 32  # integration steps per frame
SUPERSAMPLE = 4  # anti-aliased edges: each pixel averages 4x4 samples


def _inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Where ``shape`` covers the square [-1, 1]^2 (``v`` downwards). Every shape reaches
    all four sides of the square, so its bounding box is the whole square."""
    au, av, r = np.abs(u), np.abs(v), np.hypot(u, v)
    return {
        "square": np.ones_like(u, dtype=bool),
        "circle": r <= 1.0,
        "triangle": au <= (v + 1.0) / 2.0,
        "diamond": au + av <= 1.0,
        "plus": np.minimum(au, av) <= 0.35,
        "ring": (r <= 1.0) & (r >= 0.55),
        "frame": np.maximum(au, av) >= 0.6,
        "cross": np.abs(au - av) <= 0.4,
    }[shape]


def shape_alpha(class_index: int, size_px: int) -> np.ndarray:
    """Coverage in [0, 1] of class ``class_index``'s shape, float32 ``[size_px, size_px]``."""
    shape = CLASSES[class_index][0].split("_")[1]
    n = size_px * SUPERSAMPLE
    c = (np.arange(n) + 0.5) / n * 2.0 - 1.0
    u, v = np.meshgrid(c, c)
    hits = _inside(shape, u, v).astype(np.float32)
    return hits.reshape(size_px, SUPERSAMPLE, size_px, SUPERSAMPLE).mean(axis=(1, 3))


def background(rng: np.random.Generator, size_px: int) -> np.ndarray:
    """A static texture: smooth low-saturation blotches plus fine grain, float32 ``[H, W, 3]``
    in 40..150, darker and greyer than every class colour."""
    coarse = rng.uniform(0.0, 1.0, (6, 6))
    grid = np.linspace(0, 5, size_px)
    rows = np.array([np.interp(grid, np.arange(6), row) for row in coarse])
    smooth = np.array([np.interp(grid, np.arange(6), col) for col in rows.T]).T
    grain = rng.uniform(-1.0, 1.0, (size_px, size_px))
    level = 60.0 + 60.0 * smooth + 12.0 * grain
    tint = rng.uniform(-10.0, 10.0, 3)
    return np.clip(level[..., None] + tint, 40.0, 150.0).astype(np.float32)


@dataclass
class Track:
    """One object's path: its class and the top-left pixel it is drawn at, per frame."""

    class_index: int
    xy_px: np.ndarray  # int [n_frames, 2]: column, row of the top-left corner
    wall_bounces_s: list[float] = field(default_factory=list)


@dataclass
class Scene:
    """Objects moving in a ``frame_size_px`` square at ``fps`` for ``n_frames`` frames."""

    frame_size_px: int
    object_size_px: int
    fps: float
    n_frames: int
    tracks: list[Track]

    @property
    def frame_times_s(self) -> list[float]:
        return [k / self.fps for k in range(self.n_frames)]

    def boxes(self, index: int) -> list[list[float]]:
        """Object ``index``'s box per frame: normalized ``[x0, y0, x1, y1]`` (x right, y down)."""
        f, s = self.frame_size_px, self.object_size_px
        return [
            [round(x / f, 5), round(y / f, 5), round((x + s) / f, 5), round((y + s) / f, 5)]
            for x, y in self.tracks[index].xy_px.tolist()
        ]

    @classmethod
    def simulate(
        cls,
        rng: np.random.Generator,
        class_indices: list[int],
        *,
        frame_size_px: int,
        object_size_px: int,
        fps: float,
        n_frames: int,
    ) -> Scene:
        """Place the objects apart at random, give them random velocities, and move them."""
        s, room = float(object_size_px), float(frame_size_px - object_size_px)
        n = len(class_indices)
        # Start apart: each object in its own cell of an m x m layout (m >= 2 as the config
        # keeps objects within half the frame), at a random place inside it.
        m = frame_size_px // object_size_px
        cell = frame_size_px / m
        slots = rng.choice(m * m, n, replace=False)
        pos = np.stack([slots % m, slots // m], axis=1) * cell + rng.uniform(0.0, cell - s, (n, 2))
        vel = rng.uniform(*SPEED_PX_S, (n, 2)) * rng.choice([-1.0, 1.0], (n, 2))
        p, v = pos.tolist(), vel.tolist()  # plain floats: this loop runs 32 steps a frame
        dt = 1.0 / (fps * SUBSTEPS)
        xy = np.zeros((n_frames, n, 2), dtype=np.int64)
        bounces: list[list[float]] = [[] for _ in range(n)]
        for step in range(n_frames * SUBSTEPS):
            if step % SUBSTEPS == 0:
                xy[step // SUBSTEPS] = np.floor(np.array(p) + 0.5)
            t0 = step * dt
            for i in range(n):
                for a in range(2):
                    x = p[i][a] + v[i][a] * dt
                    wall = 0.0 if x < 0.0 else room if x > room else None
                    if wall is not None:  # reflect, and note when it touched the wall
                        bounces[i].append(t0 + (wall - p[i][a]) / v[i][a])
                        x, v[i][a] = 2.0 * wall - x, -v[i][a]
                    p[i][a] = x
            for i in range(n):
                for j in range(i + 1, n):
                    gap = [abs(p[i][0] - p[j][0]), abs(p[i][1] - p[j][1])]
                    if max(gap) >= s:
                        continue
                    a = 0 if gap[0] >= gap[1] else 1  # the axis they meet on: least overlap
                    if (p[j][a] - p[i][a]) * (v[j][a] - v[i][a]) < 0:  # approaching
                        v[i][a], v[j][a] = v[j][a], v[i][a]
        end = n_frames / fps
        tracks = [
            Track(c, xy[:, i], [round(t, 5) for t in bounces[i] if t < end])
            for i, c in enumerate(class_indices)
        ]
        return cls(frame_size_px, object_size_px, fps, n_frames, tracks)

    def render(self, rng: np.random.Generator, *, noise: float) -> np.ndarray:
        """The frames, uint8 ``[n_frames, H, W, 3]``; ``noise`` in [0, 1] adds Gaussian pixel
        noise of standard deviation ``40 * noise`` levels, fresh in every frame."""
        f, s = self.frame_size_px, self.object_size_px
        bg = background(rng, f)
        sprites = [
            (
                shape_alpha(t.class_index, s)[..., None],
                np.array(CLASSES[t.class_index][1], np.float32),
            )
            for t in self.tracks
        ]
        frames = np.empty((self.n_frames, f, f, 3), dtype=np.uint8)
        for k in range(self.n_frames):
            img = bg.copy()
            for (alpha, colour), track in zip(sprites, self.tracks, strict=True):
                x, y = track.xy_px[k]
                patch = img[y : y + s, x : x + s]
                patch += alpha * (colour - patch)
            if noise > 0:
                img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(40.0 * noise)
            frames[k] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
        return frames
