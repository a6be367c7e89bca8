"""A procedural face renderer driven by action-unit intensities.

Faces are drawn with OpenCV primitives in template units: the unit square [0, 1]² is the ArcFace 5-point
crop (eyes at y 0.46, mouth corners at y 0.82), and the canvas spans [-MARGIN, 1 + MARGIN]² so that hair,
forehead and chin are drawn too. Each of the 17 C-EXPR-DB AUs moves or shades its own facial region
(``AU_REGIONS``); identity parameters vary the geometry and appearance.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from abaw_ce import labels

MARGIN = 0.3
# ArcFace template in units of the crop side (insightface's 112-pixel template divided by 112).
TEMPLATE_5 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                       [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float32) / 112.0

# Where each AU acts, as (x0, y0, x1, y1) in template units: what the region test checks.
AU_REGIONS: dict[int, tuple[float, float, float, float]] = {
    1: (0.25, 0.20, 0.75, 0.45), 2: (0.12, 0.20, 0.88, 0.45), 4: (0.22, 0.22, 0.78, 0.45),
    5: (0.20, 0.38, 0.80, 0.53), 6: (0.15, 0.40, 0.85, 0.68), 7: (0.20, 0.38, 0.80, 0.53),
    9: (0.25, 0.30, 0.75, 0.72), 10: (0.28, 0.70, 0.72, 0.90), 11: (0.22, 0.60, 0.78, 0.92),
    12: (0.22, 0.68, 0.78, 0.95), 15: (0.22, 0.72, 0.78, 0.98), 17: (0.30, 0.78, 0.70, 1.12),
    20: (0.18, 0.70, 0.82, 0.95), 23: (0.26, 0.72, 0.74, 0.95), 24: (0.26, 0.72, 0.74, 0.95),
    25: (0.28, 0.72, 0.72, 0.98), 26: (0.20, 0.72, 0.80, 1.20),
}
assert set(AU_REGIONS) == set(labels.CEXPR_AUS)

SKIN_TONES = np.array([[255, 224, 196], [241, 194, 160], [224, 172, 126], [198, 134, 90], [161, 102, 68],
                       [120, 74, 48], [90, 56, 38]], dtype=np.float32)
HAIR_COLOURS = np.array([[30, 22, 18], [70, 45, 30], [120, 80, 45], [200, 160, 100], [150, 150, 150],
                         [110, 40, 25], [15, 15, 15]], dtype=np.float32)


@dataclass
class Identity:
    skin: np.ndarray
    hair: np.ndarray
    iris: np.ndarray
    lip: np.ndarray
    face_w: float        # half-width of the face oval
    face_h: float        # half-height
    jaw: float           # 0 round .. 1 square jaw
    eye_w: float
    eye_h: float
    eye_dx: float        # shift of both eyes outwards
    brow_gap: float      # brow height above the eye
    brow_thick: float
    nose_len: float
    nose_w: float
    mouth_w: float
    lip_t: float
    hair_style: int      # 0 none, 1 short, 2 long, 3 fringe
    glasses: bool
    age: float           # 0..1 strength of wrinkles and under-eye shading
    beard: float         # 0 none .. 1 full stubble

    @classmethod
    def random(cls, rng: np.random.Generator) -> "Identity":
        tone = rng.uniform(0, len(SKIN_TONES) - 1)
        lo = int(tone)
        skin = SKIN_TONES[lo] * (1 - (tone - lo)) + SKIN_TONES[min(lo + 1, len(SKIN_TONES) - 1)] * (tone - lo)
        skin = np.clip(skin * rng.uniform(0.95, 1.05, 3), 0, 255)
        lip = np.clip(skin * np.array([0.85, 0.55, 0.55]) + np.array([25, 0, 5]), 0, 255)
        return cls(
            skin=skin, hair=HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))] * rng.uniform(0.8, 1.2),
            iris=rng.choice([[60, 40, 25], [90, 60, 30], [60, 90, 120], [70, 100, 60], [35, 25, 20]]).astype(float),
            lip=lip, face_w=rng.uniform(0.36, 0.44), face_h=rng.uniform(0.53, 0.62), jaw=rng.uniform(0, 1),
            eye_w=rng.uniform(0.060, 0.078), eye_h=rng.uniform(0.022, 0.032), eye_dx=rng.uniform(-0.012, 0.012),
            brow_gap=rng.uniform(0.075, 0.10), brow_thick=rng.uniform(0.018, 0.032),
            nose_len=rng.uniform(-0.02, 0.02), nose_w=rng.uniform(0.040, 0.058), mouth_w=rng.uniform(0.125, 0.155),
            lip_t=rng.uniform(0.018, 0.032), hair_style=int(rng.integers(0, 4)), glasses=bool(rng.random() < 0.2),
            age=float(rng.uniform(0, 1) ** 2), beard=float(rng.random() < 0.12) * rng.uniform(0.3, 1.0),
        )


@dataclass
class Pose:
    yaw: float = 0.0          # -1..1, mild left/right turn
    light_dir: float = 0.0    # -1..1 horizontal light gradient
    light_gain: float = 1.0


def au_vector(intensities: dict[int, float]) -> np.ndarray:
    """17-AU intensity vector (labels.CEXPR_AUS order) from {au: intensity}."""
    v = np.zeros(len(labels.CEXPR_AUS), dtype=np.float32)
    for au, value in intensities.items():
        v[labels.CEXPR_AUS.index(au)] = value
    return v


@dataclass
class FaceRender:
    image: np.ndarray        # canvas RGB uint8
    alpha: np.ndarray        # canvas coverage 0..1 float32 (face, hair, neck)
    landmarks: np.ndarray    # (5, 2) canvas pixel coordinates
    unit: float              # pixels per template unit
    extras: dict = field(default_factory=dict)


def _bezier(p0, p1, p2, n=16) -> np.ndarray:
    t = np.linspace(0, 1, n)[:, None]
    return (1 - t) ** 2 * np.asarray(p0) + 2 * (1 - t) * t * np.asarray(p1) + t ** 2 * np.asarray(p2)


def _through(p0, mid, p2, n=16) -> np.ndarray:
    """Quadratic curve from p0 to p2 passing through ``mid`` at its middle."""
    ctrl = 2 * np.asarray(mid, dtype=float) - (np.asarray(p0, dtype=float) + np.asarray(p2, dtype=float)) / 2
    return _bezier(p0, ctrl, p2, n)


class _Canvas:
    """Drawing in template units with sub-pixel precision."""

    SHIFT = 4

    def __init__(self, unit: float):
        self.unit = unit
        self.size = int(round(unit * (1 + 2 * MARGIN)))
        self.img = np.zeros((self.size, self.size, 3), dtype=np.float32)
        self.mask = np.zeros((self.size, self.size), dtype=np.float32)

    def px(self, pts) -> np.ndarray:
        pts = (np.asarray(pts, dtype=np.float64) + MARGIN) * self.unit
        return np.round(pts * (1 << self.SHIFT)).astype(np.int32)

    def _draw(self, draw, target, alpha):
        """Run ``draw(layer)`` on target directly, or on a copy blended back with weight ``alpha``."""
        target = self.img if target is None else target
        if alpha >= 1.0:
            draw(target)
        else:
            layer = target.copy()
            draw(layer)
            target[:] = target * (1 - alpha) + layer * alpha

    def poly(self, pts, colour, target=None, alpha=1.0):
        self._draw(lambda img: cv2.fillPoly(img, [self.px(pts)], colour, cv2.LINE_AA, self.SHIFT), target, alpha)

    def line(self, pts, colour, width, alpha=1.0):
        thickness = max(1, int(round(width * self.unit)))
        self._draw(lambda img: cv2.polylines(img, [self.px(pts)], False, colour, thickness, cv2.LINE_AA,
                                             self.SHIFT), None, alpha)

    def ellipse(self, centre, axes, colour, angle=0.0, alpha=1.0, target=None):
        c = tuple(int(v) for v in self.px(centre))
        ax = tuple(max(1, int(v)) for v in np.round(np.asarray(axes) * self.unit * (1 << self.SHIFT)))
        self._draw(lambda img: cv2.ellipse(img, c, ax, angle, 0, 360, colour, -1, cv2.LINE_AA, self.SHIFT),
                   target, alpha)


def _oval(cx, cy, w, h, jaw, chin_drop=0.0, n=72) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x, y = np.sin(t), -np.cos(t)
    # A squarer jaw widens the lower half; chin_drop (jaw drop, AU26) lengthens it.
    lower = y > 0
    x = np.where(lower, x * (1 + 0.12 * jaw * y), x)
    yy = np.where(lower, y * (h + chin_drop), y * h)
    return np.stack([cx + w * x, cy + yy], axis=1)


def render_face(identity: Identity, aus: np.ndarray, unit: float = 112.0, pose: Pose | None = None) -> FaceRender:
    """Render one face with AU intensities ``aus`` (17, CEXPR_AUS order, 0..1) on a transparent canvas."""
    pose = pose or Pose()
    a = {au: float(np.clip(aus[i], 0, 1)) for i, au in enumerate(labels.CEXPR_AUS)}
    idn = identity
    cv = _Canvas(unit)
    skin = idn.skin
    dark = skin * 0.62
    shift = 0.06 * pose.yaw               # inner features move towards the turned side
    cx = 0.5 + 0.4 * shift
    face = _oval(cx, 0.50, idn.face_w * (1 - 0.08 * abs(pose.yaw)), idn.face_h, idn.jaw, 0.05 * a[26])

    # hair behind the head, neck, ears
    if idn.hair_style == 2:
        cv.poly(_oval(cx, 0.55, idn.face_w * 1.22, idn.face_h * 1.1, 0.3), idn.hair.tolist(), target=cv.img)
        cv.poly(_oval(cx, 0.55, idn.face_w * 1.22, idn.face_h * 1.1, 0.3), (1.0,), target=cv.mask)
    neck = np.array([[cx - 0.17, 0.9], [cx + 0.17, 0.9], [cx + 0.22, 1.3], [cx - 0.22, 1.3]])
    cv.poly(neck, (skin * 0.8).tolist())
    cv.poly(neck, (1.0,), target=cv.mask)
    for side in (-1, 1):
        ear_c = (cx + side * (idn.face_w * (1 - 0.08 * abs(pose.yaw)) - 0.01), 0.52)
        cv.ellipse(ear_c, (0.045, 0.085), (skin * 0.88).tolist())
        cv.ellipse(ear_c, (0.045, 0.085), (1.0,), target=cv.mask)
    cv.poly(face, skin.tolist())
    cv.poly(face, (1.0,), target=cv.mask)

    # shading that gives a face its luminance pattern: temples, eye sockets, nose bridge, cheeks
    for side in (-1, 1):
        cv.ellipse((cx + side * idn.face_w * 0.92, 0.55), (0.06, 0.3), dark.tolist(), alpha=0.25)
    ey = 0.46
    eye_x = [TEMPLATE_5[0, 0] - idn.eye_dx + shift, TEMPLATE_5[1, 0] + idn.eye_dx + shift]
    for x in eye_x:
        cv.ellipse((x, ey - 0.012), (idn.eye_w * 1.5, 0.065), (skin * 0.5).tolist(), alpha=0.55 + 0.15 * idn.age)
    # Highlights are additive so that dark skin keeps the bright-bridge / dark-socket pattern as well.
    shine = np.clip(skin * 1.1 + 45, 0, 255).tolist()
    cv.poly([[0.47 + shift * 1.3, 0.40], [0.53 + shift * 1.3, 0.40], [0.535 + shift * 1.5, 0.62],
             [0.465 + shift * 1.5, 0.62]], shine, alpha=0.45)
    cv.ellipse((cx, 0.24), (0.16, 0.07), shine, alpha=0.3)

    # cheeks (AU6 raises and rounds them; AU11/AU12 deepen the nasolabial folds)
    for side, x in zip((-1, 1), eye_x):
        cheek_y = 0.64 - 0.05 * a[6] - 0.02 * a[12]
        cv.ellipse((x + side * 0.01, cheek_y), (0.085, 0.06 + 0.015 * a[6]), shine, alpha=0.25 + 0.35 * a[6])
        cv.ellipse((x + side * 0.01, cheek_y + 0.065), (0.08, 0.02), (skin * 0.8).tolist(), alpha=0.5 * a[6])
        fold = 0.15 + 0.6 * a[11] + 0.35 * a[12] + 0.25 * idn.age
        nose_wing = (0.5 + shift * 1.4 + side * (idn.nose_w + 0.012), 0.655)
        corner = (0.5 + shift + side * (idn.mouth_w + 0.025 + 0.03 * a[12]), 0.84 - 0.03 * a[12])
        mid = (0.5 + shift + side * (idn.mouth_w + 0.02 + 0.035 * a[11]), 0.75)
        cv.line(_through(nose_wing, mid, corner), (skin * 0.6).tolist(), 0.012, alpha=min(1.0, fold))

    # eyes: AU5 opens, AU7 tightens, AU6 pushes the lower lid up
    for side, x in zip((-1, 1), eye_x):
        half_h = idn.eye_h * (1 + 0.9 * a[5] - 0.5 * a[7] - 0.25 * a[6])
        low_h = idn.eye_h * (1 - 0.55 * a[6] - 0.3 * a[7])
        w = idn.eye_w
        top = _through((x - w, ey), (x, ey - half_h * 1.35), (x + w, ey))
        bottom = _through((x + w, ey), (x, ey + max(low_h, 0.004)), (x - w, ey))
        outline = np.vstack([top, bottom])
        cv.poly(outline, [235, 232, 225])
        eye_layer = cv.img.copy()
        iris_r = idn.eye_h * 1.15
        cv.ellipse((x + shift * 0.3, ey - 0.002), (iris_r, iris_r), idn.iris.tolist(), target=eye_layer)
        cv.ellipse((x + shift * 0.3, ey - 0.002), (iris_r * 0.45, iris_r * 0.45), [10, 10, 10], target=eye_layer)
        inside = np.zeros(cv.mask.shape, dtype=np.float32)
        cv.poly(outline, (1.0,), target=inside)
        cv.img[:] = cv.img * (1 - inside[..., None]) + eye_layer * inside[..., None]
        cv.line(top, (dark * 0.4).tolist(), 0.011)              # upper lid line and lashes
        cv.line(bottom, (dark * 0.8).tolist(), 0.005, alpha=0.8)
        if a[6] > 0.05 or idn.age > 0.3:  # crow's feet
            for k in range(3):
                y0 = ey - 0.01 + 0.012 * k
                cv.line([[x + side * (w + 0.01), y0], [x + side * (w + 0.045), y0 + 0.01 * (k - 1)]],
                        (skin * 0.65).tolist(), 0.005, alpha=min(1.0, 0.8 * a[6] + 0.4 * idn.age))
        if idn.age > 0.2:
            cv.line(_through((x - w * 0.8, ey + 0.035), (x, ey + 0.05), (x + w * 0.8, ey + 0.035)),
                    (skin * 0.7).tolist(), 0.006, alpha=idn.age * 0.8)

    # brows: AU1 raises the inner end, AU2 the outer end, AU4 lowers and draws them together
    for side, x in zip((-1, 1), eye_x):
        by = ey - idn.brow_gap
        inner = (x - side * 0.075 + side * 0.022 * a[4], by - 0.07 * a[1] + 0.045 * a[4] + 0.01 * a[9])
        middle = (x, by - 0.012 - 0.045 * a[1] * 0.5 - 0.05 * a[2] + 0.03 * a[4])
        outer = (x + side * 0.085, by + 0.012 - 0.075 * a[2] + 0.015 * a[4])
        brow = _through(inner, middle, outer)
        cv.line(brow, np.minimum(idn.hair * 0.8, skin * 0.35).tolist(), idn.brow_thick)
    if a[4] > 0.05:  # glabellar furrows
        for dx in (-0.018, 0.018):
            cv.line([[0.5 + shift + dx, 0.35], [0.5 + shift + dx * 0.6, 0.42]], (skin * 0.55).tolist(), 0.008,
                    alpha=min(1.0, 1.2 * a[4]))
    if a[1] + a[2] > 0.1 or idn.age > 0.4:  # forehead lines
        for k in range(3):
            y0 = 0.20 + 0.035 * k
            cv.line(_through((0.32, y0), (0.5, y0 - 0.015), (0.68, y0)), (skin * 0.72).tolist(), 0.006,
                    alpha=min(1.0, 0.5 * (a[1] + a[2]) + 0.3 * idn.age))

    # nose: AU9 wrinkles the bridge and lifts the wings
    nose_x = 0.5 + shift * 1.5
    tip_y = TEMPLATE_5[2, 1] + idn.nose_len - 0.012 * a[9]
    cv.ellipse((nose_x, tip_y + 0.01), (idn.nose_w * 1.1, 0.03), (skin * 0.78).tolist(), alpha=0.5)
    for side in (-1, 1):
        cv.ellipse((nose_x + side * idn.nose_w * 0.55, tip_y + 0.022 - 0.008 * a[9]), (0.014, 0.008),
                   (skin * 0.35).tolist(), alpha=0.9)
    cv.ellipse((nose_x, tip_y - 0.005), (idn.nose_w * 0.55, 0.022), np.clip(skin * 1.08, 0, 255).tolist(),
               alpha=0.6)
    if a[9] > 0.05:
        for k in range(3):
            y0 = 0.50 + 0.022 * k
            cv.line([[nose_x - 0.03, y0], [nose_x + 0.03, y0 - 0.004]], (skin * 0.55).tolist(), 0.007,
                    alpha=min(1.0, 1.2 * a[9]))

    # mouth
    mx, my = 0.5 + shift, TEMPLATE_5[3, 1]
    half_w = idn.mouth_w * (1 + 0.25 * a[20] + 0.15 * a[12] - 0.12 * a[23] - 0.1 * a[24] - 0.08 * a[17])
    corner_y = my - 0.075 * a[12] + 0.05 * a[15] + 0.012 * a[20]
    lip_t = idn.lip_t * (1 - 0.55 * a[23]) * (1 - 0.5 * a[24])
    opening = 0.03 * a[25] + 0.075 * a[26] + 0.012 * a[10] * (1 - a[24])
    jaw_drop = 0.045 * a[26]
    left, right = (mx - half_w, corner_y), (mx + half_w, corner_y)
    top_in_y = my - 0.004 - 0.022 * a[10] - opening * 0.25
    bot_in_y = my + opening * 0.75 + jaw_drop * 0.3 - 0.012 * a[17]
    upper_out = _through(left, (mx, top_in_y - lip_t * 1.1 - 0.006 * a[10]), right)
    upper_in = _through(left, (mx, top_in_y), right)
    lower_in = _through(left, (mx, bot_in_y), right)
    lower_out = _through(left, (mx, bot_in_y + lip_t * 1.3 - 0.01 * a[17] * (1 - a[26])), right)
    cv.poly(np.vstack([upper_out, lower_out[::-1]]), idn.lip.tolist())
    if bot_in_y - top_in_y > 0.006:
        opening_poly = np.vstack([upper_in, lower_in[::-1]])
        cv.poly(opening_poly, [45, 15, 20])
        teeth_h = min(0.025, (bot_in_y - top_in_y) * 0.6)
        teeth = np.vstack([upper_in, (upper_in + [0, teeth_h])[::-1]])
        mouth_inside = np.zeros(cv.mask.shape, dtype=np.float32)
        cv.poly(opening_poly, (1.0,), target=mouth_inside)
        teeth_layer = cv.img.copy()
        cv.poly(teeth, [240, 238, 230], target=teeth_layer)
        cv.img[:] = cv.img * (1 - mouth_inside[..., None]) + teeth_layer * mouth_inside[..., None]
    cv.line(np.vstack([upper_in, lower_in[::-1][1:]]) if bot_in_y - top_in_y > 0.006 else upper_in,
            (idn.lip * 0.45).tolist(), 0.006 + 0.004 * a[24])
    # chin: AU17 pushes up a chin boss with a crease below the lip
    chin_y = 0.5 + idn.face_h * 0.86 + 0.05 * a[26]
    if a[17] > 0.05:
        cv.ellipse((mx, chin_y - 0.02), (0.07, 0.045), np.clip(skin * 1.12, 0, 255).tolist(), alpha=0.8 * a[17])
        cv.line(_through((mx - 0.06, my + 0.07), (mx, my + 0.085 - 0.02 * a[17]), (mx + 0.06, my + 0.07)),
                (skin * 0.6).tolist(), 0.008, alpha=min(1.0, a[17]))
    if idn.beard > 0:
        beard = np.vstack([_through((0.5 - idn.face_w, 0.6), (0.5, 1.1 + 0.05 * a[26]), (0.5 + idn.face_w, 0.6))])
        cv.poly(beard, (idn.hair * 0.9).tolist(), alpha=0.35 * idn.beard)

    # hair on top, glasses in front
    if idn.hair_style in (1, 2, 3):
        cap = np.vstack([_oval(cx, 0.50, idn.face_w * 1.06, idn.face_h * 1.04, 0)[54:],
                         _oval(cx, 0.50, idn.face_w * 1.06, idn.face_h * 1.04, 0)[:19]])
        hairline = 0.14 if idn.hair_style != 3 else 0.27
        fringe = [[0.5 + idn.face_w, hairline + 0.1], [0.5, hairline], [0.5 - idn.face_w, hairline + 0.1]]
        cap = np.vstack([cap, fringe])
        cv.poly(cap, idn.hair.tolist())
        cv.poly(cap, (1.0,), target=cv.mask)
    if idn.glasses:
        for x in eye_x:
            c = tuple(int(v) for v in cv.px((x, ey)))
            ax = tuple(int(v) for v in np.round(np.array([0.085, 0.06]) * cv.unit * (1 << cv.SHIFT)))
            cv2.ellipse(cv.img, c, ax, 0, 0, 360, (25, 25, 30), max(1, int(0.012 * cv.unit)), cv2.LINE_AA, cv.SHIFT)
        cv.line([[eye_x[0] + 0.085, ey - 0.01], [eye_x[1] - 0.085, ey - 0.01]], (25, 25, 30), 0.012)

    # lighting: a horizontal gradient and a gain over the whole head
    xs = np.linspace(-1, 1, cv.size, dtype=np.float32)[None, :, None]
    cv.img *= pose.light_gain * (1 + 0.25 * pose.light_dir * xs)
    # Soften the flat shading patches into gradients, as skin looks under real light.
    cv.img[:] = cv2.GaussianBlur(cv.img, (0, 0), max(0.5, 0.006 * cv.unit))
    image = np.clip(cv.img, 0, 255).astype(np.uint8)
    landmarks = np.array([
        [eye_x[0], ey], [eye_x[1], ey], [nose_x, tip_y],
        [mx - half_w, corner_y], [mx + half_w, corner_y]], dtype=np.float32)
    return FaceRender(image=image, alpha=np.clip(cv.mask, 0, 1), landmarks=(landmarks + MARGIN) * unit, unit=unit)


def aligned_matrix(render: FaceRender, size: int, jitter=None) -> np.ndarray:
    """2x3 affine (canvas pixels → crop pixels) taking the template square [0,1]² onto a size×size crop.

    ``jitter`` = (dx, dy, dscale, dangle degrees) mimics the small misalignment of real aligned datasets.
    """
    dx, dy, ds, da = (0.0, 0.0, 0.0, 0.0) if jitter is None else jitter
    scale = size / render.unit * (1 + ds)
    centre = (render.unit * (0.5 + MARGIN), render.unit * (0.5 + MARGIN))
    m = cv2.getRotationMatrix2D(centre, float(da), scale)
    m[:, 2] += np.array([size / 2 - centre[0] + dx * size, size / 2 - centre[1] + dy * size])
    return m


def composite(render: FaceRender, background: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Warp a render into ``background`` (H, W, 3 uint8) with a 2x3 affine, blending by its coverage."""
    h, w = background.shape[:2]
    face = cv2.warpAffine(render.image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderValue=0)
    alpha = cv2.warpAffine(render.alpha, matrix, (w, h), flags=cv2.INTER_LINEAR, borderValue=0)[..., None]
    return (background.astype(np.float32) * (1 - alpha) + face.astype(np.float32) * alpha).astype(np.uint8)
