"""Grey-failure scoring: a model that compares each node with its region's peers."""

from isolator.learning.features import NodeMeasurements
from isolator.learning.model import DEFAULT_MODEL_PATH, GreyFailureModel, GreyScore, ModelFileError

__all__ = [
    "DEFAULT_MODEL_PATH",
    "GreyFailureModel",
    "GreyScore",
    "ModelFileError",
    "NodeMeasurements",
]
