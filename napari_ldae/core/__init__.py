"""The LDAE itself: pure torch, no Qt, no napari. Everything else calls into this package."""
