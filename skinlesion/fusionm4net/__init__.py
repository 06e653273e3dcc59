"""FusionM4Net: a two-image network (stage 1) whose saved predictions are fused by a weight search and then
combined with the patient metadata by a scikit-learn classifier (stage 2, :mod:`.stage2`)."""
from __future__ import annotations

__all__ = ["run_stage2", "sub_model_rows", "CLASSIFIERS"]


def __getattr__(name: str):
    # Imported on use: ``python -m skinlesion.fusionm4net.stage2`` imports this package first, and an eager
    # import of the module it is about to run would make Python warn about a double import.
    if name in __all__:
        from . import stage2
        return getattr(stage2, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
