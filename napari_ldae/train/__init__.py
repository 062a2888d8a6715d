"""Training of every LDAE stage on PyTorch Lightning."""
