"""napari widgets (the only subpackage that imports Qt)."""
