"""Task definitions: canonical class codes and the CSV strings that map onto them.

Every dataset is described by an ordered list of :class:`Task`; a model predicts one logit vector per
task, and the saved predictions name columns ``prob/<branch>/<task>/<class>`` from these definitions.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from skinlesion.errors import ConfigError


@dataclass(frozen=True)
class Task:
    name: str
    classes: tuple[str, ...]
    # raw CSV string -> class code; empty for tasks whose labels are already codes or one-hot columns
    raw_to_code: dict[str, int] = field(default_factory=dict, compare=False, hash=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _task(name: str, groups: dict[str, tuple[str, ...]]) -> Task:
    """Build a task from ``{class name: raw strings}`` in canonical code order."""
    raw = {s: code for code, strings in enumerate(groups.values()) for s in strings}
    return Task(name, tuple(groups), raw)


# PAD-UFES-20: alphabetical codes.
PAD_UFES_TASKS = (Task("diagnostic", ("ACK", "BCC", "MEL", "NEV", "SCC", "SEK"),
                       {c: i for i, c in enumerate(("ACK", "BCC", "MEL", "NEV", "SCC", "SEK"))}),)

# ISIC-2019: one-hot ground-truth columns, alphabetical codes; UNK is all-zero and dropped.
ISIC_CLASSES = ("AK", "BCC", "BKL", "DF", "MEL", "NV", "SCC", "VASC")
ISIC2019_TASKS = (Task("diagnosis", ISIC_CLASSES, {c: i for i, c in enumerate(ISIC_CLASSES)}),)

# derm7pt: canonical task order [DIAG, PN, STR, PIG, RS, DaG, BWV, VS].
_ABS = ("absent",)
DERM7PT_TASKS = (
    _task("DIAG", {
        "BCC": ("basal cell carcinoma",),
        "NEV": ("blue nevus", "clark nevus", "combined nevus", "congenital nevus", "dermal nevus",
                "recurrent nevus", "reed or spitz nevus"),
        "MEL": ("melanoma", "melanoma (in situ)", "melanoma (less than 0.76 mm)", "melanoma (0.76 to 1.5 mm)",
                "melanoma (more than 1.5 mm)", "melanoma metastasis"),
        "MISC": ("dermatofibroma", "lentigo", "melanosis", "miscellaneous", "vascular lesion"),
        "SK": ("seborrheic keratosis",),
    }),
    _task("PN", {"ABS": _ABS, "TYP": ("typical",), "ATP": ("atypical",)}),
    _task("STR", {"ABS": _ABS, "REG": ("regular",), "IR": ("irregular",)}),
    _task("PIG", {"ABS": _ABS, "REG": ("diffuse regular", "localized regular"),
                  "IR": ("diffuse irregular", "localized irregular")}),
    _task("RS", {"ABS": _ABS, "PRS": ("blue areas", "white areas", "combinations")}),
    _task("DaG", {"ABS": _ABS, "REG": ("regular",), "IR": ("irregular",)}),
    _task("BWV", {"ABS": _ABS, "PRS": ("present",)}),
    _task("VS", {"ABS": _ABS, "REG": ("arborizing", "comma", "hairpin", "within regression", "wreath"),
                 "IR": ("dotted", "linear irregular")}),
)

# meta.csv column holding each derm7pt task's raw label
DERM7PT_TASK_COLUMNS = {
    "DIAG": "diagnosis", "PN": "pigment_network", "STR": "streaks", "PIG": "pigmentation",
    "RS": "regression_structures", "DaG": "dots_and_globules", "BWV": "blue_whitish_veil",
    "VS": "vascular_structures",
}

# The 17 non-absent categories averaged into derm7pt's AVG AUC.
DERM7PT_AUC_CATEGORIES = (
    ("DIAG", "BCC"), ("DIAG", "NEV"), ("DIAG", "MEL"), ("DIAG", "MISC"), ("DIAG", "SK"),
    ("PN", "TYP"), ("PN", "ATP"), ("STR", "REG"), ("STR", "IR"), ("PIG", "REG"), ("PIG", "IR"),
    ("RS", "PRS"), ("DaG", "REG"), ("DaG", "IR"), ("BWV", "PRS"), ("VS", "REG"), ("VS", "IR"),
)

# Melanoma-related categories (thesis T5.4/T5.14).
DERM7PT_MELANOMA_CATEGORIES = (
    ("DIAG", "MEL"), ("PN", "ATP"), ("STR", "IR"), ("PIG", "IR"), ("RS", "PRS"), ("DaG", "IR"),
    ("BWV", "PRS"), ("VS", "IR"),
)

DATASET_TASKS = {"pad_ufes": PAD_UFES_TASKS, "isic2019": ISIC2019_TASKS, "derm7pt": DERM7PT_TASKS}


def select_tasks(dataset: str, names: list[str] | None = None) -> tuple[Task, ...]:
    """The dataset's tasks, optionally restricted to ``names`` (kept in canonical order)."""
    tasks = DATASET_TASKS[dataset]
    if not names:
        return tasks
    known = {t.name for t in tasks}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"data.tasks: unknown task(s) {unknown} for dataset '{dataset}'; "
                         f"expected a subset of {[t.name for t in tasks]}")
    return tuple(t for t in tasks if t.name in names)
