"""napari-ldae: Latent Diffusion Autoencoders for brain MRI, in napari and on the command line.

Importing this package is cheap: torch, MONAI, nibabel and Qt are imported by the submodules
that need them, never here (napari imports plugins at start-up).
"""

__version__ = "0.1.0"

#: Version of the model-bundle format this release reads and writes.
BUNDLE_FORMAT_VERSION = 1
