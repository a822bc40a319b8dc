"""Label names, label parsing and the four-class ICBHI mapping.

A clip carries three binary labels in the fixed order ``LABELS``. Wheeze and
crackle may co-occur; ``normal`` excludes both. The ICBHI 2017 challenge scores
the same information as four exclusive classes, ``CLASSES_4``.
"""

from __future__ import annotations

import re

LABELS: tuple[str, ...] = ("normal", "wheeze", "crackle")

# ICBHI 2017 challenge classes, in the order the challenge and most papers use.
CLASSES_4: tuple[str, ...] = ("normal", "crackle", "wheeze", "both")

# Single-column label spellings, after lower-casing and removing spaces,
# underscores and hyphens. Values are (normal, wheeze, crackle).
_LABEL_SPELLINGS: dict[str, tuple[int, int, int]] = {
    "normal": (1, 0, 0),
    "none": (1, 0, 0),
    "healthy": (1, 0, 0),
    "wheeze": (0, 1, 0),
    "wheezes": (0, 1, 0),
    "wheezing": (0, 1, 0),
    "crackle": (0, 0, 1),
    "crackles": (0, 0, 1),
    "both": (0, 1, 1),
}


class UnknownLabelError(ValueError):
    """A label value that matches no known spelling."""


def parse_label_string(value: str) -> tuple[int, int, int]:
    """Parse a single-column label such as ``"wheeze"`` or ``"Crackle & Wheeze"``.

    Case, spaces, underscores and hyphens are ignored. Combinations may be joined
    by ``+``, ``&``, ``,``, ``/``, ``;`` or the word ``and``.

    Returns:
        ``(normal, wheeze, crackle)`` as 0/1 integers.

    Raises:
        UnknownLabelError: if any part of the value is not a known label.
    """
    text = str(value).strip().lower()
    if not text:
        raise UnknownLabelError("empty label value")
    parts = [p for p in re.split(r"\+|&|,|/|;|\band\b", text) if p.strip()]
    normal = wheeze = crackle = 0
    for part in parts:
        key = re.sub(r"[\s_\-]+", "", part)
        if key not in _LABEL_SPELLINGS:
            raise UnknownLabelError(
                f"unknown label value {value!r}; expected normal, wheeze, crackle, both "
                "or a combination such as 'wheeze+crackle'"
            )
        n, w, c = _LABEL_SPELLINGS[key]
        normal, wheeze, crackle = max(normal, n), max(wheeze, w), max(crackle, c)
    return normal, wheeze, crackle


def has_label_conflict(normal: int, wheeze: int, crackle: int) -> bool:
    """Return True when ``normal`` is set together with wheeze or crackle."""
    return bool(normal and (wheeze or crackle))


def class_4(wheeze: int, crackle: int) -> str:
    """Map the two adventitious-sound flags to the ICBHI four-class name."""
    if wheeze and crackle:
        return "both"
    if wheeze:
        return "wheeze"
    if crackle:
        return "crackle"
    return "normal"


def class_4_index(wheeze: int, crackle: int) -> int:
    """Map the two adventitious-sound flags to an index into ``CLASSES_4``."""
    return CLASSES_4.index(class_4(wheeze, crackle))
