"""Data shipped with napari-ldae (training configs, the demo bundle).

The wheel installs this folder as the package ``napari_ldae.resources``; see setup.py and
napari_ldae/_resources.py.
"""
