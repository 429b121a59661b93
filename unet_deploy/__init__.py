"""unet-deploy: labelme annotations to a UNet segmentation model running fast in Python or C++."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import UnetDeployError
from .meta import ModelMeta

__version__ = "0.1.0"
__all__ = ["ModelMeta", "Segmenter", "UnetDeployError", "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from .runtime import Segmenter


def __getattr__(name: str):
    # Lazy so that `import unet_deploy` stays cheap and torch-free.
    if name == "Segmenter":
        from .runtime import Segmenter

        return Segmenter
    raise AttributeError(f"module 'unet_deploy' has no attribute {name!r}")
