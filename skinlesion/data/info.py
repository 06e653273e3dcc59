"""What a model needs to know about a dataset, known from the config alone (before any file is read)."""
from __future__ import annotations

from dataclasses import dataclass

from skinlesion.data.tasks import Task

META_INPUT = "meta"   # the metadata vector, as named in a network's branch_inputs (beside the image keys)
INPUTS = (META_INPUT, "clinic", "derm")   # every input a network may read (model.input_dropout's keys)


@dataclass(frozen=True)
class DataInfo:
    dataset: str
    tasks: tuple[Task, ...]
    image_keys: tuple[str, ...]   # modalities the dataset provides, primary first: "clinic" and/or "derm"
    meta_dim: int                 # width of the encoded metadata vector (0: none)
    meta_leaks: tuple[str, ...] = ()   # tasks whose labels the metadata encodes (models using it must refuse)

    @property
    def main_metric(self) -> str:
        """BAC for single-task data, AVG ACC over the tasks otherwise."""
        return "bac" if len(self.tasks) == 1 else "avg_acc"
