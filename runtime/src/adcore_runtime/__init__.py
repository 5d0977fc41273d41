"""adcore-runtime: score images with a detector exported by ``adcore export``, without torch.

>>> from adcore_runtime import Runtime
>>> prediction = Runtime("exported/").predict(["a.png"])   # doctest: +SKIP
"""

from adcore_runtime._version import __version__
from adcore_runtime.artefact import Artefact, normalize_score, read_artefact
from adcore_runtime.errors import AdcoreRuntimeError, ArtefactError, BackendError, ImageLoadError, InvalidInputError
from adcore_runtime.images import load_image, resize_image, resize_map
from adcore_runtime.regions import Region, find_regions
from adcore_runtime.runtime import Prediction, Runtime

__all__ = ["__version__", "Runtime", "Prediction", "Artefact", "read_artefact", "normalize_score", "load_image",
           "resize_image", "resize_map", "Region", "find_regions", "AdcoreRuntimeError", "ArtefactError",
           "BackendError", "ImageLoadError", "InvalidInputError"]
